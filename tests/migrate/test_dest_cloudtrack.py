"""The cloudtrack destination of ``cloudtrack migrate``, driven directly (as the runner drives
it) from an MLflow sqlite store that MLflow itself populated, into a fresh cloudtrack store on
every backend; what MLflow's client reads back from the copy must be what it reads from the
source: ids, times, every metric point, the registry with its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    Experiment,
    InputTag,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunInfo,
    RunTag,
    ViewType,
)
from mlflow.entities import RunData as MlflowRunData
from mlflow.exceptions import MlflowException

import backends
from cloudtrack.migrate.dest_cloudtrack import REFUSED_BY, CloudtrackDestination
from cloudtrack.migrate.destination import CopiedModel, open_destination
from cloudtrack.migrate.endpoints import open_endpoint
from cloudtrack.migrate.model import (
    ModelCopy,
    RunCopy,
    model_fingerprint,
    point_key,
    run_fingerprint,
    stored_value,
)
from cloudtrack.migrate.source import Source
from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.store import build, layout, pages, records
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.services import service

T0 = 1_600_000_000_000
LOSS = [0.9, float("nan"), float("inf"), float("-inf"), 0.1]


class Requests:
    """Counts a store's round trips: every blob primitive is one request to the service."""

    PRIMITIVES = ("_get", "_put", "_list_page", "_list_page_after", "_list_dir", "_delete",
                  "_stat")

    def __init__(self, blobs: Any) -> None:
        self.calls: list[str] = []
        for name in self.PRIMITIVES:
            real = getattr(blobs, name)

            def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                self.calls.append(f"{_name} {args[0] if args else ''}".strip())
                return _real(*args, **kw)

            setattr(blobs, name, counted)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls

    @staticmethod
    def kinds(calls: list[str]) -> list[str]:
        return sorted(c.split(" ", 1)[0] for c in calls)


# -- the source: an MLflow sqlite store populated by MLflow ------------------------------------

@dataclass
class Populated:
    uri: str
    exp: str
    deleted_exp: str
    finished: str
    deleted: str
    running: str
    model_id: str


def populate(uri: str) -> Populated:
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.create_experiment("migrated", tags={"team": "vision", "note": "é/ü"})
    finished = c.create_run(exp, start_time=T0 + 1, run_name="finished",
                            tags={"mlflow.user": "alice", "mlflow.source.name": "train.py",
                                  "mlflow.source.type": "LOCAL", "custom": "x"}).info.run_id
    c.log_batch(finished, params=[Param("lr", "0.01"), Param("layers", "3")], metrics=[
        Metric("loss", v, T0 + 10 + i, i) for i, v in enumerate(LOSS)])
    # A long history: several batches in the copy.
    c.log_batch(finished, metrics=[Metric("long", i / 7, T0 + 100 + i, i) for i in range(1000)])
    c.log_batch(finished, metrics=[Metric("long", i / 7, T0 + 100 + i, i)
                                   for i in range(1000, 2300)])
    c.log_batch(finished, metrics=[Metric("same_step", v, T0 + 5, 0) for v in (1.0, 2.0)])
    model = c.create_logged_model(exp, name="clf", source_run_id=finished,
                                  tags={"kind": "sklearn"}, params={"C": "1.0"},
                                  model_type="classifier")
    c.log_metric(finished, "acc", 0.75, timestamp=T0 + 50, step=2, model_id=model.model_id,
                 dataset_name="iris", dataset_digest="abc")
    c.finalize_logged_model(model.model_id, "READY")
    c.log_inputs(finished, datasets=[DatasetInput(
        Dataset("iris", "abc", "local", '{"uri": "/data/iris.csv"}', '{"cols": 4}', '{"n": 150}'),
        [InputTag("mlflow.data.context", "training")])],
        models=[LoggedModelInput(model.model_id)])
    c.log_outputs(finished, [LoggedModelOutput(model.model_id, 2)])
    c.set_terminated(finished, "FINISHED", end_time=T0 + 5_000)

    deleted = c.create_run(exp, start_time=T0 + 2, run_name="deleted").info.run_id
    c.log_metric(deleted, "m", 1.0, timestamp=T0 + 3, step=0)
    c.set_terminated(deleted, "FAILED", end_time=T0 + 4)
    c.delete_run(deleted)
    running = c.create_run(exp, start_time=T0 + 7, run_name="running").info.run_id
    c.log_batch(running, metrics=[Metric("m", float(i), T0 + 8 + i, i) for i in range(5)],
                params=[Param("p", "v")])

    deleted_exp = c.create_experiment("gone")
    gone_run = c.create_run(deleted_exp, start_time=T0 + 9, run_name="in-gone").info.run_id
    c.log_metric(gone_run, "x", 3.0, timestamp=T0 + 9, step=1)
    c.set_terminated(gone_run, "KILLED", end_time=T0 + 11)
    c.delete_experiment(deleted_exp)

    c.create_registered_model("reg", tags={"owner": "ml"}, description="the model")
    for i in range(3):
        c.create_model_version("reg", f"runs:/{finished}/model", run_id=finished,
                               tags={"i": str(i)}, description=f"v{i + 1}")
    c.delete_model_version("reg", "2")
    c.set_registered_model_alias("reg", "champion", "3")
    c.transition_model_version_stage("reg", "1", "Production")
    c.set_model_version_tag("reg", "3", "validated", "yes")
    c.create_registered_model("from-logged")
    c.create_model_version("from-logged", f"models:/{model.model_id}", model_id=model.model_id)
    c.register_prompt("greeting", "Hello {{name}}!", commit_message="first")
    c.register_prompt("greeting", "Hi {{name}}!", commit_message="second")
    return Populated(uri, exp, deleted_exp, finished, deleted, running, model.model_id)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    folder = tmp_path_factory.mktemp("sqlite-source")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        # MLflow's SQL registry resolves ``models:/<id>`` sources with the global client.
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        return populate(uri)


# -- the migration, as the runner does it --------------------------------------------------------

def migrate(source_uri: str, dest_uri: str) -> CloudtrackDestination:
    """Every experiment, logged model, run and registered model of the source, once; returns
    the destination (still open)."""
    src = Source(open_endpoint(source_uri, role="source"))
    dest = open_destination(open_endpoint(dest_uri, role="dest"))
    assert isinstance(dest, CloudtrackDestination)
    existing = {e.name: e for e in dest.experiments()}
    taken = {e.experiment_id for e in existing.values()}
    for exp in src.experiments():
        copy_exp = existing.get(exp.name)
        if copy_exp is None:
            wanted = exp.experiment_id if exp.experiment_id not in taken else None
            copy_exp = dest.create_experiment(exp, wanted)
        else:
            dest.update_experiment(copy_exp, exp)
        exp_id = copy_exp.experiment_id
        copied = dest.copied_runs(exp_id)
        done = dest.copied_models([exp_id])
        for model in src.logged_models([exp.experiment_id]):
            if model.model_id not in done:
                dest.write_logged_model(ModelCopy(model, exp_id, model.source_run_id),
                                        _no_artifacts(dest, exp_id, model.model_id))
        for page in src.runs(exp.experiment_id):
            histories = src.histories(page)
            for run in page:
                earlier = copied.get(run.info.run_id)
                if earlier is not None and earlier.fingerprint == run_fingerprint(run):
                    continue
                copy = RunCopy(run, histories[run.info.run_id], exp_id)
                dest.finish_run(copy, dest.begin_run(copy, earlier))
        dest.finish_experiment(copy_exp, exp)
    dest.registered_models()
    for model in src.registered_models():
        versions = src.model_versions(model)
        live = {int(v.version) for v in versions}
        deleted = sorted(set(range(1, max(live, default=0) + 1)) - live)
        dest.write_registered_model(model, versions, deleted)
    src.endpoint.close()
    return dest


def _no_artifacts(dest: CloudtrackDestination, exp_id: str, model_id: str) -> Any:
    def artifacts(location: str) -> None:
        # Called with the location, before the model's record exists.
        assert location.endswith(f"/{exp_id}/models/{model_id}/artifacts")
        assert not dest.blobs.exists(layout.logged_model(exp_id, model_id))
    return artifacts


@dataclass
class Copy:
    backend: str
    uri: str
    dest: CloudtrackDestination


@pytest.fixture(scope="module", params=backends.STORAGE_SERVICES)
def copied(request: pytest.FixtureRequest, source: Populated) -> Iterator[Copy]:
    svc = service(request.param)
    uri = svc.new_store()
    with pytest.MonkeyPatch.context() as mp:
        # The stores read their configuration from the environment, as MlflowClient's do.
        for k, v in svc.env.items():
            mp.setenv(k, v)
        dest = migrate(source.uri, uri)
        yield Copy(request.param, uri, dest)
        dest.close()


# -- reading both sides back through MlflowClient ------------------------------------------------

def same_value(a: float, b: float) -> bool:
    a, b = stored_value(a), stored_value(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


def run_view(run: Run) -> dict[str, Any]:
    info = run.info
    return {
        "id": info.run_id, "exp": info.experiment_id, "name": info.run_name,
        "status": info.status, "start": info.start_time, "end": info.end_time,
        "stage": info.lifecycle_stage, "user": info.user_id, "params": run.data.params,
        "tags": run.data.tags,
        "latest": sorted((m.key, repr(stored_value(m.value)), m.timestamp, m.step)
                         for m in run.data._metric_objs),
        "datasets": sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type,
                            d.dataset.source, d.dataset.schema, d.dataset.profile,
                            tuple(sorted((t.key, t.value) for t in d.tags)))
                           for d in run.inputs.dataset_inputs),
        "model_inputs": sorted(m.model_id for m in run.inputs.model_inputs or []),
        "model_outputs": sorted((m.model_id, m.step)
                                for m in (run.outputs.model_outputs if run.outputs else [])),
    }


def all_runs(c: MlflowClient, exp_id: str) -> dict[str, Run]:
    return {r.info.run_id: r for r in c.search_runs([exp_id], run_view_type=ViewType.ALL)}


def history(c: MlflowClient, run: Run) -> list[tuple[str, int, int, str]]:
    return sorted(point_key(m) for key in run.data.metrics
                  for m in c.get_metric_history(run.info.run_id, key))


def test_experiments_keep_ids_names_times_tags_and_stage(copied: Copy, source: Populated) -> None:
    src, dst = MlflowClient(source.uri), MlflowClient(copied.uri)
    theirs = {e.experiment_id: e for e in src.search_experiments(ViewType.ALL)}
    ours = {e.experiment_id: e for e in dst.search_experiments(ViewType.ALL)}
    assert set(ours) == set(theirs)

    def view(e: Experiment, times: bool = True) -> tuple[Any, ...]:
        return (e.name, e.lifecycle_stage, e.tags,
                (e.creation_time, e.last_update_time) if times else None)

    for exp_id, e in theirs.items():
        # Default existed in both stores before: same id and stage, its own times.
        assert view(ours[exp_id], exp_id != "0") == view(e, exp_id != "0"), exp_id
    assert ours[source.deleted_exp].lifecycle_stage == "deleted"
    assert ours[source.exp].artifact_location == \
        f"{copied.dest.tracking.artifact_root_uri}/{source.exp}"


def test_runs_read_back_exactly(copied: Copy, source: Populated) -> None:
    src, dst = MlflowClient(source.uri), MlflowClient(copied.uri)
    for exp_id in (source.exp, source.deleted_exp):
        theirs, ours = all_runs(src, exp_id), all_runs(dst, exp_id)
        assert set(ours) == set(theirs)
        for run_id, run in theirs.items():
            assert run_view(ours[run_id]) == run_view(run)
            assert ours[run_id].info.artifact_uri == \
                f"{copied.dest.tracking.artifact_root_uri}/{exp_id}/{run_id}/artifacts"
            assert history(dst, ours[run_id]) == history(src, run), run.info.run_name
    ours = all_runs(dst, source.exp)
    assert ours[source.deleted].info.lifecycle_stage == "deleted"
    assert ours[source.running].info.status == "RUNNING"
    assert ours[source.running].info.end_time is None
    assert [r.info.run_id for r in dst.search_runs([source.exp], "metrics.loss < 1")] == \
        [source.finished]


def test_every_metric_point_with_nan_and_infinities(copied: Copy, source: Populated) -> None:
    dst = MlflowClient(copied.uri)
    loss = dst.get_metric_history(source.finished, "loss")
    assert [(m.step, m.timestamp) for m in loss] == [(i, T0 + 10 + i) for i in range(len(LOSS))]
    assert all(same_value(m.value, v) for m, v in zip(loss, LOSS, strict=True))
    assert loss[2].value == 1.7976931348623157e308 and loss[3].value == -1.7976931348623157e308
    assert len(dst.get_metric_history(source.finished, "long")) == 2300
    assert sorted(m.value for m in dst.get_metric_history(source.finished, "same_step")) == \
        [1.0, 2.0]
    # What the source keeps of a point logged for a model (MLflow's SQL store: no model id
    # on the run's copy of it; the logged model has its own, compared below).
    src = MlflowClient(source.uri)
    assert [(m.value, m.timestamp, m.model_id, m.dataset_name, m.dataset_digest)
            for m in dst.get_metric_history(source.finished, "acc")] == \
        [(m.value, m.timestamp, m.model_id, m.dataset_name, m.dataset_digest)
         for m in src.get_metric_history(source.finished, "acc")]
    # 2,300 + 5 + 2 + 1 points in batches of 1,000, named by their place.
    batches = sorted(i.key for i in copied.dest.blobs.list(layout.history(source.finished)))
    assert batches == [layout.copied_history_batch(source.finished, i) for i in range(3)]


def test_logged_models_read_back_exactly(copied: Copy, source: Populated) -> None:
    src, dst = MlflowClient(source.uri), MlflowClient(copied.uri)
    theirs = src.get_logged_model(source.model_id)
    ours = dst.get_logged_model(source.model_id)
    for field in ("model_id", "experiment_id", "name", "creation_timestamp",
                  "last_updated_timestamp", "model_type", "source_run_id", "status",
                  "status_message", "tags", "params"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert [(m.key, m.value, m.step, m.timestamp, m.run_id, m.dataset_name) for m in ours.metrics] \
        == [(m.key, m.value, m.step, m.timestamp, m.run_id, m.dataset_name)
            for m in theirs.metrics]
    assert ours.artifact_location == (f"{copied.dest.tracking.artifact_root_uri}/{source.exp}"
                                      f"/models/{source.model_id}/artifacts")
    # What a re-run compares: the copy's fingerprint is its source's.
    assert copied.dest.copied_models([source.exp]) == {source.model_id: CopiedModel(
        source.model_id, source.model_id, model_fingerprint(theirs))}


def version_view(v: Any) -> tuple[Any, ...]:
    return (v.name, str(v.version), v.creation_timestamp, v.last_updated_timestamp,
            v.description, v.current_stage, v.source, v.run_id, v.status, v.tags,
            sorted(v.aliases), v.model_id)


def test_registry_keeps_numbers_stages_aliases_and_tombstones(copied: Copy,
                                                               source: Populated) -> None:
    src, dst = MlflowClient(source.uri), MlflowClient(copied.uri)
    ours, theirs = dst.get_registered_model("reg"), src.get_registered_model("reg")
    assert (ours.creation_timestamp, ours.last_updated_timestamp, ours.description, ours.tags,
            ours.aliases) == (theirs.creation_timestamp, theirs.last_updated_timestamp,
                              theirs.description, theirs.tags, theirs.aliases)
    for n in ("1", "3"):
        assert version_view(dst.get_model_version("reg", n)) == \
            version_view(src.get_model_version("reg", n))
    assert str(dst.get_model_version_by_alias("reg", "champion").version) == "3"
    assert [str(v.version) for v in dst.get_latest_versions("reg", ["Production"])] == ["1"]
    for client in (src, dst):
        with pytest.raises(MlflowException) as e:
            client.get_model_version("reg", "2")
        assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # The deleted number is a tombstone, so it is never handed out again.
    model_key = records.read(copied.dest.blobs, layout.registered_model("reg"))["id"]
    grave = records.read(copied.dest.blobs, layout.model_version(model_key, 2))
    assert build.is_tombstone(grave)
    # A version registered from a logged model resolves to the copy's artifacts.
    assert version_view(dst.get_model_version("from-logged", "1")) == \
        version_view(src.get_model_version("from-logged", "1"))
    assert dst.get_model_version_download_uri("from-logged", "1") == \
        dst.get_logged_model(source.model_id).artifact_location


def test_prompts_are_copied(copied: Copy, source: Populated) -> None:
    src, dst = MlflowClient(source.uri), MlflowClient(copied.uri)
    for n in (1, 2):
        theirs, ours = src.load_prompt(f"prompts:/greeting/{n}"), \
            dst.load_prompt(f"prompts:/greeting/{n}")
        assert (ours.template, ours.commit_message, ours.creation_timestamp) == \
            (theirs.template, theirs.commit_message, theirs.creation_timestamp)
    assert [p.name for p in dst.search_prompts()] == ["greeting"]


def test_copied_runs_fingerprints_and_their_cost(copied: Copy, source: Populated) -> None:
    """After finish_experiment left the head pages: one LIST of the heads (up to 1,000 runs a
    LIST page), one of the pages, a GET per page holding a listed run and one per run still
    running (never paged), whatever the number of runs."""
    src = MlflowClient(source.uri)
    expected = {r.info.run_id: run_fingerprint(r) for r in all_runs(src, source.exp).values()}
    fresh = open_destination(open_endpoint(copied.uri, role="dest"))
    try:
        assert isinstance(fresh, CloudtrackDestination)
        counter = Requests(fresh.blobs)
        found = fresh.copied_runs(source.exp)
        calls = counter.take()
    finally:
        fresh.close()
    assert {k: v.fingerprint for k, v in found.items()} == expected
    assert all(c.run_id == c.source_run_id for c in found.values())
    kinds = Requests.kinds(calls)
    assert sorted(set(kinds)) == ["_get", "_list_page"] and kinds.count("_list_page") == 2, calls
    running = sum(1 for r in all_runs(src, source.exp).values() if r.info.status == "RUNNING")
    head_gets = [c for c in calls if c.startswith("_get heads/")]
    assert len(head_gets) == running and kinds.count("_get") <= 16 + running, calls


def test_second_migration_writes_nothing(copied: Copy, source: Populated) -> None:
    counters: list[Requests] = []
    real = CloudtrackDestination.__init__

    def counted(self: CloudtrackDestination, endpoint: Any) -> None:
        real(self, endpoint)
        counters.append(Requests(self.blobs))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CloudtrackDestination, "__init__", counted)
        migrate(source.uri, copied.uri).close()
    calls = counters[0].take()
    assert [c for c in calls if c.startswith(("_put", "_delete"))] == []
    # Reads only: the experiments and their pages (a LIST each; a store of 3 experiments reads
    # the records, not the pages), per experiment its heads and its head pages (a
    # LIST each, a GET per page where there are any, see test_copied_runs_fingerprints...)
    # and its logged models (one LIST, one GET per model for its fingerprint: fewer than 4,
    # so not their pages), then the
    # registry (one LIST of the models, per model one GET and one LIST, one GET per version).
    kinds = Requests.kinds(calls)
    assert (kinds.count("_list_dir"), kinds.count("_list_page")) == (1, 1 + 3 + 3 + 3 + 1 + 3), \
        calls
    head_gets = [c for c in calls if c.startswith(("_get heads/", "_get index/heads/"))]
    assert len(head_gets) <= 3 + 1, calls  # 3 runs + 1 run (still running) in two experiments
    assert kinds.count("_get") - len(head_gets) == 1 + 3 + 6, calls
    assert [c for c in calls if c.startswith("_get logged-models/")] == [
        f"_get {layout.logged_model(source.exp, source.model_id)}"]


def test_what_a_migration_writes_is_in_the_pages(copied: Copy, source: Populated) -> None:
    """The experiment, logged-model and registry records a migration writes go into their pages
    as the stores' own writes do, so no later reader GETs them one by one (nor pages them: a re-run
    reads the store after those readers and must find nothing to write)."""
    copied.dest.tracking._page_writer.write()  # what closing the destination would do
    blobs = copied.dest.blobs

    def paged(folder: str) -> dict[str, str]:
        out = {}
        for info in blobs.list(folder):
            out.update({k: v for k, (v, _) in pages.unpack(blobs.get(info.key))[1].items()})
        return out

    experiments = {i.key: i.version for i in blobs.list(layout.EXPERIMENTS)
                   if i.key.endswith(".json")}
    assert paged(layout.experiment_pages()) == experiments
    models = {i.key: i.version for i in blobs.list(layout.logged_models(source.exp))}
    assert layout.logged_model(source.exp, source.model_id) in models
    assert paged(layout.logged_model_pages(source.exp)) == models
    # Registry records, written through the same blobs, into the registry's pages.
    copied.dest.registry._page_writer.write()
    versions = {i.key: i.version for i in blobs.list(layout.MODEL_VERSIONS)}
    assert versions and paged(layout.registry_pages("versions")) == versions


# -- re-writing runs -------------------------------------------------------------------------

def test_rewriting_a_run_keeps_one_copy_of_each_point(copied: Copy, source: Populated) -> None:
    src = Source(open_endpoint(source.uri, role="source"))
    try:
        run = src.tracking.get_run(source.finished)
        points = src.history(run)
    finally:
        src.endpoint.close()
    dest = copied.dest
    before = sorted((i.key, i.size) for i in dest.blobs.list(layout.history(source.finished)))
    copy = RunCopy(run, points + points[:10], source.exp)  # duplicates, as a source may give
    dest.finish_run(copy, dest.begin_run(copy, None))
    after = sorted((i.key, i.size) for i in dest.blobs.list(layout.history(source.finished)))
    assert after == before
    dst = MlflowClient(copied.uri)
    long = dst.get_metric_history(source.finished, "long")
    assert len(long) == len({point_key(m) for m in long}) == 2300


def test_a_second_migration_follows_the_source(tmp_path: Path) -> None:
    """After the first migration a still-running run gains points, a tag and an end, and the
    registry changes: the copy follows, with no stale batch (and a batch the writer never
    wrote is removed); new versions keep their numbers, a version deleted since becomes a
    tombstone, description, tags, aliases and stages follow."""
    src_uri = f"sqlite:///{tmp_path}/grow.db"
    c = MlflowClient(src_uri, registry_uri=src_uri)
    exp = c.create_experiment("grow")
    run_id = c.create_run(exp, start_time=T0).info.run_id
    c.log_batch(run_id, metrics=[Metric("m", float(i), T0 + i, i) for i in range(1500)])
    c.create_registered_model("reg", tags={"keep": "1", "drop": "1"}, description="before")
    for _ in range(2):
        c.create_model_version("reg", f"runs:/{run_id}/model", run_id=run_id)
    c.set_registered_model_alias("reg", "live", "1")
    dest_uri = str(tmp_path / "store")
    migrate(src_uri, dest_uri).close()

    reader = BlobTrackingStore(dest_uri)  # type: ignore[abstract]
    blobs = reader.blobs
    stray = layout.history_batch(run_id, "00000000000000000001-stray")
    blobs.put(stray, records.dumps(build.history_batch([["m", 5.0, 1, 1, None, None, None]])))
    c.log_batch(run_id, metrics=[Metric("m", float(i), T0 + i, i) for i in range(1500, 2100)],
                tags=[RunTag("phase", "2")])
    c.set_terminated(run_id, "FINISHED", end_time=T0 + 9_999)
    c.create_model_version("reg", f"runs:/{run_id}/model", run_id=run_id)
    c.delete_model_version("reg", "1")
    c.set_registered_model_alias("reg", "live", "3")
    c.update_registered_model("reg", description="after")
    c.delete_registered_model_tag("reg", "drop")
    c.set_registered_model_tag("reg", "new", "2")
    c.transition_model_version_stage("reg", "2", "Staging")
    migrate(src_uri, dest_uri).close()

    ours = MlflowClient(dest_uri)
    assert history(ours, ours.get_run(run_id)) == history(c, c.get_run(run_id))
    assert run_view(ours.get_run(run_id)) == run_view(c.get_run(run_id))
    assert not blobs.exists(stray)
    assert sorted(i.key for i in blobs.list(layout.history(run_id))) == \
        [layout.copied_history_batch(run_id, i) for i in range(3)]
    theirs, copy = c.get_registered_model("reg"), ours.get_registered_model("reg")
    assert (copy.description, copy.tags, copy.aliases, copy.last_updated_timestamp) == \
        (theirs.description, theirs.tags, theirs.aliases, theirs.last_updated_timestamp)
    for n in ("2", "3"):
        assert version_view(ours.get_model_version("reg", n)) == \
            version_view(c.get_model_version("reg", n))
    with pytest.raises(MlflowException, match="not found"):
        ours.get_model_version("reg", "1")
    reader.close()


def test_a_run_interrupted_before_its_head_is_invisible_then_completed(tmp_path: Path) -> None:
    """A crash after the history but before the head (simulated by a failing PUT: no real
    service crashes on cue) leaves no run behind; the next copy completes it."""
    dest = open_destination(open_endpoint(str(tmp_path / "store"), role="dest"))
    assert isinstance(dest, CloudtrackDestination)
    try:
        run = synthetic_run("0", "a" * 32, 3)
        copy = RunCopy(run, [Metric("m", 1.0, T0, 0, run_id=run.info.run_id)], "0")
        real = dest.blobs.put_if_absent

        def crash(key: str, data: bytes) -> str:
            if key.startswith(layout.HEADS):
                raise ConnectionError("killed")
            return real(key, data)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dest.blobs, "put_if_absent", crash)
            with pytest.raises(ConnectionError):
                dest.finish_run(copy, dest.begin_run(copy, None))
        assert dest.copied_runs("0") == {}
        dest.finish_run(copy, dest.begin_run(copy, None))
        assert dest.copied_runs("0")[run.info.run_id].fingerprint == run_fingerprint(run)
    finally:
        dest.close()


# -- many runs ---------------------------------------------------------------------------------

def synthetic_run(exp_id: str, run_id: str, i: int) -> Run:
    info = RunInfo(run_id=run_id, experiment_id=exp_id, user_id="u", status="FINISHED",
                   start_time=T0 + i, end_time=T0 + i + 1, lifecycle_stage="active",
                   run_name=f"r{i}")
    data = MlflowRunData(metrics=[Metric("m", float(i), T0 + i, 0)],
                         params=[Param("i", str(i))],
                         tags=[RunTag("mlflow.runName", f"r{i}")])
    return Run(info, data)


def test_copied_runs_cost_one_list_page_per_1000_runs_and_one_get(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    dest = open_destination(open_endpoint(uri, role="dest"))
    n = 1_100
    try:
        exp = dest.create_experiment(Experiment("", "many", "", "active", [], T0, T0), None)
        dest.copied_runs(exp.experiment_id)
        runs = [synthetic_run(exp.experiment_id, f"{i:032x}", i) for i in range(n)]

        def one(run: Run) -> None:
            copy = RunCopy(run, [Metric("m", run.data.metrics["m"], T0, 0)], exp.experiment_id)
            dest.finish_run(copy, dest.begin_run(copy, None))

        with ThreadPoolExecutor(8) as pool:  # in parallel, as the runner writes runs
            list(pool.map(one, runs))
        dest.finish_experiment(exp, exp)
    finally:
        dest.close()
    fresh = open_destination(open_endpoint(uri, role="dest"))
    try:
        assert isinstance(fresh, CloudtrackDestination)
        counter = Requests(fresh.blobs)
        found = fresh.copied_runs(exp.experiment_id)
        calls = Requests.kinds(counter.take())
    finally:
        fresh.close()
    assert {k: v.fingerprint for k, v in found.items()} == \
        {r.info.run_id: run_fingerprint(r) for r in runs}
    listings = calls.count("_list_page")
    assert calls.count("_get") <= 2 ** pages.MIN_BITS and listings <= math.ceil(n / 1000) + 1 \
        and len(calls) == listings + calls.count("_get"), calls
    # Any process's first search reads the same pages instead of 1,100 heads.
    reader = BlobTrackingStore(uri)  # type: ignore[abstract]
    counter = Requests(reader.blobs)
    assert len(reader.search_runs([exp.experiment_id], None, ViewType.ALL, 5000)) == n
    assert Requests.kinds(counter.take()).count("_get") <= 2 ** pages.MIN_BITS
    reader.close()


# -- what it cannot hold --------------------------------------------------------------------------

def test_what_cannot_be_held_is_what_the_stores_refuse(tmp_path: Path) -> None:
    kinds = dict(CloudtrackDestination.cannot_hold)
    assert "traces" in kinds and set(kinds) == set(REFUSED_BY)
    registry = BlobRegistryStore(str(tmp_path))  # type: ignore[abstract]
    for kind, methods in REFUSED_BY.items():
        for name in methods:
            if kind == "webhooks":
                with pytest.raises((NotImplementedError, MlflowException)):
                    getattr(registry, name)("hook", "https://example.com/hook", [])
            else:
                assert name in BlobTrackingStore.UNSUPPORTED, name
    assert CloudtrackDestination.keeps_ids and CloudtrackDestination.kind == "cloudtrack"
