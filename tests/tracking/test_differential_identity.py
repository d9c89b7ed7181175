"""Differential tests of identity in MLflow's tracking store API: ids that name nothing (of
runs, experiments, logged models), the same call made twice with the same identity, and calls
on deleted entities.  The same calls on MLflow's sqlite store and on cloudtrack's store (every
backend, strict and buffered); results, error codes and, where MLflow's stores agree on them
(``words=True``), error messages must match.

Where MLflow's sqlite store answers only because a database constraint failed (logging the same
model output twice: BAD_REQUEST) cloudtrack follows its FileStore, and these tests leave the
call out.  Logged models that were deleted follow MLflow's FileStore, the issue's reference for
logged models (the sqlite store changes deleted models without complaint); so does a logged
model's metric logged at several steps (the FileStore keeps the latest point per key and
dataset, the sqlite store every point), which these tests log once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import (
    Dataset,
    DatasetInput,
    ExperimentTag,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
    Metric,
    Param,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.models import Model
from mlflow.store.tracking.file_store import FileStore

from tests.fixtures.reference import Recorder, assert_same_calls, same_as_sqlite

T0 = 1_700_000_000_000
NO_RUN = "0" * 32



def run_names(runs: Any) -> list[str]:
    return [r.info.run_name for r in runs]


def run_view(run: Any) -> dict[str, Any]:
    return {"name": run.info.run_name, "status": run.info.status,
            "stage": run.info.lifecycle_stage, "params": run.data.params,
            "metrics": run.data.metrics,
            # The model history's entries carry random ids and times; counted apart.
            "tags": {k: v for k, v in run.data.tags.items() if k != "mlflow.log-model.history"},
            "datasets": [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs],
            "model inputs": [m.model_id for m in run.inputs.model_inputs or []],
            "model outputs": [(m.model_id, m.step)
                              for m in (run.outputs.model_outputs if run.outputs else [])]}


# -- run ids that name no run ---------------------------------------------------------------------

def scenario_run_ids(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    s.create_run(exp, "u", T0, [], "r")
    for bad in (NO_RUN, "bad id!", "", "../x", "a/b", None):
        # MLflow's SQL store looks these up and finds no run, whatever they look like.
        for label, call in [
            ("get_run", lambda bad=bad: s.get_run(bad)),
            ("update_run_info", lambda bad=bad: s.update_run_info(bad, RunStatus.FINISHED, 1, None)),
            ("delete_run", lambda bad=bad: s.delete_run(bad)),
            ("restore_run", lambda bad=bad: s.restore_run(bad)),
            ("log_metric", lambda bad=bad: s.log_metric(bad, Metric("m", 1.0, T0, 0))),
            ("log_param", lambda bad=bad: s.log_param(bad, Param("p", "1"))),
            ("set_tag", lambda bad=bad: s.set_tag(bad, RunTag("t", "1"))),
            ("delete_tag", lambda bad=bad: s.delete_tag(bad, "t")),
            ("log_outputs", lambda bad=bad: s.log_outputs(bad, [LoggedModelOutput("m-1", 0)])),
            ("record_logged_model", lambda bad=bad: s.record_logged_model(bad, Model())),
        ]:
            r.call(f"{label}({bad!r})", call, words=True)
    for bad in (NO_RUN, "bad id!", "", "../x"):
        # log_batch and log_inputs validate the id first, as MLflow's stores do.
        r.call(f"log_batch({bad!r})", lambda bad=bad: s.log_batch(
            bad, [Metric("m", 1.0, T0, 0)], [], []), words=True)
        r.call(f"log_inputs({bad!r})", lambda bad=bad: s.log_inputs(
            bad, None, [LoggedModelInput("m-1")]), words=True)
    r.call("runs untouched", lambda: s.search_runs([exp], "", ViewType.ALL), run_names)
    return r.out


def test_run_ids_that_name_no_run(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_run_ids, mlflow_reference, cloud_store)


# -- the same call twice --------------------------------------------------------------------------

def scenario_repeated_run_calls(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    r.call("same experiment name", lambda: s.create_experiment("e"))
    rid = r.alias(s.create_run(exp, "u", T0, [], "r").info.run_id, "run")
    iris = DatasetInput(Dataset("iris", "d1", "local", "/iris.csv"), [])
    for attempt in ("first", "again"):
        r.call(f"{attempt}: param", lambda: s.log_param(rid, Param("p", "1")))
        r.call(f"{attempt}: tag", lambda: s.set_tag(rid, RunTag("t", "1")))
        r.call(f"{attempt}: metric", lambda: s.log_metric(rid, Metric("m", 0.5, T0, 1)))
        r.call(f"{attempt}: NaN", lambda: s.log_metric(rid, Metric("n", float("nan"), T0, 1)))
        r.call(f"{attempt}: batch", lambda: s.log_batch(
            rid, [Metric("b", 1.0, T0, 0)], [Param("bp", "x")], [RunTag("bt", "y")]))
        r.call(f"{attempt}: inputs", lambda: s.log_inputs(rid, [iris], [LoggedModelInput("m-1")]))
        r.call(f"{attempt}: record model", lambda: s.record_logged_model(
            rid, Model(artifact_path="model", run_id=rid)))
        r.call(f"{attempt}: finish", lambda: s.update_run_info(rid, RunStatus.FINISHED, T0 + 1, "n"),
               lambda info: (info.status, info.end_time, info.run_name))
    r.call("another value", lambda: s.log_param(rid, Param("p", "2")), words=True)
    r.call("output", lambda: s.log_outputs(rid, [LoggedModelOutput("m-2", 3)]))
    r.call("the run", lambda: s.get_run(rid), run_view)
    r.call("models recorded", lambda: len(json.loads(
        s.get_run(rid).data.tags["mlflow.log-model.history"])))
    for name in ("m", "n"):
        r.call(f"{name} once", lambda name=name: [
            (m.step, m.timestamp) for m in s.get_metric_history(rid, name)])
    r.call("delete tag", lambda: s.delete_tag(rid, "t"))
    r.call("delete it again", lambda: s.delete_tag(rid, "t"), words=True)
    r.call("restore an active run", lambda: s.restore_run(rid))
    r.call("delete run", lambda: s.delete_run(rid))
    r.call("delete it again", lambda: s.delete_run(rid))
    r.call("restore", lambda: s.restore_run(rid))
    r.call("restore again", lambda: s.restore_run(rid))
    r.call("active", lambda: s.get_run(rid).info.lifecycle_stage)
    return r.out


def test_repeated_run_calls(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_repeated_run_calls, mlflow_reference, cloud_store)


# -- deleted experiments ----------------------------------------------------------------------------

def scenario_deleted_experiment(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e", tags=[ExperimentTag("k", "v")])
    rid = r.alias(s.create_run(exp, "u", T0, [], "r").info.run_id, "run")
    r.call("delete", lambda: s.delete_experiment(exp))
    r.call("delete again", lambda: s.delete_experiment(exp), words=True)
    r.call("get", lambda: s.get_experiment(exp), lambda e: (e.name, e.lifecycle_stage, e.tags))
    r.call("by name", lambda: s.get_experiment_by_name("e"), lambda e: e.lifecycle_stage)
    r.call("rename", lambda: s.rename_experiment(exp, "f"), words=True)
    r.call("set tag", lambda: s.set_experiment_tag(exp, ExperimentTag("k", "w")), words=True)
    r.call("delete tag", lambda: s.delete_experiment_tag(exp, "k"), words=True)
    r.call("new run", lambda: s.create_run(exp, "u", T0, [], "x"), words=True)
    r.call("new model", lambda: s.create_logged_model(exp, "m"), words=True)
    r.call("its run", lambda: s.get_run(rid), lambda run: run.info.lifecycle_stage)
    r.call("log to its run", lambda: s.log_param(rid, Param("p", "1")), words=True)
    r.call("active runs", lambda: s.search_runs([exp], "", ViewType.ACTIVE_ONLY), run_names)
    r.call("deleted runs", lambda: s.search_runs([exp], "", ViewType.DELETED_ONLY), run_names)
    r.call("its models", lambda: s.search_logged_models([exp]), lambda ms: len(ms))
    r.call("its name is taken", lambda: s.create_experiment("e"))
    r.call("listed as deleted", lambda: sorted(
        e.name for e in s.search_experiments(view_type=ViewType.DELETED_ONLY)))
    r.call("restore", lambda: s.restore_experiment(exp))
    r.call("restore again", lambda: s.restore_experiment(exp), words=True)
    r.call("its run is back", lambda: s.get_run(rid), lambda run: run.info.lifecycle_stage)
    r.call("a run deleted before stays deleted", lambda: (
        s.delete_run(rid), s.delete_experiment(exp), s.restore_experiment(exp),
        s.get_run(rid).info.lifecycle_stage)[-1])
    return r.out


def test_deleted_experiment(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_deleted_experiment, mlflow_reference, cloud_store)


# -- logged models: repeated calls, and metrics naming a deleted model ------------------------------

def model_view(m: Any) -> dict[str, Any]:
    return {"name": m.name, "status": str(m.status), "tags": m.tags, "params": m.params,
            "metrics": sorted((x.key, x.value, x.step) for x in m.metrics or [])}


def scenario_repeated_model_calls(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    rid = r.alias(s.create_run(exp, "u", T0, [], "r").info.run_id, "run")
    ids = [r.alias(s.create_logged_model(exp, "same").model_id, "model") for _ in range(2)]
    r.call("same name twice", lambda: sorted(m.name for m in s.search_logged_models([exp])))
    mid = ids[0]
    for attempt in ("first", "again"):
        r.call(f"{attempt}: tags", lambda: s.set_logged_model_tags(mid, [LoggedModelTag("k", "1")]))
        r.call(f"{attempt}: finalize", lambda: s.finalize_logged_model(
            mid, LoggedModelStatus.READY), model_view)
    r.call("retag", lambda: s.set_logged_model_tags(mid, [LoggedModelTag("k", "2")]))
    r.call("delete tag", lambda: s.delete_logged_model_tag(mid, "k"))
    r.call("delete it again", lambda: s.delete_logged_model_tag(mid, "k"), words=True)
    r.call("fail it", lambda: s.finalize_logged_model(mid, LoggedModelStatus.FAILED), model_view)
    r.call("metric", lambda: s.log_metric(rid, Metric("acc", 0.5, T0, 0, model_id=mid)))
    r.call("same metric", lambda: s.log_metric(rid, Metric("acc", 0.5, T0, 0, model_id=mid)))
    r.call("the model", lambda: s.get_logged_model(mid), model_view)
    r.call("delete the other", lambda: s.delete_logged_model(ids[1]))
    r.call("a metric naming it", lambda: s.log_metric(
        rid, Metric("acc", 0.9, T0, 0, model_id=ids[1])))
    r.call("kept on the deleted model", lambda: s.get_logged_model(ids[1], allow_deleted=True),
           model_view)
    r.call("and on the run", lambda: s.get_run(rid).data.metrics)
    r.call("search leaves it out", lambda: [m.model_id for m in s.search_logged_models([exp])])
    return r.out


def test_repeated_model_calls(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_repeated_model_calls, mlflow_reference, cloud_store)


def scenario_deleted_model(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    mid = r.alias(s.create_logged_model(exp, "m", tags=[LoggedModelTag("k", "v")]).model_id,
                  "model")
    time.sleep(0.002)
    r.call("delete", lambda: s.delete_logged_model(mid))
    r.call("get", lambda: s.get_logged_model(mid))
    r.call("get it anyway", lambda: s.get_logged_model(mid, allow_deleted=True),
           lambda m: (m.name, m.tags, str(m.status)))
    r.call("delete again", lambda: s.delete_logged_model(mid))
    r.call("tag it", lambda: s.set_logged_model_tags(mid, [LoggedModelTag("k", "w")]))
    r.call("untag it", lambda: s.delete_logged_model_tag(mid, "k"))
    r.call("params", lambda: s.log_logged_model_params(mid, [LoggedModelParameter("p", "1")]))
    r.call("finalize", lambda: s.finalize_logged_model(mid, LoggedModelStatus.READY))
    r.call("unchanged", lambda: s.get_logged_model(mid, allow_deleted=True),
           lambda m: (m.tags, m.params, str(m.status)))
    r.call("searched", lambda: len(s.search_logged_models([exp])))
    return r.out


@pytest.fixture
def mlflow_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileStore]:
    """MLflow's FileStore (kept in MLflow 3 only behind MLFLOW_ALLOW_FILE_STORE)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    yield FileStore(str(tmp_path / "mlruns"), str(tmp_path / "artifacts"))


def test_deleted_logged_model_as_mlflow_file_store(mlflow_file_store, cloud_store) -> None:  # type: ignore[no-untyped-def]
    # MLflow's sqlite store would tag, finalize and delete again a deleted model; its FileStore,
    # the reference for logged models, finds no such model, and so does cloudtrack.
    expected = scenario_deleted_model(mlflow_file_store)
    assert_same_calls(expected, scenario_deleted_model(cloud_store), "MLflow's FileStore")
