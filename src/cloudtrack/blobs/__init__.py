"""The blob layer: one object-store interface, four backends, loaded lazily by scheme.

Adding a backend is one line in :data:`REGISTRY` (plus its module and its extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import NamedTuple

from cloudtrack.blobs.base import BlobInfo, Blobs, validate_key
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import ConfigError, MissingDependencyError


class BackendEntry(NamedTuple):
    #: ``module:Class`` of the implementation, imported on first use.
    target: str
    #: The pip extra that installs its SDK, or None when it needs nothing.
    extra: str | None


#: backend name (StoreConfig.backend) -> implementation.
REGISTRY: Mapping[str, BackendEntry] = {
    "file": BackendEntry("cloudtrack.blobs.local:LocalBlobs", None),
    "s3": BackendEntry("cloudtrack.blobs.s3:S3Blobs", "s3"),
    "gcs": BackendEntry("cloudtrack.blobs.gcs:GcsBlobs", "gcs"),
    "azure": BackendEntry("cloudtrack.blobs.azure:AzureBlobs", "azure"),
}


def install_hint(backend: str) -> str:
    extra = REGISTRY[backend].extra
    return f"pip install 'cloudtrack[{extra}]'" if extra else "pip install cloudtrack"


def blobs_class(backend: str) -> type[Blobs]:
    """Import the implementation of ``backend``; a missing SDK names the extra to install."""
    try:
        entry = REGISTRY[backend]
    except KeyError:
        raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(REGISTRY)}") from None
    module_name, cls_name = entry.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise MissingDependencyError(
            f"the {backend} backend needs a package that is not installed ({e.name or e}); "
            f"run: {install_hint(backend)}"
        ) from e
    cls: type[Blobs] = getattr(module, cls_name)
    return cls


def open_blobs(target: str | StoreConfig, environ: Mapping[str, str] | None = None) -> Blobs:
    """Open the store a URI (or an already resolved config) names."""
    config = target if isinstance(target, StoreConfig) else resolve(target, environ)
    return blobs_class(config.backend)(config)


__all__ = ["REGISTRY", "BlobInfo", "Blobs", "blobs_class", "install_hint", "open_blobs",
           "validate_key"]
