"""What only the local backend has: temporary files of killed writers, which MLflow's own
local artifact repository would list since it walks the folders itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cloudtrack.blobs import open_blobs
from cloudtrack.blobs.local import LocalBlobs
from cloudtrack.config import resolve


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
