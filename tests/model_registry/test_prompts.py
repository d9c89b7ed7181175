"""Prompts as MLflow keeps them on a registry (registered models tagged as prompts), compared
against MLflow's sqlite store on every backend."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.reference import script_summary

SCRIPT = """
import json, mlflow
p1 = mlflow.genai.register_prompt(name="summarize", template="Summarize: {{text}}",
                                  commit_message="first", tags={"task": "summary"})
p2 = mlflow.genai.register_prompt(name="summarize", template="Summarize briefly: {{text}}")
mlflow.genai.set_prompt_alias("summarize", alias="prod", version=1)
client = mlflow.MlflowClient()
out = {
    "versions": [p1.version, p2.version],
    "v2": mlflow.genai.load_prompt("prompts:/summarize/2").template,
    "prod": mlflow.genai.load_prompt("prompts:/summarize@prod").format(text="hi"),
    "prompts": [p.name for p in mlflow.genai.search_prompts()],
    "models": [m.name for m in client.search_registered_models()],
    "commit": mlflow.genai.load_prompt("prompts:/summarize/1").commit_message,
}
print(json.dumps(out, sort_keys=True))
"""


def summary(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """What the script reads back (``reference_summary`` runs it on sqlite)."""
    return script_summary(["-c", SCRIPT], env, cwd, timeout=300)


def test_prompts_match_mlflow_sqlite(store, reference_summary, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert reference_summary["prod"] == "Summarize: hi"
    assert reference_summary["prompts"] == ["summarize"]
    assert summary({**store.env, "MLFLOW_TRACKING_URI": store.uri}, tmp_path) == reference_summary
