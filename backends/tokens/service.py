"""A bearer-token gate in front of an HTTP service (a real ``mlflow server``), for token tests.

:class:`TokenGate` is a threaded HTTP/1.1 reverse proxy on ``127.0.0.1:<free port>``.  It
issues short-lived JWTs and lets through only requests that carry one, as an OAuth-protected
MLflow deployment (an API gateway or an ingress with a token check) does:

``POST /_token``
    Issues a token.  The client secret given at construction goes in the header
    ``X-Client-Secret``, or in the body as JSON ``{"client_secret": …}`` or form
    ``client_secret=…``.  Answers ``{"access_token": …, "token_type": "Bearer",
    "expires_in": <lifetime>}``; a missing or wrong secret gets 401.
Anything else
    Needs ``Authorization: Bearer <token>``: a JWT signed HS256 with a key made per gate, with
    ``iss`` (the gate's URL), ``sub``, ``iat``, ``exp`` (``iat`` + ``lifetime``, fractional
    seconds as RFC 7519 allows) and ``jti``.  A missing, invalid (bad format, signature,
    algorithm) or expired token gets 401 with a body like MLflow's own
    (``{"error_code": "UNAUTHENTICATED", "message": …}``) and ``WWW-Authenticate: Bearer``
    (with ``error="invalid_token"`` for a token that was there, as RFC 6750 says).  A request
    body is read and dropped first, so a client still sending an upload sees the 401, not a
    reset; with ``Expect: 100-continue`` the 401 comes instead of ``100 Continue``.  A valid
    token: the request goes upstream — method, path, query, headers without the hop-by-hop ones
    and without ``Authorization``, body streamed in 1 MiB pieces — on a connection of its own,
    and the answer is relayed as it comes.  An upstream that cannot be reached gets 502.

Counters (:meth:`TokenGate.stats`, thread-safe): tokens issued, 401s by reason (``missing``,
``invalid``, ``expired``, and ``client_secret`` for ``/_token``), requests forwarded (upstream
answered), upstream failures.

The token command (what a user configures for cloudtrack): ``python -m backends.tokens issue
--url <gate URL> --secret-file <path>`` prints a fresh token and nothing else
(:meth:`TokenGate.token_command`; the secret sits in a 0600 file in the gate's temporary
directory, never on the command line).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import http.server
import json
import logging
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends._common import LOOPBACK

log = logging.getLogger("backends.tokens")

#: Bytes read or written at a time.
CHUNK = 1 << 20

#: Why a request got 401; ``client_secret`` is ``POST /_token`` with a missing or wrong secret.
REASONS = ("missing", "invalid", "expired", "client_secret")

TOKEN_PATH = "/_token"

#: The header ``POST /_token`` takes the client secret from (or the body's ``client_secret``).
SECRET_HEADER = "X-Client-Secret"

# RFC 9110 7.6.1; plus Proxy-Connection, which old clients still send.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
# Not relayed as they came: the gate frames bodies itself, authenticates the request itself,
# handles 100-continue itself, and http.client writes the upstream's Host.
_NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "host", "content-length", "expect"}

# A rejected request's body is read and dropped up to this much; a bigger one closes the
# connection after the 401 instead.
_DRAIN_LIMIT = 64 * CHUNK
_TOKEN_BODY_LIMIT = 64 * 1024

_THIS_DIR = Path(__file__).resolve().parent


class TokenGateError(RuntimeError):
    """The gate could not be started, or was used before it was."""


class _ClientGone(Exception):
    """The client's request body could not be read to its end: answer nothing, close."""


class TokenRejected(Exception):
    """A bearer token the gate does not accept; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GateStats:
    """What a gate did since it started or was :meth:`~TokenGate.reset_stats`."""

    issued: int = 0
    forwarded: int = 0
    #: 401s answered, by reason (every one of :data:`REASONS`, zeros included)
    unauthorized: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    upstream_errors: int = 0

    @property
    def rejected(self) -> int:
        """Every 401 answered."""
        return sum(self.unauthorized.values())


# -- JWT (HS256) ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims: Mapping[str, Any], key: bytes) -> str:
    """A compact JWS of ``claims`` signed HS256 with ``key``."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{_b64(hmac.new(key, signing_input, hashlib.sha256).digest())}"


def verify_jwt(token: str, key: bytes, now: float | None = None) -> dict[str, Any]:
    """The claims of ``token`` if it is HS256-signed with ``key`` and not expired; otherwise
    :class:`TokenRejected` (``invalid`` or ``expired``).  Expired means ``now >= exp``."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("invalid", "the bearer token is not a JWT (header.payload.signature)")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise TokenRejected("invalid", "the bearer token is not valid base64url JSON") from None
    # Checked before the signature: "none" or an asymmetric algorithm is never accepted.
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenRejected("invalid", "the bearer token is not signed HS256")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenRejected("invalid", "the bearer token's signature does not verify")
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
        raise TokenRejected("invalid", "the bearer token has no exp claim")
    now = time.time() if now is None else now
    if now >= claims["exp"]:
        raise TokenRejected("expired", f"the bearer token expired {now - claims['exp']:.1f}s "
                                       "ago: get a new one")
    return claims


# -- the gate -------------------------------------------------------------------------------


class TokenGate:
    """A token-checking reverse proxy in front of ``upstream`` (``http://host:port[/prefix]``).

    ``lifetime``: seconds a token is valid.  ``client_secret``: what ``POST /_token`` requires
    (random by default).  ``subject``: the ``sub`` claim of the tokens issued.
    ``upstream_timeout``: seconds to connect to, and wait for, the upstream.
    """

    name = "token-gate"

    def __init__(self, upstream: str, *, lifetime: float = 10.0,
                 client_secret: str | None = None, subject: str = "cloudtrack-test",
                 upstream_timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"upstream must be an http(s)://host:port URL, not {upstream!r}")
        if lifetime <= 0:
            raise ValueError(f"lifetime must be positive seconds, not {lifetime}")
        self.upstream = upstream.rstrip("/")
        self._upstream_parts = parsed
        self._upstream_prefix = parsed.path.rstrip("/")
        self.lifetime = float(lifetime)
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.subject = subject
        self.upstream_timeout = upstream_timeout
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.reset_stats()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._root: Path | None = None
        self._connections: set[socket.socket] = set()

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on a free loopback port and write the client secret file."""
        if self._server is not None:
            return
        self._root = Path(tempfile.mkdtemp(prefix="cloudtrack-tokens-"))
        try:
            # O_EXCL + 0600 from the start: the secret is never readable by others, not even
            # between a write and a chmod.
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.client_secret)
            self._server = _Server((LOOPBACK, 0), _Handler, self)
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.1}, daemon=True,
                                            name=f"token-gate-{self.port}")
            self._thread.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop listening, close open connections, remove the secret file; safe twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            with self._lock:
                conns = list(self._connections)
            for conn in conns:  # idle keep-alive connections would otherwise hold threads
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> TokenGate:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where it is ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise TokenGateError("the token gate is not running: start() it first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what an MLflow client uses as its tracking URI."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}{TOKEN_PATH}"

    @property
    def workdir(self) -> Path | None:
        return self._root

    @property
    def secret_file(self) -> Path:
        """The client secret, in a 0600 file (exists while the gate runs)."""
        if self._root is None:
            raise TokenGateError("the token gate is not running: start() it first")
        return self._root / "client-secret"

    def token_command(self, python: str = sys.executable) -> list[str]:
        """The argv of a command that prints a fresh token on stdout.

        The script is named by its path rather than ``-m backends.tokens``, so it runs from
        any working directory without ``PYTHONPATH`` (it uses the standard library only)."""
        return [python, str(_THIS_DIR / "__main__.py"), "issue", "--url", self.url,
                "--secret-file", str(self.secret_file)]

    def token_command_line(self, python: str = sys.executable) -> str:
        """:meth:`token_command` as one shell-quoted string."""
        return shlex.join(self.token_command(python))

    # -- tokens -----------------------------------------------------------------------------

    def issue(self, *, subject: str | None = None, lifetime: float | None = None) -> str:
        """A token, as ``POST /_token`` issues it (counted as issued).  A ``lifetime`` of
        zero or less gives one that is already expired."""
        now = time.time()
        claims = {"iss": self.url if self._server is not None else "token-gate",
                  "sub": subject or self.subject, "iat": round(now, 3),
                  "exp": round(now + (self.lifetime if lifetime is None else lifetime), 3),
                  "jti": uuid.uuid4().hex}
        self._count("issued")
        return sign_jwt(claims, self._key)

    def revoke(self) -> None:
        """Refuse every token issued so far (a new signing key), as a server does when a
        session is revoked before its expiry: clients must fetch a new token on a 401."""
        self._key = secrets.token_bytes(32)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this gate accepts now, or :class:`TokenRejected`."""
        return verify_jwt(token, self._key)

    # -- counters ---------------------------------------------------------------------------

    def stats(self) -> GateStats:
        with self._lock:
            c = dict(self._counts)
        return GateStats(issued=c["issued"], forwarded=c["forwarded"],
                         unauthorized={r: c[r] for r in REASONS},
                         upstream_errors=c["upstream_errors"])

    def reset_stats(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(("issued", "forwarded", "upstream_errors", *REASONS), 0)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _upstream_connection(self) -> http.client.HTTPConnection:
        p = self._upstream_parts
        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        return cls(p.hostname or LOOPBACK, p.port, timeout=self.upstream_timeout)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler],
                 gate: TokenGate) -> None:
        self.gate = gate
        super().__init__(address, handler)


_UNDECIDED = object()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One client connection; requests on it one after the other (keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add 40 ms to small answers
    timeout = 120  # an idle keep-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.gate._track(self.connection, True)

    def finish(self) -> None:
        self.server.gate._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def gate(self) -> TokenGate:
        return self.server.gate

    # -- dispatch ---------------------------------------------------------------------------

    def parse_request(self) -> bool:
        self._decision: object = _UNDECIDED
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # Refuse before the client sends a body it would send for nothing.
        if self._target_path() != TOKEN_PATH and self._authenticate() is not None:
            self.close_connection = True
            self._reject()
            return False
        return super().handle_expect_100()

    def _handle(self) -> None:
        try:
            if self._target_path() == TOKEN_PATH:
                return self._token_endpoint()
            if self._authenticate() is not None:
                # Drained first so that a client still sending its body reads the 401.
                if not self._drain():
                    self.close_connection = True
                return self._reject()
            self._forward()
        except (BrokenPipeError, ConnectionResetError):
            # The client left mid-answer: nothing to tell it, and not the gate's failure.
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def _target_path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    # -- authentication ---------------------------------------------------------------------

    def _authenticate(self) -> TokenRejected | None:
        """None for a valid token, else why not (counted once per request)."""
        if self._decision is _UNDECIDED:
            self._decision = self._check_token()
            if isinstance(self._decision, TokenRejected):
                self.gate._count(self._decision.reason)
        return self._decision  # type: ignore[return-value]

    def _check_token(self) -> TokenRejected | None:
        header = self.headers.get("Authorization")
        if not header:
            return TokenRejected("missing", "this server needs a bearer token "
                                            "(Authorization: Bearer <token>)")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return TokenRejected("missing", f"this server needs a bearer token, not "
                                            f"{scheme or 'an empty'} authorization")
        try:
            self.gate.verify(token.strip())
        except TokenRejected as e:
            return e
        return None

    def _reject(self) -> None:
        rejection = self._decision
        assert isinstance(rejection, TokenRejected)
        challenge = 'Bearer realm="cloudtrack-test"'
        if rejection.reason != "missing":
            description = str(rejection).replace('"', "'")
            challenge += f', error="invalid_token", error_description="{description}"'
        self._json(401, {"error_code": "UNAUTHENTICATED", "message": str(rejection)},
                   {"WWW-Authenticate": challenge})

    def _token_endpoint(self) -> None:
        if self.command != "POST":
            self._drain()
            return self._json(405, {"error_code": "BAD_REQUEST",
                                    "message": f"{self.command} {TOKEN_PATH}: use POST"},
                              {"Allow": "POST"})
        try:
            body = b"".join(self._body(limit=_TOKEN_BODY_LIMIT))
        except _ClientGone as e:
            self.close_connection = True
            return self._json(400, {"error_code": "BAD_REQUEST", "message": str(e)})
        given = self.headers.get(SECRET_HEADER) or _secret_from_body(
            body, self.headers.get("Content-Type", ""))
        if not given or not hmac.compare_digest(given.encode(),
                                                self.gate.client_secret.encode()):
            self.gate._count("client_secret")
            what = "wrong" if given else "missing"
            return self._json(401, {"error_code": "UNAUTHENTICATED",
                                    "message": f"the client secret is {what}: send it in the "
                                               f"{SECRET_HEADER} header"})
        token = self.gate.issue()
        self._json(200, {"access_token": token, "token_type": "Bearer",
                         "expires_in": self.gate.lifetime},
                   {"Cache-Control": "no-store"})

    # -- bodies -----------------------------------------------------------------------------

    def _body(self, limit: int | None = None) -> Iterator[bytes]:
        """The request body in pieces, de-chunked; :class:`_ClientGone` when it cannot be read
        (closed, timed out, bad chunk framing) or passes ``limit`` bytes."""
        seen = 0
        pieces = self._raw_body()
        while True:
            try:
                piece = next(pieces)
            except StopIteration:
                return
            except (OSError, ValueError) as e:
                raise _ClientGone(f"reading the request body failed: {e}") from e
            seen += len(piece)
            if limit is not None and seen > limit:
                raise _ClientGone(f"request body over {limit} bytes")
            yield piece

    def _raw_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise _ClientGone("the client closed inside a chunk")
                    remaining -= len(data)
                    yield data
                self.rfile.readline(3)  # the CRLF after the chunk
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                raise _ClientGone(f"the client closed {remaining} bytes before the end")
            remaining -= len(data)
            yield data

    def _drain(self) -> bool:
        """Read and drop the body; False when it was too big or broken (close after)."""
        try:
            for _ in self._body(limit=_DRAIN_LIMIT):
                pass
        except _ClientGone:
            return False
        return True

    # -- answers ----------------------------------------------------------------------------

    def _json(self, status: int, body: Mapping[str, Any],
              headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(dict(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- forwarding -------------------------------------------------------------------------

    def _forward(self) -> None:
        gate = self.gate
        connection_tokens = {t.strip().lower() for v in self.headers.get_all("Connection", [])
                             for t in v.split(",")}
        upstream = gate._upstream_connection()
        try:
            try:
                upstream.putrequest(self.command, gate._upstream_prefix + self.path,
                                    skip_accept_encoding=True)
                for name, value in self.headers.items():
                    lower = name.lower()
                    if lower not in _NOT_FORWARDED and lower not in connection_tokens:
                        upstream.putheader(name, value)
                upstream.putheader("X-Forwarded-For", self.client_address[0])
                chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
                if chunked:
                    upstream.putheader("Transfer-Encoding", "chunked")
                elif self.headers.get("Content-Length") is not None:
                    upstream.putheader("Content-Length", self.headers["Content-Length"])
                upstream.endheaders()
                for piece in self._body():
                    upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    upstream.send(b"0\r\n\r\n")
                response = upstream.getresponse()
            except _ClientGone:
                self.close_connection = True  # nothing sensible to answer mid-body
                return
            except (OSError, http.client.HTTPException, ValueError) as e:
                gate._count("upstream_errors")
                # The request body may be half read: this connection cannot carry another.
                self.close_connection = True
                return self._json(502, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                        "message": f"the token gate could not reach "
                                                   f"{gate.upstream}: {type(e).__name__}: {e}"})
            gate._count("forwarded")
            self._relay(response)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        no_body = (self.command == "HEAD" or response.status in (204, 304)
                   or 100 <= response.status < 200)
        length = None if response.chunked else response.getheader("Content-Length")
        self.send_response_only(response.status, response.reason)
        connection_tokens = {t.strip().lower() for v in response.headers.get_all("Connection", [])
                             for t in v.split(",")}
        for name, value in response.headers.items():
            lower = name.lower()
            if lower not in _HOP_BY_HOP and lower != "content-length" \
                    and lower not in connection_tokens:
                self.send_header(name, value)
        if no_body:
            if length is not None:
                self.send_header("Content-Length", length)  # HEAD: what GET would send
            self._end_headers()
            return
        if length is not None:
            self.send_header("Content-Length", length)
            self._end_headers()
            while data := response.read(CHUNK):
                self.wfile.write(data)
            return
        # Chunked or close-delimited upstream: chunked to an HTTP/1.1 client, else up to close.
        if self.request_version == "HTTP/1.1":
            self.send_header("Transfer-Encoding", "chunked")
            self._end_headers()
            while data := response.read1(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.close_connection = True
            self._end_headers()
            while data := response.read1(CHUNK):
                self.wfile.write(data)

    def _end_headers(self) -> None:
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()


def _secret_from_body(body: bytes, content_type: str) -> str | None:
    if not body:
        return None
    try:
        if "json" in content_type or body.lstrip().startswith(b"{"):
            value = json.loads(body).get("client_secret")
        else:
            value = urllib.parse.parse_qs(body.decode()).get("client_secret", [None])[0]
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None
