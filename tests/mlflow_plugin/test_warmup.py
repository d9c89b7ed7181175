"""A worker of `mlflow server` on one of our stores reads ahead the experiments written to most
recently (cloudtrack.warmup), so the UI's first request for them makes no cold read.  Each case
runs MLflow's own server module (`mlflow.server.handlers`, what a uvicorn worker imports) in a
new process with the variables `mlflow server` hands its workers, on the real services, and
counts the store's requests at the blob layer once the read-ahead has ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from cloudtrack import warmup
from cloudtrack.errors import ConfigError
from cloudtrack.store import layout
from tests.fixtures.stores import tracking_store
from tests.tracking.test_head_pages import sweep

WORKER = textwrap.dedent("""
    import json, os, sys, threading
    from mlflow.entities import RunStatus, ViewType
    from mlflow.server import handlers  # what a server worker imports: it loads the plugin
    from cloudtrack.tracking import BlobTrackingStore
    from cloudtrack.config import resolve

    for thread in threading.enumerate():  # the early builds, and the read-ahead after them
        if thread.name.startswith("cloudtrack-early-"):
            thread.join(300)
    store = handlers._get_tracking_store()
    calls = []
    for name in ("_get", "_list_page", "_list_page_after", "_list_dir"):
        real = getattr(store.blobs, name)
        def counted(*args, _real=real, _name=name, **kw):
            calls.append([_name, str(args[0])])
            return _real(*args, **kw)
        setattr(store.blobs, name, counted)
    out = {}
    for exp in sys.argv[1:]:
        runs = store.search_runs([exp], None, ViewType.ACTIVE_ONLY, 100,
                                 ["attributes.start_time DESC"], None)
        out[exp] = {"runs": len(runs), "gets": sum(1 for c in calls if c[0] == "_get")}
        calls.clear()
    # A run that ends after the read-ahead is in the next answer: every request still lists.
    uri = os.environ["_MLFLOW_SERVER_FILE_STORE"]
    other = BlobTrackingStore(uri, config=resolve(uri, {**os.environ, "CLOUDTRACK_STRICT": "true"}))
    exp = sys.argv[1]
    rid = other.create_run(exp, "u", 10**13, [], "late").info.run_id
    other.update_run_info(rid, RunStatus.FINISHED, 10**13 + 1, None)
    newest = store.search_runs([exp], None, ViewType.ACTIVE_ONLY, 100,
                               ["attributes.start_time DESC"], None)
    out["late_first"] = newest[0].info.run_name
    print(json.dumps(out))
""")


def worker(env: dict[str, str], *experiments: str) -> tuple[dict[str, Any], str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("_MLFLOW_SERVER_") and k != "CLOUDTRACK_SERVER_WARMUP"}
    proc = subprocess.run([sys.executable, "-c", WORKER, *experiments],
                          env={**full, **env, "CLOUDTRACK_READ_CACHE": "off"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, proc.stderr


def two_experiments(store: Any) -> tuple[str, str, int, int]:
    """An experiment of 60 finished runs, then (a second later: S3 and Azure date objects to
    the second) one of 20: (older id, newer id, the runs each is estimated at from its pages)."""
    setup = tracking_store(store, strict=True)
    older = setup.create_experiment("older")
    sweep(store, older, 60, writers=4)
    time.sleep(1.1)
    newer = setup.create_experiment("newer")
    sweep(store, newer, 20, writers=4)
    size = {exp: sum(i.size for i in setup.blobs.list(layout.head_pages(exp)))
            for exp in (older, newer)}
    setup.close()
    return older, newer, size[older] // warmup.ENTRY_BYTES, size[newer] // warmup.ENTRY_BYTES


def test_the_newest_experiments_are_read_ahead_within_the_budget(store) -> None:  # type: ignore[no-untyped-def]
    older, newer, older_est, newer_est = two_experiments(store)
    assert newer_est < older_est, (newer_est, older_est)
    env = {**store.env, "_MLFLOW_SERVER_FILE_STORE": store.uri,
           "CLOUDTRACK_SERVER_WARMUP": str(max(newer_est, 20))}
    out, log = worker(env, newer, older)
    # The newer fits; the older would take what is left of the budget past its end.
    assert out[newer] == {"runs": 20, "gets": 0}, out
    assert out[older]["runs"] == 60 and out[older]["gets"] > 0, out
    assert out["late_first"] == "late", out
    assert "read 20 runs of 1 experiment(s) ahead" in log, log


def test_with_the_default_budget_every_experiment_is_read_ahead(store) -> None:  # type: ignore[no-untyped-def]
    older, newer, *_ = two_experiments(store)
    out, log = worker({**store.env, "_MLFLOW_SERVER_FILE_STORE": store.uri}, newer, older)
    assert out[newer] == {"runs": 20, "gets": 0} and out[older] == {"runs": 60, "gets": 0}, out
    assert out["late_first"] == "late", out
    assert "read 80 runs of 2 experiment(s) ahead" in log, log


@pytest.mark.parametrize("store", ["s3"], indirect=True)
@pytest.mark.parametrize("value, said", [
    ("0", ""),
    ("off", ""),
    ("lots", "CLOUDTRACK_SERVER_WARMUP='lots' is not a number of runs"),
])
def test_a_budget_of_nothing_reads_nothing_and_a_wrong_one_says_so(store, value: str, said: str) -> None:  # type: ignore[no-untyped-def]
    _, newer, *_ = two_experiments(store)
    env = {**store.env, "_MLFLOW_SERVER_FILE_STORE": store.uri, "CLOUDTRACK_SERVER_WARMUP": value}
    out, log = worker(env, newer)
    assert out[newer]["runs"] == 20 and out[newer]["gets"] > 0, out
    assert "ahead for the UI in" not in log, log
    if said:
        assert said in log and "reading nothing ahead" in log, log


def test_budget_reads_counts_and_refuses_the_rest() -> None:
    assert warmup.budget({}) == warmup.DEFAULT_RUNS
    assert warmup.budget({"CLOUDTRACK_SERVER_WARMUP": "on"}) == warmup.DEFAULT_RUNS
    assert warmup.budget({"CLOUDTRACK_SERVER_WARMUP": "50_000"}) == 50_000
    assert warmup.budget({"CLOUDTRACK_SERVER_WARMUP": " 0 "}) == 0
    assert warmup.budget({"CLOUDTRACK_SERVER_WARMUP": "Off"}) == 0
    for wrong in ("-1", "1e4", "many"):
        with pytest.raises(ConfigError, match="CLOUDTRACK_SERVER_WARMUP"):
            warmup.budget({"CLOUDTRACK_SERVER_WARMUP": wrong})
