"""One shape of SDK-error translation for every backend.

Each backend extracts the facts of an SDK error — :class:`ErrorFacts`: the HTTP status, the
service's error code and message, its request id, ``Retry-After`` — with a pure function of
its own (``error_facts`` in ``blobs/<backend>/errors.py``).  :func:`translate`, shared and
pure, maps those facts over the backend's :class:`ErrorTable` (error code → cloudtrack error,
then the HTTP status) to one cloudtrack error whose message says what failed, on which object,
what the service said (with its request id, for a support ticket) and what to do.  The caller
raises it ``from`` the SDK error, so the SDK error stays its ``__cause__``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    CloudtrackError,
    ConfigError,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)


class IncompleteAnswer(Exception):
    """An answer that lacks what every valid answer of its operation carries — an ETag or a
    generation for a write, a length for a read, a well-formed listing — or whose body is
    shorter than it announced.  The connection was cut inside it (the service may have done
    the work: a write may have landed), so it is a transient failure, never a result made of
    nothing.  Each backend's ``error_facts`` reads it as one; the backends (and hooks they
    put into their SDKs) raise it where they check an answer."""


#: A whole entity-tag (RFC 9110): quoted, maybe weak.
_ENTITY_TAG = re.compile(r'^(W/)?"[^"]*"$')


def entity_tag(value: object, what: str = "an answer") -> str:
    """The ETag header ``value`` without its quotes.  Headers carry it quoted, so one that is
    missing or lacks its closing quote was cut off with the answer's head (the rest of a cut
    head reads like a whole one): :class:`IncompleteAnswer`."""
    text = str(value or "").strip()
    tag = text[text.index('"') + 1:-1] if _ENTITY_TAG.match(text) else ""
    if not tag:
        raise IncompleteAnswer(f"{what} whose ETag is missing or cut short ({text[:40]!r})")
    return tag


#: What kind of failure: an answer of the service, or none — no usable credentials, the network,
#: an untrusted certificate, a request the SDK refused to send, anything else the SDK raised.
Kind = Literal["response", "credentials", "network", "tls", "request", "other"]

#: What the operation was: a plain one, a put-if-absent, a put-if-version, or a read whose
#: later ranges are pinned to the version of its first (a 412 then means the object changed).
Mode = Literal["", "if_absent", "if_version", "reading"]

ErrorClass = type[CloudtrackError]
#: A class, or a class refined by a code, an SDK error's name, a kind or a reason.
Key = ErrorClass | tuple[ErrorClass, str]


@dataclass(frozen=True)
class ErrorFacts:
    """What an SDK error says, whatever SDK raised it.  Messages are already redacted."""

    kind: Kind
    #: HTTP status of the service's answer; 0 when there was none.
    status: int = 0
    #: The service's error code (``NoSuchKey``, ``AuthorizationPermissionMismatch``, GCS's
    #: reason); '' when the answer carried none.
    code: str = ""
    message: str = ""
    #: The service's id of the request (x-amz-request-id, x-ms-request-id, GCS's
    #: x-guploader-uploadid): what its support asks for.
    request_id: str | None = None
    #: Seconds the service asked to wait before trying again.
    retry_after: float | None = None
    #: The answer's headers, names in lower case.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Further fields of the service's error (Azure's AuthenticationErrorDetail, S3's Region).
    details: Mapping[str, str] = field(default_factory=dict)
    #: The class name of the SDK's exception.
    error: str = ""

    def summary(self) -> str:
        """``Code, HTTP 403: message; request id …`` — the parts there are."""
        head = self.code if self.code and not self.code.isdigit() else ""
        if self.status:
            head = f"{head}, HTTP {self.status}" if head else f"HTTP {self.status}"
        message = self.message.rstrip(".")
        text = f"{head}: {message}" if head and message else head or message
        if self.request_id:
            text = f"{text}; request id {self.request_id}" if text else f"request id {self.request_id}"
        return text


#: What an HTTP status means when the service's code is not in the backend's table; any other
#: 5xx is transient too, any other status a plain :class:`BlobError`.
STATUS: Mapping[int, ErrorClass] = {
    401: Unauthenticated, 403: PermissionDenied, 404: BlobNotFound, 408: TransientError,
    412: PreconditionFailed, 429: TransientError,
}

#: What a failure without an answer is.
KINDS: Mapping[str, ErrorClass] = {
    "credentials": Unauthenticated, "network": TransientError, "tls": BlobError,
    "request": ConfigError, "other": BlobError,
}

#: What happened, by class (or class and reason/kind), in every backend's messages.  Fields:
#: the backend's context (``signer``, ``container``, ``endpoint``) and the facts' ``status``.
WHAT: Mapping[Key, str] = {
    BlobNotFound: "no such object",
    ContainerNotFound: "{container} does not exist",
    AlreadyExists: "the object already exists",
    PreconditionFailed: "the object changed since the version that was read; read it again",
    (PreconditionFailed, "gone"): "the object no longer exists, so it is not at the version "
                                  "that was read; read it again",
    PermissionDenied: "the credentials from {signer} were accepted but are not allowed to do "
                      "this",
    Unauthenticated: "the service rejected the credentials from {signer}",
    (Unauthenticated, "credentials"): "no usable credentials from {signer}",
    TransientError: "the service answered HTTP {status}; this is usually temporary",
    (TransientError, "network"): "the connection to {endpoint} failed",
    (TransientError, "changed-while-reading"): "the object changed while it was being read; a "
                                               "new read gets the new version",
    (TransientError, "IncompleteAnswer"): "the answer from {endpoint} was cut off (the request "
                                          "may have been carried out)",
    BlobError: "the service refused the request",
    (BlobError, "tls"): "the TLS certificate of {endpoint} is not trusted",
    (BlobError, "other"): "the SDK raised an error",
    ConfigError: "the request is invalid",
}


@dataclass(frozen=True)
class ErrorTable:
    """A backend's reading of its service's errors."""

    #: Service error code -> cloudtrack error; it wins over the status.
    codes: Mapping[str, ErrorClass]
    #: What to do, by class, or by (class, code | SDK error name | kind | reason), which wins.
    #: ``str.format`` fields come from the backend's context.
    hints: Mapping[Key, str] = field(default_factory=dict)
    #: (code, words of its message) -> error, for a code that means two things.
    worded: Mapping[tuple[str, str], ErrorClass] = field(default_factory=dict)
    #: Status -> error where this service differs from :data:`STATUS`.
    statuses: Mapping[int, ErrorClass] = field(default_factory=dict)
    #: What happened, where this backend says it better than :data:`WHAT` (same keys).
    wording: Mapping[Key, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Where:
    """The operation that failed."""

    op: str
    #: The object's URI, or the store's for an operation on the whole store.
    uri: str
    #: The store's root, which a missing container is reported on.
    store_uri: str
    mode: Mode = ""
    #: A 404 means the container is missing (writes and listings, where the object cannot be).
    missing_is_container: bool = False


def classify(facts: ErrorFacts, table: ErrorTable, where: Where) -> tuple[ErrorClass, str]:
    """The cloudtrack error class for ``facts``, and the reason that refines its wording."""
    reason: str = "" if facts.kind == "response" else facts.kind
    if facts.kind != "response":
        cls = KINDS[facts.kind]
    else:
        low = facts.message.lower()
        cls = next((c for (code, words), c in table.worded.items()
                    if code == facts.code and words in low), None) \
            or table.codes.get(facts.code) or table.statuses.get(facts.status) \
            or STATUS.get(facts.status) \
            or (TransientError if facts.status >= 500 else BlobError)
    if cls is BlobNotFound and where.missing_is_container:
        cls = ContainerNotFound
    if where.mode == "if_absent" and cls is PreconditionFailed:
        cls = AlreadyExists
    elif where.mode == "if_version" and cls is BlobNotFound:
        # A conditional write on a missing object: it changed (to nothing) since it was read.
        cls, reason = PreconditionFailed, "gone"
    elif where.mode == "reading" and cls is PreconditionFailed:
        # A ranged read pins the first range's version: the object changed under it.
        cls, reason = TransientError, "changed-while-reading"
    return cls, reason


def _lookup(tables: tuple[Mapping[Key, str], ...], cls: ErrorClass,
            refinements: tuple[str, ...]) -> str:
    """The most specific entry: a refined key before a plain one, earlier tables first."""
    for refinement in refinements:
        for table in tables:
            if refinement and (cls, refinement) in table:
                return table[(cls, refinement)]
    return next((table[cls] for table in tables if cls in table), "")


class _Fields(dict[str, str]):
    """Fields of the wording; one the backend did not give must not hide the error itself."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def translate(facts: ErrorFacts, table: ErrorTable, where: Where,
              context: Mapping[str, str] | None = None) -> CloudtrackError:
    """The cloudtrack error for ``facts``: ``<op> <uri> failed: <what> (<facts>); <hint>``.

    ``context`` fills the backend's wording: ``signer`` (what signs, never the secret),
    ``container`` (``bucket 'name'`` …), ``endpoint``, and any field of its hints.
    """
    cls, reason = classify(facts, table, where)
    fields = _Fields({"signer": "the configured credentials", "container": "the container",
                      "endpoint": "the endpoint", **(context or {}),
                      "status": str(facts.status)})
    refinements = (facts.code, facts.error, reason)
    what = _lookup((table.wording, WHAT), cls, refinements).format_map(fields)
    hint = _lookup((table.hints,), cls, refinements).format_map(fields)
    said = facts.summary()
    cause = what + (f" ({said})" if said else "")
    message = f"{where.op} {where.uri} failed: {cause}" + (f"; {hint}" if hint else "")
    if issubclass(cls, TransientError):
        return cls(message, where.uri, retry_after=facts.retry_after, cause=cause,
                   brief=brief(facts))
    if cls is ContainerNotFound:
        return cls(message, where.store_uri)
    if issubclass(cls, BlobError):
        return cls(message, where.uri)
    return cls(message)


#: Words of a network failure's message (or its class name) -> the failure in a few words.
_NETWORK_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("deserializ", "cut off"), "answer cut off or garbled"),
    (("read timed out", "readtimeout", "read timeout"), "read timeout: no answer in time"),
    (("connect timeout", "connecttimeout", "connect timed out"),
     "connect timeout: no connection in time"),
    (("reset by peer", "connectionreset", "econnreset", "connection reset"), "connection reset"),
    (("refused", "econnrefused"), "connection refused"),
    (("incompleteread", "incomplete read", "connection broken", "remotedisconnected",
      "remote end closed", "connectionclosed", "protocolerror", "chunkedencoding"),
     "connection closed before the answer ended"),
    (("name or service not known", "nodename nor servname", "getaddrinfo",
      "failed to resolve", "name resolution"), "host name not resolved"),
    (("timed out", "timeout"), "timeout"),
)


def brief(facts: ErrorFacts) -> str:
    """The failure in a few words, for the line logged per retry: ``HTTP 503 SlowDown``,
    ``read timeout: no answer in time``, ``connection reset`` …"""
    if facts.kind == "response":
        code = f" {facts.code}" if facts.code and not facts.code.isdigit() else ""
        return f"HTTP {facts.status}{code}"
    if facts.error == "IncompleteAnswer":
        return one_line(f"answer cut off: {facts.message}", 100)
    text = f"{facts.error} {facts.message}".lower()
    for words, phrase in _NETWORK_WORDS:
        if any(w in text for w in words):
            return phrase
    return facts.error or one_line(facts.message, 80) or facts.kind


def exception_chain(e: BaseException) -> Iterator[BaseException]:
    """``e`` and every exception it wraps, breadth first, each once: ``__cause__``,
    ``__context__`` and the attributes SDKs keep them in (azure-core's ``inner_exception``,
    urllib3's ``reason``, s3transfer's ``last_exception``, botocore's ``kwargs['error']``,
    exceptions passed as arguments)."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        for nxt in (cur.__cause__, cur.__context__, getattr(cur, "inner_exception", None),
                    getattr(cur, "reason", None), getattr(cur, "last_exception", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
        kwargs = getattr(cur, "kwargs", None)
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            todo.append(kwargs["error"])
        todo.extend(arg for arg in getattr(cur, "args", ()) if isinstance(arg, BaseException))


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
