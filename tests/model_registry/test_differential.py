"""Differential test of the model registry: one call sequence against MLflow's sqlite registry
(the spec) and against cloudtrack's registry on every backend; names, versions, stages,
aliases, tags, descriptions, search order and error codes must agree."""

from __future__ import annotations

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


def mv_view(mv: Any) -> dict[str, Any]:
    return {"name": mv.name, "version": mv.version, "stage": mv.current_stage,
            "source": mv.source, "run_id": mv.run_id, "description": mv.description,
            "tags": mv.tags, "aliases": sorted(mv.aliases), "status": mv.status}


def rm_view(rm: Any) -> dict[str, Any]:
    return {"name": rm.name, "description": rm.description, "tags": rm.tags,
            "aliases": rm.aliases,
            "latest": sorted((v.version, v.current_stage) for v in rm.latest_versions or [])}


def scenario(s: Any) -> list[Any]:
    r = Recorder()
    r.call("create", lambda: s.create_registered_model("iris", [RegisteredModelTag("team", "ml")],
                                                       "first"), rm_view)
    r.call("create other", lambda: s.create_registered_model("other/model"), rm_view)
    r.call("duplicate", lambda: s.create_registered_model("iris"))
    r.call("empty name", lambda: s.create_registered_model(""))
    r.call("get missing", lambda: s.get_registered_model("nope"))
    for i in range(3):
        r.call(f"version {i}", lambda i=i: s.create_model_version(
            "iris", f"s3://bucket/run{i}/model", f"run{i}", [ModelVersionTag("v", str(i))],
            description=f"v{i}"), mv_view)
    r.call("version of missing model", lambda: s.create_model_version("nope", "s3://x"))
    r.call("get v2", lambda: s.get_model_version("iris", "2"), mv_view)
    r.call("get v9", lambda: s.get_model_version("iris", "9"))
    r.call("bad version", lambda: s.get_model_version("iris", "abc"))
    r.call("update v1", lambda: s.update_model_version("iris", "1", "better"), mv_view)
    r.call("to staging", lambda: s.transition_model_version_stage("iris", "1", "staging", False), mv_view)
    r.call("to production", lambda: s.transition_model_version_stage("iris", "2", "Production", False), mv_view)
    r.call("bad stage", lambda: s.transition_model_version_stage("iris", "2", "Heaven", False))
    r.call("archive to None", lambda: s.transition_model_version_stage("iris", "2", "None", True))
    r.call("prod + archive", lambda: s.transition_model_version_stage("iris", "3", "Production", True), mv_view)
    r.call("v2 archived", lambda: s.get_model_version("iris", "2"), mv_view)
    r.call("latest", lambda: s.get_latest_versions("iris"), lambda vs: sorted((v.version, v.current_stage) for v in vs))
    r.call("latest prod", lambda: s.get_latest_versions("iris", ["Production"]), lambda vs: [v.version for v in vs])
    r.call("alias", lambda: s.set_registered_model_alias("iris", "champion", "3"))
    r.call("alias missing version", lambda: s.set_registered_model_alias("iris", "x", "42"))
    r.call("alias reserved", lambda: s.set_registered_model_alias("iris", "latest", "1"))
    r.call("alias v-prefixed", lambda: s.set_registered_model_alias("iris", "v3", "1"))
    r.call("by alias", lambda: s.get_model_version_by_alias("iris", "champion"), mv_view)
    r.call("by missing alias", lambda: s.get_model_version_by_alias("iris", "nope"))
    r.call("model has alias", lambda: s.get_registered_model("iris"), rm_view)
    r.call("mv tag", lambda: s.set_model_version_tag("iris", "1", ModelVersionTag("k", "v")))
    r.call("mv tag del", lambda: s.delete_model_version_tag("iris", "1", "v"))
    r.call("mv tag del missing", lambda: s.delete_model_version_tag("iris", "1", "none"))
    r.call("rm tag", lambda: s.set_registered_model_tag("iris", RegisteredModelTag("k", "v")))
    r.call("rm tag del", lambda: s.delete_registered_model_tag("iris", "team"))
    r.call("rm tag del missing", lambda: s.delete_registered_model_tag("iris", "zzz"))
    r.call("describe", lambda: s.update_registered_model("iris", "described"), rm_view)
    r.call("download uri", lambda: s.get_model_version_download_uri("iris", "2"))
    r.call("search all", lambda: s.search_registered_models(max_results=10), lambda ms: [m.name for m in ms])
    r.call("search like", lambda: s.search_registered_models("name LIKE 'ir%'", 10), lambda ms: [m.name for m in ms])
    r.call("search tag", lambda: s.search_registered_models("tags.k = 'v'", 10), lambda ms: [m.name for m in ms])
    r.call("search order", lambda: s.search_registered_models(None, 10, ["name DESC"]), lambda ms: [m.name for m in ms])
    page = r.call("page 1", lambda: s.search_registered_models(None, 1, ["name ASC"]), lambda ms: [m.name for m in ms])
    r.call("page 2", lambda: s.search_registered_models(None, 1, ["name ASC"], page.token), lambda ms: [m.name for m in ms])
    r.call("search versions", lambda: s.search_model_versions("name = 'iris'", 10, ["version_number ASC"]),
           lambda vs: [mv_view(v) for v in vs])
    r.call("search versions run", lambda: s.search_model_versions("run_id = 'run1'", 10), lambda vs: [v.version for v in vs])
    r.call("search versions tag", lambda: s.search_model_versions("tags.v = '2'", 10), lambda vs: [v.version for v in vs])
    r.call("delete v3", lambda: s.delete_model_version("iris", "3"))
    r.call("get deleted", lambda: s.get_model_version("iris", "3"))
    r.call("alias gone", lambda: s.get_registered_model("iris"), rm_view)
    r.call("version after delete", lambda: s.create_model_version("iris", "s3://b/m4", "run4"), mv_view)
    r.call("rename", lambda: s.rename_registered_model("iris", "iris-renamed"), rm_view)
    r.call("rename clash", lambda: s.rename_registered_model("iris-renamed", "other/model"))
    r.call("renamed versions", lambda: s.get_model_version("iris-renamed", "4"), mv_view)
    r.call("old name", lambda: s.get_registered_model("iris"))
    r.call("latest alias", lambda: s.get_model_version_by_alias("iris-renamed", "latest"), mv_view)
    r.call("delete model", lambda: s.delete_registered_model("iris-renamed"))
    r.call("deleted", lambda: s.get_registered_model("iris-renamed"))
    r.call("versions of deleted", lambda: s.search_model_versions("name = 'iris-renamed'", 10), lambda vs: len(vs))
    r.call("recreate", lambda: s.create_registered_model("iris-renamed"), rm_view)
    r.call("fresh numbering", lambda: s.create_model_version("iris-renamed", "s3://b/x"), mv_view)
    return r.out


def test_registry_same_behaviour_as_mlflow_sqlite(mlflow_reference: Callable[[], MlflowReference],
                                                  cloud_registry: BlobRegistryStore) -> None:
    expected = scenario(mlflow_reference().registry_store())
    actual = scenario(cloud_registry)
    assert_same_calls(expected, actual, "MLflow's sqlite registry")
