"""S3's errors: the facts of a botocore error, and S3's code table.

HEAD responses carry no body, so botocore gives their bare status as the code (``"404"``); the
status then decides.
"""

from __future__ import annotations

from collections.abc import Mapping

import botocore.exceptions as bex
from s3transfer.exceptions import RetriesExceededError

from cloudtrack.blobs.sdk_errors import ErrorFacts, ErrorTable, IncompleteAnswer
from cloudtrack.config import redact
from cloudtrack.errors import (
    BlobError,
    BlobNotFound,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import retry_after

#: Errors botocore raises before or instead of a response: credentials it could not find or use.
CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    bex.NoCredentialsError,
    bex.PartialCredentialsError,
    bex.CredentialRetrievalError,
    bex.NoAuthTokenError,
    bex.TokenRetrievalError,
    bex.SSOError,
    bex.RefreshWithMFAUnsupportedError,
)

#: Network failures worth another attempt: connect, reset, timeout, a body cut short.
NETWORK_ERRORS: tuple[type[Exception], ...] = (
    bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy errors
    bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bex.IncompleteReadError,
)

#: S3 error code -> cloudtrack error; codes absent here fall back to the HTTP status.
CODES: Mapping[str, type[BlobError]] = {
    "NoSuchKey": BlobNotFound,
    "NotFound": BlobNotFound,
    "NoSuchBucket": ContainerNotFound,
    "PreconditionFailed": PreconditionFailed,
    # Another conditional write on the key was in flight; ours did not land.
    "ConditionalRequestConflict": TransientError,
    "AccessDenied": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "AccountProblem": PermissionDenied,
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

#: How to fix each kind of failure.
HINT_MISSING_BUCKET = "create the bucket, or check the URI, the endpoint and the region"
TABLE = ErrorTable(CODES, statuses={
    # NotImplemented: an S3-compatible server without the operation; retrying cannot help.
    501: BlobError,
}, hints={
    ContainerNotFound: HINT_MISSING_BUCKET,
    PermissionDenied: "allow the s3: action on this bucket and prefix in the IAM or bucket "
                      "policy, or check the bucket name (S3 answers AccessDenied, not "
                      "NoSuchBucket, for a bucket outside the caller's policy)",
    Unauthenticated: "check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                     "(+ AWS_SESSION_TOKEN), AWS_PROFILE, or the AWS credential chain; renew "
                     "expired tokens and check the system clock",
    TransientError: "cloudtrack retries this; if it persists, check the endpoint and the "
                    "network",
    (BlobError, "tls"): "set AWS_CA_BUNDLE to its CA, or MLFLOW_S3_IGNORE_TLS=true for a test "
                        "endpoint",
})


def _response(e: bex.ClientError) -> ErrorFacts:
    err = e.response.get("Error", {}) or {}
    meta = e.response.get("ResponseMetadata", {}) or {}
    status = int(meta.get("HTTPStatusCode") or 0)
    headers = {str(k).lower(): str(v) for k, v in (meta.get("HTTPHeaders") or {}).items()}
    return ErrorFacts(
        "response", status, str(err.get("Code") or (status or "")),
        redact(str(err.get("Message") or "")),
        request_id=meta.get("RequestId") or headers.get("x-amz-request-id") or None,
        retry_after=retry_after(headers), headers=headers,
        details={str(k): redact(str(v)) for k, v in err.items() if k not in ("Code", "Message")},
        error=type(e).__name__)


def error_facts(e: BaseException) -> ErrorFacts | None:
    """The facts of a botocore or s3transfer error, or of an answer cut off
    (:class:`IncompleteAnswer`); None for anything else."""
    if isinstance(e, RetriesExceededError) and e.last_exception is not None:
        e = e.last_exception
    name = type(e).__name__
    if isinstance(e, IncompleteAnswer):
        return ErrorFacts("network", message=str(e), error=name)
    if isinstance(e, bex.ClientError):
        return _response(e)
    if isinstance(e, CREDENTIAL_ERRORS):
        return ErrorFacts("credentials", message=redact(str(e)), error=name)
    if isinstance(e, bex.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
        return ErrorFacts("tls", message=redact(str(e)), error=name)
    if isinstance(e, NETWORK_ERRORS):
        return ErrorFacts("network", message=redact(str(e)), error=name)
    if isinstance(e, bex.ParamValidationError):
        return ErrorFacts("request", message=redact(str(e)), error=name)
    if isinstance(e, bex.BotoCoreError):
        return ErrorFacts("other", message=redact(f"{name}: {e}"), error=name)
    if isinstance(e, RuntimeError) and "expired" in str(e).lower():
        # botocore's refreshable credentials raise a bare RuntimeError once they are expired
        # and cannot be refreshed (e.g. AWS_CREDENTIAL_EXPIRATION in the past).
        return ErrorFacts("credentials", message="the AWS credentials have expired and could "
                          "not be refreshed; renew the session (aws sso login, or new "
                          "AWS_SESSION_TOKEN / AWS_CREDENTIAL_EXPIRATION)", error=name)
    return None
