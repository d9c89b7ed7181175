"""AzureBlobs' error table, retries, timeouts and client construction.

Azurite cannot answer 5xx, 429, RBAC refusals or hierarchical-namespace listings, so these
tests put a tiny scripted HTTP server in its place: the real SDK sends real requests and parses
real responses; only the answers are scripted.  Everything Azurite can produce is tested
against Azurite (tests/blobs/test_conformance.py and the other tests of this folder).
"""

from __future__ import annotations

import base64
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from cloudtrack.blobs.azure import DATA_ROLE, AzureBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import RetryPolicy

URI = "wasbs://box@devstoreaccount1.blob.core.windows.net/mlruns"
KEY = base64.b64encode(os.urandom(64)).decode()
ONE_ATTEMPT = RetryPolicy(attempts=1)


@dataclass
class Reply:
    status: int
    code: str = ""
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def error(status: int, code: str, message: str = "scripted", **headers: str) -> Reply:
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>") if code else ""
    return Reply(status, code, body, {"Content-Type": "application/xml", **headers})


def created(etag: str = "0x8DC0FFEE") -> Reply:
    return Reply(201, headers={"ETag": f'"{etag}"',
                               "Last-Modified": "Wed, 26 Nov 2025 08:00:00 GMT"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Scripted

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        replies = self.server.replies
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        time.sleep(reply.delay)
        body = reply.body.encode()
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if reply.code:
            self.send_header("x-ms-error-code", reply.code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Scripted(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = [error(500, "InternalError")]
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def env(self) -> dict[str, str]:
        endpoint = f"http://127.0.0.1:{self.server_address[1]}/devstoreaccount1"
        return {"AZURE_STORAGE_CONNECTION_STRING":
                f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
                f"BlobEndpoint={endpoint};"}


@pytest.fixture
def stub() -> Iterator[_Scripted]:
    server = _Scripted()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def open_stub(stub: _Scripted, retry: RetryPolicy = ONE_ATTEMPT, **env: str) -> AzureBlobs:
    return AzureBlobs(resolve(URI, {**stub.env, **env}), retry=retry)


# -- the error table -------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "expected"), [
    (error(404, "BlobNotFound"), BlobNotFound),
    (error(404, "ContainerNotFound"), ContainerNotFound),
    (error(401, ""), Unauthenticated),
    (error(403, "AuthenticationFailed"), Unauthenticated),
    (error(400, "InvalidAuthenticationInfo"), Unauthenticated),
    (error(403, "AuthorizationPermissionMismatch"), PermissionDenied),
    (error(403, "AuthorizationFailure", "This request is not authorized to perform this "
                                        "operation."), PermissionDenied),
    (error(403, "KeyBasedAuthenticationNotPermitted"), PermissionDenied),
    (error(403, ""), PermissionDenied),
    (error(429, ""), TransientError),
    (error(500, "InternalError"), TransientError),
    (error(503, "ServerBusy"), TransientError),
    (error(400, "InvalidHeaderValue"), BlobError),
])
def test_error_table(stub: _Scripted, reply: Reply, expected: type[BlobError]) -> None:
    stub.replies = [reply]
    with open_stub(stub) as blobs, pytest.raises(BlobError) as e:
        blobs.get("a/b")
    assert type(e.value) is expected
    assert isinstance(e.value.__cause__, HttpResponseError), "the SDK error is the cause"
    assert "wasbs://box@devstoreaccount1.blob.core.windows.net/mlruns/a/b" in str(e.value)


def test_permission_denied_names_the_role(stub: _Scripted) -> None:
    stub.replies = [error(403, "AuthorizationPermissionMismatch")]
    with open_stub(stub) as blobs, pytest.raises(PermissionDenied) as e:
        blobs.put("k", b"v")
    assert DATA_ROLE in str(e.value)
    assert isinstance(e.value, PermissionError)


@pytest.mark.parametrize(("reply", "if_absent", "expected"), [
    (error(409, "BlobAlreadyExists"), True, AlreadyExists),
    (error(412, "ConditionNotMet"), True, AlreadyExists),
    (error(412, "ConditionNotMet"), False, PreconditionFailed),
])
def test_conditional_writes(stub: _Scripted, reply: Reply, if_absent: bool,
                            expected: type[BlobError]) -> None:
    stub.replies = [reply]
    with open_stub(stub) as blobs, pytest.raises(PreconditionFailed) as e:
        if if_absent:
            blobs.put_if_absent("k", b"v")
        else:
            blobs.put_if_version("k", b"v", "0x8DC0FFEE")
    assert type(e.value) is expected
    headers = stub.requests[0][2]
    if if_absent:
        assert headers.get("If-None-Match") == "*"
    else:
        assert headers.get("If-Match") == '"0x8DC0FFEE"', "versions are sent back quoted"


def test_sdk_does_not_retry_and_retry_after_is_kept(stub: _Scripted) -> None:
    stub.replies = [error(503, "ServerBusy", **{"Retry-After": "7"})]
    with open_stub(stub) as blobs, pytest.raises(TransientError) as e:
        blobs.put("k", b"v")
    assert len(stub.requests) == 1, "the SDK must not retry: cloudtrack.retry does"
    assert e.value.retry_after == 7


def test_messages_carry_the_services_request_id(stub: _Scripted) -> None:
    stub.replies = [error(403, "AuthorizationPermissionMismatch",
                          **{"x-ms-request-id": "5c1f3e9a-0001-0042-7a1b-4f2c00000000"})]
    with open_stub(stub) as blobs, pytest.raises(PermissionDenied) as e:
        blobs.get("k")
    assert "request id 5c1f3e9a-0001-0042-7a1b-4f2c00000000" in str(e.value)
    facts = blobs.error_facts(e.value)
    assert facts is not None and (facts.status, facts.code) == (403,
                                                                 "AuthorizationPermissionMismatch")


def test_transient_errors_are_retried_by_the_base_class(stub: _Scripted) -> None:
    stub.replies = [error(500, "InternalError", **{"Retry-After": "0"}), created("0x8DABC")]
    with open_stub(stub, retry=RetryPolicy(attempts=3, base_delay=0.0)) as blobs:
        assert blobs.put("k", b"v") == "0x8DABC"
    assert [r[0] for r in stub.requests] == ["PUT", "PUT"]
    assert "If-None-Match" not in stub.requests[0][2], "a plain put is unconditional"


def test_secrets_in_service_messages_are_redacted(stub: _Scripted) -> None:
    stub.replies = [error(403, "AuthenticationFailed",
                          "bad request https://x/box/k?sv=2024&amp;sig=SECRETSIG AccountKey=SECRETKEY")]
    with open_stub(stub) as blobs, pytest.raises(Unauthenticated) as e:
        blobs.get("k")
    assert "SECRETSIG" not in str(e.value) and "SECRETKEY" not in str(e.value)
    assert KEY not in str(e.value)


def test_connection_refused_is_transient(stub: _Scripted) -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING": stub.env["AZURE_STORAGE_CONNECTION_STRING"]
           .replace(str(stub.server_address[1]), "9")}
    with AzureBlobs(resolve(URI, env), retry=ONE_ATTEMPT) as blobs:
        with pytest.raises(TransientError) as e:
            blobs.get("k")
    assert isinstance(e.value.__cause__, ServiceRequestError)


def test_read_timeout_comes_from_the_configuration(stub: _Scripted) -> None:
    stub.replies = [Reply(200, delay=3.0)]
    start = time.monotonic()
    with open_stub(stub, CLOUDTRACK_READ_TIMEOUT="0.3") as blobs:
        with pytest.raises(TransientError):
            blobs.get("k")
    assert time.monotonic() - start < 2.5


def test_directories_of_a_hierarchical_namespace_are_not_objects(stub: _Scripted) -> None:
    def blob(name: str, size: int, folder: bool) -> str:
        metadata = "<Metadata><hdi_isfolder>true</hdi_isfolder></Metadata>" if folder else (
            "<Metadata />")
        return (f"<Blob><Name>{name}</Name><Properties><Last-Modified>Wed, 26 Nov 2025 "
                f"08:00:00 GMT</Last-Modified><Etag>0x8D{size}</Etag><Content-Length>{size}"
                f"</Content-Length><BlobType>BlockBlob</BlobType></Properties>{metadata}</Blob>")

    listing = ('<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint='
               '"http://127.0.0.1/devstoreaccount1" ContainerName="box"><Prefix>mlruns/</Prefix>'
               f"<Blobs>{blob('mlruns/dir', 0, True)}{blob('mlruns/dir/file', 3, False)}"
               "</Blobs><NextMarker /></EnumerationResults>")
    stub.replies = [Reply(200, body=listing, headers={"Content-Type": "application/xml"})]
    with open_stub(stub) as blobs:
        listed = list(blobs.list())
    assert [(i.key, i.size, i.version) for i in listed] == [("dir/file", 3, "0x8D3")]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(stub.requests[0][1]).query)
    assert query["include"] == ["metadata"] and query["prefix"] == ["mlruns/"]


# -- client construction ----------------------------------------------------------------------


def test_access_key_signs_for_the_uri_account() -> None:
    with AzureBlobs(resolve(URI, {"AZURE_STORAGE_ACCESS_KEY": KEY})) as blobs:
        assert blobs._service.url.startswith("https://devstoreaccount1.blob.core.windows.net")
        # The SDK turns the AzureNamedKeyCredential into its SharedKey signing policy.
        credential = blobs._service.credential
        assert credential.account_name == "devstoreaccount1"
        assert credential.account_key == KEY


def test_sas_token_signs_without_its_question_mark() -> None:
    with AzureBlobs(resolve(URI, {"AZURE_STORAGE_SAS_TOKEN": "?sv=2024&sig=abc"})) as blobs:
        credential = blobs._service.credential
        assert isinstance(credential, AzureSasCredential)
        assert credential.signature == "sv=2024&sig=abc"


def test_abfss_goes_to_the_blob_endpoint_with_the_credential_chain() -> None:
    from azure.identity import DefaultAzureCredential

    uri = "abfss://box@devstoreaccount1.dfs.core.windows.net/mlruns"
    with AzureBlobs(resolve(uri, {})) as blobs:
        assert blobs._service.url.startswith("https://devstoreaccount1.blob.core.windows.net")
        assert isinstance(blobs._service.credential, DefaultAzureCredential)
