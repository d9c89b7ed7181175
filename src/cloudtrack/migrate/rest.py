"""Every request a migration sends an MLflow server (``http(s)://``, source or destination):
at most :data:`SERVER_REQUESTS` in flight per server, and the answer of a server whose database
connection pool ran dry retried.

An MLflow server on a SQL store serves each request with sessions of SQLAlchemy's connection
pool (5 connections and 10 more by default), and some handlers hold one session while they
open another: ``create_run`` reads its experiment inside its own session, ``log_batch`` opens
one per kind of entry inside its own — and, for the run name's tag, two more.  Requests at once
can so take every connection while each waits for one more; after the pool's timeout (30 s) the
server answers ``BAD_REQUEST: (sqlalchemy.exc.TimeoutError) QueuePool limit of size 5 overflow
10 reached``.  A migration therefore keeps at most :data:`SERVER_REQUESTS` requests in flight
per server, however many workers and readers it runs, and sends none that nests more than two
sessions (:mod:`~cloudtrack.migrate.dest_server` gives the run name to ``update_run_info``, not
to ``log_batch``): its own requests leave a pool of :data:`SERVER_REQUESTS` + 1 connections or
more never dry.

Other clients of the server may still exhaust its pool.  That answer, whatever its error code,
is retried with backoff: by :class:`GatedStore` for requests that may be sent twice; requests
that create something (a run, a logged model, a version …) are retried by their caller through
:meth:`ServerRequests.retried`, which first looks for what the failed attempt may have left.
The time the server took to answer is not waiting (it answered); the pauses between attempts
stay within ``CLOUDTRACK_RETRY_DEADLINE``, and the attempts within ``CLOUDTRACK_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mlflow.exceptions import MlflowException

from cloudtrack.config.common import common_settings
from cloudtrack.errors import CloudtrackError
from cloudtrack.retry import RetryPolicy

log = logging.getLogger("cloudtrack.migrate")

T = TypeVar("T")

#: Requests in flight per MLflow server, whatever the number of workers: below MLflow's
#: default pool of 5 + 10 connections, with room for the server's other clients.
SERVER_REQUESTS = 8

#: What an MLflow server answers when no connection of its pool came within the pool's timeout.
_POOL_EXHAUSTED = re.compile(r"QueuePool limit|sqlalchemy\.exc\.TimeoutError")
#: Store methods answered without a request.
_LOCAL = frozenset({"get_host_creds"})
#: Store methods whose request, sent twice, may leave two of something (run, model, version,
#: model input or output, a logged model's param) or fail the second time.
_NOT_REPEATABLE = frozenset({"log_inputs", "log_outputs", "log_logged_model_params",
                             "record_logged_model"})

_gates: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_gates_lock = threading.Lock()


class ServerBusyError(CloudtrackError):
    """An MLflow server kept answering that its database connection pool is exhausted."""


def pool_exhausted(error: BaseException) -> bool:
    """Whether ``error`` is an MLflow server's answer that its connection pool ran dry."""
    if not isinstance(error, MlflowException):
        return False
    return bool(_POOL_EXHAUSTED.search(str(error.message)))


def _server_key(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port or ''}" \
        f"{parts.path.rstrip('/')}"


def _gate(uri: str, limit: int) -> threading.BoundedSemaphore:
    """The one gate of ``limit`` slots of the server at ``uri``, shared by every endpoint that
    reaches it."""
    key = (_server_key(uri), limit)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = threading.BoundedSemaphore(limit)
        return gate


def _policy() -> RetryPolicy:
    settings = {s.name: s.value for s in common_settings(os.environ)}
    return RetryPolicy(attempts=int(settings["max_attempts"]),  # type: ignore[arg-type]
                       base_delay=0.5, max_delay=5.0,
                       deadline=float(settings["retry_deadline"]))  # type: ignore[arg-type]


class ServerRequests:
    """The requests of a migration to one MLflow server: a slot of the server's gate for each,
    and the pool-exhaustion answer retried."""

    def __init__(self, uri: str, shown: str, limit: int | None = None) -> None:
        self.shown = shown
        self.limit = SERVER_REQUESTS if limit is None else limit
        if self.limit < 1:
            raise ValueError(f"requests in flight per server must be 1 or more, not {limit}")
        self._gate = _gate(uri, self.limit)
        self._policy = _policy()
        self._held = threading.local()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One request's place among the :attr:`limit` in flight (a thread that holds one
        already keeps it)."""
        if getattr(self._held, "slot", False):
            yield
            return
        with self._gate:
            self._held.slot = True
            try:
                yield
            finally:
                self._held.slot = False

    def one(self, what: str, request: Callable[[], T]) -> T:
        """``request`` — one request that may be sent twice — in a slot, sent again while the
        server answers that its pool is exhausted."""
        def attempt(_: int) -> T:
            with self.slot():
                return request()

        return self.retried(what, attempt)

    def retried(self, what: str, attempt: Callable[[int], T]) -> T:
        """``attempt(n)`` (``n`` from 0) until it returns, again after a pause each time the
        server answers that its pool is exhausted.  A retry (``n`` > 0) of something that
        creates must first look for what the failed attempt left.  Once the attempts or the
        deadline are spent, :class:`ServerBusyError` names ``what`` and the server."""
        started = time.monotonic()
        paused = 0.0
        n = 0
        while True:
            try:
                return attempt(n)
            except MlflowException as e:
                if not pool_exhausted(e):
                    raise
                error = e
            n += 1
            delay = self._policy.delay(n)
            why = self._policy.stop(n, paused, delay)
            if why is not None:
                raise ServerBusyError(
                    f"{what} on {self.shown} failed after {n} attempt{'s' if n != 1 else ''} "
                    f"in {time.monotonic() - started:.1f}s{f' ({why})' if why else ''}: the "
                    f"server's database connection pool is exhausted ({error.message}); other "
                    "clients may hold its connections: migrate again later (what is done stays "
                    "done), or give the server a larger pool (MLFLOW_SQLALCHEMYSTORE_POOL_SIZE, "
                    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW)") from error
            log.warning("%s on %s: the server's connection pool is exhausted (attempt %d of %d); "
                        "retrying in %.1fs", what, self.shown, n, self._policy.attempts, delay)
            time.sleep(delay)
            paused += delay


class GatedStore:
    """An MLflow REST store (tracking or registry) whose every call waits for a slot of its
    server; calls that may be sent twice are sent again while the server's pool is exhausted,
    the others (``create_…``, :data:`_NOT_REPEATABLE`) are left to their caller to retry."""

    def __init__(self, store: Any, requests: ServerRequests) -> None:
        self._store = store
        self._requests = requests

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or name in _LOCAL or not callable(attr):
            return attr
        requests = self._requests
        if name.startswith("create_") or name in _NOT_REPEATABLE:
            @functools.wraps(attr)
            def once(*args: Any, **kwargs: Any) -> Any:
                with requests.slot():
                    return attr(*args, **kwargs)

            call = once
        else:
            what = name

            @functools.wraps(attr)
            def repeatable(*args: Any, **kwargs: Any) -> Any:
                shown = f"{what}({args[0]!r})" if args and isinstance(args[0], str) else what
                return requests.one(shown, lambda: attr(*args, **kwargs))

            call = repeatable
        # Kept: the next call of the same method costs no lookup.
        self.__dict__[name] = call
        return call
