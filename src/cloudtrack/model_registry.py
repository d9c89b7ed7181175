"""MLflow's model-registry ``AbstractStore`` over the blob layer.

Layout (docs/format.md):

* ``registry/models/<encoded name>.json`` — the registered model: a stable ``id``, name,
  description, timestamps, tags and aliases.  Created with put-if-absent (unique names without
  a lock); changed only by read-modify-write under a version precondition.
* ``registry/versions/<model id>/<version, 10 digits>.json`` — one record per model version,
  claimed with put-if-absent on the next free number: concurrent registrations get distinct,
  gap-free numbers.  Versions hang off the model's id, not its name, so a rename moves nothing.

Deleting a model removes its registry records only, never the runs' artifacts.  Prompts,
``copy_model_version`` and webhooks come from MLflow's base class, which builds them on the
methods implemented here (webhooks are refused there with a clear error).  Every public method
answers MLflow's errors (:mod:`cloudtrack.mlflow_errors`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar

from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelTag,
)
from mlflow.entities.model_registry.model_version_stages import (
    DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS,
    STAGE_ARCHIVED,
    STAGE_DELETED_INTERNAL,
    get_canonical_stage,
)
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.exceptions import MlflowException
from mlflow.prompt.registry_utils import (
    add_prompt_filter_string,
    handle_resource_already_exist_error,
    has_prompt_tag,
)
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.model_registry import (
    SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT,
    SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD,
    SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT,
    SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD,
)
from mlflow.store.model_registry.abstract_store import AbstractStore
from mlflow.utils.search_utils import SearchModelUtils, SearchModelVersionUtils, SearchUtils
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import (
    _validate_model_alias_name,
    _validate_model_alias_name_reserved,
    _validate_model_name,
    _validate_model_renaming,
    _validate_model_version,
    _validate_model_version_tag,
    _validate_registered_model_tag,
    _validate_tag_name,
)

from cloudtrack import forks
from cloudtrack.blobs import open_blobs
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import AlreadyExists, BlobNotFound, CorruptObject
from cloudtrack.mlflow_errors import boundary
from cloudtrack.store import build, entities, layout, pages, records
from cloudtrack.store.cache import VersionedCache
from cloudtrack.store.cas import Change, versioned_update
from cloudtrack.store.pagewriter import PageWriter
from cloudtrack.store.records import Record

log = logging.getLogger("cloudtrack.registry")

_LATEST = "latest"

RENAMED_TO, RENAMED_FROM = build.RENAMED_TO, build.RENAMED_FROM

#: A transition that archives the versions already in its stage commits on the model record
#: (docs/format.md): ``archived_before[<stage>] = {"version": <n>, "at": <ms>}`` says that
#: version n entered the stage at ``at`` and every other version that entered it before is
#: archived.  A version record's ``stage_since`` says when it entered its current stage.
ARCHIVED_BEFORE = "archived_before"
STAGE_SINCE = "stage_since"


def effective_version(model: Record, rec: Record) -> Record:
    """Version record ``rec`` as readers see it under its model's record ``model``.

    The last transition into a stage that archived the versions there (``archived_before``)
    is committed on the model record before the version records are written: a version it
    moved counts as in that stage until its record says it entered a stage later, and one
    that entered the stage before it counts as archived (at the transition's time).  Records
    without ``stage_since`` entered their stage before any such transition.  The same record
    when the model's record claims nothing about it."""
    stage = rec.get("current_stage", build.STAGE_NONE)
    claims = model.get(ARCHIVED_BEFORE)
    if not claims or stage == STAGE_DELETED_INTERNAL:
        return rec
    number, since = int(rec["version"]), rec.get(STAGE_SINCE)

    def before(at: int) -> bool:
        return since is None or int(since) < at

    moved = [(int(c["at"]), s) for s, c in claims.items()
             if int(c["version"]) == number and before(int(c["at"]))]
    if moved:
        at, stage = max(moved)
    else:
        claim = claims.get(stage)
        if claim is None or int(claim["version"]) == number or not before(int(claim["at"])):
            return rec
        at, stage = int(claim["at"]), STAGE_ARCHIVED
    return {**rec, "current_stage": stage, STAGE_SINCE: at,
            "last_updated_timestamp": max(int(rec.get("last_updated_timestamp") or 0), at)}


def _transition_time(model: Record, versions: Iterable[Record] = ()) -> int:
    """A transition's time: now, yet later than every transition the model record names and
    than the ``stage_since`` of ``versions``, so that what it archives and what moves after
    it follow the order of the writes even where the writers' clocks disagree."""
    seen = [int(c["at"]) for c in (model.get(ARCHIVED_BEFORE) or {}).values()]
    seen += [int(v[STAGE_SINCE]) for v in versions if v.get(STAGE_SINCE) is not None]
    return max([get_current_time_millis(), *(t + 1 for t in seen)])


class _ArchivedMeanwhile(Exception):
    """Another transition archiving the same stage committed between our read and write."""


def current_models(found: list[Record]) -> list[Record]:
    """The registered-model records of a listing, each model once: the leftover of an
    unfinished rename is left out when the record it was renamed to is listed with its id."""
    held = {(r.get("name"), r.get("id")) for r in found}
    return [r for r in found
            if not r.get(RENAMED_TO) or (r[RENAMED_TO], r.get("id")) not in held]


def _pages_folder(key: str) -> str | None:
    """The pages a registry record belongs in."""
    if key.startswith(layout.REGISTERED_MODELS):
        return layout.registry_pages("models")
    if key.startswith(layout.MODEL_VERSIONS):
        return layout.registry_pages("versions")
    return None


def _model_not_found(name: str) -> MlflowException:
    return MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)


def _version_not_found(name: str, version: Any) -> MlflowException:
    return MlflowException(f"Model Version (name={name}, version={version}) not found",
                           RESOURCE_DOES_NOT_EXIST)


def _checked_max_results(max_results: Any, threshold: int) -> int:
    """A search's ``max_results``, refused with MLflow's messages unless 1 <= it <= threshold."""
    if not isinstance(max_results, int) or max_results < 1:
        raise MlflowException(
            "Invalid value for max_results. It must be a positive integer,"
            f" but got {max_results}", INVALID_PARAMETER_VALUE)
    if max_results > threshold:
        raise MlflowException(
            "Invalid value for request parameter max_results. It must be at most "
            f"{threshold}, but got value {max_results}", INVALID_PARAMETER_VALUE)
    return max_results


T = TypeVar("T")


def _page(ordered: list[T], page_token: str | None, max_results: int) -> PagedList[T]:
    start = SearchUtils.parse_start_offset_from_page_token(page_token)
    end = start + max_results
    token = SearchUtils.create_page_token(end) if end < len(ordered) else None
    return PagedList(ordered[start:end], token)


@boundary("__init__")
class BlobRegistryStore(AbstractStore):
    """MLflow model registry on a cloudtrack store (the same URI as the tracking store)."""

    def __init__(self, store_uri: str, tracking_uri: str | None = None, *,
                 config: StoreConfig | None = None) -> None:
        super().__init__(store_uri, tracking_uri)
        self.config = config or resolve(store_uri)
        self.store_uri = self.config.display_uri
        self.tracking_uri = tracking_uri
        self.blobs = open_blobs(self.config)
        if self.config.backend == "file":
            self.blobs.create_container()
        self._pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="cloudtrack-reg")
        #: Registry records read by searches, by the version a listing reported.
        self._cache = VersionedCache()
        #: The page folders this process has read (a first read reads them all, early).
        self._read_folders: set[str] = set()
        forks.watch(self)
        #: Every registry record this process writes goes into the registry's pages, so a
        #: search reads a few hundred per GET (docs/format.md, "Head pages").
        self._page_writer = PageWriter(self.blobs)
        self.blobs.watch(self._page_record)

    def _after_fork(self) -> None:
        """In a forked child (cloudtrack.forks): a pool of its own, a lock nobody holds."""
        self._pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="cloudtrack-reg")
        self._cache.after_fork()

    def _page_record(self, key: str, version: str, data: bytes) -> None:
        folder = _pages_folder(key)
        if folder is not None:
            self._page_writer.add(folder, key, version, data)

    def close(self) -> None:
        self._page_writer.close()
        self._pool.shutdown(wait=False)
        self.blobs.close()

    # -- records ----------------------------------------------------------------------------

    def _read(self, key: str) -> tuple[Record, str] | None:
        try:
            return records.read_versioned(self.blobs, key)
        except BlobNotFound:
            return None

    def _listed(self, prefix: str, *, skip_corrupt: bool) -> list[Record]:
        """The records under ``prefix`` that the listing vouches for: cached at their listed
        version, else from the registry's pages, else read (in parallel).  A record deleted
        since the listing is left out; a corrupt one is logged and left out with
        ``skip_corrupt``, else raised."""
        return list(self._listed_by_key(prefix, skip_corrupt=skip_corrupt).values())

    def _listed_by_key(self, prefix: str, *, skip_corrupt: bool,
                       spread: bool = False) -> dict[str, Record]:
        """:meth:`_listed`, by key; ``spread``: a large listing, read in parallel parts."""
        # Pages serve listings of all models or all versions (one model's versions are few).
        folder = (_pages_folder(prefix) if prefix in (layout.REGISTERED_MODELS,
                                                      layout.MODEL_VERSIONS) else None)
        listed_pages = (self._pool.submit(pages.list_pages_for_reading, self.blobs, folder)
                        if folder else None)
        # The first read of them in this process: the pages are read as soon as they are
        # listed, while the records' listing goes on (one round trip less).
        early = (pages.read_early(self.blobs, folder, listed_pages, self._pool.map)
                 if folder is not None and listed_pages is not None
                 and folder not in self._read_folders else None)
        infos = (self.blobs.list_spread(prefix, self._pool.map) if spread
                 else self.blobs.list(prefix))
        listing = [(i.key, i.version) for i in infos]
        unpaged: list[str] = []
        if folder is not None and listed_pages is not None:
            read: frozenset[str] = frozenset()
            if early is not None:  # records missing still are in no page, or newer
                found, read = early.result()
                self._cache.merge(found)
            unpaged = pages.seed(self._cache, self.blobs, folder, listed_pages.result(),
                                 listing, self._pool.map, read)
            self._read_folders.add(folder)
        for got in self._cache.read_many(self.blobs, listing, self._pool.map).values():
            if isinstance(got, CorruptObject) and skip_corrupt:
                log.warning("skipping registry record: %s", got)
            elif isinstance(got, Exception) and not isinstance(got, BlobNotFound):
                raise got
        if folder is not None:
            # Read one by one, in no page: into the pages for the next process (how a
            # registry written before pages, and entries writers gave up, catch up).
            for key, (version, rec) in self._cache.entries(unpaged).items():
                self._page_writer.add(folder, key, version, records.dumps(rec))
        return self._cache.vouched(listing)

    def _all_versions(self) -> dict[str, list[Record]]:
        """Every model's version records, by model id, in version order: one listing of all
        versions (in parallel parts when large), not one per model."""
        by_model: dict[str, list[Record]] = {}
        found = self._listed_by_key(layout.MODEL_VERSIONS, skip_corrupt=False, spread=True)
        for key, rec in found.items():
            by_model.setdefault(key[len(layout.MODEL_VERSIONS):].split("/", 1)[0], []).append(rec)
        for versions in by_model.values():
            versions.sort(key=lambda r: int(r["version"]))
        return by_model

    def _renamed_away(self, rec: Record) -> bool:
        """Whether ``rec`` is the old name of a rename that landed but did not finish (killed
        or failed before it deleted the old record): the new record holds its id.  One GET,
        only for a record marked by a rename."""
        new_name = rec.get(RENAMED_TO)
        if not new_name:
            return False
        got = self._read(layout.registered_model(str(new_name)))
        return got is not None and got[0].get("id") == rec.get("id")

    def _read_model(self, name: str) -> tuple[Record, str] | None:
        """The registered model called ``name`` and its version; None when there is none."""
        got = self._read(layout.registered_model(name))
        if got is None or self._renamed_away(got[0]):
            return None
        return got

    def _model_record(self, name: str) -> Record:
        _validate_model_name(name)
        got = self._read_model(name)
        if got is None:
            raise _model_not_found(name)
        return got[0]

    def _model_of_version(self, name: str, version: Any) -> Record:
        """The registered model a version call names; when there is none, the version is
        what is missing, in the words of both of MLflow's registry stores."""
        _validate_model_name(name)
        got = self._read_model(name)
        if got is None:
            raise _version_not_found(name, version)
        return got[0]

    def _update_model(self, name: str, change: Change) -> Record:
        _validate_model_name(name)
        rec, _ = versioned_update(self.blobs, layout.registered_model(name),
                                  self._guarded(name, change),
                                  missing=lambda: _model_not_found(name))
        return rec

    def _drop_predecessor(self, rec: Record, depth: int = 0) -> None:
        """Delete the record an unfinished rename left under ``rec``'s former name (and that
        one's, for renames that failed in a row), before ``rec`` goes (deleted or renamed
        again): once ``rec`` is gone nothing would tell that leftover from a model."""
        old_name = rec.get(RENAMED_FROM)
        if not old_name or depth > 16:
            return
        got = self._read(layout.registered_model(str(old_name)))
        if got is not None and got[0].get("id") == rec.get("id") \
                and got[0].get(RENAMED_TO) == rec.get("name"):
            self._drop_predecessor(got[0], depth + 1)
            self.blobs.delete(layout.registered_model(str(old_name)))

    def _touch(self, name: str, now: int | None = None) -> Record:
        stamp = now or get_current_time_millis()

        def change(rec: Record) -> Record:
            rec["last_updated_timestamp"] = stamp
            return rec

        return self._update_model(name, change)

    def _version_records(self, model: Record) -> list[Record]:
        found = self._listed(layout.model_versions(model["id"]), skip_corrupt=False)
        return sorted(found, key=lambda r: int(r["version"]))

    def _version_record(self, model: Record, version: Any) -> tuple[Record, str]:
        got = self._read(layout.model_version(model["id"], int(version)))
        if got is None or got[0].get("current_stage") == STAGE_DELETED_INTERNAL:
            raise _version_not_found(model["name"], version)
        return got

    def _update_version(self, name: str, version: Any, change: Change,
                        model: Record | None = None) -> Record:
        """Apply ``change`` to the version as readers see it (the write also stores its stage
        when an archiving transition left that unwritten: :func:`effective_version`).
        ``model``: the model's record, when the caller has just read it."""
        version = _validate_model_version(version)
        if model is None:
            model = self._model_of_version(name, version)

        def guarded(rec: Record) -> Record | None:
            if rec.get("current_stage") == STAGE_DELETED_INTERNAL:
                raise _version_not_found(name, version)
            return change(effective_version(model, rec))

        rec, _ = versioned_update(self.blobs, layout.model_version(model["id"], int(version)),
                                  guarded, missing=lambda: _version_not_found(name, version))
        return rec

    # -- entities ---------------------------------------------------------------------------

    # Every version a reader gets is built here, from the model's record and the version's,
    # as :func:`effective_version` resolves them.

    def _version_entity(self, model: Record, rec: Record, *,
                        with_aliases: bool = True) -> ModelVersion:
        return entities.model_version(model, effective_version(model, rec),
                                      with_aliases=with_aliases)

    def _latest(self, model: Record, versions: list[Record],
                stages: list[str] | None = None) -> list[ModelVersion]:
        return entities.latest_versions(model, [effective_version(model, v) for v in versions],
                                        stages)

    def _model_entity(self, model: Record,
                      versions: list[Record] | None = None) -> RegisteredModel:
        if versions is None:
            versions = self._version_records(model)
        # An alias of a deleted version is gone, as in MLflow's stores, even when the call
        # that deleted the version failed before it could drop the alias.
        live = {int(v["version"]) for v in versions
                if v.get("current_stage") != STAGE_DELETED_INTERNAL}
        aliases = {a: v for a, v in model.get("aliases", {}).items() if int(v) in live}
        return entities.registered_model({**model, "aliases": aliases},
                                         [effective_version(model, v) for v in versions])

    # -- registered models ------------------------------------------------------------------

    def create_registered_model(self, name: str, tags: list[RegisteredModelTag] | None = None,
                                description: str | None = None,
                                deployment_job_id: str | None = None) -> RegisteredModel:
        _validate_model_name(name)
        for tag in tags or []:
            _validate_registered_model_tag(tag.key, tag.value)
        now = get_current_time_millis()
        rec = build.registered_model(
            model_id=uuid.uuid4().hex, name=name, creation_timestamp=now,
            last_updated_timestamp=now, description=description,
            tags={t.key: t.value for t in tags or []}, deployment_job_id=deployment_job_id)
        try:
            self._put_new_model(name, rec)
        except AlreadyExists:
            existing = self._model_record(name)
            handle_resource_already_exist_error(
                name, has_prompt_tag(existing.get("tags", {})),
                has_prompt_tag({t.key: t.value for t in tags or []}))
            raise MlflowException(f"Registered Model (name={name}) already exists.",
                                  RESOURCE_ALREADY_EXISTS) from None
        return self._model_entity(rec, [])

    def _put_new_model(self, name: str, rec: Record) -> None:
        """Write a new model's record under ``name``; a leftover of an unfinished rename
        away from ``name`` gives way.  Raises AlreadyExists."""
        key = layout.registered_model(name)
        try:
            self.blobs.put_if_absent(key, records.dumps(rec))
        except AlreadyExists:
            got = self._read(key)
            if got is None or not self._renamed_away(got[0]):
                raise
            self.blobs.delete(key)
            self.blobs.put_if_absent(key, records.dumps(rec))

    def get_registered_model(self, name: str) -> RegisteredModel:
        return self._model_entity(self._model_record(name))

    def update_registered_model(self, name: str, description: str | None,
                                deployment_job_id: str | None = None) -> RegisteredModel:
        def change(rec: Record) -> Record:
            rec["description"] = description
            if deployment_job_id is not None:
                rec["deployment_job_id"] = deployment_job_id
            rec["last_updated_timestamp"] = get_current_time_millis()
            return rec

        return self._model_entity(self._update_model(name, change))

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        """Rename the model (to its own name too); like MLflow's SQL store, the model and
        every version of it are stamped with the rename's time."""
        _validate_model_renaming(new_name)
        _validate_model_name(new_name)
        self._model_record(name)
        now = get_current_time_millis()
        if name == new_name:
            renamed = self._touch(name, now)
        else:
            renamed = self._move_model(name, new_name, now)

        def stamp(key: str) -> None:
            def change(r: Record) -> Record:
                r = effective_version(renamed, r)
                r["last_updated_timestamp"] = now
                return r
            try:
                versioned_update(self.blobs, key, change)
            except BlobNotFound:
                pass  # deleted with its model meanwhile

        keys = [i.key for i in self.blobs.list(layout.model_versions(renamed["id"]))]
        list(self._pool.map(stamp, keys))
        return self._model_entity(renamed)

    def _move_model(self, name: str, new_name: str, now: int) -> Record:
        """The record of ``name`` under ``new_name``, then the old one deleted — two objects,
        ordered so that a failure or a kill at any point leaves one model, under one name:
        the old record is marked with the new name first, and once a record under the new
        name holds the model's id, the old one counts as gone (:meth:`_renamed_away`)."""
        def mark(r: Record) -> Record:
            r[RENAMED_TO] = new_name
            return r

        old_key, new_key = layout.registered_model(name), layout.registered_model(new_name)
        marked, marked_version = versioned_update(self.blobs, old_key, self._guarded(name, mark),
                                                  missing=lambda: _model_not_found(name))
        renamed = {k: v for k, v in marked.items() if k != RENAMED_TO}
        renamed.update({"name": new_name, "last_updated_timestamp": now, RENAMED_FROM: name})
        try:
            self._put_new_model(new_name, renamed)
        except AlreadyExists:
            def unmark(r: Record) -> Record | None:
                return r if r.pop(RENAMED_TO, None) == new_name else None
            try:
                versioned_update(self.blobs, old_key, unmark)
            except BlobNotFound:
                pass
            raise MlflowException(f"Registered Model (name={new_name}) already exists.",
                                  RESOURCE_ALREADY_EXISTS) from None
        # A change another process made to the old record after our mark, before it saw the
        # new one, is carried over (what it wrote, under the new name).
        got = self._read(old_key)
        if got is not None and got[1] != marked_version and got[0].get("id") == renamed["id"]:
            later = {k: v for k, v in got[0].items() if k not in (RENAMED_TO, RENAMED_FROM)}

            def carry(r: Record) -> Record:
                stamp = max(now, int(later.get("last_updated_timestamp") or 0))
                return {**r, **later, "name": new_name, RENAMED_FROM: name,
                        "last_updated_timestamp": stamp}

            renamed, _ = versioned_update(self.blobs, new_key, carry)
        # Versions hang off the model's id, so the rename is complete once the old name goes.
        self._drop_predecessor(marked)
        self.blobs.delete(old_key)
        return renamed

    def _guarded(self, name: str, change: Change) -> Change:
        def unless_renamed(rec: Record) -> Record | None:
            if self._renamed_away(rec):
                raise _model_not_found(name)
            return change(rec)
        return unless_renamed

    def delete_registered_model(self, name: str) -> None:
        rec = self._model_record(name)
        self._drop_predecessor(rec)
        self.blobs.delete(layout.registered_model(name))
        # Registry entries only: the runs' artifacts the versions point at stay untouched.
        keys = [i.key for i in self.blobs.list(layout.model_versions(rec["id"]))]
        list(self._pool.map(self.blobs.delete, keys))

    def _all_models(self) -> list[Record]:
        """Every registered model once: a leftover of an unfinished rename is left out when
        the record it was renamed to is listed with its id."""
        return current_models(self._listed(layout.REGISTERED_MODELS, skip_corrupt=True))

    def _models_and_versions(self) -> tuple[list[Record], dict[str, list[Record]]]:
        """:meth:`_all_models` and :meth:`_all_versions`, read at once (their round trips
        overlap: a search costs the round trips of one listing, not two). The versions are read
        on a thread of their own: the read pool's tasks must not wait on tasks of the same
        pool."""
        with concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cloudtrack-registry-versions") as side:
            versions = side.submit(self._all_versions)
            return self._all_models(), versions.result()

    def search_registered_models(self, filter_string: str | None = None,
                                 max_results: int | None = SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT,
                                 order_by: list[str] | None = None,
                                 page_token: str | None = None) -> PagedList[RegisteredModel]:
        max_results = _checked_max_results(max_results,
                                           SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD)
        filter_string = add_prompt_filter_string(filter_string, is_prompt=False)
        models, versions = self._models_and_versions()
        entities = [self._model_entity(m, versions.get(m["id"], [])) for m in models]
        filtered = SearchModelUtils.filter(entities, filter_string)
        ordered = SearchModelUtils.sort(filtered, order_by)
        return _page(ordered, page_token, max_results)

    def get_latest_versions(self, name: str, stages: list[str] | None = None) -> list[ModelVersion]:
        model = self._model_record(name)
        return self._latest(model, self._version_records(model), stages or None)

    def _change_model_entry(self, name: str, field: str, key: str, value: str | int | None, *,
                            remove: bool = False) -> None:
        """Set one entry of the model's ``field`` (tags, aliases) to ``value``, or remove it
        (a missing entry is no change).  Not a change of the model: like MLflow's SQL store,
        its last_updated_timestamp stays."""
        def change(rec: Record) -> Record | None:
            if remove:
                return rec if records.remove_entry(rec, field, key) else None
            return records.set_entry(rec, field, key, value)

        self._update_model(name, change)

    def set_registered_model_tag(self, name: str, tag: RegisteredModelTag) -> None:
        _validate_registered_model_tag(tag.key, tag.value)
        self._change_model_entry(name, "tags", tag.key, build.tag(tag.value))

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        _validate_tag_name(key)
        self._change_model_entry(name, "tags", key, None, remove=True)

    # -- model versions ---------------------------------------------------------------------

    def _tracking_client(self) -> Any:
        from mlflow.tracking.client import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _storage_location(self, source: str, tracking: Any = None) -> tuple[str, Any]:
        """Where a version registered from ``source`` keeps its files, and the logged model
        ``source`` names (a ``models:/<model id>`` URI), if any.  ``tracking``: the tracking
        store or client to find logged models with (default: a client of this store)."""
        from mlflow.store.artifact.utils.models import _parse_model_uri

        if urllib.parse.urlparse(source).scheme != "models":
            return source, None
        parsed = _parse_model_uri(source)
        try:
            if parsed.model_id is not None:
                logged = (tracking or self._tracking_client()).get_logged_model(parsed.model_id)
                return str(logged.artifact_location), logged
            return self.get_model_version_download_uri(str(parsed.name), parsed.version), None
        except Exception as e:
            raise MlflowException(
                f"Unable to fetch model from model URI source artifact location '{source}'."
                f"Error: {e}") from e

    def create_model_version(self, name: str, source: str, run_id: str | None = None,
                             tags: list[ModelVersionTag] | None = None,
                             run_link: str | None = None, description: str | None = None,
                             local_model_path: str | None = None,
                             model_id: str | None = None) -> ModelVersion:
        _validate_model_name(name)
        for tag in tags or []:
            _validate_model_version_tag(tag.key, tag.value)
        storage_location, logged = self._storage_location(source)
        if logged is not None:
            run_id = run_id or logged.source_run_id
        if not run_id and model_id:
            run_id = self._tracking_client().get_logged_model(model_id).source_run_id
        model = self._model_record(name)
        taken = [int(layout.id_from_key(i.key)) for i in self.blobs.list(
            layout.model_versions(model["id"]))]
        number = max(taken, default=0) + 1
        now = get_current_time_millis()
        while True:
            rec = build.model_version(
                version=number, creation_timestamp=now, last_updated_timestamp=now,
                description=description, source=source, storage_location=storage_location,
                run_id=run_id, run_link=run_link,
                status=ModelVersionStatus.to_string(ModelVersionStatus.READY),
                tags={t.key: t.value for t in tags or []}, model_id=model_id)
            try:
                self.blobs.put_if_absent(layout.model_version(model["id"], number),
                                         records.dumps(rec))
                break
            except AlreadyExists:
                number += 1  # another registration took this number: the next one is ours
        model = self._touch(name, now)
        return self._version_entity(model, rec)

    def get_model_version(self, name: str, version: Any) -> ModelVersion:
        version = _validate_model_version(version)
        model = self._model_of_version(name, version)
        return self._version_entity(model, self._version_record(model, version)[0])

    def update_model_version(self, name: str, version: Any,
                             description: str | None) -> ModelVersion:
        def change(rec: Record) -> Record:
            rec["description"] = description
            rec["last_updated_timestamp"] = get_current_time_millis()
            return rec

        rec = self._update_version(name, version, change)
        return self._version_entity(self._model_record(name), rec)

    def transition_model_version_stage(self, name: str, version: Any, stage: str,
                                       archive_existing_versions: bool) -> ModelVersion:
        version = _validate_model_version(version)
        canonical = get_canonical_stage(stage)
        if archive_existing_versions and canonical not in DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS:
            # No error code, as MLflow's stores raise it (INTERNAL_ERROR over REST).
            raise MlflowException(
                "Model version transition cannot archive existing model versions because "
                f"'{stage}' is not an Active stage. Valid stages are "
                f"{DEFAULT_STAGES_FOR_GET_LATEST_VERSIONS}")
        if archive_existing_versions:
            return self._transition_archiving(name, int(version), canonical)
        model = self._model_of_version(name, version)
        # Later than the model's archiving transitions: none of them archives this one.
        now = _transition_time(model)

        def change(rec: Record) -> Record:
            rec.update({"current_stage": canonical, STAGE_SINCE: now,
                        "last_updated_timestamp": now})
            return rec

        rec = self._update_version(name, version, change, model)
        return self._version_entity(self._touch(name, now), rec)

    def _transition_archiving(self, name: str, version: int, stage: str) -> ModelVersion:
        """Move ``version`` to ``stage`` and archive the other versions there, as one change:
        committed by one write, the model record's ``archived_before[stage]``.  The version
        records are written after it, to say what readers already see (docs/format.md), so a
        call that fails or is killed at any point leaves the transition not done or done —
        never two versions in the stage that only one of them should hold."""
        _validate_model_name(name)
        committed = None
        while committed is None:
            committed = self._commit_archiving(name, version, stage)
        model, versions = committed
        # Done: from here on only the stored stages catch up with what readers see.
        moved = self._materialise(model, version)
        for number, rec in versions.items():
            if number != version and effective_version(model, rec) != rec:
                self._materialise(model, number)
        if moved is None or build.is_tombstone(moved):
            raise _version_not_found(name, version)  # deleted meanwhile
        return self._version_entity(model, moved)

    def _commit_archiving(self, name: str, version: int,
                          stage: str) -> tuple[Record, dict[int, Record]] | None:
        """The commit of :meth:`_transition_archiving`: the model record as written and the
        version records as read before; None when another transition archiving ``stage``
        committed between our read and our write (read again)."""
        got = self._read_model(name)
        if got is None:
            raise _version_not_found(name, version)
        model = got[0]
        versions = {int(r["version"]): r for r in self._version_records(model)}
        if version not in versions or build.is_tombstone(versions[version]):
            raise _version_not_found(name, version)
        replaced = (model.get(ARCHIVED_BEFORE) or {}).get(stage)
        if replaced is not None:
            # The transition ours replaces on the model record may have been cut short before
            # it wrote its version, which readers see in the stage: it must say so itself
            # before ours archives it.
            landed = self._materialise(model, int(replaced["version"]))
            if landed is not None:
                versions[int(replaced["version"])] = landed
        now = _transition_time(model, versions.values())

        def commit(rec: Record) -> Record:
            nonlocal now
            claims = dict(rec.get(ARCHIVED_BEFORE) or {})
            if claims.get(stage) != replaced:
                raise _ArchivedMeanwhile
            now = max(now, _transition_time(rec))
            claims[stage] = {"version": version, "at": now}
            rec.update({ARCHIVED_BEFORE: claims, "last_updated_timestamp": now})
            return rec

        try:
            written, _ = versioned_update(self.blobs, layout.registered_model(name),
                                          self._guarded(name, commit), known=got,
                                          missing=lambda: _model_not_found(name))
        except _ArchivedMeanwhile:
            return None
        return written, versions

    def _materialise(self, model: Record, version: int) -> Record | None:
        """Store version ``version`` as readers see it under ``model`` (a no-op when its record
        says so already); its record as stored, None when there is none."""
        def change(rec: Record) -> Record | None:
            seen = effective_version(model, rec)
            return None if seen == rec else seen

        try:
            rec, _ = versioned_update(self.blobs, layout.model_version(model["id"], version),
                                      change)
        except BlobNotFound:
            return None
        return rec

    def delete_model_version(self, name: str, version: Any) -> None:
        version = _validate_model_version(version)
        now = get_current_time_millis()

        def change(rec: Record) -> Record:
            # A tombstone keeps the number taken, as MLflow's stores do.
            return build.tombstone(rec, now)

        self._update_version(name, version, change)

        def drop_aliases(rec: Record) -> Record:
            rec["aliases"] = {a: v for a, v in rec.get("aliases", {}).items()
                              if str(v) != str(version)}
            rec["last_updated_timestamp"] = now
            return rec

        self._update_model(name, drop_aliases)

    def get_model_version_download_uri(self, name: str, version: Any) -> str:
        version = _validate_model_version(version)
        model = self._model_of_version(name, version)
        rec = self._version_record(model, version)[0]
        # As stored: None stays None (MLflow's SQL store answers None for a None source).
        uri: str = rec.get("storage_location") or rec["source"]
        return uri

    def search_model_versions(self, filter_string: str | None = None,
                              max_results: int | None = SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT,
                              order_by: list[str] | None = None,
                              page_token: str | None = None) -> PagedList[ModelVersion]:
        max_results = _checked_max_results(max_results,
                                           SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD)
        versions: list[ModelVersion] = []
        models, by_model = self._models_and_versions()
        for model in models:
            # MLflow's SQL store leaves aliases out of version search results; so do we.
            versions.extend(self._version_entity(model, rec, with_aliases=False)
                            for rec in by_model.get(model["id"], [])
                            if rec.get("current_stage") != STAGE_DELETED_INTERNAL)
        filter_string = add_prompt_filter_string(filter_string, is_prompt=False)
        filtered = SearchModelVersionUtils.filter(versions, filter_string)
        ordered = SearchModelVersionUtils.sort(
            filtered, order_by or ["last_updated_timestamp DESC", "name ASC", "version_number DESC"])
        return _page(ordered, page_token, max_results)

    def set_model_version_tag(self, name: str, version: Any, tag: ModelVersionTag) -> None:
        _validate_model_version_tag(tag.key, tag.value)
        value = "" if tag.value is None else str(tag.value)
        # Tags stamp neither the version nor the model, as in MLflow's SQL store.
        self._update_version(name, version,
                             lambda rec: records.set_entry(rec, "tags", tag.key, value))

    def delete_model_version_tag(self, name: str, version: Any, key: str) -> None:
        _validate_tag_name(key)
        self._update_version(name, version,
                             lambda rec: rec if records.remove_entry(rec, "tags", key) else None)

    # -- webhooks: creating one is refused (MLflow's base class), so none ever exist --------

    def list_webhooks(self, max_results: int | None = None,
                      page_token: str | None = None) -> PagedList[Any]:
        """No webhook can be created on this store, so the list is empty.  MLflow's server
        asks on every registry event; answering keeps its log free of errors."""
        return PagedList([], None)

    def list_webhooks_by_event(self, event: Any, max_results: int | None = None,
                               page_token: str | None = None) -> PagedList[Any]:
        """See list_webhooks."""
        return PagedList([], None)

    # -- aliases ----------------------------------------------------------------------------

    def set_registered_model_alias(self, name: str, alias: str, version: Any) -> None:
        _validate_model_name(name)
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
        version = _validate_model_version(version)
        model = self._model_of_version(name, version)
        self._version_record(model, version)
        self._change_model_entry(name, "aliases", alias, int(version))

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        _validate_model_name(name)
        _validate_model_alias_name(alias)
        self._change_model_entry(name, "aliases", alias, None, remove=True)

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        _validate_model_name(name)
        model = self._model_record(name)
        if alias.lower() == _LATEST:
            live = [r for r in self._version_records(model)
                    if r.get("current_stage") != STAGE_DELETED_INTERNAL]
            if not live:
                raise MlflowException(f"No versions of registered model {name}",
                                      RESOURCE_DOES_NOT_EXIST)
            return self._version_entity(model, live[-1])
        version = model.get("aliases", {}).get(alias)
        got = None if version is None else self._read(layout.model_version(model["id"],
                                                                           int(version)))
        if got is None or got[0].get("current_stage") == STAGE_DELETED_INTERNAL:
            # Also an alias of a deleted version whose deletion failed before it dropped the
            # alias: MLflow's stores delete the two together.
            raise MlflowException(f"Registered model alias {alias} not found.",
                                  INVALID_PARAMETER_VALUE)
        return self._version_entity(model, got[0])

