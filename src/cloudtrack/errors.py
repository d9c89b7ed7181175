"""The exception hierarchy every layer raises, rooted at :class:`CloudtrackError`.

Backends translate SDK errors into these classes and keep the SDK error as ``__cause__``.
Each class also subclasses the matching builtin (``FileNotFoundError``, ``PermissionError`` …)
so callers that know nothing of cloudtrack still catch the right thing.

An error the doctor can explain (credentials refused or missing, a permission, the network,
TLS) ends with the command that does: :func:`doctor_hint`, added once by :func:`advise`.
"""

from __future__ import annotations

import shlex

#: How the sentence :func:`doctor_hint` makes begins: a message holding it has its hint.
DOCTOR_HINT_START = "Run `cloudtrack doctor "


class CloudtrackError(Exception):
    """Root of every error cloudtrack raises on purpose."""


class ConfigError(CloudtrackError, ValueError):
    """A URI or setting is malformed or unknown; the message shows the expected form."""


class MissingDependencyError(CloudtrackError, ImportError):
    """The SDK a backend needs is not installed; the message names the extra to install."""


class BlobError(CloudtrackError):
    """An operation on an object store failed.  ``uri`` names the object or container."""

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class BlobNotFound(BlobError, FileNotFoundError):
    """The object does not exist."""


class ContainerNotFound(BlobNotFound):
    """The bucket or container itself does not exist."""


class PreconditionFailed(BlobError):
    """A conditional write lost: the object's version is not the one the caller expected."""


class AlreadyExists(PreconditionFailed, FileExistsError):
    """A put-if-absent found the object already there."""


class PermissionDenied(BlobError, PermissionError):
    """The caller is authenticated but not allowed to do this."""


class Unauthenticated(BlobError, PermissionError):
    """The credentials are missing, invalid or expired."""


class TransientError(BlobError, ConnectionError):
    """A failure that may go away on retry: 5xx, 429, connection reset, timeout, an answer cut
    off before it said what every answer of the operation says.

    ``retry_after``: the seconds the service asked the caller to wait (its ``Retry-After``),
    or None; :func:`cloudtrack.retry.call_with_retry` waits that long before the next try.
    ``cause``: what went wrong, without the operation in front or advice after it (what the
    error raised once retries run out quotes); ``brief``: the same in a few words, for the one
    line logged per retry.  ``attempts``: how many attempts the operation made.
    """

    def __init__(self, message: str, uri: str | None = None, *,
                 retry_after: float | None = None, cause: str | None = None,
                 brief: str | None = None) -> None:
        super().__init__(message, uri)
        self.retry_after = retry_after
        self.cause = cause or message
        self.brief = brief or _few_words(self.cause)
        self.attempts = 1


def _few_words(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class CorruptObject(BlobError):
    """An object in the store is not what cloudtrack wrote there (not JSON, a foreign record).

    Reported by its URI; other records stay readable.
    """

    def __init__(self, uri: str, why: str) -> None:
        super().__init__(
            f"corrupt or foreign object {uri}: {why}. Other records are unaffected; remove or "
            "restore this object (or run `cloudtrack doctor`) to read it again.", uri)
        self.why = why


class CredentialsUnavailable(Unauthenticated):
    """No usable credential could be had, before any request was sent.

    ``reason`` says why: ``missing`` (nothing to sign with), ``expired`` (it ended and cannot
    be renewed) or ``invalid`` (it was refused where it comes from: a token endpoint, a key
    file).  ``tried`` lists every place looked at, for messages and the doctor.
    """

    def __init__(self, message: str, uri: str | None = None, *, reason: str = "invalid",
                 tried: tuple[str, ...] = ()) -> None:
        super().__init__(message, uri)
        self.reason = reason
        self.tried = tried


class UnsupportedOperation(CloudtrackError, NotImplementedError):
    """This store deliberately does not implement the operation."""


def doctor_hint(uri: str) -> str:
    """The sentence that ends an error the doctor can explain: the command to run for the store
    ``uri`` (its display URI, secrets already removed)."""
    return f"{DOCTOR_HINT_START}{shlex.quote(uri)}` to see why."


def with_advice(message: str, advice: str | None) -> str:
    """``message`` ending with the sentence ``advice``; unchanged when there is none, or when
    ``message`` already carries a doctor hint (an error wrapped twice says it once)."""
    if not advice or advice in message or (advice.startswith(DOCTOR_HINT_START)
                                           and DOCTOR_HINT_START in message):
        return message
    body = message.rstrip().rstrip(".;,:")
    return f"{body}. {advice}" if body else advice


def advise(error: CloudtrackError, advice: str | None) -> CloudtrackError:
    """``error`` itself, its message ending with ``advice`` (see :func:`with_advice`).

    Changed in place rather than raised anew: the class, the attributes (``reason``,
    ``retry_after`` …), the SDK error as ``__cause__`` and the traceback all stay as they were.
    """
    if error.args and isinstance(error.args[0], str):
        message = with_advice(error.args[0], advice)
        if message != error.args[0]:
            error.args = (message, *error.args[1:])
    return error


def without_doctor_hint(message: str) -> str:
    """``message`` without the doctor hint at its end (for a caller that shows the doctor's
    diagnosis itself)."""
    at = message.rfind(DOCTOR_HINT_START)
    if at < 0 or not message.rstrip().endswith("to see why."):
        return message
    return message[:at].rstrip()
