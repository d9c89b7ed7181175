"""Google Cloud Storage's errors: the facts of a google-cloud-storage / google-auth / requests
error, and how to read them.  GCS's JSON API says what went wrong by status (its ``reason``
is kept as the code); a 404 does not say whether the object or the bucket is missing, which
:class:`~cloudtrack.blobs.gcs.GcsBlobs` finds out where it matters."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from cloudtrack.blobs.sdk_errors import ErrorFacts, ErrorTable, IncompleteAnswer, one_line
from cloudtrack.config import redact
from cloudtrack.credentials.gcs import LOGIN_HINT
from cloudtrack.errors import (
    BlobError,
    ContainerNotFound,
    PermissionDenied,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import retry_after

#: A permission named in a 403's message.
PERMISSION = re.compile(r"\bstorage\.[a-zA-Z]+\.[a-zA-Z]+\b")
_METHOD_URL = re.compile(r"^[A-Z]+ \S+: ")
#: The session of a resumable upload is a bearer secret: anyone holding it may upload.
_UPLOAD_ID = re.compile(r"(upload_id=)[^&\s\"']+")

TABLE = ErrorTable(
    {},
    # "Not implemented": an emulator without the feature; retrying cannot help.
    statuses={501: BlobError},
    hints={
        ContainerNotFound: "create it or check the URI",
        Unauthenticated: LOGIN_HINT,
        (Unauthenticated, "RefreshError"): "the key in GOOGLE_APPLICATION_CREDENTIALS may be "
                                           "deleted or revoked, or the login expired: create a "
                                           "new key or run `gcloud auth application-default "
                                           "login` again",
        (Unauthenticated, "InvalidOperation"): "STORAGE_EMULATOR_HOST without "
                                               "GOOGLE_APPLICATION_CREDENTIALS sends none; set "
                                               "GOOGLE_APPLICATION_CREDENTIALS",
        PermissionDenied: "the caller lacks {permission}: grant it on the bucket (e.g. "
                          "roles/storage.objectUser) or use other credentials",
        (BlobError, "tls"): "check the endpoint's certificate or REQUESTS_CA_BUNDLE",
        (TransientError, "DataCorruption"): "the transfer will be repeated",
    },
    wording={
        # requests' SSLError is any TLS failure, not only an untrusted certificate.
        (BlobError, "tls"): "TLS with {endpoint} failed",
        (Unauthenticated, "RefreshError"): "the credentials were rejected when refreshing the "
                                           "access token",
        (Unauthenticated, "InvalidOperation"): "the service requires credentials, and none are "
                                               "sent",
        (TransientError, "RefreshError"): "refreshing the access token failed transiently",
        (TransientError, "TransportError"): "cannot reach the token endpoint",
        (TransientError, "DataCorruption"): "the checksum of the transferred data did not match",
    })


def clean(text: str) -> str:
    """``text`` without secrets or the session ids of resumable uploads."""
    return redact(_UPLOAD_ID.sub(r"\1***", text))


def _server_message(e: api_exceptions.GoogleAPICallError) -> str:
    response = getattr(e, "response", None)
    text = ""
    if response is not None:
        try:
            text = str(response.json()["error"]["message"])
        except Exception:
            text = ""
    if not text:
        # The SDK prefixes "METHOD URL: "; URLs of resumable sessions hold an upload_id.
        text = _METHOD_URL.sub("", str(e.message or ""))
    return clean(one_line(text, 500)) or f"HTTP {e.code}"


def _request_id(response: Any, headers: dict[str, str]) -> str | None:
    """GCS's id of the request — unless it is the session of a resumable upload (GCS sends the
    upload's id in this header), which must stay secret."""
    upload = headers.get("x-guploader-uploadid")
    request = getattr(response, "request", None)
    query = urllib.parse.urlsplit(str(getattr(request, "url", "") or "")).query
    if upload and upload in urllib.parse.parse_qs(query).get("upload_id", ()):
        return None
    return upload or None


def _http(e: api_exceptions.GoogleAPICallError) -> ErrorFacts:
    response = getattr(e, "response", None)
    raw = getattr(response, "headers", None) or {}
    headers = {str(k).lower(): str(v) for k, v in raw.items()}
    errors = getattr(e, "errors", None) or []
    reason = errors[0].get("reason") if errors and isinstance(errors[0], dict) else None
    return ErrorFacts("response", int(e.code or 0), str(reason or ""), _server_message(e),
                      request_id=_request_id(response, headers), retry_after=retry_after(headers),
                      headers=headers, error=type(e).__name__)


def error_facts(e: BaseException) -> ErrorFacts | None:
    """The facts of an error of google-cloud-storage, google-auth or requests; None for
    anything else (a bug, to be seen as what it is)."""
    if isinstance(e, IncompleteAnswer):
        return ErrorFacts("network", message=str(e), error=type(e).__name__)
    if isinstance(e, json.JSONDecodeError):
        # An upload's answer (or another JSON one) cut off or garbled: requests raises its
        # JSONDecodeError, which is json's too.
        return ErrorFacts("network", message=f"an answer that is not JSON: {clean(str(e))}",
                          error="IncompleteAnswer")
    if isinstance(e, InvalidResponse):  # a media error the SDK did not convert
        status = getattr(e.response, "status_code", 0)
        e = api_exceptions.from_http_status(status, str(e), response=e.response)
    name = type(e).__name__
    if isinstance(e, api_exceptions.GoogleAPICallError):
        return _http(e)
    if isinstance(e, google.auth.exceptions.RefreshError):
        # args[0] is google-auth's message; args[1] the token endpoint's whole answer.
        said = clean(str(e.args[0] if e.args else e))
        return ErrorFacts("network" if getattr(e, "retryable", False) else "credentials",
                          message=said, error=name)
    if isinstance(e, google.auth.exceptions.InvalidOperation):
        # The service answered 401 to the anonymous client of a bare STORAGE_EMULATOR_HOST.
        return ErrorFacts("credentials", message=clean(str(e)), error=name)
    if isinstance(e, google.auth.exceptions.TransportError):
        return ErrorFacts("network", message=clean(str(e)), error=name)
    if isinstance(e, google.auth.exceptions.GoogleAuthError):
        return ErrorFacts("credentials", message=clean(str(e)), error=name)
    if isinstance(e, requests.exceptions.SSLError):
        return ErrorFacts("tls", message=clean(str(e)), error=name)
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                      requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)):
        return ErrorFacts("network", message=clean(str(e)), error=name)
    if isinstance(e, DataCorruption):
        return ErrorFacts("network", error=name)
    if type(e).__module__.split(".")[0] in ("google", "requests", "urllib3"):
        return ErrorFacts("other", message=clean(str(e)), error=name)
    return None
