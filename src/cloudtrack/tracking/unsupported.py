"""What the tracking store deliberately does not do, and says so.

MLflow's AbstractStore does not enforce its abstract methods: a forgotten method would
silently return None.  :func:`refuse_the_rest` gives every base-class method the store neither
implements nor inherits on purpose (:data:`INHERITED`) one that raises
:class:`~cloudtrack.errors.UnsupportedOperation` (NOT_IMPLEMENTED at the MLflow boundary),
naming the store and what to use instead.  Traces cannot be written, so trace queries answer
empty (:class:`TraceQueriesMixin`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.abstract_store import AbstractStore

from cloudtrack.errors import UnsupportedOperation
from cloudtrack.tracking.core import StoreCore

C = TypeVar("C", bound=type)

UNSUPPORTED_REASON = (
    "is not supported by cloudtrack's object-store tracking store ({uri}). cloudtrack stores "
    "experiments, runs, metrics, params, tags, datasets, logged models and artifacts; for "
    "traces, assessments, evaluation datasets, scorers, gateway and other server features use "
    "an MLflow server with a database backend."
)

#: Base-class methods whose inherited implementation is correct here because it only calls
#: methods this store implements.
INHERITED = frozenset({
    "search_runs", "log_batch_async", "log_metric_async", "log_param_async", "set_tag_async",
    "end_async_logging", "shut_down_async_logging", "set_model_versions_tags",
})


class TraceQueriesMixin(StoreCore):
    """No trace can be written to this store (start_trace and log_spans are refused), so there
    are none to find.  Answering empty keeps the UI's trace views quiet instead of retrying an
    error forever."""

    def search_traces(self, experiment_ids: list[str] | None = None, *args: Any,
                      **kwargs: Any) -> tuple[list[Any], str | None]:
        for exp_id in experiment_ids or []:
            self.get_experiment(str(exp_id))
        return [], None

    def query_trace_metrics(self, experiment_ids: list[str], *args: Any,
                            **kwargs: Any) -> PagedList[Any]:
        for exp_id in experiment_ids or []:
            self.get_experiment(str(exp_id))
        return PagedList([], None)


def _refusal(name: str) -> Callable[..., Any]:
    def method(self: StoreCore, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedOperation(f"{name} " + UNSUPPORTED_REASON.format(uri=self.store_uri))
    method.__name__ = name
    method.__qualname__ = f"BlobTrackingStore.{name}"
    method.__doc__ = "Not supported: raises UnsupportedOperation (MLflow's NOT_IMPLEMENTED)."
    return method


def refuse_the_rest(cls: C) -> C:
    """Class decorator: install a refusal for every public AbstractStore method that no
    cloudtrack class of ``cls`` defines and that is not in :data:`INHERITED`; their names go to
    ``cls.UNSUPPORTED``."""
    refused = set()
    for name, _ in inspect.getmembers(AbstractStore, predicate=callable):
        if name.startswith("_") or name in INHERITED:
            continue
        owner = next(k for k in cls.__mro__ if name in vars(k))
        if owner.__module__.startswith("cloudtrack."):
            continue
        setattr(cls, name, _refusal(name))
        refused.add(name)
    cls.UNSUPPORTED = frozenset(refused)  # type: ignore[attr-defined]
    return cls
