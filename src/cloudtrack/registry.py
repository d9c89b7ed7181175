"""MLflow's model-registry ``AbstractStore`` on a cloudtrack store.

MLflow resolves the registry store as soon as a client is created, so the entry points exist
from the start.  The registry itself is not built yet: every method raises NOT_IMPLEMENTED with
a clear message instead of silently returning None.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import NOT_IMPLEMENTED
from mlflow.store.model_registry.abstract_store import AbstractStore

from cloudtrack.config import resolve


class BlobRegistryStore(AbstractStore):
    def __init__(self, store_uri: str, tracking_uri: str | None = None) -> None:
        super().__init__(store_uri, tracking_uri)
        self.config = resolve(store_uri)
        self.store_uri = self.config.display_uri


def _unsupported(name: str) -> Callable[..., Any]:
    def method(self: BlobRegistryStore, *args: Any, **kwargs: Any) -> Any:
        raise MlflowException(
            f"{name}: the model registry on cloudtrack stores ({self.store_uri}) is not "
            "available in this version; set MLFLOW_REGISTRY_URI to an MLflow server or "
            "database to register models meanwhile.", NOT_IMPLEMENTED)
    method.__name__ = name
    return method


for _name, _ in inspect.getmembers(AbstractStore, predicate=callable):
    if not _name.startswith("_"):
        setattr(BlobRegistryStore, _name, _unsupported(_name))
