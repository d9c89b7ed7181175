"""The google-cloud-storage client a ``gs://`` store uses: credentials from
:class:`~cloudtrack.credentials.gcs.GcsCredentials`, its own requests session (a bigger pool,
no hidden urllib3 retries, a bounded token refresh, TLS as resolved), and the endpoint the
resolved config names — not the one the process environment would."""

from __future__ import annotations

import logging
import os

import requests
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage

from cloudtrack.config import StoreConfig
from cloudtrack.credentials.gcs import GcsCredentials

log = logging.getLogger("cloudtrack.blobs.gcs")

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
#: Enough connections for the thread pools MLflow and our own flushers use at once.
POOL_SIZE = 64


def endpoint(config: StoreConfig) -> str | None:
    """The JSON API endpoint the client is given (None: the SDK's default)."""
    configured = config.get("emulator_host") or config.get("api_endpoint")
    if configured:
        return str(configured)
    # The SDK reads these two from os.environ by itself; the resolved config, not the
    # process environment, decides where this store lives.
    if os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("API_ENDPOINT_OVERRIDE"):
        return DEFAULT_ENDPOINT
    return None


def make_client(config: StoreConfig, credentials: GcsCredentials,
                timeout: tuple[float, float]) -> storage.Client:
    creds, creds_project = credentials.load()
    project = config.get("project") or creds_project
    session = AuthorizedSession(creds, refresh_timeout=sum(timeout))
    session.verify = config.tls_verify
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                                            max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    where = endpoint(config)
    log.debug("GCS client for %s: endpoint %s, %s credentials", config.display_uri,
              where or "default", type(creds).__name__)
    return storage.Client(
        # project=None (not omitted) keeps the SDK from running its own ADC lookup.
        project=str(project) if project else None,
        credentials=creds,
        _http=session,
        client_options={"api_endpoint": where} if where else None,
    )
