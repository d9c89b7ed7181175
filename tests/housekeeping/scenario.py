"""One population of a store, made by the same calls on MLflow's sqlite store and on a
cloudtrack store, and what a reader sees of it afterwards: what the gc tests compare.

The stores are driven through their own objects (``s.create_run`` …), artifacts through the
artifact repository of each run's artifact URI, as MLflow's client does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository


def log_run(s: Any, exp: str, name: str, artifact: Path | None, *, finish: bool = True) -> str:
    rid: str = s.create_run(exp, "u", 1_000, [], name).info.run_id
    s.log_batch(rid, [Metric("m", float(i), 10 + i, i) for i in range(5)],
                [Param("p", name)], [RunTag("t", name)])
    if artifact is not None:
        get_artifact_repository(s.get_run(rid).info.artifact_uri).log_artifact(str(artifact))
    if finish:
        s.update_run_info(rid, RunStatus.FINISHED, 2_000, None)
    return rid


def populate(s: Any, tmp: Path) -> dict[str, str]:
    """Two experiments: ``keep`` with a deleted run, a live run, a deleted and a live logged
    model; ``drop`` (deleted) with two runs and a logged model.  Label -> id."""
    artifact = tmp / "weights.txt"
    artifact.write_text("0.5\n")
    ids: dict[str, str] = {}
    ids["keep"] = s.create_experiment("keep")
    ids["drop"] = s.create_experiment("drop")
    for label, exp in (("r-del", "keep"), ("r-live", "keep"), ("b1", "drop"), ("b2", "drop")):
        ids[label] = log_run(s, ids[exp], label, artifact)
    for label, exp in (("m-del", "keep"), ("m-live", "keep"), ("m-b", "drop")):
        ids[label] = s.create_logged_model(ids[exp], name=label).model_id
    s.delete_run(ids["r-del"])
    s.delete_logged_model(ids["m-del"])
    s.delete_experiment(ids["drop"])
    return ids


def keys_of(s: Any) -> list[str]:
    """Every key of a cloudtrack store."""
    return [i.key for i in s.blobs.list("")]


def traces(keys: list[str], ids: dict[str, str], labels: list[str]) -> list[str]:
    """Keys that still name one of ``labels``' ids."""
    return [k for k in keys for label in labels if ids[label] in k]


def _try(fn: Any) -> Any:
    try:
        return fn()
    except MlflowException as e:
        return ("error", e.error_code)


def observe(s: Any, ids: dict[str, str]) -> dict[str, Any]:
    """What a reader sees, ids replaced by their labels (each store makes its own)."""
    label = {v: k for k, v in ids.items()}
    out: dict[str, Any] = {}
    out["experiments"] = sorted(
        (e.experiment_id, e.name, e.lifecycle_stage)
        for e in s.search_experiments(view_type=ViewType.ALL, max_results=1000))
    for exp in ("keep", "drop"):
        found = _try(lambda e=exp: s.search_runs([ids[e]], "", ViewType.ALL, 1000))
        out[f"runs of {exp}"] = found if isinstance(found, tuple) else sorted(
            (r.info.run_name, r.info.lifecycle_stage) for r in found)
    for run in ("r-del", "r-live", "b1", "b2"):
        got = _try(lambda r=run: s.get_run(ids[r]))
        out[run] = got if isinstance(got, tuple) else (
            got.info.run_name, got.info.lifecycle_stage, got.data.params, got.data.metrics,
            {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")},
            sorted(f.path for f in get_artifact_repository(got.info.artifact_uri)
                   .list_artifacts()))
        if not isinstance(got, tuple):
            # (For a run that does not exist sqlite answers [], cloudtrack not found.)
            out[f"{run} history"] = [(m.value, m.step) for m in s.get_metric_history(ids[run], "m")]
    for model in ("m-del", "m-live", "m-b"):
        got = _try(lambda m=model: s.get_logged_model(ids[m], allow_deleted=True))
        out[model] = got if isinstance(got, tuple) else (got.name, label.get(
            got.experiment_id, got.experiment_id))
    by_name = s.get_experiment_by_name("drop")
    out["drop by name"] = None if by_name is None else by_name.lifecycle_stage
    return out


def reuse_name(s: Any) -> Any:
    """Create ``drop`` again (refused while the deleted one holds the name, as in MLflow)."""
    return _try(lambda: s.create_experiment("drop"))


# -- running mlflow gc ---------------------------------------------------------------------


def gc_subprocess(uri: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``mlflow gc`` command, in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri, *args],
        env={**os.environ, **env, "MLFLOW_TRACKING_URI": uri, "GIT_PYTHON_REFRESH": "quiet"},
        capture_output=True, text=True, timeout=180)


def gc_in_process(uri: str, *args: str) -> tuple[int, str]:
    """``mlflow gc`` through its click command in this process (seconds faster than a
    process); the environment that reaches the store must be set already."""
    import mlflow
    from mlflow.cli import cli

    try:
        result = CliRunner().invoke(
            cli, ["gc", "--backend-store-uri", uri, "--tracking-uri", uri, *args])
    finally:
        mlflow.set_tracking_uri(None)
    text = result.output + (repr(result.exception) if result.exception else "")
    return result.exit_code, text


def wait_past(ms: int) -> None:
    """Sleep until the millisecond clock is past ``ms``."""
    while int(time.time() * 1000) <= ms:
        time.sleep(0.01)
