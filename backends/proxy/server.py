"""What the latency proxy and the fault proxy share: a listener on a free loopback port (and a
control listener beside it), served by an event loop of the proxy's own in a daemon thread, and
closed with every connection it holds.  A subclass answers connections (``_on_client``) and
control requests (``_on_control``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from typing import Any, TypeVar

from backends._common import LOOPBACK

#: Bytes read or written at a time.
CHUNK = 1 << 20

_P = TypeVar("_P", bound="LoopServer")


class LoopServer:
    """The life cycle of a proxy: :meth:`start`, :meth:`stop`, ``with``; its addresses."""

    #: Names the loop's thread (``<thread_prefix>-<name>``).
    thread_prefix = "proxy"
    #: Serve TLS on the listener (the fault proxy in front of an HTTPS service).
    tls: ssl.SSLContext | None = None

    def _init_server(self, name: str, control: bool) -> None:
        self.name = name
        self._control_enabled = control
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._control: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._port = 0
        self._control_port = 0

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _on_control(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                        name=f"{self.thread_prefix}-{self.name}")
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise

    async def _open(self) -> None:
        # Port 0: the kernel picks a free port and nobody can take it between pick and bind.
        self._server = await asyncio.start_server(self._on_client, LOOPBACK, 0, backlog=1024,
                                                  limit=CHUNK, ssl=self.tls)
        self._port = self._server.sockets[0].getsockname()[1]
        if self._control_enabled:
            self._control = await asyncio.start_server(self._on_control, LOOPBACK, 0)
            self._control_port = self._control.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listeners and every open connection (held ones too), then end the loop."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if not loop.is_running():  # a thread that would not stop keeps its loop
            loop.close()

    async def _close(self) -> None:
        for server in (self._server, self._control):
            if server is not None:
                server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in (self._server, self._control):
            if server is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 2)

    def __enter__(self: _P) -> _P:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self._port}"

    @property
    def control_url(self) -> str:
        if not self._control_port:
            raise RuntimeError("this proxy was created with control=False or is not started")
        return f"http://{LOOPBACK}:{self._control_port}"
