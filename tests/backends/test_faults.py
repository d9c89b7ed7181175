"""The fault-injecting proxy of ``backends/proxy/faults.py``: every fault kind, against real
HTTP traffic.

First against a tiny local HTTP/1.1 server (``_Origin``), which records what reached it, so
that each test can tell a fault the service never saw from one whose write landed: keep-alive,
chunked bodies both ways, ``Expect: 100-continue``, HEAD, 204, large bodies.  Then in front of
the real storage services (moto, Azurite, the GCS emulator) through cloudtrack's blob layer,
through the ``faulty`` fixture.  Each fault must end as a result that is right or as a
:class:`TransientError` — never a raw SDK error, never a result made of nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backends._common import LOOPBACK, ROOT, free_port
from backends.azure.service import MintedTokenCredential
from backends.proxy.faults import (
    DEFAULT_KINDS,
    FORWARDING,
    KINDS,
    FaultProxy,
    remote_configure,
    remote_events,
    remote_reset,
    remote_stats,
    routed_env,
    storage_endpoint,
)
from cloudtrack.blobs.azure import AzureBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import BlobNotFound, TransientError
from cloudtrack.retry import RetryPolicy
from tests.fixtures.faults import WRITES, FaultyFactory, FaultyStore, objects_only

# -- a tiny origin server that records what reached it -------------------------------------------


class _Origin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler] | None = None) -> None:
        super().__init__((LOOPBACK, 0), handler or _OriginHandler)
        self.objects: dict[str, bytes] = {}
        #: Large uploads are hashed as they stream in, never kept.
        self.digests: dict[str, tuple[int, str]] = {}
        #: (method, path, the proxy-side port of the connection it came on)
        self.seen: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the proxy cut it: expected
            super().handle_error(request, client_address)

    def paths(self) -> list[str]:
        with self.lock:
            return [f"{method} {path}" for method, path, _ in self.seen]


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a head and its body in two writes would wait 40 ms
    server: _Origin

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_expect_100(self) -> bool:
        if self.path.startswith("/refuse"):  # refuse instead of 100 Continue: no body wanted
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return False
        return super().handle_expect_100()

    def _record(self) -> None:
        with self.server.lock:
            self.server.seen.append((self.command, self.path, self.client_address[1]))

    def _body_pieces(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            piece = self.rfile.read(min(n, 1 << 16))
            if not piece:
                return
            n -= len(piece)
            yield piece

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self) -> None:
        self._record()
        if self.path.startswith("/big/"):
            digest, size = hashlib.sha256(), 0
            for piece in self._body_pieces():
                digest.update(piece)
                size += len(piece)
            with self.server.lock:
                self.server.digests[self.path] = (size, digest.hexdigest())
            self._reply(200, b"hashed")
            return
        data = b"".join(self._body_pieces())
        with self.server.lock:
            self.server.objects[self.path] = data
        self._reply(200, f"stored {len(data)}".encode(), ETag=f'"{len(data)}"',
                    X_Stored="yes", X_Origin="tiny")

    do_POST = do_PUT

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/chunked/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Done")
            self.end_headers()
            data = _pattern(size)
            for i in range(0, size, 100_000):
                piece = data[i:i + 100_000]
                self.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\nX-Done: yes\r\n\r\n")
            return
        if self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            piece = _pattern(1 << 16)
            for _ in range(size // len(piece)):
                self.wfile.write(piece)
            return
        if self.path == "/empty":
            self.send_response(204)
            self.send_header("X-Empty", "yes")
            self.end_headers()
            return
        with self.server.lock:
            stored = self.server.objects.get(self.path)
        if stored is None:
            self._reply(404, b"missing")
        else:
            self._reply(200, stored, ETag=f'"{len(stored)}"', X_Origin="tiny", X_Kind="object")

    do_HEAD = do_GET


class _ImpatientHandler(_OriginHandler):
    timeout = 0.3  # closes a connection idle this long, as servers do


def _pattern(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def _serve(server: _Origin) -> Iterator[_Origin]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def origin() -> Iterator[_Origin]:
    yield from _serve(_Origin())


@pytest.fixture
def impatient_origin() -> Iterator[_Origin]:
    yield from _serve(_Origin(_ImpatientHandler))


@pytest.fixture
def proxy(origin: _Origin) -> Iterator[FaultProxy]:
    """A proxy in front of ``origin`` injecting nothing until a test configures it."""
    with FaultProxy(LOOPBACK, origin.port, rate=0.0, seed=1, hold_seconds=1.5,
                    retry_after=2) as p:
        yield p


def _conn(proxy: FaultProxy, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(LOOPBACK, proxy.port, timeout=timeout)


def _call(c: http.client.HTTPConnection, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    c.request(method, path, body=body, headers=headers or {}, **kw)
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def _raw(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((LOOPBACK, proxy.port), timeout=timeout)


def _recv_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def _response(sock: socket.socket, method: str = "GET") -> http.client.HTTPResponse:
    r = http.client.HTTPResponse(sock, method=method)
    r.begin()
    return r


def _expect_head(path: str, body: bytes) -> bytes:
    return (f"PUT {path} HTTP/1.1\r\nHost: origin\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()


# -- forwarding: framing and keep-alive ----------------------------------------------------------


def test_forwards_every_framing_on_one_kept_alive_connection(origin: _Origin,
                                                             proxy: FaultProxy) -> None:
    c = _conn(proxy)
    assert _call(c, "PUT", "/a", b"x" * 1000)[0] == 200
    sock = c.sock
    status, headers, body = _call(c, "GET", "/a")
    assert (status, body) == (200, b"x" * 1000)
    status, headers, body = _call(c, "HEAD", "/a")  # a length, and no body after it
    assert (status, headers["content-length"], body) == (200, "1000", b"")
    chunks = [b"first-", b"second-" * 1000, b"third"]
    assert _call(c, "PUT", "/b", iter(chunks), encode_chunked=True)[0] == 200
    assert _call(c, "GET", "/b")[2] == b"".join(chunks)
    status, headers, body = _call(c, "GET", "/chunked/250000")
    assert (status, body) == (200, _pattern(250000))
    assert headers["transfer-encoding"] == "chunked"
    status, headers, body = _call(c, "GET", "/empty")
    assert (status, headers["x-empty"], body) == (204, "yes", b"")
    assert _call(c, "GET", "/missing")[:3:2] == (404, b"missing")
    assert _call(c, "POST", "/c", b"posted")[0] == 200
    assert c.sock is sock, "the client connection was kept alive throughout"
    assert origin.objects["/c"] == b"posted"
    assert len({port for _, _, port in origin.seen}) == 1, "one upstream connection served all"
    assert proxy.stats() == {"connections": 1, "requests": 9, "forwarded": 9, "faulted": 0,
                             "upstream_refused": 0, "upstream_dropped": 0, "interim": 0,
                             "faults": dict.fromkeys(KINDS, 0)}


def test_relays_100_continue_and_a_refusal_instead_of_it(origin: _Origin,
                                                         proxy: FaultProxy) -> None:
    with _raw(proxy) as sock:
        sock.sendall(_expect_head("/e", b"hello"))
        assert _recv_head(sock).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        r = _response(sock, "PUT")
        assert (r.status, r.read()) == (200, b"stored 5")
        # Same connection: the service refuses before the body; the body is never sent.
        sock.sendall(_expect_head("/refuse", b"never sent"))
        r = _response(sock, "PUT")
        assert r.status == 403
        assert sock.recv(100) == b"", "the proxy closed the connection after the refusal"
    assert origin.objects == {"/e": b"hello"}
    assert origin.paths() == ["PUT /e"]
    assert proxy.stats()["interim"] == 1


def test_reopens_the_upstream_connection_the_service_closed(impatient_origin: _Origin) -> None:
    with FaultProxy(LOOPBACK, impatient_origin.port) as proxy:
        c = _conn(proxy)
        assert _call(c, "GET", "/a")[0] == 404
        sock = c.sock
        time.sleep(0.8)  # the service closes its idle side
        assert _call(c, "GET", "/a")[0] == 404
        assert c.sock is sock, "the client's connection outlived the service's"
        assert len({port for _, _, port in impatient_origin.seen}) == 2
        assert proxy.stats()["upstream_dropped"] == 0


def test_a_service_that_is_down_resets_the_client(origin: _Origin) -> None:
    with FaultProxy(LOOPBACK, free_port()) as proxy:
        with _raw(proxy) as sock:
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                sock.recv(100)
        stats = proxy.stats()
        assert (stats["requests"], stats["forwarded"], stats["upstream_refused"]) == (1, 0, 1)


def test_keeps_memory_bounded_for_large_bodies(origin: _Origin, proxy: FaultProxy) -> None:
    size = 48 * 1024 * 1024
    piece = _pattern(1 << 16)
    c = _conn(proxy, timeout=60)
    tracemalloc.start()
    try:
        status, _, _ = _call(c, "PUT", f"/big/{size}", (piece for _ in range(size // len(piece))),
                             {"Content-Length": str(size)})
        assert status == 200
        c.request("GET", f"/big/{size}")
        r = c.getresponse()
        digest, got = hashlib.sha256(), 0
        while data := r.read(1 << 16):
            digest.update(data)
            got += len(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256(b"".join(piece for _ in range(size // len(piece)))).hexdigest()
    assert origin.digests[f"/big/{size}"] == (size, expected)
    assert (got, digest.hexdigest()) == (size, expected)
    # Everything here (client, proxy, origin) shares one process: 48 MiB each way went through
    # with a few MiB at most held anywhere.
    assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


# -- faults that never reach the service ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["503", "500", "429"])
def test_status_fault_answers_without_forwarding_and_keeps_the_connection(
        origin: _Origin, proxy: FaultProxy, kind: str) -> None:
    proxy.configure(rate=1.0, kinds=[kind])
    c = _conn(proxy)
    status, headers, body = _call(c, "PUT", "/s", b"body " * 1000)
    sock = c.sock
    assert status == int(kind)
    assert headers["x-injected-fault"] == kind
    assert headers.get("retry-after") == ("2" if kind in ("503", "429") else None)
    assert body.startswith(f"injected fault {kind}".encode())
    assert origin.seen == []
    proxy.configure(rate=0.0)
    assert _call(c, "PUT", "/s", b"again")[0] == 200
    assert c.sock is sock, "the connection survived the injected answer"
    assert origin.objects == {"/s": b"again"}
    stats = proxy.stats()
    assert (stats["requests"], stats["forwarded"], stats["faulted"]) == (2, 1, 1)
    assert stats["faults"][kind] == 1


def test_status_fault_instead_of_100_continue_closes_without_the_body(
        origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["503"])
    with _raw(proxy) as sock:
        sock.sendall(_expect_head("/x", b"never"))
        r = _response(sock, "PUT")
        assert r.status == 503
        assert r.getheader("Connection") == "close"
        r.read()
        assert sock.recv(100) == b""
    assert origin.seen == []


def test_reset_before_forwarding(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["reset_before"])
    with _raw(proxy) as sock:
        sock.sendall(b"PUT /r HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\n\r\nbody")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert origin.seen == []
    assert proxy.stats()["forwarded"] == 0


def test_timeout_before_holds_without_forwarding(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["timeout_before"])
    with _raw(proxy, timeout=0.5) as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n")
        with pytest.raises(socket.timeout):
            sock.recv(100)
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed once the hold is over
        assert 1.4 < time.monotonic() - t0 < 5
    assert origin.seen == []


# -- faults after the service did the work -------------------------------------------------------


def test_lost_answer_503_after_the_write_landed(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["lost_answer_503"])
    c = _conn(proxy)
    status, headers, _ = _call(c, "PUT", "/l", b"landed")
    sock = c.sock
    assert (status, headers["x-injected-fault"], headers["retry-after"]) == \
        (503, "lost_answer_503", "2")
    assert "x-stored" not in headers, "nothing of the service's answer reached the client"
    assert origin.objects == {"/l": b"landed"}
    proxy.configure(rate=0.0)
    assert _call(c, "GET", "/l")[2] == b"landed"
    assert c.sock is sock
    # With Expect: 100-continue the go-ahead is relayed, the body forwarded, the answer lost.
    proxy.configure(rate=1.0)
    with _raw(proxy) as raw:
        raw.sendall(_expect_head("/l2", b"later"))
        assert _recv_head(raw).startswith(b"HTTP/1.1 100 Continue")
        raw.sendall(b"later")
        assert _response(raw, "PUT").status == 503
    assert origin.objects["/l2"] == b"later"
    assert proxy.stats()["faults"]["lost_answer_503"] == 2


def test_lost_answer_reset_after_the_write_landed(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["lost_answer_reset"])
    c = _conn(proxy)
    chunks = [b"chunked ", b"write"]
    with pytest.raises(ConnectionResetError):
        _call(c, "PUT", "/lr", iter(chunks), encode_chunked=True)
    assert origin.objects == {"/lr": b"chunked write"}
    assert proxy.stats()["forwarded"] == 1


def test_timeout_holds_the_answer_past_the_read_timeout(origin: _Origin,
                                                        proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["timeout"])
    with _raw(proxy, timeout=0.5) as sock:
        t0 = time.monotonic()
        sock.sendall(b"PUT /t HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\n\r\nheld")
        with pytest.raises(socket.timeout):
            sock.recv(100)
        assert origin.objects == {"/t": b"held"}, "the write landed before the hold"
        sock.settimeout(10)
        assert sock.recv(100) == b"", "nothing of the answer, then the connection closed"
        assert 1.4 < time.monotonic() - t0 < 5


def test_stop_ends_a_hold_at_once(origin: _Origin) -> None:
    proxy = FaultProxy(LOOPBACK, origin.port, rate=1.0, kinds=["timeout"], hold_seconds=120)
    proxy.start()
    try:
        sock = _raw(proxy, timeout=10)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n")
        time.sleep(0.3)
    finally:
        t0 = time.monotonic()
        proxy.stop()
    assert time.monotonic() - t0 < 5
    assert sock.recv(100) == b""
    sock.close()


def test_truncated_body_with_content_length(origin: _Origin, proxy: FaultProxy) -> None:
    origin.objects["/a"] = _pattern(1000)
    proxy.configure(rate=1.0, kinds=["truncated"])
    c = _conn(proxy)
    c.request("GET", "/a")
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead) as e:
        r.read()
    assert e.value.partial == _pattern(500)


def test_truncated_chunked_body(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["truncated"])
    c = _conn(proxy)
    c.request("GET", "/chunked/250000")
    r = c.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        r.read()


@pytest.mark.parametrize(("kind", "method", "path"), [
    ("truncated", "HEAD", "/a"),       # no body to cut: the head is cut
    ("truncated", "GET", "/empty"),    # 204
    ("truncated_head", "GET", "/a"),
    ("truncated_head", "PUT", "/w"),
])
def test_truncated_head(origin: _Origin, proxy: FaultProxy, kind: str, method: str,
                        path: str) -> None:
    origin.objects["/a"] = b"abc"
    proxy.configure(rate=1.0, kinds=[kind])
    with _raw(proxy) as sock:
        body = b"put" if method == "PUT" else b""
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: o\r\nContent-Length: {len(body)}"
                     f"\r\n\r\n".encode() + body)
        got = _recv_all(sock)
    # The status line, and not one header after it.
    assert got in (b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 204 No Content\r\n")
    if method == "PUT":
        assert origin.objects["/w"] == b"put", "the write landed"


@pytest.mark.parametrize(("cut_header", "method", "kept", "cut"), [
    ("etag", "GET", b'ETag: "', b"X-Origin"),           # halfway through '"3"'
    ("x-origin", "PUT", b"X-Origin: ti", b"Content-Length"),
    ("no-such-header", "GET", b"", b"Content-Length"),  # the middle of the head
    (None, "GET", b"", b"Content-Length"),
])
def test_truncated_in_head_cuts_inside_a_header_line(
        origin: _Origin, proxy: FaultProxy, cut_header: str | None, method: str, kept: bytes,
        cut: bytes) -> None:
    origin.objects["/a"] = b"abc"
    proxy.configure(rate=1.0, kinds=["truncated_in_head"], cut_header=cut_header)
    with _raw(proxy) as sock:
        body = b"put" if method == "PUT" else b""
        sock.sendall(f"{method} /a HTTP/1.1\r\nHost: o\r\nContent-Length: {len(body)}"
                     f"\r\n\r\n".encode() + body)
        got = _recv_all(sock)
    assert got.startswith(b"HTTP/1.1 200 OK\r\nServer: ")
    assert got.endswith(kept) and cut not in got and not got.endswith(b"\r\n")
    assert origin.paths() == [f"{method} /a"], "forwarded whole"
    assert proxy.stats()["faults"]["truncated_in_head"] == 1


# -- choosing faults ---------------------------------------------------------------------------------


def test_filters_aim_faults_at_methods_and_paths(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["500"], methods=["put", "DELETE"], path_regex=r"^/only/")
    c = _conn(proxy)
    assert _call(c, "PUT", "/other", b"1")[0] == 200
    assert _call(c, "GET", "/only/x")[0] == 404
    assert _call(c, "PUT", "/only/x", b"2")[0] == 500
    assert [(e.method, e.target, e.kind) for e in proxy.events()] == [("PUT", "/only/x", "500")]
    assert proxy.stats()["requests"] == 3


def test_max_faults_then_everything_passes(origin: _Origin, proxy: FaultProxy) -> None:
    proxy.configure(rate=1.0, kinds=["503"], max_faults=2)
    c = _conn(proxy)
    assert [_call(c, "PUT", "/m", b"m")[0] for _ in range(4)] == [503, 503, 200, 200]
    assert proxy.configure()["max_faults"] == 0


def _drive(proxy: FaultProxy, n: int) -> list[str]:
    """n requests in order (PUT then GET of one path), reconnecting after a fault that ended
    the connection; what each one got."""
    outcomes: list[str] = []
    c = _conn(proxy, timeout=3)
    for i in range(n):
        method, path = ("PUT", f"/d{i // 2}") if i % 2 == 0 else ("GET", f"/d{i // 2}")
        try:
            status, _, body = _call(c, method, path, b"v" * 300 if method == "PUT" else None)
            outcomes.append(f"{status} {len(body)}")
        except (OSError, http.client.HTTPException) as e:
            outcomes.append(type(e).__name__)
            c.close()
            c = _conn(proxy, timeout=3)
    c.close()
    return outcomes


def test_same_seed_same_faults_and_counts_add_up(origin: _Origin) -> None:
    options: dict[str, Any] = {"rate": 0.4, "hold_seconds": 0.2, "retry_after": 0}
    runs = []
    for seed in (11, 11, 12):
        with FaultProxy(LOOPBACK, origin.port, seed=seed, **options) as p:
            outcomes = _drive(p, 60)
            runs.append((outcomes, [(e.request, e.method, e.kind) for e in p.events()],
                         p.stats()))
    (out1, ev1, st1), (out2, ev2, st2), (_, ev3, _) = runs
    assert (out1, ev1, st1) == (out2, ev2, st2)
    assert ev1 != ev3
    kinds = {kind for _, _, kind in ev1}
    assert len(kinds) >= 5, f"a 60-request run shows most kinds, got {sorted(kinds)}"
    assert kinds <= set(DEFAULT_KINDS)
    faults = st1["faults"]
    assert st1["requests"] == 60
    assert st1["faulted"] == sum(faults.values()) == len(ev1)
    assert 12 <= st1["faulted"] <= 36
    assert st1["forwarded"] == 60 - sum(n for k, n in faults.items() if k not in FORWARDING)
    # A lower rate with the same seed faults a subset of the same requests, with the same kinds.
    with FaultProxy(LOOPBACK, origin.port, seed=11, **{**options, "rate": 0.15}) as p:
        _drive(p, 60)
        fewer = [(e.request, e.method, e.kind) for e in p.events()]
    assert fewer and set(fewer) < set(ev1)


def test_counting_context(origin: _Origin, proxy: FaultProxy) -> None:
    c = _conn(proxy)
    _call(c, "GET", "/a")
    proxy.configure(rate=1.0, kinds=["429"])
    with proxy.counting() as n:
        _call(c, "GET", "/a")
        _call(c, "GET", "/a")
    assert (n.requests, n.forwarded, n.faulted, n.faults["429"]) == (2, 0, 2, 2)


def test_latency_is_added_per_request(origin: _Origin) -> None:
    with FaultProxy(LOOPBACK, origin.port, latency_ms=150) as p:
        c = _conn(p)
        _call(c, "GET", "/a")
        t0 = time.monotonic()
        _call(c, "GET", "/a")
        assert time.monotonic() - t0 >= 0.15


def test_control_endpoint_reads_resets_and_reconfigures(origin: _Origin,
                                                        proxy: FaultProxy) -> None:
    url = proxy.control_url
    c = _conn(proxy)
    assert _call(c, "GET", "/a")[0] == 404
    settings = remote_configure(url, rate=1, kinds={"500": 1}, methods=["GET"])
    assert (settings["rate"], settings["kinds"], settings["methods"]) == (1.0, {"500": 1.0},
                                                                          ["GET"])
    assert _call(c, "GET", "/a")[0] == 500
    assert remote_stats(url)["faults"]["500"] == 1
    assert remote_events(url) == [{"request": 2, "method": "GET", "target": "/a",
                                   "kind": "500"}]
    before = remote_reset(url)
    assert (before["requests"], before["faulted"]) == (2, 1)
    assert remote_stats(url)["requests"] == 0 and remote_events(url) == []
    with pytest.raises(urllib.error.HTTPError) as e:
        remote_configure(url, rate=2)
    assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        remote_configure(url, kinds={"brownout": 1})
    assert e.value.code == 400 and b"unknown fault kind" in e.value.read()
    remote_configure(url, rate=0)
    assert _call(c, "GET", "/a")[0] == 404
    with urllib.request.urlopen(f"{url}/config", timeout=5) as resp:
        assert json.load(resp)["rate"] == 0.0


def test_command_runs_one_proxy_until_sigterm(origin: _Origin) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "backends.proxy.faults", f"{LOOPBACK}:{origin.port}",
         "--rate", "1", "--seed", "3", "--kinds", "429", "--retry-after", "0",
         "--methods", "GET"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split()[1]
        assert url.startswith(f"http://{LOOPBACK}:"), first
        req = urllib.request.Request(f"{url}/a")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert (e.value.code, e.value.headers["Retry-After"]) == (429, "0")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert json.loads(err.strip().splitlines()[-1].lstrip("# "))["faults"]["429"] == 1


def test_routed_env_moves_only_the_storage_endpoint() -> None:
    proxy = FaultProxy(LOOPBACK, 1)  # never started: port 0
    assert routed_env({"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_REGION": "x"},
                      proxy) == {"MLFLOW_S3_ENDPOINT_URL": proxy.url, "AWS_REGION": "x"}
    azure = {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=k;"
                                                "BlobEndpoint=http://127.0.0.1:10000/a;",
             "IDENTITY_ENDPOINT": "http://127.0.0.1:7000/token"}
    assert storage_endpoint(azure) == ("http", "127.0.0.1", 10000)
    assert routed_env(azure, proxy) == {
        "AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=k;"
                                           f"BlobEndpoint={proxy.url}/a;",
        "IDENTITY_ENDPOINT": "http://127.0.0.1:7000/token"}
    assert storage_endpoint({"STORAGE_EMULATOR_HOST": "localhost:4443"}) == \
        ("http", "localhost", 4443)
    with pytest.raises(ValueError):
        storage_endpoint({"AWS_REGION": "x"})


# -- in front of the real services, through cloudtrack's blob layer -----------------------------

CLOUDS = ["s3", "azure", "gcs"]
ONE_ATTEMPT = {"CLOUDTRACK_MAX_ATTEMPTS": "1"}



def _put(fs: FaultyStore, key: str, data: bytes, **env: str) -> str:
    with fs.open(**env) as blobs:
        return blobs.put(key, data)


def _landed(fs: FaultyStore, key: str) -> bytes | None:
    with fs.open_direct() as blobs:
        try:
            return blobs.get(key)
        except BlobNotFound:
            return None


@pytest.mark.parametrize("backend", CLOUDS)
@pytest.mark.parametrize("kind", ["lost_answer_503", "lost_answer_reset"])
def test_lost_answer_write_landed_but_the_client_saw_a_failure(
        faulty: FaultyFactory, backend: str, kind: str) -> None:
    fs = faulty(backend, rate=1.0, kinds=[kind], methods=WRITES, retry_after=0)
    with pytest.raises(TransientError) as e:
        _put(fs, "runs/a.json", b'{"landed": true}', **ONE_ATTEMPT)
    facts = fs.open().error_facts(e.value)
    assert facts is not None
    if kind == "lost_answer_503":
        assert (facts.status, facts.headers.get("x-injected-fault")) == (503, kind)
    else:
        assert (facts.kind, facts.status) == ("network", 0)
    assert _landed(fs, "runs/a.json") == b'{"landed": true}'
    stats = fs.proxy.stats()
    assert (stats["faulted"], stats["faults"][kind]) == (1, 1)


def test_large_s3_upload_with_100_continue_lands_behind_a_lost_answer(
        faulty: FaultyFactory) -> None:
    """botocore keeps ``Expect: 100-continue`` for bodies over 1 MiB: the proxy relays moto's
    go-ahead, forwards the body, and loses the answer."""
    fs = faulty("s3", rate=1.0, kinds=["lost_answer_503"], methods=["PUT"], retry_after=0)
    data = _pattern(3 * 1024 * 1024)
    with pytest.raises(TransientError):
        _put(fs, "runs/big.bin", data, **ONE_ATTEMPT)
    assert _landed(fs, "runs/big.bin") == data
    assert fs.proxy.stats()["interim"] == 1, "100 Continue came back through the proxy"


@pytest.mark.parametrize("backend", CLOUDS)
@pytest.mark.parametrize("kind", ["503", "500", "429", "reset_before"])
def test_write_refused_before_the_service_saw_it(faulty: FaultyFactory, backend: str,
                                                 kind: str) -> None:
    fs = faulty(backend, rate=1.0, kinds=[kind], methods=WRITES, retry_after=0.25)
    with pytest.raises(TransientError) as e:
        _put(fs, "runs/b.json", b"{}", CLOUDTRACK_MAX_ATTEMPTS="2")
    assert _landed(fs, "runs/b.json") is None
    facts = fs.open().error_facts(e.value)
    assert facts is not None
    assert facts.status == (0 if kind == "reset_before" else int(kind))
    stats = fs.proxy.stats()
    assert stats["faults"][kind] == 2, "both attempts met the fault"
    if kind in ("503", "429"):
        assert e.value.retry_after == 0.25, "the service's Retry-After reaches the retry layer"


@pytest.mark.parametrize("backend", CLOUDS)
def test_timeout_holds_past_the_clients_read_timeout(faulty: FaultyFactory,
                                                     backend: str) -> None:
    fs = faulty(backend, rate=1.0, kinds=["timeout"], methods=WRITES, hold_seconds=6)
    t0 = time.monotonic()
    with pytest.raises(TransientError):
        _put(fs, "runs/c.json", b"{}", CLOUDTRACK_READ_TIMEOUT="1", **ONE_ATTEMPT)
    waited = time.monotonic() - t0
    assert 0.9 < waited < 4, f"gave up after {waited:.1f}s: the read timeout, not the hold"
    assert _landed(fs, "runs/c.json") == b"{}"
    # A held read: the same, and nothing to land.
    # (Only the object: google-cloud-storage also fetches bucket metadata in a thread of its own.)
    fs.proxy.configure(methods=["GET"], path_regex=r"c\.json")
    with fs.open(CLOUDTRACK_READ_TIMEOUT="1", **ONE_ATTEMPT) as blobs:
        t0 = time.monotonic()
        with pytest.raises(TransientError):
            blobs.get("runs/c.json")
        assert time.monotonic() - t0 < 4
    assert fs.proxy.stats()["faults"]["timeout"] == 2


@pytest.mark.parametrize("backend", CLOUDS)
def test_truncated_read_is_a_transient_error(faulty: FaultyFactory, backend: str) -> None:
    fs = faulty(backend, rate=1.0, kinds=["truncated"], methods=["GET"], path_regex=r"d\.json")
    with fs.open_direct() as blobs:
        blobs.put("runs/d.json", _pattern(20_000))
    with fs.open(**ONE_ATTEMPT) as blobs, pytest.raises(TransientError):
        blobs.get("runs/d.json")
    assert fs.proxy.stats()["faults"]["truncated"] >= 1


@pytest.mark.parametrize("backend", CLOUDS)
def test_one_attempt_is_one_request_when_a_read_is_cut(faulty: FaultyFactory,
                                                       backend: str) -> None:
    fs = faulty(backend, rate=1.0, kinds=["truncated"], methods=["GET"], path_regex=r"d\.json")
    with fs.open_direct() as blobs:
        blobs.put("runs/d.json", _pattern(20_000))
    with fs.open(**ONE_ATTEMPT) as blobs, pytest.raises(TransientError):
        blobs.get("runs/d.json")
    assert fs.proxy.stats()["faults"]["truncated"] == 1


_CUT_OPS = ("put", "upload_file", "get_versioned", "stat", "list", "download_file")


@pytest.mark.parametrize("backend", CLOUDS)
@pytest.mark.parametrize("op", _CUT_OPS)
def test_answer_cut_off_in_its_head_is_a_transient_error(
        faulty: FaultyFactory, op: str, backend: str, tmp_path: Path) -> None:
    """The status line arrives, then the connection ends: no headers, no body.  The client
    cannot trust such an answer; it must be a TransientError (retried), never a raw SDK error
    nor a result made of nothing."""
    fs = faulty(backend, rate=0.0, kinds=["truncated_head"], path_regex=objects_only(backend))
    with fs.open_direct() as blobs:
        blobs.put("runs/h.json", b'{"before": 1}')
    fs.proxy.configure(rate=1.0)
    src = tmp_path / "up.json"
    src.write_bytes(b'{"after": 2}')
    try:
        with fs.open(**ONE_ATTEMPT) as blobs, pytest.raises(TransientError):
            if op == "put":
                blobs.put("runs/h.json", b'{"after": 2}')
            elif op == "upload_file":
                blobs.upload_file("runs/h.json", src)
            elif op == "list":
                list(blobs.list("runs/"))
            elif op == "download_file":
                blobs.download_file("runs/h.json", tmp_path / "down.json")
            else:
                getattr(blobs, op)("runs/h.json")
    finally:
        assert fs.proxy.stats()["faults"]["truncated_head"] >= 1
        if op in ("put", "upload_file"):
            assert _landed(fs, "runs/h.json") == b'{"after": 2}', "the write landed"


@pytest.mark.parametrize("backend", CLOUDS)
def test_truncated_write_answer_is_a_transient_error(faulty: FaultyFactory, backend: str) -> None:
    """S3 and Azure answer a PUT without a body, so ``truncated`` cuts the head there; GCS
    answers an upload with JSON, and its body is cut."""
    fs = faulty(backend, rate=1.0, kinds=["truncated"], methods=WRITES)
    try:
        with pytest.raises(TransientError):
            _put(fs, "runs/e.json", b"{}", **ONE_ATTEMPT)
    finally:
        assert _landed(fs, "runs/e.json") == b"{}"


@pytest.mark.parametrize("backend", CLOUDS)
def test_retried_conditional_write_meets_its_own_lost_write(faulty: FaultyFactory,
                                                            backend: str) -> None:
    fs = faulty(backend, rate=1.0, kinds=["lost_answer_503"], methods=WRITES, retry_after=0,
                max_faults=1)
    with fs.open() as blobs:
        version = blobs.put_if_absent("names/exp", b"42")
    with fs.open_direct() as blobs:
        assert blobs.get_versioned("names/exp") == (b"42", version)
    stats = fs.proxy.stats()
    assert (stats["faulted"], stats["faults"]["lost_answer_503"]) == (1, 1)


def _workload(fs: FaultyStore) -> list[str]:
    """A fixed sequence of blob operations through the proxy; what each returned or raised."""
    outcomes = []
    with fs.open(CLOUDTRACK_MAX_ATTEMPTS="3", CLOUDTRACK_READ_TIMEOUT="0.5") as blobs:
        for i in range(6):
            for op in ("put", "get", "put_if_absent"):
                try:
                    if op == "put":
                        blobs.put(f"k/{i}", f"value {i}".encode())
                        outcomes.append("ok")
                    elif op == "get":
                        outcomes.append(blobs.get(f"k/{i}").decode())
                    else:
                        blobs.put_if_absent(f"k/{i}", b"other")
                        outcomes.append("created")
                except Exception as e:
                    outcomes.append(type(e).__name__)
    return outcomes


@pytest.mark.parametrize("backend", CLOUDS)
def test_same_seed_same_faults_on_a_real_service(faulty: FaultyFactory, backend: str) -> None:
    kinds = dict.fromkeys(DEFAULT_KINDS, 1)
    # Faults on the workload's objects only: google-cloud-storage's own bucket lookup runs in
    # a thread, and would take its draw at a different place in each run (objects_only).
    objects = objects_only(backend)
    runs = []
    for _ in range(2):
        fs = faulty(backend, rate=0.3, seed=5, kinds=kinds, hold_seconds=2, retry_after=0,
                    path_regex=objects)
        outcomes = _workload(fs)
        runs.append((outcomes, [(e.method, e.kind) for e in fs.proxy.events()],
                     fs.proxy.stats()))
    (out1, ev1, st1), (out2, ev2, st2) = runs
    assert ev1, "some faults were injected"
    assert (out1, ev1) == (out2, ev2)
    assert (st1["faulted"], st1["faults"]) == (st2["faulted"], st2["faults"])
    faults = st1["faults"]
    assert st1["faulted"] == sum(faults.values()) == len(ev1)
    assert st1["forwarded"] == st1["requests"] - sum(
        n for k, n in faults.items() if k not in FORWARDING)


def test_tls_front_for_azure_oauth(faulty: FaultyFactory) -> None:
    fs = faulty("azure-oauth", rate=1.0, kinds=["lost_answer_503"], methods=WRITES,
                retry_after=0)
    assert fs.proxy.url.startswith("https://")
    one = RetryPolicy(attempts=1)
    with AzureBlobs(resolve(fs.uri, fs.env), credential=MintedTokenCredential(),
                    retry=one) as blobs, pytest.raises(TransientError):
        blobs.put("runs/f.json", b"tls")
    with AzureBlobs(resolve(fs.uri, fs.direct_env), credential=MintedTokenCredential()) as blobs:
        assert blobs.get("runs/f.json") == b"tls"
    assert fs.proxy.stats()["faults"]["lost_answer_503"] == 1
