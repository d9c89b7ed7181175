"""The SQL destination on its own (no runner): a source filled by MLflow's client, read with
:class:`Source`, written with :class:`SqlDestination` into a fresh sqlite file and a fresh
PostgreSQL database, then read back with ``MlflowClient`` — ids, times, every point, params,
tags, inputs, logged models, registry numbers — and, for a SQL source, compared row by row with
what MLflow itself wrote."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    LoggedModelInput,
    Metric,
    Run,
    RunTag,
    ViewType,
)
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

import backends
from cloudtrack.migrate.dest_sql import SqlDestination
from cloudtrack.migrate.destination import CopiedModel
from cloudtrack.migrate.endpoints import open_endpoint
from cloudtrack.migrate.model import ModelCopy, RunCopy, model_fingerprint, run_fingerprint
from cloudtrack.migrate.source import IS_PROMPT, Source
from tests.fixtures.services import service
from tests.migrate.population import MODEL, PROMPT, T0, populate

# -- the source -----------------------------------------------------------------------------------


def _extras(uri: str, ids: dict[str, Any]) -> None:
    """What populate() leaves out: a model input, a dataset two runs share, a metric whose
    latest value is NaN, a tie SQL and cloudtrack break differently, a model metric logged by
    another run than the model's, and a run in the deleted experiment."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    second = ids["runs"][1]
    client.log_inputs(second, datasets=[DatasetInput(Dataset(
        name="digits", digest="d0", source_type="local", source='{"uri": "/data"}',
        schema='{"x": "int"}', profile='{"n": 10}'))],
        models=[LoggedModelInput(ids["model"])])
    client.log_batch(second, metrics=[Metric("nanlast", 1.0, T0 + 1, 0),
                                      Metric("nanlast", 2.0, T0 + 2, 1),
                                      Metric("nanlast", math.nan, T0 + 3, 1),
                                      # Stores disagree on which is latest: SQL counts NaN
                                      # as 0, cloudtrack as the smallest value.
                                      Metric("tie", -1.0, T0 + 4, 5),
                                      Metric("tie", math.nan, T0 + 4, 5)])
    client.log_metric(second, "acc", 0.95, timestamp=T0 + 20, step=2, model_id=ids["model"])
    client.restore_experiment(ids["deleted_experiment"])
    gone = client.create_run(ids["deleted_experiment"], start_time=T0 + 7, run_name="gone",
                             tags={"x": "y"})
    client.log_metric(gone.info.run_id, "m", 1.5, timestamp=T0 + 8, step=3)
    client.set_terminated(gone.info.run_id, end_time=T0 + 9)
    client.delete_experiment(ids["deleted_experiment"])


def _fill(uri: str, cwd: Path) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # an sqlite store puts its artifacts under ./mlruns
        mp.setenv("CLOUDTRACK_STRICT", "true")  # a cloudtrack store: all written on return
        ids = populate(uri)
        _extras(uri, ids)
    return ids


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sql-source")
    uri = f"sqlite:///{tmp}/source.db"
    return uri, _fill(uri, tmp)


@pytest.fixture(scope="module")
def cloudtrack_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ct-source")
    uri = (tmp / "store").as_uri()
    return uri, _fill(uri, tmp)


@pytest.fixture(scope="module")
def blank() -> dict[str, str]:
    """Per database kind, an empty database with MLflow's schema to copy (migrating a fresh
    one costs seconds); its Default experiment is gone, the destination's store makes it."""
    return {}


def _template(kind: str, made: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    if kind not in made:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        if kind == "sqlite":
            uri = f"sqlite:///{tmp_path_factory.mktemp('blank')}/blank.db"
        else:
            uri = str(service("postgres").new_database())  # type: ignore[attr-defined]
        store = SqlAlchemyStore(uri, (tmp_path_factory.mktemp("unused")).as_uri())
        with store.engine.begin() as conn:
            conn.execute(sqlalchemy.text("DELETE FROM experiments"))
        store.engine.dispose()  # a template database takes no connections
        made[kind] = uri
    return made[kind]


@pytest.fixture(params=["sqlite", "postgresql"])
def dest_uri(request: pytest.FixtureRequest, tmp_path: Path, blank: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "postgresql" and "postgres" not in backends.SERVICES:
        pytest.skip("backends has no postgres service")
    template = _template(request.param, blank, tmp_path_factory)
    if request.param == "sqlite":
        shutil.copy(template.split(":///", 1)[1], tmp_path / "dest.db")
        return f"sqlite:///{tmp_path}/dest.db"
    return str(service("postgres").new_database(  # type: ignore[attr-defined]
        template=template.rsplit("/", 1)[1]))


@pytest.fixture
def dest(dest_uri: str, tmp_path: Path) -> Iterator[SqlDestination]:
    endpoint = open_endpoint(dest_uri, role="dest", artifact_root=(tmp_path / "art").as_uri())
    d = SqlDestination(endpoint)
    yield d
    d.close()
    for store in (d.tracking, d.registry):  # MLflow keeps engines (and their pools) per URL
        store.engine.dispose()


# -- driving the destination as the runner will ------------------------------------------------


def full_runs(source: Source, experiment_id: str) -> list[Run]:
    # search_runs on a SQL store leaves model inputs out; get_run has them.
    return [source.tracking.get_run(r.info.run_id)
            for page in source.runs(experiment_id) for r in page]


def _copy_run(dest: SqlDestination, copy: RunCopy, models: list[Any],
              locations: dict[str, list[str]]) -> None:
    target = dest.begin_run(copy, None)
    for m in models:
        dest.write_logged_model(ModelCopy(m, copy.experiment_id, copy.run_id),
                                locations.setdefault(m.model_id, []).append)
    dest.finish_run(copy, target)


def copy_all(source_uri: str, dest: SqlDestination, workers: int = 1) -> dict[str, list[str]]:
    """Everything of the source into ``dest``, ``workers`` runs at a time (as the runner
    will); returns the artifact locations the destination asked for, by logged model."""
    source = Source(open_endpoint(source_uri, role="source"))
    locations: dict[str, list[str]] = {}
    try:
        for exp in source.experiments():
            have = {e.name: e for e in dest.experiments()}
            if exp.name in have:
                target = have[exp.name]
                dest.update_experiment(target, exp)
            else:
                target = dest.create_experiment(exp, exp.experiment_id)
            by_run: dict[str, list[Any]] = {}
            for m in source.logged_models([exp.experiment_id]):
                by_run.setdefault(m.source_run_id or "", []).append(m)
            runs = full_runs(source, exp.experiment_id)
            histories = source.histories(runs)
            jobs = [(dest, RunCopy(r, histories[r.info.run_id], target.experiment_id),
                     by_run.pop(r.info.run_id, []), locations) for r in runs]
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda job: _copy_run(*job), jobs))
            for rest in by_run.values():
                for m in rest:
                    dest.write_logged_model(ModelCopy(m, target.experiment_id, None),
                                            locations.setdefault(m.model_id, []).append)
            dest.finish_experiment(target, exp)
        for model in source.registered_models():
            versions = source.model_versions(model)
            live = {int(v.version) for v in versions}
            deleted = sorted(set(range(1, max(live, default=0) + 1)) - live)
            dest.write_registered_model(model, versions, deleted)
    finally:
        source.endpoint.close()
    return locations


# -- comparing -----------------------------------------------------------------------------------


def _v(x: float) -> Any:
    return "nan" if math.isnan(x) else x


def _run(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    i = run.info
    return {
        "info": (i.run_id, i.experiment_id, i.run_name, i.status, i.start_time, i.end_time,
                 i.user_id, i.lifecycle_stage),
        "params": run.data.params, "tags": run.data.tags,
        "latest": sorted((m.key, _v(m.value), m.timestamp, m.step)
                         for m in run.data._metric_objs),
        "history": {k: sorted(((m.timestamp, m.step, _v(m.value))
                               for m in client.get_metric_history(run_id, k)), key=repr)
                    for k in run.data.metrics},
        "datasets": sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type,
                            d.dataset.source, d.dataset.schema, d.dataset.profile,
                            sorted((t.key, t.value) for t in d.tags))
                           for d in run.inputs.dataset_inputs),
        "model_inputs": sorted(m.model_id for m in run.inputs.model_inputs or []),
        "model_outputs": sorted((m.model_id, m.step) for m in run.outputs.model_outputs or []),
    }


def _model(client: MlflowClient, model_id: str) -> dict[str, Any]:
    m = client.get_logged_model(model_id)
    return {"fields": (m.model_id, m.experiment_id, m.name, m.creation_timestamp,
                       m.last_updated_timestamp, str(m.status), m.model_type, m.source_run_id,
                       m.status_message),
            "params": m.params, "tags": m.tags,
            "metrics": sorted((x.key, _v(x.value), x.timestamp, x.step, x.run_id)
                              for x in m.metrics or [])}


def _registry(client: MlflowClient, name: str) -> dict[str, Any]:
    store = client._get_registry_client().store  # the client hides prompts
    rm = store.get_registered_model(name)
    filter_string = f"name='{name}'" + (f" AND tags.`{IS_PROMPT}` = 'true'"
                                        if rm._is_prompt() else "")
    versions = {int(v.version): (v.creation_timestamp, v.last_updated_timestamp, v.current_stage,
                                 v.description, v.user_id, v.source, v.run_id, v.status,
                                 v.tags, sorted(v.aliases or []))
                for v in (store.get_model_version(name, f.version)  # with its aliases
                          for f in store.search_model_versions(filter_string, max_results=100))}
    return {"model": (rm.creation_timestamp, rm.last_updated_timestamp, rm.description),
            "tags": rm._tags, "aliases": rm.aliases, "versions": versions}


def everything(uri: str) -> dict[str, Any]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out: dict[str, Any] = {}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        models = client.search_logged_models([exp.experiment_id])
        out[exp.experiment_id] = {
            "exp": (exp.name, exp.lifecycle_stage, exp.tags, exp.creation_time,
                    exp.last_update_time) if exp.experiment_id != "0" else exp.name,
            "runs": {r.info.run_id: _run(client, r.info.run_id) for r in runs},
            "models": {m.model_id: _model(client, m.model_id) for m in models},
        }
    out["registry"] = {n: _registry(client, n) for n in (MODEL, PROMPT)}
    return out


def _check_locations(dest: SqlDestination, root: str, locations: dict[str, list[str]]) -> None:
    client = MlflowClient(tracking_uri=dest.endpoint.uri)
    for exp in client.search_experiments(view_type=ViewType.ALL):
        if exp.experiment_id == "0":
            continue
        assert exp.artifact_location == f"{root}/{exp.experiment_id}"
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
            assert run.info.artifact_uri == f"{root}/{exp.experiment_id}/{run.info.run_id}/artifacts"
        for m in client.search_logged_models([exp.experiment_id]):
            expected = f"{root}/{exp.experiment_id}/models/{m.model_id}/artifacts"
            assert m.artifact_location == expected and locations[m.model_id] == [expected]


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sqlite_source", "cloudtrack_source"])
def test_everything_arrives_exactly(which: str, request: pytest.FixtureRequest,
                                    dest: SqlDestination, tmp_path: Path) -> None:
    source_uri, ids = request.getfixturevalue(which)
    locations = copy_all(source_uri, dest)
    got, want = everything(dest.endpoint.uri), everything(source_uri)
    assert got == want
    # Not vacuous: the distinctive things are there.
    runs = got[ids["experiment"]]["runs"]
    assert runs[ids["runs"][0]]["history"]["odd"] == [
        (T0 + 5, 0, "nan"), (T0 + 6, 1, 1.7976931348623157e308),
        (T0 + 7, 2, -1.7976931348623157e308), (T0 + 8, 3, 0.5)]
    assert runs[ids["runs"][0]]["info"][4] == T0
    assert runs[ids["deleted_run"]]["info"][-1] == "deleted"
    assert runs[ids["running_run"]]["info"][3] == "RUNNING"
    second = runs[ids["runs"][1]]
    assert second["model_inputs"] == [ids["model"]]
    latest = {m[0]: m[1] for m in second["latest"]}
    assert latest["nanlast"] == "nan"
    assert latest["tie"] == ("nan" if which == "sqlite_source" else -1.0)
    assert len(got[ids["deleted_experiment"]]["runs"]) == 1
    assert got[ids["deleted_experiment"]]["exp"][1] == "deleted"
    model = got[ids["experiment"]]["models"][ids["model"]]
    # Both runs' points: every store keeps every point of a logged model.
    assert {m[4] for m in model["metrics"]} == set(ids["runs"][:2])
    reg = got["registry"][MODEL]
    assert sorted(reg["versions"]) == [1, 3] and reg["versions"][1][2] == "Production"
    assert reg["aliases"] == {"champion": 3} and reg["versions"][3][-1] == ["champion"]
    assert got["registry"][PROMPT]["tags"][IS_PROMPT] == "true"
    assert sorted(got["registry"][PROMPT]["versions"]) == [1, 2]
    client = MlflowClient(tracking_uri=dest.endpoint.uri, registry_uri=dest.endpoint.uri)
    assert client.load_prompt(f"prompts:/{PROMPT}/2").template == "Hi {{name}}!"
    _check_locations(dest, (tmp_path / "art").as_uri(), locations)

    # The fingerprints of the copies are the source's: a re-run copies nothing.
    source = Source(open_endpoint(source_uri, role="source"))
    try:
        for exp in source.experiments():
            copied = dest.copied_runs(exp.experiment_id)
            want_prints = {r.info.run_id: run_fingerprint(r)
                           for page in source.runs(exp.experiment_id) for r in page}
            assert {k: c.fingerprint for k, c in copied.items()} == want_prints
            assert all(c.run_id == c.source_run_id == k for k, c in copied.items())
        [model] = source.logged_models([ids["experiment"]])
        assert dest.copied_models([ids["experiment"]]) == {
            ids["model"]: CopiedModel(ids["model"], ids["model"], model_fingerprint(model))}
    finally:
        source.endpoint.close()


#: What differs by nature between two SQL stores holding the same data: generated uuids,
#: artifact locations, the deleted time no API reveals, what MLflow wrote when it deleted a
#: version (gone with the version).
_SKIP = {"dataset_uuid", "input_uuid", "artifact_location", "artifact_uri", "deleted_time",
         "storage_location", "source_id"}


def _rows(uri: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = sqlalchemy.create_engine(uri)
    tables = ["experiments", "experiment_tags", "runs", "tags", "params", "metrics",
              "latest_metrics", "datasets", "inputs", "input_tags", "logged_models",
              "logged_model_params", "logged_model_tags", "logged_model_metrics",
              "registered_models", "registered_model_tags", "registered_model_aliases",
              "model_versions", "model_version_tags"]
    out = {}
    meta = sqlalchemy.MetaData()
    meta.reflect(engine, only=tables)
    with engine.connect() as conn:
        for name in tables:
            table = meta.tables[name]
            cols = sorted(c.name for c in table.columns if c.name not in _SKIP)
            rows = []
            for row in conn.execute(sqlalchemy.select(*[table.c[c] for c in cols])):
                values = dict(zip(cols, row, strict=True))
                if name == "experiments" and values["experiment_id"] == 0:
                    continue
                if values.get("current_stage") == "Deleted_Internal":
                    values["creation_time"] = values["last_updated_time"] = None
                rows.append(tuple(sorted((k, bool(v) if k == "is_nan" else v)
                                         for k, v in values.items())))
            out[name] = sorted(rows, key=repr)
    engine.dispose()
    # MLflow leaves a deleted version's tags behind; no API shows them, so none are copied.
    deleted = {(dict(r)["name"], dict(r)["version"]) for r in out["model_versions"]
               if dict(r)["current_stage"] == "Deleted_Internal"}
    out["model_version_tags"] = [r for r in out["model_version_tags"]
                                 if (dict(r)["name"], dict(r)["version"]) not in deleted]
    return out


@pytest.mark.parametrize("workers", [1, 4])
def test_rows_are_what_mlflow_wrote(sqlite_source: tuple[str, dict[str, Any]],
                                    dest: SqlDestination, workers: int) -> None:
    """Row by row as MLflow wrote them, runs written one at a time or side by side (they share
    a dataset; the logged model's metrics wait for runs another thread writes)."""
    source_uri, _ = sqlite_source
    copy_all(source_uri, dest, workers)
    assert not dest._pending
    got, want = _rows(dest.endpoint.uri), _rows(source_uri)
    for table in want:
        assert got[table] == want[table], table
    assert len(want["metrics"]) > 90 and len(want["model_versions"]) == 5


def test_writing_again_duplicates_nothing_and_follows_growth(
        sqlite_source: tuple[str, dict[str, Any]], dest: SqlDestination) -> None:
    source_uri, ids = sqlite_source
    copy_all(source_uri, dest)
    before = _rows(dest.endpoint.uri)
    copy_all(source_uri, dest)
    assert _rows(dest.endpoint.uri) == before

    # The running run grew: one more point, a new tag, finished.
    source = Source(open_endpoint(source_uri, role="source"))
    try:
        run = source.tracking.get_run(ids["running_run"])
        history = source.history(run)
    finally:
        source.endpoint.close()
    point = Metric("loss", 0.25, T0 + 96_000, 1)
    data = run.data
    data._add_metric(point)
    data._add_tag(RunTag("late", "yes"))
    run.info._status = "FINISHED"
    run.info._end_time = T0 + 97_000
    copy = RunCopy(run, [*history, point], run.info.experiment_id)
    dest.finish_run(copy, dest.begin_run(copy, None))
    client = MlflowClient(tracking_uri=dest.endpoint.uri)
    grown = client.get_run(ids["running_run"])
    assert grown.info.status == "FINISHED" and grown.info.end_time == T0 + 97_000
    assert grown.data.tags["late"] == "yes" and grown.data.metrics["loss"] == 0.25
    assert [(m.step, m.value) for m in client.get_metric_history(ids["running_run"], "loss")] \
        == [(0, 0.7), (1, 0.25)]
    assert dest.copied_runs(run.info.experiment_id)[ids["running_run"]].fingerprint \
        == run_fingerprint(run)
    after = _rows(dest.endpoint.uri)
    assert len(after["metrics"]) == len(before["metrics"]) + 1
    assert len(after["tags"]) == len(before["tags"]) + 1


def test_mlflow_goes_on_after_the_copy_without_reusing_ids(
        sqlite_source: tuple[str, dict[str, Any]], dest: SqlDestination) -> None:
    source_uri, ids = sqlite_source
    copy_all(source_uri, dest)
    uri = dest.endpoint.uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    copied = {e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)}
    new = client.create_experiment("after-the-move")
    assert new not in copied and int(new) > max(int(i) for i in copied)
    run = client.create_run(new)
    client.log_metric(run.info.run_id, "x", 1.0)
    version = client.create_model_version(MODEL, "runs:/x/model")
    assert version.version == 4  # 2 stays deleted, never handed out again
    with pytest.raises(MlflowException):
        client.get_model_version(MODEL, "2")
    prompt = client.register_prompt(PROMPT, "Third {{name}}")
    assert prompt.version == 3
    # The highest numbers deleted: only the deleted rows keep them taken.
    dest.write_registered_model(RegisteredModel("tail", T0, T0 + 5),
                                [ModelVersion("tail", "1", T0, T0, source="runs:/r/m")], [2, 3])
    assert client.create_model_version("tail", "runs:/x/model").version == 4

    # An experiment the database numbers itself, and names already taken, fail clearly.
    source = Source(open_endpoint(source_uri, role="source"))
    try:
        exp = source.tracking.get_experiment(ids["experiment"])
    finally:
        source.endpoint.close()
    exp._name = "renamed"
    picked = dest.create_experiment(exp, None)
    assert int(picked.experiment_id) > int(new)
    assert picked.creation_time == exp.creation_time and picked.tags == exp.tags
    assert picked.artifact_location.endswith(f"/{picked.experiment_id}")
    with pytest.raises(MlflowException, match="taken"):
        dest.create_experiment(exp, None)


def test_a_model_waiting_for_its_runs_is_not_yet_copied(
        sqlite_source: tuple[str, dict[str, Any]], dest: SqlDestination) -> None:
    """The model's metric rows name its runs (a foreign key): written before them, they wait
    for each run's finish_run, and until then the model is not reported as copied, so a
    migration interrupted in between writes it again."""
    source_uri, ids = sqlite_source
    source = Source(open_endpoint(source_uri, role="source"))
    try:
        exp = source.tracking.get_experiment(ids["experiment"])
        model = source.logged_models([exp.experiment_id])[0]
        runs = [source.tracking.get_run(r) for r in ids["runs"][:2]]
        histories = source.histories(runs)
    finally:
        source.endpoint.close()
    target = dest.create_experiment(exp, exp.experiment_id)
    dest.write_logged_model(ModelCopy(model, target.experiment_id, runs[0].info.run_id),
                            lambda location: None)
    client = MlflowClient(tracking_uri=dest.endpoint.uri)
    want = []
    for run in runs:
        assert dest.copied_models([target.experiment_id]) == {}
        copy = RunCopy(run, histories[run.info.run_id], target.experiment_id)
        dest.finish_run(copy, dest.begin_run(copy, None))
        want.append(("acc", run.info.run_id))
        got = client.get_logged_model(model.model_id).metrics or []
        assert sorted((m.key, m.run_id) for m in got) == sorted(want)
    assert dest.copied_models([target.experiment_id]) == {
        model.model_id: CopiedModel(model.model_id, model.model_id, model_fingerprint(model))}
