"""Logged-model metrics (issue #13) compared with MLflow's sqlite store, on every backend, in
both writing modes, for EVERY logged model of every run.

The earlier differential tests called the store with a ``model_id`` on each point and read
back one model's ``(key, value)`` pairs, and dropped ``model_id`` from the run's history they
compared.  What ``mlflow.<flavor>.log_model`` does on the client was never exercised: it reads
the run's history and links to the new model every point whose ``model_id`` is None (on
MLflow's SQL store, all of them).  A history that answered the model ids it was logged with
left the second model of an autolog run with no metrics at all, and nothing compared it.
Here the store-level scenario does what ``log_model`` does, through the store's own answers,
and a user's script (autolog, the active model, ``log_model``, ``log_metrics(model_id=)``,
dataset-tagged metrics) runs on sqlite and on each backend, strict and buffered.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import LoggedModelStatus, Metric

from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference, Recorder, assert_same_calls, script_summary

T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[2]


def points(model: Any, r: Recorder) -> list[Any]:
    """Every point of a logged model, as a set (MLflow promises no order)."""
    return sorted((m.key, "nan" if math.isnan(m.value) else m.value, m.timestamp, m.step,
                   m.dataset_name, m.dataset_digest, r.norm(m.run_id), r.norm(m.model_id))
                  for m in model.metrics or [])


def history(ms: Any) -> list[Any]:
    """A run's history with the fields the earlier tests left out."""
    return [(m.key, m.value, m.timestamp, m.step, m.model_id, m.dataset_name, m.dataset_digest)
            for m in ms]


def link_like_log_model(s: Any, run_id: str, model_id: str, step: int) -> None:
    """What ``Model.log`` (mlflow/models/model.py) does after creating a logged model: every
    point of the run at ``step`` whose history answers no ``model_id`` goes to the new model."""
    linked = []
    for key in s.get_run(run_id).data.metrics:
        linked += [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                          dataset_name=m.dataset_name, dataset_digest=m.dataset_digest,
                          run_id=m.run_id)
                   for m in s.get_metric_history(run_id, key)
                   if m.step == step and m.model_id is None]
    s.log_batch(run_id, linked, [], [])


def scenario(s: Any) -> list[Any]:
    r = Recorder()
    exp = s.create_experiment("model-metrics")
    runs, models = [], []
    for name in ("train", "tune"):
        run = s.create_run(exp, "u", T0, [], name)
        runs.append(r.alias(run.info.run_id, "run"))
    for name in ("first", "second", "third", "gone"):
        m = s.create_logged_model(exp, name, runs[0])
        models.append(r.alias(m.model_id, "model"))
        # Ties in an order go by creation time, then by model id: two models made in the same
        # millisecond in one store and not in the other would order by their random ids.
        time.sleep(0.002)
    first, second, third, gone = models
    train, tune = runs
    # Autolog's order: the model first, then its training metrics, tagged with the dataset.
    s.log_batch(train, [Metric(k, v, T0 + 1, 0, model_id=first, dataset_name="iris",
                               dataset_digest="d1")
                        for k, v in (("training_score", 0.98), ("training_loss", 0.12))], [], [])
    # A loss curve logged for the model (the active model of a loop): every step is kept.
    for i in range(4):
        s.log_metric(train, Metric("loss", 1.0 - i / 8, T0 + 10 + i, i, model_id=first))
    # The same model, another dataset, later; a NaN and an infinity.
    s.log_batch(train, [Metric("val_score", 0.7, T0 + 20, 0, model_id=first, dataset_name="val",
                               dataset_digest="d2"),
                        Metric("odd", math.nan, T0 + 21, 0, model_id=first),
                        Metric("big", math.inf, T0 + 22, 0, model_id=first),
                        Metric("plain", 0.5, T0 + 23, 0)], [], [])
    # The same point twice is one point.
    s.log_metric(train, Metric("loss", 1.0, T0 + 10, 0, model_id=first))
    # A second model of the run: log_model links the run's metrics at its step.
    link_like_log_model(s, train, second, 0)
    # Another run logs for a model it did not create; a later step links only that step.
    s.log_batch(tune, [Metric("loss", 0.3, T0 + 30, 0, model_id=first),
                       Metric("acc", 0.81, T0 + 31, 1), Metric("acc", 0.6, T0 + 30, 0)], [], [])
    link_like_log_model(s, tune, third, 1)
    s.delete_logged_model(gone)
    s.log_metric(tune, Metric("acc", 0.9, T0 + 40, 2, model_id=gone))
    s.finalize_logged_model(first, LoggedModelStatus.READY)

    for run in runs:
        run_view = s.get_run(run)
        for key in sorted(run_view.data.metrics):
            r.call(f"history {r.norm(run)} {key}", partial(s.get_metric_history, run, key),
                   history)
    for m in models:
        r.call(f"get {r.norm(m)}", partial(s.get_logged_model, m, allow_deleted=True),
               lambda lm: points(lm, r))

    r.call("search all", lambda: s.search_logged_models([exp], None, None, None, None),
           lambda ms: sorted((r.norm(m.model_id), points(m, r)) for m in ms))

    def search(label: str, filt: str | None = None, datasets: Any = None,
               order: list[dict[str, Any]] | None = None) -> None:
        r.call(f"search {label}", lambda: s.search_logged_models([exp], filt, datasets, None, order),
               lambda ms: [m.model_id for m in ms])

    search("any point holds", "metrics.loss > 0.9")
    search("every model", "metrics.loss >= 0")
    search("two clauses", "metrics.training_score > 0.5 and metrics.loss < 0.5")
    search("on dataset", "metrics.training_score > 0.5", [{"dataset_name": "iris"}])
    search("on other dataset", "metrics.training_score > 0.5", [{"dataset_name": "val"}])
    search("digest", None, [{"dataset_name": "val", "dataset_digest": "d2"}])
    search("wrong digest", None, [{"dataset_name": "val", "dataset_digest": "nope"}])
    search("nan as stored", "metrics.odd = 0")
    for asc in (True, False):
        search(f"order loss {asc}", order=[{"field_name": "metrics.loss", "ascending": asc}])
        search(f"order acc {asc}", order=[{"field_name": "metrics.acc", "ascending": asc}])
        search(f"order on dataset {asc}", order=[{"field_name": "metrics.training_score",
                                                  "ascending": asc, "dataset_name": "iris"}])
    return r.out


def test_every_logged_model_as_mlflow_sqlite(mlflow_reference: Callable[[], MlflowReference],
                                             cloud_store: BlobTrackingStore) -> None:
    expected = scenario(mlflow_reference().tracking_store())
    assert_same_calls(expected, scenario(cloud_store), "MLflow's sqlite store")


# -- a user's script, on sqlite and on each backend, strict and buffered ---------------------


def user_script() -> None:
    """Every way a user's code logs metrics for a logged model; prints what every logged model
    of every run reads back (run as its own process, ``MLFLOW_TRACKING_URI`` says where)."""
    import json
    import warnings

    warnings.filterwarnings("ignore")
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    exp = mlflow.set_experiment("logged-model-metrics").experiment_id
    # What the metrics do not depend on, and takes most of the time: requirements inferred
    # in a child process, skops.
    light: dict[str, Any] = {"pip_requirements": ["scikit-learn"],
                             "serialization_format": "cloudpickle"}
    X, y = load_iris(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    mlflow.sklearn.autolog()
    with mlflow.start_run(run_name="autolog"):
        model = LogisticRegression(max_iter=200).fit(Xtr, ytr)
        model.score(Xte, yte)
        explicit = mlflow.sklearn.log_model(model, name="explicit", **light)
        mlflow.log_metric("test_accuracy", 0.9)
    mlflow.sklearn.autolog(disable=True)
    with mlflow.start_run(run_name="active"):
        mlflow.set_active_model(name="active")
        for i in range(3):
            mlflow.log_metric("loss", 1.0 - i / 4, step=i)
        mlflow.clear_active_model()
        mlflow.log_metrics({"a": 1.0, "b": 2.0}, model_id=explicit.model_id)
        dataset = from_numpy(Xte, targets=yte, name="holdout")
        mlflow.log_metric("holdout_score", 0.95, dataset=dataset, model_id=explicit.model_id)
    with mlflow.start_run(run_name="linked"):
        mlflow.log_metric("acc", 0.5, step=0)
        mlflow.log_metric("acc", 0.75, step=1)
        mlflow.log_metric("f1", 0.7, step=1)
        mlflow.sklearn.log_model(model, name="linked", step=1, **light)

    names = {r.info.run_id: r.info.run_name
             for r in mlflow.search_runs([exp], output_format="list")}

    def show(lm: Any) -> list[Any]:
        return sorted((m.key, round(m.value, 6), m.step, m.dataset_name, m.dataset_digest,
                       names.get(m.run_id)) for m in lm.metrics or [])

    def search(**kw: Any) -> list[str]:
        return [m.name for m in mlflow.search_logged_models(experiment_ids=[exp],
                                                            output_format="list", **kw)]

    models = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
    print(json.dumps({
        "searched": sorted([m.name, names.get(m.source_run_id), show(m)] for m in models),
        "got": sorted([m.name, show(mlflow.get_logged_model(m.model_id))] for m in models),
        "training_score": search(filter_string="metrics.training_score > 0.5",
                                 order_by=[{"field_name": "name"}]),
        "by_loss": search(order_by=[{"field_name": "metrics.loss", "ascending": False},
                                    {"field_name": "name"}]),
        "holdout": search(datasets=[{"dataset_name": "holdout"}]),
        "by_acc": search(filter_string="metrics.acc >= 0.5",
                         order_by=[{"field_name": "metrics.acc"}, {"field_name": "name"}]),
    }))


def summary(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """What :func:`user_script` prints (``reference_summary`` runs it on sqlite)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from tests.tracking.test_logged_model_metrics import user_script; user_script()")
    return script_summary(["-c", code], env, cwd, timeout=300)


@pytest.mark.parametrize("mode", ["strict", "buffered"])
def test_user_script_reads_back_as_on_mlflow_sqlite(store, mode: str, reference_summary,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    models = {name for name, _ in reference_summary["got"]}
    assert models == {"model", "explicit", "active", "linked"}, reference_summary
    assert all(shown for _, shown in reference_summary["got"]), "every model has metrics"
    env = {**store.env, "MLFLOW_TRACKING_URI": store.uri,
           "CLOUDTRACK_STRICT": "true" if mode == "strict" else "false"}
    assert summary(env, tmp_path) == reference_summary

