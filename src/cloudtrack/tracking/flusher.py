"""The write buffer of the default (non-strict) mode: logged values wait per run and are
written in the background about once a second, on demand (a read of the run, ``end_run``) and
at interpreter exit.

The flusher knows nothing of the store: it is given the function that writes one run's
pending data (``apply``) and the per-run locks that keep one writer's batches in order.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException

log = logging.getLogger("cloudtrack.tracking")

FLUSH_INTERVAL = 1.0

#: MLflow error codes that are a verdict on the buffered data itself (a param changed, the run
#: was deleted): it can never be written, so it is dropped rather than retried forever.
REFUSED = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


class Pending:
    """One run's values not written yet."""

    __slots__ = ("metrics", "params", "tags")

    def __init__(self, metrics: list[list[Any]] | None = None,
                 params: dict[str, str] | None = None,
                 tags: dict[str, str | None] | None = None) -> None:
        self.metrics: list[list[Any]] = metrics if metrics is not None else []
        self.params: dict[str, str] = params if params is not None else {}
        self.tags: dict[str, str | None] = tags if tags is not None else {}

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags)

    def __len__(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)

    def extend(self, other: Pending) -> None:
        """Append ``other``, which was logged after these values."""
        self.metrics.extend(other.metrics)
        self.params.update(other.params)
        self.tags.update(other.tags)


class RunLocks:
    """One lock per run: one write of a run's data at a time, so one writer's batches land in
    the order they were logged (the flusher's and a strict call's alike)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, run_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(run_id, threading.Lock())


class Flusher:
    """Holds logged data per run and writes it with ``apply``, in the background, once per
    ``interval``.

    ``apply(run_id, pending)`` must write the data durably or raise.  When it raises an
    MlflowException whose code is in :data:`REFUSED`, the data is dropped; on any other error
    it is kept and retried on the next flush.  A bound method is held weakly: the flusher does
    not keep its store alive.
    """

    def __init__(self, apply: Callable[[str, Pending], None], run_lock: RunLocks,
                 interval: float) -> None:
        self._apply: Callable[[], Callable[[str, Pending], None] | None] = (
            weakref.WeakMethod(apply) if inspect.ismethod(apply) else lambda: apply)
        self._run_lock = run_lock
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        _FLUSHERS.add(self)

    def add(self, run_id: str, values: Pending) -> None:
        """Buffer ``values`` for ``run_id``; the background thread starts on first use."""
        with self._lock:
            self._pending.setdefault(run_id, Pending()).extend(values)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cloudtrack-flush",
                                                daemon=True)
                self._thread.start()

    def pending_params(self, run_id: str) -> dict[str, str]:
        """The params buffered for ``run_id``, not written yet."""
        with self._lock:
            p = self._pending.get(run_id)
            return dict(p.params) if p is not None else {}

    def _take(self, run_id: str) -> Pending | None:
        with self._lock:
            return self._pending.pop(run_id, None)

    def _put_back(self, run_id: str, p: Pending) -> None:
        with self._lock:
            newer = self._pending.get(run_id)
            if newer is not None:
                p.extend(newer)
            self._pending[run_id] = p

    def flush(self, run_id: str | None = None, *, raise_errors: bool = True) -> None:
        """Write the buffered data of ``run_id`` (of every run when None) now."""
        apply = self._apply()
        if apply is None:
            return
        with self._lock:
            run_ids = [run_id] if run_id is not None else list(self._pending)
        for rid in run_ids:
            with self._run_lock(rid):
                p = self._take(rid)
                if not p:
                    continue
                try:
                    apply(rid, p)
                except Exception as e:
                    refused = isinstance(e, MlflowException) and e.error_code in REFUSED
                    if not refused:
                        # Not a verdict on the data (a damaged head, a network error): keep it.
                        self._put_back(rid, p)
                    if raise_errors:
                        raise
                    if refused:
                        log.exception("dropping buffered data for run %s", rid)
                    else:
                        log.warning("flushing run %s failed; will retry", rid, exc_info=True)

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush(raise_errors=False)

    def close(self) -> None:
        """Stop the background thread after a last flush; report what could not be written."""
        self._stopped = True
        self._wake.set()
        self.flush(raise_errors=False)
        with self._lock:
            lost = sum(len(p) for p in self._pending.values())
        if lost:
            log.error("cloudtrack could not write %d buffered values at exit", lost)


_FLUSHERS: weakref.WeakSet[Flusher] = weakref.WeakSet()


@atexit.register
def _flush_all_at_exit() -> None:
    for f in list(_FLUSHERS):
        f.close()
