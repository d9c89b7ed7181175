"""The exception hierarchy every layer raises, rooted at :class:`CloudtrackError`.

Backends translate SDK errors into these classes and keep the SDK error as ``__cause__``.
Each class also subclasses the matching builtin (``FileNotFoundError``, ``PermissionError`` …)
so callers that know nothing of cloudtrack still catch the right thing.
"""

from __future__ import annotations


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
    """A failure that may go away on retry: 5xx, 429, connection reset, timeout."""


class UnsupportedOperation(CloudtrackError, NotImplementedError):
    """This store deliberately does not implement the operation."""
