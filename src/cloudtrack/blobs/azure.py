"""AzureBlobs: the blob interface on Azure Blob Storage (``wasbs://``) and ADLS Gen2 (``abfss://``,
same account, reached through its blob endpoint), with azure-storage-blob and azure-identity.

The client is built the way MLflow's own Azure artifact repository builds it, from the same
variables, read from ``config.environ``:

1. ``AZURE_STORAGE_CONNECTION_STRING`` — its key or SAS signs; when it carries neither (only
   endpoints), a token credential signs (``DefaultAzureCredential``);
2. ``AZURE_STORAGE_ACCESS_KEY`` or ``AZURE_STORAGE_SAS_TOKEN`` with the URI's account endpoint;
3. otherwise ``DefaultAzureCredential`` with the URI's account endpoint.

Which of these applies was decided once by :func:`cloudtrack.config.resolve` (setting
``credential`` and its source), so the doctor reports exactly what this module does.
``AzureBlobs(config, credential=...)`` takes an explicit azure-core token credential instead,
for callers that already hold one.

Versions are ETags, kept without their quotes.  Conditional writes use ``If-None-Match: *`` and
``If-Match: <etag>``.  The SDK's own retries are off: :mod:`cloudtrack.retry` retries
:class:`TransientError` in the base class, and a second retry layer would multiply attempts.
"""

from __future__ import annotations

import logging
import os
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import quote, unquote

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.storage.blob import BlobPrefix, BlobProperties, BlobServiceClient, ContainerClient

from cloudtrack.blobs.base import CHUNK_SIZE, MULTIPART_THRESHOLD, BlobInfo, Blobs
from cloudtrack.config import StoreConfig, parse_connection_string, redact, redact_uri
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    ConfigError,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import RetryPolicy, retry_after

log = logging.getLogger("cloudtrack.blobs.azure")

# azure-core logs every request and response header at INFO; keep that out of the user's logs
# unless they configured the logger themselves.
_HTTP_LOGGER = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
if _HTTP_LOGGER.level == logging.NOTSET:
    _HTTP_LOGGER.setLevel(logging.WARNING)

#: Blocks uploaded at once for one large file.  Each in-flight block costs about two
#: CHUNK_SIZE buffers (the SDK's read buffer and the request body), so this bounds memory;
#: MLflow's own Azure repository uploads one block at a time.
UPLOAD_CONCURRENCY = 2
#: Ranges downloaded at once, each DOWNLOAD_CHUNK bytes held until written in order.
DOWNLOAD_CONCURRENCY = 4
DOWNLOAD_CHUNK = 4 * 1024 * 1024
#: Blobs per List Blobs request: the service's maximum.
LIST_PAGE_SIZE = 5000
#: Connections kept per host: the transfer threads of a few concurrent callers.
POOL_SIZE = 32
#: The role a signed-in identity needs for every operation cloudtrack performs.
DATA_ROLE = "Storage Blob Data Contributor"

_PERMISSION_CODES = frozenset({
    "AuthorizationPermissionMismatch", "AuthorizationFailure", "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch", "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch", "InsufficientAccountPermissions",
    "KeyBasedAuthenticationNotPermitted",
})
_AUTHENTICATION_CODES = frozenset({
    "AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation",
    "ExpiredToken", "InvalidToken",
})
_CONFLICT_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet", "TargetConditionNotMet"})
_TRANSIENT_CODES = frozenset({"ServerBusy", "InternalError", "OperationTimedOut"})


def _etag(value: str | None) -> str:
    """An ETag without the quotes headers carry (listings return it bare)."""
    return (value or "").strip('"')


def _quoted(version: str) -> str:
    return version if version.startswith('"') else f'"{version}"'


def _retry_after(e: HttpResponseError) -> float | None:
    response = getattr(e, "response", None)
    return retry_after(response.headers if response is not None else None)


def _error_code(e: HttpResponseError) -> str | None:
    code = getattr(e, "error_code", None)
    headers = getattr(getattr(e, "response", None), "headers", None)
    if code is None and headers is not None:
        code = headers.get("x-ms-error-code")
    return str(getattr(code, "value", code)) if code else None


def _sdk_detail(e: BaseException, limit: int = 600) -> str:
    """The SDK's own explanation, secrets removed, on one line, bounded."""
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    text = " ".join(redact(str(text)).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _is_certificate_error(e: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(current):
            # requests and urllib3 re-wrap the ssl error and keep only its text at times.
            return True
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else (
            current.__cause__ or current.__context__)
    return False


class _ListingNotUnderstood(Exception):
    """The fast listing path cannot read this reply; the SDK's path can."""


def _error_message(body: bytes) -> str:
    try:
        return (ET.fromstring(body).findtext("Message") or "").strip()
    except ET.ParseError:
        return ""


def _parse_blob_listing(body: bytes, root: str) -> tuple[list[BlobInfo], str | None]:
    """The blobs of a List Blobs reply (folders of a hierarchical namespace left out) and the
    next page's marker."""
    try:
        doc = ET.fromstring(body)
    except ET.ParseError as e:
        raise _ListingNotUnderstood(f"unreadable listing: {e}") from e
    blobs = doc.find("Blobs")
    if doc.tag != "EnumerationResults" or blobs is None:
        raise _ListingNotUnderstood(f"unexpected listing root {doc.tag!r}")
    items = []
    try:
        for blob in blobs.iter("Blob"):
            name_node = blob.find("Name")
            name = (name_node.text or "") if name_node is not None else ""
            if name_node is not None and name_node.get("Encoded") == "true":
                name = unquote(name)
            metadata = blob.find("Metadata")
            if metadata is not None and any(
                    m.tag.lower() == "hdi_isfolder" and (m.text or "").lower() == "true"
                    for m in metadata):
                continue
            props = blob.find("Properties")
            if props is None:
                raise _ListingNotUnderstood(f"blob {name!r} has no properties")
            modified = parsedate_to_datetime(props.findtext("Last-Modified") or "")
            items.append(BlobInfo(name[len(root):], int(props.findtext("Content-Length") or 0),
                                  _etag(props.findtext("Etag")), _modified(modified)))
    except (TypeError, ValueError) as e:
        raise _ListingNotUnderstood(f"unexpected listing field: {e}") from e
    return items, doc.findtext("NextMarker") or None


def _is_folder(props: BlobProperties) -> bool:
    # On accounts with a hierarchical namespace (ADLS Gen2) directories are zero-length blobs
    # marked with this metadata; the blob API lists and stats them like objects.
    metadata = props.metadata or {}
    return any(k.lower() == "hdi_isfolder" and str(v).lower() == "true"
               for k, v in metadata.items())


def _modified(value: datetime | None) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, tz=timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class AzureBlobs(Blobs):
    """Blobs in one Azure container under a prefix.

    ``credential`` (keyword only): an azure-core ``TokenCredential`` (anything with
    ``get_token``) that signs every request instead of whatever the environment would pick —
    for callers that already hold a credential, and for tests.  The endpoint still comes
    from the configuration and must be ``https://`` (bearer tokens are never sent in clear).
    """

    backend = "azure"

    #: Blobs per List Blobs request (tests lower it to exercise pagination).
    page_size = LIST_PAGE_SIZE

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None,
                 credential: TokenCredential | None = None) -> None:
        super().__init__(config, retry=retry)
        self._owned_credential: Any = None
        self._signer = ""  # what signs requests, as messages name it: set with the client
        self._signer_kind = ""  # token, account-key or sas
        self._service = self._make_service_client(credential)
        self._container: ContainerClient = self._service.get_container_client(config.container)
        # Blob names inside the container start with this; listings strip it again.
        self._root = config.key("")

    # -- client construction ----------------------------------------------------------------

    def _transport(self) -> RequestsTransport:
        environ = self.config.environ
        # The same CA variables requests and OpenSSL honour, read from the resolved
        # environment so a store opened with an explicit environ behaves like a process.
        ca = environ.get("REQUESTS_CA_BUNDLE") or environ.get("SSL_CERT_FILE")
        transport = RequestsTransport(
            connection_timeout=float(self.config.get("connect_timeout", 10.0)),  # type: ignore[arg-type]
            read_timeout=float(self.config.get("read_timeout", 60.0)),  # type: ignore[arg-type]
            connection_verify=ca or True,
        )
        # Opening creates the session with azure-core's adapters (no urllib3 retries); only
        # their pool is widened, so concurrent transfers do not discard connections.
        transport.open()
        assert transport.session is not None
        for adapter in transport.session.adapters.values():
            init_pool = getattr(adapter, "init_poolmanager", None)
            if init_pool is not None:
                init_pool(POOL_SIZE, POOL_SIZE)
        return transport

    def _client_options(self) -> dict[str, Any]:
        return {
            "transport": self._transport(),
            "retry_total": 0,
            "retry_to_secondary": False,
            "max_single_put_size": MULTIPART_THRESHOLD,
            "max_block_size": CHUNK_SIZE,
            "max_single_get_size": CHUNK_SIZE,
            "max_chunk_get_size": DOWNLOAD_CHUNK,
        }

    def _default_credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        self._owned_credential = DefaultAzureCredential()
        return self._owned_credential

    def _make_service_client(self, explicit: TokenCredential | None) -> BlobServiceClient:
        config, environ = self.config, self.config.environ
        setting = config.setting("credential")
        kind = str(setting.value) if setting is not None else "credential-chain"
        from_conn = setting is not None and setting.source == "env:AZURE_STORAGE_CONNECTION_STRING"
        endpoint = str(config.get("endpoint_url"))
        # What signs, as error messages name it (never the secret itself).
        if explicit is not None:
            self._signer, self._signer_kind = "the token credential given to AzureBlobs", "token"
        elif kind == "credential-chain":
            self._signer, self._signer_kind = (
                "DefaultAzureCredential" + (" (AZURE_STORAGE_CONNECTION_STRING names only the "
                                            "endpoint)" if from_conn else ""), "token")
        elif from_conn:
            self._signer = ("the AccountKey" if kind == "account-key" else
                            "the SharedAccessSignature") + " in AZURE_STORAGE_CONNECTION_STRING"
            self._signer_kind = kind
        else:
            self._signer = ("AZURE_STORAGE_ACCESS_KEY" if kind == "account-key"
                            else "AZURE_STORAGE_SAS_TOKEN")
            self._signer_kind = kind
        if self._signer_kind == "token" and not endpoint.lower().startswith("https://"):
            raise ConfigError(
                f"{self.uri}: endpoint {redact_uri(endpoint)} is plain http, and Azure AD "
                "tokens are only sent over https; use an https endpoint, or sign with an "
                "account key or SAS (AZURE_STORAGE_CONNECTION_STRING with AccountKey=…)")
        options = self._client_options()
        try:
            if from_conn:
                conn = environ["AZURE_STORAGE_CONNECTION_STRING"]
                self._warn_on_account_mismatch(conn)
                credential: Any = explicit
                if credential is None and kind == "credential-chain":
                    # The SDK would otherwise send anonymous requests.
                    credential = self._default_credential()
                return BlobServiceClient.from_connection_string(
                    conn, credential=credential, **options)
            if explicit is not None:
                credential = explicit
            elif kind == "account-key":
                credential = AzureNamedKeyCredential(str(config.get("account")),
                                                     environ["AZURE_STORAGE_ACCESS_KEY"])
            elif kind == "sas":
                credential = AzureSasCredential(environ["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"))
            else:
                credential = self._default_credential()
            return BlobServiceClient(endpoint, credential=credential, **options)
        except (ValueError, KeyError) as e:
            # The SDK's parsing messages do not quote the connection string; neither do we.
            options["transport"].close()
            raise ConfigError(
                f"{self.uri}: the Azure client could not be configured from {self._signer} "
                f"({type(e).__name__}); check the connection string's Key=Value pairs and its "
                "BlobEndpoint URL") from e

    def _warn_on_account_mismatch(self, conn: str) -> None:
        try:
            pairs = {k.lower(): v for k, v in parse_connection_string(conn).items()}
        except ConfigError:
            return  # the SDK's parser reports it
        named = pairs.get("accountname")
        account = str(self.config.get("account"))
        if named and named.lower() != account:
            log.warning("AZURE_STORAGE_CONNECTION_STRING is for account %r but %s names account "
                        "%r; requests go to the connection string's endpoint", named, self.uri,
                        account)

    def close(self) -> None:
        self._service.close()
        if self._owned_credential is not None:
            self._owned_credential.close()
            self._owned_credential = None

    # -- error translation -----------------------------------------------------------------

    def _permission_hint(self) -> str:
        if self._signer_kind == "sas":
            return ("the SAS must grant read, add, create, write, delete and list (sp=racwdl) on "
                    f"this container — or sign in as an identity with the '{DATA_ROLE}' role")
        if self._signer_kind == "account-key":
            return ("the account may refuse shared-key access or this network (firewall); use "
                    f"an Azure AD identity with the '{DATA_ROLE}' role, or allow the network")
        return (f"give the identity the '{DATA_ROLE}' role on the container or account (Owner "
                "or Contributor grant no data access; new assignments take minutes to apply), "
                "and check the account's firewall admits this network")

    def _raise(self, e: Exception, key: str | None, *, op: str, if_absent: bool = False,
               if_version: str | None = None, reading: bool = False) -> NoReturn:
        raise self._translate(e, key, op=op, if_absent=if_absent, if_version=if_version,
                              reading=reading) from e

    def _translate(self, e: Exception, key: str | None, *, op: str, if_absent: bool = False,
                   if_version: str | None = None, reading: bool = False) -> BlobError:
        """One table from the SDK's errors to cloudtrack's."""
        uri = self.object_uri(key) if key is not None else self.uri
        what = f"{op} {uri}"
        detail = _sdk_detail(e)

        if isinstance(e, HttpResponseError) and getattr(e, "status_code", None):
            status = int(e.status_code or 0)
            code = _error_code(e) or ""
            if code == "ContainerNotFound":
                return ContainerNotFound(
                    f"{what}: container {self.config.container!r} does not exist in account "
                    f"{self.config.get('account')!r}; create it (`az storage container create "
                    f"--name {self.config.container}`) or check the URI", self.uri)
            if code == "BlobNotFound" or (status == 404 and not code):
                if if_version is not None:
                    return PreconditionFailed(
                        f"{what}: the object no longer exists, so it is not at version "
                        f"{if_version}; read it again", uri)
                return BlobNotFound(f"{what}: no such object", uri)
            if code in _CONFLICT_CODES or status == 412:
                if reading:
                    # A multi-range download pins the first ETag: the object changed mid-read.
                    err: BlobError = TransientError(
                        f"{what}: the object changed while it was being read; a new read gets "
                        "the new version", uri)
                    return err
                if if_absent:
                    return AlreadyExists(f"{what}: the object already exists", uri)
                return PreconditionFailed(
                    f"{what}: the object changed since version {if_version} was read; read it "
                    "again and retry", uri)
            if code in _AUTHENTICATION_CODES or status == 401 or (
                    code == "AuthorizationFailure" and "failed to authenticate" in detail.lower()):
                # Azurite answers a wrong SharedKey signature or an expired SAS with
                # AuthorizationFailure whose message is Azure's AuthenticationFailed text:
                # the service says it could not authenticate us, so it is Unauthenticated.
                return Unauthenticated(
                    f"{what}: the storage service rejected the credentials from {self._signer} "
                    f"({code or status}: {detail}); check that the key, SAS or token is current "
                    "and belongs to this account", uri)
            if code in _PERMISSION_CODES or status == 403:
                return PermissionDenied(
                    f"{what}: the credentials from {self._signer} were accepted but are not "
                    f"allowed to do this ({code or status}: {detail}); "
                    f"{self._permission_hint()}", uri)
            if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
                err = TransientError(f"{what}: the service answered {status} {code} ({detail});"
                                     " this is usually temporary", uri)
                retry_after = _retry_after(e)
                if retry_after is not None:
                    err.retry_after = retry_after  # type: ignore[attr-defined]
                return err
            return BlobError(f"{what}: the service answered {status} {code} ({detail})", uri)

        if isinstance(e, ClientAuthenticationError):
            # No response: the credential itself failed before a request was sent.
            if any(c.__name__ == "AzureSigningError" for c in type(e).__mro__):
                return Unauthenticated(
                    f"{what}: {self._signer} could not sign the request — the account key is "
                    "not valid base64; copy it again from the portal (Access keys)", uri)
            return Unauthenticated(
                f"{what}: {self._signer} could not get a token ({detail}); sign in "
                "(`az login`), run with a managed or workload identity, or set "
                "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCESS_KEY or "
                "AZURE_STORAGE_SAS_TOKEN", uri)
        if isinstance(e, ServiceRequestError) and _is_certificate_error(e):
            # Retrying cannot fix an untrusted certificate.
            return BlobError(
                f"{what}: the TLS certificate of "
                f"{redact_uri(str(self.config.get('endpoint_url')))} is not trusted ({detail}); "
                "point REQUESTS_CA_BUNDLE or SSL_CERT_FILE at the CA bundle that signed it",
                uri)
        if isinstance(e, ServiceRequestError | ServiceResponseError | IncompleteReadError):
            return TransientError(
                f"{what}: the connection failed ({detail}); check the endpoint "
                f"{redact_uri(str(self.config.get('endpoint_url')))} and the network", uri)
        if isinstance(e, HttpResponseError):
            # A response-less HttpResponseError is a broken or undecodable reply.
            return TransientError(f"{what}: the reply could not be read ({detail})", uri)
        return BlobError(f"{what}: {detail}", uri)

    # -- primitives -----------------------------------------------------------------------

    def _info(self, props: BlobProperties) -> BlobInfo:
        return BlobInfo(props.name[len(self._root):], int(props.size or 0), _etag(props.etag),
                        _modified(props.last_modified))

    def _get(self, key: str) -> tuple[bytes, str]:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            downloader = blob.download_blob(max_concurrency=1)
            if _is_folder(downloader.properties):
                raise self._folder(key, "GET")
            data = downloader.readall()
        except AzureError as e:
            self._raise(e, key, op="GET", reading=True)
        return data, _etag(downloader.properties.etag)

    def _folder(self, key: str, op: str) -> BlobNotFound:
        return BlobNotFound(f"{op} {self.object_uri(key)}: no such object (it is a directory "
                            "of the hierarchical namespace)", self.object_uri(key))

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str:
        blob = self._container.get_blob_client(self.config.key(key))
        conditions: dict[str, Any]
        if if_absent:
            conditions = {"overwrite": False, "match_condition": MatchConditions.IfMissing}
        elif if_version is not None:
            conditions = {"overwrite": True, "etag": _quoted(if_version),
                          "match_condition": MatchConditions.IfNotModified}
        else:
            conditions = {"overwrite": True}
        op = "PUT-IF-ABSENT" if if_absent else "PUT-IF-VERSION" if if_version else "PUT"
        try:
            result = blob.upload_blob(bytes(data), length=len(data), **conditions)
        except AzureError as e:
            self._raise(e, key, op=op, if_absent=if_absent, if_version=if_version)
        return _etag(result["etag"])

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        try:
            return self._list_page_raw(prefix, token)
        except AzureError as e:
            self._raise(e, prefix, op="LIST")
        except _ListingNotUnderstood as e:
            log.debug("listing %s through the SDK: %s", self.object_uri(prefix), e)
        try:
            pages: Any = self._container.list_blobs(
                name_starts_with=self.config.key(prefix) or None, include=["metadata"],
                results_per_page=self.page_size,
            ).by_page(continuation_token=token)
            page = [self._info(p) for p in next(pages) if not _is_folder(p)]
        except AzureError as e:
            self._raise(e, prefix, op="LIST")
        return page, pages.continuation_token or None

    def _list_page_raw(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        """One List Blobs page through the container client's own pipeline (credentials,
        retries, timeouts, TLS as configured), its XML read with ElementTree.

        The SDK's generic deserializer spends over a millisecond per listed blob, which made a
        10,000-run search spend seconds in it; this reads the four fields cloudtrack uses.
        Raises :class:`_ListingNotUnderstood` when the SDK's internals or the reply are not
        what this expects, and the caller lists through the SDK instead.
        """
        generated = getattr(self._container, "_client", None)
        config = getattr(generated, "_config", None)
        pipeline_client = getattr(generated, "_client", None)
        if config is None or pipeline_client is None or not hasattr(pipeline_client, "_pipeline"):
            raise _ListingNotUnderstood("this azure-storage-blob has another internal layout")
        params = {"restype": "container", "comp": "list", "include": "metadata",
                  "maxresults": str(self.page_size)}
        # Values go into the URL as given: quoted here, as the SDK's own serializer does.
        if self.config.key(prefix):
            params["prefix"] = quote(self.config.key(prefix), safe="")
        if token:
            params["marker"] = quote(token, safe="")
        request = HttpRequest("GET", config.url, params=params,
                              headers={"x-ms-version": config.version,
                                       "Accept": "application/xml"})
        request.url = pipeline_client.format_url(request.url)
        response = pipeline_client._pipeline.run(request, stream=False).http_response
        body = response.read() if hasattr(response, "read") else response.body()
        if response.status_code != 200:
            raise HttpResponseError(message=_error_message(body) or response.reason,
                                    response=response)
        return _parse_blob_listing(body, self._root)

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
                elif not _is_folder(item):
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
        if _is_folder(props):
            raise self._folder(key, "HEAD")
        return BlobInfo(key, int(props.size or 0), _etag(props.etag),
                        _modified(props.last_modified))

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
        return _etag(result["etag"])

    def _download_file(self, key: str, path: str) -> None:
        blob = self._container.get_blob_client(self.config.key(key))
        try:
            # The first range is fetched here, so a missing object never creates the file.
            downloader = blob.download_blob(max_concurrency=DOWNLOAD_CONCURRENCY)
        except AzureError as e:
            self._raise(e, key, op="DOWNLOAD", reading=True)
        with open(path, "wb") as f:
            try:
                downloader.readinto(f)
            except AzureError as e:
                self._raise(e, key, op="DOWNLOAD", reading=True)

    def _create_container(self) -> None:
        try:
            self._container.create_container()
        except ResourceExistsError as e:
            if _error_code(e) in (None, "ContainerAlreadyExists"):
                return
            self._raise(e, None, op="CREATE")
        except AzureError as e:
            self._raise(e, None, op="CREATE")
