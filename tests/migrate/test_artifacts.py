"""Copying artifacts: a local source is listed from the file system as MLflow's repository lists
it, and files go through the migration's shared pool."""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from cloudtrack.migrate import artifacts
from cloudtrack.migrate.runner import _batch_collection


class _Opaque:
    """A repository :func:`artifacts.list_tree` does not recognise as local: it lists through
    ``list_artifacts``, MLflow's own answer."""

    def __init__(self, repo: Any) -> None:
        self.list_artifacts = repo.list_artifacts


def _tree(root: Path) -> None:
    (root / "plots" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "model.pkl").write_bytes(b"m" * 1000)
    (root / "plots" / "a.png").write_bytes(b"")
    (root / "plots" / "deep" / "b.txt").write_text("hello")
    (root / "name with space.json").write_text("{}")
    os.symlink(root / "model.pkl", root / "plots" / "link.pkl")


@pytest.mark.parametrize("path", [None, "", "plots", "plots/deep", "absent", "model.pkl"])
def test_a_local_source_is_listed_as_mlflows_repository_lists_it(
        tmp_path: Path, path: str | None) -> None:
    _tree(tmp_path)
    repo = LocalArtifactRepository(str(tmp_path))
    expected = artifacts.list_tree(_Opaque(repo), path)
    assert artifacts.list_tree(repo, path) == expected
    if path is None:
        assert expected["plots/link.pkl"] == 1000 and expected["plots/a.png"] == 0


def test_a_dangling_link_hides_only_itself(tmp_path: Path) -> None:
    """MLflow's own listing of a folder holding a link to nothing fails as a whole (so the
    folder's other files would not be copied); the file system's listing leaves out just the
    link, which has nothing to copy."""
    _tree(tmp_path)
    repo = LocalArtifactRepository(str(tmp_path))
    expected = artifacts.list_tree(repo)
    os.symlink(tmp_path / "missing", tmp_path / "plots" / "dangling")
    with pytest.raises(FileNotFoundError):
        repo.list_artifacts("plots")
    assert artifacts.list_tree(repo) == expected


def test_files_are_copied_in_the_callers_pool(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _tree(src)
    with ThreadPoolExecutor(3, thread_name_prefix="callers") as pool:
        first = artifacts.copy_tree(src.as_uri(), None, dst.as_uri(), None, pool=pool)
        again = artifacts.copy_tree(src.as_uri(), None, dst.as_uri(), None, pool=pool)
    assert (first.files, first.bytes) == (5, 1000 + 5 + 2 + 1000)
    assert (again.files, again.unchanged) == (0, 5)
    assert (dst / "plots" / "deep" / "b.txt").read_text() == "hello"


def test_the_collector_is_as_it_was_after_a_batch() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _batch_collection():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= 20_000
        raise RuntimeError("a migration that failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_overlapping_batches_put_back_what_was_there_before_the_first() -> None:
    before = gc.get_threshold()
    first, second = _batch_collection(), _batch_collection()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first migration ends while the second runs
    assert gc.get_threshold()[0] >= 20_000 and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_modules_mlflow_probes_each_request_fail_at_once_during_a_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's REST client tries `import dbruntime` (and pyspark) before every request; not
    installed, each try searched the module path.  During a batch the absent ones fail at
    once — the same ImportError, no search — and afterwards the process is as it was."""
    from mlflow.tracking.request_header.registry import resolve_request_headers

    searched: list[str] = []

    class Watch:
        @staticmethod
        def find_spec(name: str, *args: Any) -> None:
            searched.append(name.partition(".")[0])

    monkeypatch.setattr(sys, "meta_path", [Watch(), *sys.meta_path])
    assert importlib.util.find_spec("dbruntime") is None  # not installed here
    assert "dbruntime" not in sys.modules
    headers = resolve_request_headers()
    assert "dbruntime" in searched  # what every request cost before
    with _batch_collection():
        searched.clear()
        assert sys.modules["dbruntime"] is None
        with pytest.raises(ImportError):
            import dbruntime  # noqa: F401
        assert sys.modules["json"] is not None
        assert resolve_request_headers() == headers
        assert not {"dbruntime", "pyspark"} & set(searched), searched
    assert "dbruntime" not in sys.modules
    searched.clear()
    resolve_request_headers()
    assert "dbruntime" in searched
