"""The botocore client an ``s3://`` store uses: endpoint, TLS, region and timeouts as resolved,
credentials through :class:`~cloudtrack.credentials.s3.S3Credentials`, botocore's own retries
off (:class:`~cloudtrack.blobs.base.Blobs` retries what is safe to repeat), and two hooks that
save time: the fast listing parser and no ``Expect: 100-continue`` for small bodies."""

from __future__ import annotations

import json
import logging
from typing import Any

import botocore.exceptions as bex
from botocore.config import Config
from s3transfer.manager import TransferManager

from cloudtrack.blobs.s3.listing import EVENT, parse_listing
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.credentials.s3 import S3Credentials
from cloudtrack.errors import ConfigError, MissingDependencyError

log = logging.getLogger("cloudtrack.blobs.s3")

#: Bodies up to this size go without ``Expect: 100-continue``.
SMALL_BODY = 1024 * 1024


def upload_extra_args(config: StoreConfig) -> dict[str, Any]:
    """``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` as PutObject arguments, checked against what uploads accept."""
    raw = config.get("upload_extra_args")
    if raw is None:
        return {}
    extra = json.loads(str(raw))  # resolve() has already checked it is a JSON object
    allowed = set(TransferManager.ALLOWED_UPLOAD_ARGS)
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise ConfigError(
            f"MLFLOW_S3_UPLOAD_EXTRA_ARGS has argument(s) {', '.join(unknown)} that S3 uploads "
            f"do not take; allowed: {', '.join(sorted(allowed))}")
    return extra


def _no_continue_for_small_bodies(request: Any, **_: Any) -> None:
    """botocore ``before-send`` hook: send small PUT bodies straight away.

    botocore asks for ``Expect: 100-continue`` on every file-like body (and wraps even byte
    strings in one), so each small conditional write waits a whole extra round trip for the
    server's go-ahead.  The go-ahead only pays for itself when a rejected request would
    otherwise waste a large upload; a run head or a history batch is a few kilobytes.
    """
    expect = request.headers.get("Expect")
    if expect not in ("100-continue", b"100-continue"):  # botocore keeps some as bytes
        return
    try:
        size = int(request.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        return
    if size <= SMALL_BODY:
        del request.headers["Expect"]


def sdk_verify(config: StoreConfig) -> bool | str | None:
    """``verify`` for botocore: what resolve() decided, except that the default bundle is left
    to botocore, which then also honours a profile's ``ca_bundle``."""
    return None if config.tls_verify is True else config.tls_verify


def make_client(config: StoreConfig, credentials: S3Credentials | None = None) -> Any:
    """The S3 client a store uses: endpoint, TLS, region and credentials as resolved.

    Values the config resolved (endpoint, TLS, region) are passed explicitly; credentials come
    from ``credentials`` (by default the store's :class:`S3Credentials`).
    """
    credentials = credentials or S3Credentials(config)
    endpoint = config.get("endpoint_url")
    client_config = Config(
        connect_timeout=float(config.get("connect_timeout", 10)),  # type: ignore[arg-type]
        read_timeout=float(config.get("read_timeout", 60)),  # type: ignore[arg-type]
        retries={"total_max_attempts": 1},
        # Callers fan out over threads (listing, parallel puts); botocore's default of 10
        # would drop and reopen connections.
        max_pool_connections=32,
        # Most S3-compatible servers (MinIO, moto, Ceph) have no wildcard DNS for buckets.
        s3={"addressing_style": "path"} if endpoint else None,
        user_agent_extra="cloudtrack",
    )
    region = config.get("region")
    try:
        client = credentials.session.create_client(
            "s3", region_name=str(region) if region else None,
            endpoint_url=str(endpoint) if endpoint else None, verify=sdk_verify(config),
            config=client_config, **credentials.client_arguments())
    except bex.ProfileNotFound as e:
        raise credentials.profile_error(e) from e
    members = client.meta.service_model.operation_model("PutObject").input_shape.members
    if "IfMatch" not in members or "IfNoneMatch" not in members:
        raise MissingDependencyError(
            "this botocore cannot send conditional S3 writes (If-Match / If-None-Match); "
            "run: pip install -U 'cloudtrack[s3]'")
    client.meta.events.register(EVENT, parse_listing)
    client.meta.events.register("before-send.s3.PutObject", _no_continue_for_small_bodies)
    log.debug("S3 client for %s: endpoint=%s region=%s credentials=%s", config.display_uri,
              redact_uri(str(endpoint)) if endpoint else "(AWS default)",
              client.meta.region_name, credentials.describe().signer)
    return client
