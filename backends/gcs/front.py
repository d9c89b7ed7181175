"""A loopback HTTP front for a GCS emulator that adds what emulators leave out: OAuth2
authentication, project permissions and atomic generation preconditions.

Neither fake-gcs-server nor gcp-storage-emulator checks credentials, and fake-gcs-server 1.54
honours ``ifGenerationMatch`` on multipart uploads only (simple and resumable uploads ignore
it), so a test that relies on them proves nothing.  This front:

* serves ``POST /token``: the JWT-bearer grant google-auth sends for a service-account key,
  verified (RS256) against the public keys in the registry the service writes; it answers
  with an opaque access token that carries its own expiry and HMAC (see ``auth.py``);
* checks ``Authorization: Bearer`` on every storage request (401 for a missing, unknown or
  expired token) and the token's project against the bucket's (403 naming the permission);
* serialises every write to an object behind a per-object lock and checks
  ``ifGenerationMatch`` / ``ifGenerationNotMatch`` against the object's current generation
  inside that lock, for every upload kind (multipart, media, each chunk of a resumable
  upload), deletes, copies and conditional reads: 412 when they do not hold;
* forwards everything else unchanged (Host kept, so upload and media links point back here),
  streaming bodies both ways.

Only the JSON API is served; batch and XML requests, which could bypass the locks, get 501.
Run: ``python -m backends.gcs.front --port P --upstream http://127.0.0.1:Q --registry FILE``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import select
import socket
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from backends.gcs.auth import Registry, TokenClaims, TokenMinter, unb64url, verify_rs256

log = logging.getLogger("cloudtrack.backends.gcs.front")

PIECE = 1024 * 1024
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "content-length", "host",
              "authorization"}
GRANT_AUDIENCES = ("https://oauth2.googleapis.com/token",
                   "https://www.googleapis.com/oauth2/v4/token")
PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."
LOCK_STRIPES = 512


class Reject(Exception):
    """An answer the front gives itself instead of forwarding."""

    def __init__(self, status: int, message: str, reason: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.extra = extra


@dataclass(frozen=True)
class Conditions:
    if_match: int | None = None
    if_not_match: int | None = None

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> Conditions:
        def one(name: str) -> int | None:
            values = query.get(name)
            if not values:
                return None
            try:
                return int(values[-1])
            except ValueError:
                raise Reject(400, f"Invalid argument for {name}: {values[-1]!r}",
                             "invalid") from None
        return cls(one("ifGenerationMatch"), one("ifGenerationNotMatch"))

    def __bool__(self) -> bool:
        return self.if_match is not None or self.if_not_match is not None

    def hold(self, generation: int) -> bool:
        if self.if_match is not None and self.if_match != generation:
            return False
        return not (self.if_not_match is not None and self.if_not_match == generation)


@dataclass(frozen=True)
class Route:
    """What a storage request touches, as far as authorization and preconditions care."""

    kind: str  # buckets | bucket | objects | object | download | upload | chunk
    bucket: str | None
    obj: str | None
    permission: str
    resource: str  # how GCS names the resource in a 403: "bucket", "object", "project"
    #: The object a write lands on (the destination of a copy), when known from the URL.
    target: tuple[str, str] | None = None


def parse_route(method: str, path: str) -> Route | None:
    parts = path.split("/")
    # Object names are percent-encoded as one segment ('/' -> %2F), so splitting is safe.
    if parts[:4] == ["", "storage", "v1", "b"]:
        rest = parts[4:]
        if not rest or rest == [""]:
            perm = "storage.buckets.create" if method == "POST" else "storage.buckets.list"
            return Route("buckets", None, None, perm, "project")
        bucket = urllib.parse.unquote(rest[0])
        if len(rest) == 1:
            perm = {"GET": "storage.buckets.get", "DELETE": "storage.buckets.delete"}.get(
                method, "storage.buckets.update")
            return Route("bucket", bucket, None, perm, "bucket")
        if rest[1] != "o":
            return None
        if len(rest) == 2 or rest[2] == "":
            perm = "storage.objects.list" if method == "GET" else "storage.objects.create"
            return Route("objects", bucket, None, perm, "bucket")
        name = urllib.parse.unquote(rest[2])
        action = rest[3:]
        if not action:
            perm = {"GET": "storage.objects.get", "DELETE": "storage.objects.delete"}.get(
                method, "storage.objects.update")
            return Route("object", bucket, name, perm, "object", target=(bucket, name))
        if action[0] in ("rewriteTo", "copyTo") and len(action) == 5:
            dest = (urllib.parse.unquote(action[2]), urllib.parse.unquote(action[4]))
            return Route("object", bucket, name, "storage.objects.create", "object", target=dest)
        if action == ["compose"]:
            return Route("object", bucket, name, "storage.objects.create", "object",
                         target=(bucket, name))
        perm = "storage.objects.get" if method == "GET" else "storage.objects.update"
        return Route("object", bucket, name, perm, "object")
    if parts[:5] == ["", "download", "storage", "v1", "b"] and len(parts) == 8 \
            and parts[6] == "o":
        bucket, name = urllib.parse.unquote(parts[5]), urllib.parse.unquote(parts[7])
        return Route("download", bucket, name, "storage.objects.get", "object",
                     target=(bucket, name))
    if parts[:5] == ["", "upload", "storage", "v1", "b"] and len(parts) == 7 \
            and parts[6] == "o":
        bucket = urllib.parse.unquote(parts[5])
        kind = "chunk" if method == "PUT" else "upload"
        return Route(kind, bucket, None, "storage.objects.create", "object")
    return None


def multipart_name(content_type: str, body: bytes) -> str | None:
    """The object name in the JSON metadata part of a multipart/related upload."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return None
    parts = body.split(b"--" + boundary.encode())
    if len(parts) < 2:
        return None
    _headers, _, payload = parts[1].partition(b"\r\n\r\n")
    try:
        name = json.loads(payload.strip()).get("name")
    except ValueError:
        return None
    return name if isinstance(name, str) else None


class Body:
    """The request body, read at most once, streamed or whole; drained before any answer."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.rfile = handler.rfile
        length = handler.headers.get("Content-Length")
        self.chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        self.length: int | None = int(length) if length is not None and not self.chunked else None
        self.present = self.chunked or bool(self.length)
        self._left = self.length or 0
        self._done = not self.present
        self._buffer: bytes | None = None

    def pieces(self) -> Iterator[bytes]:
        if self._buffer is not None:
            yield self._buffer
            return
        if self._done:
            return
        if self.chunked:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                left = size
                while left:
                    data = self.rfile.read(min(left, PIECE))
                    if not data:
                        raise ConnectionError("client closed mid-body")
                    left -= len(data)
                    yield data
                self.rfile.readline()
        else:
            while self._left:
                data = self.rfile.read(min(self._left, PIECE))
                if not data:
                    raise ConnectionError("client closed mid-body")
                self._left -= len(data)
                yield data
        self._done = True

    def read(self) -> bytes:
        if self._buffer is None:
            self._buffer = b"".join(self.pieces())
            self.length = len(self._buffer)
            self.chunked = False
        return self._buffer

    def drain(self) -> None:
        if not self._done and self._buffer is None:
            for _ in self.pieces():
                pass


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int, upstream: str, registry: Path) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.registry = Registry(registry)
        self.registry_lock = threading.Lock()
        self.minter = TokenMinter(self.registry.secret)
        self.object_locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self.state_lock = threading.Lock()
        #: upload_id -> (bucket, object, conditions) of resumable sessions begun here.
        self.sessions: dict[str, tuple[str, str, Conditions]] = {}
        #: bucket -> project it was created in through this front.
        self.bucket_projects: dict[str, str] = {}

    def object_lock(self, bucket: str, name: str) -> threading.Lock:
        # Striped by a stable hash: a lock per object without a table that grows forever.
        return self.object_locks[zlib.crc32(f"{bucket}\0{name}".encode()) % LOCK_STRIPES]


class NoDelayConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        # Headers and body go out in separate writes; Nagle would hold the body back until
        # the emulator's delayed ACK (40 ms a request).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # same reason, towards the client
    server: FrontServer
    _up: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._up is not None:
                self._up.close()

    def do_GET(self) -> None:
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    # -- entry -----------------------------------------------------------------------------

    def dispatch(self) -> None:
        body = Body(self)
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path == "/token" and self.command == "POST":
                self.token(body)
                return
            route = parse_route(self.command, url.path)
            if route is None:
                raise Reject(501, f"{self.command} {url.path} is not served by the cloudtrack "
                             "GCS emulator front (JSON API only; no batch or XML API)",
                             "notImplemented")
            claims = self.authenticate(route)
            self.authorize(route, claims, query)
            self.storage(route, query, body, claims)
        except Reject as r:
            body.drain()
            self.send_error_json(r)
        except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
            log.warning("%s %s failed: %s", self.command, url.path, e)
            self.close_connection = True
            if self._up is not None:
                self._up.close()  # a half-read response must not meet the next request
            try:
                body.drain()
                self.send_error_json(Reject(502, f"upstream emulator failed: {e}", "backendError"))
            except OSError:
                pass

    # -- OAuth2 token endpoint -----------------------------------------------------------------

    def token(self, body: Body) -> None:
        form = urllib.parse.parse_qs(body.read().decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != JWT_GRANT:
            self.send_json(400, {"error": "unsupported_grant_type",
                                 "error_description": "Only the JWT-bearer grant is served."})
            return
        try:
            head_b64, payload_b64, sig_b64 = form.get("assertion", [""])[0].split(".")
            header = json.loads(unb64url(head_b64))
            claims = json.loads(unb64url(payload_b64))
            signature = unb64url(sig_b64)
        except ValueError:
            self.invalid_grant("Invalid JWT: malformed assertion.")
            return
        with self.server.registry_lock:
            key = self.server.registry.find(header.get("kid"), claims.get("iss"))
        if header.get("alg") != "RS256" or key is None:
            self.invalid_grant("Invalid grant: account not found")
            return
        if not verify_rs256(key.public_pem, f"{head_b64}.{payload_b64}".encode(), signature):
            self.invalid_grant("Invalid JWT Signature.")
            return
        now = time.time()
        try:
            iat, exp = float(claims["iat"]), float(claims["exp"])
        except (KeyError, TypeError, ValueError):
            self.invalid_grant("Invalid JWT: no iat or exp claim.")
            return
        # google-auth always names Google's endpoint as audience, whatever token_uri says.
        if claims.get("iss") != key.email or claims.get("aud") not in GRANT_AUDIENCES:
            self.invalid_grant("Invalid JWT: issuer or audience does not match.")
            return
        if exp < now - 60 or iat > now + 60 or exp - iat > 3600:
            self.invalid_grant("Invalid JWT: Token must be a short-lived token (60 minutes) "
                               "and in a reasonable timeframe.")
            return
        token = self.server.minter.mint(key.email, key.project, now + key.token_ttl)
        self.send_json(200, {"access_token": token, "expires_in": int(key.token_ttl),
                             "token_type": "Bearer"})

    def invalid_grant(self, description: str) -> None:
        self.send_json(400, {"error": "invalid_grant", "error_description": description})

    # -- authentication and authorization -------------------------------------------------------

    def authenticate(self, route: Route) -> TokenClaims:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Reject(401, f"Anonymous caller does not have {route.permission} access to "
                         f"the Google Cloud Storage {route.resource}. Permission "
                         f"'{route.permission}' denied on resource (or it may not exist).",
                         "required")
        claims = self.server.minter.verify(token.strip())
        if claims is None or claims.expired:
            raise Reject(401, "Invalid Credentials", "authError")
        return claims

    def authorize(self, route: Route, claims: TokenClaims, query: dict[str, list[str]]) -> None:
        if route.kind == "buckets":
            project = query.get("project", [claims.project])[-1]
        elif route.bucket is not None:
            with self.server.state_lock:
                project = self.server.bucket_projects.get(route.bucket, claims.project)
        else:
            return
        if project != claims.project:
            raise Reject(403, f"{claims.email} does not have {route.permission} access to the "
                         f"Google Cloud Storage {route.resource}. Permission "
                         f"'{route.permission}' denied on resource (or it may not exist).",
                         "forbidden")

    # -- storage requests ------------------------------------------------------------------------

    def storage(self, route: Route, query: dict[str, list[str]], body: Body,
                claims: TokenClaims) -> None:
        conditions = Conditions.parse(query)
        if route.kind == "buckets" and self.command == "POST":
            self.create_bucket(body, claims)
            return
        if route.kind == "chunk":
            self.resumable_chunk(query, body)
            return
        if route.kind in ("upload", "objects") and self.command == "POST":
            self.upload(route, query, body, conditions)
            return
        target = route.target
        writes = self.command not in ("GET", "HEAD")
        if target is not None and (writes or conditions):
            with self.server.object_lock(*target):
                self.check(target, conditions)
                self.forward(body)
            return
        self.forward(body)

    def create_bucket(self, body: Body, claims: TokenClaims) -> None:
        try:
            name = json.loads(body.read() or b"{}").get("name")
        except ValueError:
            name = None
        status = self.forward(body)
        if status == 200 and isinstance(name, str):
            with self.server.state_lock:
                self.server.bucket_projects[name] = claims.project

    def upload(self, route: Route, query: dict[str, list[str]], body: Body,
               conditions: Conditions) -> None:
        assert route.bucket is not None
        upload_type = query.get("uploadType", ["media"])[-1]
        name = query.get("name", [None])[-1]
        content_type = self.headers.get("Content-Type", "")
        if upload_type == "multipart":
            name = multipart_name(content_type, body.read()) or name
        elif name is None and content_type.startswith("application/json"):
            try:
                name = json.loads(body.read() or b"{}").get("name")
            except ValueError:
                name = None
        if not isinstance(name, str) or not name:
            self.forward(body)  # the emulator explains what is missing
            return
        target = (route.bucket, name)
        if upload_type == "resumable":
            # Nothing lands yet: check early, as GCS does, and remember the conditions for
            # the chunk that finalises the object.
            self.check(target, conditions)
            status, location = self.forward(body, want_header="Location")
            upload_id = urllib.parse.parse_qs(
                urllib.parse.urlsplit(location or "").query).get("upload_id", [None])[-1]
            if status == 200 and upload_id:
                with self.server.state_lock:
                    self.server.sessions[upload_id] = (route.bucket, name, conditions)
            return
        with self.server.object_lock(*target):
            self.check(target, conditions)
            self.forward(body)

    def resumable_chunk(self, query: dict[str, list[str]], body: Body) -> None:
        upload_id = query.get("upload_id", [""])[-1]
        with self.server.state_lock:
            session = self.server.sessions.get(upload_id)
        if session is None:
            # Sessions begin here, so an unknown one was never begun, already finished or
            # lost its precondition: forwarding it would let a write skip the lock.
            raise Reject(404, f"No such upload session: {upload_id[:8]}…", "notFound")
        bucket, name, conditions = session
        # Any chunk may be the one that finalises the object, so each holds the lock and
        # re-checks: the check and the commit are then one step for every other writer.
        with self.server.object_lock(bucket, name):
            try:
                self.check((bucket, name), conditions)
            except Reject:
                with self.server.state_lock:
                    self.server.sessions.pop(upload_id, None)
                raise
            status = self.forward(body)
        if status in (200, 201):
            with self.server.state_lock:
                self.server.sessions.pop(upload_id, None)

    def check(self, target: tuple[str, str], conditions: Conditions) -> None:
        if not conditions:
            return
        generation = self.current_generation(*target)
        if not conditions.hold(generation):
            raise Reject(412, PRECONDITION_MESSAGE, "conditionNotMet",
                         locationType="header", location="If-Match")

    def current_generation(self, bucket: str, name: str) -> int:
        path = (f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
                f"{urllib.parse.quote(name, safe='')}?fields=generation")
        conn = self.upstream()
        conn.request("GET", path, headers={"Host": self.headers.get("Host", "127.0.0.1")})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status == 404:
            return 0
        if resp.status != 200:
            raise http.client.HTTPException(f"generation lookup answered {resp.status}")
        return int(json.loads(data)["generation"])

    # -- forwarding ------------------------------------------------------------------------------

    def upstream(self) -> http.client.HTTPConnection:
        conn = self._up
        if conn is not None and conn.sock is not None:
            # An idle keep-alive socket that is readable has been closed by the emulator.
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if readable:
                conn.close()
        if conn is None:
            conn = self._up = NoDelayConnection(*self.server.upstream, timeout=600)
        return conn

    def forward(self, body: Body, want_header: str | None = None) -> Any:
        conn = self.upstream()
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                conn.putheader(key, value)
        conn.putheader("Host", self.headers.get("Host", "127.0.0.1"))
        if body.chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif body.present or self.command in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(body.length or 0))
        conn.endheaders()
        for piece in body.pieces():
            if body.chunked:
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                conn.send(piece)
        if body.chunked:
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        self.relay(resp)
        if want_header is not None:
            return resp.status, resp.getheader(want_header)
        return resp.status

    def relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        length = resp.getheader("Content-Length")
        bodiless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if bodiless:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            resp.read()
            return
        if length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            while data := resp.read(PIECE):
                self.wfile.write(data)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while data := resp.read(PIECE):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    # -- answers of our own -----------------------------------------------------------------------

    def send_json(self, status: int, payload: dict[str, Any],
                  headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(self, r: Reject) -> None:
        error = {"message": r.message, "domain": "global", "reason": r.reason, **r.extra}
        headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'} \
            if r.status == 401 else None
        self.send_json(r.status, {"error": {"code": r.status, "message": r.message,
                                            "errors": [error]}}, headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the emulator, http://127.0.0.1:PORT")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = FrontServer(args.port, args.upstream, args.registry)
    log.warning("GCS front on 127.0.0.1:%d -> %s", args.port, args.upstream)
    server.serve_forever()


if __name__ == "__main__":
    main()
