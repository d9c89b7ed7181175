"""cloudtrack.store.claims: creating an experiment is two writes (its record, then its name
claim) and no store has a transaction over both; a failure or a kill at any point must leave
no second experiment of one name anywhere (docs/format.md, "Creating an experiment").

Faults come from the real services through the fault proxy (``faulty``).  To aim them at
exactly one request whatever the backend (a GCS upload names its object in the body, not the
URL), the test turns the proxy's faults on around one call of the store's blob layer — a
wrapper that only flips the proxy, the request itself goes to the real service.  The kills are
real SIGKILLs of a child process; a hook inside the child picks the precise moment (before or
after the name claim's PUT), since no outside signal can land between two requests reliably.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from mlflow.entities import ExperimentTag, ViewType
from mlflow.exceptions import MlflowException

from cloudtrack.blobs import Blobs
from cloudtrack.config import resolve
from cloudtrack.store import claims, layout, records
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.faults import WRITES, FaultyFactory, FaultyStore
from tests.fixtures.reference import MlflowReference, Recorder, assert_same_calls
from tests.fixtures.services import Store

CLOUDS = ["s3", "azure", "gcs"]
NAME = "one name"


def tracking(uri: str, env: dict[str, str], **overrides: str) -> BlobTrackingStore:
    """A fresh tracking store (what a clean MlflowClient opens) on ``uri``."""
    return BlobTrackingStore(uri, config=resolve(uri, {**env, "CLOUDTRACK_STRICT": "true",
                                                       **overrides}))


def named(s: Any, name: str = NAME) -> list[str]:
    """Ids of every experiment called ``name`` that a search lists (deleted ones too)."""
    return sorted(e.experiment_id for e in s.search_experiments(view_type=ViewType.ALL)
                  if e.name == name)


def faults_around(monkeypatch: pytest.MonkeyPatch, blobs: Blobs, method: str, prefix: str,
                  fs: FaultyStore) -> None:
    """Every request of ``blobs.<method>(key)`` for a key under ``prefix`` draws the proxy's
    fault (rate 1); every other request goes through untouched."""
    real: Callable[..., Any] = getattr(blobs, method)

    def faulted(key: str, *args: Any) -> Any:
        if not key.startswith(prefix):
            return real(key, *args)
        fs.proxy.configure(rate=1.0)
        try:
            return real(key, *args)
        finally:
            fs.proxy.configure(rate=0.0)

    monkeypatch.setattr(blobs, method, faulted)


def stored_records(blobs: Blobs) -> dict[str, dict[str, Any]]:
    return {layout.id_from_key(i.key): records.read(blobs, i.key)
            for i in blobs.list(layout.EXPERIMENTS)}


def after_a_failed_create(s: Any) -> list[Any]:
    """What a user sees once a create_experiment raised and left no experiment: none of the
    name, then a retry that works, then a second one that says it exists."""
    r = Recorder()
    r.call("search", lambda: len(named(s)))
    r.call("by name", lambda: s.get_experiment_by_name(NAME))
    exp_id = r.call("retry", lambda: s.create_experiment(NAME), lambda i: "<id>")
    r.call("search after retry", lambda: named(s) == [exp_id])
    r.call("by name after retry", lambda: s.get_experiment_by_name(NAME).experiment_id == exp_id)
    r.call("again", lambda: s.create_experiment(NAME))
    r.call("set_experiment's way",
           lambda: s.get_experiment_by_name(NAME).experiment_id == exp_id)
    return r.out


@pytest.mark.parametrize("backend", CLOUDS)
def test_a_name_claim_that_never_lands_leaves_no_experiment(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch,
        mlflow_reference: Callable[[], MlflowReference]) -> None:
    """Every attempt of the name claim gets a 503 (not forwarded: it never lands), so
    create_experiment raises with its record written.  The old code left that record listed: a
    user's retry then made a second experiment of the name."""
    fs = faulty(backend, rate=0.0, kinds=["503"], methods=WRITES, retry_after=0)
    s = tracking(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    faults_around(monkeypatch, s.blobs, "put_if_absent", layout.EXPERIMENT_NAMES, fs)
    with pytest.raises(MlflowException):
        s.create_experiment(NAME)
    assert fs.proxy.stats()["faults"]["503"] == 2
    s.close()

    clean = tracking(fs.uri, fs.direct_env)
    (orphan,) = [i for i, rec in stored_records(clean.blobs).items() if rec["name"] == NAME]
    with pytest.raises(MlflowException) as e:
        clean.get_experiment(orphan)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException):
        clean.set_experiment_tag(orphan, ExperimentTag("k", "v"))
    assert clean.filter_active_experiment_ids([orphan]) == []
    expected = after_a_failed_create(mlflow_reference().tracking_store())
    assert_same_calls(expected, after_a_failed_create(clean), "MLflow's sqlite store")
    assert orphan not in named(clean)


@pytest.mark.parametrize("backend", CLOUDS)
def test_a_name_claim_whose_answers_are_lost_leaves_one_experiment(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim lands, every answer is lost: the call raises, and the experiment exists,
    once, everywhere a reader looks; the user's retry says it exists."""
    fs = faulty(backend, rate=0.0, kinds=["lost_answer_503"], methods=WRITES, retry_after=0)
    s = tracking(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    faults_around(monkeypatch, s.blobs, "put_if_absent", layout.EXPERIMENT_NAMES, fs)
    with pytest.raises(MlflowException):
        s.create_experiment(NAME)
    s.close()

    clean = tracking(fs.uri, fs.direct_env)
    (exp_id,) = named(clean)
    got = clean.get_experiment_by_name(NAME)
    assert got is not None and got.experiment_id == exp_id
    assert clean.get_experiment(exp_id).name == NAME
    with pytest.raises(MlflowException) as e:
        clean.create_experiment(NAME)
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert named(clean) == [exp_id]


@pytest.mark.parametrize("backend", CLOUDS)
def test_an_experiment_whose_record_was_not_settled_is_whole(
        faulty: FaultyFactory, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is claimed; the write that settles the record fails on every attempt.  The
    experiment is created (the claim is the commit point): listed once, found by id and by
    name, and the next change of it settles the record."""
    fs = faulty(backend, rate=0.0, kinds=["503"], methods=WRITES, retry_after=0)
    s = tracking(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    faults_around(monkeypatch, s.blobs, "put_if_version", layout.EXPERIMENTS, fs)
    exp_id = s.create_experiment(NAME)
    assert fs.proxy.stats()["faults"]["503"] == 2
    s.close()

    clean = tracking(fs.uri, fs.direct_env)
    assert stored_records(clean.blobs)[exp_id].get(claims.PENDING) is True
    assert named(clean) == [exp_id]
    assert clean.get_experiment(exp_id).name == NAME
    assert clean.filter_active_experiment_ids([exp_id]) == [exp_id]
    run = clean.create_run(exp_id, "u", 0, [], "r")
    assert run.info.experiment_id == exp_id
    clean.set_experiment_tag(exp_id, ExperimentTag("k", "v"))
    assert claims.PENDING not in stored_records(clean.blobs)[exp_id]
    assert clean.get_experiment(exp_id).tags == {"k": "v"}
    assert named(clean) == [exp_id]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from cloudtrack.blobs.base import Blobs

    when = sys.argv[1]
    real = Blobs.put_if_absent

    def put_if_absent(self, key, data):
        if not key.startswith("experiment-names/") or "killed" not in key:
            return real(self, key, data)
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        got = real(self, key, data)
        os.kill(os.getpid(), signal.SIGKILL)
        return got

    Blobs.put_if_absent = put_if_absent
    import mlflow
    mlflow.MlflowClient().create_experiment("killed")
    print("not killed")
""")


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_creator_killed_around_the_name_claim(store: Store, when: str) -> None:
    """SIGKILL right before the name claim's PUT (the record is written) or right after it
    (the record is not yet settled).  Before: no experiment, and the user's retry makes one —
    the old code listed the killed one and the retry a second.  After: the experiment, once."""
    tracking(store.uri, store.env).close()  # the store exists before the child starts
    env = {**os.environ, **store.env, "MLFLOW_TRACKING_URI": store.uri,
           "CLOUDTRACK_STRICT": "true", "GIT_PYTHON_REFRESH": "quiet"}
    done = subprocess.run([sys.executable, "-c", CHILD, when], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    clean = tracking(store.uri, store.env)
    assert any(rec["name"] == "killed" for rec in stored_records(clean.blobs).values())
    if when == "before":
        assert named(clean, "killed") == []
        assert clean.get_experiment_by_name("killed") is None
        exp_id = clean.create_experiment("killed")
    else:
        (exp_id,) = named(clean, "killed")
        with pytest.raises(MlflowException) as e:
            clean.create_experiment("killed")
        assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert named(clean, "killed") == [exp_id]
    got = clean.get_experiment_by_name("killed")
    assert got is not None and got.experiment_id == exp_id
    clean.close()


# -- renames cut short ---------------------------------------------------------------------------
#
# rename_experiment writes three things: the new name's claim, the record, the old claim's
# delete.  The states a renamer killed between them leaves are made here by failing the step
# after (a raise from the blob call: what a kill leaves on the store is what was written).


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
def test_a_rename_cut_before_the_old_claim_went_frees_the_old_name(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    s = tracking(store.uri, store.env)
    exp_id = s.create_experiment("before")
    real_delete = s.blobs.delete

    def killed(key: str) -> None:
        if key == layout.experiment_name("before"):
            raise KeyboardInterrupt("killed before the old claim's delete")
        real_delete(key)

    monkeypatch.setattr(s.blobs, "delete", killed)
    with pytest.raises(KeyboardInterrupt):
        s.rename_experiment(exp_id, "after")
    monkeypatch.undo()

    clean = tracking(store.uri, store.env)
    assert clean.get_experiment(exp_id).name == "after"
    assert clean.get_experiment_by_name("before") is None
    new_id = clean.create_experiment("before")  # the name the rename gave up is free
    assert clean.get_experiment_by_name("before").experiment_id == new_id
    assert clean.get_experiment_by_name("after").experiment_id == exp_id
    assert named(clean, "before") == [new_id] and named(clean, "after") == [exp_id]


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
def test_a_rename_cut_after_its_first_claim_frees_the_new_name_once_the_claim_is_old(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    s = tracking(store.uri, store.env)
    exp_id = s.create_experiment("kept")
    # The renamer's first write landed; it died before it changed the record.
    s.blobs.put_if_absent(layout.experiment_name("wanted"),
                          records.dumps({"experiment_id": exp_id}))

    clean = tracking(store.uri, store.env)
    assert clean.get_experiment_by_name("wanted") is None
    with pytest.raises(MlflowException, match="already exists"):
        clean.create_experiment("wanted")  # as long as the rename may still be under way
    monkeypatch.setattr(claims, "STALE_RENAME_SECONDS", -1.0)  # ... and once it cannot be
    new_id = clean.create_experiment("wanted")
    assert clean.get_experiment_by_name("wanted").experiment_id == new_id
    assert clean.get_experiment_by_name("kept").experiment_id == exp_id
    assert named(clean, "wanted") == [new_id] and named(clean, "kept") == [exp_id]
    other = clean.create_experiment("third")
    with pytest.raises(MlflowException, match="already exists"):
        clean.rename_experiment(other, "wanted")  # a claim taken over is an ordinary claim
