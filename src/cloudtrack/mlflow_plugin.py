"""The builders MLflow calls through the entry points in pyproject.toml.

``file:`` URIs and plain paths come here too: a directory that already holds an MLflow
FileStore (``<id>/meta.yaml``) keeps being served by MLflow's own FileStore, unchanged; every
other directory becomes a cloudtrack local store.  The builders answer MLflow's errors
(:mod:`cloudtrack.mlflow_errors`).  MLflow itself is imported only once a store is built: the
doctor imports this module for :func:`is_mlflow_file_store`.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any

from cloudtrack.config import SCHEMES, local_path, split_scheme
from cloudtrack.mlflow_errors import translate_errors


def is_mlflow_file_store(path: str) -> bool:
    """Does ``path`` already hold MLflow FileStore data (``<experiment id>/meta.yaml``)?"""
    if not os.path.isdir(path):
        return False
    if os.path.exists(os.path.join(path, "cloudtrack.json")):
        return False
    for name in ("0", ".trash"):
        if os.path.exists(os.path.join(path, name, "meta.yaml")) or (
                name == ".trash" and os.path.isdir(os.path.join(path, name))):
            return True
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return any(e.isdigit() and os.path.exists(os.path.join(path, e, "meta.yaml")) for e in entries)


@translate_errors
def tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    early = _take_early("tracking", (store_uri, artifact_uri))
    return early if early is not None else _tracking_store(store_uri, artifact_uri)


def _tracking_store(store_uri: str, artifact_uri: str | None) -> Any:
    if store_uri.startswith("file:") or "://" not in store_uri:
        path = local_path(store_uri)
        if is_mlflow_file_store(path):
            from mlflow.store.tracking.file_store import FileStore

            return FileStore(path, artifact_uri)
    from cloudtrack.config import resolve
    from cloudtrack.environment import snapshot
    from cloudtrack.tracking import BlobTrackingStore

    config = None
    if os.environ.get("_MLFLOW_SERVER_FILE_STORE") and "CLOUDTRACK_STRICT" not in os.environ:
        # Inside `mlflow server` a REST call must be durable when it answers 200: the client
        # has no way to flush the server's buffer, and the server may be restarted any time.
        config = resolve(store_uri, {**snapshot(), "CLOUDTRACK_STRICT": "true"})
    return BlobTrackingStore(store_uri, artifact_uri, config=config)  # type: ignore[abstract]


@translate_errors
def registry_store(store_uri: str, tracking_uri: str | None = None) -> Any:
    early = _take_early("registry", (store_uri, tracking_uri))
    return early if early is not None else _registry_store(store_uri, tracking_uri)


def _registry_store(store_uri: str, tracking_uri: str | None) -> Any:
    if store_uri.startswith("file:") or "://" not in store_uri:
        path = local_path(store_uri)
        if is_mlflow_file_store(path):
            from mlflow.store.model_registry.file_store import FileStore

            return FileStore(path)
    from cloudtrack.model_registry import BlobRegistryStore

    return BlobRegistryStore(store_uri, tracking_uri)  # type: ignore[abstract]


@translate_errors
def artifact_repository(artifact_uri: str, tracking_uri: str | None = None,
                        registry_uri: str | None = None) -> Any:
    from cloudtrack.artifacts import BlobArtifactRepository

    return BlobArtifactRepository(artifact_uri, tracking_uri, registry_uri)


# -- stores an `mlflow server` worker builds as it starts ----------------------------------------
#
# A worker of `mlflow server` / `mlflow ui` builds its stores when the first request needs them:
# for a bucket that is importing the cloud SDK, making its client and reading the store's
# marker, about 0.15 s and a round trip that the first request of the UI waited for.  A worker
# serving one of our stores starts building them in a thread as soon as MLflow loads this
# plugin (while the worker is still starting), with the arguments MLflow will pass
# (`mlflow.server.handlers` reads the same variables); the first request takes what was built,
# or waits for it.  A build that failed is done again in the request, so the request fails
# (or, the bucket back, succeeds) as it would have; one built for other arguments is closed.
# Once built, the stores read ahead what the UI's first pages will ask for (cloudtrack.warmup).

_SERVER_BACKEND = "_MLFLOW_SERVER_FILE_STORE"  # what `mlflow server` hands its workers
_SERVER_REGISTRY = "_MLFLOW_SERVER_REGISTRY_STORE"
_SERVER_ARTIFACT_ROOT = "_MLFLOW_SERVER_ARTIFACT_ROOT"

_Args = tuple[str, str | None]  # (store URI, artifact root or tracking URI)
_early: dict[tuple[str, _Args], concurrent.futures.Future[Any]] = {}
_early_lock = threading.Lock()


def _ours(uri: str | None) -> bool:
    """Whether MLflow would send ``uri`` to this plugin: our schemes, ``file:``, plain paths
    (but not the bare names MLflow itself takes: ``databricks``, ``databricks-uc``, ``uc``)."""
    if not uri or uri in ("databricks", "databricks-uc", "uc"):
        return False
    return split_scheme(uri) in SCHEMES


def _build_early(kind: str, args: _Args) -> None:
    """Build the ``kind`` store for ``args`` in a thread, once, for :func:`_take_early`."""
    with _early_lock:
        if (kind, args) in _early:
            return
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        _early[(kind, args)] = future
    build = _tracking_store if kind == "tracking" else _registry_store

    def run() -> None:
        try:
            store = build(*args)
        except BaseException as e:  # the request builds it again, and says what failed
            future.set_exception(e)
            return
        future.set_result(store)
        if store.__class__.__module__.startswith("cloudtrack."):  # not MLflow's FileStore
            from cloudtrack import warmup

            (warmup.tracking if kind == "tracking" else warmup.registry)(store)

    threading.Thread(target=run, name=f"cloudtrack-early-{kind}", daemon=True).start()


def _take_early(kind: str, args: _Args) -> Any:
    """The ``kind`` store built early for ``args`` (waiting for it if still being built);
    None when none was, or its build failed.  Stores built early for other arguments are
    closed."""
    with _early_lock:
        mine = _early.pop((kind, args), None)
        others = [_early.pop(k) for k in list(_early) if k[0] == kind]
    for future in others:
        future.add_done_callback(_close_unused)
    if mine is None:
        return None
    try:
        return mine.result()
    except Exception:
        return None


def _close_unused(future: concurrent.futures.Future[Any]) -> None:
    if future.exception() is None:
        close = getattr(future.result(), "close", None)
        if close is not None:
            close()


def _start_building_in_server() -> None:
    """In a worker of `mlflow server` on one of our stores: :func:`_build_early` its stores."""
    backend = os.environ.get(_SERVER_BACKEND)
    if not _ours(backend):
        return
    assert backend is not None
    _build_early("tracking", (backend, os.environ.get(_SERVER_ARTIFACT_ROOT)))
    registry = os.environ.get(_SERVER_REGISTRY) or backend
    if _ours(registry):
        # MLflow passes the tracking URI it set when it built the tracking store.
        _build_early("registry", (registry, backend))


def _forget_early_builds() -> None:  # a forked child has the futures, not the threads
    global _early_lock
    _early.clear()
    _early_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_early_builds)


def _also_serve_plain_paths(module_name: str, registry_attr: str, builder: Any) -> None:
    """Register ``builder`` for the empty scheme (plain paths such as ``./mlruns``) too.

    An entry point cannot be named "", yet MLflow routes plain paths through the "" scheme.
    MLflow loads our entry points while it builds each registry, so at that moment the
    registry object exists and we add the "" scheme to it.
    """
    import sys

    module = sys.modules.get(module_name)
    registry = getattr(module, registry_attr, None) if module is not None else None
    if registry is not None:
        registry.register("", builder)


def __getattr__(name: str) -> Any:
    # The entry points name these attributes; resolving them is the hook described above.
    if name == "tracking_store_builder":
        _also_serve_plain_paths("mlflow.tracking._tracking_service.utils",
                                "_tracking_store_registry", tracking_store)
        _start_building_in_server()
        return tracking_store
    if name == "registry_store_builder":
        _also_serve_plain_paths("mlflow.tracking._model_registry.utils",
                                "_model_registry_store_registry", registry_store)
        return registry_store
    raise AttributeError(name)
