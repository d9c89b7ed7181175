"""Copies between stores, one suite on every blob backend: within a store and between two stores
of one service (server-side: no byte passes through this process), across backends (streamed
through a temporary file), large objects, missing sources and containers, refusals."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends._common import LOOPBACK
from backends.proxy import LatencyProxy
from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.blobs.base import MULTIPART_THRESHOLD
from cloudtrack.config import resolve
from cloudtrack.errors import (
    BlobError,
    BlobNotFound,
    ContainerNotFound,
    PermissionDenied,
    TransientError,
)
from cloudtrack.retry import RetryPolicy
from tests.blobs.test_conformance import AWKWARD_KEYS
from tests.fixtures.services import Store, service

MiB = 1024 * 1024


class Traffic:
    """Which of the stores' data-moving primitives ran: none, for a server-side copy."""

    MOVES = ("_get", "_put", "_download_file", "_upload_file")

    def __init__(self, *stores: Blobs) -> None:
        self.calls: list[str] = []
        for blobs in stores:
            for name in self.MOVES:
                real = getattr(blobs, name)

                def counted(*args: Any, _real: Any = real, _name: str = name,
                            _uri: str = blobs.uri, **kw: Any) -> Any:
                    self.calls.append(f"{_name} {_uri}")
                    return _real(*args, **kw)

                setattr(blobs, name, counted)

    def names(self) -> list[str]:
        return sorted(c.split(" ", 1)[0] for c in self.calls)


def other_store(store: Store, name: str = "other") -> Blobs:
    """A second store on the same service, reached the same way: another bucket/container."""
    return open_blobs(resolve(store.service.new_store(name), store.env))


def foreign_store(store: Store) -> Blobs:
    """A store on another backend: a local folder, or (for the local backend) S3."""
    svc = service("s3" if store.backend == "local" else "local")
    return open_blobs(resolve(svc.new_store("foreign"), svc.env))


def write_file(path: Path, size: int) -> str:
    """``size`` bytes that differ block by block; their sha256."""
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(0, size, MiB):
            chunk = (bytes([i // MiB % 256]) + block[1:])[:size - i]
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def digest_of(blobs: Blobs, key: str, folder: Path) -> str:
    path = folder / f"back-{hashlib.md5(key.encode()).hexdigest()}"
    blobs.download_file(key, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


_LOOPBACK_URL = re.compile(rf"http://{re.escape(LOOPBACK)}:(\d+)")


@contextlib.contextmanager
def proxied(store: Store) -> Iterator[tuple[LatencyProxy, dict[str, str]]]:
    """A counting proxy in front of the store's service, and the environment that reaches the
    service through it (its loopback URL replaced wherever the environment names it: the S3
    endpoint, the GCS API endpoint, the Azure connection string's blob endpoint)."""
    port = next(int(m.group(1)) for v in store.env.values() if (m := _LOOPBACK_URL.search(v)))
    with LatencyProxy(LOOPBACK, port) as proxy:
        yield proxy, {k: _LOOPBACK_URL.sub(proxy.url, v) for k, v in store.env.items()}


# -- which stores copy server-side -----------------------------------------------------------

def test_same_account_is_decided_from_the_configurations_alone(tmp_path: Path) -> None:
    """Nothing listens on the endpoints below: any request would fail."""
    nowhere, elsewhere = f"http://{LOOPBACK}:9", f"http://{LOOPBACK}:7"

    def o(uri: str, env: dict[str, str]) -> Blobs:
        return open_blobs(resolve(uri, env))

    keys = {"AWS_ACCESS_KEY_ID": "AKIAONE", "AWS_SECRET_ACCESS_KEY": "s" * 40}
    s3 = {**keys, "MLFLOW_S3_ENDPOINT_URL": nowhere}
    a = o("s3://bucket-a/team/store", s3)
    assert a.same_account(o("s3://bucket-b", s3))
    assert not a.same_account(o("s3://bucket-b", {**s3, "MLFLOW_S3_ENDPOINT_URL": elsewhere}))
    assert not a.same_account(o("s3://bucket-b", {**s3, "AWS_ACCESS_KEY_ID": "AKIATWO"}))
    # AWS itself, in any region (CopyObject copies across regions), but not an endpoint.
    assert o("s3://in-ireland", {**keys, "AWS_DEFAULT_REGION": "eu-west-1"}).same_account(
        o("s3://in-virginia", {**keys, "AWS_DEFAULT_REGION": "us-east-1"}))
    assert not o("s3://on-aws", keys).same_account(a)

    gcs = {"API_ENDPOINT_OVERRIDE": nowhere, "GOOGLE_APPLICATION_CREDENTIALS": "/nope/a.json"}
    g = o("gs://bucket-a/store", gcs)
    assert g.same_account(o("gs://bucket-b", gcs))
    assert not g.same_account(o("gs://bucket-b", {**gcs, "API_ENDPOINT_OVERRIDE": elsewhere}))
    assert not g.same_account(o("gs://bucket-b", {**gcs,
                                                  "GOOGLE_APPLICATION_CREDENTIALS": "/nope/b"}))

    key = {"AZURE_STORAGE_ACCESS_KEY": "a2V5"}
    z = o("wasbs://one@acct.blob.core.windows.net/mlruns", key)
    assert z.same_account(o("abfss://two@acct.dfs.core.windows.net/x", key))  # any credential
    assert z.same_account(o("wasbs://two@acct.blob.core.windows.net",
                            {"AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=x"}))
    assert not z.same_account(o("wasbs://one@other.blob.core.windows.net/mlruns", key))

    local = o(str(tmp_path / "a"), {})
    assert local.same_account(o((tmp_path / "b").as_uri(), {}))
    for one, two in ((a, g), (g, z), (z, local), (local, a)):
        assert not one.same_account(two) and not two.same_account(one)


# -- server-side: one store, two stores of one service ---------------------------------------

def test_copy_within_a_store(blobs: Blobs) -> None:
    data = bytes(range(256)) * 400
    source_version = blobs.put("runs/1/artifacts/model.bin", data)
    blobs.put("runs/2/artifacts/model.bin", b"to be replaced")
    assert blobs.same_account(blobs)
    traffic = Traffic(blobs)
    version = blobs.copy_from(blobs, "runs/1/artifacts/model.bin", "runs/2/artifacts/model.bin")
    assert traffic.calls == []
    assert blobs.get_versioned("runs/2/artifacts/model.bin") == (data, version)
    assert blobs.stat("runs/1/artifacts/model.bin").version == source_version
    # Onto itself: nothing to do, the object stays at its version.
    assert blobs.copy_from(blobs, "runs/1/artifacts/model.bin",
                           "runs/1/artifacts/model.bin") == source_version


def test_copy_between_two_stores_of_one_service(store: Store) -> None:
    source, target = store.open(), other_store(store)
    assert target.same_account(source) and source.same_account(target)
    source.put("a/empty", b"")
    source.put("a/data.json", b'{"x": 1}')
    traffic = Traffic(source, target)
    v1 = target.copy_from(source, "a/data.json", "b/data.json")
    v2 = target.copy_from(source, "a/empty", "b/empty")
    assert traffic.calls == [], "a same-account copy moved bytes through this process"
    assert target.get_versioned("b/data.json") == (b'{"x": 1}', v1)
    assert target.get_versioned("b/empty") == (b"", v2)
    assert [i.key for i in target.list()] == ["b/data.json", "b/empty"]


def test_a_same_account_copy_sends_no_bytes_over_the_wire(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    if store.backend == "local":
        pytest.skip("no wire: test_copy_between_two_stores_of_one_service shows no bytes "
                    "pass through this process")
    # google-cloud-storage fetches each bucket's metadata once per client in a background
    # thread (for its telemetry), whenever it gets to it: not part of the copy.
    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    data = os.urandom(4 * MiB)
    store.open().put("big.bin", data)
    target_uri = store.service.new_store("target")
    with proxied(store) as (proxy, env):
        source = open_blobs(resolve(store.uri, env))
        target = open_blobs(resolve(target_uri, env))
        source.stat("big.bin")  # clients built, credentials fetched: only the copy is counted
        target.exists("nothing")
        with proxy.counting() as cost:
            target.copy_from(source, "big.bin", "copy.bin")
    # A HEAD of the source and the copy request itself, a few hundred bytes each way.
    assert cost.requests == 2, cost
    assert cost.bytes_up + cost.bytes_down < 64 * 1024, cost
    assert open_blobs(resolve(target_uri, store.env)).get("copy.bin") == data


def test_awkward_keys_copy_server_side(store: Store) -> None:
    """Each backend names the source in its copy request its own way (S3's CopySource, an
    Azure URL, a GCS path): spaces, '+', '%', '#', '?', unicode, quotes all survive."""
    source, target = store.open(), other_store(store)
    for key in AWKWARD_KEYS:
        source.put(key, key.encode())
    traffic = Traffic(source, target)
    for key in AWKWARD_KEYS:
        target.copy_from(source, key, key)
    assert traffic.calls == []
    assert sorted(i.key for i in target.list()) == sorted(AWKWARD_KEYS)
    assert all(target.get(key) == key.encode() for key in AWKWARD_KEYS)


# -- streamed: across backends ---------------------------------------------------------------

def test_copy_across_backends_streams_through_a_file(store: Store) -> None:
    target, source = store.open(), foreign_store(store)
    assert not target.same_account(source) and not source.same_account(target)
    source.put("in/model.pkl", b"pickled" * 1000)
    traffic = Traffic(source, target)
    version = target.copy_from(source, "in/model.pkl", "out/model.pkl")
    assert traffic.names() == ["_download_file", "_upload_file"]
    assert target.get_versioned("out/model.pkl") == (b"pickled" * 1000, version)
    # And back the other way.
    source.copy_from(target, "out/model.pkl", "back/model.pkl")
    assert source.get("back/model.pkl") == b"pickled" * 1000


def test_large_object_server_side_and_across_backends(store: Store, tmp_path: Path) -> None:
    size = MULTIPART_THRESHOLD + 3 * MiB + 17
    digest = write_file(tmp_path / "big.bin", size)
    source = store.open()
    source.upload_file("big.bin", tmp_path / "big.bin")
    same, foreign = other_store(store), foreign_store(store)
    traffic = Traffic(source, same)
    same.copy_from(source, "big.bin", "copied.bin")
    assert traffic.calls == []
    foreign.copy_from(same, "copied.bin", "streamed.bin")
    assert same.stat("copied.bin").size == foreign.stat("streamed.bin").size == size
    assert digest_of(same, "copied.bin", tmp_path) == digest
    assert digest_of(foreign, "streamed.bin", tmp_path) == digest


@pytest.mark.slow
def test_copies_of_a_large_object_keep_memory_bounded(store: Store, tmp_path: Path) -> None:
    """64 MiB copied into the backend from a local folder (streamed, or the kernel's copy) and
    on to a second store of the service (server-side), in a child process whose peak RSS
    stays far below the object's size."""
    size = 64 * MiB
    digest = write_file(tmp_path / "big.bin", size)
    local = service("local").new_store("big")
    open_blobs(resolve(local)).upload_file("big.bin", tmp_path / "big.bin")
    second = store.service.new_store("second")
    script = textwrap.dedent(f"""
        import resource
        from cloudtrack.blobs import open_blobs
        from cloudtrack.config import resolve
        env = {store.env!r}
        local = open_blobs(resolve({local!r}, env))
        first = open_blobs(resolve({store.uri!r}, env))
        second = open_blobs(resolve({second!r}, env))
        first.exists("x"), second.exists("x"), local.exists("x")  # clients, credentials
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        first.copy_from(local, "big.bin", "big.bin")
        second.copy_from(first, "big.bin", "big.bin")
        print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **store.env})
    assert out.returncode == 0, out.stderr[-3000:]
    base_kib, peak_kib = map(int, out.stdout.split())
    grown_mib = (peak_kib - base_kib) / 1024
    assert grown_mib < 48, f"copying grew RSS by {grown_mib:.0f} MiB for a 64 MiB object"
    assert digest_of(open_blobs(resolve(second, store.env)), "big.bin", tmp_path) == digest


# -- what is missing -------------------------------------------------------------------------

def test_missing_source_is_blob_not_found_on_the_source(store: Store) -> None:
    source, same, foreign = store.open(), other_store(store), foreign_store(store)
    for target in (same, foreign):
        with pytest.raises(BlobNotFound) as e:
            target.copy_from(source, "no/such/object", "dest")
        assert not isinstance(e.value, ContainerNotFound)
        assert e.value.uri == source.object_uri("no/such/object"), e.value
        assert not target.exists("dest")


def test_missing_target_container(store: Store) -> None:
    source = store.open()
    source.put("k", b"v")
    missing = open_blobs(resolve(store.service.missing_store_uri(), store.env))
    assert missing.same_account(source)
    with pytest.raises(ContainerNotFound):
        missing.copy_from(source, "k", "k")


# -- refusals --------------------------------------------------------------------------------

# No service here refuses a same-account copy that a stream then gets past (moto authorises
# CopyObject as a PutObject of the destination, Azurite checks no source of its own account,
# the GCS front authorises a rewrite as its caller), so the refusal is raised in place of the
# service's answer: a mock, where no real service can produce the behaviour.

@pytest.mark.parametrize("refusal", [
    PermissionDenied("COPY … failed: AccessDenied", "x"),
    BlobError("COPY … failed: NotImplemented, HTTP 501", "x"),
])
def test_a_refused_server_side_copy_is_streamed(store: Store, refusal: BlobError,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = store.open(), other_store(store)
    source.put("k", b"bytes")

    def refuse(*_: Any) -> str:
        raise refusal

    monkeypatch.setattr(target, "_copy_from", refuse)
    traffic = Traffic(source, target)
    version = target.copy_from(source, "k", "copy")
    assert traffic.names() == ["_download_file", "_upload_file"]
    assert target.get_versioned("copy") == (b"bytes", version)


@pytest.mark.parametrize("failure", [
    TransientError("COPY … failed: SlowDown", "x"),
    ContainerNotFound("COPY … failed: NoSuchBucket", "x"),
])
def test_other_failures_of_a_server_side_copy_are_raised(store: Store, failure: BlobError,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    source = store.open()
    target = open_blobs(resolve(store.service.new_store("other"), store.env))
    target.retry = RetryPolicy(attempts=2, base_delay=0, max_delay=0)
    source.put("k", b"bytes")
    calls: list[str] = []

    def fail(*_: Any) -> str:
        calls.append("copy")
        raise failure

    monkeypatch.setattr(target, "_copy_from", fail)
    traffic = Traffic(source, target)
    with pytest.raises(type(failure)):
        target.copy_from(source, "k", "copy")
    assert calls == ["copy"] * (2 if isinstance(failure, TransientError) else 1)
    assert traffic.calls == []


# -- the kernel's copy between local files ---------------------------------------------------

def test_kernel_copy_finishes_in_chunks_where_the_kernel_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``copy_file_range`` refuses some pairs of files (EXDEV across filesystems on older
    kernels, EOPNOTSUPP on some filesystems) after copying nothing or a part; the chunked copy
    goes on from where it stopped.  This kernel copies between any two files here, so the
    refusal after the first MiB is played by a wrapper: a mock, where no real file can."""
    from cloudtrack.blobs import local

    size = 3 * MiB + 5
    digest = write_file(tmp_path / "src", size)
    real = os.copy_file_range
    calls: list[int] = []

    def refuse_after_one(src: int, dst: int, count: int, *args: Any) -> int:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst, min(count, MiB), *args)

    monkeypatch.setattr(os, "copy_file_range", refuse_after_one)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        local.copy_file(src, dst)
    assert len(calls) == 2
    assert hashlib.sha256((tmp_path / "dst").read_bytes()).hexdigest() == digest
