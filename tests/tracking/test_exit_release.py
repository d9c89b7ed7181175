"""At exit, once every buffer is written, a store lets go of the records it kept only to read
faster (the heads a search read, the Runs built from them, the heads this process wrote), so
that the interpreter's last garbage collections do not walk them: a process that searched
100,000 runs took 26 s to end after its search, 0.7 s with them gone.  What the process
logged last is still written first.  In a child process, on a local store: the exit is the
process's, whatever the backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

RUNS = 150

SCRIPT = textwrap.dedent("""
    import atexit, gc, json
    seen = {}

    def last():  # registered before cloudtrack is imported: runs after its exit hook
        store = seen["store"]
        gc.collect()
        print(json.dumps({
            "cache": len(store._cache._entries), "entities": len(store._entities),
            "heads": len(store._heads), "tracked_after_search": seen["tracked_after_search"],
            "tracked_at_exit": len(gc.get_objects())}), flush=True)

    atexit.register(last)

    import mlflow
    from mlflow.tracking._tracking_service.utils import _get_store

    mlflow.set_experiment("exit")
    for i in range(RUNS):
        with mlflow.start_run(run_name=f"run-{i}"):
            mlflow.log_params({f"p{j}": str(i % 7) for j in range(5)})
            mlflow.log_metrics({f"m{j}": i / RUNS for j in range(5)})
    store = seen["store"] = _get_store()
    frame = mlflow.search_runs(filter_string="params.p1 = '3'", order_by=["metrics.m0 DESC"])
    assert len(frame) == len([i for i in range(RUNS) if i % 7 == 3]), len(frame)
    del frame
    gc.collect()
    seen["tracked_after_search"] = len(gc.get_objects())
    # Still running at exit, its last point buffered: written (and the run ended) first.
    mlflow.start_run(run_name="left-open")
    mlflow.log_metric("last", 1.5)
""").replace("RUNS", str(RUNS))


def test_a_store_lets_go_of_what_it_read_at_exit_after_writing_what_it_buffered(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(store)}
    env.pop("CLOUDTRACK_STRICT", None)  # buffered: the last point waits for the exit
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert (report["cache"], report["entities"], report["heads"]) == (0, 0, 0), report
    # Each of the runs read held a head, its metrics and a list per metric, at the least.
    freed = report["tracked_after_search"] - report["tracked_at_exit"]
    assert freed >= RUNS * 3, report

    client = MlflowClient(str(store))
    exp = client.get_experiment_by_name("exit")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'left-open'",
                              ViewType.ALL)
    assert [(r.info.status, r.data.metrics) for r in runs] == [("FINISHED", {"last": 1.5})]
    assert len(client.search_runs([exp.experiment_id], "", ViewType.ALL,
                                  max_results=1000)) == RUNS + 1
