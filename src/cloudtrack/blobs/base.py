"""The object-store interface every backend implements, and the behaviour they share.

A :class:`Blobs` is rooted at ``<container>/<prefix>``; keys are relative to that root,
``/``-separated.  Backends implement single-attempt primitives (``_get``, ``_put`` …) that raise
cloudtrack's errors; this class adds key validation, retries of what is safe to repeat, hidden
pagination, the rule that a retried conditional write recognises its own earlier write, and
copies between stores: server-side where the two stores are on one account
(:meth:`Blobs.same_account`), streamed through a temporary file otherwise.

Retries are bounded by ``CLOUDTRACK_MAX_ATTEMPTS`` and ``CLOUDTRACK_RETRY_DEADLINE``
(:mod:`cloudtrack.retry`); once they run out, the error ends with the ``cloudtrack doctor``
command for the store — and so does every error the doctor can explain (credentials refused,
missing or expired, a permission, TLS).  A download is checked against the length the service
announced before it replaces the destination file.
"""

from __future__ import annotations

import abc
import builtins
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, TypeVar

from cloudtrack import forks
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    CloudtrackError,
    ConfigError,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
    advise,
    doctor_hint,
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

T = TypeVar("T")


#: The characters an id may begin with (MLflow's run ids begin with a letter or a digit;
#: the ids MLflow and cloudtrack make are lowercase hex), in byte order.
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: :meth:`Blobs.list_spread` reads on alone while at most this many pages seem left.
SPREAD_MIN_PAGES = 2

#: ``map`` of a thread pool, or the builtin.
MapFn = Callable[[Callable[[str], "builtins.list[BlobInfo]"], "builtins.list[str]"],
                 Iterator["builtins.list[BlobInfo]"]]


def _worth_spreading(rest: str, page_len: int) -> bool:
    """Do more than SPREAD_MIN_PAGES pages seem left after a first page ending at ``rest``?

    Guessed from where the page ended, reading ids as hex (what MLflow and cloudtrack make);
    anything else is read on page by page."""
    head = rest[:4]
    if len(head) < 4 or not all(c in "0123456789abcdef" for c in head):
        return False
    covered = (int(head, 16) + 1) / 16 ** 4
    return page_len / covered - page_len > SPREAD_MIN_PAGES * page_len


def copy_refused(error: BlobError) -> bool:
    """Whether a server-side copy that failed with ``error`` is done again as a streamed one.

    The destination's credentials sign a server-side copy, and the service may not let them
    read the source (:class:`PermissionDenied`, :class:`Unauthenticated`; Azure's
    CannotVerifyCopySource is one): the stream reads it with the source's own.  A plain
    :class:`BlobError` is the service saying it does not do this copy — an S3-compatible
    server without CopyObject (400 InvalidRequest, 501 NotImplemented), a copy the service
    ended as failed, an emulator without the feature.  Anything else is raised: a missing
    object or container, a transient failure that outlived its retries, a bad request.
    """
    return isinstance(error, PermissionDenied | Unauthenticated) or type(error) is BlobError


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


def retry_policy(config: StoreConfig) -> RetryPolicy:
    """The retry policy ``config``'s settings ask for: CLOUDTRACK_MAX_ATTEMPTS,
    CLOUDTRACK_RETRY_DEADLINE, and the connect + read timeout of one attempt."""
    attempts = config.get("max_attempts")
    deadline = config.get("retry_deadline")
    timeouts = 0.0
    for name in ("connect_timeout", "read_timeout"):
        timeouts += float(config.get(name) or 0)  # type: ignore[arg-type]
    return RetryPolicy(attempts=int(attempts) if attempts else DEFAULT_POLICY.attempts,  # type: ignore[call-overload]
                       deadline=float(deadline) if deadline else None,  # type: ignore[arg-type]
                       attempt_timeout=timeouts)


def from_doctor(config: StoreConfig) -> bool:
    """Whether the doctor set this configuration up (:func:`cloudtrack.doctor.core.with_timeouts`)."""
    return any(s.source == "doctor" for s in config.settings)


class Blobs(abc.ABC):
    """A flat namespace of objects under one container and prefix."""

    #: Short backend name: ``file``, ``s3``, ``azure`` or ``gcs``.
    backend: ClassVar[str]
    #: Who signs this store's requests (:mod:`cloudtrack.credentials`); the client is built
    #: through it.
    credentials: CredentialProvider

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.retry = retry or retry_policy(config)
        #: How the errors the doctor can explain end (:meth:`diagnosable`, and every error
        #: raised once retries run out): the doctor command for this store — not when the
        #: doctor itself is the caller.
        self.advice: str | None = None if from_doctor(config) else doctor_hint(self.uri)
        self._observers: builtins.list[Callable[[str, str, bytes], None]] = []
        forks.watch(self)

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

    def diagnosable(self, error: CloudtrackError) -> bool:
        """Whether ``error`` is one the doctor explains: the credentials (refused, missing,
        expired), a permission, the network (what outlived its retries), TLS, or an endpoint
        that does not speak the service's protocol (an answer without the service's own error
        code, or 405/501: some other web server)."""
        if isinstance(error, Unauthenticated | PermissionDenied | TransientError):
            return True
        facts = self.error_facts(error)
        if facts is None:
            return False
        if type(error) is BlobError and facts.kind == "response" and (
                facts.status in (405, 501) or not facts.code or facts.code.isdigit()):
            return True
        return facts.kind in ("credentials", "network", "tls")

    def _after_fork(self) -> None:
        """In a child process forked from one that used this store, before anything else
        runs there: stop sharing the parent's pooled connections.  A keep-alive connection
        used by two processes at once mixes their requests and answers (a write of one
        answered with the other's status).  Backends with pooled connections drop them here
        (without closing them for the parent); the child opens its own.  The local store
        has none."""
        return None

    def _retry(self, fn: Callable[[int], T], what: str) -> T:
        try:
            return call_with_retry(fn, what=what, policy=self.retry, advice=self.advice)
        except CloudtrackError as e:
            if self.advice and self.diagnosable(e):
                advise(e, self.advice)
            raise

    # -- public operations ----------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The object's bytes.  Raises BlobNotFound."""
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and the version they were read at."""
        validate_key(key)
        return self._retry(lambda _: self._get(key), f"GET {self.object_uri(key)}")

    def put(self, key: str, data: bytes) -> str:
        """Write unconditionally; return the new version."""
        validate_key(key)
        version = self._retry(lambda _: self._put(key, data, if_absent=False, if_version=None),
                              f"PUT {self.object_uri(key)}")
        return self._wrote(key, version, data)

    def _wrote(self, key: str, version: str, data: bytes) -> str:
        """Tell the observers (``watch``) that ``key`` now holds ``data`` at ``version``."""
        for observer in self._observers:
            observer(key, version, data)
        return version

    def watch(self, observer: Callable[[str, str, bytes], None]) -> None:
        """Call ``observer(key, version, data)`` after each successful put of a record (put,
        put_if_absent, put_if_version), in the writing thread: how the registry keeps its
        pages.  Observers must be quick and must not raise."""
        self._observers = [*self._observers, observer]

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

        return self._wrote(key, self._retry(attempt, f"PUT-IF-ABSENT {self.object_uri(key)}"),
                           data)

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

        return self._wrote(key, self._retry(attempt, f"PUT-IF-VERSION {self.object_uri(key)}"),
                           data)

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

            page, token = self._retry(one_page, f"LIST {self.object_uri(prefix)}")
            yield from page
            if not token:
                return

    def list_spread(self, prefix: str, map_fn: MapFn,
                    alphabet: str = ID_ALPHABET) -> builtins.list[BlobInfo]:
        """Like :meth:`list`, for a large prefix whose keys continue with an id (uniformly
        spread over ``alphabet``, which must be in byte order): the first page is read alone;
        when more than ``SPREAD_MIN_PAGES`` pages seem left, the rest is read as one listing
        per next character, in parallel through ``map_fn`` (a pool's ``map``).  A key whose
        next character is not in ``alphabet`` and sorts after the first page is not seen.

        A listing is ``pages`` sequential round trips; spread, it is about ``pages / len(
        alphabet)`` plus one, at the price of a LIST for each character no key begins with.
        """
        validate_key(prefix, what="prefix", allow_empty=True)

        def page(token: str | None) -> tuple[builtins.list[BlobInfo], str | None]:
            return self._retry(lambda _: self._list_page(prefix, token),
                               f"LIST {self.object_uri(prefix)}")

        first, token = page(None)
        if not token or not first:
            return first
        last = first[-1].key
        rest = last[len(prefix):]
        if not _worth_spreading(rest, len(first)):
            out = list(first)
            while token:
                more, token = page(token)
                out += more
            return out
        subs = [prefix + c for c in alphabet if c >= rest[:1]]
        out = list(first)
        for part in map_fn(lambda p: builtins.list(self.list(p)), subs):
            out += (i for i in part if i.key > last)
        return out

    #: Whether the backend can start a listing after a given key (:meth:`_list_page_after`).
    lists_after: ClassVar[bool] = False
    #: Keys per LIST page the backend asks for.
    page_size: int = 1000

    def list_ranges(self, prefix: str, bounds: Sequence[str], map_fn: MapFn,
                    per_range: int | None = None) -> builtins.list[BlobInfo]:
        """Like :meth:`list`, read as ``len(bounds) + 1`` key ranges in parallel through
        ``map_fn``: up to ``bounds[0]``, after it up to ``bounds[1]``, ..., after the last to
        the end.  ``bounds`` are sorted keys under ``prefix`` (from an earlier listing, so
        that each range is about a page); whatever the keys are now, the ranges tile the
        prefix and each reads on page by page until it passes its upper bound, so nothing is
        missed.  ``per_range``: the keys each range held then (its pages ask for a little
        more, not a whole page).  Without :attr:`lists_after` (or bounds): :meth:`list`."""
        validate_key(prefix, what="prefix", allow_empty=True)
        if not bounds or not self.lists_after:
            return builtins.list(self.list(prefix))
        highs: dict[str, str | None] = dict(zip(["", *bounds], [*bounds, None], strict=True))
        size = self.page_size if not per_range else \
            min(self.page_size, per_range + per_range // 4 + 16)

        def one(low: str) -> builtins.list[BlobInfo]:  # the range after ``low`` ("": all)
            high = highs[low]
            out: builtins.list[BlobInfo] = []
            token: str | None = None
            while True:
                def read(_: int, t: str | None = token) -> tuple[builtins.list[BlobInfo],
                                                                 str | None]:
                    return self._list_page_after(prefix, low or None, t, size)

                page, token = self._retry(read, f"LIST {self.object_uri(prefix)}")
                for info in page:
                    if high is not None and info.key > high:
                        return out
                    if info.key > low:
                        out.append(info)
                if not token:
                    return out

        return [info for part in map_fn(one, builtins.list(highs)) for info in part]

    def list_dir(self, prefix: str) -> tuple[builtins.list[BlobInfo], builtins.list[str]]:
        """Objects directly under ``prefix`` (a folder, '/'-terminated or empty) and the names
        of its sub-folders (without trailing '/')."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        validate_key(prefix, what="prefix", allow_empty=True)
        return self._retry(lambda _: self._list_dir(prefix), f"LIST {self.object_uri(prefix)}")

    def prune_empty_folders(self, prefixes: builtins.list[str]) -> None:
        """Remove the folders ``prefixes`` name that are empty, where folders exist apart from
        their objects (a local directory); an object store has none, so nothing here."""
        del prefixes

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        validate_key(key)
        self._retry(lambda _: self._delete(key), f"DELETE {self.object_uri(key)}")

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
        return self._retry(lambda _: self._stat(key), f"HEAD {self.object_uri(key)}")

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except BlobNotFound:
            return False
        return True

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> str:
        """Stream a local file into the object (multipart above MULTIPART_THRESHOLD)."""
        validate_key(key)
        return self._retry(lambda _: self._upload_file(key, os.fspath(path)),
                           f"UPLOAD {self.object_uri(key)}")

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Stream the object into a local file, replaced atomically once complete — and only
        when it holds as many bytes as the service said the object has."""
        validate_key(key)
        dest = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(dest)}.cloudtrack-part")
        what = f"DOWNLOAD {self.object_uri(key)}"

        def attempt(_: int) -> None:
            try:
                expected = self._download_file(key, tmp)
                got = os.path.getsize(tmp)
                if expected is not None and got != expected:
                    # The backends check each answer; this is the last word on the file.
                    cause = f"{got} of the object's {expected} bytes arrived"
                    raise TransientError(f"{what} failed: {cause}", self.object_uri(key),
                                         cause=cause, brief=cause)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

        self._retry(attempt, what)

    # -- copies between stores ------------------------------------------------------------

    def same_account(self, other: Blobs) -> bool:
        """Whether this store and ``other`` can copy objects server-side, the bytes never
        passing through this process: the same backend, and what that backend needs on top
        — the same endpoint and the same credentials (S3, GCS), the same account (Azure), a
        local folder (the kernel copies).  Decided from the two resolved configurations
        alone, without a request."""
        return type(other) is type(self) and self._same_account(other)

    def copy_from(self, source: Blobs, source_key: str, key: str) -> str:
        """Copy ``source``'s object ``source_key`` to ``key`` of this store, replacing what is
        there; return the new version.

        When :meth:`same_account` holds, the service copies (S3 CopyObject, UploadPartCopy
        above 5 GiB; GCS rewrite; Azure Copy Blob; a kernel copy between local folders),
        after one HEAD of the source.  Otherwise — or when the service refuses in a way
        :func:`copy_refused` lists — the object streams through a temporary file: downloaded
        with the source's credentials, uploaded with this store's, never whole in memory.
        Raises :class:`BlobNotFound` naming the source object when there is none.
        """
        validate_key(source_key, what="source key")
        validate_key(key)
        if not self.same_account(source):
            return self._copy_through_file(source, source_key, key)
        info = source.stat(source_key)
        if (source.config.container, source.config.key(source_key)) == \
                (self.config.container, self.config.key(key)):
            return info.version  # onto itself: S3 would refuse, the others rewrite it
        what = f"COPY {source.object_uri(source_key)} TO {self.object_uri(key)}"
        try:
            return self._retry(lambda _: self._copy_from(source, info, key), what)
        except BlobError as e:
            if not copy_refused(e):
                raise
            log.info("%s was refused server-side (%s); streaming it through a temporary file",
                     what, e)
        return self._copy_through_file(source, source_key, key)

    def _copy_through_file(self, source: Blobs, source_key: str, key: str) -> str:
        with tempfile.TemporaryDirectory(prefix="cloudtrack-copy-") as folder:
            path = os.path.join(folder, "object")
            source.download_file(source_key, path)
            return self.upload_file(key, path)

    def create_container(self) -> None:
        """Create the bucket/container (or directory); an existing one is fine."""
        self._retry(lambda _: self._create_container(), f"CREATE {self.uri}")

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

    def _list_page_after(self, prefix: str, after: str | None, token: str | None,
                         size: int) -> tuple[builtins.list[BlobInfo], str | None]:
        """One page of at most ``size`` keys under ``prefix``, starting after the key
        ``after`` (or, when the backend can only start at a key, at it); only where
        :attr:`lists_after`."""
        raise NotImplementedError(f"{type(self).__name__} cannot start a listing after a key")

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
    def _download_file(self, key: str, path: str) -> int | None:
        """Write the object into ``path``; return its size as the service announced it (None
        when it did not), which :meth:`download_file` checks the file against."""

    @abc.abstractmethod
    def _create_container(self) -> None: ...

    def _same_account(self, other: Blobs) -> bool:
        """:meth:`same_account` for ``other`` of this very class; a backend that copies
        server-side overrides this and :meth:`_copy_from`."""
        return False

    def _copy_from(self, source: Blobs, info: BlobInfo, key: str) -> str:
        """One server-side copy of ``source``'s object ``info`` (its HEAD) to ``key``; only
        called when :meth:`same_account` holds."""
        raise NotImplementedError(f"{type(self).__name__} does not copy server-side")
