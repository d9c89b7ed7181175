"""What a search does to Python's garbage collector: paused while it builds its objects, and
for a moment after it (so the first allocations after a search do not pay a collection that
walks every head it read), then on again by itself, in a forked child at once.  On a local
store: the collector is the process's, whatever the backend."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunStatus, ViewType

from cloudtrack.tracking import BlobTrackingStore
from cloudtrack.tracking import search as search_module


@pytest.fixture
def searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlobTrackingStore]:
    monkeypatch.setattr(search_module, "GC_RESUME_AFTER", 0.3)
    s = BlobTrackingStore(str(tmp_path / "store"))
    exp = s.create_experiment("gc")
    for i in range(30):
        run = s.create_run(exp, "u", 1_700_000_000_000 + i, [], f"run-{i}").info.run_id
        s.log_batch(run, [Metric("m", i / 30, 1, 0)], [Param("p", str(i % 3))], [])
        s.update_run_info(run, RunStatus.FINISHED, 1_700_000_001_000 + i, None)
    yield s
    s.close()
    _wait_for(gc.isenabled)


def _wait_for(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


def _search(s: BlobTrackingStore) -> list[str]:
    exp = s.get_experiment_by_name("gc").experiment_id  # type: ignore[union-attr]
    runs = s.search_runs([exp], "params.p = '1'", ViewType.ACTIVE_ONLY, None,
                         ["metrics.m DESC"], None)
    return [r.info.run_name for r in runs]


def test_the_collector_resumes_a_moment_after_a_search(searched: BlobTrackingStore) -> None:
    assert _wait_for(gc.isenabled)
    expected = [f"run-{i}" for i in range(28, -1, -3)]
    assert _search(searched) == expected
    assert not gc.isenabled(), "resumed at once: the next allocation walks what it built"
    # Searches within the moment do not put it off: it resumes a moment after the first.
    ended = time.monotonic()
    assert _search(searched) == expected
    assert _wait_for(gc.isenabled)
    assert time.monotonic() - ended < 0.3 + 1.0


def test_a_search_running_when_the_moment_ends_keeps_it_paused_until_it_ends(
        searched: BlobTrackingStore) -> None:
    assert _wait_for(gc.isenabled)
    _search(searched)
    with search_module._gc_paused():  # a search in another thread, still running
        time.sleep(0.5)
        assert not gc.isenabled(), "resumed under a running search"
    # Due already: on as soon as that search ends, not a moment later (a loop of searches
    # would otherwise keep it off for good).
    assert gc.isenabled()


def test_a_collector_the_caller_turned_off_stays_off(searched: BlobTrackingStore) -> None:
    assert _wait_for(gc.isenabled)
    gc.disable()
    try:
        _search(searched)
        time.sleep(0.6)
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_during_the_pause_has_its_collector_on(
        searched: BlobTrackingStore) -> None:
    assert _wait_for(gc.isenabled)
    _search(searched)
    assert not gc.isenabled()
    pid = os.fork()
    if pid == 0:  # the child: exit at once, with what it saw
        os._exit(0 if gc.isenabled() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's collector stayed off"
