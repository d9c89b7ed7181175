"""The google-cloud-storage client a ``gs://`` store uses: credentials from
:class:`~cloudtrack.credentials.gcs.GcsCredentials`, its own requests session (a bigger pool,
no hidden urllib3 retries, a bounded token refresh, TLS as resolved), and the endpoint the
resolved config names — not the one the process environment would.

Two things of the SDK's are changed on the client it builds: the background lookup of bucket
metadata is off (``_bucket_metadata_cache``: a GET per bucket in a thread of its own, with its
own retries and a 10 s timeout, only to label tracing spans — what
``DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA`` does for every client of a process, without
writing to ``os.environ``), and a JSON API answer that is not a JSON object is an
:class:`IncompleteAnswer` instead of a ``bytes`` the SDK would then fail on."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import requests
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage

from cloudtrack.blobs.sdk_errors import IncompleteAnswer
from cloudtrack.config import StoreConfig
from cloudtrack.credentials.gcs import GcsCredentials
from cloudtrack.environment import settle

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


def checked(api_request: Callable[..., Any]) -> Callable[..., Any]:
    """``api_request`` that refuses a 2xx answer which is not a JSON object: the SDK returns
    an empty (or non-JSON) body as ``bytes`` and then fails on it with an AttributeError.
    Only a DELETE answers with nothing."""

    @functools.wraps(api_request)
    def api_request_checked(*args: Any, **kwargs: Any) -> Any:
        reply = api_request(*args, **kwargs)
        method = str(kwargs.get("method", args[0] if args else "GET")).upper()
        if method != "DELETE" and kwargs.get("expect_json", True) \
                and not isinstance(reply, dict):
            size = len(reply) if isinstance(reply, bytes | str) else 0
            raise IncompleteAnswer(f"a {method} answer that is not a JSON object ({size} "
                                   "bytes)")
        return reply

    return api_request_checked


def make_client(config: StoreConfig, credentials: GcsCredentials,
                timeout: tuple[float, float]) -> storage.Client:
    creds, creds_project = credentials.load()
    project = config.get("project") or creds_project
    # Both sessions, the token refresh's own too (which the AuthorizedSession closes), read
    # the environment's proxy settings once per host, not on every request
    # (cloudtrack.environment says why).
    session = settle(AuthorizedSession(creds, refresh_timeout=sum(timeout)))
    refresh_session = getattr(session, "_auth_request_session", None)
    if isinstance(refresh_session, requests.Session):
        settle(refresh_session)
    session.verify = config.tls_verify
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                                            max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    where = endpoint(config)
    log.debug("GCS client for %s: endpoint %s, %s credentials", config.display_uri,
              where or "default", type(creds).__name__)
    client = storage.Client(
        # project=None (not omitted) keeps the SDK from running its own ADC lookup.
        project=str(project) if project else None,
        credentials=creds,
        _http=session,
        client_options={"api_endpoint": where} if where else None,
    )
    # Every use of the cache is guarded by its truthiness (and close() clears it only then).
    client._bucket_metadata_cache = None
    connection = client._connection
    connection.api_request = checked(connection.api_request)  # type: ignore[method-assign]
    return client
