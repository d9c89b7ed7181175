"""The one translation shape: each backend's code table read by the shared pure function
:func:`cloudtrack.blobs.sdk_errors.translate`, with the service's request id in the message
and ``Retry-After`` as the transient error's field.  Pure: facts in, an error out; the SDKs'
own exceptions are fed to the extractors where building them needs no service."""

from __future__ import annotations

import json

import botocore.exceptions as bex
import pytest
import requests
from google.api_core import exceptions as api_exceptions

from cloudtrack.blobs.azure import TABLE as AZURE
from cloudtrack.blobs.gcs import TABLE as GCS
from cloudtrack.blobs.gcs import error_facts as gcs_facts
from cloudtrack.blobs.s3 import TABLE as S3
from cloudtrack.blobs.s3 import error_facts as s3_facts
from cloudtrack.blobs.sdk_errors import ErrorFacts, ErrorTable, Mode, Where, classify, translate
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    CloudtrackError,
    ConfigError,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)

OBJECT = "s3://bkt/pre/k"
STORE = "s3://bkt/pre"


def answer(status: int, code: str = "", message: str = "", **kw: object) -> ErrorFacts:
    return ErrorFacts("response", status, code, message, **kw)  # type: ignore[arg-type]


def where(mode: Mode = "", **kw: bool) -> Where:
    return Where("GET", OBJECT, STORE, mode, **kw)


@pytest.mark.parametrize(("table", "facts", "expected"), [
    # S3: the code decides, then the status (HEAD answers carry the bare status as code).
    (S3, answer(404, "NoSuchKey"), BlobNotFound),
    (S3, answer(404, "NoSuchBucket"), ContainerNotFound),
    (S3, answer(404, "404"), BlobNotFound),
    (S3, answer(403, "403"), PermissionDenied),
    (S3, answer(403, "AccessDenied"), PermissionDenied),
    (S3, answer(403, "InvalidAccessKeyId"), Unauthenticated),
    (S3, answer(400, "ExpiredToken"), Unauthenticated),
    (S3, answer(400, "RequestTimeout"), TransientError),
    (S3, answer(409, "ConditionalRequestConflict"), TransientError),
    (S3, answer(412, "PreconditionFailed"), PreconditionFailed),
    (S3, answer(503, "SlowDown"), TransientError),
    (S3, answer(502, "BadGateway"), TransientError),
    (S3, answer(400, "InvalidStorageClass"), BlobError),
    # Azure: x-ms-error-code first; one code means two things, told apart by its words.
    (AZURE, answer(404, "BlobNotFound"), BlobNotFound),
    (AZURE, answer(404, "ContainerNotFound"), ContainerNotFound),
    (AZURE, answer(409, "BlobAlreadyExists"), PreconditionFailed),
    (AZURE, answer(412, "ConditionNotMet"), PreconditionFailed),
    (AZURE, answer(403, "AuthenticationFailed"), Unauthenticated),
    (AZURE, answer(403, "AuthorizationPermissionMismatch"), PermissionDenied),
    (AZURE, answer(403, "AuthorizationFailure", "This request is not authorized to perform "
                                                "this operation."), PermissionDenied),
    (AZURE, answer(403, "AuthorizationFailure", "Server failed to authenticate the request."),
     Unauthenticated),
    (AZURE, answer(500, "OperationTimedOut"), TransientError),
    (AZURE, answer(429), TransientError),
    (AZURE, answer(400, "InvalidHeaderValue"), BlobError),
    # GCS: the status decides; 501 is a missing feature, not a passing failure.
    (GCS, answer(401), Unauthenticated),
    (GCS, answer(403, "forbidden"), PermissionDenied),
    (GCS, answer(404, "notFound"), BlobNotFound),
    (GCS, answer(412, "conditionNotMet"), PreconditionFailed),
    (GCS, answer(429, "rateLimitExceeded"), TransientError),
    (GCS, answer(503), TransientError),
    (GCS, answer(501), BlobError),
    (GCS, answer(0), BlobError),
])
def test_each_backend_table(table: ErrorTable, facts: ErrorFacts,
                            expected: type[CloudtrackError]) -> None:
    assert classify(facts, table, where())[0] is expected
    error = translate(facts, table, where(), CONTEXT)
    assert type(error) is expected
    assert "<" not in str(error), "every field of the wording is filled"


#: What the blob classes fill the wording with.
CONTEXT = {"signer": "the signer", "container": "bucket 'bkt'", "container_name": "bkt",
           "endpoint": "http://127.0.0.1:9", "permission": "permission storage.objects.get",
           "permission_hint": "grant the role"}


@pytest.mark.parametrize(("kind", "expected"), [
    ("credentials", Unauthenticated), ("network", TransientError), ("tls", BlobError),
    ("request", ConfigError), ("other", BlobError),
])
def test_failures_without_an_answer(kind: str, expected: type[CloudtrackError]) -> None:
    for table in (S3, AZURE, GCS):
        error = translate(ErrorFacts(kind, message="what the SDK said"), table, where())  # type: ignore[arg-type]
        assert type(error) is expected
        assert "what the SDK said" in str(error)


@pytest.mark.parametrize(("facts", "mode", "expected"), [
    (answer(412, "PreconditionFailed"), "if_absent", AlreadyExists),
    (answer(409, "BlobAlreadyExists"), "if_absent", AlreadyExists),
    (answer(412, "PreconditionFailed"), "if_version", PreconditionFailed),
    # A conditional write on a vanished object: it changed, to nothing.
    (answer(404, "NoSuchKey"), "if_version", PreconditionFailed),
    # A ranged read pinned to the first range's version: the object changed under it.
    (answer(412, "ConditionNotMet"), "reading", TransientError),
    (answer(404, "ContainerNotFound"), "if_version", ContainerNotFound),
])
def test_the_operation_refines_the_class(facts: ErrorFacts, mode: Mode,
                                         expected: type[CloudtrackError]) -> None:
    table = ErrorTable({**S3.codes, **AZURE.codes})
    assert type(translate(facts, table, where(mode))) is expected


def test_a_404_where_the_object_cannot_be_missing_is_the_container() -> None:
    error = translate(answer(404), GCS, where(missing_is_container=True),
                      {"container": "bucket gs://bkt"})
    assert isinstance(error, ContainerNotFound)
    assert error.uri == STORE, "a missing container is reported on the store"
    assert "bucket gs://bkt does not exist" in str(error)


def test_message_names_operation_object_service_words_request_id_and_fix() -> None:
    facts = answer(403, "AccessDenied", "Access Denied.", request_id="4442587FB7D0A2F9")
    error = translate(facts, S3, where(), {"signer": "AWS_ACCESS_KEY_ID"})
    assert str(error) == (
        "GET s3://bkt/pre/k failed: the credentials from AWS_ACCESS_KEY_ID were accepted but "
        "are not allowed to do this (AccessDenied, HTTP 403: Access Denied; request id "
        "4442587FB7D0A2F9); allow the s3: action on this bucket and prefix in the IAM or "
        "bucket policy, or check the bucket name (S3 answers AccessDenied, not NoSuchBucket, "
        "for a bucket outside the caller's policy)")
    assert error.uri == OBJECT


def test_retry_after_becomes_the_transient_errors_field() -> None:
    error = translate(answer(503, "SlowDown", retry_after=7.0), S3, where())
    assert isinstance(error, TransientError) and error.retry_after == 7.0
    assert translate(answer(500, "InternalError"), S3, where()).retry_after is None  # type: ignore[attr-defined]


def test_a_hint_for_a_code_wins_over_its_class() -> None:
    facts = ErrorFacts("credentials", message="Incorrect padding", error="AzureSigningError")
    error = translate(facts, AZURE, where(), {"signer": "AZURE_STORAGE_ACCESS_KEY",
                                              "permission_hint": ""})
    assert "AZURE_STORAGE_ACCESS_KEY could not sign the request: the account key is not " \
           "valid base64" in str(error)
    assert "portal (Access keys)" in str(error) and "az login" not in str(error)


# -- the extractors --------------------------------------------------------------------------


def test_s3_facts_of_a_botocore_error() -> None:
    e = bex.ClientError({
        "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate.",
                  "BucketRegion": "eu-west-1"},
        "ResponseMetadata": {"HTTPStatusCode": 503, "RequestId": "REQ123",
                             "HTTPHeaders": {"Retry-After": "3", "x-amz-request-id": "REQ123"}},
    }, "GetObject")
    facts = s3_facts(e)
    assert facts is not None
    assert (facts.kind, facts.status, facts.code, facts.request_id, facts.retry_after) == (
        "response", 503, "SlowDown", "REQ123", 3.0)
    assert facts.details == {"BucketRegion": "eu-west-1"}
    assert facts.headers["retry-after"] == "3"
    assert s3_facts(bex.NoCredentialsError()).kind == "credentials"  # type: ignore[union-attr]
    assert s3_facts(bex.EndpointConnectionError(endpoint_url="http://x")).kind == "network"  # type: ignore[union-attr]
    assert s3_facts(KeyError("a bug")) is None


def _gcs_error(status: int, url: str, headers: dict[str, str]) -> api_exceptions.GoogleAPICallError:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"error": {"code": status, "message": "Backend Error",
                                              "errors": [{"reason": "backendError"}]}}).encode()
    response.headers.update(headers)
    response.request = requests.Request("PUT", url).prepare()
    return api_exceptions.from_http_response(response)


def test_gcs_facts_carry_the_request_id_but_never_an_upload_session() -> None:
    facts = gcs_facts(_gcs_error(503, "https://storage.googleapis.com/storage/v1/b/bkt/o",
                                 {"X-GUploader-UploadID": "ABPtcPq", "Retry-After": "2"}))
    assert facts is not None
    assert (facts.status, facts.code, facts.request_id, facts.retry_after) == (
        503, "backendError", "ABPtcPq", 2.0)
    session = "https://storage.googleapis.com/upload/storage/v1/b/bkt/o?uploadType=resumable" \
              "&upload_id=SESSIONSECRET"
    facts = gcs_facts(_gcs_error(503, session, {"X-GUploader-UploadID": "SESSIONSECRET"}))
    assert facts is not None and facts.request_id is None
    assert "SESSIONSECRET" not in str(translate(facts, GCS, where()))


def test_the_retry_loop_waits_what_the_service_asked() -> None:
    from cloudtrack.retry import RetryPolicy, call_with_retry

    answers: list[object] = [TransientError("busy", "s3://bkt/k", retry_after=2.0),
                             TransientError("busy again", "s3://bkt/k"), "done"]
    slept: list[float] = []

    def attempt(_: int) -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=1.0)
    assert call_with_retry(attempt, what="GET", policy=policy, sleep=slept.append) == "done"
    assert slept == [2.0, 0.0], "Retry-After first, then the policy's own backoff"
