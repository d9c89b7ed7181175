"""Differential tests of MLflow's tracking store API method by method, for the arguments its
abstract store leaves open: optional arguments passed as None, empty strings and lists, and
the boundaries of numeric ones.  The same calls on MLflow's sqlite store and on cloudtrack's
store (every backend, strict and buffered); results, error codes and, where MLflow's stores
agree on them (``words=True``), error messages must match."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import (
    ExperimentTag,
    LoggedModelTag,
    Metric,
    Param,
    RunTag,
    ViewType,
)

from tests.fixtures.reference import Recorder, same_as_sqlite

T0 = 1_700_000_000_000
NO_RUN = "0" * 32



def exp_view(e: Any) -> Any:
    return None if e is None else (e.experiment_id, e.name, e.lifecycle_stage, e.tags)


def exp_names(es: Any) -> tuple[list[str], bool]:
    return sorted(e.name for e in es), es.token is not None


def run_names(runs: Any) -> tuple[list[str], bool]:
    return [r.info.run_name for r in runs], runs.token is not None


def points(ms: Any) -> list[Any]:
    return [(m.step, m.timestamp, m.value) for m in ms]


def page(ms: Any) -> tuple[list[Any], bool]:
    return points(ms), ms.token is not None


def sampled(ms: Any) -> list[Any]:
    return [(m.run_id, m.step, m.timestamp, m.value) for m in ms]


# -- experiments ----------------------------------------------------------------------------------

def scenario_experiment_arguments(s: Any) -> list[Any]:
    r = Recorder()
    a = r.call("tags None", lambda: s.create_experiment("a", None, None))
    r.call("tags empty", lambda: s.create_experiment("b", "", []))
    r.call("relative location", lambda: s.create_experiment("c", "relative/folder"))
    r.call("where it points", lambda: s.get_experiment_by_name("c").artifact_location)
    r.call("a None tag value", lambda: s.create_experiment("d", tags=[ExperimentTag("k", None)]))
    r.call("kept as None", lambda: s.get_experiment_by_name("d"), exp_view)
    r.call("set a None tag", lambda: s.set_experiment_tag(a, ExperimentTag("n", None)))
    r.call("set it again", lambda: s.set_experiment_tag(a, ExperimentTag("n", "x")))
    r.call("set another None", lambda: s.set_experiment_tag(a, ExperimentTag("m", None)))
    r.call("tags", lambda: s.get_experiment(a), exp_view)
    r.call("no name", lambda: s.get_experiment_by_name(""), exp_view)
    r.call("None name", lambda: s.get_experiment_by_name(None), exp_view)
    r.call("create with no name", lambda: s.create_experiment(""), words=True)
    r.call("create with None name", lambda: s.create_experiment(None), words=True)

    def search(label: str, words: bool = False, **kw: Any) -> None:
        r.call(label, lambda: s.search_experiments(**kw), exp_names, words=words)

    search("view None", view_type=None)
    search("unknown view", view_type=99)
    search("all", view_type=ViewType.ALL)
    search("max None", words=True, max_results=None)
    search("max 0", words=True, max_results=0)
    search("max 50001", words=True, max_results=50001)
    search("max 50000", max_results=50000)
    search("filter None and order []", filter_string=None, order_by=[])
    search("filter ''", filter_string="")
    return r.out


def test_experiment_arguments(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_experiment_arguments, mlflow_reference, cloud_store)


def scenario_experiment_stamps_and_default(s: Any) -> list[Any]:
    r = Recorder()
    a = s.create_experiment("a")

    def stamped(label: str, call: Callable[[], Any]) -> None:
        before = s.get_experiment(a).last_update_time
        time.sleep(0.005)
        r.call(label, call)
        r.out.append((label + ": stamped", s.get_experiment(a).last_update_time != before))

    stamped("rename to its own name", lambda: s.rename_experiment(a, "a"))
    stamped("rename", lambda: s.rename_experiment(a, "b"))
    stamped("tag", lambda: s.set_experiment_tag(a, ExperimentTag("k", "v")))
    r.call("delete the default experiment", lambda: s.delete_experiment("0"))
    r.call("it is deleted", lambda: s.get_experiment("0"), exp_view)
    r.call("no run goes there", lambda: s.create_run("0", "u", T0, [], "r"), words=True)
    r.call("nor without an id", lambda: s.create_run(None, "u", T0, [], "r"), words=True)
    r.call("restore it", lambda: s.restore_experiment("0"))
    # Not create_run(None, …): MLflow's sqlite store then writes a run of no experiment.
    r.call("runs go there again", lambda: s.create_run("0", "u", T0, [], "r"),
           lambda run: run.info.experiment_id)
    return r.out


def test_experiment_stamps_and_the_default_experiment(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_experiment_stamps_and_default, mlflow_reference, cloud_store)


# -- runs -----------------------------------------------------------------------------------------

def scenario_run_arguments(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    r.call("user None", lambda: s.create_run(exp, None, T0, [], "a"), words=True)
    r.call("start None", lambda: s.create_run(exp, "u", None, [], "b"), words=True)
    r.call("nothing was created", lambda: s.search_runs([exp], "", ViewType.ALL), run_names)
    r.call("tags None, name None", lambda: s.create_run(exp, "", T0, None, None),
           lambda run: (run.info.user_id, bool(run.info.run_name),
                        sorted(run.data.tags) == ["mlflow.runName"]))
    rid = r.alias(s.create_run(exp, "u", T0, [RunTag("k", None)], "main").info.run_id, "run")
    r.call("None tag at creation", lambda: s.get_run(rid), lambda run: run.data.tags)
    r.call("set a None tag", lambda: s.set_tag(rid, RunTag("t", None)))
    r.call("batch a None tag", lambda: s.log_batch(rid, [], [], [RunTag("b", None)]))
    r.call("unset the name", lambda: s.set_tag(rid, RunTag("mlflow.runName", None)))
    r.call("empty the name", lambda: s.set_tag(rid, RunTag("mlflow.runName", "")))
    r.call("batch unsets it", lambda: s.log_batch(rid, [], [], [RunTag("mlflow.runName", None)]))
    r.call("read back", lambda: s.get_run(rid), lambda run: (run.info.run_name, run.data.tags))
    r.call("None tags match nothing", lambda: s.search_runs(
        [exp], "tags.t = '' or tags.t LIKE '%'", ViewType.ALL), run_names)
    r.call("unnamed param", lambda: s.log_param(rid, Param("", "x")), words=True)
    r.call("unnamed tag", lambda: s.set_tag(rid, RunTag("", "x")), words=True)
    r.call("unnamed metric", lambda: s.log_metric(rid, Metric("", 1.0, T0, 0)), words=True)
    r.call("None metric value", lambda: s.log_metric(rid, Metric("m", None, T0, 0)), words=True)
    r.call("None timestamp", lambda: s.log_metric(rid, Metric("m", 1.0, None, 0)), words=True)
    r.call("None step", lambda: s.log_metric(rid, Metric("m", 1.0, T0, None)), words=True)
    r.call("empty batch", lambda: s.log_batch(rid, [], [], []))
    r.call("no inputs", lambda: s.log_inputs(rid, None, None))
    r.call("empty inputs", lambda: s.log_inputs(rid, [], []))
    r.call("no outputs", lambda: s.log_outputs(rid, []))
    for view in (None, 99):
        r.call(f"view {view}", lambda view=view: s.search_runs([exp], "", view), run_names)
    r.call("no experiments", lambda: s.search_runs([], "", ViewType.ALL), run_names)
    r.call("filter None, order []", lambda: s.search_runs([exp], None, ViewType.ALL, order_by=[]),
           lambda runs: len(runs))
    return r.out


def test_run_arguments(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_run_arguments, mlflow_reference, cloud_store)


# -- metric history -------------------------------------------------------------------------------

def scenario_history_arguments(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    runs = [r.alias(s.create_run(exp, "u", T0, [], f"r{i}").info.run_id, "run") for i in range(2)]
    for i, rid in enumerate(runs):
        s.log_batch(rid, [Metric("m", float(step * 10 + i), T0 + step, step)
                          for step in range(0, 30, 3)], [], [])
        # Many points at one step: the SQL store samples points, not steps.
        s.log_batch(rid, [Metric("m", float(k), T0 + 100 + k, 40) for k in range(12)], [], [])
        s.log_metric(rid, Metric("m", float("nan"), T0 + 200, 41))
    rid = runs[0]
    r.call("all", lambda: s.get_metric_history(rid, "m"), page)
    p = r.call("first 4", lambda: s.get_metric_history(rid, "m", 4), page)
    r.call("next 4", lambda: s.get_metric_history(rid, "m", 4, p.token), page)
    r.call("rest", lambda: s.get_metric_history(rid, "m", None, p.token), page)
    r.call("exactly all", lambda: s.get_metric_history(rid, "m", 23), page)
    r.call("max 0", lambda: s.get_metric_history(rid, "m", 0), page)
    r.call("max -1", lambda: s.get_metric_history(rid, "m", -1), page)
    r.call("missing key", lambda: s.get_metric_history(rid, "nope"), page)
    r.call("None key", lambda: s.get_metric_history(rid, None), page)

    def bulk(label: str, *args: Any, words: bool = False) -> None:
        r.call(label, lambda: s.get_metric_history_bulk_interval(runs, "m", *args), sampled,
               words=words)

    bulk("sample 5", 5, None, None)
    bulk("sample 1", 1, None, None)
    bulk("sample 0", 0, None, None)
    bulk("sample 100", 100, None, None)
    bulk("sample a range", 4, 3, 40)
    bulk("a range of one step", 3, 40, 40)
    bulk("half a range", 5, 3, None, words=True)
    r.call("no runs", lambda: s.get_metric_history_bulk_interval([], "m", 5, None, None), sampled)
    r.call("steps", lambda: s.get_metric_history_bulk_interval_from_steps(rid, "m", [0, 3, 40], 5),
           sampled)
    r.call("no steps", lambda: s.get_metric_history_bulk_interval_from_steps(rid, "m", [], 5),
           sampled)
    r.call("steps max 0", lambda: s.get_metric_history_bulk_interval_from_steps(
        rid, "m", [0, 3], 0), sampled)
    return r.out


def test_history_arguments(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_history_arguments, mlflow_reference, cloud_store)


# -- logged models --------------------------------------------------------------------------------

def scenario_logged_model_arguments(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("e")
    other = s.create_experiment("other")
    r.call("no name", lambda: s.create_logged_model(exp, None), lambda m: bool(m.name))
    r.call("empty name", lambda: s.create_logged_model(exp, ""), lambda m: bool(m.name))
    r.call("missing source run", lambda: s.create_logged_model(exp, "x", "0" * 32),
           lambda m: (m.name, m.source_run_id, m.model_type, m.tags, m.params))
    for name in ("c", "a", "d", "b"):
        time.sleep(0.003)  # distinct creation times: the default order is by time
        s.create_logged_model(exp, name, tags=[LoggedModelTag("kind", "letter")])

    def search(label: str, *args: Any, words: bool = False, **kw: Any) -> Any:
        return r.call(label, lambda: s.search_logged_models(*args, **kw),
                      lambda ms: ([m.name for m in ms], ms.token is not None), words=words)

    letters = "tags.kind = 'letter'"
    search("default order", [exp], letters)
    search("no experiments", [])
    search("max None", [exp], letters, None, None)
    first = search("max 2", [exp], letters, max_results=2)
    search("next page", [exp], letters, max_results=2, page_token=first.token)
    search("token of another query", [other], letters, max_results=2, page_token=first.token,
           words=True)
    search("token with another filter", [exp], None, max_results=2, page_token=first.token,
           words=True)
    search("datasets without a name", [exp], datasets=[{"dataset_digest": "x"}], words=True)
    search("by name", [exp], "name = 'b'")
    search("ordered", [exp], letters, order_by=[{"field_name": "name", "ascending": False}])
    return r.out


def test_logged_model_arguments(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_logged_model_arguments, mlflow_reference, cloud_store)


# -- what MLflow's base class builds on the store (and the SQL store overrides) --------------------

def scenario_inherited(s: Any) -> list[Any]:
    r = Recorder()
    a, b = s.create_experiment("a"), s.create_experiment("b")
    s.delete_experiment(b)
    r.call("active ids", lambda: s.filter_active_experiment_ids([b, a, "999", "0", a, f"0{a}"]))
    r.call("no ids", lambda: s.filter_active_experiment_ids([]))
    r.call("an invalid id", lambda: s.filter_active_experiment_ids([a, "x"]), words=True)
    rid = r.alias(s.create_run(a, "u", T0, [], "r").info.run_id, "run")
    r.call("async metric", lambda: s.log_metric_async(rid, Metric("m", 1.0, T0, 0)).wait())
    r.call("async param", lambda: s.log_param_async(rid, Param("p", "1")).wait())
    r.call("async tag", lambda: s.set_tag_async(rid, RunTag("t", None)).wait())
    r.call("async to no run", lambda: s.log_param_async(NO_RUN, Param("p", "1")).wait(),
           words=True)
    r.call("async invalid id", lambda: s.log_batch_async(
        "bad id!", [Metric("m", 1.0, T0, 0)], [], []).wait(), words=True)
    r.call("flushed", lambda: s.flush_async_logging())
    r.call("logged", lambda: s.get_run(rid), lambda run: (run.data.metrics, run.data.params,
                                                          run.data.tags.get("t", "absent")))
    mid = r.alias(s.create_logged_model(a, "m").model_id, "model")
    r.call("version tags", lambda: (s.set_model_versions_tags("reg", "1", mid),
                                    s.set_model_versions_tags("reg", "1", mid),
                                    s.set_model_versions_tags("reg", "2", mid),
                                    s.get_logged_model(mid).tags)[-1])
    r.call("version tags of no model", lambda: s.set_model_versions_tags("reg", "1", "m-0"),
           words=True)
    return r.out


def test_inherited_methods(mlflow_reference, cloud_store) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_inherited, mlflow_reference, cloud_store)
