"""One suite, every blob backend: the same behaviour on a local folder, S3, Azure and GCS."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.config import resolve
from cloudtrack.errors import (
    AlreadyExists,
    BlobNotFound,
    ConfigError,
    ContainerNotFound,
    PreconditionFailed,
    Unauthenticated,
)
from tests.blobs.races import run_increment_race, run_put_if_absent_race

AWKWARD_KEYS = [
    "plain.txt",
    "with space/and more spaces.bin",
    "plus+sign/a+b=c.txt",
    "percent%20literal/%2e%2e/x",
    "hash#and?question/file#1?.txt",
    "unicode/日本語/données-ü.json",
    "emoji/🙂.txt",
    "deep/" + "/".join(f"level{i}" for i in range(20)) + "/leaf",
    "quote'and\"double/x",
    "semi;colon,comma/&amp;",
]


def test_round_trip_binary(blobs: Blobs) -> None:
    data = bytes(range(256)) * 1000
    version = blobs.put("bin/all-bytes", data)
    got, got_version = blobs.get_versioned("bin/all-bytes")
    assert got == data
    assert got_version == version
    info = blobs.stat("bin/all-bytes")
    assert info.size == len(data)
    assert info.version == version
    assert blobs.put("bin/empty", b"") and blobs.get("bin/empty") == b""


def test_overwrite_changes_version(blobs: Blobs) -> None:
    v1 = blobs.put("k", b"one")
    v2 = blobs.put("k", b"two")
    assert v1 != v2
    assert blobs.get("k") == b"two"


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys(blobs: Blobs, key: str) -> None:
    blobs.put(key, key.encode())
    assert blobs.get(key) == key.encode()
    listed = [i.key for i in blobs.list()]
    assert listed == [key]
    parent = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    files, _dirs = blobs.list_dir(parent)
    assert [f.key for f in files] == [key]
    blobs.delete(key)
    assert list(blobs.list()) == []


def test_list_dir_children(blobs: Blobs) -> None:
    for key in ["a/1", "a/2", "a/sub/3", "a/sub/deeper/4", "b/5", "top"]:
        blobs.put(key, b"x")
    files, dirs = blobs.list_dir("")
    assert [f.key for f in files] == ["top"]
    assert sorted(dirs) == ["a", "b"]
    files, dirs = blobs.list_dir("a")
    assert [f.key for f in files] == ["a/1", "a/2"]
    assert dirs == ["sub"]
    assert blobs.list_dir("nothing/here/") == ([], [])


def test_list_prefix_is_a_string_prefix(blobs: Blobs) -> None:
    for key in ["runs/1/a", "runs/10/a", "runs/2/a", "other"]:
        blobs.put(key, b"x")
    assert [i.key for i in blobs.list("runs/1")] == ["runs/1/a", "runs/10/a"]
    assert [i.key for i in blobs.list("runs/1/")] == ["runs/1/a"]
    assert [i.key for i in blobs.list("runs/")] == ["runs/1/a", "runs/10/a", "runs/2/a"]
    assert [i.key for i in blobs.list("zzz")] == []


@pytest.mark.slow
def test_list_many_keys_hides_pagination(blobs: Blobs) -> None:
    n = 2600
    keys = [f"many/{i:05d}" for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: blobs.put(k, b"v"), keys))
    listed = list(blobs.list("many/"))
    assert [i.key for i in listed] == keys
    assert all(i.size == 1 and i.version for i in listed)


def test_missing_object(blobs: Blobs) -> None:
    with pytest.raises(BlobNotFound) as e:
        blobs.get("no/such/key")
    assert "no/such/key" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(BlobNotFound):
        blobs.stat("no/such/key")
    with pytest.raises(BlobNotFound):
        blobs.download_file("no/such/key", "/tmp/cloudtrack-never-written")
    assert not os.path.exists("/tmp/cloudtrack-never-written")
    assert not blobs.exists("no/such/key")


def test_delete_is_idempotent(blobs: Blobs) -> None:
    blobs.put("d/x", b"1")
    blobs.delete("d/x")
    blobs.delete("d/x")
    with pytest.raises(BlobNotFound):
        blobs.get("d/x")


def test_delete_prefix(blobs: Blobs) -> None:
    for key in ["p/1", "p/q/2", "pp/3"]:
        blobs.put(key, b"x")
    assert blobs.delete_prefix("p/") == 2
    assert [i.key for i in blobs.list()] == ["pp/3"]


def test_put_if_absent(blobs: Blobs) -> None:
    v = blobs.put_if_absent("claim", b"mine")
    with pytest.raises(AlreadyExists):
        blobs.put_if_absent("claim", b"theirs")
    assert blobs.get_versioned("claim") == (b"mine", v)


def test_put_if_version(blobs: Blobs) -> None:
    v1 = blobs.put("doc", b"1")
    v2 = blobs.put_if_version("doc", b"2", v1)
    with pytest.raises(PreconditionFailed) as e:
        blobs.put_if_version("doc", b"stale", v1)
    assert not isinstance(e.value, AlreadyExists)
    assert blobs.get_versioned("doc") == (b"2", v2)
    with pytest.raises(PreconditionFailed):
        blobs.put_if_version("never-written", b"x", v1)


@pytest.mark.slow
def test_race_exactly_one_put_if_absent_wins(store) -> None:  # type: ignore[no-untyped-def]
    assert run_put_if_absent_race(store.uri, store.env) == 1
    text = store.open().get("race/claim").decode()
    assert text.startswith("writer-")


@pytest.mark.slow
def test_race_put_if_version_loses_no_update(store) -> None:  # type: ignore[no-untyped-def]
    assert run_increment_race(store.uri, store.env) == 0


@pytest.mark.slow
def test_large_object_streams_both_ways_with_bounded_memory(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A 64 MiB file goes up and comes back in a child process whose peak RSS stays far below
    the file's size plus the interpreter's baseline."""
    size = 64 * 1024 * 1024
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        block = os.urandom(1024 * 1024)
        for i in range(size // len(block)):
            chunk = bytes([i % 256]) + block[1:]
            f.write(chunk)
            digest.update(chunk)
    dst = tmp_path / "back.bin"
    script = textwrap.dedent(f"""
        import resource, sys
        from cloudtrack.blobs import open_blobs
        from cloudtrack.config import resolve
        b = open_blobs(resolve({store.uri!r}, {store.env!r}))
        b.stat  # import everything before measuring
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        b.upload_file("big/object.bin", {str(src)!r})
        b.download_file("big/object.bin", {str(dst)!r})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(base, peak)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **store.env})
    assert out.returncode == 0, out.stderr[-3000:]
    base_kib, peak_kib = map(int, out.stdout.split())
    grown_mib = (peak_kib - base_kib) / 1024
    assert grown_mib < 48, f"streaming grew RSS by {grown_mib:.0f} MiB for a 64 MiB object"
    assert store.open().stat("big/object.bin").size == size
    back = hashlib.sha256(dst.read_bytes()).hexdigest()
    assert back == digest.hexdigest()


def test_missing_container(store) -> None:  # type: ignore[no-untyped-def]
    missing = open_blobs(resolve(store.service.missing_store_uri(), store.env))
    with pytest.raises(ContainerNotFound):
        missing.get("anything")
    with pytest.raises(ContainerNotFound):
        missing.put("anything", b"x")
    with pytest.raises(ContainerNotFound):
        list(missing.list())


def test_wrong_credentials(store) -> None:  # type: ignore[no-untyped-def]
    if store.backend == "local":
        pytest.skip("a local directory has no credentials; permissions are tested in unit tests")
    bad = open_blobs(resolve(store.uri, store.service.bad_credentials_env()))
    with pytest.raises(Unauthenticated) as e:
        bad.put("x", b"y")
    assert isinstance(e.value.__cause__, Exception), "the SDK error is kept as __cause__"
    with pytest.raises(Unauthenticated):
        list(bad.list())


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./x",
                                 "a/./b", "back\\slash"])
def test_keys_that_could_escape_are_refused(blobs: Blobs, key: str) -> None:
    with pytest.raises(ConfigError):
        blobs.put(key, b"x")
    with pytest.raises(ConfigError):
        blobs.get(key)


def test_download_replaces_atomically(blobs: Blobs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blobs.put("f", b"new contents")
    dest = tmp_path / "out" / "f.txt"
    blobs.download_file("f", dest)
    assert dest.read_bytes() == b"new contents"
    assert [p.name for p in dest.parent.iterdir()] == ["f.txt"]


def test_upload_small_file(blobs: Blobs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "small.txt"
    src.write_bytes(b"hello")
    v = blobs.upload_file("up/small.txt", src)
    assert blobs.stat("up/small.txt").version == v
    assert blobs.get("up/small.txt") == b"hello"


