"""What the framework examples' scripts read back through MLflow's client, as one JSON-able
summary: the same on MLflow's sqlite store and on every cloudtrack backend, or a bug.

Only what legitimately differs between two runs of the same script is left out: ids, times,
random run names, the values (never the keys or steps) of wall-clock metrics, and whether a
point logged twice at one step with one value is kept once or twice (see ``_history``).  Everything
else is compared value for value: experiments, params, tags, metric histories by key/step/value,
run artifacts with sizes, logged models (flavors, params, tags, linked metrics, artifacts with
sizes), registered versions, and what each model loaded back through ``models:/`` predicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

#: Tags whose values are ids, times or random names: compared by presence only.
VOLATILE_TAGS = frozenset({
    "mlflow.runName",  # random when the example names no run
    "mlflow.log-model.history",  # run and model ids, creation times
})
#: Metrics measured on the wall clock: compared by key and steps, not by value.
TIMED_METRICS = re.compile(r".*(runtime|per_second)$")
#: Files whose bytes embed ids or times (MLmodel: run/model id, creation time; Lightning's
#: checkpoints pickle their own directory, which holds the experiment and run ids): listed
#: without sizes.  Their content is compared another way (flavors; the weights predicted with).
UNSIZED = re.compile(r"(^|/)MLmodel$|\.ckpt$|\.pth$")

_ID = re.compile(r"\b(m-)?[0-9a-f]{32}\b")


def rounded(value: float) -> float | str:
    return "nan" if math.isnan(value) else float(f"{value:.6g}")


def _norm(text: str) -> str:
    return _ID.sub("<id>", text)


def _files(list_fn: Callable[[str | None], Iterable[Any]], path: str | None = None
           ) -> list[tuple[str, int | None]]:
    found: list[tuple[str, int | None]] = []
    for f in list_fn(path):
        if f.is_dir:
            found.extend(_files(list_fn, f.path))
        else:
            found.append((_norm(f.path), None if UNSIZED.search(f.path) else f.file_size))
    return sorted(found)


def _tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: ("<volatile>" if k in VOLATILE_TAGS else _norm(v)) for k, v in sorted(tags.items())}


def _history(client: MlflowClient, run_id: str, keys: Iterable[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key in sorted(keys):
        # One point per (step, value): the frameworks log some twice (Lightning's and
        # transformers' "epoch" at an epoch's end), and MLflow's stores keep both only when their
        # timestamps differ, which is up to the clock.
        points = sorted({(m.step, m.value) for m in client.get_metric_history(run_id, key)})
        out[key] = [(step, None if TIMED_METRICS.match(key) else rounded(value))
                    for step, value in points]
    return out


def _metric_points(metrics: Iterable[Any]) -> list[Any]:
    return sorted((m.key, m.step, None if TIMED_METRICS.match(m.key) else rounded(m.value))
                  for m in metrics or [])


def run_summary(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'",
                                         output_format="list")
    return {
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "status": run.info.status,
        "params": {k: _norm(v) for k, v in sorted(run.data.params.items())},
        "tags": _tags(run.data.tags),
        "latest_metrics": {k: (None if TIMED_METRICS.match(k) else rounded(v))
                           for k, v in sorted(run.data.metrics.items())},
        "history": _history(client, run_id, run.data.metrics),
        "artifacts": _files(lambda p: client.list_artifacts(run_id, p)),
        "datasets": sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type,
                            sorted((t.key, t.value) for t in d.tags))
                           for d in run.inputs.dataset_inputs),
        "model_outputs": len(run.outputs.model_outputs) if run.outputs else 0,
        "logged_models": sorted((logged_model_summary(client, m) for m in models),
                                key=repr),
    }


def logged_model_summary(client: MlflowClient, model: Any) -> dict[str, Any]:
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    return {
        "name": model.name,
        "status": str(model.status),
        "model_type": model.model_type,
        "params": dict(sorted((model.params or {}).items())),
        "tags": _tags(model.tags or {}),
        # Metrics logged with the model's id (autolog) or while it was the active model.
        "metrics": _metric_points(model.metrics),
        "flavors": sorted(info.flavors),
        "artifacts": _files(lambda p: client.list_logged_model_artifacts(model.model_id, p)),
    }


def registered_summary(client: MlflowClient, name: str, run_ids: dict[str, str],
                       model_id: str) -> list[dict[str, Any]]:
    """Every version of ``name``, the run it came from named by its label.

    ``model_id`` is the logged model registered.  MLflow's sqlite registry drops a version's
    model id (its table has no such column); cloudtrack keeps it, as MLflow's FileStore does
    (docs/format.md).  So both "none" and the right id pass; another id fails."""
    labels = {v: k for k, v in run_ids.items()}
    versions = client.search_model_versions(f"name = '{name}'")
    return [{
        "version": v.version,
        "status": v.status,
        "run": labels.get(v.run_id, v.run_id),
        "source": _norm(v.source),
        "model_id": ("none or the one registered" if v.model_id in (None, "", model_id)
                     else v.model_id),
        "tags": dict(sorted(v.tags.items())),
        "aliases": sorted(v.aliases),
    } for v in sorted(versions, key=lambda v: int(v.version))]


def predictions(values: Any) -> list[Any]:
    import numpy as np

    return [rounded(float(x)) for x in np.asarray(values, dtype=float).ravel()]
