"""A run's two views of its metrics agree whatever a crash leaves behind: ``get_run``'s latest
value is never behind the last point of ``get_metric_history``.

A spill writes two objects: the history batch the head's tail moves to, then the head without
that tail.  A writer killed between them leaves the batch and the old head.  That is safe only
if every point in the batch already counted in the stored head's latest values — the spill
must move the stored tail before new points join it (``tracking/core.py::_spill``).

The kill is a real SIGKILL of a child process that logs through MLflow's client; a hook inside
the child (wrapping the blob layer's ``put``) picks the precise moment, right after the history
batch's PUT returned, since no outside signal can land between two requests reliably.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cloudtrack.config import resolve
from cloudtrack.store import layout
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.services import Store

T0 = 1_700_000_000_000

CHILD = textwrap.dedent("""
    import os, signal, sys
    import mlflow
    from mlflow.tracking._tracking_service.utils import _get_store
    from cloudtrack.blobs.base import Blobs

    run_id, first, then = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = mlflow.MlflowClient()
    T0 = 1_700_000_000_000

    def log(steps):
        for i in steps:
            client.log_metric(run_id, "m", float(i), timestamp=T0 + i, step=i)
        _get_store().flush()  # strict: nothing buffered; default: what the flusher would do

    log(range(first))
    real = Blobs.put

    def put(self, key, data):
        got = real(self, key, data)
        if key.startswith("history/"):
            os.kill(os.getpid(), signal.SIGKILL)  # the batch landed, the head not yet
        return got

    Blobs.put = put
    log(range(first, first + then))
    print("no spill happened")
""")


def tracking(store: Store) -> BlobTrackingStore:
    return BlobTrackingStore(store.uri, config=resolve(store.uri, {**store.env,
                                                                    "CLOUDTRACK_STRICT": "true"}))


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
@pytest.mark.parametrize(("strict", "first", "then"), [
    (True, 100, 1),     # the 101st point spills a full tail
    (False, 100, 1),    # the same through the flusher
    (False, 100, 150),  # a flush bringing more than a tail holds
    (False, 0, 1100),   # one write bringing more than a head carries (moved out by a second)
], ids=["strict", "buffered", "buffered-burst", "buffered-huge"])
def test_a_writer_killed_between_a_history_batch_and_its_head(
        store: Store, strict: bool, first: int, then: int) -> None:
    s = tracking(store)
    exp = s.create_experiment("spills")
    run_id = s.create_run(exp, "u", T0, [], "r").info.run_id
    env = {**os.environ, **store.env, "MLFLOW_TRACKING_URI": store.uri,
           "CLOUDTRACK_STRICT": "true" if strict else "false", "GIT_PYTHON_REFRESH": "quiet"}
    done = subprocess.run([sys.executable, "-c", CHILD, run_id, str(first), str(then)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, (done.stdout, done.stderr)
    s.close()

    clean = tracking(store)
    assert list(clean.blobs.list(layout.history(run_id))), "a history batch was written"
    history = clean.get_metric_history(run_id, "m")
    steps = sorted(m.step for m in history)
    # Nothing acknowledged before the killed write is lost, and nothing appears twice.
    assert steps[:first] == list(range(first)) and len(steps) == len(set(steps))
    last = max(history, key=lambda m: (m.step, m.timestamp, m.value))
    latest = clean.get_run(run_id).data.metrics["m"]
    assert latest == last.value, \
        f"get_run's latest value {latest} is behind the history's last point {last.value}"
    clean.close()
