"""The pages this process keeps current (:mod:`cloudtrack.store.pages`).

Every head write of a finished run (``end_run``, and any later change of a finished run), and
every write of a logged model that is no longer pending, queues the record with the version
its write answered; a background thread merges the queue into the
pages about once a second, and whatever is queued at exit is merged then, for at most
``EXIT_PATIENCE`` seconds.  Pages are a cache: an entry this process cannot write (a lost race
after several attempts, the store down, the process killed) costs a later reader one GET for
that run, nothing else, so failures here are logged at debug level only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from cloudtrack.store import pages
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.tracking")

#: Run statuses after which a head is worth a page entry (a running run's head changes
#: every flush; readers GET those).
FINISHED_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
#: Seconds between background merges.
INTERVAL = 1.0
#: Seconds at most spent writing pages at exit (or close).
EXIT_PATIENCE = 5.0
#: Seconds a listing of an experiment's pages is reused by this process.
PAGES_TTL = 30.0


def is_finished(head: Record) -> bool:
    return str((head.get("info") or {}).get("status")) in FINISHED_STATUSES


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
        #: Entries written and given up, for tests and the benchmark.
        self.written = 0
        self.given_up = 0
        _WRITERS.add(self)

    def add(self, folder: str, key: str, version: str, record: bytes) -> None:
        """Queue ``record`` (at ``version``) for the pages in ``folder``."""
        if self._closed:
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
        """Merge what is queued now (stopping between experiments once ``deadline``, a
        ``time.monotonic()`` value, has passed)."""
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
                    lost = pages.merge(self.blobs, folder, entries, self._map(folder))
                except Exception as e:  # a cache: readers pay a GET per record instead
                    lost = len(entries)
                    log.debug("could not write the pages in %s: %r",
                              self.blobs.object_uri(folder), e)
                    self._maps.pop(folder, None)
                self.written += len(entries) - lost
                self.given_up += lost

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
            self.write(deadline)

    def after_fork(self) -> None:
        """A forked child starts empty: what the parent queued is the parent's to write."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue = {}
        self._thread = None
        self._pid = os.getpid()


_WRITERS: weakref.WeakSet[PageWriter] = weakref.WeakSet()


def close_all(patience: float = EXIT_PATIENCE) -> None:
    """At exit, after the data is written: merge what every store's writer has queued."""
    deadline = time.monotonic() + patience
    for w in list(_WRITERS):
        w.close(max(0.0, deadline - time.monotonic()))


def _after_fork_in_child() -> None:
    for w in list(_WRITERS):
        w.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
