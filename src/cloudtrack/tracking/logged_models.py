"""Logged models (MLflow 3): ``logged-models/<exp>/<id>.json`` records, found from their id
through the immutable ``logged-model-index/<id>.json`` (docs/format.md)."""

from __future__ import annotations

import binascii
import logging
import math
import uuid
from typing import Any

from mlflow.entities import (
    LifecycleStage,
    LoggedModel,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
    Metric,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.search_utils import (
    SearchLoggedModelsPaginationToken,
    SearchLoggedModelsUtils,
    SearchUtils,
)
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

        # Settled, the record goes into its pages as it is written (StoreCore._page_record).
        rec, _ = versioned_update(self.blobs, layout.logged_model(exp, model_id), guarded,
                                  missing=lambda: _model_not_found(model_id))
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
        """Copy a run's metric points that name a logged model onto that model.

        Every point is kept, as MLflow's SQL store keeps them (``logged_model_metrics``): once
        per (key, timestamp, step, run), a NaN as 0.  The latest value of a key is a reader's
        business (search_logged_models' order_by)."""
        by_model: dict[str, list[list[Any]]] = {}
        for t in metrics:
            key, value, timestamp, step, model_id, dataset_name, dataset_digest = t[:7]
            value = 0.0 if math.isnan(float(value)) else value
            by_model.setdefault(model_id, []).append(
                [key, value, timestamp, step, model_id, dataset_name, dataset_digest, run_id])
        for model_id, points in by_model.items():
            def change(rec: Record, points: list[list[Any]] = points) -> Record | None:
                stored = rec.setdefault("metrics", [])
                known = {_point_identity(p) for p in stored}
                added = False
                for p in points:
                    if _point_identity(p) not in known:
                        known.add(_point_identity(p))
                        stored.append(p)
                        added = True
                return rec if added else None
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
            found, unpaged, _ = self._read_paged(listing, folder, listed_pages)
            self._page_later(folder, unpaged, _settled)
            for key, rec in found.items():
                if isinstance(rec, Exception):
                    if not isinstance(rec, BlobNotFound):
                        log.warning("skipping logged model %s: %s", self.blobs.object_uri(key), rec)
                    continue
                if rec.get("lifecycle_stage") == LifecycleStage.DELETED:
                    continue
                models.append(entities.logged_model(rec))
        filtered = _filter(models, filter_string, datasets)
        ordered = _sort(filtered, order_by)
        # One more than a page: a token when there is more (the SQL store's arithmetic).
        rows = ordered[offset:offset + max_results + 1]
        next_token = None
        if len(rows) > max_results:
            next_token = SearchLoggedModelsPaginationToken(
                offset=offset + max_results, experiment_ids=experiment_ids,
                filter_string=filter_string, order_by=order_by).encode()
        return PagedList(rows[:max_results], next_token)


def _point_identity(p: list[Any]) -> tuple[Any, ...]:
    """What MLflow's SQL store keys a logged model's point by (with the model): key,
    timestamp, step and run."""
    return p[0], int(p[2]), int(p[3]), p[7] if len(p) > 7 else None


def _on_dataset(m: Metric, dataset: dict[str, Any]) -> bool:
    return (m.dataset_name == dataset.get("dataset_name")
            and ("dataset_digest" not in dataset
                 or m.dataset_digest == dataset["dataset_digest"]))


def _filter(models: list[LoggedModel], filter_string: str | None,
            datasets: list[dict[str, Any]] | None) -> list[LoggedModel]:
    """MLflow's SQL store's filter: a metric clause holds when ANY point of the metric (on one
    of ``datasets``, if given) satisfies it, not only the first or the latest; with datasets
    and no metric clause, a model needs a point on one of them."""
    if not filter_string and not datasets:
        return models
    clauses = SearchLoggedModelsUtils.parse_search_filter(filter_string)

    def is_metric(c: dict[str, Any]) -> bool:
        return bool(SearchLoggedModelsUtils.is_metric(c.get("type"), c["comparator"].upper()))

    def holds(model: LoggedModel, c: dict[str, Any]) -> bool:
        if not is_metric(c):
            return bool(SearchLoggedModelsUtils._does_logged_model_match_clause(
                model, c, datasets))
        key = SearchUtils.translate_key_alias(c["key"])
        compare = SearchUtils.get_comparison_func(c["comparator"].upper())
        value = float(c["value"])
        return any(m.key == key and compare(m.value, value)
                   and (not datasets or any(_on_dataset(m, d) for d in datasets))
                   for m in model.metrics or [])

    if datasets and not any(is_metric(c) for c in clauses):
        models = [m for m in models
                  if any(_on_dataset(p, d) for p in m.metrics or [] for d in datasets)]
    return [m for m in models if all(holds(m, c) for c in clauses)]


def _sort(models: list[LoggedModel], order_by: list[dict[str, Any]] | None) -> list[LoggedModel]:
    """MLflow's order of logged models, a metric ordering by its latest point as MLflow's SQL
    store picks it: latest timestamp, then highest step, then first run id.  MLflow's sort
    takes the first of the latest timestamp (a stable sort), so it sorts copies whose points
    are in that order."""
    if not any("." in str(o.get("field_name", "")) for o in order_by or [] if isinstance(o, dict)):
        return SearchLoggedModelsUtils.sort(models, order_by)  # type: ignore[no-any-return]

    def view(m: LoggedModel) -> LoggedModel:
        points = sorted(m.metrics or [], key=lambda p: p.run_id or "")
        points.sort(key=lambda p: p.step, reverse=True)
        return LoggedModel(experiment_id=m.experiment_id, model_id=m.model_id, name=m.name,
                           artifact_location=m.artifact_location,
                           creation_timestamp=m.creation_timestamp,
                           last_updated_timestamp=m.last_updated_timestamp,
                           model_type=m.model_type, source_run_id=m.source_run_id,
                           status=m.status, status_message=m.status_message, tags=m.tags,
                           params=m.params, metrics=points)

    originals = {m.model_id: m for m in models}
    ordered = SearchLoggedModelsUtils.sort([view(m) for m in models], order_by)
    return [originals[m.model_id] for m in ordered]


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
