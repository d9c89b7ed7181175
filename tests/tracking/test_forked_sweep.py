"""A sweep forked from a process that already used the store: the parent sets the experiment
up (and searches it), then ``multiprocessing`` forks workers that log and search on the store
object they inherit (as MLflow's fluent API hands every child the parent's cached store).
The children must not share the parent's keep-alive connections (two processes on one
connection read each other's answers: on S3, Azure and GCS this failed writes with HTTP 400,
409 or a 200 to a PUT), nor wait on the parent's pool threads, which a fork does not copy.
Every backend, real services; the runs are compared with MLflow's sqlite store."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import ViewType

from tests.fixtures.reference import MlflowReference
from tests.fixtures.stores import tracking_store
from tests.tracking.test_head_pages import log_run, summary

WORKERS = 8
RUNS_EACH = 3


def _worker(store: Any, exp: str, w: int) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(120)  # a hung worker shows where, in the test's output
    for i in range(w, WORKERS * RUNS_EACH, WORKERS):
        log_run(store, exp, 1 + i)
        store.search_runs([exp], "params.p0 != 'none'", ViewType.ALL, max_results=None)


def test_workers_forked_after_the_parent_used_the_store_lose_nothing(  # type: ignore[no-untyped-def]
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:
    parent = tracking_store(store, strict=True)
    exp = parent.create_experiment("forked sweep")
    log_run(parent, exp, 0)
    assert len(parent.search_runs([exp], "", ViewType.ALL, max_results=None)) == 1
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(parent, exp, w)) for w in range(WORKERS)]
    for p in workers:
        p.start()
    deadline = time.monotonic() + 300
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p.pid for p in workers if p.exitcode is None]
    for p in workers:
        if p.exitcode is None:
            p.kill()
    assert not hung, f"workers {hung} did not finish"
    assert [p.exitcode for p in workers] == [0] * WORKERS

    sqlite = mlflow_reference().tracking_store()
    ref_exp = sqlite.create_experiment("forked sweep")
    for i in range(1 + WORKERS * RUNS_EACH):
        log_run(sqlite, ref_exp, i)
    order = ["attributes.run_name ASC"]
    expected = summary(sqlite.search_runs([ref_exp], "", ViewType.ALL, order_by=order))
    # The parent's own connections still serve it, and a new process sees the same.
    for reader in (parent, tracking_store(store, strict=True)):
        assert summary(reader.search_runs([exp], "", ViewType.ALL, max_results=None,
                                          order_by=order)) == expected
