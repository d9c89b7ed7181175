"""``search_runs``: a listing of an experiment's heads (about one request per 1,000 runs, read
in parallel key ranges when large), then only the heads this process has not seen at the
listed version: from the head pages writers keep (:mod:`cloudtrack.store.pages`, about one GET
per few hundred finished runs), and one GET each for the rest (running runs, and heads changed
since their page entry).  Heads a search had to GET one by one go into the pages for the next
process."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Iterator
from typing import Any

from mlflow.entities import LifecycleStage, Run
from mlflow.utils.search_utils import SearchUtils

from cloudtrack.errors import BlobNotFound
from cloudtrack.store import entities, layout, pages, snapshots
from cloudtrack.store.pagewriter import is_finished
from cloudtrack.tracking.core import StoreCore, check_max_results, distinct_experiment_ids

log = logging.getLogger("cloudtrack.tracking")

#: A search missing this many heads of an experiment without head pages first reads the
#: snapshot older versions wrote.
SNAPSHOT_MIN_MISSES = 64

_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a search builds thousands of objects.

    A 10,000-run search allocates millions of small objects (the decoded snapshot, the Run
    entities); each allocation burst triggers full collections that scan them all again: a
    cold 10,000-run search of a local store took 2.9-3.5 s with them, 1.2-1.9 s without.
    Nothing built here forms cycles worth collecting early.  Re-entrant and thread-safe: the
    collector resumes when the last pause ends.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


class SearchMixin(StoreCore):

    def _runs_of(self, experiment_id: str) -> list[Run]:
        folder = layout.head_pages(experiment_id)
        listed_pages = self._pool.submit(pages.list_pages_for_reading, self.blobs, folder)
        infos = self.blobs.list_spread(layout.heads(experiment_id), self._pool.map)
        listing = [(i.key, i.version) for i in infos]
        if not listed_pages.result().bits and \
                len(self._cache.missing(listing)) >= SNAPSHOT_MIN_MISSES:
            # A store written before head pages: the snapshot its readers left, if any.
            snapshots.load_into(self._cache, self.blobs, experiment_id)
        found, fetched, _ = self._read_paged(listing, folder, listed_pages)
        self._page_later(folder, fetched, is_finished)
        runs = []
        for key, version in listing:
            rec = found[key]
            if isinstance(rec, BlobNotFound):
                continue
            if isinstance(rec, Exception):
                log.warning("skipping run head %s: %s", self.blobs.object_uri(key), rec)
                continue
            hit = self._entities.get(key)
            if hit is not None and hit[0] == version:
                runs.append(hit[1])
                continue
            try:
                run = entities.run(rec)
            except Exception as e:  # RunInfo refuses a missing field with a bare Exception
                log.warning("skipping malformed run head %s: %r", self.blobs.object_uri(key), e)
                continue
            self._entities[key] = (version, run)
            runs.append(run)
        return runs

    def _search_runs(self, experiment_ids: list[str], filter_string: str | None,
                     run_view_type: int, max_results: int | None, order_by: list[str] | None,
                     page_token: str | None) -> tuple[list[Run], str | None]:
        """Runs as MLflow's SQL store finds them: ``max_results`` None means every run (and
        no token), an unknown view type matches no run."""
        check_max_results(max_results, allow_null=True)
        experiment_ids = distinct_experiment_ids(experiment_ids)
        stages = LifecycleStage.view_type_to_stages(run_view_type)
        self._flusher.flush()
        runs: list[Run] = []
        with _gc_paused():
            for exp_id in experiment_ids:
                runs.extend(r for r in self._runs_of(exp_id)
                            if r.info.lifecycle_stage in stages)
            filtered = SearchUtils.filter(runs, filter_string)
            ordered = SearchUtils.sort(filtered, order_by)
            if max_results is None:
                offset = SearchUtils.parse_start_offset_from_page_token(page_token)
                return ordered[offset:], None
            return SearchUtils.paginate(ordered, page_token, max_results)

    def _search_datasets(self, experiment_ids: list[str]) -> list[Any]:
        """The distinct (experiment, dataset name, digest, context) of the experiments' runs.

        Private in MLflow, yet ``mlflow server`` calls it for the UI's dataset filter
        (``experiments/search-datasets``); without it that request answers 500.  Like MLflow's
        SQL store: runs of every lifecycle stage, at most 1000 summaries.
        """
        from mlflow.entities.dataset_summary import _DatasetSummary
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        self._flusher.flush()
        found: dict[tuple[str, str, str, str | None], None] = {}
        for exp_id in distinct_experiment_ids(experiment_ids):
            for run in self._runs_of(exp_id):
                for d in (run.inputs.dataset_inputs if run.inputs else []):
                    context = next((t.value for t in d.tags if t.key == MLFLOW_DATASET_CONTEXT),
                                   None)
                    found.setdefault((exp_id, d.dataset.name, d.dataset.digest, context), None)
        return [_DatasetSummary(experiment_id=e, name=n, digest=d, context=c)
                for e, n, d, c in list(found)[:1000]]
