"""Copying artifact trees between any two artifact locations MLflow can reach.

Both ends are MLflow artifact repositories (cloudtrack's for its schemes, MLflow's own for
``file:``, ``mlflow-artifacts:`` of a server, and the rest).  A file is streamed through a
temporary file — downloaded, then uploaded — so no artifact is ever held in memory whole;
files move in parallel.  A file already at the destination with the same size is left alone,
which makes a copy that was interrupted, or repeated, cheap.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

log = logging.getLogger("cloudtrack.migrate")


@dataclass(frozen=True)
class TreeCopy:
    files: int
    bytes: int
    #: Files already at the destination with the same size.
    unchanged: int = 0


def repository(uri: str, tracking_uri: str | None) -> Any:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri, tracking_uri=tracking_uri)


def list_tree(repo: Any, path: str | None = None) -> dict[str, int]:
    """Every file under ``path`` of ``repo``: relative path -> size (-1 when unknown)."""
    out: dict[str, int] = {}
    pending = [path]
    while pending:
        folder = pending.pop()
        try:
            entries = repo.list_artifacts(folder)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir:
                pending.append(entry.path)
            else:
                out[entry.path] = -1 if entry.file_size is None else int(entry.file_size)
    return out


def copy_tree(source_uri: str, source_tracking: str | None, dest_uri: str,
              dest_tracking: str | None, *, workers: int = 8,
              on_file: Callable[[int], None] | None = None) -> TreeCopy:
    """Copy every file under ``source_uri`` to the same relative path under ``dest_uri``."""
    src = repository(source_uri, source_tracking)
    files = list_tree(src)
    if not files:
        return TreeCopy(0, 0)
    dst = repository(dest_uri, dest_tracking)
    present = list_tree(dst)
    todo = {p: s for p, s in files.items() if present.get(p) != s or s < 0}
    if not todo:
        return TreeCopy(0, 0, unchanged=len(files))
    tmp = tempfile.mkdtemp(prefix="cloudtrack-migrate-")
    try:
        def one(item: tuple[str, int]) -> int:
            path, _ = item
            folder = os.path.join(tmp, os.urandom(8).hex())
            os.makedirs(folder)
            local = os.path.join(folder, posixpath.basename(path))
            try:
                # The repository's own single-file download: one GET, streamed to disk (the
                # public download_artifacts would first ask whether the path is a folder).
                src._download_file(path, local)
                size = os.path.getsize(local)
                parent = posixpath.dirname(path)
                dst.log_artifact(local, parent or None)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if on_file is not None:
                on_file(size)
            return size

        with ThreadPoolExecutor(max(1, min(workers, len(todo))),
                                thread_name_prefix="cloudtrack-artifacts") as pool:
            sizes = list(pool.map(one, sorted(todo.items())))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TreeCopy(len(sizes), sum(sizes), unchanged=len(files) - len(todo))
