"""Differential tests of the places issue #17 found where cloudtrack's tracking store answered
differently from MLflow's sqlite store: the same calls on both stores, on every backend, strict
and buffered; results and error codes must agree, and error messages too where MLflow's
stores word them alike (``words=True``).

For logged models the issue's reference is MLflow's FileStore where its sqlite store fails on
a database constraint rather than answering (a None tag value): those cases run against the
FileStore and say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import (
    Dataset,
    DatasetInput,
    ExperimentTag,
    InputTag,
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
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.store.tracking.file_store import FileStore

from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import Recorder, assert_same_calls, same_as_sqlite

T0 = 1_700_000_000_000
MISSING_MODEL = "m-" + "0" * 32



def info_view(info: Any) -> tuple[Any, ...]:
    return info.status, info.end_time, info.run_name


def names(runs: Any) -> tuple[list[str], bool]:
    return [r.info.run_name for r in runs], runs.token is not None


def dataset(name: str, digest: str, **tags: str) -> DatasetInput:
    return DatasetInput(Dataset(name, digest, "local", f"/data/{name}.csv"),
                        [InputTag(k, v) for k, v in tags.items()])


def datasets_view(run: Any) -> list[Any]:
    return sorted((d.dataset.name, d.dataset.digest, sorted((t.key, t.value) for t in d.tags))
                  for d in run.inputs.dataset_inputs)


# -- update_run_info with None arguments keeps what it is not given ----------------------------

def scenario_update_run_info(s: Any) -> list[Any]:
    r = Recorder()
    rid = r.alias(s.create_run(s.create_experiment("e"), "u", T0, [], "first").info.run_id, "run")
    r.call("rename only", lambda: s.update_run_info(rid, None, None, "second"), info_view)
    r.call("finish", lambda: s.update_run_info(rid, RunStatus.FINISHED, T0 + 5, None), info_view)
    r.call("end time only", lambda: s.update_run_info(rid, None, T0 + 9, None), info_view)
    r.call("status only", lambda: s.update_run_info(rid, RunStatus.FAILED, None, ""), info_view)
    r.call("read back", lambda: s.get_run(rid), lambda run: (info_view(run.info), run.data.tags))
    r.call("unknown status", lambda: s.update_run_info(rid, 99, None, None), words=True)
    return r.out


def test_update_run_info_changes_only_what_it_is_given(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_update_run_info, mlflow_reference, cloud_store)


# -- search_runs: max_results None is every run, and its bounds ---------------------------------

def scenario_search_max_results(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    for i in range(4):
        s.create_run(exp, "u", T0 + i, [], f"run-{i}")

    def search(label: str, max_results: Any, token: str | None = None, words: bool = False) -> Any:
        return r.call(label, lambda: s.search_runs([exp], "", ViewType.ALL, max_results=max_results,
                                                   order_by=["start_time ASC"], page_token=token),
                      names, words=words)

    search("every run", None)
    page = search("first page", 3)
    search("rest without a limit", None, page.token)
    search("exactly all", 4)
    search("zero", 0, words=True)
    search("negative", -1, words=True)
    search("at the threshold", 50000)
    search("over the threshold", 50001, words=True)
    return r.out


def test_search_runs_max_results_none_and_bounds(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_search_max_results, mlflow_reference, cloud_store)


# -- a dataset logged again keeps the tags it was first logged with ----------------------------

def scenario_dataset_tags(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    first = r.alias(s.create_run(exp, "u", T0, [], "first").info.run_id, "run")
    second = r.alias(s.create_run(exp, "u", T0, [], "second").info.run_id, "run")
    r.call("twice in one call", lambda: s.log_inputs(first, [
        dataset("iris", "d1", context="train"), dataset("iris", "d1", context="eval")]))
    r.call("again with other tags", lambda: s.log_inputs(first, [
        dataset("iris", "d1", context="test", extra="x"), dataset("wine", "d2")]))
    r.call("another digest", lambda: s.log_inputs(first, [dataset("iris", "d3", context="eval")]))
    r.call("first run", lambda: s.get_run(first), datasets_view)
    r.call("same dataset, another run", lambda: s.log_inputs(second, [
        dataset("iris", "d1", context="eval")]))
    r.call("second run", lambda: s.get_run(second), datasets_view)
    r.call("search by context", lambda: s.search_runs(
        [exp], "dataset.context = 'train'", ViewType.ALL), names)
    return r.out


def test_a_dataset_logged_again_keeps_its_first_tags(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_dataset_tags, mlflow_reference, cloud_store)


# -- logged models: a None tag or param value is stored as "" (MLflow's FileStore) -------------

def scenario_logged_model_none_values(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    model = s.create_logged_model(exp, "m", tags=[LoggedModelTag("at-create", None)],
                                  params=[LoggedModelParameter("p-create", None)])
    mid = r.alias(model.model_id, "model")
    r.call("created", lambda: (model.tags, model.params))
    r.call("set a None tag", lambda: s.set_logged_model_tags(mid, [LoggedModelTag("t", None)]))
    r.call("log a None param", lambda: s.log_logged_model_params(
        mid, [LoggedModelParameter("p", None)]))
    r.call("read back", lambda: s.get_logged_model(mid), lambda m: (m.tags, m.params))
    return r.out


@pytest.fixture
def mlflow_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileStore]:
    """MLflow's FileStore, the issue's reference for logged models where the sqlite store
    fails on a constraint (MLflow 3 keeps it only behind MLFLOW_ALLOW_FILE_STORE)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    yield FileStore(str(tmp_path / "mlruns"), str(tmp_path / "artifacts"))


def test_logged_model_none_values_are_stored_as_empty_strings(
        mlflow_reference, mlflow_file_store, cloud_store) -> None:  # type: ignore[no-untyped-def]
    # MLflow 3.17's sqlite store answers BAD_REQUEST from a NOT NULL constraint here rather
    # than storing anything: not an answer to follow, so its FileStore is the reference.
    sqlite = mlflow_reference().tracking_store()
    model = sqlite.create_logged_model(sqlite.create_experiment("e"), "m")
    with pytest.raises(MlflowException) as e:
        sqlite.set_logged_model_tags(model.model_id, [LoggedModelTag("t", None)])
    assert e.value.error_code == "BAD_REQUEST"
    expected = scenario_logged_model_none_values(mlflow_file_store)
    assert expected[-1][1] == [{"at-create": "", "t": ""}, {"p": "", "p-create": ""}]
    assert_same_calls(expected, scenario_logged_model_none_values(cloud_store),
                      "MLflow's FileStore")


# -- DEFAULT_EXPERIMENT_ID ----------------------------------------------------------------------

def scenario_default_experiment_id(s: Any) -> list[Any]:
    r = Recorder()
    r.call("attribute", lambda: s.DEFAULT_EXPERIMENT_ID)
    r.call("names the default", lambda: s.get_experiment(s.DEFAULT_EXPERIMENT_ID).name)
    r.call("runs go there", lambda: s.create_run(s.DEFAULT_EXPERIMENT_ID, "u", T0, [], "r"),
           lambda run: run.info.experiment_id)
    return r.out


def test_default_experiment_id(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    assert BlobTrackingStore.DEFAULT_EXPERIMENT_ID == "0"
    same_as_sqlite(scenario_default_experiment_id, mlflow_reference, cloud_store)


# -- a deleted run refuses every change, in MLflow's words --------------------------------------

def scenario_deleted_run(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    rid = r.alias(s.create_run(exp, "u", T0, [RunTag("t", "1")], "doomed").info.run_id, "run")
    r.call("delete", lambda: s.delete_run(rid))
    for label, call in [
        ("log_metric", lambda: s.log_metric(rid, Metric("m", 1.0, T0, 0))),
        ("log_param", lambda: s.log_param(rid, Param("p", "1"))),
        ("set_tag", lambda: s.set_tag(rid, RunTag("t", "2"))),
        ("log_batch", lambda: s.log_batch(rid, [Metric("m", 1.0, T0, 0)], [], [])),
        ("empty log_batch", lambda: s.log_batch(rid, [], [], [])),
        ("update_run_info", lambda: s.update_run_info(rid, RunStatus.FINISHED, T0, None)),
        ("delete_tag", lambda: s.delete_tag(rid, "t")),
        ("log_inputs", lambda: s.log_inputs(rid, [dataset("iris", "d1")])),
        ("empty log_inputs", lambda: s.log_inputs(rid, None, None)),
        ("log_outputs", lambda: s.log_outputs(rid, [LoggedModelOutput(MISSING_MODEL, 0)])),
        ("record_logged_model", lambda: s.record_logged_model(rid, Model(run_id=rid))),
    ]:
        r.call(label, call, words=True)
    r.call("still readable", lambda: s.get_run(rid),
           lambda run: (run.info.lifecycle_stage, run.data.tags))
    r.call("delete the experiment", lambda: s.delete_experiment(exp))
    r.call("run in a deleted experiment", lambda: s.create_run(exp, "u", T0, [], "x"), words=True)
    r.call("tag a deleted experiment", lambda: s.set_experiment_tag(exp, ExperimentTag("k", "v")),
           words=True)
    r.call("logged model in a deleted experiment", lambda: s.create_logged_model(exp),
           words=True)
    r.call("restore both", lambda: (s.restore_experiment(exp), s.restore_run(rid)))
    r.call("logs again", lambda: s.log_param(rid, Param("p", "1")))
    return r.out


def test_deleted_run_refuses_changes_in_mlflow_words(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_deleted_run, mlflow_reference, cloud_store)


# -- experiment ids: MLflow's SQL store parses them as integers ---------------------------------

def scenario_experiment_ids(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    s.create_run(exp, "u", T0, [], "r")

    def view(e: Any) -> tuple[str, str]:
        return e.experiment_id, e.name

    for bad in ("invalid_id", "1.5", "a" * 70):
        r.call(f"get {bad}", lambda bad=bad: s.get_experiment(bad), words=True)
        r.call(f"delete {bad}", lambda bad=bad: s.delete_experiment(bad), words=True)
        r.call(f"restore {bad}", lambda bad=bad: s.restore_experiment(bad), words=True)
        r.call(f"rename {bad}", lambda bad=bad: s.rename_experiment(bad, "z"), words=True)
        r.call(f"set tag {bad}", lambda bad=bad: s.set_experiment_tag(bad, ExperimentTag("k", "v")),
               words=True)
        r.call(f"delete tag {bad}", lambda bad=bad: s.delete_experiment_tag(bad, "k"), words=True)
        r.call(f"create run {bad}", lambda bad=bad: s.create_run(bad, "u", T0, [], "r"),
               words=True)
        r.call(f"search runs {bad}", lambda bad=bad: s.search_runs([exp, bad], "", ViewType.ALL),
               names, words=True)
    for same in (f"00{exp}", f" {exp}", int(exp)):
        r.call(f"get {same!r}", lambda same=same: s.get_experiment(same), view)
        r.call(f"search runs {same!r}",
               lambda same=same: s.search_runs([same, exp], "", ViewType.ALL), names)
    r.call("get ''", lambda: s.get_experiment(""), view)
    r.call("get None", lambda: s.get_experiment(None), view)
    r.call("get -1", lambda: s.get_experiment("-1"), words=True)
    r.call("search ''", lambda: s.search_runs([""], "", ViewType.ALL), words=True)
    return r.out


def test_experiment_ids_are_parsed_as_integers(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_experiment_ids, mlflow_reference, cloud_store)


# -- logged-model calls on a missing or invalid experiment or model ------------------------------

def scenario_logged_model_missing(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    for bad in ("999", "invalid_id"):
        r.call(f"create in {bad}", lambda bad=bad: s.create_logged_model(bad), words=True)
        r.call(f"search {bad}", lambda bad=bad: s.search_logged_models([exp, bad]),
               lambda ms: [m.name for m in ms], words=True)
    for bad in (MISSING_MODEL, "bad id!", "../x", "", None):
        r.call(f"get {bad!r}", lambda bad=bad: s.get_logged_model(bad), words=True)
        r.call(f"set tags {bad!r}", lambda bad=bad: s.set_logged_model_tags(
            bad, [LoggedModelTag("k", "v")]), words=True)
        r.call(f"delete tag {bad!r}", lambda bad=bad: s.delete_logged_model_tag(bad, "k"),
               words=True)
        r.call(f"params {bad!r}", lambda bad=bad: s.log_logged_model_params(
            bad, [LoggedModelParameter("k", "v")]), words=True)
        r.call(f"finalize {bad!r}", lambda bad=bad: s.finalize_logged_model(
            bad, LoggedModelStatus.READY), words=True)
        r.call(f"delete {bad!r}", lambda bad=bad: s.delete_logged_model(bad), words=True)
    return r.out


def test_logged_model_calls_on_missing_ids(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_logged_model_missing, mlflow_reference, cloud_store)
