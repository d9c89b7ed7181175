"""Prompts as MLflow keeps them on a registry (registered models tagged as prompts), compared
against MLflow's sqlite store on every backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def run(env: dict[str, str], cwd: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env}, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("sqlite")
    return run({"MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"}, d)


def test_prompts_match_mlflow_sqlite(store, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert reference["prod"] == "Summarize: hi" and reference["prompts"] == ["summarize"]
    assert run({**store.env, "MLFLOW_TRACKING_URI": store.uri}, tmp_path) == reference
