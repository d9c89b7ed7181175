"""The S3 backend against moto with IAM enforced, beyond the conformance suite: permissions,
credential and network failures, upload arguments, pagination, bucket creation, and the
atomicity that ``backends/s3/server.py`` adds to moto."""

from __future__ import annotations

import concurrent.futures
import socket

import pytest

from backends._common import LOOPBACK, free_port
from backends.s3.service import MotoS3Iam
from cloudtrack.blobs import open_blobs
from cloudtrack.blobs.base import MULTIPART_THRESHOLD
from cloudtrack.blobs.s3 import S3Blobs
from cloudtrack.config import resolve
from cloudtrack.errors import (
    BlobNotFound,
    ConfigError,
    PermissionDenied,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import RetryPolicy

# Every test here runs on the conformance suite's "s3" service (moto, IAM enforced).
pytestmark = pytest.mark.parametrize("store", ["s3"], indirect=True)

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01)


def _iam(store) -> MotoS3Iam:  # type: ignore[no-untyped-def]
    assert isinstance(store.service, MotoS3Iam)
    return store.service


def test_read_only_user_reads_but_cannot_write(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store.open().put("k", b"v")
    ro = open_blobs(resolve(store.uri, _iam(store).read_only_env()))
    assert ro.get("k") == b"v"
    assert [i.key for i in ro.list()] == ["k"]
    assert ro.stat("k").size == 1
    with pytest.raises(PermissionDenied) as e:
        ro.put("k", b"w")
    assert not isinstance(e.value, Unauthenticated)
    assert "s3://" in str(e.value) and "AccessDenied" in str(e.value)
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(PermissionDenied):
        ro.upload_file("up", src)


def test_valid_credentials_without_rights_are_denied_not_unauthenticated(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store.open().put("k", b"v")
    nobody = open_blobs(resolve(store.uri, _iam(store).no_access_env()))
    for call in (lambda: nobody.get("k"), lambda: list(nobody.list()),
                 lambda: nobody.put("k", b"w"),
                 # HEAD answers have no error code; the backend asks again with a GET.
                 lambda: nobody.stat("k"),
                 lambda: nobody.download_file("k", tmp_path / "k")):
        with pytest.raises(PermissionDenied) as e:
            call()
        assert not isinstance(e.value, Unauthenticated), e.value


def test_wrong_secret_is_unauthenticated(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store.open().put("k", b"v")
    env = {**store.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-" + "x" * 27}
    bad = open_blobs(resolve(store.uri, env))
    for call in (lambda: bad.put("k", b"w"), lambda: bad.stat("k"),
                 lambda: bad.download_file("k", tmp_path / "k")):
        with pytest.raises(Unauthenticated) as e:
            call()
        assert "SignatureDoesNotMatch" in str(e.value)
        assert "wrong-secret" not in str(e.value)


def test_no_credentials_anywhere_is_unauthenticated(store, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With the process environment as the source, boto3's own chain runs and finds nothing."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", store.env["MLFLOW_S3_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    blobs = open_blobs(store.uri)
    with pytest.raises(Unauthenticated) as e:
        blobs.get("k")
    assert type(e.value.__cause__).__name__ == "NoCredentialsError"


def test_half_a_key_pair_is_a_config_error(store) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in store.env.items() if k != "AWS_SECRET_ACCESS_KEY"}
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        open_blobs(resolve(store.uri, env))


def test_unreachable_endpoint_is_transient(store) -> None:  # type: ignore[no-untyped-def]
    env = {**store.env, "MLFLOW_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{free_port()}"}
    blobs = S3Blobs(resolve(store.uri, env), retry=FAST)
    with pytest.raises(TransientError) as e:
        blobs.get("k")
    assert type(e.value.__cause__).__name__ == "EndpointConnectionError"


def test_endpoint_that_never_answers_times_out_as_transient(store) -> None:  # type: ignore[no-untyped-def]
    # A socket that listens but never accepts: the kernel completes the handshake, nobody
    # answers the request.
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(8)
        env = {**store.env, "CLOUDTRACK_READ_TIMEOUT": "0.3",
               "MLFLOW_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{silent.getsockname()[1]}"}
        blobs = S3Blobs(resolve(store.uri, env), retry=FAST)
        with pytest.raises(TransientError) as e:
            blobs.get("k")
    assert type(e.value.__cause__).__name__ == "ReadTimeoutError"


def test_upload_extra_args_reach_every_write(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**store.env, "MLFLOW_S3_UPLOAD_EXTRA_ARGS":
           '{"Metadata": {"origin": "cloudtrack"}, "ServerSideEncryption": "AES256"}'}
    blobs = open_blobs(resolve(store.uri, env))
    small = tmp_path / "small"
    small.write_bytes(b"s")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(MULTIPART_THRESHOLD + 1024 * 1024)
    versions = {"put": blobs.put("put", b"p"), "small": blobs.upload_file("small", small),
                "big": blobs.upload_file("big", big)}
    bucket, prefix = store.uri.removeprefix("s3://").split("/", 1)
    for key, version in versions.items():
        head = _iam(store).s3.head_object(Bucket=bucket, Key=f"{prefix}/{key}")
        assert head["Metadata"] == {"origin": "cloudtrack"}, key
        assert head["ServerSideEncryption"] == "AES256", key
        assert blobs.stat(key).version == version
    assert "-" in versions["big"], "a multipart ETag has a part count"
    assert blobs.stat("big").size == MULTIPART_THRESHOLD + 1024 * 1024


def test_copies_are_server_side_in_parts_above_the_limit_with_upload_args(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CopyObject up to ``copy_limit``, UploadPartCopy above it (lowered here from 5 GiB), each
    with the destination's upload arguments, none of the bytes through this process."""
    source = store.open()
    env = {**store.env, "MLFLOW_S3_UPLOAD_EXTRA_ARGS":
           '{"Metadata": {"origin": "copy"}, "ServerSideEncryption": "AES256"}'}
    target_uri = _iam(store).new_store("copies")
    target = open_blobs(resolve(target_uri, env))
    assert isinstance(target, S3Blobs) and target.same_account(source)
    target.copy_limit, target.copy_part_size = 6 * 1024 * 1024, 5 * 1024 * 1024
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (12 * 4096) + b"tail")
    source.upload_file("big", big)
    source.put("small", b"s")
    moved: list[str] = []
    for name in ("_get", "_download_file", "_upload_file", "_put"):
        for blobs in (source, target):
            setattr(blobs, name, lambda *a, _n=name: moved.append(_n))
    versions = {"big": target.copy_from(source, "big", "big"),
                "small": target.copy_from(source, "small", "small")}
    assert moved == []
    assert versions["big"].endswith("-3"), "three parts of 5, 5 and 2 MiB"
    assert "-" not in versions["small"]
    bucket, prefix = target_uri.removeprefix("s3://").split("/", 1)
    for key, version in versions.items():
        head = _iam(store).s3.head_object(Bucket=bucket, Key=f"{prefix}/{key}")
        assert head["Metadata"] == {"origin": "copy"}, key
        assert head["ServerSideEncryption"] == "AES256", key
        assert _strip(head["ETag"]) == version
    got = tmp_path / "got"
    store.open().download_file("big", got)  # the source, untouched
    open_blobs(resolve(target_uri, store.env)).download_file("big", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == got.read_bytes() == big.read_bytes()


def _strip(etag: str) -> str:
    return etag.strip('"')


def test_unknown_upload_extra_arg_is_a_config_error(store) -> None:  # type: ignore[no-untyped-def]
    env = {**store.env, "MLFLOW_S3_UPLOAD_EXTRA_ARGS": '{"Bucket": "elsewhere"}'}
    with pytest.raises(ConfigError, match="Bucket"):
        open_blobs(resolve(store.uri, env))


def test_pagination_of_list_and_list_dir(store) -> None:  # type: ignore[no-untyped-def]
    blobs = store.open()
    assert isinstance(blobs, S3Blobs)
    blobs.page_size = 3
    keys = [f"d/{i:02d}" for i in range(8)] + [f"d/sub{i}/x" for i in range(5)]
    for key in keys:
        blobs.put(key, b"x")
    assert [i.key for i in blobs.list("d/")] == sorted(keys)
    files, dirs = blobs.list_dir("d")
    assert [f.key for f in files] == [f"d/{i:02d}" for i in range(8)]
    assert dirs == [f"sub{i}" for i in range(5)]


def test_create_container_makes_a_usable_bucket_and_is_idempotent(store) -> None:  # type: ignore[no-untyped-def]
    blobs = open_blobs(resolve(store.service.missing_store_uri(), store.env))
    blobs.create_container()
    blobs.create_container()
    version = blobs.put("k", b"v")
    assert blobs.get_versioned("k") == (b"v", version)
    with pytest.raises(BlobNotFound):
        blobs.get("other")


def test_reads_racing_overwrites_never_fail(store) -> None:  # type: ignore[no-untyped-def]
    """Plain moto closes an overwritten object's buffer under a concurrent GET and answers
    500 (a few times per run of this test); the serialising wrapper must prevent that.
    No retries here, so a single 500 fails the test."""
    blobs = S3Blobs(resolve(store.uri, store.env), retry=RetryPolicy(attempts=1))
    blobs.put("hot", b"0")

    def worker(me: int) -> None:
        for n in range(50):
            if me % 2:
                blobs.put("hot", str(n).encode() * 100)
            else:
                blobs.get("hot")

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, range(6)))


def test_small_writes_skip_the_100_continue_round_trip(store) -> None:  # type: ignore[no-untyped-def]
    """botocore asks for ``Expect: 100-continue`` on every PUT; cloudtrack drops it for bodies
    up to SMALL_BODY, so a strict logging call is one round trip, not two."""
    import re

    from backends.proxy import LatencyProxy
    from cloudtrack.blobs.s3 import SMALL_BODY

    endpoint = store.env["MLFLOW_S3_ENDPOINT_URL"]
    port = int(re.search(r":(\d+)/?$", endpoint).group(1))  # type: ignore[union-attr]
    with LatencyProxy(LOOPBACK, port, 1) as proxy:
        blobs = open_blobs(resolve(store.uri, {**store.env,
                                               "MLFLOW_S3_ENDPOINT_URL": proxy.url}))
        blobs.put("warm-up", b"x")
        proxy.reset()
        version = blobs.put("head", b"h" * 4096)
        blobs.put_if_version("head", b"h2" * 2048, version)
        blobs.put_if_absent("batch", b"b" * SMALL_BODY)
        small = proxy.reset()
        blobs.put("large", b"L" * (SMALL_BODY + 1))
        large = proxy.stats()
    assert small["requests"] == 3 and small["round_trips"] == 3, small
    # A large body still waits for the go-ahead: a rejected request wastes no upload.
    assert large["requests"] == 1 and large["round_trips"] == 2, large
