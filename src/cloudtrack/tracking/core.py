"""The tracking store's foundation every mixin builds on: opening a store, the caches, reading
many records at once, and access to run heads (the one record a run's writers share)."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any

from mlflow.entities import Experiment, LifecycleStage, LoggedModelStatus, Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import _parse_experiment_id, _validate_run_id

from cloudtrack import forks
from cloudtrack.blobs import open_blobs
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import AlreadyExists, BlobNotFound, CloudtrackError
from cloudtrack.store import build, claims, layout, marker, pages, records
from cloudtrack.store.cache import VersionedCache
from cloudtrack.store.cas import Change, versioned_update
from cloudtrack.store.pagewriter import PageWriter, is_finished
from cloudtrack.store.readcache import ReadCache
from cloudtrack.store.records import Record
from cloudtrack.tracking.flusher import (
    FLUSH_INTERVAL,
    Flusher,
    Pending,
    RunLocks,
    release_at_exit,
)
from cloudtrack.tracking.journal import Journal, ReplayReport

#: Parallel GETs when a search or a history read must fetch many objects.
READ_CONCURRENCY = 32

log = logging.getLogger("cloudtrack.tracking")


def not_found(message: str) -> MlflowException:
    return MlflowException(message, RESOURCE_DOES_NOT_EXIST)


def run_not_found(run_id: Any) -> MlflowException:
    return not_found(f"Run with id={run_id} not found")


def is_run_id(run_id: Any) -> bool:
    """Is ``run_id`` a run id that can name a record?  Anything else names no run: MLflow's
    SQL store answers RESOURCE_DOES_NOT_EXIST for it, and so do we (without a request)."""
    if not isinstance(run_id, str):
        return False
    try:
        _validate_run_id(run_id)
    except MlflowException:
        return False
    return True


def check_active(head: Record) -> None:
    """Only an active run may change (MLflow's SQL store's words)."""
    info = head["info"]
    if info["lifecycle_stage"] != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The run {info['run_id']} must be in the 'active' state. "
            f"Current state is {info['lifecycle_stage']}.", INVALID_PARAMETER_VALUE)


def check_experiment_active(experiment_id: str, lifecycle_stage: str) -> None:
    """Only an active experiment takes new runs, models and tags."""
    if lifecycle_stage != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The experiment {experiment_id} must be in the 'active' state. "
            f"Current state is {lifecycle_stage}.", INVALID_PARAMETER_VALUE)


def experiment_id_of(experiment_id: Any) -> str:
    """An experiment id as the store names it: the decimal integer MLflow's SQL store parses
    it to (``"007"`` and ``7`` name experiment ``"7"``), else INVALID_PARAMETER_VALUE with that
    store's words.  Only digits and a sign reach a key."""
    return str(_parse_experiment_id(experiment_id))


def check_max_results(max_results: Any, *, allow_null: bool = False) -> None:
    """A search's ``max_results`` within MLflow's SQL store's bounds (refused in its words):
    a positive integer up to SEARCH_MAX_RESULTS_THRESHOLD, or None where ``allow_null``."""
    if max_results is None and allow_null:
        return
    if not isinstance(max_results, int) or max_results < 1:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. It must be "
            "a positive integer", INVALID_PARAMETER_VALUE)
    if max_results > SEARCH_MAX_RESULTS_THRESHOLD:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. It must be at "
            f"most {SEARCH_MAX_RESULTS_THRESHOLD}", INVALID_PARAMETER_VALUE)


def distinct_experiment_ids(experiment_ids: Iterable[Any]) -> list[str]:
    """Distinct experiment ids as the store names them, in order, each validated."""
    return list(dict.fromkeys(experiment_id_of(e) for e in experiment_ids))


def _longest_write(config: StoreConfig) -> float:
    """Seconds one write may take before it fails: its retry deadline and one attempt's
    timeouts, and a margin."""
    seconds = 5.0
    for name, default in (("retry_deadline", 30.0), ("connect_timeout", 5.0),
                          ("read_timeout", 10.0)):
        seconds += float(config.get(name) or default)  # type: ignore[arg-type]
    return seconds


class StoreCore(AbstractStore):
    """State and record access shared by the tracking store's mixins."""

    #: The experiment runs go to when none is named, as on MLflow's own stores.
    DEFAULT_EXPERIMENT_ID = layout.DEFAULT_EXPERIMENT_ID

    def __init__(self, store_uri: str, artifact_uri: str | None = None, *,
                 config: StoreConfig | None = None) -> None:
        super().__init__()
        self.config = config or resolve(store_uri)
        self.store_uri = self.config.display_uri.rstrip("/")
        self.blobs = open_blobs(self.config)
        root = artifact_uri or append_to_uri_path(self._root_uri(), layout.ARTIFACTS)
        self.artifact_root_uri = root.rstrip("/")
        #: Every logging call durable when it returns (CLOUDTRACK_STRICT), else buffered.
        self.strict = bool(self.config.get("strict", False))
        self._pool = concurrent.futures.ThreadPoolExecutor(READ_CONCURRENCY,
                                                           thread_name_prefix="cloudtrack-read")
        #: Records read by searches (heads, experiments, logged models), by listed version.
        self._cache = VersionedCache()
        forks.watch(self)
        #: Experiments whose run heads a search of this process has read.
        self._searched: set[str] = set()
        #: experiment id -> lock held by the search reading its heads first (search.py).
        self._first_reads: dict[str, threading.Lock] = {}
        self._first_reads_lock = threading.Lock()
        #: experiment id -> where to split its heads' next listing (search.py).
        self._bounds: dict[str, list[str]] = {}
        #: The run heads searches read, on this machine's disk for the next process.
        self._read_cache = ReadCache.for_store(self.config)
        #: run id -> experiment id: the run index never changes, so this is never stale.
        self._run_exp: dict[str, str] = {}
        #: run id -> (head, version) as this process last read or wrote it; a conditional
        #: write starts from it and re-reads only when another writer got there first.
        self._heads: dict[str, tuple[Record, str]] = {}
        #: head key -> (version, Run): the entity built from that version of the head.
        self._entities: dict[str, tuple[str, Run]] = {}
        #: Finished runs' heads this process wrote, on their way into the head pages.
        self._page_writer = PageWriter(self.blobs)
        self._run_locks = RunLocks()
        #: Where buffered data that cannot be written at exit is kept (journal.py).
        self.journal = Journal(self.config, self._write_journaled)
        self._flusher = Flusher(self._write_pending, self._run_locks, FLUSH_INTERVAL,
                                uri=self.store_uri, keeper=self.journal,
                                patience=_longest_write(self.config))
        release_at_exit(self)
        self._initialize()
        #: Every experiment and logged-model record written through this store's blobs (by
        #: this store, or a migration into it) goes into its pages once settled.  From here:
        #: a new store's default experiment costs no page write; the first reader that lists
        #: the experiments finds it in no page and pages it.
        self.blobs.watch(self._page_record)
        if self.strict and self.journal.entries():
            # Strict writes never use the buffer, so its thread (which writes what earlier
            # processes kept in the journal before anything else) would never start.
            self._flusher.start()

    def _page_record(self, key: str, version: str, data: bytes) -> None:
        if not key.endswith(".json"):
            return
        if key.startswith(layout.EXPERIMENTS):
            folder = layout.experiment_pages()
        elif key.startswith(layout.LOGGED_MODELS) and key.count("/") == 2:
            folder = layout.logged_model_pages(key.split("/")[1])
        else:
            return
        try:
            rec = records.parse(data, key)
        except CloudtrackError:
            return
        # A creation not yet settled, a model still pending: read directly, as searches do.
        if not rec.get(claims.PENDING) and rec.get("status") != LoggedModelStatus.PENDING.value:
            self._page_writer.add(folder, key, version, data)

    def _root_uri(self) -> str:
        if self.config.backend == "file":
            return "file://" + self.config.container
        return self.store_uri

    def _write_pending(self, run_id: str, pending: Pending, strict: bool = False) -> None:
        """Write one run's buffered data durably (implemented by the logging mixin)."""
        raise NotImplementedError

    def _write_journaled(self, run_id: str, pending: Pending) -> None:
        """Write data an earlier process kept in the journal (as its flusher would have)."""
        with self._run_locks(run_id):
            self._write_pending(run_id, pending)

    def replay_journal(self, written_through: str | None = None) -> ReplayReport:
        """Write what earlier processes kept in the local journal for this store now (those
        that reached it through endpoint ``written_through``, when given)."""
        if written_through is None:
            return self.journal.replay()
        return Journal(self.config, self._write_journaled,
                       written_through=written_through).replay()

    # -- opening a store -------------------------------------------------------------------

    def _initialize(self) -> None:
        if self.config.backend == "file":
            self.blobs.create_container()
        if marker.read(self.blobs) is None:
            # Every rule of the format rests on conditional writes: refuse an endpoint that
            # ignores them before anything is written.
            marker.check_conditional_writes(self.blobs)
            self._create_default_experiment()
            marker.create(self.blobs)

    def _create_default_experiment(self) -> None:
        now = get_current_time_millis()
        rec = build.experiment(
            experiment_id=layout.DEFAULT_EXPERIMENT_ID, name=Experiment.DEFAULT_EXPERIMENT_NAME,
            artifact_location=append_to_uri_path(self.artifact_root_uri,
                                                 layout.DEFAULT_EXPERIMENT_ID),
            creation_time=now, last_update_time=now)
        try:
            self.blobs.put_if_absent(layout.experiment(layout.DEFAULT_EXPERIMENT_ID),
                                     records.dumps(rec))
        except AlreadyExists:
            pass  # an earlier initialiser, perhaps killed before it claimed the name
        try:
            self.blobs.put_if_absent(
                layout.experiment_name(Experiment.DEFAULT_EXPERIMENT_NAME),
                records.dumps(build.pointer(layout.DEFAULT_EXPERIMENT_ID)))
        except AlreadyExists:
            pass

    # -- reads -----------------------------------------------------------------------------

    def _read_many(self, listing: Iterable[tuple[str, str]]) -> dict[str, Record | Exception]:
        """Every listed (key, version): cached at that version, else a GET (in parallel)."""
        return self._cache.read_many(self.blobs, listing, self._pool.map)

    def _read_paged(self, listing: list[tuple[str, str]], folder: str,
                    listed_pages: concurrent.futures.Future[pages.PageMap] | pages.PageMap
                    | None = None, read_pages: Collection[str] = (),
                    ) -> tuple[dict[str, Record | Exception], list[str], pages.PageMap]:
        """Every listed record, like :meth:`_read_many`, the ones this process does not hold
        taken from the pages in ``folder`` (:mod:`cloudtrack.store.pages`) when that is fewer
        GETs; also the keys read one by one that no page holds (for :meth:`_page_later`) and
        the pages found (``listed_pages``: listed already, or being listed; ``read_pages``:
        pages whose entries are in the cache already, not read again)."""
        if isinstance(listed_pages, pages.PageMap):
            page_map = listed_pages
        elif listed_pages is not None:
            page_map = listed_pages.result()
        else:
            page_map = pages.list_pages_for_reading(self.blobs, folder)
        unpaged = pages.seed(self._cache, self.blobs, folder, page_map, listing,
                             self._pool.map, read_pages)
        return self._read_many(listing), unpaged, page_map

    def _page_later(self, folder: str, keys: list[str], done: Callable[[Record], bool]) -> None:
        """Records a read had to GET because no page holds them go into the pages (in the
        background; those ``done`` says are settled), so the next process does not: how a
        store written before pages, and the entries writers gave up after lost races, catch
        up.  However few: each costs every later reader without it in its read cache a GET."""
        for key, (version, rec) in self._cache.entries(keys).items():
            if done(rec):
                self._page_writer.add(folder, key, version, records.dumps(rec))

    # -- run heads -------------------------------------------------------------------------

    def _experiment_of(self, run_id: str) -> str:
        if not is_run_id(run_id):
            raise run_not_found(run_id)
        exp = self._run_exp.get(run_id)
        if exp is None:
            try:
                rec = records.read(self.blobs, layout.run_index(run_id))
            except BlobNotFound:
                raise run_not_found(run_id) from None
            exp = str(rec["experiment_id"])
            self._run_exp[run_id] = exp
        return exp

    def _load_head(self, run_id: str) -> tuple[Record, str]:
        """GET the run's head (always: the caller wants what is stored now)."""
        exp = self._experiment_of(run_id)
        try:
            head, version = records.read_versioned(self.blobs, layout.head(exp, run_id))
        except BlobNotFound:
            raise run_not_found(run_id) from None
        self._heads[run_id] = (head, version)
        return head, version

    def _cached_head(self, run_id: str) -> tuple[Record, str]:
        """The head as this process last saw it (a GET only the first time)."""
        hit = self._heads.get(run_id)
        return hit if hit is not None else self._load_head(run_id)

    def _update_head_key(self, key: str, change: Change,
                         known: tuple[Record, str] | None = None) -> Record:
        run_id = layout.id_from_key(key)
        head, version = versioned_update(self.blobs, key, change, known=known,
                                         missing=lambda: run_not_found(run_id))
        self._heads[run_id] = (head, version)
        if is_finished(head):
            self._page_writer.add(layout.head_pages(head["info"]["experiment_id"]), key,
                                  version, records.dumps(head))
        return head

    def _update_head(self, run_id: str, change: Change) -> Record:
        exp = self._experiment_of(run_id)
        return self._update_head_key(layout.head(exp, run_id), change,
                                     known=self._heads.get(run_id))

    def _spill(self, run_id: str, head: Record) -> None:
        """Move the head's tail of recent points into an immutable history batch.

        Called inside a head update, on the head as stored, before new points join it: the
        batch is written before the head that no longer holds those points, so a reader that
        reads the head first and lists history second sees every point at least once
        (duplicates are merged on read) — and every point a batch holds already counts in
        the stored head's latest values, so a writer killed between the batch and the head
        never leaves ``get_run`` behind ``get_metric_history``.
        """
        tail = head.get("tail") or []
        if tail:
            batch = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
            self.blobs.put(layout.history_batch(run_id, batch),
                           records.dumps(build.history_batch(tail)))
            head["tail"] = []

    # -- housekeeping ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered value now."""
        self._flusher.flush()

    def flush_async_logging(self) -> None:
        super().flush_async_logging()
        self._flusher.flush()

    def close(self) -> None:
        self._flusher.close()
        self._page_writer.close()
        self._pool.shutdown(wait=False)
        self.blobs.close()

    def _release(self) -> None:
        """At exit, once the buffers are written (flusher.release_at_exit): the records kept
        only to read faster go (a use after this reads them from the store again)."""
        self._cache.clear()
        self._entities = {}
        self._heads = {}

    def _after_fork(self) -> None:
        """In a forked child (cloudtrack.forks): a read pool of its own (the parent's
        threads are not in the child), and locks no parent thread can be holding."""
        self._pool = concurrent.futures.ThreadPoolExecutor(READ_CONCURRENCY,
                                                           thread_name_prefix="cloudtrack-read")
        self._cache.after_fork()
        self._read_cache.after_fork()
        self._first_reads, self._first_reads_lock = {}, threading.Lock()

    # Methods one mixin calls on another; each is defined by the mixin named.

    def _log_model_metrics(self, run_id: str, metrics: list[list[Any]]) -> None:
        """Copy metric points that name a logged model onto it (logged_models.py)."""
        raise NotImplementedError
