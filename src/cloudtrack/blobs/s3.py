"""S3Blobs: the blob interface on Amazon S3 and S3-compatible endpoints, through boto3's
botocore client and s3transfer.

Versions are ETags without their quotes.  Conditional writes use S3's ``If-None-Match: *``
(put-if-absent) and ``If-Match: <etag>`` (put-if-version), which AWS enforces atomically since
late 2024; an endpoint that ignores them would silently break concurrency, so the doctor should
probe them.  A single-part ETag is the MD5 of the bytes: rewriting identical bytes keeps the
version, which is harmless for a compare-and-swap because the content the caller read is still
the content stored.

Every SDK error is translated by one table (:data:`_CODES`, then the HTTP status) into
cloudtrack's errors, the SDK error kept as ``__cause__``.  botocore's own retries are off:
:class:`~cloudtrack.blobs.base.Blobs` retries :class:`TransientError` itself and knows which
writes are safe to repeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import botocore.exceptions as bex
import botocore.session
from botocore.config import Config
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager

from cloudtrack.blobs.base import CHUNK_SIZE, MULTIPART_THRESHOLD, BlobInfo, Blobs
from cloudtrack.config import StoreConfig, redact, redact_uri
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    CloudtrackError,
    ConfigError,
    ContainerNotFound,
    MissingDependencyError,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import RetryPolicy, retry_after

log = logging.getLogger("cloudtrack.blobs.s3")

#: Parallel part requests of one multipart transfer; with CHUNK_SIZE parts this bounds memory.
TRANSFER_CONCURRENCY = 4

#: A 409 ConditionalRequestConflict proves our conditional write did not land (another one was
#: in flight), so it is re-sent at once, this many times in all, instead of becoming a retry
#: that the base class would have to treat as possibly its own earlier write.
CONFLICT_ATTEMPTS = 4

#: S3 error code -> cloudtrack error.  Codes absent here fall back to the HTTP status
#: (:func:`_classify`).  HEAD responses carry no body, so their code is the bare status.
_CODES: Mapping[str, type[BlobError]] = {
    "NoSuchKey": BlobNotFound,
    "NotFound": BlobNotFound,
    "404": BlobNotFound,
    "NoSuchBucket": ContainerNotFound,
    "PreconditionFailed": PreconditionFailed,
    "412": PreconditionFailed,
    # Another conditional write on the key was in flight; ours did not land.
    "ConditionalRequestConflict": TransientError,
    "AccessDenied": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "AccountProblem": PermissionDenied,
    "403": PermissionDenied,
    "InvalidAccessKeyId": Unauthenticated,
    "SignatureDoesNotMatch": Unauthenticated,
    "ExpiredToken": Unauthenticated,
    "InvalidToken": Unauthenticated,
    "TokenRefreshRequired": Unauthenticated,
    "InvalidClientTokenId": Unauthenticated,
    "UnrecognizedClientException": Unauthenticated,
    "MissingSecurityHeader": Unauthenticated,
    "RequestTimeTooSkewed": Unauthenticated,
    "SlowDown": TransientError,
    "ServiceUnavailable": TransientError,
    "InternalError": TransientError,
    "RequestTimeout": TransientError,
    "Throttling": TransientError,
    "ThrottlingException": TransientError,
    "RequestLimitExceeded": TransientError,
    "TooManyRequests": TransientError,
    "OperationAborted": TransientError,
}

#: Errors botocore raises before or instead of a response: credentials it could not find or use.
_CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    bex.NoCredentialsError,
    bex.PartialCredentialsError,
    bex.CredentialRetrievalError,
    bex.NoAuthTokenError,
    bex.TokenRetrievalError,
    bex.SSOError,
    bex.RefreshWithMFAUnsupportedError,
)

#: Network failures worth another attempt: connect, reset, timeout, a body cut short.
_NETWORK_ERRORS: tuple[type[Exception], ...] = (
    bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy errors
    bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bex.IncompleteReadError,
)

_HINTS: Mapping[type[BlobError], str] = {
    ContainerNotFound: "create the bucket, or check the URI, the endpoint and the region",
    PermissionDenied: "the credentials were accepted but lack permission: allow the s3: action "
                      "on this bucket and prefix in the IAM or bucket policy",
    Unauthenticated: "check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                     "(+ AWS_SESSION_TOKEN), AWS_PROFILE, or the AWS credential chain; "
                     "renew expired tokens and check the system clock",
    TransientError: "the service is busy or unreachable; cloudtrack retries this — if it "
                    "persists, check the endpoint and the network",
}


def _strip_etag(etag: str) -> str:
    etag = str(etag)
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


def _error_fields(e: bex.ClientError) -> tuple[str, str, int, Mapping[str, str]]:
    """Code, message, HTTP status and response headers of a service error."""
    err = e.response.get("Error", {}) or {}
    meta = e.response.get("ResponseMetadata", {}) or {}
    code = str(err.get("Code") or "")
    status = int(meta.get("HTTPStatusCode") or 0)
    if not code and status:
        code = str(status)
    return code, redact(str(err.get("Message") or "")).rstrip("."), status, meta.get("HTTPHeaders", {}) or {}


def _classify(code: str, status: int) -> type[BlobError]:
    if code in _CODES:
        return _CODES[code]
    if status == 404:
        return BlobNotFound
    if status == 412:
        return PreconditionFailed
    if status == 401:
        return Unauthenticated
    if status == 403:
        return PermissionDenied
    if status in (408, 429) or status >= 500:
        return TransientError
    return BlobError


def _error_code(e: BaseException | None) -> str:
    return _error_fields(e)[0] if isinstance(e, bex.ClientError) else ""


def upload_extra_args(config: StoreConfig) -> dict[str, Any]:
    """``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` as PutObject arguments, checked against what uploads accept."""
    raw = config.get("upload_extra_args")
    if raw is None:
        return {}
    extra = json.loads(str(raw))  # config.py has already checked it is a JSON object
    allowed = set(TransferManager.ALLOWED_UPLOAD_ARGS)
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise ConfigError(
            f"MLFLOW_S3_UPLOAD_EXTRA_ARGS has argument(s) {', '.join(unknown)} that S3 uploads "
            f"do not take; allowed: {', '.join(sorted(allowed))}")
    return extra


_loader_lock = threading.Lock()
_shared_loader: Any = None


def _new_botocore_session() -> botocore.session.Session:
    """A fresh botocore session (its own credentials and profile) sharing one model loader.

    Loading S3's service model costs about 0.4 s in every new session, and MLflow opens
    artifact repositories per call; the loader is a cache of read-only JSON, so all sessions
    share the first one's.  (boto3.Session cannot share it: each one appends to the loader's
    search path.)
    """
    global _shared_loader
    session = botocore.session.Session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _shared_loader)
    return session


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: What botocore's parser leaves when the listing was already parsed by _parse_listing.
_EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>'
                  b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>')


def _parse_listing(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                   **_: Any) -> None:
    """botocore ``before-parse`` hook for ListObjectsV2: parse the fields cloudtrack reads.

    botocore's generic XML parser spends about 0.3 ms per listed key (each field through the
    shape model, each date through dateutil), which made a 10,000-run search spend seconds
    parsing.  This reads the same fields with ElementTree in a few percent of the time and
    hands them to botocore as the customised part of the response; botocore then parses an
    empty listing, and its own after-call handlers (URL-decoding keys when EncodingType=url)
    run on the result as usual.  Errors and anything unexpected keep botocore's parser.
    """
    if response_dict.get("status_code") != 200:
        return
    try:
        root = ET.fromstring(response_dict["body"])
    except ET.ParseError:
        return  # botocore reports it
    ns = _S3_NS if root.tag.startswith("{") else ""
    if root.tag != f"{ns}ListBucketResult":
        return
    try:
        out = _listing_fields(root, ns)
    except (KeyError, ValueError):
        return  # a field in an unexpected form: botocore's parser knows them all
    customized_response_dict.update(out)
    response_dict["body"] = _EMPTY_LISTING


def _listing_fields(root: ET.Element, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {"Contents": [], "CommonPrefixes": []}
    for node in root:
        tag = node.tag[len(ns):]
        if tag == "Contents":
            fields = {c.tag[len(ns):]: c.text or "" for c in node}
            out["Contents"].append({
                "Key": fields.get("Key", ""), "Size": int(fields.get("Size") or 0),
                "ETag": fields.get("ETag", ""),
                "LastModified": datetime.fromisoformat(fields["LastModified"])})
        elif tag == "CommonPrefixes":
            out["CommonPrefixes"] += [{"Prefix": c.text or ""} for c in node
                                      if c.tag == f"{ns}Prefix"]
        elif tag == "IsTruncated":
            out[tag] = (node.text or "").strip().lower() == "true"
        elif tag in ("NextContinuationToken", "EncodingType"):
            # EncodingType tells botocore's after-call handler to URL-decode the keys.
            out[tag] = node.text or ""
    if not out["Contents"]:
        del out["Contents"]
    if not out["CommonPrefixes"]:
        del out["CommonPrefixes"]
    return out


#: Bodies up to this size go without ``Expect: 100-continue``.
SMALL_BODY = 1024 * 1024


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


def make_client(config: StoreConfig) -> Any:
    """The S3 client a store uses: endpoint, TLS, region and credentials as resolved.

    Values the config resolved (endpoint, TLS, region) are passed explicitly.  Credentials too
    when the config was resolved from an environment other than the process's own; otherwise
    the SDK's whole chain (env, profiles, SSO, web identity, instance metadata) applies as it
    would for any AWS tool.
    """
    env = config.environ
    session = _new_botocore_session()
    credentials: dict[str, Any] = {}
    profile: str | None = None
    if env is not os.environ:
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if bool(key) != bool(secret):
            raise ConfigError(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together; only "
                f"{'AWS_ACCESS_KEY_ID' if key else 'AWS_SECRET_ACCESS_KEY'} is set for "
                f"{config.display_uri}")
        if key:
            # Explicit keys outrank a profile, as AWS_* variables do in botocore's chain.
            credentials = {"aws_access_key_id": key, "aws_secret_access_key": secret,
                           "aws_session_token": env.get("AWS_SESSION_TOKEN") or None}
        elif env.get("AWS_PROFILE"):
            profile = env["AWS_PROFILE"]
            session.set_config_variable("profile", profile)

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
    verify: bool | str | None = None
    if config.get("verify_tls") is False:
        verify = False
    elif config.get("ca_bundle"):
        verify = str(config.get("ca_bundle"))
    region = config.get("region")
    try:
        client = session.create_client(
            "s3", region_name=str(region) if region else None,
            endpoint_url=str(endpoint) if endpoint else None, verify=verify,
            config=client_config, **credentials)
    except bex.ProfileNotFound as e:
        raise ConfigError(f"AWS profile {profile or session.profile!r} for {config.display_uri} "
                          "is not in ~/.aws/config or ~/.aws/credentials; fix AWS_PROFILE") from e
    members = client.meta.service_model.operation_model("PutObject").input_shape.members
    if "IfMatch" not in members or "IfNoneMatch" not in members:
        raise MissingDependencyError(
            "this botocore cannot send conditional S3 writes (If-Match / If-None-Match); "
            "run: pip install -U 'cloudtrack[s3]'")
    client.meta.events.register("before-parse.s3.ListObjectsV2", _parse_listing)
    client.meta.events.register("before-send.s3.PutObject", _no_continue_for_small_bodies)
    log.debug("S3 client for %s: endpoint=%s region=%s credentials=%s", config.display_uri,
              redact_uri(str(endpoint)) if endpoint else "(AWS default)",
              client.meta.region_name,
              "explicit keys" if credentials else f"profile {profile}" if profile
              else "AWS credential chain")
    return client


class S3Blobs(Blobs):
    backend = "s3"

    #: Keys per LIST request; S3's maximum (tests lower it to exercise pagination).
    page_size = 1000

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(config, retry=retry)
        self.bucket = config.container
        #: Every key of this store starts with this; '' at the bucket's root.
        self.root = f"{config.prefix}/" if config.prefix else ""
        self._extra = upload_extra_args(config)
        self._client = make_client(config)
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

    # -- errors ---------------------------------------------------------------------------

    def _where(self, key: str | None) -> str:
        return self.object_uri(key) if key is not None else self.uri

    def _credential_source(self) -> str:
        access = self.config.setting("access_key_id")
        if access is not None and access.value:
            return f"credentials from {access.source}"
        profile = self.config.get("profile")
        return f"profile {profile}" if profile else "credentials from the AWS credential chain"

    def _translate(self, e: BaseException, op: str, key: str | None, *,
                   mode: str = "") -> CloudtrackError:
        """One cloudtrack error for one SDK error; ``mode`` is ``if_absent`` or ``if_version``."""
        where = self._where(key)
        wait: float | None = None
        if isinstance(e, bex.ClientError):
            code, message, status, headers = _error_fields(e)
            cls = _classify(code, status)
            # HEAD answers carry no body: their "code" is the bare status.
            detail = (f"HTTP {status}" if code.isdigit()
                      else f"{code}, HTTP {status}: {message}" if message
                      else f"{code}, HTTP {status}")
            wait = retry_after(headers)
        elif isinstance(e, _CREDENTIAL_ERRORS):
            cls, detail = Unauthenticated, redact(str(e))
        elif isinstance(e, bex.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
            return BlobError(
                f"{op} {where} failed: the endpoint's TLS certificate is not trusted "
                f"({redact(str(e))}); set AWS_CA_BUNDLE to its CA, or MLFLOW_S3_IGNORE_TLS=true "
                "for a test endpoint", where)
        elif isinstance(e, _NETWORK_ERRORS):
            cls, detail = TransientError, redact(str(e))
        elif isinstance(e, bex.ParamValidationError):
            return ConfigError(f"{op} {where}: the S3 request was invalid: {redact(str(e))}")
        else:
            cls, detail = BlobError, redact(f"{type(e).__name__}: {e}")

        if mode == "if_absent" and cls is PreconditionFailed:
            return AlreadyExists(f"{where} already exists", where)
        if mode == "if_version" and cls is BlobNotFound:
            # If-Match on a missing object answers 404: it changed (to nothing) since read.
            return PreconditionFailed(f"{where} no longer exists; read it again", where)
        if cls is PreconditionFailed:
            return PreconditionFailed(f"{where} changed since its version was read ({detail}); "
                                      "read it again and retry", where)
        if cls is ContainerNotFound:
            return ContainerNotFound(f"{op} {where} failed: bucket {self.bucket!r} does not "
                                     f"exist ({detail}); {_HINTS[ContainerNotFound]}", where)
        if cls is BlobNotFound:
            return BlobNotFound(f"no object {where} ({detail})", where)
        hint = _HINTS.get(cls, "")
        if cls is Unauthenticated or cls is PermissionDenied:
            hint = f"{hint} (using {self._credential_source()})"
        error = cls(f"{op} {where} failed: {detail}" + (f"; {hint}" if hint else ""), where)
        if wait is not None and isinstance(error, TransientError):
            error.retry_after = wait  # type: ignore[attr-defined]
        return error

    @contextlib.contextmanager
    def _sdk(self, op: str, key: str | None, *, mode: str = "") -> Iterator[None]:
        """Translate whatever boto3 / s3transfer raise inside the block."""
        try:
            yield
        except RetriesExceededError as e:
            cause = e.last_exception if e.last_exception is not None else e
            raise self._translate(cause, op, key, mode=mode) from cause
        except (bex.ClientError, bex.BotoCoreError) as e:
            raise self._translate(e, op, key, mode=mode) from e
        except RuntimeError as e:
            # botocore's refreshable credentials raise a bare RuntimeError once they are
            # expired and cannot be refreshed (e.g. AWS_CREDENTIAL_EXPIRATION in the past).
            if "expired" not in str(e).lower():
                raise
            raise Unauthenticated(
                f"{op} {self.object_uri(key or '')}: the AWS credentials have expired and could "
                "not be refreshed; renew the session (aws sso login, or new "
                "AWS_SESSION_TOKEN / AWS_CREDENTIAL_EXPIRATION)", self.object_uri(key or "")) from e

    # -- helpers --------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.root + key

    def _info(self, obj: Mapping[str, Any]) -> BlobInfo | None:
        key = str(obj["Key"])[len(self.root):]
        # A key ending in '/' is a console "folder" marker, not something cloudtrack wrote.
        if not key or key.endswith("/"):
            return None
        return BlobInfo(key, int(obj["Size"]), _strip_etag(obj["ETag"]), obj["LastModified"])

    # -- primitives -----------------------------------------------------------------------

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
        mode, op = "", "PUT"
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
                if _error_code(e.__cause__) != "ConditionalRequestConflict" or not mode:
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

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix),
                                "MaxKeys": self.page_size}
        if token:
            args["ContinuationToken"] = token
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
                resp = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except PermissionDenied as e:
            self._explain_forbidden_head(key, e)
            raise
        return BlobInfo(key, int(resp["ContentLength"]), _strip_etag(resp["ETag"]),
                        resp["LastModified"])

    def _explain_forbidden_head(self, key: str, error: BlobError) -> None:
        """A HEAD's 403 has no body, so it cannot say whether the credentials are wrong or
        only lack permission; a one-byte GET of the same object carries S3's error code and
        raises the precise error.  Costs a request on this failure path only."""
        if _error_code(error.__cause__) != "403":
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

    def _download_file(self, key: str, path: str) -> None:
        try:
            with self._sdk("DOWNLOAD", key), \
                    TransferManager(self._client, self._transfer) as manager:
                manager.download(self.bucket, self._full(key), path).result()
        except PermissionDenied as e:
            # s3transfer starts with a HEAD, whose errors have no code.
            self._explain_forbidden_head(key, e)
            raise
        except BlobNotFound as e:
            # Likewise a HEAD's 404 cannot say whether the bucket is missing.
            if not isinstance(e, ContainerNotFound) and not self._bucket_exists():
                raise ContainerNotFound(
                    f"DOWNLOAD {self.object_uri(key)} failed: bucket {self.bucket!r} does not "
                    f"exist; {_HINTS[ContainerNotFound]}", self.object_uri(key)) from e.__cause__
            raise

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
            code = _error_code(e.__cause__)
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

    def close(self) -> None:
        self._client.close()
