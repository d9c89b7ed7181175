"""The write buffer of the default (non-strict) mode: logged values wait per run and are
written in the background about once a second, on demand (a read of the run, ``end_run``, a
lifecycle change) and at interpreter exit.

The flusher knows nothing of the store: it is given the function that writes one run's
pending data (``apply``), the per-run locks that keep one writer's batches in order, and what
keeps the data that could not be written at exit (the :class:`~cloudtrack.tracking.journal.
Journal`).  Nothing it holds is ever dropped silently:

* data the store refuses for good (the run no longer exists) is dropped with an ERROR line
  naming the run and what was dropped;
* on any other error it is kept and written again on the next pass, with one WARNING line when
  writing starts failing and one INFO line when it works again (never a traceback per retry);
* at exit, whatever could not be written goes to the local journal, with one message saying
  where it is and how to write it (``cloudtrack flush``).  Exit waits for the store at most
  once (one write's retry deadline): after a failure that concerns the whole store
  (unreachable, credentials, permissions) the rest goes to the journal without another try,
  and when writing was failing already, exit does not wait at all.

The retry lines of the background thread's writes are logged at DEBUG: nobody waits on them,
and the flusher says once that writing fails.  At exit somebody waits, and they are shown.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from mlflow.exceptions import MlflowException

from cloudtrack.errors import PermissionDenied, TransientError, Unauthenticated

# Imported first: its exit hook then runs after this module's (atexit runs hooks last-first).
from cloudtrack.store import pagewriter

log = logging.getLogger("cloudtrack.tracking")

FLUSH_INTERVAL = 1.0

#: MLflow error codes that are a verdict on the buffered data itself: the run is gone, so the
#: data can never be written, and it is dropped (with an ERROR line) rather than retried forever.
REFUSED = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")

#: Errors that concern the whole store, not one run: after one of them at exit, the remaining
#: runs go to the journal without waiting for the store again.
STORE_WIDE = (TransientError, Unauthenticated, PermissionDenied)


class Pending:
    """One run's values not written yet: metric tuples, params, tags, and ``info`` — a change
    of the run's status, end time or name (``update_run_info``) that could not be written."""

    __slots__ = ("info", "metrics", "params", "tags")

    def __init__(self, metrics: list[list[Any]] | None = None,
                 params: dict[str, str] | None = None,
                 tags: dict[str, str | None] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.metrics: list[list[Any]] = metrics if metrics is not None else []
        self.params: dict[str, str] = params if params is not None else {}
        self.tags: dict[str, str | None] = tags if tags is not None else {}
        self.info: dict[str, Any] = info if info is not None else {}

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags or self.info)

    def __len__(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags) + (1 if self.info else 0)

    def extend(self, other: Pending) -> None:
        """Append ``other``, which was logged after these values.  A None in ``other.info``
        keeps what is held (it keeps the run's value when written, too): a rename after a
        failed ``end_run`` must not drop its status."""
        self.metrics.extend(other.metrics)
        self.params.update(other.params)
        self.tags.update(other.tags)
        self.info.update({k: v for k, v in other.info.items() if v is not None})

    def to_record(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "params": self.params, "tags": self.tags,
                "info": self.info}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Pending:
        return cls([list(t) for t in rec.get("metrics") or []], dict(rec.get("params") or {}),
                   dict(rec.get("tags") or {}), dict(rec.get("info") or {}))


class Keeper(Protocol):
    """Where data that could not be written at exit goes (the journal)."""

    def keep(self, leftover: dict[str, Pending], cause: str) -> str:
        """Keep ``leftover`` (run id -> data); return where, for the message."""

    def replay(self, stop: Callable[[], bool] | None = None) -> object:
        """Write what an earlier process kept for this store (until ``stop()`` says so)."""

    def say_elsewhere(self) -> None:
        """Say once what an earlier process kept that this one will not write (kept while
        the store was reached through another endpoint), and how to write it."""


class RunLocks:
    """One lock per run: one write of a run's data at a time, so one writer's batches land in
    the order they were logged (the flusher's and a strict call's alike).  Re-entrant: a
    lifecycle change holds it while it flushes the run and then changes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    def __call__(self, run_id: str) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(run_id, threading.RLock())

    def reset(self) -> None:
        """New locks, in a child made by fork: the parent's threads may have held some."""
        self._lock = threading.Lock()
        self._locks = {}


def _brief(error: BaseException) -> str:
    text = getattr(error, "brief", None) or getattr(error, "message", None) or str(error)
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:200] + "…"


class Flusher:
    """Holds logged data per run and writes it with ``apply``, in the background, once per
    ``interval``.

    ``apply(run_id, pending)`` must write the data durably or raise.  When it raises an
    MlflowException whose code is in :data:`REFUSED`, the data is dropped (and said so); on any
    other error it is kept and written on a later pass.  A bound method is held weakly: the
    flusher does not keep its store alive (what it still holds then goes to the journal at
    exit).  ``uri`` names the store in messages.
    """

    def __init__(self, apply: Callable[[str, Pending], None], run_lock: RunLocks,
                 interval: float, *, uri: str = "", keeper: Keeper | None = None,
                 patience: float | None = None) -> None:
        self._apply: Callable[[], Callable[[str, Pending], None] | None] = (
            weakref.WeakMethod(apply) if inspect.ismethod(apply) else lambda: apply)
        self._run_lock = run_lock
        self.interval = interval
        self.uri = uri
        self._keeper = keeper
        #: The longest a pass of the background thread may take (its writes' retry deadline
        #: and timeouts); close() waits that long for it, not forever.
        self._patience = patience
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        #: What a pass took and is writing now (journaled at exit if the pass never ends).
        self._inflight: dict[str, Pending] = {}
        #: The error of the latest failed write (None once a write succeeds again), and when.
        self.failing: BaseException | None = None
        self._failed_at = 0.0
        self._failures = 0
        self._wake = threading.Event()
        #: Set when the store closes (at exit): no new background pass, and no more waiting
        #: for a store that failed as a whole.
        self._stopped = False
        self.closed = False
        self._thread: threading.Thread | None = None
        _FLUSHERS.add(self)

    @property
    def stopped(self) -> bool:
        """The store is closing (at exit): what fails now is said by the journal's line."""
        return self._stopped

    # -- buffering ---------------------------------------------------------------------------

    def add(self, run_id: str, values: Pending) -> None:
        """Buffer ``values`` for ``run_id``; the background thread starts on first use.  After
        :meth:`close` (something logged later at exit) they are written, or kept, at once."""
        with self._lock:
            self._pending.setdefault(run_id, Pending()).extend(values)
            self._start_locked()
        if self.closed:
            self._finish()

    def start(self) -> None:
        """Start the background thread now (it first writes the journal earlier processes
        left): for a store whose own writes never go through the buffer (strict mode)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._loop, name="cloudtrack-flush",
                                            daemon=True)
            self._thread.start()
            _exit_hook_in_child_process()

    def pending_params(self, run_id: str) -> dict[str, str]:
        """The params buffered for ``run_id`` (or being written now), not stored yet."""
        with self._lock:
            out: dict[str, str] = {}
            for held in (self._inflight, self._pending):
                p = held.get(run_id)
                if p is not None:
                    out.update(p.params)
            return out

    def pending_runs(self) -> list[str]:
        """The runs with buffered data."""
        with self._lock:
            return list(self._pending)

    def _take(self, run_id: str) -> Pending | None:
        with self._lock:
            p = self._pending.pop(run_id, None)
            if p:
                self._inflight[run_id] = p
            return p

    def _put_back(self, run_id: str, p: Pending) -> None:
        with self._lock:
            newer = self._pending.get(run_id)
            if newer is not None:
                p.extend(newer)
            self._pending[run_id] = p

    def _done(self, run_id: str) -> None:
        with self._lock:
            self._inflight.pop(run_id, None)

    # -- writing -----------------------------------------------------------------------------

    def flush(self, run_id: str | None = None, *, raise_errors: bool = True) -> None:
        """Write the buffered data of ``run_id`` (of every run when None) now."""
        self._pass([run_id] if run_id is not None else None, raise_errors=raise_errors)

    def flush_runs(self, run_ids: Iterable[str]) -> None:
        """Write the buffered data of ``run_ids`` now (raises the first error)."""
        self._pass(list(run_ids), raise_errors=True)

    def _down(self, since: float) -> BaseException | None:
        """The failure that concerns the whole store, if one happened after ``since`` (while
        the caller waited for a run's lock: that write was its attempt) or at all once the
        store is closing (exit waits for a store that is down at most once)."""
        error = self.failing
        if error is None or not isinstance(error, STORE_WIDE):
            return None
        return error if self._stopped or self._failed_at >= since else None

    def _pass(self, run_ids: list[str] | None, *, raise_errors: bool,
              stop_on_outage: bool = False) -> None:
        apply = self._apply()
        if apply is None:
            return
        started = time.monotonic()
        with self._lock:
            # A run a background pass is writing now counts too: waiting for its lock waits
            # for that write, so flush() returns only once what was logged before it landed.
            rids = run_ids if run_ids is not None else \
                list(dict.fromkeys([*self._inflight, *self._pending]))
        for rid in rids:
            with self._run_lock(rid):
                down = self._down(started)
                if down is not None:
                    if raise_errors:
                        raise down
                    return
                p = self._take(rid)
                if not p:
                    continue
                try:
                    apply(rid, p)
                except Exception as e:
                    refused = isinstance(e, MlflowException) and e.error_code in REFUSED
                    if refused:
                        log.error("cloudtrack dropped %d buffered values of run %s: %s",
                                  len(p), rid, _brief(e))
                    else:
                        # Not a verdict on the data (the network, a damaged head): keep it.
                        self._put_back(rid, p)
                        self._failed(rid, e, quiet=raise_errors)
                    if raise_errors:
                        raise
                    if (stop_on_outage or self._stopped) and isinstance(e, STORE_WIDE):
                        return
                else:
                    self._succeeded()
                finally:
                    self._done(rid)

    def _failed(self, run_id: str, error: BaseException, *, quiet: bool) -> None:
        """Remember a failed write; say so once (the caller of a raising flush sees the error
        itself)."""
        first = self.failing is None
        self.failing = error
        self._failed_at = time.monotonic()
        self._failures += 1
        if first and not quiet and not self._stopped:  # at exit, the journal's line says it
            log.warning("cloudtrack: writing buffered data of run %s to %s failed (%s); it is "
                        "kept and written again every %gs", run_id, self.uri, _brief(error),
                        self.interval)

    def _succeeded(self) -> None:
        if self.failing is not None:
            log.info("cloudtrack: buffered data is written to %s again (after %d failed "
                     "attempts)", self.uri, self._failures)
        self.failing = None
        self._failures = 0

    def keep_failed(self, run_id: str, values: Pending, error: BaseException) -> None:
        """A write made outside the buffer (``update_run_info``) failed with ``error``, which
        is not a verdict on it: buffer it, to be written later or kept at exit."""
        self._failed(run_id, error, quiet=True)
        self.add(run_id, values)

    def _loop(self) -> None:
        _background.flusher = self
        if self._keeper is not None:
            try:
                self._keeper.replay(lambda: self._stopped)
            except Exception as e:  # the journal stays; the next process tries again
                log.warning("cloudtrack: could not write the journal of %s yet: %s", self.uri,
                            _brief(e))
            try:
                self._keeper.say_elsewhere()
            except Exception:  # a word about it never stops logging
                log.debug("cloudtrack: looking for other journals of %s", self.uri,
                          exc_info=True)
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped:
                break  # close() makes the last pass itself, where somebody waits for it
            self._pass(None, raise_errors=False)

    def _after_fork(self) -> None:
        """In a child made by fork: a flusher of its own, empty (what the parent buffered is
        the parent's to write), with new locks and no thread (threads do not survive a fork;
        the first value logged starts one)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._run_lock.reset()
        self._pending = {}
        self._inflight = {}
        self._thread = None
        self.failing = None
        self._failures = 0

    # -- exit ----------------------------------------------------------------------------------

    def stop(self) -> bool:
        """Start no new background pass, and wait (at most the longest one write takes) for the
        one under way.  False when it is still under way after that."""
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._patience)
            return not thread.is_alive()
        return True

    def close(self) -> None:
        """Stop the background thread, write what is buffered (unless the store is down
        already), and keep what could not be written in the journal (and say where), or report
        it lost when there is no journal."""
        if self.closed:
            return
        self.stop()
        self._pass(None, raise_errors=False, stop_on_outage=True)
        self.closed = True
        self._keep_leftovers()

    def _finish(self) -> None:
        """Values that came after close(): written now, or kept."""
        self._pass(None, raise_errors=False, stop_on_outage=True)
        self._keep_leftovers()

    def _keep_leftovers(self) -> None:
        with self._lock:
            leftover = dict(self._pending)
            for rid, p in self._inflight.items():  # a pass that never ended
                leftover.setdefault(rid, Pending()).extend(p)
            self._pending.clear()
            self._inflight.clear()
        if not leftover:
            return
        count = sum(len(p) for p in leftover.values())
        cause = _brief(self.failing) if self.failing is not None else \
            "the store was closed before they were written"
        if self._keeper is None:
            log.error("cloudtrack could not write %d buffered values of %d run(s) to %s at "
                      "exit (%s); they are lost", count, len(leftover), self.uri, cause)
            return
        try:
            where = self._keeper.keep(leftover, cause)
        except Exception as e:
            log.error("cloudtrack could not write %d buffered values of %d run(s) to %s at "
                      "exit (%s), nor keep them in its journal (%s); they are lost", count,
                      len(leftover), self.uri, cause, _brief(e))
            return
        uri = getattr(self._keeper, "uri", None) or self.uri
        endpoint = (getattr(self._keeper, "identity", None) or {}).get("endpoint")
        through = f" through {endpoint}" if endpoint else ""
        log.warning("cloudtrack could not write %d buffered values of %d run(s) to %s at exit "
                    "(%s). They are kept in %s and will be written by the next process that "
                    "logs to this store%s, or now with: cloudtrack flush %s", count,
                    len(leftover), self.uri, cause, where, through, uri)


_FLUSHERS: weakref.WeakSet[Flusher] = weakref.WeakSet()


class Releasable(Protocol):
    def _release(self) -> None: ...


_RELEASE: weakref.WeakSet[Releasable] = weakref.WeakSet()


def release_at_exit(obj: Releasable) -> None:
    """Call ``obj._release()`` at exit, once every buffer is written: it lets go of what it
    only kept to read faster (see :func:`_release_all`)."""
    _RELEASE.add(obj)


def _release_all() -> None:
    """Drop the records stores keep to read faster, before the interpreter tears down.

    The interpreter's last garbage collections walk every container still alive, and a
    process that searched 100,000 runs holds about 1.7 million of them (each head's dicts
    and metric lists): its exit took 26 s after the search had ended, against 0.5 s to free
    them here, where no collection walks them first."""
    for obj in list(_RELEASE):
        try:
            obj._release()
        except Exception as e:  # only an exit made slower
            log.debug("cloudtrack: could not release %r at exit: %r", obj, e)


#: ``flusher``: set in a flusher's background thread.
_background = threading.local()


class _QuietBackground(logging.Filter):
    """Retry lines of a background write go to DEBUG while nobody waits on it (the flusher
    says once that writing fails, and once that it works again); at exit, somebody waits."""

    def filter(self, record: logging.LogRecord) -> bool:
        flusher = getattr(_background, "flusher", None)
        if flusher is not None and not flusher._stopped and record.levelno == logging.WARNING:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("cloudtrack.retry").addFilter(_QuietBackground())


def _end_active_run() -> None:
    """End MLflow's active run the way MLflow's own exit hook would, before the buffers are
    written: its status then rides with the run's last data, and a store that is down is
    waited for once, not twice (MLflow's hook, registered before ours, would run after it)."""
    import sys

    fluent = sys.modules.get("mlflow.tracking.fluent")
    end = getattr(fluent, "_safe_end_run", None)
    if end is not None:
        end()


@atexit.register
def _flush_all_at_exit() -> None:
    try:
        _flush_all()
    finally:  # whatever the flush met, the exit no longer walks what the stores read
        _release_all()


def _flush_all() -> None:
    flushers = list(_FLUSHERS)
    if not flushers:
        return
    started = time.monotonic()
    # The background passes end first (a write under way holds its run's lock), so that
    # ending the run below neither waits for them nor races them.
    stopped = all([f.stop() for f in flushers])
    if stopped:
        _end_active_run()
    else:
        log.warning("cloudtrack: a background write still runs at exit; the active run is not "
                    "ended (its data is kept in the journal)")
    for f in flushers:
        f.close()
    # After the data: the runs ended just now are the ones the next reader looks for.
    pagewriter.close_all()
    log.debug("cloudtrack: buffers closed in %.1fs at exit", time.monotonic() - started)


def _after_fork_in_child() -> None:
    for f in list(_FLUSHERS):
        f._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_hooked_pid: int | None = None


def _exit_hook_in_child_process() -> None:
    """Worker processes of ``multiprocessing`` (fork and forkserver) end with ``os._exit``:
    the interpreter's exit hooks never run there, only multiprocessing's own finalizers.  So
    in such a process the buffers are also closed as one of those, once per process."""
    global _hooked_pid
    import multiprocessing
    import multiprocessing.util

    if _hooked_pid == os.getpid() or multiprocessing.parent_process() is None:
        return
    _hooked_pid = os.getpid()
    multiprocessing.util.Finalize(None, _flush_all_at_exit, exitpriority=100)
