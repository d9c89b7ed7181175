"""The migration writer for cloudtrack stores: it writes the storage format directly
(:mod:`cloudtrack.store`), so every id and timestamp is the source's.

What it writes, in an order that makes a copy safe to interrupt anywhere:

* an experiment: its record under the source's id where that id is free (else the next free
  one) and its name claim (:func:`cloudtrack.store.claims.create_experiment`); its lifecycle
  stage and its head pages at the end (:meth:`CloudtrackDestination.finish_experiment`);
* a run: its run index, its history as batches named by their place
  (``history/<run>/copy-000000.json``, :data:`BATCH_POINTS` points each, in one fixed order),
  then its head: the write that makes it visible.  Index and history go out from
  :meth:`~CloudtrackDestination.begin_run` while the caller copies the run's artifacts; the head
  waits for both.  Writing a run again overwrites its batches
  and its head and removes any batch it did not write, so the copy's history is exactly the
  source's points;
* a logged model: its artifacts (the caller copies them), its index, then its record;
* a registered model or prompt: its record, its versions under their own numbers, tombstones
  for deleted numbers, then its aliases.

Nothing that is already as it should be is written again: a migration over a finished copy
writes nothing.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from mlflow.entities import Experiment, LifecycleStage, Metric, ViewType
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path

from cloudtrack.errors import AlreadyExists, BlobNotFound, CloudtrackError, CorruptObject
from cloudtrack.migrate.destination import CopiedModel, CopiedRun, Destination, RunTarget
from cloudtrack.migrate.endpoints import Endpoint
from cloudtrack.migrate.model import ModelCopy, RunCopy, model_fingerprint, run_fingerprint
from cloudtrack.model_registry import BlobRegistryStore, current_models
from cloudtrack.store import build, claims, entities, layout, pages, records, snapshots
from cloudtrack.store.cas import versioned_update
from cloudtrack.store.pagewriter import is_finished
from cloudtrack.store.records import Record

log = logging.getLogger("cloudtrack.migrate")

#: Metric points per history batch of a copied run (about 70 KB of JSON).
BATCH_POINTS = 1000
#: Parallel reads and writes of one destination.
CONCURRENCY = 16

_REFUSED = ("a cloudtrack store cannot hold {}: it keeps experiments, runs, logged models, "
            "artifacts and the model registry; keep them in an MLflow server with a database")

#: What a cloudtrack store refuses, by kind, with the store methods that refuse it (a test
#: checks them against the stores' refusals, so this list cannot drift).
REFUSED_BY: dict[str, tuple[str, ...]] = {
    "traces": ("start_trace", "log_spans"),
    "assessments": ("create_assessment",),
    "evaluation_datasets": ("create_dataset",),
    "scorers": ("register_scorer",),
    "gateway": ("create_gateway_endpoint", "create_gateway_secret"),
    "issues": ("create_issue",),
    "label_schemas": ("create_label_schema",),
    "review_queues": ("create_review_queue",),
    "mcp_servers": ("create_mcp_server",),
    "budget_policies": ("create_budget_policy",),
    "webhooks": ("create_webhook",),
}


class CopyConflict(CloudtrackError):
    """The destination holds something else under an id, number or name the copy needs."""


@dataclass
class _Heads:
    """What the writer knows of one experiment's run heads: enough to leave up-to-date head
    pages behind without reading the heads again.  Heads are kept compressed (a few
    MB for 20,000 runs)."""

    #: head key -> version, as :meth:`CloudtrackDestination.copied_runs` listed them (None
    #: when it did not list them).
    listed: dict[str, str] | None = None
    #: head key -> (version, compressed record bytes): heads read one by one, and written.
    known: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    #: The stored head pages vouch for every listed head of a finished run.
    pages_current: bool = False
    #: Heads were written.
    changed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, key: str, version: str, data: bytes, *, written: bool) -> None:
        with self.lock:
            self.known[key] = (version, zlib.compress(data, 1))
            self.changed = self.changed or written


@dataclass
class _Model:
    """A registered model of the destination: its record and its version records by number."""

    record: Record
    versions: dict[int, Record]


class CloudtrackDestination(Destination):
    """Writes a migration into a cloudtrack store, ids and times exact."""

    kind = "cloudtrack"
    keeps_ids = True
    cannot_hold = tuple((what, _REFUSED.format(what.replace("_", " "))) for what in REFUSED_BY)

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self.tracking = endpoint.tracking
        self.registry = endpoint.registry
        self.blobs = self.tracking.blobs
        # Registry records are written through the tracking store's blobs: the registry
        # store pages them as it pages its own writes (the tracking store pages experiment
        # and logged-model records), so no later reader finds them in no page.
        if isinstance(self.registry, BlobRegistryStore):
            self.blobs.watch(self.registry._page_record)
        self._pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="cloudtrack-dest")
        # Run bodies (index and history) being written, by run id: one per run between
        # begin_run and finish_run, so at most as many as the caller's workers.  A pool of
        # their own: a body waits on self._pool for its history batches.
        self._bodies: dict[str, Future[tuple[bool, list[Metric]]]] = {}
        self._body_pool = ThreadPoolExecutor(64, thread_name_prefix="cloudtrack-dest-run")
        self._lock = threading.Lock()
        #: experiment id -> its artifact location.
        self._locations: dict[str, str] = {}
        self._heads: dict[str, _Heads] = {}
        #: Runs that have a head in the destination.
        self._copied: set[str] = set()
        self._models: dict[str, _Model] = {}

    def close(self) -> None:
        self._body_pool.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        super().close()

    # -- experiments -----------------------------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        found: list[Experiment] = []
        token = None
        while True:
            page = self.tracking.search_experiments(view_type=ViewType.ALL, max_results=1000,
                                                    page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        with self._lock:
            self._locations.update((e.experiment_id, e.artifact_location) for e in found)
        return found

    def create_experiment(self, source: Experiment, experiment_id: str | None) -> Experiment:
        def record(exp_id: str) -> Record:
            return entities.experiment_record(
                source, experiment_id=exp_id, lifecycle_stage=build.ACTIVE,
                artifact_location=append_to_uri_path(self.tracking.artifact_root_uri, exp_id))

        exp_id = claims.create_experiment(self.blobs, source.name, record, wanted=experiment_id)
        rec = record(exp_id)
        with self._lock:
            self._locations[exp_id] = rec["artifact_location"]
        return entities.experiment(rec)

    def update_experiment(self, dest: Experiment, source: Experiment) -> None:
        if all(dest.tags.get(k) == v for k, v in source.tags.items()):
            return  # as read by experiments(): nothing to add

        def change(rec: Record) -> Record | None:
            tags = rec.setdefault("tags", {})
            new = {k: v for k, v in source.tags.items() if tags.get(k) != v}
            if not new:
                return None
            tags.update(new)
            return rec

        versioned_update(self.blobs, layout.experiment(dest.experiment_id), change)

    def finish_experiment(self, dest: Experiment, source: Experiment) -> None:
        def wanted(stage: str, updated: int | None) -> tuple[str, int | None]:
            # A merge into an experiment of the destination (Default) keeps its later time.
            times = [t for t in (updated, source.last_update_time) if t is not None]
            return source.lifecycle_stage, max(times) if times else None

        def change(rec: Record) -> Record | None:
            now = (rec["lifecycle_stage"], rec.get("last_update_time"))
            target = wanted(*now)
            if now == target:
                return None
            rec["lifecycle_stage"], rec["last_update_time"] = target
            return rec

        current = (dest.lifecycle_stage, dest.last_update_time)
        if current != wanted(*current):  # as read by experiments() or just created
            versioned_update(self.blobs, layout.experiment(dest.experiment_id), change)
        with self._lock:
            state = self._heads.pop(dest.experiment_id, None)
        if state is not None:
            self._write_pages(dest.experiment_id, state)

    def _location(self, experiment_id: str) -> str:
        with self._lock:
            location = self._locations.get(experiment_id)
        if location is None:
            location = str(records.read(self.blobs, layout.experiment(experiment_id))
                           ["artifact_location"])
            with self._lock:
                self._locations[experiment_id] = location
        return location

    def _state(self, experiment_id: str) -> _Heads:
        with self._lock:
            return self._heads.setdefault(experiment_id, _Heads())

    # -- runs ------------------------------------------------------------------------------------

    def copied_runs(self, experiment_id: str) -> dict[str, CopiedRun]:
        """One LIST per 1,000 runs, one LIST of the experiment's head pages and a GET per page
        (about one per 300-600 runs); a GET per head only for heads no page holds at their
        listed version (and the old head snapshot of a store written before pages)."""
        folder = layout.head_pages(experiment_id)
        listed_pages = self._pool.submit(pages.list_pages, self.blobs, folder)
        listing = [(i.key, i.version) for i in self.blobs.list(layout.heads(experiment_id))]
        state = _Heads(listed=dict(listing))
        with self._lock:
            self._heads[experiment_id] = state
        page_map = listed_pages.result()
        if not listing:
            state.pages_current = True  # nothing to vouch for
            return {}
        snap: dict[str, tuple[str, Record]] = {}
        if page_map.bits:
            needed = sorted({b for key, _ in listing if (b := page_map.page_of(key)) is not None})
            for entries in self._pool.map(
                    lambda b: pages.read_entries(self.blobs, folder, b, lambda _: True), needed):
                snap.update(entries)
        else:
            snap.update(snapshots.read(self.blobs, experiment_id))
        stale = [key for key, version in listing if snap.get(key, ("",))[0] != version]
        heads = {key: snap[key][1] for key, _ in listing if key in snap}
        # Current when the only heads no page holds are runs still running (never paged).
        state.pages_current = bool(page_map.bits)
        for key, got in zip(stale, self._pool.map(self._read_head, stale), strict=True):
            heads.pop(key, None)
            if isinstance(got, Exception):
                if not isinstance(got, BlobNotFound):
                    log.warning("run head %s cannot be read (%s); the run is copied again",
                                self.blobs.object_uri(key), got)
                continue
            head, version = got
            state.keep(key, version, records.dumps(head), written=False)
            heads[key] = head
            if is_finished(head):
                state.pages_current = False
        found: dict[str, CopiedRun] = {}
        for key, head in heads.items():
            try:
                run = entities.run(head)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("run head %s is malformed (%r); the run is copied again",
                            self.blobs.object_uri(key), e)
                continue
            run_id = run.info.run_id
            found[run_id] = CopiedRun(run_id, run_id, run_fingerprint(run))
        with self._lock:
            self._copied.update(found)
        return found

    def _read_head(self, key: str) -> tuple[Record, str] | Exception:
        try:
            return records.read_versioned(self.blobs, key)
        except Exception as e:  # reported per head by the caller
            return e

    def begin_run(self, copy: RunCopy, earlier: CopiedRun | None) -> RunTarget:
        location = self._location(copy.experiment_id)
        # Ids are kept, so the history's model ids are final already.
        body = self._body_pool.submit(self._write_body, copy)
        with self._lock:
            self._bodies[copy.run_id] = body
        return RunTarget(copy.run_id, append_to_uri_path(location, copy.run_id, "artifacts"))

    def _write_body(self, copy: RunCopy) -> tuple[bool, list[Metric]]:
        """The run's index, then its history; whether an earlier copy was there, and each
        metric's latest point (for the head)."""
        exp_id, run_id = copy.experiment_id, copy.run_id
        with self._lock:
            again = run_id in self._copied
        if not again:
            again = self._claim(layout.run_index(run_id), exp_id, f"run {run_id}")
        batches, latest = self._write_history(run_id, copy)
        if again:
            # An earlier copy may hold batches this one does not (written by anything else
            # than this writer): the copy's history is the source's, nothing more.
            stray = [i.key for i in self.blobs.list(layout.history(run_id))
                     if i.key not in batches]
            list(self._pool.map(self.blobs.delete, stray))
        return again, latest

    def finish_run(self, copy: RunCopy, target: RunTarget) -> None:
        exp_id, run_id = copy.experiment_id, target.run_id
        with self._lock:
            body = self._bodies.pop(run_id, None)
        again, latest = body.result() if body is not None else self._write_body(copy)
        # ``latest`` makes the same head as the whole history, in a fraction of the time.
        head = entities.run_head_record(
            copy.run, experiment_id=exp_id, artifact_uri=target.artifact_uri,
            history=latest, model_ids=copy.model_ids, deleted_time=copy.deleted_time)
        key = layout.head(exp_id, run_id)
        version = self._put_record(key, head, exists=again)
        self._state(exp_id).keep(key, version, records.dumps(head), written=True)
        with self._lock:
            self._copied.add(run_id)

    def _write_history(self, run_id: str, copy: RunCopy) -> tuple[set[str], list[Metric]]:
        points, latest = _ordered_points(copy.history, copy.model_ids)
        chunks = [points[i:i + BATCH_POINTS] for i in range(0, len(points), BATCH_POINTS)]
        keys = [layout.copied_history_batch(run_id, i) for i in range(len(chunks))]

        def put(item: tuple[str, list[list[Any]]]) -> None:
            self.blobs.put(item[0], records.dumps(build.history_batch(item[1])))

        if len(chunks) == 1:
            put((keys[0], chunks[0]))
        else:
            list(self._pool.map(put, zip(keys, chunks, strict=True)))
        return set(keys), latest

    def _claim(self, key: str, experiment_id: str, what: str) -> bool:
        """Write the immutable pointer ``key`` -> ``experiment_id``; True when it was there
        already (a copy written before), :class:`CopyConflict` when it points elsewhere."""
        try:
            self.blobs.put_if_absent(key, records.dumps(build.pointer(experiment_id)))
            return False
        except AlreadyExists:
            there = str(records.read(self.blobs, key).get("experiment_id"))
        if there != str(experiment_id):
            raise CopyConflict(
                f"{what} already exists in experiment {there} of {self.endpoint.shown}, not in "
                f"experiment {experiment_id}; migrate into another store, or delete it there")
        return True

    def _put_record(self, key: str, record: Record, *, exists: bool) -> str:
        """Write ``record`` at ``key`` (created, or replacing what is there under a version
        precondition); return its version.  An identical record is not written again."""
        if not exists:
            try:
                return self.blobs.put_if_absent(key, records.dumps(record))
            except AlreadyExists:
                pass
        data = records.dumps(record)
        try:
            # Compared as bytes: a NaN metric makes equal records unequal as dicts.
            _, version = versioned_update(
                self.blobs, key, lambda old: None if records.dumps(old) == data else record)
            return version
        except BlobNotFound:
            return self.blobs.put_if_absent(key, data)
        except CorruptObject:
            # A damaged record is replaced, still only if nobody wrote it since.
            return self.blobs.put_if_version(key, data, self.blobs.stat(key).version)

    def _write_pages(self, experiment_id: str, state: _Heads) -> None:
        """Leave the experiment's head pages holding every finished run this copy wrote or
        read one by one, so the next migration's :meth:`copied_runs` (and the first search of
        any process) reads a page per few hundred runs instead of each head.  Nothing is
        written when the pages are current already."""
        if state.pages_current and not state.changed:
            return
        entries: dict[str, tuple[str, bytes]] = {}
        for key, (version, data) in state.known.items():
            head = zlib.decompress(data)
            if is_finished(records.parse(head, self.blobs.object_uri(key))):
                entries[key] = (version, head)
        lost = pages.merge(self.blobs, layout.head_pages(experiment_id), entries)
        if lost:
            log.info("%d of %d run heads of experiment %s left out of its head pages (lost "
                     "races with other writers): searches read them one by one", len(lost),
                     len(entries), experiment_id)

    # -- logged models ---------------------------------------------------------------------------

    def copied_models(self, experiment_ids: Sequence[str]) -> dict[str, CopiedModel]:
        """Per experiment: one LIST per 1,000 models; with a few or more, one LIST of its
        logged-model pages and a GET per page that holds a listed model; a GET per model only
        for records no page holds at their listed version (a model still pending, or paged
        after a lost race).  A record that cannot be read has no fingerprint: the model is
        written again."""
        found: dict[str, CopiedModel] = {}
        for exp_id in experiment_ids:
            for key, rec in self._logged_models(exp_id).items():
                model_id = layout.id_from_key(key)
                live = rec is not None and rec.get("lifecycle_stage") != LifecycleStage.DELETED
                found[model_id] = CopiedModel(model_id, model_id, model_fingerprint(
                    entities.logged_model(rec)) if rec is not None and live else "")
        return found

    def _logged_models(self, experiment_id: str) -> dict[str, Record | None]:
        """key -> record (None: unreadable) of every logged model listed in the experiment."""
        folder = layout.logged_model_pages(experiment_id)
        listing = [(i.key, i.version) for i in self.blobs.list(layout.logged_models(experiment_id))]
        paged: dict[str, tuple[str, Record]] = {}
        if len(listing) >= pages.MIN_MISSES:  # else the records are as few requests
            page_map = pages.list_pages_for_reading(self.blobs, folder)
            needed = sorted({b for key, _ in listing if (b := page_map.page_of(key)) is not None})
            if len(needed) < len(listing):
                for entries in self._pool.map(
                        lambda b: pages.read_entries(self.blobs, folder, b, lambda _: True),
                        needed):
                    paged.update(entries)
        out: dict[str, Record | None] = {key: paged[key][1] for key, version in listing
                                         if paged.get(key, ("",))[0] == version}
        todo = [key for key, _ in listing if key not in out]

        def read(key: str) -> Record | None:
            try:
                return records.read(self.blobs, key)
            except (BlobNotFound, CorruptObject):
                return None

        out.update(zip(todo, self._pool.map(read, todo), strict=True))
        return out

    def write_logged_model(self, copy: ModelCopy, artifacts: Callable[[str], None]) -> str:
        model = copy.model
        location = append_to_uri_path(self._location(copy.experiment_id), "models",
                                      model.model_id, "artifacts")
        artifacts(location)
        again = self._claim(layout.logged_model_index(model.model_id), copy.experiment_id,
                            f"logged model {model.model_id}")
        record = entities.logged_model_record(model, experiment_id=copy.experiment_id,
                                              artifact_location=location,
                                              source_run_id=copy.source_run_id)
        self._put_record(layout.logged_model(copy.experiment_id, model.model_id), record,
                         exists=again)
        return str(model.model_id)

    # -- registry --------------------------------------------------------------------------------

    def registered_models(self) -> dict[str, tuple[RegisteredModel, list[ModelVersion]]]:
        keys = [i.key for i in self.blobs.list(layout.REGISTERED_MODELS)]
        found: dict[str, tuple[RegisteredModel, list[ModelVersion]]] = {}
        listed = [rec for rec in self._pool.map(self._read_or_none, keys) if rec is not None]
        for rec in current_models(listed):
            model = _Model(rec, self._versions(rec["id"]))
            with self._lock:
                self._models[rec["name"]] = model
            live = [entities.model_version(rec, v) for _, v in sorted(model.versions.items())
                    if not build.is_tombstone(v)]
            found[rec["name"]] = (entities.registered_model(rec, model.versions.values()), live)
        return found

    def _read_or_none(self, key: str) -> Record | None:
        try:
            return records.read(self.blobs, key)
        except BlobNotFound:
            return None

    def _versions(self, model_key: str) -> dict[int, Record]:
        keys = [i.key for i in self.blobs.list(layout.model_versions(model_key))]
        return {int(r["version"]): r for r in self._pool.map(self._read_or_none, keys)
                if r is not None}

    def _load_model(self, name: str) -> _Model | None:
        rec = self._read_or_none(layout.registered_model(name))
        return None if rec is None else _Model(rec, self._versions(rec["id"]))

    def write_registered_model(self, model: RegisteredModel, versions: Sequence[ModelVersion],
                               deleted: Sequence[int]) -> int:
        with self._lock:
            known = self._models.get(model.name)
        if known is None:
            known = self._create_model(model)
        elif known.record["creation_timestamp"] != model.creation_timestamp:
            raise CopyConflict(
                f"registered model {model.name!r} of {self.endpoint.shown} is not a copy of the "
                f"source's (created at {known.record['creation_timestamp']}, not "
                f"{model.creation_timestamp}); rename one of them and migrate again")
        conflicts: list[str] = []
        written = 0
        for v in versions:
            written += self._write_version(known, v, conflicts)
        for number in deleted:
            self._delete_version(known, model, int(number))
        live = {n for n, r in known.versions.items() if not build.is_tombstone(r)}
        aliases = {a: int(v) for a, v in (model.aliases or {}).items() if int(v) in live}
        wanted = entities.registered_model_record(model, model_id=known.record["id"],
                                                  aliases=aliases)
        if wanted != known.record:
            key = layout.registered_model(model.name)

            def change(rec: Record) -> Record | None:
                if rec.get("id") != wanted["id"]:
                    raise CopyConflict(f"registered model {model.name!r} was replaced in "
                                       f"{self.endpoint.shown} while it was being copied")
                return None if rec == wanted else wanted

            versioned_update(self.blobs, key, change)
            known.record = wanted
        if conflicts:
            raise CopyConflict(f"registered model {model.name!r}: " + "; ".join(conflicts))
        return written

    def _create_model(self, model: RegisteredModel) -> _Model:
        # Without aliases first: they are set once the versions they name exist.
        rec = entities.registered_model_record(model, model_id=uuid.uuid4().hex, aliases={})
        try:
            self.blobs.put_if_absent(layout.registered_model(model.name), records.dumps(rec))
        except AlreadyExists:
            found = self._load_model(model.name)
            if found is None or found.record["creation_timestamp"] != model.creation_timestamp:
                raise CopyConflict(f"registered model {model.name!r} appeared in "
                                   f"{self.endpoint.shown} while it was being copied") from None
            return found
        return _Model(rec, {})

    def _write_version(self, known: _Model, v: ModelVersion, conflicts: list[str]) -> int:
        """Create version ``v`` with its number, or bring its copy up to date; 1 if created."""
        number = int(v.version)
        key = layout.model_version(known.record["id"], number)
        current = known.versions.get(number)
        if current is None:
            wanted = entities.model_version_record(
                v, storage_location=self._storage_location(v.source))
            try:
                self.blobs.put_if_absent(key, records.dumps(wanted))
                known.versions[number] = wanted
                return 1
            except AlreadyExists:
                current = records.read(self.blobs, key)
                known.versions[number] = current
        if build.is_tombstone(current):
            conflicts.append(f"version {number} is deleted in the destination")
            return 0
        if current.get("creation_timestamp") != v.creation_timestamp:
            conflicts.append(f"version {number} of the destination is another version "
                             f"(created at {current.get('creation_timestamp')})")
            return 0
        storage = current.get("storage_location") if current.get("source") == v.source \
            else self._storage_location(v.source)
        wanted = entities.model_version_record(v, storage_location=storage)
        if wanted != current:
            self._put_record(key, wanted, exists=True)
            known.versions[number] = wanted
        return 0

    def _delete_version(self, known: _Model, model: RegisteredModel, number: int) -> None:
        """Keep ``number`` taken: a tombstone where there is nothing, the copy deleted where
        the source deleted it after it was copied."""
        key = layout.model_version(known.record["id"], number)
        current = known.versions.get(number)
        if current is not None and build.is_tombstone(current):
            return
        if current is None:
            stamp = model.last_updated_timestamp or model.creation_timestamp
            grave = build.tombstone(build.model_version(
                version=number, creation_timestamp=model.creation_timestamp,
                last_updated_timestamp=stamp, source=None, storage_location=None), stamp)
            try:
                self.blobs.put_if_absent(key, records.dumps(grave))
                known.versions[number] = grave
                return
            except AlreadyExists:
                pass
        now = get_current_time_millis()
        rec, _ = versioned_update(self.blobs, key, lambda r: None if build.is_tombstone(r)
                                  else build.tombstone(r, now))
        known.versions[number] = rec

    def _storage_location(self, source: str | None) -> str | None:
        """Where a version registered from ``source`` keeps its files, as the registry store
        decides it (a ``models:/`` source is resolved in this store)."""
        if not source:
            return source
        try:
            return str(self.registry._storage_location(source, self.tracking)[0])
        except MlflowException as e:
            log.warning("model version source %s cannot be resolved in %s (%s); its storage "
                        "location is the source itself", source, self.endpoint.shown, e.message)
            return source


def _ordered_points(history: Sequence[Metric], model_ids: Any
                    ) -> tuple[list[list[Any]], list[Metric]]:
    """The run's metric tuples, each point once (MLflow's identity: key, timestamp, step,
    value), in one fixed order: the same history always makes the same batches; and each
    key's latest point (MLflow's rule, :func:`cloudtrack.store.records.merge_latest`, over
    ``history`` in its order), all the head needs of the history.

    One pass of plain tuples over the points: this runs for every point of every run, and
    per-point function calls were a quarter of a migration's CPU."""
    inf, big, nan_rank = math.inf, sys.float_info.max, -math.inf
    keyed: list[tuple[tuple[Any, ...], list[Any]]] = []
    latest: dict[str, tuple[tuple[int, int, float], Metric]] = {}
    for m in history:
        value = float(m.value)
        nan = value != value
        if value == inf or value == -inf:
            value = math.copysign(big, value)
        timestamp, step, key = int(m.timestamp), int(m.step), m.key
        model_id = m.model_id
        if model_id:
            model_id = model_ids.get(model_id, model_id)
        t = [key, value, timestamp, step, model_id, m.dataset_name, m.dataset_digest]
        keyed.append(((timestamp, step, key, nan, 0.0 if nan else value, model_id or "",
                       t[5] or "", t[6] or ""), t))
        rank = (step, timestamp, nan_rank if nan else value)
        cur = latest.get(key)
        if cur is None or rank >= cur[0]:
            latest[key] = (rank, m)
    keyed.sort(key=itemgetter(0))  # stable: equal keys keep the history's order
    out: list[list[Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for order, t in keyed:
        ident = order[:5]
        if ident not in seen:
            seen.add(ident)
            out.append(t)
    return out, [m for _, m in latest.values()]
