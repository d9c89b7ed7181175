"""The wrapper in backends/s3/server.py that makes moto's conditional writes atomic.

moto's check-then-write race shows up in about one round in a hundred, too rarely for a test
against moto to catch its return reliably.  So the wrapper's one promise — the application
sees one request at a time, with the whole body — is tested here on a small WSGI application
that is racy on purpose, with real threads; the control case shows the race without it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.test import Client

from backends.s3.server import SerializedRequests


class RacyCounter:
    """Reads a counter, yields the CPU, writes it back: loses updates when run concurrently."""

    def __init__(self) -> None:
        self.value = 0
        self.bodies: list[bytes] = []
        self.active = 0
        self.most_active = 0
        self._meta = threading.Lock()

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._meta:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        body = environ["wsgi.input"].read()
        seen = self.value
        time.sleep(0.002)
        self.value = seen + 1
        with self._meta:
            self.bodies.append(body)
            self.active -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def _hammer(app: Callable[..., Iterable[bytes]], requests: int = 64) -> None:
    def one(i: int) -> None:
        response = Client(app).put("/bucket/key", data=f"body-{i}".encode() * 1000)
        assert response.status_code == 200
        assert response.get_data() == b"ok"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(requests)))


def test_requests_reach_the_application_one_at_a_time() -> None:
    app = RacyCounter()
    _hammer(SerializedRequests(app))
    assert app.most_active == 1
    assert app.value == 64
    assert sorted(app.bodies) == sorted(f"body-{i}".encode() * 1000 for i in range(64))


def test_without_the_wrapper_the_same_application_loses_updates() -> None:
    app = RacyCounter()
    _hammer(app)
    assert app.most_active > 1
    assert app.value < 64


def test_chunked_bodies_are_buffered_whole() -> None:
    app = RacyCounter()
    chunks = [b"a" * 70_000, b"b" * 5, b"c" * 1_500_000]
    # What werkzeug's server hands over for a chunked request: no length, a terminated stream.
    environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": "/bucket/key",
               "wsgi.input": _Stream(b"".join(chunks)), "wsgi.input_terminated": True}
    statuses: list[str] = []
    body = SerializedRequests(app)(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK"] and list(body) == [b"ok"]
    assert app.bodies == [b"".join(chunks)]


class _Stream:
    """A request body without a length that hands out small pieces, as a socket does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        size = 4096 if size < 0 else min(size, 4096)
        piece, self.data = self.data[:size], self.data[size:]
        return piece
