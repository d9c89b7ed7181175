"""The blob layer: one object-store interface, four backends, loaded lazily by scheme.

Which class serves a backend, and the extra that installs its SDK, is a row of the backend
table (:data:`cloudtrack.config.backends.BACKENDS`).  SDK errors become cloudtrack errors
through one shape (:mod:`cloudtrack.blobs.sdk_errors`).
"""

from __future__ import annotations

from collections.abc import Mapping

from cloudtrack.blobs.base import BlobInfo, Blobs, validate_key
from cloudtrack.blobs.sdk_errors import ErrorFacts, ErrorTable, translate
from cloudtrack.config import StoreConfig, backend, resolve


def install_hint(name: str) -> str:
    """The command that installs backend ``name``'s SDK."""
    return backend(name).install_hint()


def blobs_class(name: str) -> type[Blobs]:
    """Import the implementation of backend ``name``; a missing SDK names the extra to install."""
    cls: type[Blobs] = backend(name).load("blobs")
    return cls


def open_blobs(target: str | StoreConfig, environ: Mapping[str, str] | None = None) -> Blobs:
    """Open the store a URI (or an already resolved config) names."""
    config = target if isinstance(target, StoreConfig) else resolve(target, environ)
    return blobs_class(config.backend)(config)


__all__ = ["BlobInfo", "Blobs", "ErrorFacts", "ErrorTable", "blobs_class", "install_hint",
           "open_blobs", "translate", "validate_key"]
