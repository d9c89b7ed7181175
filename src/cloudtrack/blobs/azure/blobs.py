"""AzureBlobs: the blob interface on Azure Blob Storage (``wasbs://``) and ADLS Gen2 (``abfss://``,
same account, reached through its blob endpoint), with azure-storage-blob.

Versions are ETags, kept without their quotes.  Conditional writes use ``If-None-Match: *`` and
``If-Match: <etag>``.  Reads and listings go through the client's pipeline without the SDK's
downloader and deserializer (``download.py``, ``listing.py``): one request per attempt, every
answer checked.  A write answered without an ETag, a HEAD without its length or ETag, is an
answer cut off: :class:`IncompleteAnswer`, retried like any transient failure.

Two stores of one account copy server-side with Copy Blob (``start_copy_from_url``): the
destination's key or token authorises reading a source of its own account; a source signed by
a SAS passes it on in the source URL.  A copy the service runs asynchronously is polled until
it ends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobPrefix, BlobProperties, ContainerClient

from cloudtrack.blobs.azure.client import DOWNLOAD_CHUNK, service_client
from cloudtrack.blobs.azure.download import download_blob, first_byte, get_blob
from cloudtrack.blobs.azure.errors import (
    PERMISSION_HINTS,
    SDK_ERRORS,
    TABLE,
    error_code,
    error_facts,
)
from cloudtrack.blobs.azure.listing import etag, is_folder, list_page, modified
from cloudtrack.blobs.azure.raw import RawPathUnavailable
from cloudtrack.blobs.base import CHUNK_SIZE, BlobInfo, Blobs
from cloudtrack.blobs.sdk_errors import (
    ErrorFacts,
    IncompleteAnswer,
    Mode,
    Where,
    entity_tag,
    translate,
)
from cloudtrack.config import StoreConfig, redact, redact_uri
from cloudtrack.credentials.azure import AzureCredentials
from cloudtrack.errors import BlobError, BlobNotFound, TransientError
from cloudtrack.retry import RetryPolicy

log = logging.getLogger("cloudtrack.blobs.azure")

#: Blocks uploaded at once for one large file.  Each in-flight block costs about two
#: CHUNK_SIZE buffers (the SDK's read buffer and the request body), so this bounds memory;
#: MLflow's own Azure repository uploads one block at a time.
UPLOAD_CONCURRENCY = 2
#: Ranges downloaded at once.
DOWNLOAD_CONCURRENCY = 4
#: Blobs per List Blobs request: the service's maximum.
LIST_PAGE_SIZE = 5000
#: A pending copy whose progress has not moved for this long is aborted (and retried).
COPY_STALL_SECONDS = 300.0
#: The longest wait between two looks at a pending copy.
COPY_POLL_MAX = 2.0


def _quoted(version: str) -> str:
    return version if version.startswith('"') else f'"{version}"'


def await_copy(blob: Any, what: str, uri: str, *, stall: float = COPY_STALL_SECONDS,
               sleep: Callable[[float], None] = time.sleep) -> str:
    """Wait for the pending Copy Blob into ``blob`` (a blob client) to end; its new ETag.

    A copy that failed or was aborted is a :class:`BlobError` (the caller then streams the
    object); one whose progress stalls for ``stall`` seconds is aborted and a
    :class:`TransientError`, which starts it again.
    """
    delay, progress, since = 0.05, None, time.monotonic()
    while True:
        props = blob.get_blob_properties()
        version = entity_tag(props.etag, "a HEAD answer")
        copy = props.copy
        if copy.status == "success":
            return version
        if copy.status != "pending":
            said = redact(str(copy.status_description or "no reason given"))
            raise BlobError(f"{what} failed: the service ended the copy as {copy.status} "
                            f"({said})", uri)
        if copy.progress != progress:
            progress, since = copy.progress, time.monotonic()
        elif time.monotonic() - since > stall:
            blob.abort_copy(copy.id)
            raise TransientError(f"{what}: the service's copy made no progress for "
                                 f"{stall:.0f}s (at {progress}); it was aborted", uri)
        sleep(delay)
        delay = min(delay * 2, COPY_POLL_MAX)


class AzureBlobs(Blobs):
    """Blobs in one Azure container under a prefix.

    ``credential`` (keyword only): an azure-core ``TokenCredential`` (anything with
    ``get_token``) that signs every request instead of whatever the environment would pick —
    for callers that already hold a credential, and for tests.  The endpoint still comes
    from the configuration and must be ``https://`` (bearer tokens are never sent in clear).
    """

    backend = "azure"
    credentials: AzureCredentials

    #: Blobs per List Blobs request (tests lower it to exercise pagination).
    page_size = LIST_PAGE_SIZE

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None,
                 credential: TokenCredential | None = None) -> None:
        super().__init__(config, retry=retry)
        #: Who signs: a key, a SAS or a token credential, as resolve() decided.
        self.credentials = AzureCredentials(config, credential)
        try:
            self._service = service_client(config, self.credentials)
        except BaseException:
            self.credentials.close()
            raise
        self._container: ContainerClient = self._service.get_container_client(config.container)
        # Blob names inside the container start with this; listings strip it again.
        self._root = config.key("")

    def _after_fork(self) -> None:
        # A new client with a transport of its own (building it sends nothing).
        self._service = service_client(self.config, self.credentials)
        self._container = self._service.get_container_client(self.config.container)

    def close(self) -> None:
        self._service.close()
        self.credentials.close()

    # -- errors -----------------------------------------------------------------------------

    @staticmethod
    def _sdk_facts(e: BaseException) -> ErrorFacts | None:
        return error_facts(e)

    def _translate(self, e: Exception, key: str | None, *, op: str, mode: Mode = "") -> BlobError:
        facts = error_facts(e)
        if facts is None:
            raise e
        error = translate(facts, TABLE, Where(
            op, self.object_uri(key) if key is not None else self.uri, self.uri, mode), {
            "signer": self.credentials.signer,
            "container": f"container {self.config.container!r} in account "
                         f"{self.config.get('account')!r}",
            "container_name": self.config.container,
            "endpoint": redact_uri(str(self.config.get("endpoint_url"))),
            "permission_hint": PERMISSION_HINTS[self.credentials.kind]})
        assert isinstance(error, BlobError)
        return error

    def _raise(self, e: Exception, key: str | None, *, op: str, mode: Mode = "") -> NoReturn:
        raise self._translate(e, key, op=op, mode=mode) from e

    # -- primitives -------------------------------------------------------------------------

    def _info(self, props: BlobProperties) -> BlobInfo:
        return BlobInfo(props.name[len(self._root):], int(props.size or 0), etag(props.etag),
                        modified(props.last_modified))

    def _get(self, key: str) -> tuple[bytes, str]:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            try:
                data, answer = get_blob(blob)
                folder, version = answer.folder, answer.etag
            except RawPathUnavailable:
                downloader = self._sdk_download(blob, max_concurrency=1)
                folder = is_folder(downloader.properties.metadata)
                data, version = downloader.readall(), etag(downloader.properties.etag)
        except SDK_ERRORS as e:
            self._raise(e, key, op="GET", mode="reading")
        if folder:
            raise self._folder(key, "GET")
        return data, version

    def _sdk_download(self, blob: Any, **options: Any) -> Any:
        """The SDK's downloader, for an SDK whose internals the raw path does not know; it
        raises a bare ValueError for an answer without Content-Range."""
        try:
            return blob.download_blob(**options)
        except ValueError as e:
            if "Content-Range" not in str(e):
                raise
            raise IncompleteAnswer(str(e)) from e

    def _folder(self, key: str, op: str) -> BlobNotFound:
        return BlobNotFound(f"{op} {self.object_uri(key)}: no such object (it is a directory "
                            "of the hierarchical namespace)", self.object_uri(key))

    def _written(self, result: Any) -> str:
        """The ETag a write's answer carries; none (or half of one) means the answer was cut
        off."""
        return entity_tag((result or {}).get("etag"), "a write's answer")

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str:
        blob = self._container.get_blob_client(self.config.key(key))
        conditions: dict[str, Any]
        mode: Mode = ""
        if if_absent:
            conditions = {"overwrite": False, "match_condition": MatchConditions.IfMissing}
            mode = "if_absent"
        elif if_version is not None:
            conditions = {"overwrite": True, "etag": _quoted(if_version),
                          "match_condition": MatchConditions.IfNotModified}
            mode = "if_version"
        else:
            conditions = {"overwrite": True}
        op = "PUT-IF-ABSENT" if if_absent else "PUT-IF-VERSION" if if_version else "PUT"
        try:
            return self._written(blob.upload_blob(bytes(data), length=len(data), **conditions))
        except SDK_ERRORS as e:
            self._raise(e, key, op=op, mode=mode)

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        try:
            return self._list_page_raw(prefix, token)
        except RawPathUnavailable as e:
            log.debug("listing %s through the SDK: %s", self.object_uri(prefix), e)
        except SDK_ERRORS as e:
            self._raise(e, prefix, op="LIST")
        try:
            pages: Any = self._container.list_blobs(
                name_starts_with=self.config.key(prefix) or None, include=["metadata"],
                results_per_page=self.page_size,
            ).by_page(continuation_token=token)
            page = [self._info(p) for p in next(pages) if not is_folder(p.metadata)]
        except SDK_ERRORS as e:
            self._raise(e, prefix, op="LIST")
        return page, pages.continuation_token or None

    def _list_page_raw(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        """The fast path of :meth:`_list_page` (:mod:`cloudtrack.blobs.azure.listing`)."""
        items, _, marker = list_page(self._container, self.config.key(prefix), token,
                                     self.page_size, self._root)
        return items, marker

    def _list_dir(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
        full = self.config.key(prefix)
        files: list[BlobInfo] = []
        dirs: list[str] = []
        token: str | None = None
        try:
            while True:
                items, prefixes, token = list_page(self._container, full, token, 1000,
                                                   self._root, delimiter="/")
                files += items
                dirs += [p[len(full):].rstrip("/") for p in prefixes]
                if not token:
                    return files, dirs
        except RawPathUnavailable as e:
            log.debug("listing %s through the SDK: %s", self.object_uri(prefix), e)
        except SDK_ERRORS as e:
            self._raise(e, prefix, op="LIST")
        return self._list_dir_sdk(prefix)

    def _list_dir_sdk(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
        files: list[BlobInfo] = []
        dirs: list[str] = []
        start = len(self.config.key(prefix))
        try:
            items: Iterable[Any] = self._container.walk_blobs(
                name_starts_with=self.config.key(prefix) or None, delimiter="/",
                include=["metadata"], results_per_page=1000)
            for item in items:
                if isinstance(item, BlobPrefix):
                    dirs.append(item.name[start:].rstrip("/"))
                elif not is_folder(item.metadata):
                    files.append(self._info(item))
        except SDK_ERRORS as e:
            self._raise(e, prefix, op="LIST")
        return files, dirs

    def _delete(self, key: str) -> None:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            blob.delete_blob(delete_snapshots="include")
        except SDK_ERRORS as e:
            err = self._translate(e, key, op="DELETE")
            if type(err) is BlobNotFound:
                return
            raise err from e

    def _stat(self, key: str) -> BlobInfo:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            try:
                answer = first_byte(blob)
            except RawPathUnavailable:
                answer = None
            if answer is not None:
                folder = answer.folder
                info = BlobInfo(key, answer.size, answer.etag, answer.modified)
            else:  # an empty blob (or an unknown SDK layout): a HEAD
                props = blob.get_blob_properties()
                version = entity_tag(props.etag, "a HEAD answer")
                if props.size is None or props.last_modified is None:
                    raise IncompleteAnswer("a HEAD answer without Content-Length or "
                                           "Last-Modified")
                folder = is_folder(props.metadata)
                info = BlobInfo(key, int(props.size), version, modified(props.last_modified))
        except SDK_ERRORS as e:
            self._raise(e, key, op="HEAD")
        if folder:
            raise self._folder(key, "HEAD")
        return info

    def _upload_file(self, key: str, path: str) -> str:
        blob = self._container.get_blob_client(self.config.key(key))
        size = os.path.getsize(path)
        # The SDK reads a seekable file in block-sized sub-streams (staged blocks, then one
        # commit); nothing larger than a few blocks is ever held in memory.
        with open(path, "rb") as f:
            try:
                return self._written(blob.upload_blob(f, length=size, overwrite=True,
                                                      max_concurrency=UPLOAD_CONCURRENCY))
            except SDK_ERRORS as e:
                self._raise(e, key, op="UPLOAD")

    def _download_file(self, key: str, path: str) -> int:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            with open(path, "wb") as f:
                try:
                    answer = download_blob(blob, f, first=CHUNK_SIZE, chunk=DOWNLOAD_CHUNK,
                                           concurrency=DOWNLOAD_CONCURRENCY)
                    folder, size = answer.folder, answer.size
                except RawPathUnavailable:
                    downloader = self._sdk_download(blob, max_concurrency=DOWNLOAD_CONCURRENCY)
                    folder, size = is_folder(downloader.properties.metadata), downloader.size
                    if not folder:
                        downloader.readinto(f)
        except SDK_ERRORS as e:
            self._raise(e, key, op="DOWNLOAD", mode="reading")
        if folder:
            raise self._folder(key, "DOWNLOAD")
        return int(size)

    # -- copies -----------------------------------------------------------------------------

    def _same_account(self, other: Blobs) -> bool:
        assert isinstance(other, AzureBlobs)
        mine, theirs = (str(b.config.get("endpoint_url")).rstrip("/").lower()
                        for b in (self, other))
        return mine == theirs and self.config.get("account") == other.config.get("account")

    def _copy_from(self, source: Blobs, info: BlobInfo, key: str) -> str:
        assert isinstance(source, AzureBlobs)
        # The client's URL carries a connection string's SAS, not an AzureSasCredential's.
        url = source._container.get_blob_client(source.config.key(info.key)).url
        url = url.split("?", 1)[0]
        if source.credentials.kind == "sas":
            # Within the account the destination's key or token would do; a SAS does not
            # reach beyond what it signs, so the source's own goes with its URL.
            url += "?" + (source.credentials.secret() or "").lstrip("?")
        blob = self._container.get_blob_client(self.config.key(key))
        op = f"COPY {source.object_uri(info.key)} TO"
        try:
            started = blob.start_copy_from_url(url)
            if started.get("copy_status") == "success":
                return self._written(started)
            return await_copy(blob, f"{op} {self.object_uri(key)}", self.object_uri(key))
        except SDK_ERRORS as e:
            self._raise(e, key, op=op)

    def _create_container(self) -> None:
        try:
            self._container.create_container()
        except ResourceExistsError as e:
            if error_code(e) in ("", "ContainerAlreadyExists"):
                return
            self._raise(e, None, op="CREATE")
        except SDK_ERRORS as e:
            self._raise(e, None, op="CREATE")
