"""moto's S3 server with conditional writes made atomic: ``python -m backends.s3.server --port N``.

moto (5.2.5, the newest release) checks ``If-None-Match: *`` and ``If-Match`` on PutObject (and
``If-None-Match`` on CompleteMultipartUpload), but the check and the write are two separate
steps on a threaded server:
two concurrent put-if-absent requests can both pass the check and both answer 200 (seen here in
about 1 of 100 rounds of 16 writers).  It also closes an overwritten object's buffer while a
concurrent GET may still read it, which answers 500.  Real S3 does neither.

This module runs moto's own WSGI application behind one lock, so every request is handled
alone and each check-then-write is atomic, exactly as S3 promises.  Request bodies are read
from the socket *before* taking the lock, so a slow client never holds up the others.  moto's
S3 handlers work on in-memory objects, so serialising them costs little next to the GIL.
It is served by gunicorn's threaded worker, which keeps connections open as S3 does (moto's
own werkzeug server closes each one); ``--no-keep-alive`` serves it with werkzeug instead.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

#: Bodies above this spill to a temporary file while they wait for the lock.
_SPOOL_BYTES = 16 * 1024 * 1024

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SerializedRequests:
    """WSGI middleware: the wrapped application sees one request at a time."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    @staticmethod
    def _buffer_body(environ: dict[str, Any]) -> tempfile.SpooledTemporaryFile[bytes] | None:
        stream = environ.get("wsgi.input")
        if stream is None:
            return None
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            remaining: int | None = int(length)
        elif environ.get("wsgi.input_terminated"):
            remaining = None  # chunked transfer: the server ends the stream for us
        else:
            return None
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
        while remaining is None or remaining > 0:
            block = stream.read(1024 * 1024 if remaining is None else min(remaining, 1024 * 1024))
            if not block:
                break
            spool.write(block)
            if remaining is not None:
                remaining -= len(block)
        spool.seek(0)
        environ["wsgi.input"] = spool
        return spool

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        spool = self._buffer_body(environ)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                # moto's responses are already in memory; joining them inside the lock keeps
                # a lazily produced body from reading state another request is changing.
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        if spool is not None:
            spool.close()
        return [body]


def _cache_moto_module_list() -> None:
    """moto's dispatcher lists its own package folder (some 180 ``stat`` calls) on every
    request, about half of its time per request; that list cannot change while it runs."""
    from moto import backends

    if not callable(getattr(backends, "list_of_moto_modules", None)):
        return  # a moto that no longer has it: nothing to speed up
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: iter(modules)  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-keep-alive", action="store_true",
                        help="moto's own werkzeug server (closes every connection)")
    args = parser.parse_args(argv)

    # Imported here so that ``--help`` stays fast; moto loads every service's URL table.
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    _cache_moto_module_list()
    app = SerializedRequests(DomainDispatcherApplication(create_backend_app))
    if args.no_keep_alive:
        from werkzeug.serving import run_simple

        run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    else:
        _serve_keep_alive(app, args.host, args.port)


def _serve_keep_alive(app: WsgiApp, host: str, port: int) -> None:
    """Serve ``app`` with keep-alive connections, as S3 does.

    moto's own server is werkzeug's development server, which closes the connection after
    every response ("keep-alive is not handled well by http.server"), so every request through
    it also pays a TCP handshake that a client of real S3 does not: behind the latency proxy
    that doubled the cost of each small request.  gunicorn's threaded worker keeps connections
    open; one worker process, so moto's in-memory state stays in one place.
    """
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread",
                "threads": 32, "keepalive": 30,
                "timeout": 0,  # a 200 MB upload must not get the worker killed
                "graceful_timeout": 2,
                # S3 user metadata may contain underscores; keep such headers, as
                # MotoRequestHandler does for werkzeug.
                "header_map": "dangerous",
                "loglevel": "warning", "accesslog": None,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> WsgiApp:
            return app

    Server().run()


if __name__ == "__main__":
    main()
