"""GcsBlobs' one error table, fed with the exceptions the SDK raises for real GCS answers.

The responses are built by hand because no emulator produces them on demand: real GCS's
404 wording, 403 naming a permission, 429 with Retry-After, 5xx, resets and timeouts.  They
go through ``google.api_core.exceptions.from_http_response``, the SDK's own conversion.
"""

from __future__ import annotations

import json

import google.auth.exceptions
import pytest
import requests
from google.api_core import exceptions as api_exceptions

from cloudtrack.blobs.gcs import GcsBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)

URL = "https://storage.googleapis.com/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=SESSIONSECRET"


def http_error(status: int, message: str, headers: dict[str, str] | None = None
               ) -> api_exceptions.GoogleAPICallError:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"error": {"code": status, "message": message}}).encode()
    response.headers.update(headers or {})
    response.request = requests.Request("PUT", URL).prepare()
    return api_exceptions.from_http_response(response)


@pytest.fixture
def blobs(monkeypatch: pytest.MonkeyPatch) -> GcsBlobs:
    b = GcsBlobs(resolve("gs://bkt/pre", {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}))

    def no_probe() -> None:
        raise AssertionError("a 404 whose message names the culprit needs no bucket probe")

    monkeypatch.setattr(b, "_bucket", no_probe)
    return b


def translate(blobs: GcsBlobs, e: Exception, **kw: object) -> BlobError:
    with pytest.raises(BlobError) as caught:
        blobs._raise(e, "dir/key", "PUT", **kw)  # type: ignore[arg-type]
    assert caught.value.__cause__ is e
    return caught.value


def test_missing_object_and_missing_bucket_are_told_apart(blobs: GcsBlobs) -> None:
    err = translate(blobs, http_error(404, "No such object: bkt/pre/dir/key"))
    assert type(err) is BlobNotFound
    assert "gs://bkt/pre/dir/key" in str(err)
    err = translate(blobs, http_error(404, "The specified bucket does not exist."))
    assert isinstance(err, ContainerNotFound)
    assert "gs://bkt" in str(err)


def test_404_on_a_write_or_listing_is_the_bucket(blobs: GcsBlobs) -> None:
    assert isinstance(translate(blobs, http_error(404, "Not Found"), missing="bucket"),
                      ContainerNotFound)


def test_412_is_already_exists_for_put_if_absent_only(blobs: GcsBlobs) -> None:
    e = http_error(412, "At least one of the pre-conditions you specified did not hold.")
    assert isinstance(translate(blobs, e, if_absent=True), AlreadyExists)
    err = translate(blobs, e)
    assert isinstance(err, PreconditionFailed) and not isinstance(err, AlreadyExists)


def test_403_names_the_missing_permission(blobs: GcsBlobs) -> None:
    err = translate(blobs, http_error(
        403, "sa@p.iam.gserviceaccount.com does not have storage.objects.create access to the "
             "Google Cloud Storage object. Permission 'storage.objects.create' denied on "
             "resource (or it may not exist)."))
    assert isinstance(err, PermissionDenied)
    assert "permission storage.objects.create" in str(err)


@pytest.mark.parametrize("error", [
    http_error(401, "Invalid Credentials"),
    google.auth.exceptions.RefreshError("invalid_grant: Invalid JWT Signature.",
                                        {"error": "invalid_grant"}),
    google.auth.exceptions.DefaultCredentialsError("File sa.json was not found."),
])
def test_credential_failures_are_unauthenticated(blobs: GcsBlobs, error: Exception) -> None:
    assert isinstance(translate(blobs, error), Unauthenticated)


def test_429_keeps_retry_after(blobs: GcsBlobs) -> None:
    err = translate(blobs, http_error(429, "rate limited", {"Retry-After": "7"}))
    assert isinstance(err, TransientError)
    assert err.retry_after == 7.0


@pytest.mark.parametrize("error", [
    http_error(500, "Backend Error"),
    http_error(503, "Service Unavailable"),
    http_error(408, "Request Timeout"),
    requests.exceptions.ConnectionError("Connection reset by peer"),
    requests.exceptions.ReadTimeout("read timed out"),
    google.auth.exceptions.TransportError("token endpoint unreachable"),
    google.auth.exceptions.RefreshError("temporarily_unavailable", retryable=True),
])
def test_transient_failures(blobs: GcsBlobs, error: Exception) -> None:
    err = translate(blobs, error)
    assert isinstance(err, TransientError)


@pytest.mark.parametrize("error", [
    http_error(400, "Invalid argument"),
    requests.exceptions.SSLError("certificate verify failed"),
])
def test_permanent_failures_are_not_retried(blobs: GcsBlobs, error: Exception) -> None:
    err = translate(blobs, error)
    assert not isinstance(err, (TransientError, Unauthenticated, PermissionDenied))


def test_messages_carry_no_session_ids_or_tokens(blobs: GcsBlobs) -> None:
    response = requests.Response()
    response.status_code = 500
    response._content = b"Bearer ya29.SECRETTOKEN failed"
    response.request = requests.Request("PUT", URL).prepare()
    err = translate(blobs, api_exceptions.from_http_response(response))
    assert "SECRETTOKEN" not in str(err)
    assert "SESSIONSECRET" not in str(err)


def test_unknown_sdk_errors_are_blob_errors_and_bugs_stay_bugs(blobs: GcsBlobs) -> None:
    err = translate(blobs, api_exceptions.GoogleAPICallError("odd"))
    assert type(err) is BlobError
    bug = KeyError("x")
    with pytest.raises(KeyError) as caught:
        blobs._raise(bug, "k", "PUT")
    assert caught.value is bug
