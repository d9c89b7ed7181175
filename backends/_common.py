"""What every service shares: free ports, waiting for readiness, owning a child process."""

from __future__ import annotations

import abc
import base64
import contextlib
import email.utils
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 60.0,
                  proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"service exited with {proc.returncode} before listening on "
                               f"{host}:{port}\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def send_answer(handler: BaseHTTPRequestHandler, status: int, headers: Mapping[str, str],
                payload: bytes) -> None:
    """Write a whole HTTP answer (no ``Server`` header: the stand-ins answer as the services
    do), ``Content-Length`` and ``Date`` set; a HEAD request gets no body."""
    handler.send_response_only(status)
    for k, v in {"Content-Length": str(len(payload)),
                 "Date": email.utils.formatdate(usegmt=True), **headers}.items():
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(payload)


def jwt(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """A JWT as the stand-in token issuers mint them: real header and claims, random bytes for
    a signature (no stand-in checks one; each keeps the tokens it issued)."""
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
                     b64url(secrets.token_bytes(64))])


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, signature not checked; ``{}`` for anything that is not one."""
    try:
        payload = token.split(".")[1]
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def unique(name: str) -> str:
    """A short unique lowercase name usable as bucket or container."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


class ManagedProcess:
    """A child process in its own process group, killed with its children on stop()."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, name: str = "service",
                 user: int | None = None, group: int | None = None) -> None:
        """``user``/``group``: run the child as that uid/gid (root only; supplementary groups
        are dropped), for servers that refuse to run as root, like PostgreSQL."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"cloudtrack-{name}-"))
        self.log = self.workdir / "service.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self._logf = open(self.log, "wb")
        # Popen switches identity in the child itself: no preexec_fn, which is unsafe in threads.
        switch = user is not None or group is not None
        self.proc = subprocess.Popen(
            list(argv), env=full_env, cwd=str(cwd) if cwd else None, stdout=self._logf,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            user=user, group=group, extra_groups=[] if switch else None,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._logf.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


PYTHON = sys.executable


class StorageService(abc.ABC):
    """A running object store a cloudtrack URI can point at."""

    name: str

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @property
    @abc.abstractmethod
    def env(self) -> dict[str, str]:
        """Environment variables a client process needs to reach this service."""

    @abc.abstractmethod
    def new_store(self, name: str = "store") -> str:
        """Create a fresh, empty bucket/container and return a store URI with a prefix."""

    def drop_store(self, uri: str) -> None:  # noqa: B027 - most services need nothing
        """Free what a store from :meth:`new_store` holds, where holding it slows the whole
        service (Azurite); a test calls it when done with the store."""

    @abc.abstractmethod
    def missing_store_uri(self) -> str:
        """A store URI whose bucket/container does not exist."""

    @abc.abstractmethod
    def bad_credentials_env(self) -> dict[str, str]:
        """``env`` with credentials the service rejects."""

    def __enter__(self) -> StorageService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
