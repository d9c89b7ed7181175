"""A fault-injecting HTTP/1.1 proxy for chaos tests: the service answers, or seems not to.

``FaultProxy(target_host, target_port, rate=0.05, seed=1)`` listens on ``127.0.0.1:<free
port>`` and forwards HTTP/1.1 to the target, request by request.  Each request that passes the
filters (``methods``, ``path_regex``) draws from one ``random.Random(seed)``; with probability
``rate`` it gets a fault, its kind drawn from the weighted mix ``kinds``.  For one seed and one
order of requests the faults are always the same (requests on one connection arrive in order;
across concurrent connections, in the order their heads reach the proxy).

Command: ``python -m backends.proxy.faults HOST:PORT --rate 0.05 --seed 1 [--kinds
503=1,lost_answer_503=2] [--methods PUT,POST] [--path-regex RE] [--hold-seconds S]`` runs one
until Ctrl-C / SIGTERM and prints its URL and control URL.  Tests use the ``faulty`` fixture
(``tests/fixtures/faults.py``), which puts a proxy in front of a running storage service and
hands over the environment that routes a client through it (:func:`routed_env`).

Fault kinds (:data:`KINDS`)
---------------------------
Not forwarded (the service never sees the request):

``503`` / ``500`` / ``429``
    The request body is read and discarded, then the proxy answers that status itself, a short
    ``text/plain`` body and ``X-Injected-Fault: <kind>`` (the service's own errors are XML or
    JSON; an injected one reads like a load balancer's); 503 and 429 carry
    ``Retry-After: <retry_after>`` (default 1 s; None leaves it out).  The connection stays
    open (keep-alive) unless the request said ``Connection: close`` — or it asked
    ``Expect: 100-continue``: then the answer comes instead of ``100 Continue``, with
    ``Connection: close``, and the connection is closed, body unsent.
``reset_before``
    Right after the request head arrives, the client connection is reset (TCP RST,
    ``SO_LINGER`` 0): the client sees ``ECONNRESET`` (or ``EPIPE`` while sending its body).
``timeout_before`` (not in the default mix)
    Nothing is forwarded and nothing answered for ``hold_seconds``, then the connection is
    closed: an endpoint that accepts connections and never answers.

Forwarded (the service did the work; the client thinks it failed):

``lost_answer_503``
    Forwarded whole (``100 Continue`` relayed); the service's answer is read to its end and
    dropped, and the client gets an injected 503 as above instead.  The write landed.
``lost_answer_reset``
    Forwarded whole; once the service's answer head has arrived (the service has done the
    work), the client connection is reset (RST).  The write landed.
``timeout``
    Forwarded whole; the service's answer head arrives and is held: nothing reaches the client
    for ``hold_seconds`` (default 75 s, past cloudtrack's default 10 s read timeout; set it
    above the client's ``CLOUDTRACK_READ_TIMEOUT``), then the connection is closed (FIN).  The
    hold ends early when the client closes first.  The write landed.
``truncated``
    Forwarded whole; the answer is cut and the connection closed (FIN): a body with
    ``Content-Length: N`` stops after ``N // 2`` bytes, a chunked body inside its first chunk
    (half its data).  An answer without a body (HEAD, 204, 304, ``Content-Length: 0``, an empty
    chunked body) or a close-delimited one (whose end cannot be told from a cut) is cut inside
    its head instead, as ``truncated_head`` does.  The write landed.
``truncated_head`` (not in the default mix)
    Forwarded whole; only the status line reaches the client, then FIN: the answer is cut off
    where its headers begin.  Python's ``http.client`` takes that EOF for the end of the head,
    so the client gets a "complete" answer with no headers at all — no ``ETag``, no
    ``Content-Length`` — and an empty body.
``truncated_in_head`` (not in the default mix)
    Forwarded whole; the head is cut inside a header line, then FIN: halfway through the value
    of the header ``cut_header`` names (``etag``, ``last-modified`` …: the headers before it
    arrive whole, the ones after it never), or halfway through the header bytes when
    ``cut_header`` is None or the answer has no such header.  Which headers survive depends on
    each service's order (moto sends ``ETag`` fifth of ten), so name the one to cut.

HTTP framing
------------
Request heads are read up to the blank line (1 MiB at most); bodies by
``Transfer-Encoding: chunked`` (which wins over ``Content-Length``, as RFC 9112 says) or
``Content-Length``, and no body without either.  Answers: 1xx interim answers (``100
Continue``) are relayed and the final one awaited; HEAD, 1xx, 204 and 304 have no body; then
chunked, ``Content-Length``, or close-delimited.  The request body is sent by its own task
while the answer is awaited, so ``Expect: 100-continue`` works either way: the body flows when
the client sends it (after the relayed ``100 Continue``, or after its own wait), and a final
answer that comes first is relayed and the connection closed, the body unsent.  Connections
are kept alive as HTTP/1.1 and 1.0 say (``Connection: close`` / ``keep-alive``), each client
connection with its own upstream connection, reopened when the service has closed it.  Bodies
and chunks are streamed in pieces of at most 1 MiB with back-pressure: memory stays bounded.
Not supported: ``CONNECT`` and protocol upgrades (``101``) — the connection is closed.

TLS: plain HTTP by default.  ``tls`` (a server-side ``ssl.SSLContext``) makes the proxy speak
HTTPS to clients, ``upstream_tls`` (a client-side one) to the target — enough to stand in
front of ``azure-oauth`` with that service's own certificate (:func:`service_proxy` does it).

Counters and control
--------------------
``stats()``: ``connections``, ``requests`` (request heads read), ``forwarded`` (sent on to the
service), ``faulted`` and ``faults`` by kind (counted when the fault is chosen),
``upstream_refused`` (the service could not be connected: not forwarded, the client connection
is reset) and ``upstream_dropped`` (forwarded, but the service closed without answering: the
client connection is closed), ``interim`` (1xx answers relayed: ``100 Continue``).  Once no
request is in flight, ``requests == forwarded +
upstream_refused +`` the faults of the kinds not forwarded.  ``events()`` lists the faults in
order (request number, method, target, kind).
``reset()`` zeroes both; ``counting()`` measures a block; ``configure(rate=…, kinds=…, …)``
changes the settings at runtime (``max_faults=n``: at most n more faults, then none).
Like the latency proxy, each proxy answers a tiny HTTP control endpoint on another loopback
port (``control_url``): ``GET /stats``, ``POST /reset``, ``GET /events``, ``GET /config`` and
``POST /configure`` with a JSON object of settings (``{"rate": 0}``) — :func:`remote_stats`,
:func:`remote_reset`, :func:`remote_events` and :func:`remote_configure` call them.

``latency_ms`` (optional) delays every request by that much before it is answered or
forwarded, like one round trip of :class:`~backends.proxy.LatencyProxy`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from backends.proxy.server import CHUNK, LoopServer

#: Streaming piece size and the longest head or chunk-size line accepted.

#: Every fault kind, in a fixed order (the order weights are laid out in for the draw).
KINDS = ("503", "500", "429", "reset_before", "lost_answer_503", "lost_answer_reset",
         "timeout", "truncated", "timeout_before", "truncated_head", "truncated_in_head")

#: The mix when ``kinds`` is not given: every kind of the issue, equally likely.
DEFAULT_KINDS: Mapping[str, float] = dict.fromkeys(
    ("503", "500", "429", "reset_before", "lost_answer_503", "lost_answer_reset", "timeout",
     "truncated"), 1.0)

#: Kinds whose request reaches the service.
FORWARDING = frozenset({"lost_answer_503", "lost_answer_reset", "timeout", "truncated",
                        "truncated_head", "truncated_in_head"})

#: The kinds answered with a status of their own, and that status's reason phrase.
_STATUS = {"503": "Service Unavailable", "500": "Internal Server Error",
           "429": "Too Many Requests"}

#: Faults remembered by ``events()``; older ones are dropped.
MAX_EVENTS = 10_000


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


# -- settings, counters, events -----------------------------------------------------------------


@dataclass(frozen=True)
class FaultConfig:
    """What the proxy injects; replaced whole by :meth:`FaultProxy.configure`."""

    rate: float = 0.0
    #: (kind, weight) in :data:`KINDS` order, weights > 0.
    kinds: tuple[tuple[str, float], ...] = tuple(DEFAULT_KINDS.items())
    #: Only these methods get faults (upper case); None: every method.
    methods: frozenset[str] | None = None
    #: Only request targets (path and query) this regex finds something in; None: all.
    path_regex: str | None = None
    hold_seconds: float = 75.0
    #: ``Retry-After`` seconds on injected 503 and 429 answers; None: no header.
    retry_after: float | None = 1.0
    latency_ms: float = 0.0
    #: The header ``truncated_in_head`` cuts inside (lower case); None: the middle of the head.
    cut_header: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = dict(self.kinds)
        d["methods"] = sorted(self.methods) if self.methods is not None else None
        return d


def _kinds(kinds: Mapping[str, float] | Iterable[str]) -> tuple[tuple[str, float], ...]:
    weights = dict(kinds) if isinstance(kinds, Mapping) else dict.fromkeys(kinds, 1.0)
    unknown = sorted(set(weights) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    out = []
    for kind in KINDS:
        weight = float(weights.get(kind, 0))
        if weight < 0:
            raise ValueError(f"fault kind {kind!r} has a negative weight {weight}")
        if weight > 0:
            out.append((kind, weight))
    if not out:
        raise ValueError("no fault kind has a positive weight")
    return tuple(out)


def _validated(config: FaultConfig) -> FaultConfig:
    if not 0.0 <= config.rate <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, not {config.rate}")
    if config.hold_seconds < 0 or config.latency_ms < 0:
        raise ValueError("hold_seconds and latency_ms must not be negative")
    if config.retry_after is not None and config.retry_after < 0:
        raise ValueError("retry_after must not be negative")
    if config.path_regex is not None:
        re.compile(config.path_regex)
    return config


@dataclass
class FaultStats:
    connections: int = 0
    requests: int = 0
    forwarded: int = 0
    faulted: int = 0
    upstream_refused: int = 0
    upstream_dropped: int = 0
    interim: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faults": dict(self.faults)}


@dataclass(frozen=True)
class FaultEvent:
    """One injected fault: the request's number (1-based, counted since the proxy started,
    across connections), method, target (path and query), and the fault's kind."""

    request: int
    method: str
    target: str
    kind: str


# -- HTTP/1.1 framing ---------------------------------------------------------------------------


class HttpError(Exception):
    """The bytes on a connection are not HTTP/1.1 this proxy can frame; the connection ends."""


@dataclass
class Head:
    """A request or response head as it came: the raw bytes, forwarded unchanged, and parsed."""

    raw: bytes
    start: tuple[str, str, str]
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> Head:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2:
            raise HttpError(f"malformed start line {lines[0][:80]!r}")
        start = (parts[0], parts[1], parts[2] if len(parts) > 2 else "")
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"malformed header line {line[:80]!r}")
            headers.append((name.strip().lower(), value.strip()))
        return cls(raw, start, headers)

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def tokens(self, name: str) -> list[str]:
        """Comma-separated tokens of every ``name`` header, lower case."""
        return [t.strip().lower() for v in self.values(name) for t in v.split(",") if t.strip()]

    def persistent(self, version: str) -> bool:
        """Whether this message lets its connection carry the next one."""
        connection = self.tokens("connection")
        if "close" in connection:
            return False
        return version != "HTTP/1.0" or "keep-alive" in connection

    def framing(self) -> tuple[str, int]:
        """``("chunked", 0)``, ``("length", n)`` or ``("close", 0)`` (read until EOF)."""
        coding = self.tokens("transfer-encoding")
        if coding:
            return ("chunked", 0) if coding[-1] == "chunked" else ("close", 0)
        lengths = {part.strip() for value in self.values("content-length")
                   for part in value.split(",")}
        if not lengths:
            return "close", 0
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise HttpError(f"bad Content-Length {sorted(lengths)}")
        return "length", int(next(iter(lengths)))


def request_framing(head: Head) -> tuple[str, int]:
    kind, n = head.framing()
    if kind == "close":
        if head.values("transfer-encoding"):
            raise HttpError("a request body must end with chunked transfer coding")
        return "length", 0  # neither header: no body
    return kind, n


def response_framing(head: Head, method: str) -> tuple[str, int]:
    status = int(head.start[1])
    if method == "HEAD" or status < 200 or status in (204, 304):
        return "length", 0
    return head.framing()


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next head up to and including its blank line; None at a clean EOF before it."""
    while True:
        try:
            data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial.strip(b"\r\n"):
                return None
            raise HttpError("the connection ended inside a message head") from None
        except asyncio.LimitOverrunError:
            raise HttpError("a message head longer than 1 MiB") from None
        stripped = data.lstrip(b"\r\n")  # stray empty lines before a request are allowed
        if stripped:
            return stripped


class _Sent:
    """How far a request body got: ``complete`` once its last byte was handed to the service."""

    __slots__ = ("bytes", "complete")

    def __init__(self) -> None:
        self.bytes = 0
        self.complete = False


async def _copy_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None,
                       n: int, sent: _Sent | None = None, *, last: bool = True) -> None:
    """Copy exactly ``n`` bytes (to nowhere when ``writer`` is None)."""
    while n > 0:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise HttpError(f"the connection ended {n} bytes before the end of a body")
        n -= len(data)
        if writer is not None:
            writer.write(data)
            if sent is not None:
                sent.bytes += len(data)
                sent.complete = last and n == 0
            await writer.drain()


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None,
                        sent: _Sent | None = None) -> None:
    """Copy a chunked body as it is, chunk extensions and trailers included."""
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise HttpError("the connection ended inside a chunked body") from None
        except asyncio.LimitOverrunError:
            raise HttpError("a chunk-size line longer than 1 MiB") from None
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(f"bad chunk-size line {line[:40]!r}") from None
        if writer is not None:
            writer.write(line)
        if size:
            await _copy_length(reader, writer, size + 2, sent, last=False)  # data + CRLF
            continue
        while True:  # trailer lines, then the final empty line
            try:
                trailer = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                raise HttpError("the connection ended inside chunked trailers") from None
            if writer is not None:
                writer.write(trailer)
            if trailer == b"\r\n":
                break
        if writer is not None:
            if sent is not None:
                sent.complete = True
            await writer.drain()
        return


async def _copy_until_eof(reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter | None) -> None:
    while data := await reader.read(CHUNK):
        if writer is not None:
            writer.write(data)
            await writer.drain()


async def copy_body(framing: tuple[str, int], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter | None, sent: _Sent | None = None) -> None:
    kind, n = framing
    if kind == "chunked":
        await _copy_chunked(reader, writer, sent)
    elif kind == "length":
        if n == 0 and sent is not None:
            sent.complete = True
        await _copy_length(reader, writer, n, sent)
    else:
        await _copy_until_eof(reader, writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """End the connection with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after the client has read what was sent: FIN, then read (and drop) what the client
    still sends until it closes too (2 s at most).  Closing with unread bytes in the receive
    buffer would send an RST, and the client could lose the answer it was about to read."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
            await asyncio.wait_for(_copy_until_eof(reader, None), 2)
    except (OSError, asyncio.TimeoutError, RuntimeError):
        pass
    finally:
        writer.close()


def _cut_head(raw: bytes) -> bytes:
    """A head cut off where its headers begin: the status line alone."""
    return raw.split(b"\r\n", 1)[0] + b"\r\n"


def _cut_in_head(raw: bytes, header: str | None) -> bytes:
    """A head cut inside a header line: halfway through the value of ``header``, or halfway
    through the header bytes."""
    status, _, lines = raw.partition(b"\r\n")
    lines = lines.rstrip(b"\r\n")
    found = re.search(rb"(?im)^" + re.escape(header.encode("latin-1")) + rb"[ \t]*:[ \t]*",
                      lines) if header else None
    if found is not None:
        end = lines.find(b"\r\n", found.end())
        end = len(lines) if end < 0 else end
        cut = found.end() + (end - found.end()) // 2
    else:
        cut = len(lines) // 2
    return status + b"\r\n" + lines[:cut]


# -- the proxy ----------------------------------------------------------------------------------


class _Closed(Exception):
    """The exchange ended the connection (a fault, or a message that forbids reuse)."""


class _Conn:
    """One client connection and the upstream connection that serves it."""

    __slots__ = ("client_r", "client_w", "server_r", "server_w")

    def __init__(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.client_r = client_r
        self.client_w = client_w
        self.server_r: asyncio.StreamReader | None = None
        self.server_w: asyncio.StreamWriter | None = None

    def drop_upstream(self) -> None:
        if self.server_w is not None:
            self.server_w.close()
        self.server_r = self.server_w = None


class FaultProxy(LoopServer):
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, injecting faults per
    request (module docstring); runs its own event loop in a daemon thread."""

    thread_prefix = "fault-proxy"

    def __init__(self, target_host: str, target_port: int, *, rate: float = 0.0,
                 seed: int | None = 0, kinds: Mapping[str, float] | Iterable[str] | None = None,
                 methods: Iterable[str] | None = None, path_regex: str | None = None,
                 hold_seconds: float = 75.0, retry_after: float | None = 1.0,
                 max_faults: int | None = None, latency_ms: float = 0.0,
                 cut_header: str | None = None,
                 tls: ssl.SSLContext | None = None, upstream_tls: ssl.SSLContext | None = None,
                 control: bool = True, name: str = "faults") -> None:
        self.target_host = target_host
        self.target_port = int(target_port)
        self._init_server(name, control)
        self.tls = tls
        self.upstream_tls = upstream_tls
        self._config = _validated(FaultConfig(
            rate=float(rate), kinds=_kinds(DEFAULT_KINDS if kinds is None else kinds),
            methods=frozenset(m.upper() for m in methods) if methods is not None else None,
            path_regex=path_regex, hold_seconds=float(hold_seconds),
            retry_after=None if retry_after is None else float(retry_after),
            latency_ms=float(latency_ms), cut_header=cut_header.lower() if cut_header else None))
        self._regex = re.compile(path_regex) if path_regex is not None else None
        self._budget = max_faults
        self._rng = random.Random(seed)
        self._seq = 0
        self._stats = FaultStats()
        self._events: collections.deque[FaultEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._lock = threading.Lock()

    # -- counters and settings --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.as_dict()

    def events(self) -> list[FaultEvent]:
        """The faults injected since the last reset, oldest first (at most MAX_EVENTS)."""
        with self._lock:
            return list(self._events)

    def reset(self) -> dict[str, Any]:
        """Zero the counters and forget the events; returns the counters as they were.
        The random sequence goes on (``configure(seed=…)`` restarts it)."""
        with self._lock:
            before, self._stats = self._stats, FaultStats()
            self._events.clear()
        return before.as_dict()

    @contextlib.contextmanager
    def counting(self) -> Iterator[FaultStats]:
        """``with proxy.counting() as n: ...`` — ``n`` holds what the block saw."""
        self.reset()
        result = FaultStats()
        try:
            yield result
        finally:
            now = self.stats()
            for key, value in now.items():
                setattr(result, key, value)

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def configure(self, *, rate: float = UNSET, kinds: Mapping[str, float] | Iterable[str] = UNSET,
                  methods: Iterable[str] | None = UNSET, path_regex: str | None = UNSET,
                  hold_seconds: float = UNSET, retry_after: float | None = UNSET,
                  max_faults: int | None = UNSET, latency_ms: float = UNSET,
                  seed: int | None = UNSET, cut_header: str | None = UNSET) -> dict[str, Any]:
        """Change settings at runtime (only those given); returns the settings now in force.

        ``max_faults``: inject at most this many more faults, then forward everything (None: no
        limit).  ``seed`` restarts the random sequence.
        """
        changes: dict[str, Any] = {}
        if rate is not UNSET:
            changes["rate"] = float(rate)
        if kinds is not UNSET:
            changes["kinds"] = _kinds(kinds)
        if methods is not UNSET:
            changes["methods"] = (frozenset(m.upper() for m in methods)
                                  if methods is not None else None)
        if path_regex is not UNSET:
            changes["path_regex"] = path_regex
        if hold_seconds is not UNSET:
            changes["hold_seconds"] = float(hold_seconds)
        if retry_after is not UNSET:
            changes["retry_after"] = None if retry_after is None else float(retry_after)
        if latency_ms is not UNSET:
            changes["latency_ms"] = float(latency_ms)
        if cut_header is not UNSET:
            changes["cut_header"] = cut_header.lower() if cut_header else None
        with self._lock:
            config = _validated(replace(self._config, **changes))
            self._config = config
            self._regex = re.compile(config.path_regex) if config.path_regex else None
            if max_faults is not UNSET:
                self._budget = None if max_faults is None else int(max_faults)
            if seed is not UNSET:
                self._rng = random.Random(seed)
            return self._describe()

    def _describe(self) -> dict[str, Any]:
        return {**self._config.as_dict(), "max_faults": self._budget}

    def _decide(self, method: str, target: str) -> tuple[str | None, FaultConfig]:
        """Count a request and draw its fault (None: forward it untouched)."""
        with self._lock:
            self._seq += 1
            self._stats.requests += 1
            config = self._config
            if config.methods is not None and method.upper() not in config.methods:
                return None, config
            if self._regex is not None and not self._regex.search(target):
                return None, config
            # Two draws per eligible request whatever the outcome: the sequence of kinds does
            # not shift when the rate changes, and a lower rate's faults are a subset of a
            # higher one's for the same seed.
            hit, pick = self._rng.random(), self._rng.random()
            if hit >= config.rate or (self._budget is not None and self._budget <= 0):
                return None, config
            total = sum(weight for _, weight in config.kinds)
            point, kind = pick * total, config.kinds[-1][0]
            for name, weight in config.kinds:
                if point < weight:
                    kind = name
                    break
                point -= weight
            if self._budget is not None:
                self._budget -= 1
            self._stats.faulted += 1
            self._stats.faults[kind] += 1
            self._events.append(FaultEvent(self._seq, method, target, kind))
            return kind, config

    def _count(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                setattr(self._stats, key, getattr(self._stats, key) + value)

    # -- serving a client connection --------------------------------------------------------

    async def _on_client(self, client_r: asyncio.StreamReader,
                         client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(client_r, client_w)
        self._count(connections=1)
        stopping = False
        try:
            while await self._exchange(conn):
                pass
        except _Closed:
            pass
        except (HttpError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ssl.SSLError):
            pass  # a connection that broke or spoke something else just ends
        except asyncio.CancelledError:
            stopping = True  # only stop() cancels; ending quietly keeps asyncio from logging it
        finally:
            conn.drop_upstream()
            if stopping:
                client_w.close()
            elif not client_w.is_closing():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await _lingering_close(client_r, client_w)
            self._tasks.discard(task)

    async def _exchange(self, conn: _Conn) -> bool:
        """Serve one request; True when the connection may carry another."""
        raw = await read_head(conn.client_r)
        if raw is None:
            return False
        req = Head.parse(raw)
        method, target, version = req.start
        if not version.startswith("HTTP/1."):
            raise HttpError(f"not HTTP/1.x: {version[:20]!r}")
        if method == "CONNECT" or "upgrade" in req.tokens("connection"):
            raise HttpError("CONNECT and protocol upgrades are not supported")
        framing = request_framing(req)
        keep = req.persistent(version)
        expects = "100-continue" in req.tokens("expect")
        kind, config = self._decide(method, target)
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)

        if kind in _STATUS:
            if expects:  # answer instead of 100 Continue; the body never comes
                await self._answer(conn, kind, method, config, keep=False)
                raise _Closed
            await copy_body(framing, conn.client_r, None)
            await self._answer(conn, kind, method, config, keep=keep)
            return keep
        if kind == "reset_before":
            _reset(conn.client_w)
            raise _Closed
        if kind == "timeout_before":
            await self._hold(conn, config.hold_seconds)
            raise _Closed
        return await self._forward(conn, req, framing, kind, config, keep=keep)

    async def _forward(self, conn: _Conn, req: Head, framing: tuple[str, int], kind: str | None,
                       config: FaultConfig, *, keep: bool) -> bool:
        method = req.start[0]
        server_r, server_w = await self._upstream(conn)
        server_w.write(req.raw)
        self._count(forwarded=1)
        sent = _Sent()
        sent.complete = framing == ("length", 0)
        send = asyncio.ensure_future(copy_body(framing, conn.client_r, server_w, sent))
        try:
            while True:  # interim answers (100 Continue) go to the client as they come
                raw = await read_head(server_r)
                if raw is None:
                    self._count(upstream_dropped=1)
                    raise HttpError("the service closed the connection without answering")
                resp = Head.parse(raw)
                status = int(resp.start[1])
                if status == 101:
                    raise HttpError("protocol upgrades are not supported")
                if status >= 200:
                    break
                self._count(interim=1)
                conn.client_w.write(resp.raw)
                await conn.client_w.drain()
            if not sent.complete:
                # The service answered before the whole body reached it (a refusal instead of
                # 100 Continue, or an early error): relay that, then end the connection.
                keep = False
                send.cancel()
            else:
                await send  # the last drain; re-raises a failed upload
            resp_framing = response_framing(resp, method)
            keep = keep and resp.persistent(resp.start[0]) and resp_framing[0] != "close"
            if kind is None:
                conn.client_w.write(resp.raw)
                await copy_body(resp_framing, server_r, conn.client_w)
            elif kind == "lost_answer_503":
                await copy_body(resp_framing, server_r, None)
                await self._answer(conn, "503", method, config, keep=keep, kind=kind)
            elif kind == "lost_answer_reset":
                conn.drop_upstream()
                _reset(conn.client_w)
                raise _Closed
            elif kind == "timeout":
                conn.drop_upstream()
                await self._hold(conn, config.hold_seconds)
                raise _Closed
            elif kind == "truncated_in_head":
                conn.client_w.write(_cut_in_head(resp.raw, config.cut_header))
                await conn.client_w.drain()
                conn.drop_upstream()
                raise _Closed
            elif kind in ("truncated", "truncated_head"):
                await self._truncate(conn, resp, resp_framing, whole_head=kind == "truncated")
                raise _Closed
            else:  # pragma: no cover - every kind is handled above
                raise AssertionError(kind)
            await conn.client_w.drain()
        finally:
            if not send.done():
                send.cancel()
            await asyncio.gather(send, return_exceptions=True)
        if not keep:  # either side said close, or the body was cut short
            raise _Closed
        return True

    async def _upstream(self, conn: _Conn) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection to the service, reopened when the service closed the last one."""
        r, w = conn.server_r, conn.server_w
        if r is None or w is None or r.at_eof() or w.is_closing() or r.exception() is not None:
            conn.drop_upstream()
            try:
                r, w = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=CHUNK, ssl=self.upstream_tls,
                    server_hostname=self.target_host if self.upstream_tls else None)
            except OSError:
                self._count(upstream_refused=1)
                _reset(conn.client_w)  # as close as a proxy gets to "connection refused"
                raise _Closed from None
            conn.server_r, conn.server_w = r, w
        return r, w

    async def _answer(self, conn: _Conn, status: str, method: str, config: FaultConfig, *,
                      keep: bool, kind: str | None = None) -> None:
        """An injected status answer: 503, 500 or 429 (``kind``: the fault it stands for)."""
        kind = kind or status
        body = f"injected fault {kind} (backends.proxy.faults)\n".encode()
        lines = [f"HTTP/1.1 {status} {_STATUS[status]}", "Content-Type: text/plain; charset=utf-8",
                 f"Content-Length: {len(body)}", f"X-Injected-Fault: {kind}"]
        if status in ("503", "429") and config.retry_after is not None:
            lines.append(f"Retry-After: {config.retry_after:g}")
        if not keep:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.client_w.write(head if method == "HEAD" else head + body)
        await conn.client_w.drain()

    async def _hold(self, conn: _Conn, seconds: float) -> None:
        """Send nothing for ``seconds``, or until the client hangs up; the caller then closes."""
        with contextlib.suppress(asyncio.TimeoutError, OSError, HttpError):
            await asyncio.wait_for(_copy_until_eof(conn.client_r, None), seconds)

    async def _truncate(self, conn: _Conn, resp: Head, framing: tuple[str, int], *,
                        whole_head: bool) -> None:
        """Send part of the answer, then close (FIN)."""
        server_r, w = conn.server_r, conn.client_w
        assert server_r is not None
        kind, n = framing
        if whole_head and kind == "length" and n > 0:
            w.write(resp.raw)
            await _copy_length(server_r, w, n // 2)
        elif whole_head and kind == "chunked":
            line = await server_r.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size:
                w.write(resp.raw + line)
                await _copy_length(server_r, w, size // 2)
            else:
                w.write(_cut_head(resp.raw))
        else:
            w.write(_cut_head(resp.raw))
        await w.drain()
        conn.drop_upstream()  # the caller then closes the client connection (FIN)

    # -- control channel ----------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(read_head(reader), 5)
            if raw is None:
                return
            head = Head.parse(raw)
            method, path = head.start[0], head.start[1]
            kind, n = request_framing(head)
            if kind != "length" or n > 65536:
                raise HttpError("control requests take a Content-Length body of at most 64 KiB")
            body = await asyncio.wait_for(reader.readexactly(n), 5) if n else b""
            status, payload = self._control_answer(method, path, body)
            data = json.dumps(payload).encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                         .encode() + data)
            await writer.drain()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HttpError,
                ValueError):
            pass
        finally:
            writer.close()

    def _control_answer(self, method: str, path: str, body: bytes) -> tuple[str, Any]:
        if method == "GET" and path == "/stats":
            return "200 OK", self.stats()
        if method == "POST" and path == "/reset":
            return "200 OK", self.reset()
        if method == "GET" and path == "/events":
            return "200 OK", [asdict(e) for e in self.events()]
        if method == "GET" and path == "/config":
            with self._lock:
                return "200 OK", self._describe()
        if method == "POST" and path == "/configure":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("a JSON object of settings")
                return "200 OK", self.configure(**changes)
            except (ValueError, TypeError, re.error) as e:
                return "400 Bad Request", {"error": f"{type(e).__name__}: {e}"}
        return "404 Not Found", {"error": "GET /stats, POST /reset, GET /events, GET /config, "
                                          "POST /configure {json settings}"}


# -- other processes ------------------------------------------------------------------------------


def _call(url: str, data: bytes | None, timeout: float) -> Any:
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    # Loopback only: no proxy from the environment may sit in between.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def remote_stats(control_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """A fault proxy's counters, read from another process through its control URL."""
    return _call(f"{control_url}/stats", None, timeout)  # type: ignore[no-any-return]


def remote_reset(control_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """Zero a fault proxy's counters from another process; returns them as they were."""
    return _call(f"{control_url}/reset", b"", timeout)  # type: ignore[no-any-return]


def remote_events(control_url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The faults a proxy injected since its last reset, oldest first."""
    return _call(f"{control_url}/events", None, timeout)  # type: ignore[no-any-return]


def remote_configure(control_url: str, timeout: float = 5.0, **settings: Any) -> dict[str, Any]:
    """``configure(**settings)`` on a fault proxy in another process (e.g. ``rate=0``)."""
    return _call(f"{control_url}/configure", json.dumps(settings).encode(),  # type: ignore[no-any-return]
                 timeout)


# -- routing a storage client through a proxy ------------------------------------------------------

#: Where each storage service's environment names its endpoint (``backends.*.service.env``).
ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AZURE_STORAGE_CONNECTION_STRING",
                      "API_ENDPOINT_OVERRIDE", "STORAGE_EMULATOR_HOST")
_ENDPOINT = re.compile(r"(?i)(https?)://(127\.0\.0\.1|localhost):(\d{1,5})")
_BLOB_ENDPOINT = re.compile(r"(?i)(?:^|;)\s*BlobEndpoint=([^;]+)")


def storage_endpoint(env: Mapping[str, str]) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of the storage endpoint a service's ``env`` names."""
    for var in ENDPOINT_VARIABLES:
        value = env.get(var)
        if not value:
            continue
        if var == "AZURE_STORAGE_CONNECTION_STRING":
            m = _BLOB_ENDPOINT.search(value)
            value = m.group(1) if m else ""
        elif var == "STORAGE_EMULATOR_HOST" and "://" not in value:
            value = f"http://{value}"
        m = _ENDPOINT.match(value.strip())
        if m:
            return m.group(1).lower(), m.group(2), int(m.group(3))
    raise ValueError(f"no loopback storage endpoint in {', '.join(ENDPOINT_VARIABLES)}")


def routed_env(env: Mapping[str, str], proxy: FaultProxy) -> dict[str, str]:
    """``env`` with the storage endpoint pointing at ``proxy`` instead.

    Only the storage endpoint moves: token endpoints (GCS's key file names its own, Azure's
    managed-identity stand-in) stay direct, so faults hit storage requests only.
    """
    _, host, port = storage_endpoint(env)
    old = re.compile(rf"(?i)https?://{re.escape(host)}:{port}(?!\d)")
    out = dict(env)
    for var in ENDPOINT_VARIABLES:
        if var in out:
            value = out[var]
            if var == "STORAGE_EMULATOR_HOST" and "://" not in value:
                value = f"http://{value}"
            out[var] = old.sub(proxy.url, value)
    return out


def service_proxy(service: Any, **options: Any) -> FaultProxy:
    """A (not yet started) proxy in front of a running storage service of ``backends``.

    An https endpoint (``azure-oauth``) is served with the service's own certificate and
    reached trusting its CA (the service's ``tls`` files).
    """
    scheme, host, port = storage_endpoint(service.env)
    if scheme == "https":
        tls_files = getattr(service, "tls", None)
        if tls_files is None:
            raise ValueError(f"{type(service).__name__} serves https without its TLS files")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(tls_files.cert), str(tls_files.key))
        options.setdefault("tls", tls)
        options.setdefault("upstream_tls", ssl.create_default_context(cafile=str(tls_files.ca)))
    return FaultProxy(host, port, **options)


# -- the command ----------------------------------------------------------------------------------


def _parse_kinds(text: str) -> dict[str, float]:
    """``503,lost_answer_503=2`` -> ``{"503": 1, "lost_answer_503": 2}``."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if part.strip():
            kind, _, weight = part.partition("=")
            out[kind.strip()] = float(weight) if weight else 1.0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backends.proxy.faults",
        description="One fault-injecting HTTP/1.1 proxy until Ctrl-C (see the module docstring "
                    "of backends/proxy/faults.py for what each fault kind does).")
    parser.add_argument("target", help="HOST:PORT to forward to (plain HTTP)")
    parser.add_argument("--rate", type=float, default=0.05,
                        help="share of eligible requests that get a fault (0..1, default 0.05)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--kinds", type=_parse_kinds, default=None,
                        help=f"KIND[=WEIGHT],… (default: {','.join(DEFAULT_KINDS)}); known: "
                             f"{', '.join(KINDS)}")
    parser.add_argument("--methods", default=None,
                        help="only these methods get faults, e.g. PUT,POST,DELETE")
    parser.add_argument("--path-regex", default=None,
                        help="only request targets this regex finds something in get faults")
    parser.add_argument("--hold-seconds", type=float, default=75.0,
                        help="how long the timeout kinds hold (default 75)")
    parser.add_argument("--retry-after", type=float, default=1.0,
                        help="Retry-After seconds on injected 503/429 (negative: no header)")
    parser.add_argument("--max-faults", type=int, default=None,
                        help="stop injecting after this many faults")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="also delay every request by this much")
    parser.add_argument("--cut-header", default=None,
                        help="the header truncated_in_head cuts inside (default: the middle "
                             "of the head)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"target must be HOST:PORT, not {args.target!r}")
    try:
        proxy = FaultProxy(
            host, int(port), rate=args.rate, seed=args.seed, kinds=args.kinds,
            methods=args.methods.split(",") if args.methods else None,
            path_regex=args.path_regex, hold_seconds=args.hold_seconds,
            retry_after=args.retry_after if args.retry_after >= 0 else None,
            max_faults=args.max_faults, latency_ms=args.latency_ms,
            cut_header=args.cut_header)
    except (ValueError, re.error) as e:
        parser.error(str(e))
    done = threading.Event()
    # SIGTERM ends the proxy as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with proxy:
        print(f"# {proxy.url} -> {args.target}, faults at rate {args.rate:g}, seed {args.seed}")
        print(f"# counters: curl {proxy.control_url}/stats ; curl -X POST "
              f"{proxy.control_url}/reset ; curl -d '{{\"rate\": 0}}' "
              f"{proxy.control_url}/configure")
        sys.stdout.flush()
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        print(f"# {json.dumps(proxy.stats())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
