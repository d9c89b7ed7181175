"""Copying artifact trees between any two artifact locations MLflow can reach.

Both ends are MLflow artifact repositories (cloudtrack's for its schemes, MLflow's own for
``file:``, ``mlflow-artifacts:`` of a server, and the rest).  A file is streamed through a
temporary file — downloaded, then uploaded — so no artifact is ever held in memory whole;
files move in parallel.  When both ends are cloudtrack blob stores of one account
(:meth:`~cloudtrack.blobs.Blobs.same_account`: one S3 endpoint and credentials, one GCS
endpoint and credentials, one Azure account, two local folders), the service copies each file
instead (:meth:`~cloudtrack.blobs.Blobs.copy_from`) and no byte passes through this process.
A file already at the destination with the same size is left alone, which makes a copy that
was interrupted, or repeated, cheap.  :class:`Repositories` builds the repositories of a whole
migration, one per bucket where building one is expensive.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mlflow.exceptions import MlflowException

from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.blobs.local import LocalBlobs
from cloudtrack.config import backend_for_scheme, resolve, split_scheme
from cloudtrack.errors import BlobNotFound, CloudtrackError

T = TypeVar("T")

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


class Repositories:
    """Artifact repositories for many artifact URIs, each built once.

    Building cloudtrack's repository builds an SDK client with a connection pool of its own:
    once per run, that was a quarter of a migration's CPU and a new connection for most
    requests.  A URI of cloudtrack's object-store schemes is served by one repository at its
    bucket's (container's) root and a path inside it; any other URI (``file:``,
    ``mlflow-artifacts:``, …) gets a repository of its own, as MLflow would build it.
    """

    def __init__(self, server_slots: Mapping[str, Callable[[], AbstractContextManager[None]]]
                 | None = None) -> None:
        self._roots: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()
        #: tracking URI of an MLflow server -> a slot among the requests it may get at once.
        self._slots = dict(server_slots or {})

    def at(self, uri: str, tracking_uri: str | None) -> tuple[Any, str]:
        """A repository holding ``uri``, and the path of ``uri`` inside it ('' for its root)."""
        scheme = split_scheme(uri)
        if scheme in SERVER_SCHEMES and tracking_uri in self._slots:
            return GatedRepository(repository(uri, tracking_uri), self._slots[tracking_uri]), ""
        if scheme == "file" or backend_for_scheme(scheme) is None:
            return repository(uri, tracking_uri), ""
        parts = urlsplit(uri)
        root = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            repo = self._roots.get((root, tracking_uri))
            if repo is None:
                repo = self._roots[(root, tracking_uri)] = repository(root, tracking_uri)
        return repo, parts.path.strip("/")


#: Artifact URIs whose requests go to an MLflow server.
SERVER_SCHEMES = frozenset({"mlflow-artifacts", "http", "https"})


class GatedRepository:
    """An MLflow server's artifact repository whose requests each wait for a slot of the
    server (``--server-requests``), as its store requests do."""

    def __init__(self, repo: Any, slot: Callable[[], AbstractContextManager[None]]) -> None:
        self._repo = repo
        self._slot = slot

    def list_artifacts(self, path: str | None = None) -> Any:
        with self._slot():
            return self._repo.list_artifacts(path)

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> Any:
        with self._slot():
            return self._repo.log_artifact(local_file, artifact_path)

    def _download_file(self, remote_file_path: str, local_path: str) -> Any:
        with self._slot():
            return self._repo._download_file(remote_file_path, local_path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)


def list_tree(repo: Any, path: str | None = None) -> dict[str, int]:
    """Every file under ``path`` of ``repo``: relative path -> size (-1 when unknown)."""
    local_root = _local_root(repo)
    if local_root is not None:
        return _list_local(local_root, path)
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


def _list_local(root: str, path: str | None) -> dict[str, int]:
    """:func:`list_tree` of MLflow's local repository at ``root``, from ``os.scandir``: what
    its ``list_artifacts`` answers (links followed), in a fraction of the system calls —
    each of which lets the migration's other threads take the interpreter in between."""
    out: dict[str, int] = {}
    pending = [path.strip("/") if path else ""]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(os.path.join(root, *folder.split("/")) if folder else root) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            rel = f"{folder}/{entry.name}" if folder else entry.name
            try:
                if entry.is_dir():
                    pending.append(rel)
                else:
                    out[rel] = entry.stat().st_size
            except FileNotFoundError:  # removed while listed, or a dangling link
                continue
    return out


def _map(pool: Executor | None, workers: int, fn: Callable[[T], int],
         items: list[T]) -> list[int]:
    """``fn`` over ``items`` in ``pool`` (the caller's, shared by all its copies: starting
    and joining threads for each run's files was a migration's largest wait), else in a pool
    of ``workers`` threads of its own; one item in the calling thread."""
    if len(items) == 1:
        return [fn(items[0])]
    if pool is not None:
        return list(pool.map(fn, items))
    with ThreadPoolExecutor(max(1, min(workers, len(items))),
                            thread_name_prefix="cloudtrack-artifacts") as own:
        return list(own.map(fn, items))


def _under(base: str, files: dict[str, int]) -> dict[str, int]:
    """``files`` (paths inside a repository) as paths relative to ``base``."""
    if not base:
        return files
    return {p[len(base) + 1:]: n for p, n in files.items() if p.startswith(base + "/")}


def copy_tree(source_uri: str, source_tracking: str | None, dest_uri: str,
              dest_tracking: str | None, *, workers: int = 8,
              on_file: Callable[[int], None] | None = None,
              repositories: Repositories | None = None, dest_empty: bool = False,
              pool: Executor | None = None) -> TreeCopy:
    """Copy every file under ``source_uri`` to the same relative path under ``dest_uri``.

    ``dest_empty``: the caller knows nothing is at ``dest_uri`` yet (a run new in the
    destination), so the destination is not listed.  ``pool``: threads to copy the files in
    (else up to ``workers`` of its own); none of its tasks may wait for this copy."""
    stores = same_account_stores(source_uri, dest_uri)
    if stores is not None:
        try:
            return copy_tree_server_side(*stores, workers=workers, on_file=on_file,
                                         dest_empty=dest_empty, pool=pool)
        finally:
            for blobs in stores:
                blobs.close()
    repos = repositories or Repositories()
    src, src_base = repos.at(source_uri, source_tracking)
    files = _under(src_base, list_tree(src, src_base or None))
    if not files:
        return TreeCopy(0, 0)
    dst, dst_base = repos.at(dest_uri, dest_tracking)
    present = {} if dest_empty else _under(dst_base, list_tree(dst, dst_base or None))
    todo = {p: s for p, s in files.items() if present.get(p) != s or s < 0}
    if not todo:
        return TreeCopy(0, 0, unchanged=len(files))
    # Files of a local source are uploaded from where they are: no temporary copy.
    local_root = _local_root(src)
    tmp = None if local_root is not None else tempfile.mkdtemp(prefix="cloudtrack-migrate-")
    try:
        def one(item: tuple[str, int]) -> int:
            path, _ = item
            parent = posixpath.join(dst_base, posixpath.dirname(path)).rstrip("/")
            if local_root is not None:
                local = os.path.join(local_root, *posixpath.join(src_base, path).split("/"))
                size = os.path.getsize(local)
                dst.log_artifact(local, parent or None)
            else:
                assert tmp is not None
                folder = os.path.join(tmp, os.urandom(8).hex())
                os.makedirs(folder)
                local = os.path.join(folder, posixpath.basename(path))
                try:
                    # The repository's own single-file download: one GET, streamed to disk
                    # (the public download_artifacts would first ask whether the path is a
                    # folder).
                    src._download_file(posixpath.join(src_base, path), local)
                    size = os.path.getsize(local)
                    dst.log_artifact(local, parent or None)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            if on_file is not None:
                on_file(size)
            return size

        sizes = _map(pool, workers, one, sorted(todo.items()))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return TreeCopy(len(sizes), sum(sizes), unchanged=len(files) - len(todo))


def _local_root(repo: Any) -> str | None:
    """The folder of MLflow's local artifact repository, whose files need no download."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    if isinstance(repo, LocalArtifactRepository):
        return str(repo.artifact_dir)
    return None


def same_account_stores(source_uri: str, dest_uri: str) -> tuple[Blobs, Blobs] | None:
    """Both artifact locations opened as cloudtrack blob stores, when they are of one account
    (the source first); None otherwise — including any URI :func:`cloudtrack.config.resolve`
    does not take (``mlflow-artifacts:``, ``http(s):``, ``dbfs:`` …), which MLflow's
    repositories handle."""
    opened: list[Blobs] = []
    try:
        configs = resolve(source_uri), resolve(dest_uri)
        if configs[0].backend != configs[1].backend:
            return None  # known without building a client
        for config in configs:
            opened.append(open_blobs(config))
    except CloudtrackError as e:
        # Whatever the reason, MLflow's repositories get the same URIs next and report it.
        log.debug("artifacts %s -> %s: not two cloudtrack stores (%s)", source_uri, dest_uri, e)
        for blobs in opened:
            blobs.close()
        return None
    src, dst = opened
    if dst.same_account(src):
        return src, dst
    src.close()
    dst.close()
    return None


def copy_tree_server_side(src: Blobs, dst: Blobs, *, workers: int = 8,
                          on_file: Callable[[int], None] | None = None,
                          dest_empty: bool = False, pool: Executor | None = None) -> TreeCopy:
    """:func:`copy_tree` between two stores of one account: one listing of each side, then a
    server-side copy of each file that is missing or of another size, in parallel."""
    def listing(blobs: Blobs) -> dict[str, int]:
        try:
            return {info.key: info.size for info in blobs.list("")}
        except BlobNotFound:  # a local folder nothing was written to
            return {}

    files = listing(src)
    if not files:
        return TreeCopy(0, 0)
    if dst.backend == "file":
        # MLflow's local repository creates a run's folder with its first file; a local store
        # wants its root to exist.
        dst.create_container()
    if not dest_empty and isinstance(dst, LocalBlobs):
        # A migration killed mid-copy left temporary files that MLflow's repository would list.
        dst.remove_leftovers("")
    present = {} if dest_empty else listing(dst)
    todo = sorted((key, size) for key, size in files.items() if present.get(key) != size)
    if not todo:
        return TreeCopy(0, 0, unchanged=len(files))

    def one(item: tuple[str, int]) -> int:
        key, size = item
        dst.copy_from(src, key, key)
        if on_file is not None:
            on_file(size)
        return size

    sizes = _map(pool, workers, one, todo)
    return TreeCopy(len(sizes), sum(sizes), unchanged=len(files) - len(todo))
