"""A process that logs into a store while housekeeping runs beside it (forked from the
forkserver of :mod:`tests.fixtures.workers`)."""

from __future__ import annotations

import os
import tempfile


def log_while(env: dict[str, str], run_ids: list[str], stop: str) -> int:
    """Log points, one call each, into every run (strict: each call is a write) until the file
    ``stop`` exists; then add an artifact to each run and end it.  Returns the points logged
    into each run."""
    os.environ.update(env)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "notes.txt")
    with open(path, "w") as f:
        f.write("still here\n")
    i = 0
    while not os.path.exists(stop) and i < 100_000:
        for rid in run_ids:
            client.log_batch(rid, metrics=[Metric("m", float(i), 1_000 + i, i)])
        i += 1
    for rid in run_ids:
        client.log_artifact(rid, path)
        client.set_terminated(rid)
    return i
