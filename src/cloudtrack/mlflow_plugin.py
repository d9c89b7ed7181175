"""The builders MLflow calls through the entry points in pyproject.toml.

``file:`` URIs and plain paths come here too: a directory that already holds an MLflow
FileStore (``<id>/meta.yaml``) keeps being served by MLflow's own FileStore, unchanged; every
other directory becomes a cloudtrack local store.  The builders answer MLflow's errors
(:mod:`cloudtrack.mlflow_errors`).  MLflow itself is imported only once a store is built: the
doctor imports this module for :func:`is_mlflow_file_store`.
"""

from __future__ import annotations

import os
from typing import Any

from cloudtrack.config import local_path
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
    if store_uri.startswith("file:") or "://" not in store_uri:
        path = local_path(store_uri)
        if is_mlflow_file_store(path):
            from mlflow.store.tracking.file_store import FileStore

            return FileStore(path, artifact_uri)
    from cloudtrack.config import resolve
    from cloudtrack.tracking import BlobTrackingStore

    config = None
    if os.environ.get("_MLFLOW_SERVER_FILE_STORE") and "CLOUDTRACK_STRICT" not in os.environ:
        # Inside `mlflow server` a REST call must be durable when it answers 200: the client
        # has no way to flush the server's buffer, and the server may be restarted any time.
        config = resolve(store_uri, {**os.environ, "CLOUDTRACK_STRICT": "true"})
    return BlobTrackingStore(store_uri, artifact_uri, config=config)  # type: ignore[abstract]


@translate_errors
def registry_store(store_uri: str, tracking_uri: str | None = None) -> Any:
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
        return tracking_store
    if name == "registry_store_builder":
        _also_serve_plain_paths("mlflow.tracking._model_registry.utils",
                                "_model_registry_store_registry", registry_store)
        return registry_store
    raise AttributeError(name)
