"""Records built from their fields: the one place the shape of each record is written down.

The MLflow stores build new records here (``create_experiment``, ``create_run``,
``create_logged_model``, ``create_registered_model``, ``create_model_version``,
``delete_model_version``), and so does ``cloudtrack migrate``, which writes records with the
ids and times of another store (through :mod:`cloudtrack.store.entities`, which turns MLflow's
entities into these calls).  docs/format.md describes the records for people.

Nothing here imports MLflow; the few MLflow constants a record holds are spelled out below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cloudtrack.store.records import Record

#: ``mlflow.entities.LifecycleStage``
ACTIVE = "active"
DELETED = "deleted"
#: ``mlflow.entities.model_registry.model_version_stages``
STAGE_NONE = "None"
STAGE_DELETED_INTERNAL = "Deleted_Internal"
#: ``ModelVersionStatus.READY`` and ``LoggedModelStatus.PENDING``
VERSION_READY = "READY"
MODEL_PENDING = "PENDING"
#: A rename writes the record under the new name, then deletes the old one (docs/format.md):
#: the old record is first marked with the new name, the new one names the old.
RENAMED_TO = "renamed_to"
RENAMED_FROM = "renamed_from"

#: What a deleted model version keeps of its fields: only its number (so it is never reused),
#: times, status, tags, model id and storage location, as MLflow's stores redact it.
TOMBSTONE = {"current_stage": STAGE_DELETED_INTERNAL, "description": None, "user_id": None,
             "source": "REDACTED-SOURCE-PATH", "run_id": "REDACTED-RUN-ID",
             "run_link": "REDACTED-RUN-LINK", "status_message": None}


def text(value: Any) -> str:
    """A param value (or a tag value where None is not kept) as stored: a string, None as
    ``""``."""
    return "" if value is None else str(value)


def tag(value: Any) -> str | None:
    """A run, experiment or registered-model tag value as stored: a string, or None, which
    MLflow's SQL store keeps as given."""
    return None if value is None else str(value)


def pointer(experiment_id: str) -> Record:
    """Where something lives: a name claim (``experiment-names/``), a run index (``runs/``),
    a logged-model index (``logged-model-index/``)."""
    return {"experiment_id": str(experiment_id)}


def experiment(*, experiment_id: str, name: str, artifact_location: str, creation_time: int | None,
               last_update_time: int | None, lifecycle_stage: str = ACTIVE,
               tags: Mapping[str, Any] | None = None) -> Record:
    return {
        "experiment_id": str(experiment_id),
        "name": name,
        "artifact_location": artifact_location,
        "lifecycle_stage": lifecycle_stage,
        "creation_time": creation_time,
        "last_update_time": last_update_time,
        "tags": dict(tags or {}),
    }


def run_info(*, run_id: str, run_name: str | None, experiment_id: str, user_id: str | None,
             status: str, start_time: int | None, end_time: int | None, artifact_uri: str,
             lifecycle_stage: str = ACTIVE, deleted_time: int | None = None) -> Record:
    return {
        "run_id": run_id,
        "run_name": run_name,
        "experiment_id": str(experiment_id),
        "user_id": user_id,
        "status": status,
        "start_time": start_time,
        "end_time": end_time,
        "lifecycle_stage": lifecycle_stage,
        "deleted_time": deleted_time,
        "artifact_uri": artifact_uri,
    }


def dataset_input(dataset: Mapping[str, Any], tags: Mapping[str, Any]) -> Record:
    """One entry of a head's ``datasets``: the dataset's fields (name, digest, source_type,
    source, schema, profile) and its input tags."""
    return {"dataset": dict(dataset), "tags": dict(tags)}


def model_output(model_id: str, step: int) -> Record:
    return {"model_id": model_id, "step": step}


def run_head(info: Record, *, params: Mapping[str, Any] | None = None,
             tags: Mapping[str, Any] | None = None,
             metrics: Mapping[str, list[Any]] | None = None,
             datasets: Iterable[Record] = (), model_inputs: Iterable[str] = (),
             model_outputs: Iterable[Record] = ()) -> Record:
    """A run head.  ``metrics`` maps each key to its latest metric tuple
    (:func:`~cloudtrack.store.records.merge_latest`).  Inputs and outputs are present only
    when there are some, as logging adds them; a new head has no ``tail``."""
    head: Record = {
        "info": info,
        "params": {k: text(v) for k, v in (params or {}).items()},
        "tags": {k: tag(v) for k, v in (tags or {}).items()},
        "metrics": dict(metrics or {}),
    }
    extras: tuple[tuple[str, Iterable[Any]], ...] = (
        ("datasets", datasets), ("model_inputs", model_inputs), ("model_outputs", model_outputs))
    for field, entries in extras:
        listed = list(entries)
        if listed:
            head[field] = listed
    return head


def history_batch(points: list[list[Any]]) -> Record:
    """A history batch: metric tuples (:func:`~cloudtrack.store.records.metric_tuple`)."""
    return {"metrics": points}


def logged_model(*, experiment_id: str, model_id: str, name: str, artifact_location: str,
                 creation_timestamp: int, last_updated_timestamp: int,
                 model_type: str | None = None, source_run_id: str | None = None,
                 status: str = MODEL_PENDING, status_message: str | None = None,
                 lifecycle_stage: str = ACTIVE, tags: Mapping[str, Any] | None = None,
                 params: Mapping[str, Any] | None = None,
                 metrics: Iterable[list[Any]] = ()) -> Record:
    """A logged model; each of ``metrics`` is a metric tuple with the logging run's id
    appended."""
    return {
        "experiment_id": str(experiment_id),
        "model_id": model_id,
        "name": name,
        "artifact_location": artifact_location,
        "creation_timestamp": creation_timestamp,
        "last_updated_timestamp": last_updated_timestamp,
        "model_type": model_type,
        "source_run_id": source_run_id,
        "status": status,
        "status_message": status_message,
        "lifecycle_stage": lifecycle_stage,
        # None as "": MLflow's FileStore stores that (its SQL store refuses None here).
        "tags": {k: text(v) for k, v in (tags or {}).items()},
        "params": {k: text(v) for k, v in (params or {}).items()},
        "metrics": list(metrics),
    }


def registered_model(*, model_id: str, name: str, creation_timestamp: int,
                     last_updated_timestamp: int | None, description: str | None = None,
                     tags: Mapping[str, Any] | None = None,
                     aliases: Mapping[str, int] | None = None,
                     deployment_job_id: str | None = None) -> Record:
    """A registered model (or prompt); ``model_id`` is its stable id, which names the folder
    of its versions."""
    return {
        "id": model_id,
        "name": name,
        "creation_timestamp": creation_timestamp,
        "last_updated_timestamp": last_updated_timestamp,
        "description": description,
        "tags": {k: tag(v) for k, v in (tags or {}).items()},
        "aliases": {a: int(v) for a, v in (aliases or {}).items()},
        "deployment_job_id": deployment_job_id,
    }


def model_version(*, version: int, creation_timestamp: int, last_updated_timestamp: int | None,
                  source: str | None, storage_location: str | None, run_id: str | None = None,
                  description: str | None = None, user_id: str | None = None,
                  current_stage: str = STAGE_NONE, run_link: str | None = None,
                  status: str = VERSION_READY, status_message: str | None = None,
                  tags: Mapping[str, Any] | None = None, model_id: str | None = None) -> Record:
    return {
        "version": int(version),
        "creation_timestamp": creation_timestamp,
        "last_updated_timestamp": last_updated_timestamp,
        "description": description,
        "user_id": user_id,
        "current_stage": current_stage,
        "source": source,
        "storage_location": storage_location,
        "run_id": run_id,
        "run_link": run_link,
        "status": status,
        "status_message": status_message,
        "tags": {k: text(v) for k, v in (tags or {}).items()},
        "model_id": model_id,
    }


def tombstone(version: Record, now: int) -> Record:
    """``version`` deleted at ``now``: its number stays taken, its details are redacted."""
    version.update(TOMBSTONE, last_updated_timestamp=now)
    return version


def is_tombstone(version: Record) -> bool:
    return version.get("current_stage") == STAGE_DELETED_INTERNAL
