"""S3 answers that moto cannot produce, and how S3Blobs translates them.

moto never answers 409 ConditionalRequestConflict (it has no concurrent conditional writes to
report), SlowDown / 500 / 429 throttling with ``Retry-After``, or ExpiredToken (its tokens never
expire).  These tests queue such answers with botocore's own ``Stubber``, which checks them
against the S3 service model; everything moto can produce is tested against moto instead
(tests/blobs/test_conformance.py, test_blobs.py beside this file).  No request leaves the
process.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from cloudtrack.blobs.s3 import CONFLICT_ATTEMPTS, S3Blobs
from cloudtrack.config import resolve
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import RetryPolicy
from cloudtrack.retry import retry_after as _retry_after

ENV = {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
       "AWS_SECRET_ACCESS_KEY": "example-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def _blobs(attempts: int = 1) -> S3Blobs:
    return S3Blobs(resolve("s3://bucket/prefix", ENV),
                   retry=RetryPolicy(attempts=attempts, base_delay=0.0, max_delay=0.0))


@pytest.fixture
def blobs() -> Iterator[S3Blobs]:
    b = _blobs()
    yield b
    b.close()


def _stub(b: S3Blobs) -> Stubber:
    stubber = Stubber(b.client)
    stubber.activate()
    return stubber


def _conflict(stubber: Stubber) -> None:
    stubber.add_client_error("put_object", "ConditionalRequestConflict",
                             "A conflicting operation occurred", 409)


def _get_answer(data: bytes, etag: str) -> dict[str, object]:
    return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ETag": f'"{etag}"',
            "ContentLength": len(data)}


def test_conflict_then_lost_condition_is_already_exists_without_an_own_write_check(blobs: S3Blobs) -> None:
    """A 409 proves our write did not land, so the 412 after it is a plain loss: no GET that
    could mistake another writer's identical bytes for our own earlier write."""
    stubber = _stub(blobs)
    _conflict(stubber)
    stubber.add_client_error("put_object", "PreconditionFailed", "At least one", 412)
    with pytest.raises(AlreadyExists):
        blobs.put_if_absent("claim", b"mine")
    stubber.assert_no_pending_responses()  # and no unexpected get_object was made


def test_conflict_then_success_is_success(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    _conflict(stubber)
    stubber.add_response("put_object", {"ETag": '"v2"'})
    assert blobs.put_if_version("doc", b"2", "v1") == "v2"


def test_conditional_write_sends_the_conditions(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    stubber.add_response("put_object", {"ETag": '"v1"'},
                         {"Bucket": "bucket", "Key": "prefix/a", "Body": b"x", "IfNoneMatch": "*"})
    stubber.add_response("put_object", {"ETag": '"v2"'},
                         {"Bucket": "bucket", "Key": "prefix/a", "Body": b"y", "IfMatch": '"v1"'})
    assert blobs.put_if_absent("a", b"x") == "v1"
    assert blobs.put_if_version("a", b"y", "v1") == "v2"


def test_endless_conflict_on_put_if_version_asks_the_caller_to_read_again(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    for _ in range(CONFLICT_ATTEMPTS):
        _conflict(stubber)
    with pytest.raises(PreconditionFailed) as e:
        blobs.put_if_version("doc", b"2", "v1")
    assert not isinstance(e.value, AlreadyExists)
    assert "ConditionalRequestConflict" in str(e.value)


def test_endless_conflict_on_put_if_absent_is_transient(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    for _ in range(CONFLICT_ATTEMPTS):
        _conflict(stubber)
    with pytest.raises(TransientError) as e:
        blobs.put_if_absent("claim", b"mine")
    assert e.value.__cause__ is not None


def test_retried_put_if_absent_recognises_its_own_earlier_write() -> None:
    """The first attempt's answer was lost (500); the retry meets the object it wrote."""
    b = _blobs(attempts=3)
    stubber = _stub(b)
    stubber.add_client_error("put_object", "InternalError", "We encountered an internal error", 500)
    stubber.add_client_error("put_object", "PreconditionFailed", "At least one", 412)
    stubber.add_response("get_object", _get_answer(b"mine", "v-mine"))
    assert b.put_if_absent("claim", b"mine") == "v-mine"


def test_retried_put_if_absent_meeting_another_write_still_fails() -> None:
    b = _blobs(attempts=3)
    stubber = _stub(b)
    stubber.add_client_error("put_object", "SlowDown", "Please reduce your request rate", 503)
    stubber.add_client_error("put_object", "PreconditionFailed", "At least one", 412)
    stubber.add_response("get_object", _get_answer(b"theirs", "v-theirs"))
    with pytest.raises(AlreadyExists):
        b.put_if_absent("claim", b"mine")


@pytest.mark.parametrize(("code", "status"), [
    ("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503),
    ("RequestTimeout", 400), ("TooManyRequestsException", 429), ("BadGateway", 502),
])
def test_throttling_and_server_errors_are_transient(blobs: S3Blobs, code: str, status: int) -> None:
    stubber = _stub(blobs)
    stubber.add_client_error("get_object", code, "try again", status)
    with pytest.raises(TransientError) as e:
        blobs.get("k")
    assert code in str(e.value) and "s3://bucket/prefix/k" in str(e.value)


def test_retry_after_is_passed_on(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    stubber.add_client_error("get_object", "SlowDown", "Please reduce your request rate", 503,
                             response_meta={"HTTPHeaders": {"retry-after": "7"}})
    with pytest.raises(TransientError) as e:
        blobs.get("k")
    assert e.value.retry_after == 7.0


def test_retry_after_as_an_http_date() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    seconds = _retry_after({"retry-after": format_datetime(when, usegmt=True)})
    assert seconds is not None and 25 <= seconds <= 31
    assert _retry_after({}) is None
    assert _retry_after({"retry-after": "soon"}) is None


@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidToken", "TokenRefreshRequired",
                                  "RequestTimeTooSkewed"])
def test_token_and_clock_failures_are_unauthenticated(blobs: S3Blobs, code: str) -> None:
    stubber = _stub(blobs)
    stubber.add_client_error("list_objects_v2", code, "The provided token has expired", 400)
    with pytest.raises(Unauthenticated) as e:
        list(blobs.list())
    assert "example-secret" not in str(e.value)


def test_account_level_refusals_are_permission_denied(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    stubber.add_client_error("put_object", "AllAccessDisabled", "All access disabled", 403)
    with pytest.raises(PermissionDenied):
        blobs.put("k", b"v")


def test_unknown_client_error_is_a_plain_blob_error(blobs: S3Blobs) -> None:
    stubber = _stub(blobs)
    stubber.add_client_error("put_object", "InvalidStorageClass", "nope", 400)
    with pytest.raises(BlobError) as e:
        blobs.put("k", b"v")
    assert type(e.value) is BlobError
    assert "InvalidStorageClass" in str(e.value)
