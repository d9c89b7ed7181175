"""The azure-storage-blob client an Azure store uses: its own requests transport (timeouts and
TLS as resolved, a wider pool, no urllib3 retries), the SDK's retries off
(:class:`~cloudtrack.blobs.base.Blobs` retries what is safe to repeat), and the credential
:class:`~cloudtrack.credentials.azure.AzureCredentials` chose."""

from __future__ import annotations

import logging
from typing import Any

from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient

from cloudtrack.blobs.base import CHUNK_SIZE, MULTIPART_THRESHOLD
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.credentials.azure import AzureCredentials
from cloudtrack.environment import settle
from cloudtrack.errors import ConfigError

log = logging.getLogger("cloudtrack.blobs.azure")

# azure-core logs every request and response header at INFO; keep that out of the user's logs
# unless they configured the logger themselves.
_HTTP_LOGGER = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
if _HTTP_LOGGER.level == logging.NOTSET:
    _HTTP_LOGGER.setLevel(logging.WARNING)
# Its transport logs a WARNING ("Incomplete download.") for every body cut short, before the
# error that cloudtrack's retry layer then reports in its one line per retry.
_TRANSPORT_LOGGER = logging.getLogger("azure.core.pipeline.transport._requests_basic")
if _TRANSPORT_LOGGER.level == logging.NOTSET:
    _TRANSPORT_LOGGER.setLevel(logging.ERROR)

#: Ranges downloaded at once are DOWNLOAD_CHUNK bytes each, held until written in order.
DOWNLOAD_CHUNK = 4 * 1024 * 1024
#: Connections kept per host: the transfer threads of a few concurrent callers.
POOL_SIZE = 32


class CheckedTransport(RequestsTransport):  # type: ignore[misc]
    """azure-core's requests transport, except that an answer whose head it cannot read —
    ``Content-Length:`` cut off before its digits makes it raise a bare ValueError while
    reading the body — is the ServiceResponseError of any broken answer.  Its session reads
    the environment's proxy settings once per host (:mod:`cloudtrack.environment`)."""

    def open(self) -> None:
        super().open()
        if self.session is not None:
            settle(self.session)

    def send(self, request: Any, **kwargs: Any) -> Any:
        try:
            return super().send(request, **kwargs)
        except ValueError as e:
            raise ServiceResponseError(f"the answer could not be read (cut off?): "
                                       f"{type(e).__name__}: {e}", error=e) from e


def transport(config: StoreConfig) -> RequestsTransport:
    """A requests transport with the store's timeouts and TLS trust, its pool widened."""
    transport = CheckedTransport(
        connection_timeout=float(config.get("connect_timeout", 5.0)),  # type: ignore[arg-type]
        read_timeout=float(config.get("read_timeout", 10.0)),  # type: ignore[arg-type]
        connection_verify=config.tls_verify,
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


def service_client(config: StoreConfig, credentials: AzureCredentials) -> BlobServiceClient:
    """The service client of ``config``'s account, signed as ``credentials`` say."""
    endpoint = str(config.get("endpoint_url"))
    if credentials.kind == "token" and not endpoint.lower().startswith("https://"):
        raise ConfigError(
            f"{config.display_uri}: endpoint {redact_uri(endpoint)} is plain http, and Azure AD "
            "tokens are only sent over https; use an https endpoint, or sign with an "
            "account key or SAS (AZURE_STORAGE_CONNECTION_STRING with AccountKey=…)")
    options: dict[str, Any] = {
        "transport": transport(config),
        "retry_total": 0,
        "retry_to_secondary": False,
        "max_single_put_size": MULTIPART_THRESHOLD,
        "max_block_size": CHUNK_SIZE,
        "max_single_get_size": CHUNK_SIZE,
        "max_chunk_get_size": DOWNLOAD_CHUNK,
    }
    try:
        conn = credentials.connection_string
        if conn is not None:
            _warn_on_account_mismatch(config)
            # None lets the connection string's key or SAS sign; for an endpoints-only string
            # the token credential signs (the SDK would otherwise send anonymous requests).
            return BlobServiceClient.from_connection_string(
                conn, credential=credentials.sdk_credential(), **options)
        return BlobServiceClient(endpoint, credential=credentials.sdk_credential(), **options)
    except (ValueError, KeyError) as e:
        # The SDK's parsing messages do not quote the connection string; neither do we.
        options["transport"].close()
        raise ConfigError(
            f"{config.display_uri}: the Azure client could not be configured from "
            f"{credentials.signer} ({type(e).__name__}); check the connection string's "
            "Key=Value pairs and its BlobEndpoint URL") from e


def _warn_on_account_mismatch(config: StoreConfig) -> None:
    named = config.get("connection_string_account")
    account = str(config.get("account"))
    if named and str(named).lower() != account:
        log.warning("AZURE_STORAGE_CONNECTION_STRING is for account %r but %s names account "
                    "%r; requests go to the connection string's endpoint", named,
                    config.display_uri, account)
