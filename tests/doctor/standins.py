"""Small loopback servers standing in for what no local service produces: a web page, a login
page, another program on the port, a failing server, a TLS server with a private CA, a
black-holed port, and S3/Azure/MLflow look-alikes that answer one specific error (an expired
STS session, a region redirect, a skewed clock, a firewall).  Each answers exactly the bytes the
real thing sends for that case, and nothing more; the tests say which stand-in they use.  And a
forward proxy that carries public names to loopback ports (:class:`TunnelProxy`)."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import select
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

#: (status, headers, body) for one request.
Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[["_Handler"], Reply]


class _Handler(BaseHTTPRequestHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        status, headers, body = self.server.handler(self)
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        if "Date" not in headers:
            headers["Date"] = email.utils.formatdate(time.time() + self.server.clock_offset,
                                                     usegmt=True)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any

    def send_response(self, code: int, message: str | None = None) -> None:
        # No automatic Server/Date headers: each stand-in says exactly what it sends.
        self.log_request(code)
        self.send_response_only(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StandIn(ThreadingHTTPServer):
    """An HTTP(S) server on a free loopback port answering every request with ``handler``."""

    daemon_threads = True

    def __init__(self, handler: Handler, *, tls: tuple[Path, Path] | None = None,
                 clock_offset: float = 0.0) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.handler = handler
        self.clock_offset = clock_offset
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


# -- pages and programs ------------------------------------------------------------------------


def html_page(_: _Handler) -> Reply:
    """A web server's default page, whatever the path (a reverse proxy without MLflow)."""
    body = (b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>"
            b"<body><h1>Welcome to nginx!</h1></body></html>")
    return 200, {"Content-Type": "text/html", "Server": "nginx/1.27.0"}, body


def login_page(req: _Handler) -> Reply:
    """A single-sign-on proxy: every API path redirects to a login form."""
    if req.path.startswith("/login"):
        body = (b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
                b"<form method='post' action='/login'><input name='user'>"
                b"<input type='password' name='password'><button>Sign in</button></form>"
                b"</body></html>")
        return 200, {"Content-Type": "text/html; charset=utf-8"}, body
    target = "/login?rd=" + urllib.parse.quote(req.path, safe="")
    return 302, {"Location": target, "Content-Type": "text/html"}, b""


def empty_forbidden(_: _Handler) -> Reply:
    """macOS's AirPlay Receiver on port 5000: 403 with an empty body to every request."""
    return 403, {"Server": "AirTunes/860.7.1"}, b""


def unavailable(_: _Handler) -> Reply:
    """A proxy in front of a tracking server that is down."""
    return 503, {"Content-Type": "text/plain", "Server": "envoy", "Retry-After": "5"}, \
        b"upstream connect error or disconnect/reset before headers"


def not_found_json(_: _Handler) -> Reply:
    return 404, {"Content-Type": "application/json"}, b'{"detail": "Not Found"}'


# -- S3 look-alikes ----------------------------------------------------------------------------


def _s3_error(code: str, message: str, status: int, extra: str = "",
              headers: dict[str, str] | None = None) -> Handler:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message>{extra}<RequestId>4442587FB7D0A2F9</RequestId>"
            "</Error>").encode()
    sts = (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
           f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
           "<RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>").encode()

    def handler(req: _Handler) -> Reply:
        h = {"Content-Type": "application/xml", "x-amz-request-id": "4442587FB7D0A2F9",
             "Server": "AmazonS3", **(headers or {})}
        if req.command == "POST" and b"Action=" in req.body:
            return status, {**h, "Content-Type": "text/xml"}, sts
        return status, h, body

    return handler


def s3_expired_token() -> Handler:
    """What S3 answers to every request signed with an expired STS session token."""
    return _s3_error("ExpiredToken", "The provided token has expired.", 400,
                     "<Token-0>FQoGZXIvYXdzEHoaD…</Token-0>")


def s3_region_redirect(bucket_region: str = "eu-west-1") -> Handler:
    """What S3 answers when the bucket lives in another region than the request is signed for."""
    return _s3_error("PermanentRedirect", "The bucket you are attempting to access must be "
                     "addressed using the specified endpoint. Please send all future requests "
                     "to this endpoint.", 301,
                     f"<Endpoint>s3.{bucket_region}.amazonaws.com</Endpoint>",
                     {"x-amz-bucket-region": bucket_region})


def s3_skewed_clock() -> Handler:
    """What S3 answers when the request's time is more than 15 minutes off its own."""
    return _s3_error("RequestTimeTooSkewed", "The difference between the request time and the "
                     "current time is too large.", 403, "<MaxAllowedSkewMilliseconds>900000"
                     "</MaxAllowedSkewMilliseconds>")


# -- Azure look-alike --------------------------------------------------------------------------


def azure_firewall() -> Handler:
    """Azure Storage behind a firewall / VNet rule: every request, signed or not, gets 403
    AuthorizationFailure 'This request is not authorized to perform this operation.'"""
    body = ('\ufeff<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationFailure'
            "</Code><Message>This request is not authorized to perform this operation.\n"
            "RequestId:0f1b6c2e-601e-0042-5a3c-3f1c4e000000\nTime:2024-01-01T00:00:00.0000000Z"
            "</Message></Error>").encode()

    def handler(req: _Handler) -> Reply:
        return 403, {"Content-Type": "application/xml", "Server": "Windows-Azure-Blob/1.0 "
                     "Microsoft-HTTPAPI/2.0", "x-ms-request-id": "0f1b6c2e-601e-0042",
                     "x-ms-error-code": "AuthorizationFailure", "x-ms-version": "2025-01-05"}, body
    return handler


# -- an MLflow server behind a token-checking proxy ----------------------------------------------


def jwt(exp: float) -> str:
    """An (unsigned) JWT with this expiry, as OIDC proxies issue them."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return ".".join([part({"alg": "RS256", "typ": "JWT"}),
                     part({"sub": "ci-bot", "exp": int(exp), "iat": int(time.time()) - 60}),
                     base64.urlsafe_b64encode(b"signature-not-checked").rstrip(b"=").decode()])


def token_mlflow(*, databricks_style: bool = False) -> Handler:
    """An MLflow REST API behind a proxy that checks bearer JWTs (the local ``mlflow server``
    only does basic auth).  Expired or malformed tokens get 401 (or Databricks' 403 JSON)."""

    def handler(req: _Handler) -> Reply:
        auth = req.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        ok = False
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            ok = float(claims["exp"]) > time.time()
        except (IndexError, ValueError, KeyError):
            ok = False
        if not ok:
            if databricks_style:
                return 403, {"Content-Type": "application/json"}, json.dumps(
                    {"error_code": "403", "message": "Invalid access token."}).encode()
            return 401, {"Content-Type": "application/json", "WWW-Authenticate": "Bearer"}, \
                json.dumps({"error_code": "UNAUTHENTICATED",
                            "message": "Token is expired or invalid"}).encode()
        path = urllib.parse.urlsplit(req.path).path
        replies: dict[str, object] = {
            "/api/2.0/mlflow/experiments/search": {"experiments": [{"experiment_id": "0",
                                                                    "name": "Default"}]},
            "/api/3.0/mlflow/server-info": {"store_type": "SqlStore"},
            "/api/2.0/mlflow/experiments/get": {"experiment": {
                "experiment_id": "0", "name": "Default", "artifact_location": "mlflow-artifacts:/0",
                "lifecycle_stage": "active"}},
            "/api/2.0/mlflow/runs/create": {"run": {"info": {"run_id": "0123456789abcdef"}}},
            "/api/2.0/mlflow/runs/delete": {},
            "/api/2.0/mlflow-artifacts/artifacts": {"files": []},
        }
        if path == "/version":
            return 200, {"Content-Type": "text/plain"}, b"3.17.2"
        if path in replies:
            return 200, {"Content-Type": "application/json"}, json.dumps(replies[path]).encode()
        return 404, {"Content-Type": "application/json"}, b'{"error_code": "ENDPOINT_NOT_FOUND"}'

    return handler


# -- sockets -------------------------------------------------------------------------------


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never answers:
    what a dropped or hung path looks like once the handshake is through."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        s.listen(128)
        yield int(s.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nxdomain_dns(port: int = 53) -> Iterator[bool]:
    """A DNS server on 127.0.0.1 answering NXDOMAIN to every query; yields False when the port
    cannot be bound (then queries to it are refused, which resolves nothing either)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, port))
    except OSError:
        yield False
        return
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            if len(query) < 12:
                continue
            # Same id and question; flags: response, recursion available, RCODE 3 (NXDOMAIN).
            reply = query[:2] + b"\x81\x83" + query[4:6] + b"\x00\x00\x00\x00\x00\x00" + query[12:]
            with contextlib.suppress(OSError):
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join(2)
        sock.close()


# -- a forward proxy that reaches public names on loopback ----------------------------------------


class _TunnelHandler(socketserver.BaseRequestHandler):
    server: TunnelProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        method, target = [*line, "", ""][:2]
        self.server.seen.append(target)
        port = self.server.routes.get(target.lower())
        if method != "CONNECT" or port is None:
            # Nothing leaves this machine: every other destination is refused, as a proxy
            # with an allow-list refuses it.
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            return
        upstream = socket.create_connection((LOOPBACK, port), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pair = {client: upstream, upstream: client}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [], 30)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except OSError:
            return
        finally:
            upstream.close()


class TunnelProxy(socketserver.ThreadingTCPServer):
    """An HTTPS forward proxy (``CONNECT``) on loopback whose allow-list maps ``host:443`` to
    loopback ports: clients reach services by their public names (``login.microsoftonline.com``,
    ``adb-….azuredatabricks.net``) through ``HTTPS_PROXY``, the way a corporate proxy carries
    them, with no name lookup and no packet leaving the machine."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, routes: dict[str, int]) -> None:
        super().__init__((LOOPBACK, 0), _TunnelHandler)
        self.routes = {k.lower(): v for k, v in routes.items()}
        #: Every CONNECT target asked for, allowed or not.
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"

    def __enter__(self) -> TunnelProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
