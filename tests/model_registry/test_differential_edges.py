"""Differential tests of MLflow's model-registry store API method by method: optional
arguments passed as None or empty, version numbers in every form, names that name nothing,
the same call twice, calls on deleted versions, and which calls stamp a model's or a version's
last_updated_timestamp.  The same calls on MLflow's sqlite registry and on cloudtrack's on
every backend; results, error codes and, where MLflow's registry stores agree on them
(``words=True``), error messages must match."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag

from cloudtrack.model_registry import BlobRegistryStore
from tests.fixtures.reference import MlflowReference, Recorder, assert_same_calls
from tests.fixtures.stores import registry_store


@pytest.fixture
def cloud_registry(store) -> Iterator[BlobRegistryStore]:  # type: ignore[no-untyped-def]
    yield registry_store(store)


def same_as_sqlite(scenario: Callable[[Any], list[Any]],
                   mlflow_reference: Callable[[], MlflowReference],
                   cloud_registry: BlobRegistryStore) -> None:
    expected = scenario(mlflow_reference().registry_store())
    assert_same_calls(expected, scenario(cloud_registry), "MLflow's sqlite registry")


def mv_view(mv: Any) -> dict[str, Any]:
    # Not model_id: MLflow's sqlite registry drops it, its FileStore keeps it, so does cloudtrack.
    return {"name": mv.name, "version": mv.version, "stage": mv.current_stage,
            "source": mv.source, "run_id": mv.run_id, "run_link": mv.run_link,
            "description": mv.description, "tags": mv.tags, "aliases": sorted(mv.aliases),
            "status": mv.status}


def rm_view(rm: Any) -> dict[str, Any]:
    return {"name": rm.name, "description": rm.description, "tags": rm.tags,
            "aliases": rm.aliases,
            "latest": sorted((v.version, v.current_stage) for v in rm.latest_versions or [])}


def versions(vs: Any) -> list[Any]:
    return [(v.name, v.version, v.current_stage) for v in vs]


# -- None, empty and boundary arguments -------------------------------------------------------------

def scenario_arguments(s: Any) -> list[Any]:
    r = Recorder()
    r.call("no name", lambda: s.create_registered_model(""), words=True)
    r.call("None name", lambda: s.create_registered_model(None), words=True)
    r.call("tags None", lambda: s.create_registered_model("a", None, None), rm_view)
    r.call("a None tag value", lambda: s.create_registered_model(
        "b", [RegisteredModelTag("k", None)], ""), rm_view)
    r.call("same key twice", lambda: s.create_registered_model(
        "c", [RegisteredModelTag("k", "1"), RegisteredModelTag("k", "2")]), rm_view)
    r.call("get ''", lambda: s.get_registered_model(""), words=True)
    r.call("get None", lambda: s.get_registered_model(None), words=True)
    r.call("describe None", lambda: s.update_registered_model("a", None), rm_view)
    r.call("describe ''", lambda: s.update_registered_model("a", ""), rm_view)
    r.call("set a None tag", lambda: s.set_registered_model_tag("a", RegisteredModelTag("t", None)))
    r.call("None tags kept", lambda: s.get_registered_model("a"), rm_view)
    r.call("rename to ''", lambda: s.rename_registered_model("a", ""), words=True)
    r.call("rename to None", lambda: s.rename_registered_model("a", None), words=True)
    r.call("source None", lambda: s.create_model_version("a", None), mv_view)
    r.call("source ''", lambda: s.create_model_version("a", ""), mv_view)
    r.call("every field", lambda: s.create_model_version(
        "a", "s3://b/m", "run1", [ModelVersionTag("k", "v")], "http://link", "desc", None,
        "m-123"), mv_view)
    r.call("a None version tag", lambda: s.create_model_version(
        "a", "s3://b/m", tags=[ModelVersionTag("k", None)]), words=True)
    for v in ("1", 1, "01", " 1", "3", "0", "-1", "1.5", "abc", "", 10 ** 12):
        r.call(f"version {v!r}", lambda v=v: s.get_model_version("a", v), mv_view, words=True)
    r.call("download a None source", lambda: s.get_model_version_download_uri("a", "1"))
    r.call("download ''", lambda: s.get_model_version_download_uri("a", "2"))
    r.call("stage lower case", lambda: s.transition_model_version_stage(
        "a", "1", "staging", False), mv_view)
    r.call("same stage", lambda: s.transition_model_version_stage("a", "1", "Staging", True),
           mv_view)
    r.call("unknown stage", lambda: s.transition_model_version_stage("a", "1", "Heaven", False),
           words=True)
    for stages in (None, [], ["production"], ["Staging", "None"], ["Heaven"]):
        r.call(f"latest {stages}", lambda stages=stages: s.get_latest_versions("a", stages),
               versions, words=True)
    for alias in (None, "", "latest", "v1", "V1"):
        r.call(f"alias {alias!r}", lambda alias=alias: s.set_registered_model_alias(
            "a", alias, "1"), words=True)
    r.call("alias Latest", lambda: s.get_model_version_by_alias("a", "Latest"), mv_view)
    r.call("describe a version None", lambda: s.update_model_version("a", "1", None), mv_view)

    def search(label: str, *args: Any, words: bool = False, **kw: Any) -> None:
        r.call(label, lambda: s.search_registered_models(*args, **kw),
               lambda ms: ([m.name for m in ms], ms.token is not None), words=words)

    search("models", max_results=10)
    search("filter ''", "", 10)
    search("order []", None, 10, [])
    search("exactly all", None, 3, ["name ASC"])
    search("max 1001", None, 1001, words=True)
    r.call("versions by default", lambda: s.search_model_versions(), versions)
    r.call("versions filter ''", lambda: s.search_model_versions("", 10, ["version_number ASC"]),
           versions)
    r.call("versions max 0", lambda: s.search_model_versions(None, 0), versions, words=True)
    r.call("versions max 200001", lambda: s.search_model_versions(None, 200001), versions,
           words=True)
    return r.out


def test_registry_arguments(mlflow_reference, cloud_registry) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_arguments, mlflow_reference, cloud_registry)


# -- names that name nothing, repeated calls, deleted versions --------------------------------------

def scenario_identity(s: Any) -> list[Any]:
    r = Recorder()
    s.create_registered_model("m")
    for i in range(3):
        s.create_model_version("m", f"s3://b/v{i}", f"run{i}")
    for label, call in [
        ("get", lambda: s.get_model_version("nope", "1")),
        ("describe", lambda: s.update_model_version("nope", "1", "d")),
        ("transition", lambda: s.transition_model_version_stage("nope", "1", "Staging", False)),
        ("delete", lambda: s.delete_model_version("nope", "1")),
        ("tag", lambda: s.set_model_version_tag("nope", "1", ModelVersionTag("k", "v"))),
        ("untag", lambda: s.delete_model_version_tag("nope", "1", "k")),
        ("alias", lambda: s.set_registered_model_alias("nope", "a", "1")),
        ("download", lambda: s.get_model_version_download_uri("nope", "1")),
        ("version number of nothing", lambda: s.get_model_version("nope", "abc")),
        ("by alias", lambda: s.get_model_version_by_alias("nope", "a")),
        ("unalias", lambda: s.delete_registered_model_alias("nope", "a")),
        ("latest", lambda: s.get_latest_versions("nope")),
        ("new version", lambda: s.create_model_version("nope", "s3://x")),
        ("model tag", lambda: s.set_registered_model_tag("nope", RegisteredModelTag("k", "v"))),
        ("model untag", lambda: s.delete_registered_model_tag("nope", "k")),
        ("describe model", lambda: s.update_registered_model("nope", "d")),
        ("rename model", lambda: s.rename_registered_model("nope", "x")),
        ("delete model", lambda: s.delete_registered_model("nope")),
    ]:
        r.call(f"missing model: {label}", call, words=True)
    for attempt in ("first", "again"):
        r.call(f"{attempt}: create", lambda: s.create_registered_model("m"), words=True)
        r.call(f"{attempt}: tag", lambda: s.set_registered_model_tag("m", RegisteredModelTag("k", "v")))
        r.call(f"{attempt}: version tag", lambda: s.set_model_version_tag(
            "m", "1", ModelVersionTag("k", "v")))
        r.call(f"{attempt}: alias", lambda: s.set_registered_model_alias("m", "champ", "1"))
        r.call(f"{attempt}: transition", lambda: s.transition_model_version_stage(
            "m", "1", "Production", True), mv_view)
        r.call(f"{attempt}: rename to itself", lambda: s.rename_registered_model("m", "m"), rm_view)
    r.call("move the alias", lambda: s.set_registered_model_alias("m", "champ", "2"))
    r.call("version 1", lambda: s.get_model_version("m", "1"), mv_view)
    r.call("version 2", lambda: s.get_model_version("m", "2"), mv_view)
    for attempt in ("first", "again"):
        r.call(f"{attempt}: untag", lambda: s.delete_registered_model_tag("m", "k"))
        r.call(f"{attempt}: untag version", lambda: s.delete_model_version_tag("m", "1", "k"))
        r.call(f"{attempt}: unalias", lambda: s.delete_registered_model_alias("m", "champ"))
        r.call(f"{attempt}: delete version 2", lambda: s.delete_model_version("m", "2"),
               words=True)
    for label, call in [
        ("get", lambda: s.get_model_version("m", "2")),
        ("describe", lambda: s.update_model_version("m", "2", "d")),
        ("transition", lambda: s.transition_model_version_stage("m", "2", "Staging", False)),
        ("tag", lambda: s.set_model_version_tag("m", "2", ModelVersionTag("k", "v"))),
        ("untag", lambda: s.delete_model_version_tag("m", "2", "k")),
        ("alias", lambda: s.set_registered_model_alias("m", "a", "2")),
        ("download", lambda: s.get_model_version_download_uri("m", "2")),
    ]:
        r.call(f"deleted version: {label}", call, words=True)
    r.call("latest", lambda: s.get_latest_versions("m"), versions)
    r.call("searched", lambda: s.search_model_versions("name = 'm'", 10), versions)
    r.call("next number", lambda: s.create_model_version("m", "s3://b/v3"), mv_view)
    r.call("delete the model", lambda: s.delete_registered_model("m"))
    r.call("delete it again", lambda: s.delete_registered_model("m"), words=True)
    r.call("its versions", lambda: s.get_model_version("m", "1"), words=True)
    return r.out


def test_registry_identity(mlflow_reference, cloud_registry) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_identity, mlflow_reference, cloud_registry)


# -- what stamps last_updated_timestamp ------------------------------------------------------------

def scenario_stamps(s: Any) -> list[Any]:
    r = Recorder()
    s.create_registered_model("m")
    s.create_model_version("m", "s3://b/1")
    s.create_model_version("m", "s3://b/2")

    def stamps(name: str) -> tuple[Any, ...]:
        return (s.get_registered_model(name).last_updated_timestamp,
                s.get_model_version(name, "1").last_updated_timestamp,
                s.get_model_version(name, "2").last_updated_timestamp)

    def stamped(label: str, call: Callable[[], Any], renamed: str = "m") -> None:
        before = stamps("m")
        time.sleep(0.005)
        r.call(label, call, lambda _: None)
        r.out.append((label + ": model, v1, v2 stamped",
                      [a != b for a, b in zip(before, stamps(renamed), strict=True)]))

    stamped("tag", lambda: s.set_registered_model_tag("m", RegisteredModelTag("k", "v")))
    stamped("untag", lambda: s.delete_registered_model_tag("m", "k"))
    stamped("describe", lambda: s.update_registered_model("m", "d"))
    stamped("version tag", lambda: s.set_model_version_tag("m", "1", ModelVersionTag("k", "v")))
    stamped("version untag", lambda: s.delete_model_version_tag("m", "1", "k"))
    stamped("describe version", lambda: s.update_model_version("m", "1", "d"))
    stamped("alias", lambda: s.set_registered_model_alias("m", "a", "1"))
    stamped("unalias", lambda: s.delete_registered_model_alias("m", "a"))
    stamped("transition", lambda: s.transition_model_version_stage("m", "1", "Staging", False))
    stamped("transition and archive", lambda: s.transition_model_version_stage(
        "m", "2", "Staging", True))
    stamped("new version", lambda: s.create_model_version("m", "s3://b/3"))
    stamped("delete a version", lambda: s.delete_model_version("m", "3"))
    stamped("rename to itself", lambda: s.rename_registered_model("m", "m"))
    stamped("rename", lambda: s.rename_registered_model("m", "n"), renamed="n")
    r.call("newest first", lambda: s.search_model_versions(None, 10), versions)
    return r.out


def test_registry_stamps(mlflow_reference, cloud_registry) -> None:  # type: ignore[no-untyped-def]
    same_as_sqlite(scenario_stamps, mlflow_reference, cloud_registry)
