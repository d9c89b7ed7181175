"""GcsBlobs: the blob interface on Google Cloud Storage, through google-cloud-storage.

Versions are object generations; put-if-absent is ``ifGenerationMatch=0`` and put-if-version
``ifGenerationMatch=<generation>``, which GCS checks atomically.  Every SDK call runs once
(``retry=None``): the base class retries transient failures itself and knows which conditional
writes may have landed.

Two stores on one endpoint signed by the same credentials copy server-side with ``rewrite``,
called again with its token until the service says it is done (a copy within one location
and storage class is done in one call; others may take several).

Answers are checked: a write must say which generation it made, a HEAD the object's size and
generation, a download its length (or a checksum, which the SDK verifies) — an answer cut off
before it says so is :class:`IncompleteAnswer`, a transient failure, never a result made of
nothing (an empty file, say).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn

from google.api_core import exceptions as api_exceptions
from google.cloud import storage

from cloudtrack.blobs.base import CHUNK_SIZE, MULTIPART_THRESHOLD, BlobInfo, Blobs
from cloudtrack.blobs.gcs.client import DEFAULT_ENDPOINT, endpoint, make_client
from cloudtrack.blobs.gcs.errors import PERMISSION, TABLE, error_facts
from cloudtrack.blobs.gcs.listing import FIELDS, list_page
from cloudtrack.blobs.sdk_errors import ErrorFacts, IncompleteAnswer, Where, translate
from cloudtrack.config import StoreConfig
from cloudtrack.credentials.gcs import GcsCredentials
from cloudtrack.errors import BlobError, PreconditionFailed, TransientError
from cloudtrack.retry import RetryPolicy

log = logging.getLogger("cloudtrack.blobs.gcs")

PAGE_SIZE = 1000


class _AnsweredBlob(storage.Blob):  # type: ignore[misc]
    """A Blob that keeps the headers of its download's answer, which the SDK reads a few of
    and drops."""

    answer: Mapping[str, str] | None = None

    def _extract_headers_from_download(self, response: Any) -> None:
        self.answer = {str(k).lower(): str(v) for k, v in response.headers.items()}
        super()._extract_headers_from_download(response)


def check_download(blob: storage.Blob, received: int) -> int | None:
    """Whether a download's answer said what every one says, and its body was all there; the
    object's size it announced (None: not known, as for a transcoded object).

    A length is compared with the bytes received; without one (a transcoded object is sent
    compressed and chunked) there must be a checksum, which the SDK has then verified.  An
    answer cut off inside its head carries neither, and its empty body is no object.
    """
    headers = getattr(blob, "answer", None)
    if headers is None:  # another SDK layout: its own checks are all there are
        return None
    encoded = headers.get("content-encoding", "identity").lower() not in ("", "identity")
    length = headers.get("content-length")
    if length is not None and not encoded:
        try:
            size = int(length)
        except ValueError:
            raise IncompleteAnswer(f"a download answer with Content-Length {length!r}") from None
        if size != received:
            raise IncompleteAnswer(f"a download answer of {received} bytes that announced "
                                   f"{size}")
        return size
    if not headers.get("x-goog-hash"):
        raise IncompleteAnswer("a download answer with neither a length nor a checksum")
    return None


class GcsBlobs(Blobs):
    backend = "gcs"
    credentials: GcsCredentials

    #: Objects per listing request (tests lower it to exercise pagination).
    page_size = PAGE_SIZE

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(config, retry=retry)
        self.bucket_name = config.container
        #: Names inside the bucket start with this ('' or '<prefix>/').
        self.root = f"{config.prefix}/" if config.prefix else ""
        self.timeout = (float(config.get("connect_timeout", 5.0)),  # type: ignore[arg-type]
                        float(config.get("read_timeout", 10.0)))  # type: ignore[arg-type]
        #: Who signs: a key file, Application Default Credentials, or nobody (an emulator).
        self.credentials = GcsCredentials(config)
        self._client: storage.Client | None = None
        self._lock = threading.Lock()

    # -- client ------------------------------------------------------------------------------

    @property
    def client(self) -> storage.Client:
        """The SDK client, built on first use so that opening a store costs no ADC lookup."""
        with self._lock:
            if self._client is None:
                self._client = make_client(self.config, self.credentials, self.timeout)
            return self._client

    @property
    def endpoint(self) -> str:
        """The JSON API endpoint requests go to."""
        return endpoint(self.config) or DEFAULT_ENDPOINT

    def test_permissions(self, permissions: list[str]) -> list[str]:
        """Which of ``permissions`` the caller holds on the bucket (``testIamPermissions``)."""
        try:
            granted = self._bucket().test_iam_permissions(permissions, retry=None,
                                                          timeout=self.timeout)
        except Exception as e:
            self._raise(e, None, "testIamPermissions", missing="bucket")
        return list(granted or [])

    def _bucket(self) -> storage.Bucket:
        return self.client.bucket(self.bucket_name)

    def _blob(self, key: str, chunk_size: int | None = None) -> _AnsweredBlob:
        return _AnsweredBlob(self._name(key), self._bucket(), chunk_size=chunk_size)

    def _name(self, key: str) -> str:
        return self.root + key

    def _after_fork(self) -> None:
        # A new client (and session) on first use; the lock may have been held at the fork.
        self._lock = threading.Lock()
        self._client = None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- errors ------------------------------------------------------------------------------

    @staticmethod
    def _sdk_facts(e: BaseException) -> ErrorFacts | None:
        return error_facts(e)

    def _gs(self, key: str | None = None) -> str:
        return f"gs://{self.bucket_name}/{self._name(key or '')}"

    def _raise(self, e: Exception, key: str | None, op: str, *,
               missing: str = "object", if_absent: bool = False) -> NoReturn:
        """Translate an SDK error.  ``missing`` says what a 404 means for this operation:
        ``object`` (find out whether it was the bucket), or ``bucket`` (the object could not
        have been missing, as for writes and listings)."""
        if isinstance(e, BlobError):
            raise e
        facts = error_facts(e)
        if facts is None:
            raise e  # not the SDK's: a bug, to be seen as what it is
        container = facts.status == 404 and (
            missing == "bucket" or not key or self._bucket_missing(facts.message))
        where = Where(op, self.object_uri(key) if key else self.uri, self.uri,
                      "if_absent" if if_absent else "", missing_is_container=container)
        found = PERMISSION.search(facts.message)
        raise translate(facts, TABLE, where, {
            "signer": self.credentials.describe().signer,
            "container": f"bucket gs://{self.bucket_name}", "endpoint": self.endpoint,
            "permission": f"permission {found.group(0)}" if found else "a permission",
        }) from e

    def _bucket_missing(self, detail: str) -> bool:
        """Did a 404 on an object request mean that the bucket is missing?"""
        low = detail.lower()
        if "no such object" in low:
            return False
        if "bucket" in low and "not exist" in low:
            return True
        # Emulators answer a bare "Not Found" for both: ask about the bucket.  Only error
        # paths pay this request, and only against servers that do not say which it was.
        try:
            return not self._bucket().exists(retry=None, timeout=self.timeout)
        except Exception:  # no storage.buckets.get, say: the object is the likelier miss
            return False

    # -- primitives --------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str]:
        blob = self._blob(key)
        try:
            data = blob.download_as_bytes(retry=None, timeout=self.timeout)
            check_download(blob, len(data))
        except Exception as e:
            self._raise(e, key, "GET")
        if blob.generation is not None:
            return data, str(blob.generation)
        return self._get_without_generation_header(key)

    def _get_without_generation_header(self, key: str) -> tuple[bytes, str]:
        # Real GCS sends x-goog-generation with every download; some emulators do not.  A
        # read bracketed by two equal generations is consistent (generations never repeat).
        log.debug("no x-goog-generation on GET %s; bracketing the read with two HEADs",
                  self._gs(key))
        for _ in range(10):
            before = self._stat(key).version
            blob = self._blob(key)
            try:
                data = blob.download_as_bytes(retry=None, timeout=self.timeout)
                check_download(blob, len(data))
            except Exception as e:
                self._raise(e, key, "GET")
            if self._stat(key).version == before:
                return data, before
        raise TransientError(f"GET {self._gs(key)}: the object kept changing while it was "
                             "read", self.object_uri(key))

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str:
        condition: dict[str, Any] = {}
        if if_absent:
            condition["if_generation_match"] = 0
        elif if_version is not None:
            try:
                condition["if_generation_match"] = int(if_version)
            except ValueError:
                raise PreconditionFailed(
                    f"{self._gs(key)}: version {if_version!r} is not a GCS generation, so it "
                    "cannot be the object's current version", self.object_uri(key)) from None
        blob = self._bucket().blob(self._name(key))
        try:
            blob.upload_from_string(bytes(data), content_type="application/octet-stream",
                                    retry=None, timeout=self.timeout, **condition)
            return self._generation(blob, "an upload")
        except Exception as e:
            self._raise(e, key, "PUT", missing="bucket", if_absent=if_absent)

    @staticmethod
    def _generation(blob: storage.Blob, what: str) -> str:
        """The generation an answer gave ``blob``; every write's and HEAD's answer has one."""
        if blob.generation is None:
            raise IncompleteAnswer(f"{what} answered without a generation")
        return str(blob.generation)

    def _info(self, blob: storage.Blob, key: str) -> BlobInfo:
        modified = blob.updated or blob.time_created or datetime.fromtimestamp(0, timezone.utc)
        return BlobInfo(key, int(blob.size or 0), str(blob.generation), modified)

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        api_request = getattr(getattr(self.client, "_connection", None), "api_request", None)
        if api_request is None:  # another google-cloud-storage layout: the SDK's own path
            return self._list_page_sdk(prefix, token)
        return self._list_from(prefix, None, token, self.page_size)

    @property
    def lists_after(self) -> bool:  # type: ignore[override]
        return getattr(getattr(self.client, "_connection", None), "api_request", None) \
            is not None

    def _list_page_after(self, prefix: str, after: str | None, token: str | None,
                         size: int) -> tuple[list[BlobInfo], str | None]:
        """``after``: GCS's ``startOffset``, which starts at that key (the caller skips it)."""
        return self._list_from(prefix, after, token, size)

    def _list_from(self, prefix: str, after: str | None, token: str | None,
                   size: int) -> tuple[list[BlobInfo], str | None]:
        api_request = self.client._connection.api_request
        try:
            return list_page(api_request, self.bucket_name, self.root, prefix, token, size,
                             self.timeout, start=None if after is None else self.root + after)
        except Exception as e:
            self._raise(e, prefix, "LIST", missing="bucket")

    def _list_page_sdk(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        try:
            it = self.client.list_blobs(
                self.bucket_name, prefix=self.root + prefix, page_size=self.page_size,
                page_token=token, retry=None, timeout=self.timeout, fields=FIELDS)
            page = next(it.pages, None)
            # Names ending in '/' are the folder placeholders consoles create, never our keys.
            items = [self._info(b, b.name[len(self.root):]) for b in (page or [])
                     if not b.name.endswith("/")]
        except Exception as e:
            self._raise(e, prefix, "LIST", missing="bucket")
        return items, it.next_page_token

    def _list_dir(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
        full = self.root + prefix
        files: list[BlobInfo] = []
        try:
            it = self.client.list_blobs(
                self.bucket_name, prefix=full, delimiter="/", page_size=self.page_size,
                retry=None, timeout=self.timeout,
                fields="items(name,size,generation,updated,timeCreated),prefixes,nextPageToken")
            for page in it.pages:
                files.extend(self._info(b, b.name[len(self.root):]) for b in page
                             if not b.name.endswith("/"))
            prefixes = set(it.prefixes)
        except Exception as e:
            self._raise(e, prefix, "LIST", missing="bucket")
        dirs = sorted((p[len(full):].rstrip("/") for p in prefixes),
                      key=lambda d: d.encode("utf-8"))
        return files, [d for d in dirs if d]

    def _delete(self, key: str) -> None:
        try:
            self._bucket().blob(self._name(key)).delete(retry=None, timeout=self.timeout)
        except api_exceptions.NotFound:
            return
        except Exception as e:
            self._raise(e, key, "DELETE")

    def _stat(self, key: str) -> BlobInfo:
        blob = self._bucket().blob(self._name(key))
        try:
            blob.reload(projection="noAcl", retry=None, timeout=self.timeout)
            self._generation(blob, "a HEAD")
            if blob.size is None:
                raise IncompleteAnswer("a HEAD answered without a size")
        except Exception as e:
            self._raise(e, key, "HEAD")
        return self._info(blob, key)

    def _upload_file(self, key: str, path: str) -> str:
        size = os.path.getsize(path)
        # Above the threshold a resumable upload sends CHUNK_SIZE at a time, so no more than
        # one chunk of the file is ever in memory; below it one multipart request is cheaper.
        chunk = CHUNK_SIZE if size > MULTIPART_THRESHOLD else None
        blob = self._bucket().blob(self._name(key), chunk_size=chunk)
        try:
            with open(path, "rb") as f:
                blob.upload_from_file(f, size=size, content_type="application/octet-stream",
                                      retry=None, timeout=self.timeout)
            return self._generation(blob, "an upload")
        except OSError as e:
            if getattr(e, "filename", None) == path:
                raise
            self._raise(e, key, "UPLOAD", missing="bucket")
        except Exception as e:
            self._raise(e, key, "UPLOAD", missing="bucket")

    def _download_file(self, key: str, path: str) -> int | None:
        blob = self._blob(key)
        with open(path, "wb") as f:
            try:
                # One streamed GET: a consistent snapshot, checksum verified, written as it
                # arrives.
                blob.download_to_file(f, retry=None, timeout=self.timeout)
                f.flush()
                return check_download(blob, f.tell())
            except Exception as e:
                self._raise(e, key, "DOWNLOAD")

    def _create_container(self) -> None:
        try:
            self.client.create_bucket(self.bucket_name, retry=None, timeout=self.timeout)
        except api_exceptions.Conflict:
            return
        except Exception as e:
            self._raise(e, None, "CREATE BUCKET", missing="bucket")

    # -- copies ------------------------------------------------------------------------------

    def _signer(self) -> tuple[object, ...]:
        """Who signs, as far as the configuration says: one key file, or the Application
        Default Credentials of one process, or nobody (an emulator)."""
        return self.config.get("credentials_file"), self.credentials.anonymous

    def _same_account(self, other: Blobs) -> bool:
        assert isinstance(other, GcsBlobs)
        return (self.endpoint.rstrip("/").lower() == other.endpoint.rstrip("/").lower()
                and self._signer() == other._signer())

    def _copy_from(self, source: Blobs, info: BlobInfo, key: str) -> str:
        assert isinstance(source, GcsBlobs)
        src = self.client.bucket(source.bucket_name).blob(source._name(info.key))
        blob = self._bucket().blob(self._name(key))
        token: str | None = None
        try:
            while True:
                token, done, total = blob.rewrite(src, token=token, retry=None,
                                                  timeout=self.timeout)
                if token is None:
                    break
                log.debug("rewriting %s into %s: %d of %d bytes", self._gs(key),
                          source._gs(info.key), done, total)
        except Exception as e:
            self._raise(e, key, f"COPY {source.object_uri(info.key)} TO")
        return str(blob.generation)
