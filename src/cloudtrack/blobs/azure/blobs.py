"""AzureBlobs: the blob interface on Azure Blob Storage (``wasbs://``) and ADLS Gen2 (``abfss://``,
same account, reached through its blob endpoint), with azure-storage-blob.

Versions are ETags, kept without their quotes.  Conditional writes use ``If-None-Match: *`` and
``If-Match: <etag>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any, NoReturn

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobPrefix, BlobProperties, ContainerClient

from cloudtrack.blobs.azure.client import service_client
from cloudtrack.blobs.azure.errors import PERMISSION_HINTS, TABLE, error_code, error_facts
from cloudtrack.blobs.azure.listing import (
    ListingNotUnderstood,
    etag,
    is_folder,
    list_page,
    modified,
)
from cloudtrack.blobs.base import BlobInfo, Blobs
from cloudtrack.blobs.sdk_errors import ErrorFacts, Mode, Where, translate
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.credentials.azure import AzureCredentials
from cloudtrack.errors import BlobError, BlobNotFound
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


def _quoted(version: str) -> str:
    return version if version.startswith('"') else f'"{version}"'


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
            downloader = blob.download_blob(max_concurrency=1)
            if is_folder(downloader.properties.metadata):
                raise self._folder(key, "GET")
            data = downloader.readall()
        except AzureError as e:
            self._raise(e, key, op="GET", mode="reading")
        return data, etag(downloader.properties.etag)

    def _folder(self, key: str, op: str) -> BlobNotFound:
        return BlobNotFound(f"{op} {self.object_uri(key)}: no such object (it is a directory "
                            "of the hierarchical namespace)", self.object_uri(key))

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
            result = blob.upload_blob(bytes(data), length=len(data), **conditions)
        except AzureError as e:
            self._raise(e, key, op=op, mode=mode)
        return etag(result["etag"])

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        try:
            return self._list_page_raw(prefix, token)
        except AzureError as e:
            self._raise(e, prefix, op="LIST")
        except ListingNotUnderstood as e:
            log.debug("listing %s through the SDK: %s", self.object_uri(prefix), e)
        try:
            pages: Any = self._container.list_blobs(
                name_starts_with=self.config.key(prefix) or None, include=["metadata"],
                results_per_page=self.page_size,
            ).by_page(continuation_token=token)
            page = [self._info(p) for p in next(pages) if not is_folder(p.metadata)]
        except AzureError as e:
            self._raise(e, prefix, op="LIST")
        return page, pages.continuation_token or None

    def _list_page_raw(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        """The fast path of :meth:`_list_page` (:mod:`cloudtrack.blobs.azure.listing`)."""
        return list_page(self._container, self.config.key(prefix), token, self.page_size,
                         self._root)

    def _list_dir(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
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
        except AzureError as e:
            self._raise(e, prefix, op="LIST")
        return files, dirs

    def _delete(self, key: str) -> None:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            blob.delete_blob(delete_snapshots="include")
        except AzureError as e:
            err = self._translate(e, key, op="DELETE")
            if type(err) is BlobNotFound:
                return
            raise err from e

    def _stat(self, key: str) -> BlobInfo:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            props = blob.get_blob_properties()
        except AzureError as e:
            self._raise(e, key, op="HEAD")
        if is_folder(props.metadata):
            raise self._folder(key, "HEAD")
        return BlobInfo(key, int(props.size or 0), etag(props.etag), modified(props.last_modified))

    def _upload_file(self, key: str, path: str) -> str:
        blob = self._container.get_blob_client(self.config.key(key))
        size = os.path.getsize(path)
        # The SDK reads a seekable file in block-sized sub-streams (staged blocks, then one
        # commit); nothing larger than a few blocks is ever held in memory.
        with open(path, "rb") as f:
            try:
                result = blob.upload_blob(f, length=size, overwrite=True,
                                          max_concurrency=UPLOAD_CONCURRENCY)
            except AzureError as e:
                self._raise(e, key, op="UPLOAD")
        return etag(result["etag"])

    def _download_file(self, key: str, path: str) -> None:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            # The first range is fetched here, so a missing object never creates the file.
            downloader = blob.download_blob(max_concurrency=DOWNLOAD_CONCURRENCY)
        except AzureError as e:
            self._raise(e, key, op="DOWNLOAD", mode="reading")
        with open(path, "wb") as f:
            try:
                downloader.readinto(f)
            except AzureError as e:
                self._raise(e, key, op="DOWNLOAD", mode="reading")

    def _create_container(self) -> None:
        try:
            self._container.create_container()
        except ResourceExistsError as e:
            if error_code(e) in ("", "ContainerAlreadyExists"):
                return
            self._raise(e, None, op="CREATE")
        except AzureError as e:
            self._raise(e, None, op="CREATE")
