"""Many writers, no server: processes racing on one store, and processes killed mid-run."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import signal
import time

import pytest

from cloudtrack.config import resolve
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures import workers
from tests.fixtures.stores import tracking_store


def worker_env(store, strict: bool = False) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {**store.env, "MLFLOW_TRACKING_URI": store.uri,
            "CLOUDTRACK_STRICT": "true" if strict else "false", "GIT_PYTHON_REFRESH": "quiet"}


def pool(n: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(n, mp_context=workers.context(),
                                                  max_tasks_per_child=1)


@pytest.mark.slow
def test_eight_processes_create_one_experiment(store) -> None:  # type: ignore[no-untyped-def]
    env = worker_env(store)
    with pool(8) as p:
        ids = list(p.map(workers.create_experiment, [env] * 8, ["shared-name"] * 8))
    assert len(set(ids)) == 1
    names = [e.name for e in tracking_store(store, strict=True).search_experiments()]
    assert names.count("shared-name") == 1


@pytest.mark.slow
def test_sixteen_runs_and_one_shared_run_lose_nothing(store) -> None:  # type: ignore[no-untyped-def]
    s = tracking_store(store, strict=True)
    exp = s.create_experiment("crowd")
    own = [s.create_run(exp, "w", 0, [], f"own-{i}").info.run_id for i in range(16)]
    shared = s.create_run(exp, "w", 0, [], "shared").info.run_id
    env = worker_env(store)
    jobs = [(rid, "m") for rid in own] + [(shared, f"w{i}") for i in range(4)]
    with pool(len(jobs)) as p:
        done = list(p.map(workers.log_points, [env] * len(jobs), [j[0] for j in jobs],
                          [j[1] for j in jobs], [1000] * len(jobs)))
    assert done == [1000] * len(jobs)
    for rid in own:
        history = s.get_metric_history(rid, "m")
        assert sorted(m.step for m in history) == list(range(1000))
        assert s.get_run(rid).data.metrics["m"] == 999.0
    run = s.get_run(shared)
    for i in range(4):
        assert [m.step for m in s.get_metric_history(shared, f"w{i}")] == list(range(1000))
        assert run.data.metrics[f"w{i}"] == 999.0


@pytest.mark.slow
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "buffered"])
def test_sigkill_loses_nothing_acknowledged(store, strict: bool) -> None:  # type: ignore[no-untyped-def]
    s = tracking_store(store, strict=True)
    run_id = s.create_run("0", "w", 0, [], "victim").info.run_id
    ctx = workers.context()
    acks = ctx.Queue()
    proc = ctx.Process(target=workers.log_until_killed,
                       args=(worker_env(store, strict), run_id, acks))
    proc.start()
    reported: list[tuple[int, float]] = []
    started = time.monotonic()
    # Strict: enough acknowledged calls.  Buffered: also several flush intervals of them.
    while (len(reported) < 150 or (not strict and time.monotonic() - started < 6)) \
            and time.monotonic() - started < 120:
        try:
            reported.append(acks.get(timeout=30))
        except queue.Empty:
            break
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.join(30)
    while True:  # acknowledgements still in the pipe count too
        try:
            reported.append(acks.get(timeout=0.5))
        except queue.Empty:
            break
    assert len(reported) >= 150, f"the worker logged only {len(reported)} points"
    # What is checked is what the store holds, read by a store of its own whose reads outlast
    # an emulator's pause: twice in CI, Azurite left a GET of the run head the killed writer
    # was rewriting unanswered for two 10 s read timeouts (the default reader's 30 s retry
    # deadline), and the test failed on the read, not on a lost point.
    reader = BlobTrackingStore(store.uri, config=resolve(store.uri, {
        **store.env, "CLOUDTRACK_STRICT": "true", "CLOUDTRACK_READ_TIMEOUT": "30",
        "CLOUDTRACK_RETRY_DEADLINE": "180"}))
    try:
        steps = {m.step for m in reader.get_metric_history(run_id, "ticks")}
    finally:
        reader.close()
    if strict:
        must = {i for i, _ in reported}
    else:
        # Buffered mode may lose at most its last flush interval (1 s), plus slack for a
        # flush in flight on a loaded machine.
        must = {i for i, at in reported if at < killed_at - 3.0}
        assert must, "the worker ran too briefly for the buffered check to mean anything"
    assert must <= steps, f"lost acknowledged points: {sorted(must - steps)[:10]}"
