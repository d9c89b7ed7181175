"""Records as MLflow's entities: experiments, run heads, metric tuples, logged models.

The one module of :mod:`cloudtrack.store` that imports MLflow (seconds of import time the
doctor does not pay).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow.entities import (
    Dataset,
    DatasetInput,
    Experiment,
    ExperimentTag,
    InputTag,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunTag,
)


def experiment(rec: Mapping[str, Any]) -> Experiment:
    return Experiment(
        experiment_id=str(rec["experiment_id"]),
        name=rec["name"],
        artifact_location=rec["artifact_location"],
        lifecycle_stage=rec["lifecycle_stage"],
        tags=[ExperimentTag(k, v) for k, v in rec.get("tags", {}).items()],
        creation_time=rec.get("creation_time"),
        last_update_time=rec.get("last_update_time"),
    )


def metric(t: list[Any], run_id: str | None) -> Metric:
    """A metric tuple (:mod:`cloudtrack.store.records`) as MLflow's Metric of ``run_id``."""
    key, value, timestamp, step, model_id, dname, ddigest = t
    return Metric(key=key, value=float(value), timestamp=int(timestamp), step=int(step),
                  model_id=model_id, dataset_name=dname, dataset_digest=ddigest, run_id=run_id)


def dataset_input(d: Mapping[str, Any]) -> DatasetInput:
    ds = d["dataset"]
    return DatasetInput(
        dataset=Dataset(name=ds["name"], digest=ds["digest"], source_type=ds["source_type"],
                        source=ds["source"], schema=ds.get("schema"), profile=ds.get("profile")),
        tags=[InputTag(k, v) for k, v in d.get("tags", {}).items()],
    )


def run(head: Mapping[str, Any]) -> Run:
    """A run head as MLflow's Run (latest metrics only; the history is elsewhere)."""
    info = head["info"]
    run_id = info["run_id"]
    run_info = RunInfo(
        run_id=run_id,
        experiment_id=str(info["experiment_id"]),
        user_id=info.get("user_id") or "",
        status=info["status"],
        start_time=info.get("start_time"),
        end_time=info.get("end_time"),
        lifecycle_stage=info["lifecycle_stage"],
        artifact_uri=info.get("artifact_uri"),
        run_name=info.get("run_name"),
    )
    metrics = [metric(t, run_id) for t in head.get("metrics", {}).values()]
    params = [Param(k, v) for k, v in head.get("params", {}).items()]
    tags = [RunTag(k, v) for k, v in head.get("tags", {}).items()]
    inputs = RunInputs(
        dataset_inputs=[dataset_input(d) for d in head.get("datasets", [])],
        model_inputs=[LoggedModelInput(model_id=m) for m in head.get("model_inputs", [])],
    )
    outputs = RunOutputs(model_outputs=[LoggedModelOutput(model_id=o["model_id"], step=o["step"])
                                        for o in head.get("model_outputs", [])])
    return Run(run_info, RunData(metrics=metrics, params=params, tags=tags), inputs, outputs)


def logged_model(rec: Mapping[str, Any]) -> LoggedModel:
    """A logged-model record; its metric tuples carry the logging run's id as an 8th field."""
    return LoggedModel(
        experiment_id=str(rec["experiment_id"]),
        model_id=rec["model_id"],
        name=rec["name"],
        artifact_location=rec["artifact_location"],
        creation_timestamp=rec["creation_timestamp"],
        last_updated_timestamp=rec["last_updated_timestamp"],
        model_type=rec.get("model_type"),
        source_run_id=rec.get("source_run_id"),
        status=LoggedModelStatus(rec["status"]),
        status_message=rec.get("status_message"),
        tags=rec.get("tags", {}),
        params=rec.get("params", {}),
        metrics=[metric(t[:7], t[7] if len(t) > 7 else None) for t in rec.get("metrics", [])],
    )
