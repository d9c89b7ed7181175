"""Logged models (MLflow 3): ``logged-models/<exp>/<id>.json`` records, found from their id
through the immutable ``logged-model-index/<id>.json`` (docs/format.md)."""

from __future__ import annotations

import binascii
import logging
import uuid
from typing import Any

from mlflow.entities import (
    LifecycleStage,
    LoggedModel,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.search_utils import SearchLoggedModelsPaginationToken, SearchLoggedModelsUtils
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import (
    _validate_logged_model_name,
    _validate_param,
    _validate_tag_name,
)

from cloudtrack.errors import BlobNotFound
from cloudtrack.store import build, entities, layout, pages, records
from cloudtrack.store.cas import Change, versioned_update
from cloudtrack.store.records import Record
from cloudtrack.tracking.core import (
    StoreCore,
    check_experiment_active,
    distinct_experiment_ids,
    experiment_id_of,
    not_found,
)

log = logging.getLogger("cloudtrack.tracking")


def _model_not_found(model_id: str) -> MlflowException:
    return not_found(f"Logged model with ID '{model_id}' not found.")


class LoggedModelsMixin(StoreCore):

    def _model_experiment(self, model_id: str) -> str:
        if not isinstance(model_id, str) or "/" in model_id or model_id in ("", ".", ".."):
            raise _model_not_found(model_id)
        try:
            return str(records.read(self.blobs, layout.logged_model_index(model_id))
                       ["experiment_id"])
        except BlobNotFound:
            raise _model_not_found(model_id) from None

    def create_logged_model(self, experiment_id: str = layout.DEFAULT_EXPERIMENT_ID,
                            name: str | None = None, source_run_id: str | None = None,
                            tags: list[LoggedModelTag] | None = None,
                            params: list[LoggedModelParameter] | None = None,
                            model_type: str | None = None) -> LoggedModel:
        _validate_logged_model_name(name)
        # None is the default experiment, as for create_run (MLflow's stores fail on it).
        experiment_id = (layout.DEFAULT_EXPERIMENT_ID if experiment_id is None
                         else experiment_id_of(experiment_id))
        experiment = self.get_experiment(experiment_id)
        check_experiment_active(experiment_id, experiment.lifecycle_stage)
        for p in params or []:
            _validate_param(p.key, p.value)
        for t in tags or []:
            _validate_tag_name(t.key)
        model_id = f"m-{uuid.uuid4().hex}"
        now = get_current_time_millis()
        rec = build.logged_model(
            experiment_id=experiment_id, model_id=model_id,
            name=name or _generate_random_name(),
            artifact_location=append_to_uri_path(experiment.artifact_location, "models",
                                                 model_id, "artifacts"),
            creation_timestamp=now, last_updated_timestamp=now, model_type=model_type,
            source_run_id=source_run_id, status=LoggedModelStatus.PENDING.value,
            tags={t.key: t.value for t in tags or []},
            params={p.key: p.value for p in params or []})
        self.blobs.put_if_absent(layout.logged_model_index(model_id),
                                 records.dumps(build.pointer(experiment_id)))
        self.blobs.put_if_absent(layout.logged_model(experiment_id, model_id), records.dumps(rec))
        return entities.logged_model(rec)

    def _update_model(self, model_id: str, change: Change, *,
                      deleted_too: bool = False) -> Record:
        """Change a logged model; a deleted one is not found unless ``deleted_too``."""
        exp = self._model_experiment(model_id)

        def guarded(rec: Record) -> Record | None:
            if rec.get("lifecycle_stage") == LifecycleStage.DELETED and not deleted_too:
                raise _model_not_found(model_id)
            return change(rec)

        key = layout.logged_model(exp, model_id)
        rec, version = versioned_update(self.blobs, key, guarded,
                                        missing=lambda: _model_not_found(model_id))
        if _settled(rec):
            self._page_writer.add(layout.logged_model_pages(exp), key, version,
                                  records.dumps(rec))
        return rec

    def get_logged_model(self, model_id: str, allow_deleted: bool = False) -> LoggedModel:
        self._flusher.flush()  # buffered metrics may name this model
        exp = self._model_experiment(model_id)
        try:
            rec = records.read(self.blobs, layout.logged_model(exp, model_id))
        except BlobNotFound:
            raise _model_not_found(model_id) from None
        if rec.get("lifecycle_stage") == LifecycleStage.DELETED and not allow_deleted:
            raise _model_not_found(model_id)
        return entities.logged_model(rec)

    def finalize_logged_model(self, model_id: str, status: LoggedModelStatus) -> LoggedModel:
        self._flusher.flush()  # the model it returns carries the metrics logged for it

        def change(rec: Record) -> Record:
            rec["status"] = (LoggedModelStatus.from_int(status) if isinstance(status, int)
                             else LoggedModelStatus(status)).value
            rec["last_updated_timestamp"] = get_current_time_millis()
            return rec

        return entities.logged_model(self._update_model(model_id, change))

    def set_logged_model_tags(self, model_id: str, tags: list[LoggedModelTag]) -> None:
        for t in tags:
            _validate_tag_name(t.key)

        def change(rec: Record) -> Record:
            # None as "", as MLflow's FileStore stores it (its SQL store refuses None here).
            rec.setdefault("tags", {}).update({t.key: build.text(t.value) for t in tags})
            return rec

        self._update_model(model_id, change)

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        _validate_tag_name(key)

        def change(rec: Record) -> Record:
            if not records.remove_entry(rec, "tags", key):
                raise not_found(f"No tag with key {key!r} found for model with ID {model_id!r}.")
            return rec

        self._update_model(model_id, change)

    def log_logged_model_params(self, model_id: str, params: list[LoggedModelParameter]) -> None:
        for p in params or []:
            _validate_param(p.key, p.value)

        def change(rec: Record) -> Record:
            rec.setdefault("params", {}).update({p.key: build.text(p.value) for p in params})
            return rec

        self._update_model(model_id, change)

    def delete_logged_model(self, model_id: str) -> None:
        def change(rec: Record) -> Record:
            rec["lifecycle_stage"] = LifecycleStage.DELETED
            rec["last_updated_timestamp"] = get_current_time_millis()
            return rec

        self._update_model(model_id, change)

    def _log_model_metrics(self, run_id: str, metrics: list[list[Any]]) -> None:
        """Copy a run's metric points that name a logged model onto that model, keeping the
        latest point per (key, dataset name, dataset digest)."""
        by_model: dict[str, list[list[Any]]] = {}
        for t in metrics:
            by_model.setdefault(t[4], []).append([*t, run_id])
        for model_id, points in by_model.items():
            def change(rec: Record, points: list[list[Any]] = points) -> Record:
                latest = {(m[0], m[5], m[6]): m for m in rec.get("metrics", [])}
                records.merge_latest(latest, points, key=lambda p: (p[0], p[5], p[6]))
                rec["metrics"] = list(latest.values())
                return rec
            try:
                # A deleted model takes the points too, as in MLflow's stores.
                self._update_model(model_id, change, deleted_too=True)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("metric for unknown logged model %s of run %s kept on the run only",
                            model_id, run_id)

    def search_logged_models(self, experiment_ids: list[str], filter_string: str | None = None,
                             datasets: list[dict[str, Any]] | None = None,
                             max_results: int | None = None,
                             order_by: list[dict[str, Any]] | None = None,
                             page_token: str | None = None) -> PagedList[LoggedModel]:
        """Logged models as MLflow's SQL store pages them: a page token carries the query it
        belongs to and is refused for another one."""
        if datasets and not all(d.get("dataset_name") for d in datasets):
            raise MlflowException("`dataset_name` in the `datasets` clause must be specified.",
                                  INVALID_PARAMETER_VALUE)
        offset = 0
        if page_token:
            token = _decode_page_token(page_token)
            token.validate(experiment_ids, filter_string, order_by)
            offset = token.offset
        max_results = max_results or SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT
        exp_ids = distinct_experiment_ids(experiment_ids)
        self._flusher.flush()
        models: list[LoggedModel] = []
        for exp_id in exp_ids:
            folder = layout.logged_model_pages(exp_id)
            listed_pages = self._pool.submit(pages.list_pages_for_reading, self.blobs, folder)
            listing = [(i.key, i.version) for i in self.blobs.list(layout.logged_models(exp_id))]
            found, fetched, _ = self._read_paged(listing, folder, listed_pages)
            self._page_later(folder, fetched, _settled)
            for key, rec in found.items():
                if isinstance(rec, Exception):
                    if not isinstance(rec, BlobNotFound):
                        log.warning("skipping logged model %s: %s", self.blobs.object_uri(key), rec)
                    continue
                if rec.get("lifecycle_stage") == LifecycleStage.DELETED:
                    continue
                models.append(entities.logged_model(rec))
        filtered = SearchLoggedModelsUtils.filter_logged_models(models, filter_string, datasets)
        ordered = SearchLoggedModelsUtils.sort(filtered, order_by)
        # One more than a page: a token when there is more (the SQL store's arithmetic).
        rows = ordered[offset:offset + max_results + 1]
        next_token = None
        if len(rows) > max_results:
            next_token = SearchLoggedModelsPaginationToken(
                offset=offset + max_results, experiment_ids=experiment_ids,
                filter_string=filter_string, order_by=order_by).encode()
        return PagedList(rows[:max_results], next_token)


def _settled(rec: Record) -> bool:
    """Worth a page entry: a model no longer pending changes rarely (a running training's
    model is read directly)."""
    return rec.get("status") != LoggedModelStatus.PENDING.value


def _decode_page_token(page_token: str) -> SearchLoggedModelsPaginationToken:
    try:
        return SearchLoggedModelsPaginationToken.decode(page_token)
    except (binascii.Error, UnicodeDecodeError, AttributeError) as e:
        raise MlflowException(f"Invalid page token, could not base64-decode: {e}",
                              INVALID_PARAMETER_VALUE) from None
