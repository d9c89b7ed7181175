"""What a search does to Python's garbage collector: paused while it builds its objects, and
those objects kept out of the young generations afterwards (frozen, then moved into the
oldest generation a moment later), so the first allocations after a search do not pay a
collection that walks every head it read.  On a local store: the collector is the process's,
whatever the backend."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunStatus, ViewType

from cloudtrack.tracking import BlobTrackingStore
from cloudtrack.tracking import search as search_module


@pytest.fixture
def searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlobTrackingStore]:
    monkeypatch.setattr(search_module, "GC_THAW_AFTER", 0.2)
    s = BlobTrackingStore(str(tmp_path / "store"))
    exp = s.create_experiment("gc")
    for i in range(30):
        run = s.create_run(exp, "u", 1_700_000_000_000 + i, [], f"run-{i}").info.run_id
        s.log_batch(run, [Metric("m", i / 30, 1, 0)], [Param("p", str(i % 3))], [])
        s.update_run_info(run, RunStatus.FINISHED, 1_700_000_001_000 + i, None)
    yield s
    s.close()


def test_a_search_leaves_the_collector_on_and_its_objects_out_of_the_young_generations(
        searched: BlobTrackingStore) -> None:
    exp = searched.get_experiment_by_name("gc").experiment_id
    gc.unfreeze()
    assert gc.isenabled()
    runs = searched.search_runs([exp], "params.p = '1'", ViewType.ACTIVE_ONLY, None,
                                ["metrics.m DESC"], None)
    assert [r.info.run_name for r in runs] == [f"run-{i}" for i in range(28, -1, -3)]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0, "what the search built is in the young generation"
    deadline = time.monotonic() + 10
    while gc.get_freeze_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gc.get_freeze_count() == 0, "frozen for good: cycles among them would never go"


def test_a_collector_the_caller_turned_off_stays_off(searched: BlobTrackingStore) -> None:
    exp = searched.get_experiment_by_name("gc").experiment_id
    gc.disable()
    try:
        searched.search_runs([exp], "", ViewType.ALL, None, None, None)
        assert not gc.isenabled()
    finally:
        gc.enable()
