"""Records as MLflow's entities (experiments, run heads, metric tuples, logged models,
registered models and their versions), and MLflow's entities as records
(:mod:`cloudtrack.store.build` holds the shapes), for writers that copy entities with their
ids and times, such as ``cloudtrack migrate``.

The one module of :mod:`cloudtrack.store` that imports MLflow (seconds of import time the
doctor does not pay).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
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
from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelAlias,
    RegisteredModelTag,
)
from mlflow.entities.model_registry.model_version_stages import ALL_STAGES, get_canonical_stage

from cloudtrack.store import build, records
from cloudtrack.store.records import Record

# -- records as entities -----------------------------------------------------------------------


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


def model_version(model: Mapping[str, Any], rec: Mapping[str, Any], *,
                  with_aliases: bool = True) -> ModelVersion:
    """Version record ``rec`` of registered-model record ``model``."""
    # Versions (and alias targets) are ints as MLflow's SQL store returns them; the REST
    # layer turns them into strings for clients.
    version = int(rec["version"])
    aliases = ([a for a, v in model.get("aliases", {}).items() if int(v) == version]
               if with_aliases else [])
    return ModelVersion(
        name=model["name"],
        version=version,  # type: ignore[arg-type]
        creation_timestamp=rec["creation_timestamp"],
        last_updated_timestamp=rec.get("last_updated_timestamp"),
        description=rec.get("description"),
        user_id=rec.get("user_id"),
        current_stage=rec.get("current_stage", build.STAGE_NONE),
        source=rec.get("source"),
        run_id=rec.get("run_id"),
        status=rec.get("status", build.VERSION_READY),
        status_message=rec.get("status_message"),
        tags=[ModelVersionTag(k, v) for k, v in rec.get("tags", {}).items()],
        run_link=rec.get("run_link"),
        aliases=sorted(aliases),
        model_id=rec.get("model_id"),
    )


def latest_versions(model: Mapping[str, Any], versions: Iterable[Mapping[str, Any]],
                    stages: list[str] | None = None) -> list[ModelVersion]:
    """The latest version in each of ``stages`` (every stage when None)."""
    wanted = [get_canonical_stage(s) for s in (stages or ALL_STAGES)]
    latest: dict[str, Mapping[str, Any]] = {}
    for rec in versions:
        stage = rec.get("current_stage", build.STAGE_NONE)
        if stage in wanted and (stage not in latest
                                or int(latest[stage]["version"]) < int(rec["version"])):
            latest[stage] = rec
    # Ordered by version number and without aliases, as MLflow's SQL store answers.
    found = sorted((latest[s] for s in dict.fromkeys(wanted) if s in latest),
                   key=lambda r: int(r["version"]))
    return [model_version(model, r, with_aliases=False) for r in found]


def registered_model(model: Mapping[str, Any],
                     versions: Iterable[Mapping[str, Any]]) -> RegisteredModel:
    """Registered-model record ``model`` with its version records ``versions``."""
    return RegisteredModel(
        name=model["name"],
        creation_timestamp=model["creation_timestamp"],
        last_updated_timestamp=model.get("last_updated_timestamp"),
        description=model.get("description"),
        latest_versions=latest_versions(model, versions),
        tags=[RegisteredModelTag(k, v) for k, v in model.get("tags", {}).items()],
        aliases=[RegisteredModelAlias(a, int(v))  # type: ignore[arg-type]
                 for a, v in model.get("aliases", {}).items()],
        deployment_job_id=model.get("deployment_job_id"),
    )


# -- entities as records -----------------------------------------------------------------------

def experiment_record(exp: Experiment, *, experiment_id: str, artifact_location: str,
                      lifecycle_stage: str | None = None) -> Record:
    """``exp`` with its name, times and tags, as experiment ``experiment_id`` of a store whose
    artifacts for it go to ``artifact_location``."""
    return build.experiment(
        experiment_id=experiment_id, name=exp.name, artifact_location=artifact_location,
        creation_time=exp.creation_time, last_update_time=exp.last_update_time,
        lifecycle_stage=lifecycle_stage or exp.lifecycle_stage, tags=dict(exp.tags))


def dataset_record(d: DatasetInput) -> Record:
    return build.dataset_input(dict(d.dataset), {t.key: t.value for t in d.tags})


def _same_point(a: list[Any], b: list[Any]) -> bool:
    def ident(t: list[Any]) -> tuple[Any, ...]:
        v = float(t[1])
        return t[0], int(t[2]), int(t[3]), "nan" if math.isnan(v) else v
    return ident(a) == ident(b)


def run_head_record(run: Run, *, experiment_id: str, artifact_uri: str,
                    history: Iterable[Metric] = (), model_ids: Mapping[str, str] | None = None,
                    deleted_time: int | None = None) -> Record:
    """``run`` as the head of a run of experiment ``experiment_id`` with ``history`` (every
    metric point) and its artifacts at ``artifact_uri``.  Logged-model ids are mapped through
    ``model_ids`` (those not in it stay).  A key's latest point is the one ``run`` reports
    (what its store's searches answer), else MLflow's rule over ``history``."""
    ids = model_ids or {}

    def mapped(m: Metric) -> list[Any]:
        t = records.metric_tuple(m)
        if t[4]:
            t[4] = ids.get(t[4], t[4])
        return t

    latest: dict[Any, list[Any]] = {}
    records.merge_latest(latest, [mapped(m) for m in history])
    for m in getattr(run.data, "_metric_objs", None) or []:
        reported = mapped(m)
        if m.key not in latest or not _same_point(latest[m.key], reported):
            latest[m.key] = reported
    info = run.info
    inputs, outputs = run.inputs, run.outputs
    return build.run_head(
        build.run_info(
            run_id=info.run_id, run_name=info.run_name, experiment_id=experiment_id,
            user_id=info.user_id, status=info.status, start_time=info.start_time,
            end_time=info.end_time, artifact_uri=artifact_uri,
            lifecycle_stage=info.lifecycle_stage, deleted_time=deleted_time),
        params=run.data.params, tags=run.data.tags, metrics=latest,
        datasets=[dataset_record(d) for d in (inputs.dataset_inputs if inputs else None) or []],
        model_inputs=[ids.get(m.model_id, m.model_id)
                      for m in (inputs.model_inputs if inputs else None) or []],
        model_outputs=[build.model_output(ids.get(m.model_id, m.model_id), m.step)
                       for m in (outputs.model_outputs if outputs else None) or []])


def logged_model_record(model: LoggedModel, *, experiment_id: str, artifact_location: str,
                        source_run_id: str | None) -> Record:
    """``model`` (its id, name, times, status, tags, params, metrics) as a logged model of
    experiment ``experiment_id`` made by run ``source_run_id``."""
    status = model.status
    if isinstance(status, int):
        status = LoggedModelStatus.from_int(status)
    metrics = [[*records.metric_tuple(m), m.run_id] for m in model.metrics or []]
    return build.logged_model(
        experiment_id=experiment_id, model_id=model.model_id, name=model.name,
        artifact_location=artifact_location, creation_timestamp=model.creation_timestamp,
        last_updated_timestamp=model.last_updated_timestamp, model_type=model.model_type,
        source_run_id=source_run_id, status=LoggedModelStatus(status).value,
        status_message=model.status_message, tags=model.tags, params=model.params,
        metrics=metrics)


def registered_model_record(model: RegisteredModel, *, model_id: str,
                            aliases: Mapping[str, int] | None = None) -> Record:
    """``model`` (name, times, description, tags, deployment job) as the record whose versions
    are under ``model_id``, with ``aliases`` (default: the model's own)."""
    return build.registered_model(
        model_id=model_id, name=model.name, creation_timestamp=model.creation_timestamp,
        last_updated_timestamp=model.last_updated_timestamp, description=model.description,
        # ``tags`` hides the tag that marks a prompt; the record keeps every tag.
        tags=getattr(model, "_tags", None) or model.tags,
        aliases=model.aliases if aliases is None else aliases,
        deployment_job_id=getattr(model, "deployment_job_id", None))


def model_version_record(v: ModelVersion, *, storage_location: str | None) -> Record:
    """``v`` with its number, times, stage, tags and the rest, as stored."""
    return build.model_version(
        version=int(v.version), creation_timestamp=v.creation_timestamp,
        last_updated_timestamp=v.last_updated_timestamp, source=v.source,
        storage_location=storage_location, run_id=v.run_id, description=v.description,
        user_id=v.user_id, current_stage=v.current_stage or build.STAGE_NONE,
        run_link=v.run_link, status=v.status, status_message=v.status_message, tags=v.tags,
        model_id=v.model_id)
