"""Buffered data and lifecycle changes, in the order the calls came (issue #11): by default
logging calls return at once and a background thread writes their values later
(``tracking/flusher.py``), so every call that changes a run's or an experiment's life — or
reads what was just logged — must write the run's buffered values first, or they are dropped
(written into a run that no longer takes them) or reordered (written after a change that came
later).  ``log_metric`` then ``delete_experiment`` then ``restore_experiment`` lost the metric.

Each path runs the same calls on MLflow's sqlite store (the spec) and on cloudtrack's store on
every backend, strict and buffered (``cloud_store``); results and error codes must agree.
Then the store is flushed and a fresh store — another process's view — must read the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mlflow.entities import (
    LoggedModelStatus,
    Metric,
    Param,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference, Recorder, assert_same_calls
from tests.fixtures.services import Store
from tests.fixtures.stores import registry_store, tracking_store

T0 = 1_700_000_000_000

#: A scenario: calls on a tracking store (and a registry store on the same database or
#: store), recorded; it leaves the ids of its runs in ``runs``.
Scenario = Callable[[Any, Any, Recorder, list[str]], None]


def run_view(run: Any) -> dict[str, Any]:
    info = run.info
    return {"name": info.run_name, "status": info.status, "end": info.end_time,
            "stage": info.lifecycle_stage, "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def history(s: Any, run_id: str, key: str = "m") -> list[Any]:
    return sorted((m.value, m.timestamp, m.step) for m in s.get_metric_history(run_id, key))


def read_back(s: Any, r: Recorder, runs: list[str]) -> None:
    for i, rid in enumerate(runs):
        r.call(f"run {i}", lambda rid=rid: s.get_run(rid), run_view)
        r.call(f"history {i}", lambda rid=rid: history(s, rid))


def new_run(s: Any, r: Recorder, runs: list[str], exp: str, name: str = "r") -> str:
    rid = r.alias(s.create_run(exp, "u", T0, [], name).info.run_id, "run")
    runs.append(rid)
    return rid


def logged(s: Any, rid: str, value: float = 1.0, step: int = 0) -> None:
    """What a training step logs: a metric, a param, a tag (buffered by default)."""
    s.log_metric(rid, Metric("m", value, T0 + step, step))
    s.log_param(rid, Param(f"p{step}", str(value)))
    s.set_tag(rid, RunTag(f"t{step}", str(value)))


# -- the paths -----------------------------------------------------------------------------------

def delete_restore_experiment(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp)
    logged(s, rid)
    r.call("delete experiment", lambda: s.delete_experiment(exp))
    r.call("log into its deleted run", lambda: s.log_metric(rid, Metric("m", 9.0, T0 + 9, 9)))
    r.call("deleted", lambda: s.get_run(rid), run_view)
    r.call("restore experiment", lambda: s.restore_experiment(exp))
    logged(s, rid, 2.0, 1)
    read_back(s, r, runs)


def delete_restore_run(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp)
    other = new_run(s, r, runs, exp, "other")
    logged(s, rid)
    logged(s, other)
    r.call("delete run", lambda: s.delete_run(rid))
    r.call("log into the deleted run", lambda: s.log_param(rid, Param("late", "x")))
    r.call("search active", lambda: [x.info.run_name for x in s.search_runs(
        [exp], None, ViewType.ACTIVE_ONLY, 10, None, None)])
    r.call("restore run", lambda: s.restore_run(rid))
    logged(s, rid, 2.0, 1)
    read_back(s, r, runs)


def terminate(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp)
    logged(s, rid)
    s.log_batch(rid, [Metric("m", float(i), T0 + i, i) for i in range(1, 150)], [], [])
    r.call("set_terminated", lambda: s.update_run_info(rid, RunStatus.FINISHED, T0 + 500, None),
           lambda info: (info.status, info.end_time))
    logged(s, rid, 7.0, 200)  # MLflow takes values into a finished run
    r.call("fail it", lambda: s.update_run_info(rid, RunStatus.FAILED, T0 + 600, None),
           lambda info: info.status)
    read_back(s, r, runs)


def rename(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp, "first")
    s.set_tag(rid, RunTag(MLFLOW_RUN_NAME, "by tag"))
    r.call("rename run", lambda: s.update_run_info(rid, None, None, "by update"),
           lambda info: info.run_name)
    s.set_tag(rid, RunTag(MLFLOW_RUN_NAME, "by tag again"))
    logged(s, rid)
    r.call("rename experiment", lambda: s.rename_experiment(exp, "e2"))
    r.call("experiment", lambda: s.get_experiment(exp).name)
    r.call("by new name", lambda: s.search_runs([exp], "tags.t0 = '1.0'", ViewType.ALL, 10,
                                                None, None), lambda rs: [x.info.run_name for x in rs])
    read_back(s, r, runs)


def delete_tag(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp)
    s.set_tag(rid, RunTag("k", "v1"))
    r.call("delete tag", lambda: s.delete_tag(rid, "k"))
    r.call("delete it again", lambda: s.delete_tag(rid, "k"))
    s.set_tag(rid, RunTag("k", "v2"))
    s.set_tag(rid, RunTag("gone", "x"))
    r.call("delete the other", lambda: s.delete_tag(rid, "gone"))
    logged(s, rid)
    read_back(s, r, runs)


def finalize_logged_model(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp)
    model = s.create_logged_model(exp, "model", source_run_id=rid)
    r.alias(model.model_id, "model")
    s.log_batch(rid, [Metric("m", 0.5, T0, 0, model_id=model.model_id),
                      Metric("acc", 0.9, T0, 0, model_id=model.model_id)], [], [])
    r.call("finalize", lambda: s.finalize_logged_model(model.model_id, LoggedModelStatus.READY),
           lambda m: (m.status, sorted((x.key, x.value, x.step) for x in m.metrics or [])))
    r.call("get model", lambda: s.get_logged_model(model.model_id),
           lambda m: (m.status, sorted((x.key, x.value, x.step) for x in m.metrics or [])))
    read_back(s, r, runs)


def register_after_logging(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    rid = new_run(s, r, runs, exp)
    logged(s, rid)
    reg.create_registered_model("reg")
    r.call("register", lambda: reg.create_model_version("reg", f"runs:/{rid}/model", run_id=rid),
           lambda v: (v.version, v.run_id, v.status))
    logged(s, rid, 2.0, 1)
    r.call("version", lambda: reg.get_model_version("reg", 1), lambda v: (v.run_id, v.source))
    read_back(s, r, runs)


def search_after_logging(s: Any, reg: Any, r: Recorder, runs: list[str]) -> None:
    exp = s.create_experiment("e")
    a = new_run(s, r, runs, exp, "a")
    b = new_run(s, r, runs, exp, "b")
    logged(s, a, 3.0)
    logged(s, b, 5.0)

    def names(filter_string: str | None, order_by: list[str] | None = None) -> list[str]:
        return [x.info.run_name for x in s.search_runs([exp], filter_string, ViewType.ALL, 10,
                                                       order_by, None)]

    r.call("by metric", lambda: names("metrics.m > 4"))
    r.call("by param", lambda: names("params.p0 = '3.0'"))
    r.call("by tag", lambda: names("tags.t0 = '5.0'"))
    r.call("ordered", lambda: names(None, ["metrics.m DESC"]))
    logged(s, a, 9.0, 1)
    r.call("ordered again", lambda: names(None, ["metrics.m DESC"]))
    r.call("experiments", lambda: [e.name for e in s.search_experiments()])
    read_back(s, r, runs)


PATHS: dict[str, Scenario] = {
    "delete-restore-experiment": delete_restore_experiment,
    "delete-restore-run": delete_restore_run,
    "set-terminated": terminate,
    "rename": rename,
    "delete-tag": delete_tag,
    "finalize-logged-model": finalize_logged_model,
    "register-after-logging": register_after_logging,
    "search-after-logging": search_after_logging,
}


@pytest.fixture
def cloud_registry(store: Store) -> Iterator[BlobRegistryStore]:
    yield registry_store(store)


@pytest.mark.parametrize("path", PATHS)
def test_buffered_data_keeps_its_place_against_lifecycle_changes(
        path: str, mlflow_reference: Callable[[], MlflowReference], store: Store,
        cloud_store: BlobTrackingStore, cloud_registry: BlobRegistryStore) -> None:
    scenario = PATHS[path]
    reference = mlflow_reference()
    expected = Recorder()
    scenario(reference.tracking_store(), reference.registry_store(), expected, [])
    actual = Recorder()
    runs: list[str] = []
    scenario(cloud_store, cloud_registry, actual, runs)
    assert_same_calls(expected.out, actual.out, "MLflow's sqlite store")

    # Another process's view, once this one's buffer is written: the same.
    cloud_store.flush()
    here, there = Recorder(), Recorder()
    read_back(cloud_store, here, runs)
    fresh = tracking_store(store, strict=True)
    try:
        read_back(fresh, there, runs)
    finally:
        fresh.close()
    assert there.out == here.out
