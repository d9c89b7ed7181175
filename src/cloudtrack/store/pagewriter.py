"""The pages this process keeps current (:mod:`cloudtrack.store.pages`), written in the
background.

Every head write of a finished run (``end_run``, and any later change of a finished run), and
every write of a logged model that is no longer pending, queues the record with the version
its write answered; a background thread merges the queue into the
pages about once a second, and whatever is queued at exit is merged then, for at most
``EXIT_PATIENCE`` seconds.  Pages are a cache: an entry this process cannot write (a lost race
after several attempts, the store down, the process killed) costs a later reader one GET for
that run, nothing else, so failures here are logged at debug level only.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from cloudtrack.errors import PermissionDenied
from cloudtrack.store import pages
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.store")

T = TypeVar("T")
R = TypeVar("R")

#: Run statuses after which a head is worth a page entry (a running run's head changes
#: every flush; readers GET those).
FINISHED_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
#: Seconds between background merges.
INTERVAL = 1.0
#: Seconds at most spent writing pages at exit (or close).
EXIT_PATIENCE = 5.0
#: Passes an entry that keeps losing races gets before it is given up.
PASSES = 3
#: Pages written side by side.
WRITE_CONCURRENCY = 8
#: Seconds a listing of a folder's pages is reused (about one LIST per pass: a writer that
#: goes on writing into a page another writer has split leaves its entries where readers do
#: not look).
PAGES_TTL = 1.0


def is_finished(head: Record) -> bool:
    """Whether the run of ``head`` has ended (a head that is not one has not: it is never
    paged, and a reader that meets it skips it and says so)."""
    info = head.get("info") if isinstance(head, dict) else None
    return isinstance(info, dict) and str(info.get("status")) in FINISHED_STATUSES


class PageWriter:
    """Queue of (pages folder, record key) -> (version, record bytes), merged in the
    background."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        self._queue: dict[str, dict[str, tuple[str, bytes]]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._maps: dict[str, tuple[float, pages.PageMap]] = {}
        self._closed = False
        #: The store refused a page write (read-only credentials): queue nothing more.
        self._refused = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        #: key -> passes that lost it so far.
        self._tries: dict[str, int] = {}
        self._executor_pid = os.getpid()
        #: Entries written and given up, for tests and the benchmark.
        self.written = 0
        self.given_up = 0
        _WRITERS.add(self)

    def add(self, folder: str, key: str, version: str, record: bytes) -> None:
        """Queue ``record`` (at ``version``) for the pages in ``folder``."""
        if self._closed or self._refused:
            return
        with self._lock:
            self._queue.setdefault(folder, {})[key] = (version, record)
        self._start()

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queue.values())

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="cloudtrack-pages",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(INTERVAL)
            self._wake.clear()
            if self._closed:
                return
            self.write()

    def write(self, deadline: float | None = None) -> None:
        """Merge what is queued now (stopping between folders once ``deadline``, a
        ``time.monotonic()`` value, has passed).  Entries that lost races go back to the
        queue for the next pass, up to ``PASSES`` passes."""
        with self._write_lock:
            with self._lock:
                queue, self._queue = self._queue, {}
            for folder, entries in queue.items():
                if deadline is not None and time.monotonic() > deadline:
                    self.given_up += len(entries)
                    log.debug("no time left at exit for %d entries of the pages in %s",
                              len(entries), self.blobs.object_uri(folder))
                    continue
                try:
                    lost = pages.merge(self.blobs, folder, entries, self._map(folder),
                                       _threads_map if self._closed else self._pool().map)
                except PermissionDenied as e:  # a reader that may not write: not again
                    self.given_up += len(entries)
                    self._refused = True
                    log.debug("may not write the pages in %s (%r): writing no page from now",
                              self.blobs.object_uri(folder), e)
                    continue
                except Exception as e:  # a cache: readers pay a GET per record instead
                    self.given_up += len(entries)
                    log.debug("could not write the pages in %s: %r",
                              self.blobs.object_uri(folder), e)
                    self._maps.pop(folder, None)
                    continue
                self.written += len(entries) - len(lost)
                self._retry_later(folder, lost)

    def _retry_later(self, folder: str, lost: dict[str, tuple[str, bytes]]) -> None:
        again = {}
        for key, entry in lost.items():
            tries = self._tries.get(key, 0) + 1
            if tries < PASSES:
                self._tries[key] = tries
                again[key] = entry
            else:
                self._tries.pop(key, None)
                self.given_up += 1
        if again:
            self._maps.pop(folder, None)  # perhaps lost to a split: list again
            with self._lock:
                queued = self._queue.setdefault(folder, {})
                for key, entry in again.items():
                    queued.setdefault(key, entry)  # a newer entry queued meanwhile wins

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads writing pages side by side (created on first use, and again in a forked
        child, whose copy of the parent's threads does not run)."""
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = concurrent.futures.ThreadPoolExecutor(
                WRITE_CONCURRENCY, thread_name_prefix="cloudtrack-pages-write")
            self._executor_pid = os.getpid()
        return self._executor

    def _map(self, folder: str) -> pages.PageMap:
        hit = self._maps.get(folder)
        if hit is not None and time.monotonic() - hit[0] < PAGES_TTL:
            return hit[1]
        found = pages.list_pages(self.blobs, folder)
        self._maps[folder] = (time.monotonic(), found)
        return found

    def close(self, patience: float = EXIT_PATIENCE) -> None:
        """Stop the thread and merge what is left, for at most ``patience`` seconds."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        deadline = time.monotonic() + patience
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() \
                and self._pid == os.getpid():
            thread.join(patience)
        if self.pending():
            # In a thread of its own, so that a store that no longer answers (each request
            # retried up to the retry deadline) holds the exit for ``patience`` at most.
            last = threading.Thread(target=self._drain, args=(deadline,), daemon=True,
                                    name="cloudtrack-pages-exit")
            last.start()
            last.join(max(0.0, deadline - time.monotonic()))

    def _drain(self, deadline: float) -> None:
        """Write passes until nothing is queued (entries that lost a race come back, up to
        ``PASSES`` times) or ``deadline``."""
        while self.pending() and time.monotonic() < deadline:
            self.write(deadline)
        self.given_up += self.pending()

    def after_fork(self) -> None:
        """A forked child starts empty: what the parent queued is the parent's to write."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue = {}
        self._thread = None
        self._pid = os.getpid()


_WRITERS: weakref.WeakSet[PageWriter] = weakref.WeakSet()


def _threads_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``map`` on a thread per item: at exit, where thread pools take no more work."""
    items = list(items)
    out: list[Any] = [None] * len(items)

    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            out[i] = fn(items[i])
        except Exception as e:  # raised in the caller's thread below, as map would
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True,
                                name=f"cloudtrack-pages-exit-{i}") for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


class _QuietPages(logging.Filter):
    """Retry lines of page writes go to DEBUG: pages are a cache, nobody waits on them, and
    a store that is down is reported by the writes of the data."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and \
                threading.current_thread().name.startswith("cloudtrack-pages"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("cloudtrack.retry").addFilter(_QuietPages())


@atexit.register
def close_all(patience: float = EXIT_PATIENCE) -> None:
    """At exit, after the data is written: merge what every store's writer has queued.

    The tracking store's exit hook (tracking/flusher.py, registered after this one, so run
    before it) calls it once its buffers are written; this registration serves processes
    that wrote only registry records."""
    deadline = time.monotonic() + patience
    for w in list(_WRITERS):
        w.close(max(0.0, deadline - time.monotonic()))


def _after_fork_in_child() -> None:
    for w in list(_WRITERS):
        w.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
