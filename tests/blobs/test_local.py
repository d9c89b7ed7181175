"""What only the local backend has: temporary files of killed writers, which MLflow's own
local artifact repository would list since it walks the folders itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudtrack.blobs import open_blobs
from cloudtrack.blobs.local import LocalBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import PermissionDenied


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_remove_leftovers_takes_only_files_of_writers_that_are_gone(tmp_path: Path) -> None:
    blobs = open_blobs(resolve(str(tmp_path)))
    assert isinstance(blobs, LocalBlobs)
    blobs.put("run/artifacts/model.pkl", b"model")
    folder = tmp_path / "run" / "artifacts"
    dead = folder / f".cloudtrack-tmp-{_dead_pid()}-{'a' * 32}"
    alive = folder / f".cloudtrack-tmp-{os.getpid()}-{'b' * 32}"
    legacy = folder / f".cloudtrack-tmp-{'c' * 32}"  # no pid: kept, nothing removed on a guess
    for path in (dead, alive, legacy):
        path.write_bytes(b"half a file")

    assert blobs.remove_leftovers("run/") == 1

    assert not dead.exists()
    assert alive.exists() and legacy.exists()
    assert [i.key for i in blobs.list("run/")] == ["run/artifacts/model.pkl"]


def test_a_write_names_its_temporary_file_after_its_process(tmp_path: Path,
                                                            monkeypatch) -> None:
    blobs = open_blobs(resolve(str(tmp_path)))
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    blobs.put("k", b"v")
    assert seen and seen[0].startswith(f".cloudtrack-tmp-{os.getpid()}-")


def test_a_write_whose_folder_a_concurrent_delete_pruned_recreates_it(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """A delete removes the folders it empties; a write that created the folder just before
    must create it again, not fail.  The interleaving is forced by removing the folder right
    before the first temporary file is opened (the race itself is too narrow to hit at will)."""
    blobs = open_blobs(resolve(str(tmp_path)))
    assert isinstance(blobs, LocalBlobs)
    real = LocalBlobs._write_tmp
    calls: list[str] = []

    def pruned_first(self, folder: str, fill):  # type: ignore[no-untyped-def]
        calls.append(folder)
        if len(calls) == 1:
            os.rmdir(folder)  # what the other process's delete did
        return real(self, folder, fill)

    monkeypatch.setattr(LocalBlobs, "_write_tmp", pruned_first)
    blobs.put_if_absent("probe/k", b"v")
    assert len(calls) == 2 and blobs.get("probe/k") == b"v"


def _reference_listing(root: Path, prefix: str) -> list[tuple[str, int]]:
    """The listing a local store must give, by ``os.walk`` and ``os.stat``: every regular file
    (or link to one) under the root whose key starts with ``prefix``, no linked folder walked
    into, no temporary or partial file."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for name in files:
            if name.startswith(".cloudtrack-tmp-") or name.endswith(".cloudtrack-part"):
                continue
            try:
                size = os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
            if (rel + name).startswith(prefix):
                found.append((rel + name, size))
    return sorted(found)


def test_listing_gives_every_file_under_a_prefix_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    blobs = open_blobs(resolve(str(root)))
    for key in ("heads/1/a.json", "heads/1/ab.json", "heads/12/c.json", "heads/2/d.json",
                "heads/1/deep/e.json", "history/1/f", "top"):
        blobs.put(key, key.encode() * 3)
    (root / "heads" / "1" / ".cloudtrack-tmp-1-abc").write_bytes(b"half")
    (root / "heads" / "1" / "g.cloudtrack-part").write_bytes(b"part")
    (root / "heads" / "1" / "dangling").symlink_to(root / "nowhere")
    (root / "heads" / "1" / "linked.json").symlink_to(root / "heads" / "2" / "d.json")
    (root / "heads" / "1" / "linked-folder").symlink_to(root / "history", target_is_directory=True)
    (root / "heads" / "empty").mkdir()

    for prefix in ("", "heads/", "heads/1", "heads/1/", "heads/1/a", "heads/1/deep/", "heads/3/",
                   "h", "top", "nothing/"):
        listed = [(i.key, i.size) for i in blobs.list(prefix)]
        assert listed == _reference_listing(root, prefix), prefix
    assert ("heads/1/linked.json", len(b"heads/2/d.json") * 3) in \
        [(i.key, i.size) for i in blobs.list("heads/1/")]


def test_a_folder_the_listing_cannot_read_is_an_error_not_an_empty_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: these tests run as root, which reads any folder whatever its mode, so the
    refusal is made by ``os.scandir`` itself."""
    blobs = open_blobs(resolve(str(tmp_path)))
    blobs.put("heads/1/a.json", b"{}")
    real_scandir = os.scandir

    def refusing(path: Any) -> Any:
        if str(path).endswith(os.path.join("heads", "1")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(PermissionDenied, match="permission denied"):
        list(blobs.list("heads/"))
    with pytest.raises(PermissionDenied, match="permission denied"):
        list(blobs.list(""))


def test_lost_and_found_at_the_root_of_a_volume_is_not_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked as above: root reads ``lost+found`` whatever its mode."""
    blobs = open_blobs(resolve(str(tmp_path)))
    blobs.put("heads/1/a.json", b"{}")
    (tmp_path / "lost+found").mkdir()
    real_scandir = os.scandir

    def refusing(path: Any) -> Any:
        if str(path).endswith("lost+found"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert [i.key for i in blobs.list("")] == ["heads/1/a.json"]
