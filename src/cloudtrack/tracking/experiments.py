"""Experiments: ``experiments/<id>.json`` records with ids claimed in order by put-if-absent,
and names claimed by put-if-absent on ``experiment-names/<name>`` (docs/format.md)."""

from __future__ import annotations

import logging

from mlflow.entities import Experiment, ExperimentTag, LifecycleStage, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    BAD_REQUEST,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.utils.search_utils import SearchExperimentsUtils, SearchUtils
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local
from mlflow.utils.validation import (
    _validate_experiment_artifact_location_length,
    _validate_experiment_name,
    _validate_experiment_tag,
)

from cloudtrack.errors import BlobNotFound
from cloudtrack.store import build, claims, entities, layout, pages, records
from cloudtrack.store.cas import Change, versioned_update
from cloudtrack.store.records import Record
from cloudtrack.tracking.core import (
    StoreCore,
    check_experiment_active,
    check_max_results,
    distinct_experiment_ids,
    experiment_id_of,
    not_found,
)

log = logging.getLogger("cloudtrack.tracking")


def _no_experiment(experiment_id: str) -> MlflowException:
    return not_found(f"No Experiment with id={experiment_id} exists")


def _already_exists(name: str, code: int = RESOURCE_ALREADY_EXISTS) -> MlflowException:
    return MlflowException(f"Experiment(name={name}) already exists.", code)


class ExperimentsMixin(StoreCore):

    def _get_experiment_record(self, experiment_id: str) -> tuple[Record, str]:
        """The record of ``experiment_id``, an id as :func:`experiment_id_of` returns it (a
        pending record whose name claim does not point at it is no experiment)."""
        try:
            rec, version = records.read_versioned(self.blobs, layout.experiment(experiment_id))
        except BlobNotFound:
            raise _no_experiment(experiment_id) from None
        if not claims.visible(self.blobs, rec):
            raise _no_experiment(experiment_id)
        return rec, version

    def create_experiment(self, name: str, artifact_location: str | None = None,
                          tags: list[ExperimentTag] | None = None) -> str:
        _validate_experiment_name(name)
        if artifact_location:
            # As MLflow's stores do: a relative local path means the same folder to every reader.
            artifact_location = resolve_uri_if_local(artifact_location)
            _validate_experiment_artifact_location_length(artifact_location)
        for tag in tags or []:
            _validate_experiment_tag(tag.key, tag.value)
        now = get_current_time_millis()

        def record(exp_id: str) -> Record:
            return build.experiment(
                experiment_id=exp_id, name=name,
                artifact_location=artifact_location
                or append_to_uri_path(self.artifact_root_uri, exp_id),
                creation_time=now, last_update_time=now,
                tags={t.key: t.value for t in tags or []})

        try:
            return claims.create_experiment(self.blobs, name, record)
        except claims.NameTaken:
            raise _already_exists(name) from None

    @staticmethod
    def _named_or_default(experiment_id: str | None) -> str:
        """No experiment id (None, ``""``) names the default experiment, as on MLflow's SQL
        store."""
        return experiment_id_of(experiment_id) if experiment_id else layout.DEFAULT_EXPERIMENT_ID

    def get_experiment(self, experiment_id: str) -> Experiment:
        return entities.experiment(
            self._get_experiment_record(self._named_or_default(experiment_id))[0])

    def get_experiment_by_name(self, experiment_name: str) -> Experiment | None:
        if not isinstance(experiment_name, str) or not experiment_name:
            return None  # no experiment has such a name
        try:
            claim = records.read(self.blobs, layout.experiment_name(experiment_name))
        except BlobNotFound:
            return None
        try:
            exp = self.get_experiment(str(claim["experiment_id"]))
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return exp if exp.name == experiment_name else None

    def _all_experiments(self) -> list[Experiment]:
        folder = layout.experiment_pages()
        listed_pages = self._pool.submit(pages.list_pages_for_reading, self.blobs, folder)
        files, _ = self.blobs.list_dir(layout.EXPERIMENTS)
        listing = [(f.key, f.version) for f in files if f.key.endswith(".json")]
        found, unpaged, _ = self._read_paged(listing, folder, listed_pages)
        self._page_later(folder, unpaged, lambda rec: not rec.get(claims.PENDING))
        out: list[Experiment] = []
        pending: list[tuple[str, Record]] = []
        for key, rec in found.items():
            if isinstance(rec, Exception):
                if isinstance(rec, BlobNotFound):
                    continue  # withdrawn while we listed
                log.warning("skipping experiment record %s: %s", self.blobs.object_uri(key), rec)
                continue
            if rec.get(claims.PENDING):
                pending.append((key, rec))  # the rare path: a creator failed or is creating
                continue
            self._add_experiment(out, key, rec)
        shown = self._pool.map(lambda kr: claims.visible(self.blobs, kr[1]), pending)
        for (key, rec), ok in zip(pending, list(shown), strict=True):
            if ok:
                self._add_experiment(out, key, rec)
        return out

    def _add_experiment(self, out: list[Experiment], key: str, rec: Record) -> None:
        try:
            out.append(entities.experiment(rec))
        except (KeyError, TypeError) as e:
            log.warning("skipping malformed experiment record %s: %r",
                        self.blobs.object_uri(key), e)

    def search_experiments(self, view_type: int = ViewType.ACTIVE_ONLY,
                           max_results: int = SEARCH_MAX_RESULTS_DEFAULT,
                           filter_string: str | None = None, order_by: list[str] | None = None,
                           page_token: str | None = None) -> PagedList[Experiment]:
        check_max_results(max_results)
        stages = LifecycleStage.view_type_to_stages(view_type)  # none for an unknown view type
        experiments = [e for e in self._all_experiments() if e.lifecycle_stage in stages]
        filtered = SearchExperimentsUtils.filter(experiments, filter_string)
        ordered = SearchExperimentsUtils.sort(filtered,
                                              order_by or ["creation_time DESC", "experiment_id ASC"])
        page, token = SearchUtils.paginate(ordered, page_token, max_results)
        return PagedList(page, token)

    def filter_active_experiment_ids(self, experiment_ids: list[str]) -> list[str]:
        """The active ones of ``experiment_ids``, as MLflow's SQL store answers: each id
        validated, each active experiment once, in id order."""
        ids = distinct_experiment_ids(experiment_ids)

        def active(exp_id: str) -> bool:
            try:
                rec = records.read(self.blobs, layout.experiment(exp_id))
            except BlobNotFound:
                return False
            return bool(rec.get("lifecycle_stage") == LifecycleStage.ACTIVE
                        and claims.visible(self.blobs, rec))

        found = list(self._pool.map(active, ids))
        return sorted((i for i, ok in zip(ids, found, strict=True) if ok), key=int)

    def _update_experiment(self, experiment_id: str, change: Change) -> Record:
        """Change the record of ``experiment_id``, an id as :func:`experiment_id_of` returns
        it.  A pending record is no experiment unless its name claim points at it; then the
        change settles it (its creator died before it could)."""
        def settled(rec: Record) -> Record | None:
            if rec.get(claims.PENDING):
                if not claims.visible(self.blobs, rec):
                    raise _no_experiment(experiment_id)
                return change(claims.settle(rec))
            return change(rec)

        rec, _ = versioned_update(self.blobs, layout.experiment(experiment_id), settled,
                                  missing=lambda: _no_experiment(experiment_id))
        return rec

    def _set_lifecycle(self, experiment_id: str, old: str, new: str) -> None:
        """Move the experiment, then its runs, from stage ``old`` to ``new``; the runs'
        buffered data is written first, as the calls came (a metric logged before
        ``delete_experiment`` is there after ``restore_experiment``)."""
        self._flusher.flush_runs(rid for rid in self._flusher.pending_runs()
                                 if self._run_exp.get(rid) == experiment_id)

        def change(rec: Record) -> Record:
            if rec["lifecycle_stage"] != old:
                raise _no_experiment(experiment_id)
            rec["lifecycle_stage"] = new
            rec["last_update_time"] = get_current_time_millis()
            return rec

        self._update_experiment(experiment_id, change)
        deleted_time = get_current_time_millis() if new == LifecycleStage.DELETED else None

        def one(key: str) -> None:
            def change_head(head: Record) -> Record | None:
                if head["info"]["lifecycle_stage"] != old:
                    return None
                head["info"]["lifecycle_stage"] = new
                head["info"]["deleted_time"] = deleted_time
                return head
            run_id = layout.id_from_key(key)
            with self._run_locks(run_id):
                self._flusher.flush(run_id)  # logged meanwhile by another thread
                self._update_head_key(key, change_head)

        keys = [i.key for i in self.blobs.list(layout.heads(experiment_id))]
        list(self._pool.map(one, keys))

    def delete_experiment(self, experiment_id: str) -> None:
        # The default experiment too: MLflow's SQL store deletes it like any other.
        self._set_lifecycle(experiment_id_of(experiment_id), LifecycleStage.ACTIVE,
                            LifecycleStage.DELETED)

    def restore_experiment(self, experiment_id: str) -> None:
        self._set_lifecycle(experiment_id_of(experiment_id), LifecycleStage.DELETED,
                            LifecycleStage.ACTIVE)

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        _validate_experiment_name(new_name)
        experiment_id = self._named_or_default(experiment_id)
        rec, _ = self._get_experiment_record(experiment_id)
        if rec["lifecycle_stage"] != LifecycleStage.ACTIVE:
            raise MlflowException("Cannot rename a non-active experiment.", INVALID_STATE)
        old_name = rec["name"]

        def change(r: Record) -> Record:
            if r["name"] != new_name:
                # Marks the old name's claim as a leftover until the last step deletes it.
                r[claims.RENAMED_FROM] = r["name"]
            r["name"] = new_name
            r["last_update_time"] = get_current_time_millis()
            return r

        if old_name == new_name:
            self._update_experiment(experiment_id, change)  # stamped, as MLflow's SQL store does
            return
        # Three writes: the new name's claim, the record, the old claim's delete.  A renamer
        # killed after the first leaves a claim that ages into a free name; after the second,
        # the record's renamed_from frees the old name at once (claims.stale_claim).
        try:
            claims.claim_name(self.blobs, new_name, experiment_id)
        except claims.NameTaken:
            raise _already_exists(new_name, BAD_REQUEST) from None
        try:
            self._update_experiment(experiment_id, change)
        except Exception:
            self.blobs.delete(layout.experiment_name(new_name))
            raise
        self.blobs.delete(layout.experiment_name(old_name))

    def set_experiment_tag(self, experiment_id: str, tag: ExperimentTag) -> None:
        _validate_experiment_tag(tag.key, tag.value)
        experiment_id = experiment_id_of(experiment_id)

        def change(rec: Record) -> Record:
            check_experiment_active(experiment_id, rec["lifecycle_stage"])
            # A None value stays None, as create_experiment keeps it and MLflow's SQL store does.
            rec.setdefault("tags", {})[tag.key] = None if tag.value is None else str(tag.value)
            return rec

        self._update_experiment(experiment_id, change)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        experiment_id = experiment_id_of(experiment_id)

        def change(rec: Record) -> Record:
            check_experiment_active(experiment_id, rec["lifecycle_stage"])
            if not records.remove_entry(rec, "tags", key):
                raise not_found(f"No tag with name: {key} in experiment with id {experiment_id}")
            return rec

        self._update_experiment(experiment_id, change)
