"""A TCP proxy that adds network latency and counts requests, for benchmarks.

``LatencyProxy(target_host, target_port, latency_ms=N)`` listens on ``127.0.0.1:<free port>``
and forwards every connection to the target, byte for byte (HTTP, TLS, anything over TCP).

The latency model
-----------------
A cloud round trip costs a fixed delay no matter how small the request; loopback costs
nothing.  The proxy therefore delays *turns*, not bytes:

* a **turn** begins with the first client→server bytes on a connection, and again with the
  first client→server bytes after the server has sent anything back.  Those bytes are held
  N ms, then they and everything following them flow at full loopback speed.  A keep-alive
  HTTP/1.1 request/response therefore costs exactly one extra N ms, a 200 MB upload one N ms
  (not N ms per chunk), and concurrent connections wait concurrently;
* opening a connection costs ``connect_latency_ms`` more (default N: the TCP handshake is a
  round trip too), so connection reuse pays off as it does on a real network;
* server→client bytes are not delayed: the whole round trip is charged on the way out.

Counters (``stats()``): ``round_trips`` (turns), ``requests`` (turns that start an HTTP
request: a body sent after a server's ``100 Continue`` is a round trip but not a new request),
``connections``, ``bytes_up``, ``bytes_down``, and ``service_us``: microseconds from forwarding
a turn's first bytes (after the added latency) to the service's first bytes back, summed over
turns — how long the service itself took to answer, so a benchmark can tell a slow emulator
from a slow client (concurrent turns add up beyond wall time).  Through TLS the handshake's turns count as
requests too (the proxy cannot see inside); count through plain HTTP.

Reading the counters from another process
-----------------------------------------
Each proxy also answers a tiny HTTP control endpoint on its own loopback port
(``control_url``): ``GET /stats`` returns the counters as JSON, ``POST /reset`` zeroes them and
returns the counters from before.  :func:`remote_stats` and :func:`remote_reset` call it with the
standard library.  ``python -m backends up --latency-ms N`` prints each proxy's control URL.

Large bodies are streamed in chunks of at most 1 MiB with back-pressure in both directions,
so memory stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

from backends.proxy.server import CHUNK, LoopServer

#: The first bytes of an interim ``100 Continue`` response (HTTP/1.0 and 1.1).
_CONTINUE = (b"HTTP/1.1 100", b"HTTP/1.0 100")


@dataclass
class ProxyStats:
    round_trips: int = 0
    requests: int = 0
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    service_us: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Turns:
    """Per connection: whether the next client bytes start a new turn."""

    __slots__ = ("after_continue", "sent_at", "server_spoke")

    def __init__(self) -> None:
        self.server_spoke = True  # the first client bytes start a turn
        self.after_continue = False
        self.sent_at: float | None = None  # when this turn's first bytes went to the service


class LatencyProxy(LoopServer):
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with ``latency_ms`` added to
    each round trip; runs its own event loop in a daemon thread."""

    thread_prefix = "latency-proxy"

    def __init__(self, target_host: str, target_port: int, latency_ms: float = 0.0, *,
                 connect_latency_ms: float | None = None, control: bool = True,
                 name: str = "proxy") -> None:
        self.target_host = target_host
        self.target_port = int(target_port)
        self.latency = max(0.0, latency_ms) / 1000
        self.connect_latency = (self.latency if connect_latency_ms is None
                                else max(0.0, connect_latency_ms) / 1000)
        self._init_server(name, control)
        self._stats = ProxyStats()
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return self._stats.as_dict()

    def reset(self) -> dict[str, int]:
        """Zero the counters; returns them as they were."""
        with self._lock:
            before, self._stats = self._stats, ProxyStats()
        return before.as_dict()

    @contextlib.contextmanager
    def counting(self) -> Iterator[ProxyStats]:
        """``with proxy.counting() as n: ...`` — ``n`` holds what the block cost."""
        self.reset()
        result = ProxyStats()
        try:
            yield result
        finally:
            for key, value in self.stats().items():
                setattr(result, key, value)

    # -- forwarding -------------------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                setattr(self._stats, key, getattr(self._stats, key) + value)

    async def _on_client(self, client_r: asyncio.StreamReader,
                         client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_w: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            self._count(connections=1)
            if self.connect_latency:
                await asyncio.sleep(self.connect_latency)
            try:
                server_r, server_w = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=CHUNK)
            except OSError:
                return  # the client sees the connection close, as with a refused connect
            turns = _Turns()
            pumps = [asyncio.ensure_future(self._client_to_server(client_r, server_w, turns)),
                     asyncio.ensure_future(self._server_to_client(server_r, client_w, turns))]
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            # A failing direction (a reset) ends the connection; a clean EOF on the way up
            # still lets the response come back.
            if any(not t.cancelled() and t.exception() for t in done):
                for t in pending:
                    t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            # Only stop() cancels a connection.  Ending quietly keeps asyncio (3.11) from
            # logging the cancellation as an error of the connection callback.
            pass
        finally:
            for t in pumps:
                t.cancel()
            # Let the pumps unwind, or closing the loop warns about pending tasks.
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (server_w, client_w):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _client_to_server(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, turns: _Turns) -> None:
        while data := await reader.read(CHUNK):
            if turns.server_spoke:
                turns.server_spoke = False
                self._count(round_trips=1, requests=0 if turns.after_continue else 1)
                turns.after_continue = False
                if self.latency:
                    await asyncio.sleep(self.latency)
                turns.sent_at = time.perf_counter()
            self._count(bytes_up=len(data))
            writer.write(data)
            await writer.drain()  # back-pressure: never read faster than the server takes
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()

    async def _server_to_client(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, turns: _Turns) -> None:
        while data := await reader.read(CHUNK):
            if not turns.server_spoke:
                turns.server_spoke = True
                turns.after_continue = data.startswith(_CONTINUE)
                if turns.sent_at is not None:
                    self._count(service_us=int((time.perf_counter() - turns.sent_at) * 1e6))
                    turns.sent_at = None
            self._count(bytes_down=len(data))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()

    # -- control channel ----------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing to read from them
            method, path = [*request_line.decode("latin-1").split(), "", ""][:2]
            body: Mapping[str, object]
            if method == "GET" and path == "/stats":
                status, body = "200 OK", self.stats()
            elif method == "POST" and path == "/reset":
                status, body = "200 OK", self.reset()
            else:
                status, body = "404 Not Found", {"error": "GET /stats or POST /reset"}
            payload = json.dumps(body).encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                         .encode() + payload)
            await writer.drain()
        except (OSError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            writer.close()


def remote_stats(control_url: str, timeout: float = 5.0) -> dict[str, int]:
    """A proxy's counters, read from another process through its control URL."""
    with urllib.request.urlopen(f"{control_url}/stats", timeout=timeout) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def remote_reset(control_url: str, timeout: float = 5.0) -> dict[str, int]:
    """Zero a proxy's counters from another process; returns them as they were."""
    req = urllib.request.Request(f"{control_url}/reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]
