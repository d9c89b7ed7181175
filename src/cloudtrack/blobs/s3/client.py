"""The botocore client an ``s3://`` store uses: endpoint, TLS, region and timeouts as resolved,
credentials through :class:`~cloudtrack.credentials.s3.S3Credentials`, botocore's own retries
off (:class:`~cloudtrack.blobs.base.Blobs` retries what is safe to repeat), two hooks that
save time (the fast listing parser and no ``Expect: 100-continue`` for small bodies), and one
that refuses an answer cut off before it said what every answer of its operation says
(:func:`check_answer`) — for cloudtrack's own calls and s3transfer's alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import botocore.exceptions as bex
from botocore.config import Config
from botocore.utils import parse_timestamp
from s3transfer.manager import TransferManager

from cloudtrack.blobs.s3.listing import EVENT, parse_listing
from cloudtrack.blobs.sdk_errors import IncompleteAnswer, entity_tag
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.credentials.s3 import S3Credentials
from cloudtrack.environment import read_environment
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


#: What every successful answer of an operation carries (``a.b``: field b of a).  The ETag and
#: the length come in headers, which a connection cut inside the answer's head loses: botocore
#: then parses what is left as an answer without them, and s3transfer would treat it as done.
ANSWER_FIELDS: Mapping[str, tuple[str, ...]] = {
    "PutObject": ("ETag",),
    "CreateMultipartUpload": ("UploadId",),
    "UploadPart": ("ETag",),
    "CompleteMultipartUpload": ("ETag",),
    "CopyObject": ("CopyObjectResult.ETag",),
    "UploadPartCopy": ("CopyPartResult.ETag",),
    "GetObject": ("ETag", "ContentLength"),
    "HeadObject": ("ETag", "ContentLength", "LastModified"),
    # Every ListBucketResult says whether it is truncated: an empty page says false.
    "ListObjectsV2": ("IsTruncated",),
}


def _has(parsed: Mapping[str, Any], path: str) -> bool:
    value: Any = parsed
    for part in path.split("."):
        if not isinstance(value, Mapping) or value.get(part) in (None, ""):
            return False
        value = value[part]
    return True


#: Operations whose answer carries the ETag in a header (the others, in their XML body).
_ETAG_IN_HEADER = frozenset({"PutObject", "UploadPart", "GetObject", "HeadObject"})


def check_answer(http_response: Any, parsed: Mapping[str, Any], model: Any, **_: Any) -> None:
    """botocore ``after-call`` hook: a 2xx answer without what every answer of its operation
    carries — or with an ETag header cut short — raises :class:`IncompleteAnswer` (a transient
    failure: the request may have been carried out), never a result made of nothing."""
    status = int(getattr(http_response, "status_code", 0) or 0)
    if not 200 <= status < 300:
        return
    what = f"HTTP {status} to {model.name}"
    try:
        missing = [f for f in ANSWER_FIELDS.get(model.name, ()) if not _has(parsed, f)]
        if missing:
            raise IncompleteAnswer(f"{what} without {', '.join(missing)}")
        if model.name in _ETAG_IN_HEADER:  # parsed from the header as it came, quotes and all
            entity_tag(parsed.get("ETag"), what)
    except IncompleteAnswer:
        body = parsed.get("Body")
        if body is not None:
            body.close()  # a streamed body that will not be read
        raise


def check_headers(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
    """botocore ``before-parse`` hook: a 2xx answer whose number or date header botocore
    cannot read — cut off inside its value, as ``Content-Length:`` with nothing after it — is
    :class:`IncompleteAnswer`, not the bare ValueError botocore's parser would raise."""
    status = int(response_dict.get("status_code") or 0)
    shape = operation_model.output_shape
    if not 200 <= status < 300 or shape is None:
        return
    headers = response_dict.get("headers") or {}
    for member in shape.members.values():
        if member.serialization.get("location") != "header" or \
                member.type_name not in ("integer", "long", "timestamp"):
            continue
        name = member.serialization.get("name")
        value = headers.get(name)
        if value is None or str(name).lower() == "expires":  # botocore keeps a bad one aside
            continue
        try:
            int(value) if member.type_name != "timestamp" else parse_timestamp(value)
        except (ValueError, TypeError, OverflowError):
            raise IncompleteAnswer(f"HTTP {status} to {operation_model.name} with a garbled "
                                   f"{name} ({str(value)[:40]!r})") from None


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
        connect_timeout=float(config.get("connect_timeout", 5)),  # type: ignore[arg-type]
        read_timeout=float(config.get("read_timeout", 10)),  # type: ignore[arg-type]
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
        # botocore reads the proxy settings by iterating os.environ while it builds the client.
        client = read_environment(lambda: credentials.session.create_client(
            "s3", region_name=str(region) if region else None,
            endpoint_url=str(endpoint) if endpoint else None, verify=sdk_verify(config),
            config=client_config, **credentials.client_arguments()))
    except bex.ProfileNotFound as e:
        raise credentials.profile_error(e) from e
    members = client.meta.service_model.operation_model("PutObject").input_shape.members
    if "IfMatch" not in members or "IfNoneMatch" not in members:
        raise MissingDependencyError(
            "this botocore cannot send conditional S3 writes (If-Match / If-None-Match); "
            "run: pip install -U 'cloudtrack[s3]'")
    client.meta.events.register(EVENT, parse_listing)
    client.meta.events.register("before-parse.s3", check_headers)
    client.meta.events.register("after-call.s3", check_answer)
    client.meta.events.register("before-send.s3.PutObject", _no_continue_for_small_bodies)
    log.debug("S3 client for %s: endpoint=%s region=%s credentials=%s", config.display_uri,
              redact_uri(str(endpoint)) if endpoint else "(AWS default)",
              client.meta.region_name, credentials.describe().signer)
    return client
