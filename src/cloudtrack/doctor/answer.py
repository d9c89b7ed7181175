"""Who answers at an endpoint: one request, and whether the answer is the service expected
(S3, Azure Blob Storage, the GCS JSON API, an MLflow server) or a web page, a login page,
another program, a failing server.  The ``http`` layer of every remote backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cloudtrack.config import redact_uri
from cloudtrack.doctor import net
from cloudtrack.doctor.core import Probe, ProbeTimeout
from cloudtrack.errors import CloudtrackError

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, header names in lower case."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    url: str = ""
    redirects: tuple[str, ...] = ()
    #: The service's error code, when the answer carried one (S3's, Azure's x-ms-error-code).
    code: str = ""

    @classmethod
    def of(cls, response: Any) -> Answer:
        """The answer of a ``requests.Response``."""
        headers = {k.lower(): v for k, v in response.headers.items()}
        return cls(int(response.status_code), headers, bytes(response.content[:65536]),
                   str(response.url),
                   tuple(str(r.headers.get("Location") or r.url) for r in response.history),
                   headers.get("x-ms-error-code", ""))

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def html(self) -> bool:
        head = self.body[:512].lstrip().lower()
        return "html" in self.headers.get("content-type", "") or head.startswith(
            (b"<!doctype html", b"<html"))

    @property
    def text(self) -> str:
        return " ".join(self.body[:300].decode("utf-8", "replace").split())

    @property
    def server(self) -> str:
        return self.headers.get("server", "")


def unsigned_request(p: Probe, url: str, verify: bool | str) -> Callable[[], Answer]:
    """A GET of ``url`` without credentials, through the environment's proxies."""
    return lambda: Answer.of(net.http_request("GET", url, environ=p.environ, verify=verify,
                                              timeout=p.step_timeout()))


@dataclass(frozen=True)
class Service:
    """What the expected service is, and how to tell it."""

    #: As the report names it: ``S3``, ``Azure Blob Storage`` …
    name: str
    #: True when an answer comes from this service.
    recognise: Callable[[Answer], bool]
    #: What a foreign answer lacks, for the report (``no x-ms-* headers``).
    marks: str
    #: What the request was, for the report (``HEAD bucket``, ``unsigned request``).
    request: str
    #: What to do about a 5xx, and about an answer of something else.
    server_error_fix: str
    mismatch_fix: str


def call_endpoint(p: Probe, send: Callable[[], T], *, what: str, shown: str,
                  hints: net.TlsHints,
                  timeout_fix: str = "check the endpoint's health and any proxy in between",
                  network_fix: str = "check the endpoint and the network") -> T:
    """``send()``, bounded; a timeout or a network failure ends the chain with its cause."""
    try:
        return p.call(send, what=what)
    except ProbeTimeout as e:
        p.fail("http.answer", "http", "network-timeout",
               f"{e}: {shown} accepted the connection but did not answer", timeout_fix)
    except Exception as e:
        failure = net.transport_failure(e, shown)
        if failure is None:
            raise
        p.fail("http.answer" if failure.layer == "http" else failure.layer, failure.layer,
               failure.cause, failure.summary,
               hints.untrusted_fix() if failure.cause == "tls-untrusted"
               else failure.fix or network_fix)


def probe_answer(p: Probe, endpoint: str, send: Callable[[], Answer], service: Service,
                 hints: net.TlsHints) -> Answer:
    """Send one request to ``endpoint`` and record the ``http.answer`` check: what answered.
    Ends the chain when nothing answers, the service fails (5xx), or something else answers."""
    shown = redact_uri(endpoint)
    try:
        answer = call_endpoint(p, send, what=f"{service.request} to {shown}", shown=shown,
                               hints=hints)
    except CloudtrackError as e:
        p.fail("http.answer", "http", "server-error", f"{service.request} failed: {e}",
               "check the endpoint")
    server = f", server {answer.server}" if answer.server else ""
    code = f" ({answer.code})" if answer.code and not answer.code.isdigit() else ""
    if answer.status >= 500:
        p.fail("http.answer", "http", "server-error",
               f"{shown} answered HTTP {answer.status}{code}{server}", service.server_error_fix)
    if not service.recognise(answer):
        p.fail("http.answer", "http", "endpoint-mismatch",
               f"{shown} does not answer like {service.name} (HTTP {answer.status}, "
               f"{answer.headers.get('content-type') or 'no content type'}{server}, "
               f"{service.marks})", service.mismatch_fix)
    who = f"{answer.server}; " if answer.server else ""
    p.ok("http.answer", "http", f"{shown} answers like {service.name} ({who}{service.request}: "
         f"HTTP {answer.status}{' ' + answer.code if code else ''})")
    return answer
