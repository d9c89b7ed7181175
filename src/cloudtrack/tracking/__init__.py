"""MLflow's tracking ``AbstractStore`` over the blob layer: no server, no database.

The storage format is :mod:`cloudtrack.store` (docs/format.md).  The rules that make it safe
with many writers and no server:

* every record that changes (experiment, run head, logged model) is rewritten only with a
  version precondition (:func:`cloudtrack.store.cas.versioned_update`);
* names and numbers that must be unique are claimed with put-if-absent;
* metric points are appended as new immutable batch objects, never rewritten.

Logging calls are buffered by default and flushed in the background about once a second per
run, on ``end_run`` and at interpreter exit (:mod:`~cloudtrack.tracking.flusher`); with
``CLOUDTRACK_STRICT=true`` every logging call is durable when it returns (one conditional head
PUT, two when the head's tail of recent points moves to a history batch).  Reads made by this
process see its own buffered writes: a read flushes that run first.

The store is a few mixins over :class:`~cloudtrack.tracking.core.StoreCore`, one per part of
MLflow's interface: experiments, runs, logging, history, search, logged models, what it
refuses (unsupported), and what ``mlflow gc`` calls (housekeeping).  Every public method
answers MLflow's errors (:mod:`cloudtrack.mlflow_errors`).
"""

from __future__ import annotations

from cloudtrack.mlflow_errors import boundary
from cloudtrack.tracking.experiments import ExperimentsMixin
from cloudtrack.tracking.history import HistoryMixin
from cloudtrack.tracking.housekeeping import HousekeepingMixin
from cloudtrack.tracking.logged_models import LoggedModelsMixin
from cloudtrack.tracking.logging import TAIL_MAX, LoggingMixin
from cloudtrack.tracking.runs import RunsMixin
from cloudtrack.tracking.search import SearchMixin
from cloudtrack.tracking.unsupported import (
    INHERITED,
    UNSUPPORTED_REASON,
    TraceQueriesMixin,
    refuse_the_rest,
)

__all__ = ["INHERITED", "TAIL_MAX", "UNSUPPORTED_REASON", "BlobTrackingStore"]


@boundary("__init__", "_search_runs", "_search_datasets")
@refuse_the_rest
class BlobTrackingStore(HousekeepingMixin, ExperimentsMixin, RunsMixin, LoggingMixin,
                        HistoryMixin, SearchMixin, LoggedModelsMixin, TraceQueriesMixin):
    """MLflow tracking store on a cloudtrack blob store (``s3://``, ``gs://``, ``wasbs://``,
    ``abfss://``, ``file:``)."""

    #: AbstractStore methods deliberately not supported (see UNSUPPORTED_REASON); set by
    #: :func:`~cloudtrack.tracking.unsupported.refuse_the_rest`.
    UNSUPPORTED: frozenset[str] = frozenset()
