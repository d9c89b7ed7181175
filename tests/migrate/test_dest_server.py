"""The MLflow-server destination on its own (no runner): a sqlite source filled by MLflow's
client (:mod:`tests.migrate.population` and a few extras), read with :class:`Source`, written
with :class:`ServerDestination` into a real ``mlflow server`` (plain, and with basic auth), then
read back with ``MlflowClient`` and compared with the source: names, users, times, statuses,
lifecycle stages, every point, params, tags, datasets, logged models and their metrics, model
inputs and outputs, version numbers, stages, aliases, prompts.  Interruptions are simulated by
making one request of MLflow's REST client raise (nothing else can stop a copy at an exact
request); the copy is then finished by a fresh destination object, as by the next migration.
"""

from __future__ import annotations

import importlib.util
import math
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import (
    Experiment,
    ExperimentTag,
    LoggedModel,
    LoggedModelInput,
    Metric,
    Param,
    Run,
    RunTag,
    ViewType,
)
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag, RegisteredModel
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.validation import MAX_BATCH_LOG_REQUEST_SIZE

import backends
from backends.mlflow.service import MlflowServer
from cloudtrack.migrate.dest_server import (
    INCOMPLETE_TAG,
    VERSIONS_TAG,
    ServerDestination,
    VersionNumberError,
    log_batches,
)
from cloudtrack.migrate.destination import CopiedModel
from cloudtrack.migrate.endpoints import open_endpoint
from cloudtrack.migrate.model import (
    SOURCE_MODEL_TAG,
    SOURCE_RUN_TAG,
    ModelCopy,
    RunCopy,
    model_fingerprint,
    point_key,
    run_fingerprint,
)
from cloudtrack.migrate.source import IS_PROMPT, Source
from tests.migrate.population import MODEL, PROMPT, T0, populate, snapshot

MAX_FLOAT = 1.7976931348623157e308

# -- the services and the source ------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, MlflowServer]]:
    """A plain server and, where MLflow's auth app is installed, a basic-auth one, launched
    together so that their start-ups overlap."""
    started: dict[str, MlflowServer] = {"plain": backends.load("mlflow")()}
    if "mlflow-auth" in backends.SERVICES and importlib.util.find_spec("flask_wtf"):
        started["auth"] = backends.load("mlflow-auth")()
    try:
        for srv in started.values():
            srv.launch()
        for srv in started.values():
            srv.wait_ready()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


@pytest.fixture(scope="module")
def server(servers: dict[str, MlflowServer]) -> MlflowServer:
    return servers["plain"]


def _extras(uri: str, ids: dict[str, Any]) -> None:
    """What populate() leaves out: a run at MLflow's batch limits, a model metric and a model
    input of another run than the model's, a prompt with a deleted version and an alias, and a
    run in the deleted experiment."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    long = client.create_run(ids["experiment"], start_time=T0 + 50_000, run_name="long",
                             tags={"mlflow.user": "bulk"})
    run_id = long.info.run_id
    ids["long_run"] = run_id
    # 150 params and tags (over the 100 of one batch), the tags ~6 MB as JSON (non-ASCII is
    # escaped), 2,500 points (over the 1,000 of one batch).
    client.log_batch(run_id, params=[Param(f"p{i:03d}", "v" * 3000) for i in range(150)])
    client.log_batch(run_id, tags=[RunTag(f"t{i:03d}", "é" * 7000) for i in range(150)])
    for start in range(0, 2500, 1000):
        client.log_batch(run_id, metrics=[
            Metric(f"k{i % 3}", i / 7, T0 + 50_000 + i, i // 3)
            for i in range(start, min(start + 1000, 2500))])
    client.set_terminated(run_id, "KILLED", end_time=T0 + 60_000)

    second = ids["runs"][1]
    client.log_inputs(second, models=[LoggedModelInput(ids["model"])])
    client.log_metric(second, "acc", 0.95, timestamp=T0 + 20, step=2, model_id=ids["model"])

    client.register_prompt(PROMPT, "Third {{name}}")
    client.register_prompt(PROMPT, "Fourth {{name}}")
    client.delete_prompt_version(PROMPT, "3")
    client.set_prompt_alias(PROMPT, "prod", 4)

    client.restore_experiment(ids["deleted_experiment"])
    gone = client.create_run(ids["deleted_experiment"], start_time=T0 + 7, run_name="gone")
    client.log_metric(gone.info.run_id, "m", 1.5, timestamp=T0 + 8, step=3)
    client.set_terminated(gone.info.run_id, end_time=T0 + 9)
    client.delete_experiment(ids["deleted_experiment"])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("server-source")
    uri = f"sqlite:///{tmp}/source.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # an sqlite store keeps its artifacts under ./mlruns
        ids = populate(uri)
        _extras(uri, ids)
    return uri, ids


def open_dest(url: str) -> ServerDestination:
    return ServerDestination(open_endpoint(url, role="dest"))


# -- driving the destination as the runner will ------------------------------------------------


@dataclass
class Copied:
    """What one pass wrote: source -> destination ids, and the artifact locations given."""

    run_ids: dict[str, str] = field(default_factory=dict)
    model_ids: dict[str, str] = field(default_factory=dict)
    locations: dict[str, list[str]] = field(default_factory=dict)


def versions_of(source: Source, model: RegisteredModel) -> list[ModelVersion]:
    # Source.model_versions asks without the prompt tag for a prompt (RegisteredModel.tags
    # hides it), and a prompt's versions answer only a search that names it.
    prompt = model._is_prompt()
    page = source.registry.search_model_versions(
        filter_string=f"name='{model.name}'" + (f" AND tags.`{IS_PROMPT}` = 'true'"
                                                if prompt else ""), max_results=1000)
    return sorted(page, key=lambda v: int(v.version))


def with_model_links(histories: dict[str, list[Metric]],
                     models: list[LoggedModel]) -> dict[str, list[Metric]]:
    """Each point a logged model's metric names, with that model's id: what the runner must
    hand over, since a SQL source's histories carry no model ids (they are in another table)."""
    links = {(x.run_id, x.key, x.timestamp, x.step): (m.model_id, x.dataset_name, x.dataset_digest)
             for m in models for x in m.metrics or []}
    out = {}
    for run_id, points in histories.items():
        out[run_id] = [
            Metric(p.key, p.value, p.timestamp, p.step, model_id=link[0], dataset_name=link[1],
                   dataset_digest=link[2])
            if (link := links.get((run_id, p.key, p.timestamp, p.step))) else p
            for p in points]
    return out


def copy_tree(source_uri: str, source_tracking: str, dest_uri: str, dest_tracking: str) -> None:
    src = get_artifact_repository(source_uri, tracking_uri=source_tracking)
    with tempfile.TemporaryDirectory() as tmp:
        local = src.download_artifacts("", tmp)
        get_artifact_repository(dest_uri, tracking_uri=dest_tracking).log_artifacts(local)


def rewrite(v: ModelVersion, copied: Copied) -> ModelVersion:
    run_id = copied.run_ids.get(v.run_id, v.run_id) if v.run_id else None
    m = re.match(r"^runs:/([^/]+)(/.*)?$", v.source or "")
    source = f"runs:/{copied.run_ids[m.group(1)]}{m.group(2) or ''}" if m else v.source
    return ModelVersion(
        name=v.name, version=v.version, creation_timestamp=v.creation_timestamp,
        description=v.description, current_stage=v.current_stage, source=source, run_id=run_id,
        tags=[ModelVersionTag(k, val) for k, val in v.tags.items()], run_link=v.run_link,
        aliases=v.aliases, model_id=copied.model_ids.get(v.model_id) if v.model_id else None)


def copy_all(source_uri: str, dest: ServerDestination, *, again: bool = False) -> Copied:
    """Everything of the source into ``dest``; ``again`` writes runs whose copies are already
    complete once more (as for a run that grew)."""
    source = Source(open_endpoint(source_uri, role="source"))
    dest_url = dest.endpoint.tracking_uri
    copied = Copied()
    try:
        for exp in source.experiments():
            have = {e.name: e for e in dest.experiments()}
            if exp.name in have:
                target = have[exp.name]
                dest.update_experiment(target, exp)
            else:
                target = dest.create_experiment(exp, None)
            earlier = dest.copied_runs(target.experiment_id)
            copied.model_ids.update((k, c.model_id) for k, c in dest.copied_models(
                [target.experiment_id]).items())
            models = source.logged_models([exp.experiment_id])
            by_run: dict[str, list[LoggedModel]] = {}
            for m in models:
                by_run.setdefault(m.source_run_id or "", []).append(m)
            # get_run: search_runs on a SQL store leaves model inputs out.
            runs = [source.tracking.get_run(r.info.run_id)
                    for page in source.runs(exp.experiment_id) for r in page]
            runs.sort(key=lambda r: r.info.run_id not in by_run)  # a model before its users
            histories = with_model_links(source.histories(runs), models)
            for run in runs:
                run_id = run.info.run_id
                before = earlier.get(run_id)
                if before is not None and not again \
                        and before.fingerprint == run_fingerprint(run):
                    copied.run_ids[run_id] = before.run_id
                    continue
                copy = RunCopy(run, histories[run_id], target.experiment_id, copied.model_ids)
                run_target = dest.begin_run(copy, before)
                copied.run_ids[run_id] = run_target.run_id
                copy_tree(run.info.artifact_uri, source_uri, run_target.artifact_uri, dest_url)
                for m in by_run.pop(run_id, []):
                    if m.model_id in copied.model_ids:
                        continue

                    def files(location: str, m: LoggedModel = m) -> None:
                        copied.locations.setdefault(m.model_id, []).append(location)
                        copy_tree(m.artifact_location, source_uri, location, dest_url)

                    copied.model_ids[m.model_id] = dest.write_logged_model(
                        ModelCopy(m, target.experiment_id, run_target.run_id), files)
                dest.finish_run(replace(copy, model_ids=dict(copied.model_ids)), run_target)
            dest.finish_experiment(target, exp)
        for model in source.registered_models():
            versions = versions_of(source, model)
            live = {int(v.version) for v in versions}
            deleted = sorted(set(range(1, max(live, default=0) + 1)) - live)
            dest.write_registered_model(model, [rewrite(v, copied) for v in versions], deleted)
    finally:
        source.endpoint.close()
    return copied


# -- comparing -----------------------------------------------------------------------------------


def same_part(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """The part of a server's snapshot that the source's covers (other tests add their own
    experiments to the same server)."""
    return {"experiments": {k: got["experiments"].get(k) for k in want["experiments"]},
            "registry": {k: got["registry"].get(k) for k in want["registry"]},
            "prompt": got["prompt"]}


def alias_text(snap: dict[str, Any]) -> dict[str, Any]:
    """A SQL store answers alias versions as numbers, the REST API as strings."""
    for model in snap["registry"].values():
        model["aliases"] = {k: str(v) for k, v in model["aliases"].items()}
    return snap


def copies_of(client: MlflowClient, experiment_id: str) -> dict[str, Run]:
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL)
    by_source: dict[str, Run] = {}
    for run in runs:
        assert run.data.tags[SOURCE_RUN_TAG] not in by_source, "a run was copied twice"
        by_source[run.data.tags[SOURCE_RUN_TAG]] = run
    return by_source


def points(client: MlflowClient, run: Run) -> list[tuple[str, int, int, str]]:
    return sorted(point_key(m) for key in run.data.metrics
                  for m in client.get_metric_history(run.info.run_id, key))


def source_points(source_uri: str, run_id: str) -> list[tuple[str, int, int, str]]:
    return points(MlflowClient(tracking_uri=source_uri), MlflowClient(
        tracking_uri=source_uri).get_run(run_id))


@pytest.fixture(scope="module")
def migrated(server: MlflowServer, source: tuple[str, dict[str, Any]]) -> Copied:
    dest = open_dest(server.url)
    try:
        return copy_all(source[0], dest)
    finally:
        dest.close()


# -- tests ---------------------------------------------------------------------------------------


def test_everything_reads_back_as_in_the_source(
        server: MlflowServer, source: tuple[str, dict[str, Any]], migrated: Copied) -> None:
    source_uri, ids = source
    want = alias_text(snapshot(source_uri, with_ids=False))
    assert same_part(snapshot(server.url, with_ids=False), want) == want

    # Not vacuous: the distinctive things are there, and the ids are the server's.
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    dest_exp = client.get_experiment_by_name("vision")
    copies = copies_of(client, dest_exp.experiment_id)
    assert set(copies) == {*ids["runs"], ids["deleted_run"], ids["running_run"], ids["long_run"]}
    assert all(copies[k].info.run_id == migrated.run_ids[k] != k for k in copies)
    first = copies[ids["runs"][0]]
    assert (first.info.start_time, first.info.end_time) == (T0, T0 + 500)
    assert first.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [(m.timestamp, m.step, "nan" if math.isnan(m.value) else m.value)
            for m in client.get_metric_history(first.info.run_id, "odd")] == [
        (T0 + 5, 0, "nan"), (T0 + 6, 1, MAX_FLOAT), (T0 + 7, 2, -MAX_FLOAT), (T0 + 8, 3, 0.5)]
    assert copies[ids["deleted_run"]].info.lifecycle_stage == "deleted"
    assert copies[ids["running_run"]].info.status == "RUNNING"
    assert copies[ids["running_run"]].info.end_time is None
    long = copies[ids["long_run"]]
    assert (long.info.status, long.info.user_id) == ("KILLED", "bulk")
    assert len(long.data.params) == 150 and long.data.tags["t149"] == "é" * 7000
    assert points(client, long) == source_points(source_uri, ids["long_run"])
    assert len(points(client, long)) == 2500
    assert not any(INCOMPLETE_TAG in r.data.tags for r in copies.values())
    assert client.get_experiment_by_name("to-delete").lifecycle_stage == "deleted"

    # The logged model: its metrics linked to it, from both runs that logged them; the runs'
    # model inputs and outputs name the copy.
    model_id = migrated.model_ids[ids["model"]]
    model = client.get_logged_model(model_id)
    assert model.tags[SOURCE_MODEL_TAG] == ids["model"] and model.source_run_id == first.info.run_id
    assert sorted((m.key, m.value, m.step, m.run_id) for m in model.metrics) == [
        ("acc", 0.9, 1, first.info.run_id), ("acc", 0.95, 2, copies[ids["runs"][1]].info.run_id)]
    assert model.artifact_location.startswith("mlflow-artifacts:/")
    assert migrated.locations[ids["model"]] == [model.artifact_location]
    assert [a.path for a in client.list_logged_model_artifacts(model_id)] == ["MLmodel"]
    assert [(o.model_id, o.step) for o in first.outputs.model_outputs] == [(model_id, 1)]
    second = client.get_run(copies[ids["runs"][1]].info.run_id)
    assert [i.model_id for i in second.inputs.model_inputs] == [model_id]

    # What a re-run compares: the copies' fingerprints are the source's.
    dest = open_dest(server.url)
    src = Source(open_endpoint(source_uri, role="source"))
    try:
        for exp in src.experiments():
            target = client.get_experiment_by_name(exp.name)
            found = dest.copied_runs(target.experiment_id)
            assert {k: c.fingerprint for k, c in found.items()} == {
                r.info.run_id: run_fingerprint(r) for page in src.runs(exp.experiment_id)
                for r in page}
        [source_model] = src.logged_models([ids["experiment"]])
        assert dest.copied_models([dest_exp.experiment_id]) == {ids["model"]: CopiedModel(
            ids["model"], model_id, model_fingerprint(source_model))}
    finally:
        src.endpoint.close()
        dest.close()

    # The registry: numbers kept, deleted ones not handed out again.
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert sorted(versions) == [1, 3] and versions[1].current_stage == "Production"
    assert versions[1].run_id == first.info.run_id
    assert versions[1].source == f"runs:/{first.info.run_id}/model"
    assert client.get_registered_model(MODEL).aliases == {"champion": "3"}
    assert VERSIONS_TAG not in client.get_registered_model(MODEL).tags
    prompt_versions = client._get_registry_client().store.search_model_versions(
        f"name='{PROMPT}' AND tags.`{IS_PROMPT}` = 'true'")
    assert sorted(int(v.version) for v in prompt_versions) == [1, 2, 4]
    assert client.load_prompt(f"prompts:/{PROMPT}@prod").template == "Fourth {{name}}"
    assert client.create_model_version(MODEL, "s3://bucket/model").version == "4"
    assert client.register_prompt(PROMPT, "Fifth {{name}}").version == 5


def test_writing_everything_again_duplicates_nothing(
        server: MlflowServer, source: tuple[str, dict[str, Any]], migrated: Copied) -> None:
    source_uri, ids = source
    client = MlflowClient(tracking_uri=server.url)
    exp_id = client.get_experiment_by_name("vision").experiment_id
    before = {k: points(client, r) for k, r in copies_of(client, exp_id).items()}
    dest = open_dest(server.url)  # a new object: it knows nothing of the first pass
    try:
        again = copy_all(source_uri, dest, again=True)
    finally:
        dest.close()
    assert again.run_ids == migrated.run_ids and again.model_ids == migrated.model_ids
    copies = copies_of(client, exp_id)  # asserts one copy per source run
    assert {k: points(client, r) for k, r in copies.items()} == before
    assert before[ids["runs"][0]] == source_points(source_uri, ids["runs"][0])
    first = copies[ids["runs"][0]]
    assert len(first.outputs.model_outputs) == 1
    assert len(client.get_run(copies[ids["runs"][1]].info.run_id).inputs.model_inputs) == 1
    assert len(client.search_logged_models([exp_id])) == 1
    assert len(client.get_logged_model(migrated.model_ids[ids["model"]]).metrics) == 2
    want = snapshot(source_uri, with_ids=False)
    got = snapshot(server.url, with_ids=False)
    assert {k: got["experiments"][k] for k in want["experiments"]} == want["experiments"]


def test_the_server_keeps_one_of_each_point_logged_twice(server: MlflowServer) -> None:
    """What resuming over a SQL-backed server may lean on: a point sent again (NaN and ±inf
    included) is stored once."""
    store = open_endpoint(server.url, role="dest").tracking
    exp = store.create_experiment(f"relog-{uuid.uuid4().hex[:8]}")
    run_id = store.create_run(exp, "u", T0, [], "relog").info.run_id
    batch = [Metric("m", v, T0 + i, i) for i, v in enumerate([math.nan, math.inf, -math.inf, 1.5])]
    store.log_batch(run_id, batch, [Param("p", "1")], [])
    store.log_batch(run_id, [*batch, Metric("m", 2.5, T0 + 9, 9)], [Param("p", "1")], [])
    history = store.get_metric_history(run_id, "m")
    assert sorted(point_key(m) for m in history) == sorted(
        point_key(m) for m in [*batch, Metric("m", 2.5, T0 + 9, 9)])


class Interrupted(RuntimeError):
    """Stands for a migration killed before one request."""


def interrupt(monkeypatch: pytest.MonkeyPatch, store: Any, method: str, nth: int) -> None:
    """Make the ``nth`` call of ``store.method`` raise, before its request is sent."""
    real = getattr(store, method)
    calls = [0]

    def call(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            raise Interrupted(f"{method} #{nth}")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, call)


def _source_run(source_uri: str, run_id: str) -> tuple[Run, list[Metric], Experiment]:
    src = Source(open_endpoint(source_uri, role="source"))
    try:
        run = src.tracking.get_run(run_id)
        return run, src.history(run), src.tracking.get_experiment(run.info.experiment_id)
    finally:
        src.endpoint.close()


@pytest.mark.parametrize(("which", "method", "nth"), [
    ("long_run", "log_batch", 2),         # half the points, params and tags written
    ("running", "log_inputs", 1),         # a run still going: only its marker tells it apart
    ("long_run", "update_run_info", 1),   # everything written but the status and end time
    ("running", "delete_tag", 1),         # everything written but the marker's removal
    ("deleted_run", "update_run_info", 1),
    ("deleted_run", "delete_run", 1),     # complete, but not yet deleted
])
def test_an_interrupted_copy_is_finished_not_duplicated(
        server: MlflowServer, source: tuple[str, dict[str, Any]], which: str, method: str,
        nth: int, monkeypatch: pytest.MonkeyPatch) -> None:
    source_uri, ids = source
    run_id = ids["runs"][0] if which == "running" else ids[which]
    run, history, exp = _source_run(source_uri, run_id)
    if which == "running":  # the first run, seen while it was still going
        run.info._status, run.info._end_time = "RUNNING", None
    exp = Experiment(exp.experiment_id, f"interrupted-{uuid.uuid4().hex[:8]}",
                     exp.artifact_location, exp.lifecycle_stage,
                     [ExperimentTag(k, v) for k, v in exp.tags.items()])
    first = open_dest(server.url)
    target_exp = first.create_experiment(exp, None)
    copy = RunCopy(run, history, target_exp.experiment_id)
    with monkeypatch.context() as mp:
        interrupt(mp, first.tracking, method, nth)
        target = first.begin_run(copy, None)
        with pytest.raises(Interrupted):
            first.finish_run(copy, target)
    first.close()

    later = open_dest(server.url)  # the next migration
    try:
        found = later.copied_runs(target_exp.experiment_id)
        assert list(found) == [run.info.run_id] and found[run.info.run_id].run_id == target.run_id
        assert found[run.info.run_id].fingerprint != run_fingerprint(run)
        resumed = later.begin_run(copy, found[run.info.run_id])
        assert resumed == target
        later.finish_run(copy, resumed)
        found = later.copied_runs(target_exp.experiment_id)
        assert found[run.info.run_id].fingerprint == run_fingerprint(run)
    finally:
        later.close()
    client = MlflowClient(tracking_uri=server.url)
    copies = copies_of(client, target_exp.experiment_id)
    assert list(copies) == [run.info.run_id]
    assert points(client, copies[run.info.run_id]) == sorted(point_key(m) for m in history)
    got = client.get_run(copies[run.info.run_id].info.run_id)
    assert got.data.tags.keys() - {SOURCE_RUN_TAG} == run.data.tags.keys()
    assert [(d.dataset.name, d.dataset.digest) for d in got.inputs.dataset_inputs] == [
        (d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs]


@pytest.mark.parametrize("which", ["long_run", "running"])
def test_only_a_copy_its_status_cannot_tell_unfinished_carries_the_marker(
        server: MlflowServer, source: tuple[str, dict[str, Any]], which: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of a run that has ended differs from it by status and end time until its last
    writes: it takes no marker, and no request to remove one.  A running run's copy does."""
    source_uri, ids = source
    run_id = ids["runs"][0] if which == "running" else ids[which]
    run, history, exp = _source_run(source_uri, run_id)
    if which == "running":
        run.info._status, run.info._end_time = "RUNNING", None
    exp = Experiment(exp.experiment_id, f"marker-{uuid.uuid4().hex[:8]}",
                     exp.artifact_location, exp.lifecycle_stage, [])
    dest = open_dest(server.url)
    calls: list[tuple[str, str]] = []
    real_delete = dest.tracking.delete_tag

    def delete_tag(run_id: str, key: str) -> None:
        calls.append((run_id, key))
        real_delete(run_id, key)

    monkeypatch.setattr(dest.tracking, "delete_tag", delete_tag)
    try:
        target_exp = dest.create_experiment(exp, None)
        copy = RunCopy(run, history, target_exp.experiment_id)
        target = dest.begin_run(copy, None)
        marked = MlflowClient(tracking_uri=server.url).get_run(target.run_id).data.tags
        assert (INCOMPLETE_TAG in marked) == (which == "running")
        dest.finish_run(copy, target)
        assert calls == ([(target.run_id, INCOMPLETE_TAG)] if which == "running" else [])
        assert dest.copied_runs(target_exp.experiment_id)[run_id].fingerprint == \
            run_fingerprint(run)
    finally:
        dest.close()


def test_an_interrupted_logged_model_is_finished_not_duplicated(
        server: MlflowServer, source: tuple[str, dict[str, Any]]) -> None:
    source_uri, ids = source
    src = Source(open_endpoint(source_uri, role="source"))
    try:
        model = src.tracking.get_logged_model(ids["model"])
    finally:
        src.endpoint.close()
    client = MlflowClient(tracking_uri=server.url)
    exp_id = client.create_experiment(f"model-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp_id).info.run_id

    def killed(location: str) -> None:
        raise Interrupted(location)

    first = open_dest(server.url)
    with pytest.raises(Interrupted):
        first.write_logged_model(ModelCopy(model, exp_id, run_id), killed)
    assert first.copied_models([exp_id]) == {}  # unfinished: not a copy yet
    first.close()
    later = open_dest(server.url)
    given: list[str] = []
    try:
        model_id = later.write_logged_model(ModelCopy(model, exp_id, run_id), given.append)
        assert {k: c.model_id for k, c in later.copied_models([exp_id]).items()} == {
            ids["model"]: model_id}
    finally:
        later.close()
    [copy] = client.search_logged_models([exp_id])
    assert copy.model_id == model_id and given == [copy.artifact_location]
    assert str(copy.status) == "READY" and copy.params == model.params
    assert {k: v for k, v in copy.tags.items() if k != SOURCE_MODEL_TAG} == model.tags


def _registry_source(tmp_path: Path, name: str) -> str:
    """A registered model whose versions 2 and 4 (the last) are deleted, a stage and an alias."""
    uri = f"sqlite:///{tmp_path}/registry.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name, tags={"team": "x"}, description="four, two gone")
    for n in range(1, 5):
        client.create_model_version(name, f"s3://bucket/{name}/{n}", tags={"n": str(n)},
                                    description=f"v{n}")
    client.delete_model_version(name, "2")
    client.delete_model_version(name, "4")
    client.transition_model_version_stage(name, "3", "Staging")
    client.set_registered_model_alias(name, "best", "3")
    return uri


def _write_registry(source_uri: str, dest: ServerDestination, deleted: list[int]) -> int:
    src = Source(open_endpoint(source_uri, role="source"))
    try:
        [model] = src.registered_models()
        return dest.write_registered_model(model, versions_of(src, model), deleted)
    finally:
        src.endpoint.close()


def test_deleted_numbers_stay_taken_across_runs_and_interruptions(
        server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"numbers-{uuid.uuid4().hex[:8]}"
    source_uri = _registry_source(tmp_path, name)
    first = open_dest(server.url)
    with monkeypatch.context() as mp:
        # Killed once every version is created, before a placeholder is deleted.
        interrupt(mp, first.registry, "delete_model_version", 1)
        with pytest.raises(Interrupted):
            _write_registry(source_uri, first, [2, 4])
    first.close()
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)

    def numbers() -> list[int]:
        return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))

    assert numbers() == [1, 2, 3, 4]  # the placeholders still hold 2 and 4
    for _ in range(2):  # the next migration finishes it; the one after changes nothing
        dest = open_dest(server.url)
        try:
            _write_registry(source_uri, dest, [2, 4])
        finally:
            dest.close()
        assert numbers() == [1, 3]
    model = client.get_registered_model(name)
    assert model.tags == {"team": "x", VERSIONS_TAG: "4"} and model.aliases == {"best": "3"}
    assert model.description == "four, two gone"
    v3 = client.get_model_version(name, "3")
    assert (v3.current_stage, v3.description, v3.tags, v3.source) == (
        "Staging", "v3", {"n": "3"}, f"s3://bucket/{name}/3")
    assert client.create_model_version(name, "s3://bucket/new").version == "5"


def test_a_number_the_server_cannot_give_again_fails_clearly(
        server: MlflowServer, tmp_path: Path) -> None:
    name = f"conflict-{uuid.uuid4().hex[:8]}"
    source_uri = _registry_source(tmp_path, name)
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    client.create_registered_model(name)
    client.create_model_version(name, "s3://bucket/other")
    client.delete_model_version(name, "1")  # the server will never number a version 1 again
    dest = open_dest(server.url)
    try:
        with pytest.raises(VersionNumberError, match=f"{name}.*numbered a new version 2 where"):
            _write_registry(source_uri, dest, [2, 4])
    finally:
        dest.close()


def test_batches_stay_within_mlflows_limits() -> None:
    """Checked against MLflow's own serialisation of a LogBatch request."""
    params = [Param(f"p{i}", "ü" * 6000) for i in range(230)]
    tags = [RunTag(f"t{i}", "€" * 8000) for i in range(230)]
    metrics = [Metric("k" * 250, 1.0 / (i + 1), T0 + i, i, model_id="m-" + "a" * 32,
                      dataset_name="d" * 500, dataset_digest="e" * 36) for i in range(3500)]
    batches = list(log_batches(params, tags, metrics))
    assert [sum(len(b[k]) for b in batches) for k in range(3)] == [230, 230, 3500]
    for p, t, m in batches:
        assert len(p) <= 100 and len(t) <= 100 and len(m) <= 1000 and len(p + t + m) <= 1000
        body = message_to_json(LogBatch(run_id="r" * 32, params=[x.to_proto() for x in p],
                                        tags=[x.to_proto() for x in t],
                                        metrics=[x.to_proto() for x in m]))
        assert len(body.encode()) <= MAX_BATCH_LOG_REQUEST_SIZE
    # Small entries share one request.
    assert len(list(log_batches(params[:3], tags[:3], [Metric("x", 1, 1, 1)] * 900))) == 1


def test_through_basic_auth(servers: dict[str, MlflowServer], source: tuple[str, dict[str, Any]],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    if "auth" not in servers:
        pytest.skip("MLflow's basic-auth app is not installed (pip install 'mlflow[auth]')")
    auth = servers["auth"]
    assert auth.admin is not None
    for key, value in auth.admin.env.items():  # MLFLOW_TRACKING_USERNAME / _PASSWORD
        monkeypatch.setenv(key, value)
    source_uri, ids = source
    run, history, exp = _source_run(source_uri, ids["runs"][0])
    dest = open_dest(auth.url)
    try:
        target_exp = dest.create_experiment(exp, None)
        copy = RunCopy(run, history, target_exp.experiment_id)
        dest.finish_run(copy, dest.begin_run(copy, None))
        found = dest.copied_runs(target_exp.experiment_id)
    finally:
        dest.close()
    assert found[run.info.run_id].fingerprint == run_fingerprint(run)
    client = MlflowClient(tracking_uri=auth.url)
    [copied] = client.search_runs([target_exp.experiment_id])
    assert copied.info.user_id == run.info.user_id and copied.info.start_time == T0
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException):
        client.search_runs([target_exp.experiment_id])  # the server does ask



# -- a server whose connection pool is exhausted -----------------------------------------------

#: What MLflow's server answers when SQLAlchemy's pool gave it no connection in time.
POOL_EXHAUSTED = {
    "error_code": "BAD_REQUEST",
    "message": "(sqlalchemy.exc.TimeoutError) QueuePool limit of size 5 overflow 10 reached, "
               "connection timed out, timeout 30.00 (Background on this error at: "
               "https://sqlalche.me/e/20/3o7r)"}


def exhaust(mp: pytest.MonkeyPatch, cls: type, method: str, *, times: int | None = 1,
            after: bool = True) -> list[int]:
    """The first ``times`` calls (every call: None) of ``cls.method`` answer as a server whose
    connection pool is exhausted — ``after`` the request did its work on the server.

    Injected: a real server gives that answer only after its pool's timeout (30 s), and never
    once it wrote; here it comes at an exact request, fast, and in the worst case for a retry
    (tests/migrate/test_migrate.py has a real server run out of connections)."""
    real = getattr(cls, method)
    calls = [0]

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if times is None or calls[0] <= times:
            if after:
                real(self, *args, **kwargs)
            raise RestException(POOL_EXHAUSTED)
        return real(self, *args, **kwargs)

    mp.setattr(cls, method, call)
    return calls


def _copy_runs_into_new_experiment(dest: ServerDestination, source_uri: str,
                                   run_ids: list[str]) -> tuple[str, dict[str, str]]:
    """``run_ids`` and the logged models of their experiment, written as the runner writes
    them, into a new experiment; its id and the model ids."""
    src = Source(open_endpoint(source_uri, role="source"))
    try:
        runs = [src.tracking.get_run(r) for r in run_ids]
        exp = src.tracking.get_experiment(runs[0].info.experiment_id)
        models = src.logged_models([exp.experiment_id])
        histories = with_model_links(src.histories(runs), models)
    finally:
        src.endpoint.close()
    target = dest.create_experiment(
        Experiment(exp.experiment_id, f"busy-{uuid.uuid4().hex[:8]}", exp.artifact_location,
                   exp.lifecycle_stage, [ExperimentTag(k, v) for k, v in exp.tags.items()]),
        None)
    model_ids = {m.model_id: dest.write_logged_model(
        ModelCopy(m, target.experiment_id, None), lambda location: None) for m in models}
    for run in runs:
        copy = RunCopy(run, histories[run.info.run_id], target.experiment_id, model_ids)
        dest.finish_run(copy, dest.begin_run(copy, None))
    return target.experiment_id, model_ids


@pytest.mark.parametrize(("method", "after"), [
    ("create_experiment", True),
    ("create_run", False),
    ("create_run", True),
    ("log_batch", True),
    ("log_inputs", True),          # model inputs: the server keeps a repeat
    ("log_outputs", True),         # so it does model outputs
    ("create_logged_model", True),
    ("update_run_info", True),
])
def test_an_exhausted_pool_is_retried_and_nothing_is_duplicated(
        server: MlflowServer, source: tuple[str, dict[str, Any]], method: str, after: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.store.tracking.rest_store import RestStore

    source_uri, ids = source
    run_ids = ids["runs"][:2]  # the model's output, a model input, datasets
    with monkeypatch.context() as mp:
        calls = exhaust(mp, RestStore, method, after=after)
        dest = open_dest(server.url)
        try:
            exp_id, model_ids = _copy_runs_into_new_experiment(dest, source_uri, run_ids)
        finally:
            dest.close()
    # The copy went through, though the first answer said it failed.
    assert calls[0] >= 1, f"{method} was never called"
    client = MlflowClient(tracking_uri=server.url)
    copies = copies_of(client, exp_id)  # asserts one copy per source run
    assert sorted(copies) == sorted(run_ids)
    assert len(client.search_runs([exp_id], run_view_type=ViewType.ALL)) == 2
    [model] = client.search_logged_models([exp_id])
    assert model.model_id == model_ids[ids["model"]] and str(model.status) == "READY"
    assert sorted((m.key, m.step) for m in model.metrics) == [("acc", 1), ("acc", 2)]
    src = MlflowClient(tracking_uri=source_uri)
    for run_id, copy in copies.items():
        theirs, ours = src.get_run(run_id), client.get_run(copy.info.run_id)
        assert run_fingerprint(ours) == run_fingerprint(theirs)
        assert points(client, ours) == source_points(source_uri, run_id)
        assert [(m.model_id, m.step) for m in ours.outputs.model_outputs] == [
            (model_ids[m.model_id], m.step) for m in theirs.outputs.model_outputs]
        assert [m.model_id for m in ours.inputs.model_inputs] == [
            model_ids[m.model_id] for m in theirs.inputs.model_inputs]
        assert len(ours.inputs.dataset_inputs) == len(theirs.inputs.dataset_inputs)


@pytest.mark.parametrize("method", ["create_registered_model", "create_model_version"])
def test_an_exhausted_pool_creates_no_second_model_or_version(
        server: MlflowServer, tmp_path: Path, method: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.store.model_registry.rest_store import RestStore

    name = f"busy-{uuid.uuid4().hex[:8]}"
    source_uri = _registry_source(tmp_path, name)
    with monkeypatch.context() as mp:
        calls = exhaust(mp, RestStore, method)
        dest = open_dest(server.url)
        try:
            _write_registry(source_uri, dest, [2, 4])
        finally:
            dest.close()
    assert calls[0] >= 1, f"{method} was never called"
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'")) == [1, 3]
    v3 = client.get_model_version(name, "3")
    assert (v3.current_stage, v3.description, v3.tags) == ("Staging", "v3", {"n": "3"})
    assert client.get_registered_model(name).aliases == {"best": "3"}


def test_a_pool_that_stays_exhausted_fails_the_runs_by_name_and_copies_nothing_twice(
        server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.store.tracking.rest_store import RestStore

    from cloudtrack.migrate import migrate

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("CLOUDTRACK_MAX_ATTEMPTS", "2")
    source_uri = f"sqlite:///{tmp_path}/busy.db"
    name = f"busy-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=source_uri)
    exp = client.create_experiment(name, artifact_location=(tmp_path / "art").as_uri())
    run_ids = []
    for i in range(3):
        run_id = client.create_run(exp, start_time=T0 + i, run_name=f"r{i}").info.run_id
        client.log_metric(run_id, "loss", 1.0 / (i + 1), timestamp=T0 + i, step=i)
        client.set_terminated(run_id, end_time=T0 + 10)
        run_ids.append(run_id)
    with monkeypatch.context() as mp:
        calls = exhaust(mp, RestStore, "log_batch", times=None, after=False)
        report = migrate(source_uri, server.url, experiments=[name], registry=False)
    assert calls[0] == 2 * 3  # two attempts per run
    assert not report.ok and not report.copied.get("runs")
    assert sorted(f.what for f in report.failures) == sorted(
        f"run {r} (r{i})" for i, r in enumerate(run_ids))
    for failure in report.failures:
        assert failure.error.startswith("ServerBusyError: log_batch(")
        assert server.url in failure.error and "QueuePool limit" in failure.error
        assert "after 2 attempts" in failure.error

    later = migrate(source_uri, server.url, experiments=[name], registry=False)
    assert later.ok and later.copied["runs"] == 3
    ours = MlflowClient(tracking_uri=server.url)
    copy_exp = ours.get_experiment_by_name(name)
    assert copy_exp is not None
    copies = copies_of(ours, copy_exp.experiment_id)
    assert sorted(copies) == sorted(run_ids)
    assert len(ours.search_runs([copy_exp.experiment_id], run_view_type=ViewType.ALL)) == 3
    for run_id, copy in copies.items():
        assert run_fingerprint(copy) == run_fingerprint(client.get_run(run_id))
