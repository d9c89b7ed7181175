"""Buffered data of processes that do not end the usual way: multiprocessing workers (fork and
forkserver end with ``os._exit``, so the interpreter's exit hooks never run) and children forked
from a process that was already logging (its flusher thread and locks do not survive the fork).

Found by the chaos suite: it is how a test_many_writers run on Azurite once lost a writer's
1,000 points (tests/chaos/README.md)."""

from __future__ import annotations

import multiprocessing

import pytest
from mlflow.entities import Metric

from tests.fixtures import workers
from tests.fixtures.services import Store
from tests.fixtures.stores import tracking_store

pytestmark = pytest.mark.parametrize("store", ["s3"], indirect=True)


def _env(store: Store, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {**store.env, "MLFLOW_TRACKING_URI": store.uri, "CLOUDTRACK_STRICT": "false",
            "GIT_PYTHON_REFRESH": "quiet", "XDG_CACHE_HOME": str(tmp_path / "cache")}


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_a_worker_that_returns_without_flushing_loses_nothing(store: Store, tmp_path,  # type: ignore[no-untyped-def]
                                                              start: str) -> None:
    clean = tracking_store(store, strict=True)
    run_id = clean.create_run("0", "u", 0, [], "worker").info.run_id
    ctx = workers.context() if start == "forkserver" else multiprocessing.get_context("fork")
    p = ctx.Process(target=workers.log_points_and_return,
                    args=(_env(store, tmp_path), run_id, "m", 50))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    history = clean.get_metric_history(run_id, "m")
    assert sorted(m.step for m in history) == list(range(50))


def test_a_child_forked_while_its_parent_logs_writes_its_own_points_once(
        store: Store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for k, v in _env(store, tmp_path).items():
        monkeypatch.setenv(k, v)
    clean = tracking_store(store, strict=True)
    run_id = clean.create_run("0", "u", 0, [], "parent").info.run_id
    parent = tracking_store(store, strict=False)
    try:
        parent.log_metric(run_id, Metric("parent", 1.0, 1, 0))  # the flusher thread runs now
        p = multiprocessing.get_context("fork").Process(
            target=_child_logs_on_the_inherited_store, args=(parent, run_id))
        p.start()
        p.join(120)
        assert p.exitcode == 0
        parent.flush()
        assert [m.value for m in clean.get_metric_history(run_id, "parent")] == [1.0]
        assert sorted(m.step for m in clean.get_metric_history(run_id, "child")) == \
            list(range(20))
    finally:
        parent.close()


def _child_logs_on_the_inherited_store(store, run_id: str) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        store.log_metric(run_id, Metric("child", float(i), 1, i))
