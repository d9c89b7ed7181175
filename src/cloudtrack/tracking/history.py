"""Metric history: the union of a run's history batches (``history/<run>/``) and its head's
tail, de-duplicated and ordered like MLflow's SQL stores (docs/format.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlflow.entities import Metric
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.search_utils import SearchUtils
from mlflow.utils.validation import _validate_run_id

from cloudtrack.errors import BlobNotFound, CorruptObject
from cloudtrack.store import entities, layout, records
from cloudtrack.tracking.core import StoreCore


def _sorted_unique(points: Iterable[list[Any]]) -> list[list[Any]]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for t in points:
        # MLflow's SQL store keys a run's metric points by (key, timestamp, step, value):
        # the same point copied onto a logged model is still one point of the run.
        ident = (t[0], t[2], t[3], repr(float(t[1])))
        if ident not in seen:
            seen.add(ident)
            out.append(t)

    def order(t: list[Any]) -> tuple[int, int, float]:
        v = float(t[1])
        return int(t[2]), int(t[3]), math.inf if math.isnan(v) else v

    out.sort(key=order)
    return out


class HistoryMixin(StoreCore):

    def _history_points(self, run_id: str) -> list[list[Any]]:
        self._flusher.flush(run_id)
        # The head before the listing: a tail spilled in between is then in the listing.
        head, _ = self._load_head(run_id)
        listing = [(i.key, i.version) for i in self.blobs.list(layout.history(run_id))]
        batches = self._read_many(listing)
        points: list[list[Any]] = list(head.get("tail") or [])
        for key, _ in listing:
            rec = batches[key]
            if isinstance(rec, BlobNotFound):
                # History batches are immutable and never deleted: a listed batch that
                # answers 404 is an anomaly of the store, so look once more, then fail loudly
                # rather than return a history with a hole in it.
                rec = records.read(self.blobs, key)
            if isinstance(rec, Exception):
                raise rec
            metrics = rec.get("metrics")
            if not isinstance(metrics, list):
                raise CorruptObject(self.blobs.object_uri(key), "no 'metrics' list")
            points.extend(metrics)
        return points

    def get_metric_history(self, run_id: str, metric_key: str, max_results: int | None = None,
                           page_token: str | None = None) -> PagedList[Metric]:
        _validate_run_id(run_id)
        points = [t for t in self._history_points(run_id) if t[0] == metric_key]
        metrics = [entities.metric(t, run_id) for t in _sorted_unique(points)]
        if max_results is None:
            offset = SearchUtils.parse_start_offset_from_page_token(page_token)
            return PagedList(metrics[offset:], None)
        page, token = SearchUtils.paginate(metrics, page_token, max_results)
        return PagedList(page, token)

    def get_metric_history_bulk_interval_from_steps(self, run_id: str, metric_key: str,
                                                    steps: list[int], max_results: int) -> list[Any]:
        from mlflow.entities.metric import MetricWithRunId

        wanted = set(steps)
        points = [t for t in self._history_points(run_id)
                  if t[0] == metric_key and int(t[3]) in wanted]
        ordered = sorted(_sorted_unique(points), key=lambda t: (int(t[3]), int(t[2])))
        return [MetricWithRunId(run_id=run_id, metric=entities.metric(t, run_id))
                for t in ordered[:max_results]]
