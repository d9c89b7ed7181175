"""Metric history: the union of a run's history batches (``history/<run>/``) and its head's
tail, de-duplicated and ordered like MLflow's SQL stores (docs/format.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.search_utils import SearchUtils

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


def _run_metric(t: list[Any], run_id: str) -> Metric:
    """A point as a run's history shows it: without the logged model and dataset it was
    logged for, as MLflow's SQL store answers (its ``metrics`` table has no such columns; the
    logged model keeps them).  MLflow's ``log_model`` relies on it: it links to the new model
    every point of the run at its step whose ``model_id`` is None."""
    return entities.metric([*t[:4], None, None, None], run_id)


def _ntile_firsts(count: int, buckets: int) -> list[int]:
    """The index of the first of ``count`` ordered rows in each of SQL's ``NTILE(buckets)``
    buckets: sizes differ by at most one, the larger ones first; one row per bucket when
    there are fewer rows than buckets."""
    size, larger = divmod(count, buckets)
    firsts, index = [], 0
    for bucket in range(min(buckets, count)):
        firsts.append(index)
        index += size + (1 if bucket < larger else 0)
    return firsts


def _sample(points: list[list[Any]], max_results: int) -> list[list[Any]]:
    """MLflow's SQL store's sample of one run's ordered points: the first point of each of
    ``max_results`` even buckets, and always the last point (replacing the last sample when
    there is no room for it)."""
    if not points:
        return []
    rows = [points[i] for i in _ntile_firsts(len(points), max_results)]
    if rows[-1] is not points[-1]:
        if len(rows) >= max_results:
            rows[-1] = points[-1]
        else:
            rows.append(points[-1])
    return rows


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

    def _key_history(self, run_id: str, metric_key: str) -> list[list[Any]]:
        """The run's points of ``metric_key``, de-duplicated and ordered like MLflow's SQL
        store.  A run that does not exist is RESOURCE_DOES_NOT_EXIST, as on MLflow's FileStore
        (its SQL store answers no points; tests/tracking/test_bad_input.py holds us to an
        error for ids that would leave the store's prefix)."""
        points = self._history_points(run_id)
        return _sorted_unique([t for t in points if t[0] == metric_key])

    def get_metric_history(self, run_id: str, metric_key: str, max_results: int | None = None,
                           page_token: str | None = None) -> PagedList[Metric]:
        metrics = [_run_metric(t, run_id) for t in self._key_history(run_id, metric_key)]
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        if max_results is None:
            return PagedList(metrics[offset:], None)
        # MLflow's SQL store's page arithmetic: ask for one more than a page; a token when
        # exactly that many came back.
        rows = metrics[offset:offset + max_results + 1]
        if len(rows) == max_results + 1:
            return PagedList(rows[:max_results],
                             SearchUtils.create_page_token(offset + max_results))
        return PagedList(rows, None)

    def get_metric_history_bulk_interval_from_steps(self, run_id: str, metric_key: str,
                                                    steps: list[int], max_results: int) -> list[Any]:
        from mlflow.entities.metric import MetricWithRunId

        wanted = set(steps)
        points = [t for t in self._key_history(run_id, metric_key) if int(t[3]) in wanted]
        ordered = sorted(points, key=lambda t: (int(t[3]), int(t[2])))
        return [MetricWithRunId(run_id=run_id, metric=_run_metric(t, run_id))
                for t in ordered[:max_results]]

    def get_metric_history_bulk_interval(self, run_ids: list[str], metric_key: str,
                                         max_results: int, start_step: int | None,
                                         end_step: int | None) -> list[Any]:
        """Up to ``max_results`` points per run, sampled as MLflow's SQL store samples them
        (by point, not by step, so many points at one step cannot crowd out the rest)."""
        from mlflow.entities.metric import MetricWithRunId

        if (start_step is None) != (end_step is None):
            raise MlflowException.invalid_parameter_value(
                "Both start_step and end_step must be specified together, "
                "or neither may be specified.")
        max_results = max(1, max_results)

        def order(t: list[Any]) -> tuple[int, int, float, bool]:
            v = float(t[1])  # NaN sorts as 0, then after a real 0, as the SQL store keeps it
            nan = math.isnan(v)
            return int(t[3]), int(t[2]), 0.0 if nan else v, nan

        out = []
        for run_id in run_ids:
            points = self._key_history(run_id, metric_key)
            if start_step is not None and end_step is not None:
                points = [t for t in points if start_step <= int(t[3]) <= end_step]
            for t in _sample(sorted(points, key=order), max_results):
                out.append(MetricWithRunId(run_id=run_id, metric=_run_metric(t, run_id)))
        return out
