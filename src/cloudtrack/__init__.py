"""cloudtrack: MLflow tracking, artifacts and registry on object storage, with no server."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
