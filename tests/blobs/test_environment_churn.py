"""Another thread of the process adding and removing environment variables while a store
writes: MLflow's telemetry client does this (it sets and then removes
``_MLFLOW_TELEMETRY_SESSION_ID``), and a writer was seen to crash in ``set_terminated`` with
``KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'``, its run left RUNNING.  requests looks up proxy
variables on every request by iterating ``os.environ``, and a variable removed between the
iteration's listing of names and its reading of a value raises.  Every backend must carry on
regardless; on the local backend (no HTTP) the test shows the churn itself is harmless."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections.abc import Iterator

import pytest
from mlflow.entities import Metric, Param, RunStatus

from cloudtrack.blobs import Blobs
from tests.fixtures.services import Store
from tests.fixtures.stores import tracking_store

CHURNED = "_CLOUDTRACK_TEST_CHURN"


@pytest.fixture
def churn() -> Iterator[threading.Event]:
    """A thread that sets and removes a variable as fast as it can until the test ends; the
    event is set once it has gone round at least once."""
    stop, started = threading.Event(), threading.Event()

    def run() -> None:
        while not stop.is_set():
            os.environ[CHURNED] = "1"
            os.environ.pop(CHURNED, None)
            started.set()

    # Threads take turns every 5 ms by default: a request rarely loses the GIL inside the
    # environment's iteration.  Turns every microsecond make the race likely every time.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=run, name="env-churn", daemon=True)
    thread.start()
    try:
        started.wait(5)
        yield started
    finally:
        stop.set()
        thread.join(5)
        sys.setswitchinterval(interval)
    os.environ.pop(CHURNED, None)


def test_requests_survive_a_thread_changing_the_environment(
        blobs: Blobs, churn: threading.Event) -> None:
    assert churn.is_set()
    keys = [f"churn/{i:03d}" for i in range(120)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: blobs.put(k, k.encode()), keys))
        got = list(pool.map(blobs.get, keys))
    assert got == [k.encode() for k in keys]
    assert sorted(info.key for info in blobs.list("churn/")) == keys


def test_a_buffered_run_ends_while_a_thread_changes_the_environment(
        store: Store, churn: threading.Event) -> None:
    tracking = tracking_store(store, strict=False)
    try:
        exp = tracking.create_experiment("churn")
        runs = [tracking.create_run(exp, "u", 0, [], f"r{i}") for i in range(6)]
        for n, run in enumerate(runs):
            rid = run.info.run_id
            for step in range(20):
                tracking.log_batch(rid, metrics=[Metric("m", float(step), step, step)],
                                   params=[Param(f"p{step}", str(n))] if step < 5 else [],
                                   tags=[])
            tracking.update_run_info(rid, RunStatus.FINISHED, 99, None)
    finally:
        tracking.close()
    assert churn.is_set()
    reader = tracking_store(store, strict=True)
    try:
        for n, run in enumerate(runs):
            got = reader.get_run(run.info.run_id)
            assert got.info.status == "FINISHED"
            assert got.data.params == {f"p{s}": str(n) for s in range(5)}
            history = reader.get_metric_history(run.info.run_id, "m")
            assert [m.step for m in history] == list(range(20))
    finally:
        reader.close()
