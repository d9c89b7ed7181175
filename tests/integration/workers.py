"""Worker processes for the many-writers tests.

They are forked from a forkserver that has imported MLflow and cloudtrack once, so twenty
writers start in milliseconds instead of seconds each; every worker still is a separate
process with its own store, flusher and connections, as separate jobs would be.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import time
from typing import Any

_CTX: multiprocessing.context.ForkServerContext | None = None


def context() -> multiprocessing.context.ForkServerContext:
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["mlflow", "mlflow.tracking", "cloudtrack.tracking",
                                     "cloudtrack.blobs", "tests.integration.workers"])
    return _CTX


def _setup(env: dict[str, str]) -> None:
    os.environ.update(env)


def create_experiment(env: dict[str, str], name: str) -> str:
    _setup(env)
    import mlflow

    return str(mlflow.set_experiment(name).experiment_id)


def log_points(env: dict[str, str], run_id: str, key: str, n: int) -> int:
    _setup(env)
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for i in range(n):
        client.log_metric(run_id, key, float(i), step=i)
    mlflow.flush_async_logging()
    from mlflow.tracking._tracking_service.utils import _get_store

    _get_store().flush()  # what the interpreter's exit hook would do
    return n


def log_until_killed(env: dict[str, str], run_id: str, acks: Any) -> None:
    """Log one point at a time and report each one the call returned for."""
    _setup(env)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    i = 0
    while True:
        client.log_batch(run_id, metrics=[Metric("ticks", float(i), int(time.time() * 1000), i)])
        acks.put((i, time.time()))
        i += 1
        time.sleep(0.01)
