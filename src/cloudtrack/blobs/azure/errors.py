"""Azure Blob Storage's errors: the facts of an azure-core error, and the service's code table
(the ``x-ms-error-code`` of every error answer).

Besides ``AzureError`` the SDK raises ``DeserializationError`` (a ``ValueError``) when it cannot
read an answer's headers — a connection cut inside them — and cloudtrack raises
:class:`IncompleteAnswer` for an answer without what every answer of its operation carries:
both are transient (:data:`SDK_ERRORS` is what the backend catches)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)

from cloudtrack.blobs.sdk_errors import (
    ErrorFacts,
    ErrorTable,
    IncompleteAnswer,
    exception_chain,
    one_line,
)
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

#: What the Azure backend translates: the SDK's errors, and answers it could not read.
SDK_ERRORS: tuple[type[Exception], ...] = (AzureError, DeserializationError, IncompleteAnswer)

#: The role a signed-in identity needs for every operation cloudtrack performs.
DATA_ROLE = "Storage Blob Data Contributor"

_PERMISSION = ("AuthorizationPermissionMismatch", "AuthorizationFailure",
               "AuthorizationResourceTypeMismatch", "AuthorizationServiceMismatch",
               "AuthorizationProtocolMismatch", "AuthorizationSourceIPMismatch",
               "InsufficientAccountPermissions", "KeyBasedAuthenticationNotPermitted")
_AUTHENTICATION = ("AuthenticationFailed", "InvalidAuthenticationInfo",
                   "NoAuthenticationInformation", "ExpiredToken", "InvalidToken")

#: Azure error code -> cloudtrack error; codes absent here fall back to the HTTP status.
CODES: Mapping[str, type[BlobError]] = {
    "ContainerNotFound": ContainerNotFound,
    "BlobNotFound": BlobNotFound,
    "BlobAlreadyExists": PreconditionFailed,
    "ConditionNotMet": PreconditionFailed,
    "TargetConditionNotMet": PreconditionFailed,
    **dict.fromkeys(_AUTHENTICATION, Unauthenticated),
    **dict.fromkeys(_PERMISSION, PermissionDenied),
    # The service could not read the source of a copy with the credentials it was given.
    "CannotVerifyCopySource": PermissionDenied,
    "ServerBusy": TransientError,
    "InternalError": TransientError,
    "OperationTimedOut": TransientError,
}

#: What a permission refusal asks for, by what signs.
PERMISSION_HINTS: Mapping[str, str] = {
    "sas": "the SAS must grant read, add, create, write, delete and list (sp=racwdl) on this "
           f"container — or sign in as an identity with the '{DATA_ROLE}' role",
    "account-key": "the account may refuse shared-key access or this network (firewall); use "
                   f"an Azure AD identity with the '{DATA_ROLE}' role, or allow the network",
    "token": f"give the identity the '{DATA_ROLE}' role on the container or account (Owner or "
             "Contributor grant no data access; new assignments take minutes to apply), and "
             "check the account's firewall admits this network",
}

TABLE = ErrorTable(
    CODES,
    # Not implemented (an emulator without the feature): retrying cannot help.
    statuses={501: BlobError},
    # Azurite answers a wrong SharedKey signature or an expired SAS with AuthorizationFailure
    # whose message is Azure's AuthenticationFailed text: it could not authenticate us.
    worded={("AuthorizationFailure", "failed to authenticate"): Unauthenticated},
    hints={
        ContainerNotFound: "create it (`az storage container create --name {container_name}`) "
                           "or check the URI",
        Unauthenticated: "check that the key, SAS or token is current and belongs to this "
                         "account",
        (Unauthenticated, "credentials"): "sign in (`az login`), run with a managed or "
                                          "workload identity, or set "
                                          "AZURE_STORAGE_CONNECTION_STRING, "
                                          "AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN",
        (Unauthenticated, "AzureSigningError"): "copy it again from the portal (Access keys)",
        PermissionDenied: "{permission_hint}",
        (BlobError, "tls"): "point REQUESTS_CA_BUNDLE or SSL_CERT_FILE at the CA bundle that "
                            "signed it",
        (TransientError, "network"): "check the endpoint and the network",
    },
    wording={
        (Unauthenticated, "credentials"): "{signer} could not get a token",
        (Unauthenticated, "AzureSigningError"): "{signer} could not sign the request: the "
                                                "account key is not valid base64",
        (TransientError, "DeserializationError"): "the answer from {endpoint} could not be "
                                                  "read (cut off or garbled; the request may "
                                                  "have been carried out)",
    })


def error_code(e: BaseException) -> str:
    """The service's error code of an azure-core error ('' when it has none)."""
    code = getattr(e, "error_code", None)
    headers = getattr(getattr(e, "response", None), "headers", None)
    if code is None and headers is not None:
        code = headers.get("x-ms-error-code")
    return str(getattr(code, "value", code)) if code else ""


def _sdk_detail(e: BaseException) -> str:
    """The SDK's own explanation, secrets removed, on one line, bounded."""
    return one_line(redact(str(getattr(e, "message", None) or str(e) or type(e).__name__)))


def _is_certificate_error(e: BaseException) -> bool:
    # requests and urllib3 re-wrap the ssl error and keep only its text at times.
    return any(isinstance(x, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(x)
               for x in exception_chain(e))


def error_facts(e: BaseException) -> ErrorFacts | None:
    """The facts of an azure-core error, or of an answer that could not be read; None for
    anything else."""
    name = type(e).__name__
    if isinstance(e, IncompleteAnswer):
        return ErrorFacts("network", message=str(e), error=name)
    if isinstance(e, DeserializationError):
        return ErrorFacts("network", message=_sdk_detail(e), error=name)
    status = int(getattr(e, "status_code", None) or 0)
    if isinstance(e, HttpResponseError) and status:
        raw: Any = getattr(e.response, "headers", None) or {}
        headers = {str(k).lower(): str(v) for k, v in raw.items()}
        # The service's message comes first; the SDK appends RequestId, Time, ErrorCode and
        # the error's further fields (AuthenticationErrorDetail …), kept as details.
        message = str(getattr(e, "message", "") or "").split("\n", 1)[0]
        info = getattr(e, "additional_info", None) or {}
        details = {str(k): one_line(redact(str(v))) for k, v in info.items() if v}
        said = one_line(redact(" ".join([message, *(f"{k}: {v}" for k, v in details.items())])))
        return ErrorFacts("response", status, error_code(e), said,
                          request_id=headers.get("x-ms-request-id"),
                          retry_after=retry_after(headers), headers=headers, details=details,
                          error=name)
    if isinstance(e, ClientAuthenticationError):
        # No answer: the credential itself failed before a request was sent.
        signing = any(c.__name__ == "AzureSigningError" for c in type(e).__mro__)
        return ErrorFacts("credentials", message=_sdk_detail(e),
                          error="AzureSigningError" if signing else name)
    if isinstance(e, ServiceRequestError) and _is_certificate_error(e):
        return ErrorFacts("tls", message=_sdk_detail(e), error=name)
    if isinstance(e, ServiceRequestError | ServiceResponseError | IncompleteReadError):
        return ErrorFacts("network", message=_sdk_detail(e), error=name)
    if isinstance(e, HttpResponseError):
        # A response-less HttpResponseError is a broken or undecodable reply.
        return ErrorFacts("network", message=f"the reply could not be read: {_sdk_detail(e)}",
                          error=name)
    if isinstance(e, AzureError):
        return ErrorFacts("other", message=_sdk_detail(e), error=name)
    return None
