"""The object-store interface every backend implements, and the behaviour they share.

A :class:`Blobs` is rooted at ``<container>/<prefix>``; keys are relative to that root,
``/``-separated.  Backends implement single-attempt primitives (``_get``, ``_put`` …) that raise
cloudtrack's errors; this class adds key validation, retries of what is safe to repeat, hidden
pagination, and the rule that a retried conditional write recognises its own earlier write.
"""

from __future__ import annotations

import abc
import builtins
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from cloudtrack.errors import (
    AlreadyExists,
    BlobNotFound,
    CloudtrackError,
    ConfigError,
    PreconditionFailed,
)
from cloudtrack.retry import DEFAULT_POLICY, RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from cloudtrack.blobs.sdk_errors import ErrorFacts
    from cloudtrack.config import StoreConfig
    from cloudtrack.credentials import CredentialProvider

log = logging.getLogger("cloudtrack.blobs")

#: Chunk size for streaming transfers; large files never sit in memory whole.
CHUNK_SIZE = 8 * 1024 * 1024

#: Files above this size go through the multipart / block / resumable path.
MULTIPART_THRESHOLD = 16 * 1024 * 1024

MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class BlobInfo:
    """One object as a listing or ``stat`` sees it."""

    key: str
    size: int
    #: Opaque token that changes on every write: ETag on S3/Azure, generation on GCS.
    version: str
    modified: datetime


def validate_key(key: str, *, what: str = "key", allow_empty: bool = False) -> str:
    """Reject keys that are empty, absolute, or that could climb out of the store's root."""
    if not isinstance(key, str):
        raise ConfigError(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        if allow_empty:
            return key
        raise ConfigError(f"{what} must not be empty")
    if "\x00" in key or "\\" in key:
        raise ConfigError(f"{what} {key!r} contains a NUL or backslash; use '/' as separator")
    if key.startswith("/"):
        raise ConfigError(f"{what} {key!r} is absolute; keys are relative to the store's root")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ConfigError(f"{what} {key[:60]!r}… is longer than {MAX_KEY_BYTES} bytes")
    parts = key.split("/")
    # A trailing '/' is fine for a listing prefix, never inside a key.
    inner = parts[:-1] if (allow_empty and parts[-1] == "") else parts
    for part in inner:
        if part in ("", ".", ".."):
            raise ConfigError(
                f"{what} {key!r} has an empty, '.' or '..' segment; such keys could leave "
                "the store's root and are refused"
            )
    return key


class Blobs(abc.ABC):
    """A flat namespace of objects under one container and prefix."""

    #: Short backend name: ``file``, ``s3``, ``azure`` or ``gcs``.
    backend: ClassVar[str]
    #: Who signs this store's requests (:mod:`cloudtrack.credentials`); the client is built
    #: through it.
    credentials: CredentialProvider

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        self.config = config
        attempts = config.get("max_attempts")
        self.retry = retry or (RetryPolicy(attempts=int(attempts))  # type: ignore[call-overload]
                               if attempts else DEFAULT_POLICY)

    # -- naming ---------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The store's root as a URI, secrets removed."""
        return self.config.display_uri

    def object_uri(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key if key else self.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # -- errors ---------------------------------------------------------------------------

    @classmethod
    def error_facts(cls, error: BaseException) -> ErrorFacts | None:
        """What the service (or the SDK) said when ``error`` was raised: the facts of the SDK
        error behind a cloudtrack error of this backend (its ``__cause__``), or of an SDK
        error itself.  None when there is no SDK error to read."""
        cause = error.__cause__ if isinstance(error, CloudtrackError) else error
        return cls._sdk_facts(cause) if cause is not None else None

    @staticmethod
    def _sdk_facts(error: BaseException) -> ErrorFacts | None:
        """The backend's reading of its SDK's errors (none for a backend without an SDK)."""
        return None

    # -- public operations ----------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The object's bytes.  Raises BlobNotFound."""
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and the version they were read at."""
        validate_key(key)
        return call_with_retry(lambda _: self._get(key), what=f"GET {self.object_uri(key)}",
                               policy=self.retry)

    def put(self, key: str, data: bytes) -> str:
        """Write unconditionally; return the new version."""
        validate_key(key)
        return call_with_retry(lambda _: self._put(key, data, if_absent=False, if_version=None),
                               what=f"PUT {self.object_uri(key)}", policy=self.retry)

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create the object only if no object has the key.  Raises AlreadyExists."""
        validate_key(key)

        def attempt(n: int) -> str:
            try:
                return self._put(key, data, if_absent=True, if_version=None)
            except AlreadyExists:
                if n > 0:
                    own = self._own_earlier_write(key, data)
                    if own is not None:
                        return own
                raise

        return call_with_retry(attempt, what=f"PUT-IF-ABSENT {self.object_uri(key)}",
                               policy=self.retry)

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        """Replace the object only if its version is still ``version``.  Raises PreconditionFailed."""
        validate_key(key)

        def attempt(n: int) -> str:
            try:
                return self._put(key, data, if_absent=False, if_version=version)
            except PreconditionFailed:
                if n > 0:
                    own = self._own_earlier_write(key, data)
                    if own is not None:
                        return own
                raise

        return call_with_retry(attempt, what=f"PUT-IF-VERSION {self.object_uri(key)}",
                               policy=self.retry)

    def _own_earlier_write(self, key: str, data: bytes) -> str | None:
        """After a retry lost a condition: is the object there exactly what we tried to write?

        The first attempt may have landed with its answer lost in transit; the retry then
        meets its own write and must not report a conflict.
        """
        try:
            current, version = self._get(key)
        except BlobNotFound:
            return None
        return version if current == data else None

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every object whose key starts with ``prefix``, in key order; pagination hidden."""
        validate_key(prefix, what="prefix", allow_empty=True)
        token: str | None = None
        while True:
            def one_page(_: int, t: str | None = token) -> tuple[builtins.list[BlobInfo], str | None]:
                return self._list_page(prefix, t)

            page, token = call_with_retry(one_page, what=f"LIST {self.object_uri(prefix)}",
                                          policy=self.retry)
            yield from page
            if not token:
                return

    def list_dir(self, prefix: str) -> tuple[builtins.list[BlobInfo], builtins.list[str]]:
        """Objects directly under ``prefix`` (a folder, '/'-terminated or empty) and the names
        of its sub-folders (without trailing '/')."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        validate_key(prefix, what="prefix", allow_empty=True)
        return call_with_retry(lambda _: self._list_dir(prefix),
                               what=f"LIST {self.object_uri(prefix)}", policy=self.retry)

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        validate_key(key)
        call_with_retry(lambda _: self._delete(key), what=f"DELETE {self.object_uri(key)}",
                        policy=self.retry)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many."""
        if not prefix or not prefix.endswith("/"):
            raise ConfigError(f"delete_prefix needs a folder ending in '/', got {prefix!r}")
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def stat(self, key: str) -> BlobInfo:
        """Size, version and modification time.  Raises BlobNotFound."""
        validate_key(key)
        return call_with_retry(lambda _: self._stat(key), what=f"HEAD {self.object_uri(key)}",
                               policy=self.retry)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except BlobNotFound:
            return False
        return True

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> str:
        """Stream a local file into the object (multipart above MULTIPART_THRESHOLD)."""
        validate_key(key)
        return call_with_retry(lambda _: self._upload_file(key, os.fspath(path)),
                               what=f"UPLOAD {self.object_uri(key)}", policy=self.retry)

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Stream the object into a local file, replaced atomically once complete."""
        validate_key(key)
        dest = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(dest)}.cloudtrack-part")

        def attempt(_: int) -> None:
            try:
                self._download_file(key, tmp)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

        call_with_retry(attempt, what=f"DOWNLOAD {self.object_uri(key)}", policy=self.retry)

    def create_container(self) -> None:
        """Create the bucket/container (or directory); an existing one is fine."""
        call_with_retry(lambda _: self._create_container(), what=f"CREATE {self.uri}",
                        policy=self.retry)

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release connections; the object must not be used afterwards."""

    def __enter__(self) -> Blobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend primitives: one attempt each, errors already translated ---------------------

    @abc.abstractmethod
    def _get(self, key: str) -> tuple[bytes, str]: ...

    @abc.abstractmethod
    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str: ...

    @abc.abstractmethod
    def _list_page(self, prefix: str, token: str | None) -> tuple[builtins.list[BlobInfo], str | None]: ...

    def _list_dir(self, prefix: str) -> tuple[builtins.list[BlobInfo], builtins.list[str]]:
        # Backends with a delimiter listing override this; the fallback walks the whole prefix.
        files: builtins.list[BlobInfo] = []
        dirs: dict[str, None] = {}
        for info in self.list(prefix):
            rest = info.key[len(prefix):]
            if "/" in rest:
                dirs[rest.split("/", 1)[0]] = None
            else:
                files.append(info)
        return files, list(dirs)

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def _stat(self, key: str) -> BlobInfo: ...

    @abc.abstractmethod
    def _upload_file(self, key: str, path: str) -> str: ...

    @abc.abstractmethod
    def _download_file(self, key: str, path: str) -> None: ...

    @abc.abstractmethod
    def _create_container(self) -> None: ...
