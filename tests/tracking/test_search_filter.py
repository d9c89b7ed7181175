"""A search's filter (``search._filtered``) answers as MLflow's ``SearchUtils.filter`` does,
run for run and error for error: over the store's own candidates, and over the Run entities
MLflow would filter, for every kind of clause (metrics with NaN and infinities, params, tags,
attributes and their aliases, datasets, missing keys, IS NULL, LIKE, ILIKE, IN).  A local
store: what is compared is the filtering of heads, the same on every backend."""

from __future__ import annotations

import math
from typing import Any

import pytest
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.utils.search_utils import SearchUtils

from cloudtrack.store import entities
from cloudtrack.tracking import BlobTrackingStore
from cloudtrack.tracking.search import _filtered

FILTERS = [
    "metrics.m0 > 0.5", "metrics.m0 >= 0.5", "metrics.m0 = 0.25", "metrics.m0 != 0.25",
    "metrics.m0 < 0", "metrics.m0 <= 1e308", "metrics.odd > 0", "metrics.odd < 0",
    "metrics.odd != 1", "metrics.odd = 0", "metrics.missing > 0", "metrics.m0 IS NULL",
    "metrics.`m 1` > 2", "metric.m0 > 0.1",
    "params.p1 = 'v3'", "params.p1 != 'v3'", "params.p1 LIKE 'v%'", "params.p1 ILIKE 'V%'",
    "params.p1 LIKE '%3'", "params.p1 IN ('v1', 'v2')", "params.p1 NOT IN ('v1')",
    "params.p1 IS NULL", "params.p1 IS NOT NULL", "params.missing = 'x'", "param.p1 = 'v1'",
    "tags.t0 = 'a'", "tags.t0 != 'a'", "tags.t0 IS NULL", "tags.`mlflow.runName` LIKE 'run-1%'",
    "tags.t0 IN ('a', 'b')",
    "attributes.status = 'FINISHED'", "attributes.status != 'RUNNING'",
    "attributes.run_name = 'run-03'", "run_name LIKE 'run-0%'", "attributes.run_name ILIKE 'RUN-1%'",
    "attributes.start_time > 1005", "attributes.start_time <= 1010", "attributes.created > 1003",
    "attributes.end_time > 2010", "attributes.end_time IS NULL",
    "attributes.user_id = 'u'", "attributes.lifecycle_stage = 'deleted'",
    "datasets.name = 'train-set'", "datasets.digest = 'abc'", "datasets.context = 'training'",
    "datasets.name IN ('train-set', 'other')",
    "metrics.m0 > 0.5 and params.p1 = 'v3'",
    "metrics.m0 > 0.2 and tags.t0 = 'b'", "attributes.run_id IN ('a', 'b')",
    "attributes.run_id NOT IN ('a')",
    "params.p1 = 'v1' and metrics.odd >= 0",
]


def _answer(fn: Any) -> Any:
    try:
        return "ok", [getattr(r, "key", None) or r.info.run_id for r in fn()]
    except Exception as e:  # compared: the same error, or the same runs
        return "error", type(e).__name__, str(e)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    root = tmp_path_factory.mktemp("filter-store")
    store = BlobTrackingStore(str(root))
    exp = store.create_experiment("filters")
    odd = [math.nan, math.inf, -math.inf, 0.0, -1.5]
    for i in range(25):
        rid = store.create_run(exp, "u" if i % 3 else "v", 1_000 + i, [], f"run-{i:02d}").info.run_id
        metrics = [Metric("m0", ((i * 7) % 20) / 20 - 0.2, 1, 0), Metric("m 1", i, 1, 0)]
        if i % 4:
            metrics.append(Metric("odd", odd[i % len(odd)], 1, 0))
        params = [Param("p1", f"v{i % 5}")] if i % 6 else []
        tags = [RunTag("t0", "ab"[i % 2])] if i % 7 else []
        store.log_batch(rid, metrics, params, tags)
        if i % 5 == 0:
            store.log_inputs(rid, [DatasetInput(
                Dataset("train-set" if i % 10 else "other", "abc" if i % 3 else "def", "code", "{}"),
                [InputTag("mlflow.data.context", "training" if i % 2 else "eval")])])
        if i % 3 == 0:
            store.update_run_info(rid, RunStatus.FINISHED, 2_000 + i, None)
        if i == 8:
            store.delete_run(rid)
    found = store._candidates_of(exp)
    store.close()
    assert len(found) == 25
    return found


@pytest.mark.parametrize("filter_string", FILTERS)
def test_the_filter_answers_as_mlflows(candidates: list[Any], filter_string: str) -> None:
    mlflows = _answer(lambda: SearchUtils.filter(candidates, filter_string))
    ours = _answer(lambda: _filtered(candidates, filter_string))
    assert ours == mlflows
    runs = {c.key: entities.run(c.head) for c in candidates}
    on_runs = _answer(lambda: SearchUtils.filter(list(runs.values()), filter_string))
    by_run_id = {r.info.run_id: key for key, r in runs.items()}
    if on_runs[0] == "ok":
        assert ours == ("ok", [by_run_id[rid] for rid in on_runs[1]])
    else:
        assert ours == on_runs


def test_no_run_raises_nothing_as_with_mlflow(candidates: list[Any]) -> None:
    assert _filtered([], "attributes.status = 'FINISHED'") == \
        SearchUtils.filter([], "attributes.status = 'FINISHED'") == []
    assert [c.key for c in _filtered(candidates, "")] == [c.key for c in candidates]


def test_a_few_filters_match_some_runs_and_not_all(candidates: list[Any]) -> None:
    """The data gives every filter above something to tell apart."""
    sizes = {f: len(_filtered(candidates, f)) for f in
             ("metrics.m0 > 0.5", "params.p1 IS NULL", "metrics.odd != 1", "datasets.context = 'training'")}
    assert all(0 < n < len(candidates) for n in sizes.values()), sizes

