"""The registry's multi-object operations under faults of the real services (the fault proxy,
``faulty``): one user call never registers two versions, and a call that fails at any point
leaves one consistent registry — no version half-registered, no model under two names, no
alias of a deleted version (docs/format.md, "Model registry").

As in tests/store/test_claims.py, the faults are aimed at one call of the blob layer by turning
the proxy on around it (the request itself goes to the real service).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from mlflow.entities.model_registry import RegisteredModelTag
from mlflow.exceptions import MlflowException

from cloudtrack.config import resolve
from cloudtrack.model_registry import RENAMED_TO, BlobRegistryStore
from cloudtrack.store import layout, records
from tests.fixtures.faults import WRITES, FaultyFactory, FaultyStore
from tests.fixtures.reference import MlflowReference, Recorder, assert_same_calls
from tests.store.test_claims import faults_around

CLOUDS = ["s3", "azure", "gcs"]
SOURCE = "s3://bucket/models/m1"
#: The header that says which version a write made, per backend (cut by truncated_in_head).
VERSION_HEADER = {"s3": "etag", "azure": "etag", "gcs": "x-goog-generation"}


def registry(uri: str, env: dict[str, str], **overrides: str) -> BlobRegistryStore:
    return BlobRegistryStore(uri, config=resolve(uri, {**env, **overrides}))


def versions(r: Any, name: str = "m") -> list[tuple[int, str, str, str]]:
    """Every version of ``name`` a search lists: number, status, stage, source."""
    found = r.search_model_versions(f"name = '{name}'")
    return sorted((int(v.version), v.status, v.current_stage, v.source) for v in found)


def models(r: Any) -> list[tuple[str, list[int]]]:
    """Every registered model a search lists, with its latest versions' numbers."""
    return sorted((m.name, sorted(int(v.version) for v in m.latest_versions))
                  for m in r.search_registered_models())


def fault_store(faulty: FaultyFactory, backend: str, kind: str, **options: Any) -> FaultyStore:
    return faulty(backend, rate=0.0, kinds=[kind], methods=WRITES, retry_after=0, **options)


@pytest.mark.parametrize("kind", ["lost_answer_503", "lost_answer_reset", "truncated_head",
                                  "truncated_in_head"])
@pytest.mark.parametrize("backend", CLOUDS)
def test_a_registration_whose_answer_is_lost_registers_once(
        faulty: FaultyFactory, backend: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version's PUT lands and its answer is lost (an injected 503, a reset, an answer cut
    where or inside its headers): the call's retry meets its own write and the call answers
    version 1 — one version, READY, never two."""
    fs = fault_store(faulty, backend, kind, cut_header=VERSION_HEADER[backend])
    r = registry(fs.uri, fs.env)
    r.create_registered_model("m")
    fs.proxy.configure(max_faults=1)
    faults_around(monkeypatch, r.blobs, "put_if_absent", layout.MODEL_VERSIONS, fs)
    got = r.create_model_version("m", SOURCE, run_id=None)
    assert fs.proxy.stats()["faults"][kind] == 1
    assert got.version == 1 and got.status == "READY"
    clean = registry(fs.uri, fs.direct_env)
    assert versions(clean) == [(1, "READY", "None", SOURCE)]
    assert clean.create_model_version("m", SOURCE).version == 2


@pytest.mark.parametrize(("kind", "landed"), [("503", False), ("lost_answer_503", True)])
@pytest.mark.parametrize("backend", CLOUDS)
def test_a_registration_that_fails_leaves_no_half_registered_version(
        faulty: FaultyFactory, backend: str, kind: str, landed: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt of the version's PUT fails, before the service (503) or after it wrote
    (a lost answer): the call raises, and the registry holds no version or the whole one —
    READY, its source — and the user's retry is the next number."""
    fs = fault_store(faulty, backend, kind)
    r = registry(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    r.create_registered_model("m")
    faults_around(monkeypatch, r.blobs, "put_if_absent", layout.MODEL_VERSIONS, fs)
    with pytest.raises(MlflowException):
        r.create_model_version("m", SOURCE)
    clean = registry(fs.uri, fs.direct_env)
    expected = [(1, "READY", "None", SOURCE)] if landed else []
    assert versions(clean) == expected
    assert clean.create_model_version("m", SOURCE).version == len(expected) + 1


@pytest.mark.parametrize("backend", CLOUDS)
def test_a_model_creation_whose_answers_are_lost(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's PUT lands and its answer is lost: once (the retry meets its own write: the
    call answers the model), then on every attempt (the call raises; the model exists, once,
    and the user's retry says so)."""
    fs = fault_store(faulty, backend, "lost_answer_503")
    r = registry(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    faults_around(monkeypatch, r.blobs, "put_if_absent", layout.REGISTERED_MODELS, fs)
    fs.proxy.configure(max_faults=1)
    assert r.create_registered_model("once").name == "once"
    fs.proxy.configure(max_faults=None)
    with pytest.raises(MlflowException):
        r.create_registered_model("lost")
    clean = registry(fs.uri, fs.direct_env)
    assert models(clean) == [("lost", []), ("once", [])]
    with pytest.raises(MlflowException) as e:
        clean.create_registered_model("lost")
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"


def _renamed(r: BlobRegistryStore) -> None:
    r.create_registered_model("old", tags=[RegisteredModelTag("k", "v")])
    r.create_model_version("old", SOURCE)
    r.create_model_version("old", SOURCE)


@pytest.mark.parametrize("backend", CLOUDS)
def test_a_rename_that_fails_before_deleting_the_old_name(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new record is written, the old one's DELETE fails on every attempt: the rename
    raises.  The model is under its new name only (the old code listed two models sharing the
    versions, and found both by name); the old name is free again."""
    fs = fault_store(faulty, backend, "503")
    r = registry(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    _renamed(r)
    faults_around(monkeypatch, r.blobs, "delete", layout.registered_model("old"), fs)
    with pytest.raises(MlflowException):
        r.rename_registered_model("old", "new")
    assert fs.proxy.stats()["faults"]["503"] == 2

    clean = registry(fs.uri, fs.direct_env)
    assert clean.blobs.exists(layout.registered_model("old")), "the leftover is there"
    assert models(clean) == [("new", [2])]
    with pytest.raises(MlflowException) as e:
        clean.get_registered_model("old")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException):
        clean.set_registered_model_tag("old", RegisteredModelTag("k", "w"))
    got = clean.get_registered_model("new")
    assert got.tags == {"k": "v"} and [v.version for v in got.latest_versions] == [2]
    assert [v[0] for v in versions(clean, "new")] == [1, 2]
    # The old name is free: a new model takes it (with none of the versions), and deleting
    # the renamed one leaves no leftover to come back as a model.
    clean.create_registered_model("old")
    assert models(clean) == [("new", [2]), ("old", [])]
    clean.delete_registered_model("new")
    clean.delete_registered_model("old")
    assert models(clean) == []


@pytest.mark.parametrize("backend", CLOUDS)
def test_a_rename_that_fails_before_writing_the_new_name(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old record is marked, the new one's PUT fails on every attempt: the model stays
    under its old name, whole and changeable, and the user's retry renames it."""
    fs = fault_store(faulty, backend, "503")
    r = registry(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    _renamed(r)
    faults_around(monkeypatch, r.blobs, "put_if_absent", layout.registered_model("new"), fs)
    with pytest.raises(MlflowException):
        r.rename_registered_model("old", "new")

    clean = registry(fs.uri, fs.direct_env)
    assert records.read(clean.blobs, layout.registered_model("old"))[RENAMED_TO] == "new"
    assert models(clean) == [("old", [2])]
    clean.set_registered_model_tag("old", RegisteredModelTag("k", "w"))
    assert clean.get_registered_model("old").tags == {"k": "w"}
    assert clean.rename_registered_model("old", "new").name == "new"
    assert models(clean) == [("new", [2])]
    assert clean.get_registered_model("new").tags == {"k": "w"}


def _alias_after_deleting_its_version(r: Any) -> list[Any]:
    rec = Recorder()
    rec.call("aliases", lambda: r.get_registered_model("m").aliases)
    rec.call("by alias", lambda: r.get_model_version_by_alias("m", "champion"), words=True)
    rec.call("version", lambda: r.get_model_version("m", 2))
    rec.call("search", lambda: [(m.name, m.aliases) for m in r.search_registered_models()])
    return rec.out


@pytest.mark.parametrize("backend", CLOUDS)
def test_a_version_deletion_that_fails_before_dropping_its_alias(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch,
        mlflow_reference: Callable[[], MlflowReference]) -> None:
    """The version is tombstoned, the model's update that drops its alias fails on every
    attempt: the call raises, and readers see what MLflow's sqlite store shows after the
    deletion — no alias (the old code still listed it, pointing at a deleted version)."""
    fs = fault_store(faulty, backend, "503")
    r = registry(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")

    def populate(s: Any) -> None:
        s.create_registered_model("m")
        s.create_model_version("m", SOURCE)
        s.create_model_version("m", SOURCE)
        s.set_registered_model_alias("m", "champion", 2)

    populate(r)
    faults_around(monkeypatch, r.blobs, "put_if_version", layout.REGISTERED_MODELS, fs)
    with pytest.raises(MlflowException):
        r.delete_model_version("m", 2)
    assert "champion" in records.read(r.blobs, layout.registered_model("m"))["aliases"]

    sqlite = mlflow_reference().registry_store()
    populate(sqlite)
    sqlite.delete_model_version("m", 2)
    assert_same_calls(_alias_after_deleting_its_version(sqlite),
                      _alias_after_deleting_its_version(registry(fs.uri, fs.direct_env)),
                      "MLflow's sqlite store")
