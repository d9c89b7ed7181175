"""S3Blobs: the blob interface on Amazon S3 and S3-compatible endpoints, through botocore and
s3transfer.

Versions are ETags without their quotes.  Conditional writes use S3's ``If-None-Match: *``
(put-if-absent) and ``If-Match: <etag>`` (put-if-version), which AWS enforces atomically since
late 2024; an endpoint that ignores them would silently break concurrency, which the doctor
probes.  A single-part ETag is the MD5 of the bytes: rewriting identical bytes keeps the
version, which is harmless for a compare-and-swap because the content the caller read is still
the content stored.

Two stores on one endpoint signed by the same credentials copy server-side: CopyObject up to
5 GiB, UploadPartCopy in parts above (through s3transfer, which pins the source's ETag for the
parts), with the destination's upload arguments that a copy takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any

import botocore.exceptions as bex
import urllib3
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from cloudtrack.blobs.base import CHUNK_SIZE, MULTIPART_THRESHOLD, BlobInfo, Blobs
from cloudtrack.blobs.s3.client import make_client, upload_extra_args
from cloudtrack.blobs.s3.errors import HINT_MISSING_BUCKET, TABLE, error_facts
from cloudtrack.blobs.sdk_errors import ErrorFacts, IncompleteAnswer, Mode, Where, translate
from cloudtrack.config import StoreConfig
from cloudtrack.credentials.s3 import S3Credentials
from cloudtrack.errors import (
    BlobError,
    BlobNotFound,
    CloudtrackError,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
)
from cloudtrack.retry import RetryPolicy

log = logging.getLogger("cloudtrack.blobs.s3")

#: Parallel part requests of one multipart transfer; with CHUNK_SIZE parts this bounds memory.
TRANSFER_CONCURRENCY = 4

#: CopyObject copies up to 5 GiB in one request; larger objects are copied in parts.
COPY_LIMIT = 5 * 1024 ** 3
#: Parts of a multipart copy (s3transfer raises it when 10,000 parts would not do).
COPY_PART_SIZE = 512 * 1024 * 1024
#: Upload arguments that replace what a copy would otherwise take from the source object.
_REPLACES_METADATA = frozenset({"CacheControl", "ContentDisposition", "ContentEncoding",
                                "ContentLanguage", "ContentType", "Expires", "Metadata"})

#: The most a GET of an object's first byte reads when the server sends the whole object.
SMALL_ANSWER = 1024 * 1024

#: A 409 ConditionalRequestConflict proves our conditional write did not land (another one was
#: in flight), so it is re-sent at once, this many times in all, instead of becoming a retry
#: that the base class would have to treat as possibly its own earlier write.
CONFLICT_ATTEMPTS = 4


class _KnownObject(BaseSubscriber):  # type: ignore[misc]
    """Hands s3transfer the size and ETag of a HEAD cloudtrack made (and checked) itself, so
    that s3transfer makes none of its own; the ETag pins every ranged GET (If-Match)."""

    def __init__(self, size: int, etag: str) -> None:
        self.size, self.etag = size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        future.meta.provide_object_etag(self.etag)


def _strip_etag(etag: str) -> str:
    etag = str(etag)
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


class S3Blobs(Blobs):
    backend = "s3"
    credentials: S3Credentials

    #: Keys per LIST request; S3's maximum (tests lower it to exercise pagination).
    page_size = 1000
    #: Objects above this are copied in parts of ``copy_part_size`` (tests lower both).
    copy_limit = COPY_LIMIT
    copy_part_size = COPY_PART_SIZE

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(config, retry=retry)
        self.bucket = config.container
        #: Every key of this store starts with this; '' at the bucket's root.
        self.root = f"{config.prefix}/" if config.prefix else ""
        self._extra = upload_extra_args(config)
        #: Who signs: the AWS credential chain, or the resolved environment's keys.
        self.credentials = S3Credentials(config)
        self._client = make_client(config, self.credentials)
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=CHUNK_SIZE,
            max_request_concurrency=TRANSFER_CONCURRENCY,
            # Downloaded chunks waiting for the disk: 16 x 256 KiB, not the default 100.
            max_io_queue_size=16,
            io_chunksize=256 * 1024,
            # The base class retries the whole transfer; no second retry layer underneath.
            num_download_attempts=1,
        )

    # -- what the client talks to -----------------------------------------------------------

    @property
    def client(self) -> Any:
        """The botocore S3 client (for tools and tests that make calls cloudtrack does not)."""
        return self._client

    @property
    def endpoint_url(self) -> str:
        """The endpoint requests go to: the configured one, or AWS's for the region."""
        return str(self._client.meta.endpoint_url)

    @property
    def region(self) -> str | None:
        """The region requests are signed for."""
        region = self._client.meta.region_name
        return str(region) if region else None

    def head_bucket(self) -> ErrorFacts:
        """HEAD the bucket with the store's client: the status, headers and error code of the
        answer, whatever it was.  Failures without an answer raise cloudtrack's errors."""
        try:
            with self._sdk("HEAD", None):
                resp = self._client.head_bucket(Bucket=self.bucket)
        except BlobError as e:
            facts = self.error_facts(e)
            if facts is not None and facts.kind == "response":
                return facts
            raise
        meta = resp.get("ResponseMetadata", {}) or {}
        headers = {str(k).lower(): str(v) for k, v in (meta.get("HTTPHeaders") or {}).items()}
        return ErrorFacts("response", int(meta.get("HTTPStatusCode") or 200), headers=headers,
                          request_id=meta.get("RequestId"))

    # -- errors -----------------------------------------------------------------------------

    @staticmethod
    def _sdk_facts(e: BaseException) -> ErrorFacts | None:
        return error_facts(e)

    def _translate(self, e: BaseException, op: str, key: str | None, mode: Mode = "") -> CloudtrackError:
        facts = error_facts(e)
        if facts is None:
            raise e
        where = Where(op, self.object_uri(key) if key is not None else self.uri, self.uri, mode)
        return translate(facts, TABLE, where, {
            "signer": self.credentials.describe().signer,
            "container": f"bucket {self.bucket!r}", "endpoint": self.endpoint_url})

    @contextlib.contextmanager
    def _sdk(self, op: str, key: str | None, *, mode: Mode = "") -> Iterator[None]:
        """Translate whatever botocore / s3transfer raise inside the block."""
        try:
            yield
        except RetriesExceededError as e:
            cause = e.last_exception if e.last_exception is not None else e
            raise self._translate(cause, op, key, mode) from cause
        except (bex.ClientError, bex.BotoCoreError, RuntimeError, IncompleteAnswer) as e:
            raise self._translate(e, op, key, mode) from e

    # -- helpers ----------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.root + key

    def _info(self, obj: Mapping[str, Any]) -> BlobInfo | None:
        key = str(obj["Key"])[len(self.root):]
        # A key ending in '/' is a console "folder" marker, not something cloudtrack wrote.
        if not key or key.endswith("/"):
            return None
        return BlobInfo(key, int(obj["Size"]), _strip_etag(obj["ETag"]), obj["LastModified"])

    def _code(self, error: BaseException) -> str:
        facts = self.error_facts(error)
        return facts.code if facts is not None else ""

    # -- primitives -------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str]:
        with self._sdk("GET", key):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        return data, _strip_etag(resp["ETag"])

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str:
        args: dict[str, Any] = dict(self._extra)
        mode: Mode = ""
        op = "PUT"
        if if_absent:
            args["IfNoneMatch"] = "*"
            mode, op = "if_absent", "PUT-IF-ABSENT"
        if if_version is not None:
            args["IfMatch"] = f'"{if_version}"'
            mode, op = "if_version", "PUT-IF-VERSION"
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._sdk(op, key, mode=mode):
                    resp = self._client.put_object(Bucket=self.bucket, Key=self._full(key),
                                                   Body=bytes(data), **args)
                return _strip_etag(resp["ETag"])
            except TransientError as e:
                if self._code(e) != "ConditionalRequestConflict" or not mode:
                    raise
                if attempt >= CONFLICT_ATTEMPTS:
                    if mode == "if_version":
                        # AWS's advice for a 409: read the object again and retry, which is
                        # what a caller does on PreconditionFailed.
                        raise PreconditionFailed(
                            f"{self.object_uri(key)} is being written concurrently "
                            f"(ConditionalRequestConflict {attempt} times); read it again",
                            self.object_uri(key)) from e.__cause__
                    raise
                delay = random.uniform(0, 0.05 * 2 ** attempt)
                log.debug("%s %s met a concurrent conditional write; re-sending in %.3fs",
                          op, self.object_uri(key), delay)
                time.sleep(delay)

    lists_after = True

    def _after_fork(self) -> None:
        # botocore's urllib3 pools: new, empty ones; the old ones are left alone (emptying
        # them takes locks a parent thread may have held at the fork).  On a botocore whose
        # session is built otherwise, the session empties its own.
        session = self._client._endpoint.http_session
        try:
            manager = urllib3.PoolManager(**session._get_pool_manager_kwargs())
            manager.pool_classes_by_scheme = session._pool_classes_by_scheme
        except AttributeError:
            session.close()
            return
        session._manager, session._proxy_managers = manager, {}

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        return self._list_from(prefix, None, token, self.page_size)

    def _list_page_after(self, prefix: str, after: str | None, token: str | None,
                         size: int) -> tuple[list[BlobInfo], str | None]:
        return self._list_from(prefix, after, token, size)

    def _list_from(self, prefix: str, after: str | None, token: str | None,
                   size: int) -> tuple[list[BlobInfo], str | None]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix),
                                "MaxKeys": size}
        if token:
            args["ContinuationToken"] = token
        elif after is not None:
            args["StartAfter"] = self._full(after)
        with self._sdk("LIST", prefix):
            resp = self._client.list_objects_v2(**args)
        items = [info for obj in resp.get("Contents", []) if (info := self._info(obj))]
        return items, resp.get("NextContinuationToken") if resp.get("IsTruncated") else None

    def _list_dir(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
        full = self._full(prefix)
        files: list[BlobInfo] = []
        dirs: list[str] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/",
                                "MaxKeys": self.page_size}
        while True:
            with self._sdk("LIST", prefix):
                resp = self._client.list_objects_v2(**args)
            files += [info for obj in resp.get("Contents", []) if (info := self._info(obj))]
            for common in resp.get("CommonPrefixes", []):
                name = str(common["Prefix"])[len(full):].rstrip("/")
                if name:
                    dirs.append(name)
            if not resp.get("IsTruncated"):
                return files, dirs
            args["ContinuationToken"] = resp["NextContinuationToken"]

    def _delete(self, key: str) -> None:
        # S3 answers 204 for a missing key as well, so deleting twice is fine.
        with self._sdk("DELETE", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def _stat(self, key: str) -> BlobInfo:
        try:
            with self._sdk("HEAD", key):
                size, etag, modified = self._first_byte(key)
        except PermissionDenied as e:
            self._explain_forbidden_head(key, e)
            raise
        return BlobInfo(key, size, _strip_etag(etag), modified)

    def _first_byte(self, key: str) -> tuple[int, str, Any]:
        """The object's size, quoted ETag and modification time, from a GET of its first byte.

        A HEAD cut off inside its last header reads like a whole one (``Content-Length: 1234``
        as ``12``, S3 sending Content-Length last); an answer whose one byte of body arrived
        was not cut inside its head, so everything it says can be trusted.  An empty object
        has no first byte (416), an archived one none to read (InvalidObjectState): those
        take a HEAD, whose length cannot be cut into another (``0``), or is no read's.
        """
        full = self._full(key)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=full, Range="bytes=0-0")
        except bex.ClientError as e:
            facts = error_facts(e)
            if facts is None or (facts.status != 416 and facts.code != "InvalidObjectState"):
                raise
            head = self._client.head_object(Bucket=self.bucket, Key=full)
            return int(head["ContentLength"]), head["ETag"], head["LastModified"]
        body = resp["Body"]
        try:
            if resp["ResponseMetadata"]["HTTPStatusCode"] == 200:
                # A server that ignores Range sends the whole object: its body, when small,
                # still shows that the head was whole.
                size = int(resp["ContentLength"])
                if size <= SMALL_ANSWER:
                    body.read()
                return size, resp["ETag"], resp.get("LastModified")
            body.read()
        finally:
            body.close()
        total = str(resp.get("ContentRange", "")).rpartition("/")[2]
        if not total.isdigit() or "LastModified" not in resp:
            raise IncompleteAnswer(f"a GET of the first byte with Content-Range "
                                   f"{resp.get('ContentRange')!r}, Last-Modified "
                                   f"{resp.get('LastModified')!r}")
        return int(total), resp["ETag"], resp["LastModified"]

    def _explain_forbidden_head(self, key: str, error: BlobError) -> None:
        """A HEAD's 403 has no body, so it cannot say whether the credentials are wrong or
        only lack permission; a one-byte GET of the same object carries S3's error code and
        raises the precise error.  Costs a request on this failure path only."""
        if self._code(error) != "403":
            return
        with self._sdk("HEAD", key):
            self._client.get_object(Bucket=self.bucket, Key=self._full(key),
                                    Range="bytes=0-0")["Body"].close()

    def _upload_file(self, key: str, path: str) -> str:
        size = os.path.getsize(path)
        full = self._full(key)
        if size < MULTIPART_THRESHOLD:
            # One PutObject streams the open file and answers with the new ETag.
            with open(path, "rb") as f, self._sdk("UPLOAD", key):
                resp = self._client.put_object(Bucket=self.bucket, Key=full, Body=f,
                                               **self._extra)
            return _strip_etag(resp["ETag"])
        with self._sdk("UPLOAD", key), TransferManager(self._client, self._transfer) as manager:
            manager.upload(path, self.bucket, full, extra_args=dict(self._extra)).result()
        # s3transfer does not pass CompleteMultipartUpload's answer on; a concurrent writer of
        # the same key between the two calls would lend us its version (artifacts are written
        # once, so this does not arise in practice).
        with self._sdk("HEAD", key):
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        return _strip_etag(resp["ETag"])

    def _download_file(self, key: str, path: str) -> int:
        full = self._full(key)
        try:
            # One GET's answer, or the ranges', must add up to this size; the ranges are
            # pinned to this ETag, so a rewrite in between is a transient error.
            with self._sdk("DOWNLOAD", key, mode="reading"):
                size, etag, _ = self._first_byte(key)
                with TransferManager(self._client, self._transfer) as manager:
                    manager.download(self.bucket, full, path,
                                     subscribers=[_KnownObject(size, etag)]).result()
        except PermissionDenied as e:
            # A HEAD's errors (an empty or archived object's) have no code.
            self._explain_forbidden_head(key, e)
            raise
        except BlobNotFound as e:
            # Likewise a HEAD's 404 cannot say whether the bucket is missing.
            if not isinstance(e, ContainerNotFound) and not self._bucket_exists():
                raise ContainerNotFound(
                    f"DOWNLOAD {self.object_uri(key)} failed: bucket {self.bucket!r} does not "
                    f"exist; {HINT_MISSING_BUCKET}", self.uri) from e.__cause__
            raise
        return size

    def _bucket_exists(self) -> bool:
        try:
            with self._sdk("HEAD", None):
                self._client.head_bucket(Bucket=self.bucket)
        except BlobNotFound:
            return False
        except BlobError:
            return True  # cannot tell (e.g. no s3:ListBucket): do not claim it is missing
        return True

    def _create_container(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region not in ("us-east-1", "aws-global"):
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            with self._sdk("CREATE BUCKET", None):
                self._client.create_bucket(**args)
        except BlobError as e:
            code = self._code(e)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                # Some S3-compatible servers answer this for the caller's own bucket too.
                with contextlib.suppress(BlobError), self._sdk("HEAD", None):
                    self._client.head_bucket(Bucket=self.bucket)
                    return
                raise PermissionDenied(
                    f"bucket {self.bucket!r} exists and belongs to someone else; bucket names "
                    "are global on AWS, choose another", self.uri) from e.__cause__
            raise

    # -- copies -----------------------------------------------------------------------------

    def _signer(self) -> tuple[object, ...]:
        """Who signs, as far as the configuration says: the same keys or profile — or both
        the chain of one process — are one identity, which can read what the other stores."""
        return self.config.get("access_key_id"), self.config.get("profile")

    def _same_account(self, other: Blobs) -> bool:
        assert isinstance(other, S3Blobs)
        endpoint = self.config.get("endpoint_url")
        theirs = other.config.get("endpoint_url")
        # No endpoint is AWS's, in whatever region: CopyObject copies across regions.
        same_endpoint = (str(endpoint).rstrip("/").lower() == str(theirs).rstrip("/").lower()
                         if endpoint and theirs else not endpoint and not theirs)
        return same_endpoint and self._signer() == other._signer()

    def _copy_args(self) -> dict[str, Any]:
        """The destination's upload arguments that CopyObject takes; metadata-like ones only
        apply when they replace the source's."""
        allowed = set(TransferManager.ALLOWED_COPY_ARGS)
        args = {k: v for k, v in self._extra.items() if k in allowed}
        if _REPLACES_METADATA & set(args):
            args["MetadataDirective"] = "REPLACE"
        if "Tagging" in args:
            args["TaggingDirective"] = "REPLACE"
        return args

    def _copy_from(self, source: Blobs, info: BlobInfo, key: str) -> str:
        assert isinstance(source, S3Blobs)
        copy_source = {"Bucket": source.bucket, "Key": source._full(info.key)}
        full = self._full(key)
        with self._sdk(f"COPY {source.object_uri(info.key)} TO", key):
            if info.size <= self.copy_limit:
                resp = self._client.copy_object(CopySource=copy_source, Bucket=self.bucket,
                                                Key=full, **self._copy_args())
                return _strip_etag(resp["CopyObjectResult"]["ETag"])
            config = TransferConfig(multipart_threshold=self.copy_limit,
                                    multipart_chunksize=self.copy_part_size,
                                    max_request_concurrency=TRANSFER_CONCURRENCY)
            with TransferManager(self._client, config) as manager:
                manager.copy(copy_source, self.bucket, full, extra_args=self._copy_args(),
                             source_client=self._client).result()
            # As for a multipart upload: CompleteMultipartUpload's answer is not passed on.
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        return _strip_etag(resp["ETag"])

    def close(self) -> None:
        self._client.close()

