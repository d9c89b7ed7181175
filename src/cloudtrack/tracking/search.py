"""``search_runs``: a listing of an experiment's heads (about one request per 1,000 runs, read
in parallel key ranges when large: split where an earlier listing's keys say, else by next
character), then only the heads this process has not seen at the listed version: from the
head pages writers keep (:mod:`cloudtrack.store.pages`, about one GET per few hundred
finished runs), and one GET each for the rest (running runs, and heads changed since their
page entry).  Heads a search had to GET one by one go into the pages for the next
process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mlflow.entities import LifecycleStage, Run
from mlflow.utils.search_utils import SearchUtils

from cloudtrack.errors import BlobNotFound
from cloudtrack.store import entities, layout, pages, readcache, snapshots
from cloudtrack.store.pagewriter import is_finished
from cloudtrack.store.records import Record
from cloudtrack.threads import on_own_thread
from cloudtrack.tracking.core import StoreCore, check_max_results, distinct_experiment_ids

if TYPE_CHECKING:
    from cloudtrack.blobs import BlobInfo

log = logging.getLogger("cloudtrack.tracking")

#: A search missing this many heads of an experiment without head pages first reads the
#: snapshot older versions wrote.
SNAPSHOT_MIN_MISSES = 64
#: Experiments a search of several reads at once.
EXPERIMENTS_AT_ONCE = 8
#: Keys per range when a search lists heads it listed before in ranges: a quarter under a
#: LIST page of 1,000 (S3, GCS), so a range that grew since still takes one request.
RANGE_KEYS = 750

_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False
_gc_resume: threading.Timer | None = None
#: The timer fired while a search ran: the collector resumes when the last one ends.
_gc_due = False
#: Seconds the collector stays paused after a search ends (see :func:`_gc_paused`).
GC_RESUME_AFTER = 2.0


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a search builds thousands of objects.

    A 10,000-run search allocates millions of small objects (the decoded snapshot, the Run
    entities); each allocation burst triggers full collections that scan them all again: a
    cold 10,000-run search of a local store took 2.9-3.5 s with them, 1.2-1.9 s without.
    Nothing built here forms cycles worth collecting early.  Re-entrant and thread-safe.

    The collector resumes :data:`GC_RESUME_AFTER` seconds after a search ends, not at once:
    everything the search built is the young generation by then, and the first allocation
    after it (the caller's DataFrame, the server's answer) would pay a collection walking all
    of it (0.11 s after a 10,000-run search of a local store, 2.1 s after 100,000).  A timer
    resumes it and makes that collection, while the process most likely waits on something
    else; a process that ends first never pays it.  Searches ending meanwhile do not put it
    off, and one still running when the timer fires only until it ends: in a loop of searches
    it stays off no longer than before.  A forked child resumes it at once (the timer is the
    parent's).
    """
    global _gc_pauses, _gc_was_enabled, _gc_resume, _gc_due
    with _gc_lock:
        if _gc_pauses == 0 and _gc_resume is None and not _gc_due:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_due:
                _gc_due = False
                if _gc_was_enabled:
                    gc.enable()
            elif _gc_pauses == 0 and _gc_was_enabled and _gc_resume is None:
                _gc_resume = threading.Timer(GC_RESUME_AFTER, _resume_gc)
                _gc_resume.daemon = True
                _gc_resume.start()


def _resume_gc() -> None:
    """The timer's end of a pause: the collector back on and its young generation collected,
    or, while a search runs, on as soon as the last one ends."""
    global _gc_resume, _gc_due
    with _gc_lock:
        _gc_resume = None
        if _gc_pauses:
            _gc_due = True
            return
        if not _gc_was_enabled:
            return
        gc.enable()
    gc.collect(0)


def freeze_what_was_read() -> None:
    """For a server worker that has just read ahead (:mod:`cloudtrack.warmup`): collect, then
    move everything the process holds into the collector's permanent generation.

    Otherwise every full collection walks all the heads read ahead: a worker's first request
    (MLflow imports modules in it, which triggers such collections) took 0.35-0.48 s with
    2,000 heads read ahead against 0.18-0.29 s with none, and 0.14-0.21 s frozen.  What is
    frozen is still freed when no longer referenced (records are dicts, lists and strings:
    no cycles); only cycles among frozen objects would stay, and the collection before the
    freeze leaves none of the worker's start behind.  A pause a search left pending ends
    now."""
    global _gc_resume, _gc_due
    with _gc_lock:
        if _gc_resume is not None and not _gc_pauses:
            _gc_resume.cancel()
            _gc_resume, _gc_due = None, False
            if _gc_was_enabled:
                gc.enable()
    gc.collect()
    gc.freeze()


def _gc_after_fork() -> None:
    global _gc_lock, _gc_pauses, _gc_resume, _gc_due
    _gc_lock = threading.Lock()
    paused = bool(_gc_pauses) or _gc_resume is not None or _gc_due
    _gc_pauses, _gc_resume, _gc_due = 0, None, False
    if paused and _gc_was_enabled:
        gc.enable()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_gc_after_fork)


class _Info:
    """What a search's filter and order read of a run's info (``getattr(run.info, key)``),
    straight from its head: the attributes MLflow's RunInfo has, normalised as
    :func:`cloudtrack.store.entities.run` normalises them."""

    __slots__ = ("artifact_uri", "end_time", "experiment_id", "lifecycle_stage", "run_id",
                 "run_name", "run_uuid", "start_time", "status", "user_id")

    def __init__(self, info: Record) -> None:
        self.run_id = self.run_uuid = info["run_id"]
        self.experiment_id = str(info["experiment_id"])
        self.user_id = info.get("user_id") or ""
        self.status = info["status"]
        self.start_time = info.get("start_time")
        self.end_time = info.get("end_time")
        self.lifecycle_stage = info["lifecycle_stage"]
        self.artifact_uri = info.get("artifact_uri")
        self.run_name = info.get("run_name")


class _Data:
    """A run's latest metrics, params and tags as RunData's dicts, built when first read."""

    __slots__ = ("_head", "_metrics")

    def __init__(self, head: Record) -> None:
        self._head = head
        self._metrics: dict[str, float] | None = None

    @property
    def metrics(self) -> dict[str, float]:
        if self._metrics is None:
            self._metrics = {k: float(t[1]) for k, t in self._head.get("metrics", {}).items()}
        return self._metrics

    def metric(self, key: str) -> float | None:
        """``metrics.get(key)``, without building the dict."""
        if self._metrics is not None:
            return self._metrics.get(key)
        latest = self._head.get("metrics", {}).get(key)
        return None if latest is None else float(latest[1])

    @property
    def params(self) -> dict[str, str]:
        return self._head.get("params", {})  # type: ignore[no-any-return]

    @property
    def tags(self) -> dict[str, str]:
        return self._head.get("tags", {})  # type: ignore[no-any-return]


class _Candidate:
    """A run head as MLflow's search utilities read a Run (``info``, ``data``, ``inputs``),
    without building the Run: a search over thousands of runs filters, orders and pages these,
    and builds Runs (most of a local search's time) only for the page it returns."""

    __slots__ = ("_info", "_inputs", "data", "head", "key", "lifecycle_stage", "version")

    def __init__(self, key: str, version: str, head: Record) -> None:
        self.key, self.version, self.head = key, version, head
        info = head["info"]
        # What _Info reads without a default: a head without it is malformed, skipped here
        # rather than when a filter first reads the info (most searches never do).
        info["run_id"], info["experiment_id"], info["status"]
        self.lifecycle_stage: str = info["lifecycle_stage"]
        self._info: _Info | None = None
        self.data = _Data(head)
        self._inputs: Any = None

    @property
    def info(self) -> _Info:
        """The run's info, built when first read (a search that filters and orders by
        metrics or params reads it only to build the page's Runs: 2,000 of them cost 11 ms)."""
        if self._info is None:
            self._info = _Info(self.head["info"])
        return self._info

    @property
    def inputs(self) -> Any:  # dataset filters only
        if self._inputs is None:
            self._inputs = entities.run(self.head).inputs
        return self._inputs


def _filtered(candidates: list[_Candidate], filter_string: str | None) -> list[_Candidate]:
    """``SearchUtils.filter(candidates, filter_string)``, with what MLflow works out again for
    every run and clause (the key's alias and kind, the value's type, the comparison) worked
    out once per clause: 2,000 runs and two clauses took 25 ms, most of a search's filtering.
    The comparisons and the checks of the key's kind are MLflow's own; a clause of any other
    kind (datasets), or one MLflow would refuse, is left to MLflow's per-run function, which
    then answers or raises as it does (and, like it, not at all when there is no run)."""
    return _apply(_filter_tests(filter_string), candidates)


def _filter_tests(filter_string: str | None) -> list[Callable[[_Candidate], bool]]:
    """The parsed filter's clauses as tests of one candidate (none: every run matches); a
    filter MLflow cannot parse raises here, as MLflow's does, whatever the runs."""
    if not filter_string:
        return []
    return [_clause_test(clause) for clause in SearchUtils.parse_search_filter(filter_string)]


def _apply(tests: list[Callable[[_Candidate], bool]],
           candidates: list[_Candidate]) -> list[_Candidate]:
    if not tests:
        return candidates
    return [c for c in candidates if all(test(c) for test in tests)]


def _clause_test(clause: dict[str, Any]) -> Callable[[_Candidate], bool]:
    """A clause of a parsed filter as a test of one candidate (see :func:`_filtered`)."""
    def mlflows(run: _Candidate) -> bool:
        return bool(SearchUtils._does_run_match_clause(run, clause))

    try:
        kind, value = clause.get("type"), clause.get("value")
        comparator = clause["comparator"].upper()
        key = SearchUtils.translate_key_alias(clause.get("key"))
        get: Callable[[_Candidate], Any]
        if SearchUtils.is_metric(kind, comparator):
            value = float(value)  # type: ignore[arg-type]
            get = lambda run: run.data.metric(key)  # noqa: E731
        elif SearchUtils.is_param(kind, comparator):
            get = lambda run: run.data.params.get(key)  # noqa: E731
        elif SearchUtils.is_tag(kind, comparator):
            get = lambda run: run.data.tags.get(key)  # noqa: E731
        elif SearchUtils.is_string_attribute(kind, key, comparator):
            get = lambda run: getattr(run.info, key)  # noqa: E731
        elif SearchUtils.is_numeric_attribute(kind, key, comparator):
            get = lambda run: getattr(run.info, key)  # noqa: E731
            if isinstance(value, str):
                value = int(value)
        else:
            return mlflows
        if comparator in ("IS NULL", "IS NOT NULL"):
            null = comparator == "IS NULL"
            return lambda run: (get(run) is None) is null
        compare = SearchUtils.get_comparison_func(comparator)
    except Exception:  # MLflow's own function raises it for each run, or answers
        return mlflows

    def test(run: _Candidate) -> bool:
        lhs = get(run)
        return lhs is not None and bool(compare(lhs, value))

    return test


class SearchMixin(StoreCore):

    def _candidates_of(self, experiment_id: str) -> list[_Candidate]:
        """Every readable run head of the experiment, as :class:`_Candidate`.

        The first read of an experiment in this process reads all its heads; searches of it
        that start meanwhile (the UI sends several requests at once as a page opens; a
        server's warm-up, :mod:`cloudtrack.warmup`, may be reading it) wait for that read
        and then only list, instead of reading every head again beside it."""
        if experiment_id in self._searched:
            return self._read_candidates(experiment_id)
        with self._first_reads_lock:
            lock = self._first_reads.setdefault(experiment_id, threading.Lock())
        if lock.acquire(blocking=False):
            try:
                return self._read_candidates(experiment_id)
            finally:
                lock.release()
        # Another search is reading it: this one's listing goes out now, beside that read
        # (a search lists after it began, so that it misses no run acknowledged before it),
        # and only its pages and decoding are waited for.
        heads = layout.heads(experiment_id)
        listed = on_own_thread(lambda: self._list_heads(heads, self._bounds.get(experiment_id)),
                                "cloudtrack-list")
        with lock:
            return self._read_candidates(experiment_id, listed)

    def read_ahead(self, experiment_id: str) -> int:
        """Read the experiment's run heads into this process as its first search would
        (:mod:`cloudtrack.warmup`); how many runs it has."""
        with _gc_paused():
            return len(self._candidates_of(experiment_id))

    def _list_heads(self, heads: str, bounds: list[str] | None) -> list[BlobInfo]:
        """The heads' listing: in ranges of about a page each, all at once, where ``bounds``
        (from an earlier listing) say where to split; else spread as the first page shows."""
        if bounds:
            return self.blobs.list_ranges(heads, bounds, self._pool.map, RANGE_KEYS)
        return self.blobs.list_spread(heads, self._pool.map)

    def _read_candidates(self, experiment_id: str,
                         listed: concurrent.futures.Future[list[BlobInfo]] | None = None,
                         ) -> list[_Candidate]:
        """The experiment's heads, as :meth:`_candidates_of` answers; ``listed``: its
        heads' listing, already under way."""
        folder = layout.head_pages(experiment_id)
        heads = layout.heads(experiment_id)
        # Where this process (or, from the file, an earlier one) listed the heads before:
        # bounds that split the listing into ranges of about a page each.
        bounds = self._bounds.get(experiment_id)
        first = experiment_id not in self._searched
        if bounds is None and self.blobs.lists_after:
            on_disk_keys = self._read_cache.keys(heads)
            on_disk, bounds = bool(on_disk_keys), self._bounds_of(on_disk_keys)
        elif first or self._read_cache.rows:
            on_disk = self._read_cache.holds(heads)
        else:  # a file of packs only (a local store) has nothing for a later search
            on_disk = False
        # The pages are listed beside the heads, unless this machine's read cache holds the
        # experiment: then most heads come from it and the pages are listed only if not.
        listed_pages = None if on_disk else \
            self._pool.submit(pages.list_pages_for_reading, self.blobs, folder)
        # The experiment's first search in this process, with the heads on disk: they are
        # read from the file and decoded while the heads are listed, not after.
        loaded = self._pool.submit(self._read_cache.load, heads) if on_disk and first else None
        # The experiment's first search in this process, with nothing on disk: its heads will
        # come from the pages, so they are read as soon as they are listed, while the heads'
        # listing (often two round trips) goes on: one round trip less.
        early = None if listed_pages is None or not first else \
            pages.read_early(self.blobs, folder, listed_pages, self._pool.map)
        infos = listed.result() if listed is not None else self._list_heads(heads, bounds)
        listing = [(i.key, i.version) for i in infos]
        if self.blobs.lists_after:
            self._bounds[experiment_id] = self._bounds_of([key for key, _ in listing])
        if on_disk:
            self._read_cache.fill(self._cache, listing, None if loaded is None else
                                  loaded.result())
        unread = self._cache.missing(listing)  # what the store had to give this time
        read_early: frozenset[str] = frozenset()
        if early is not None:  # heads missing still are in no page, or newer than theirs
            early_found, read_early = early.result()
            self._cache.merge(early_found)
        self._searched.add(experiment_id)
        if listed_pages is not None:
            page_map = listed_pages.result()
        elif len(unread) >= pages.MIN_MISSES:  # the file did not have them: pages may
            page_map = pages.list_pages_for_reading(self.blobs, folder)
        else:
            page_map = pages.PageMap((), known=False)
        if not page_map.bits and len(unread) >= SNAPSHOT_MIN_MISSES:
            # A store written before head pages: the snapshot its readers left, if any.
            snapshots.load_into(self._cache, self.blobs, experiment_id)
        found, unpaged, _ = self._read_paged(listing, folder, page_map, read_early)
        self._page_later(folder, unpaged, is_finished)
        if first and len(listing) >= readcache.PACK_MIN and (
                loaded is None or not loaded.result().packed
                or len(unread) + loaded.result().rows > readcache.PACK_STALE * len(listing)):
            # For the next process: every head it listed, as one pack (decoded in one call),
            # in place of the rows saved since the last one.
            keys = [key for key, _ in listing]
            self._pool.submit(self._read_cache.save_pack, heads, self._cache.entries(keys))
        elif unread:  # for the next process: what this one had to read from the store
            self._pool.submit(self._read_cache.save, self._cache.entries(unread))
        candidates = []
        for key, version in listing:
            rec = found[key]
            if isinstance(rec, BlobNotFound):
                continue
            if isinstance(rec, Exception):
                log.warning("skipping run head %s: %s", self.blobs.object_uri(key), rec)
                continue
            try:
                candidates.append(_Candidate(key, version, rec))
            except (KeyError, TypeError, AttributeError) as e:
                log.warning("skipping malformed run head %s: %r", self.blobs.object_uri(key), e)
        return candidates

    def _bounds_of(self, keys: list[str]) -> list[str]:
        """Every :data:`RANGE_KEYS`-th of the sorted ``keys``: none when they fit a page."""
        if len(keys) <= self.blobs.page_size:
            return []
        return keys[RANGE_KEYS::RANGE_KEYS]

    def _each_experiment(self, experiment_ids: list[str]) -> list[list[_Candidate]]:
        """:meth:`_candidates_of` each experiment, several at once (threads of their own: the
        read pool's tasks must not wait on tasks of the same pool)."""
        if len(experiment_ids) <= 1:
            return [self._candidates_of(e) for e in experiment_ids]
        with concurrent.futures.ThreadPoolExecutor(
                min(len(experiment_ids), EXPERIMENTS_AT_ONCE),
                thread_name_prefix="cloudtrack-search") as pool:
            return list(pool.map(self._candidates_of, experiment_ids))

    def _run_of(self, candidate: _Candidate) -> Run | None:
        """The Run of a candidate, built once per head version per process."""
        hit = self._entities.get(candidate.key)
        if hit is not None and hit[0] == candidate.version:
            return hit[1]
        try:
            run = entities.run(candidate.head)
        except Exception as e:  # RunInfo refuses a missing field with a bare Exception
            log.warning("skipping malformed run head %s: %r",
                        self.blobs.object_uri(candidate.key), e)
            return None
        self._entities[candidate.key] = (candidate.version, run)
        return run

    def _search_runs(self, experiment_ids: list[str], filter_string: str | None,
                     run_view_type: int, max_results: int | None, order_by: list[str] | None,
                     page_token: str | None) -> tuple[list[Run], str | None]:
        """Runs as MLflow's SQL store finds them: ``max_results`` None means every run (and
        no token), an unknown view type matches no run."""
        check_max_results(max_results, allow_null=True)
        experiment_ids = distinct_experiment_ids(experiment_ids)
        stages = LifecycleStage.view_type_to_stages(run_view_type)
        self._flusher.flush()
        candidates: list[_Candidate] = []
        with _gc_paused():
            if filter_string:
                # The heads are read while the filter is parsed: a process's first parse
                # builds sqlparse's lexer (15-18 ms), as long as a local store's listing.
                reading = on_own_thread(lambda: self._each_experiment(experiment_ids),
                                        "cloudtrack-search")
                tests = _filter_tests(filter_string)
                each = reading.result()
            else:
                tests, each = [], self._each_experiment(experiment_ids)
            for found in each:
                candidates.extend(c for c in found if c.lifecycle_stage in stages)
            filtered = _apply(tests, candidates)
            ordered = SearchUtils.sort(filtered, order_by)
            if max_results is None:
                offset = SearchUtils.parse_start_offset_from_page_token(page_token)
                page, token = ordered[offset:], None
            else:
                page, token = SearchUtils.paginate(ordered, page_token, max_results)
            built = (self._run_of(c) for c in page)
            return [r for r in built if r is not None], token

    def _search_datasets(self, experiment_ids: list[str]) -> list[Any]:
        """The distinct (experiment, dataset name, digest, context) of the experiments' runs.

        Private in MLflow, yet ``mlflow server`` calls it for the UI's dataset filter
        (``experiments/search-datasets``); without it that request answers 500.  Like MLflow's
        SQL store: runs of every lifecycle stage, at most 1000 summaries.
        """
        from mlflow.entities.dataset_summary import _DatasetSummary
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        self._flusher.flush()
        found: dict[tuple[str, str, str, str | None], None] = {}
        ids = distinct_experiment_ids(experiment_ids)
        for exp_id, candidates in zip(ids, self._each_experiment(ids), strict=True):
            for c in candidates:
                for d in c.head.get("datasets", []):
                    context = d.get("tags", {}).get(MLFLOW_DATASET_CONTEXT)
                    found.setdefault((exp_id, d["dataset"]["name"], d["dataset"]["digest"],
                                      context), None)
        return [_DatasetSummary(experiment_id=e, name=n, digest=d, context=c)
                for e, n, d, c in list(found)[:1000]]
