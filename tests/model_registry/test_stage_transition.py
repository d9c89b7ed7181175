"""transition_model_version_stage with archive_existing_versions changes several version
records, and no store has a transaction over them (issue #11): whatever happens, readers must
see the transition not done or done — never the moved version and the ones it archives in one
stage together, which MLflow's SQL store (one transaction) never shows (docs/format.md, "Model
registry").

What readers see is compared with MLflow's sqlite registry doing the same calls.  Faults come
from the real services through the fault proxy (``faulty``), turned on from one write of the
blob layer on (the requests themselves go to the real service); the kills are real SIGKILLs of
a child process, whose hook picks the moment (between two writes), as in
tests/store/test_claims.py.  Where a test only needs the state a cut leaves (request counts,
records written before the rule, clocks that disagree), the blob layer raises instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from cloudtrack.config import resolve
from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.store import layout, records
from tests.fixtures.faults import WRITES, FaultyFactory
from tests.fixtures.reference import MlflowReference, Recorder, assert_same_calls
from tests.fixtures.services import Store
from tests.fixtures.stores import registry_store
from tests.tracking.test_request_budget import Requests

CLOUDS = ["s3", "azure", "gcs"]
STAGES = ("None", "Staging", "Production", "Archived")


def registry(uri: str, env: dict[str, str], **overrides: str) -> BlobRegistryStore:
    return BlobRegistryStore(uri, config=resolve(uri, {**env, **overrides}))


def seen(s: Any, name: str = "m") -> dict[str, Any]:
    """Every version's stage as each reader reports it, the versions of each stage, and which
    versions carry the model's last-updated time (MLflow stamps the model, the moved version
    and the ones it archives with one time)."""
    model = s.get_registered_model(name)
    found = sorted(s.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    got = [s.get_model_version(name, str(v.version)) for v in found]
    return {
        "get": [(int(v.version), v.current_stage) for v in got],
        "search": [(int(v.version), v.current_stage) for v in found],
        "per stage": {stage: [int(v.version) for v in found if v.current_stage == stage]
                      for stage in STAGES},
        "latest": {stage: [int(v.version) for v in s.get_latest_versions(name, [stage])]
                   for stage in STAGES},
        "latest of all": sorted((int(v.version), v.current_stage)
                                for v in s.get_latest_versions(name)),
        "model's latest": sorted((int(v.version), v.current_stage) for v in model.latest_versions),
        "searched model's latest": [sorted((int(v.version), v.current_stage)
                                           for v in m.latest_versions)
                                    for m in s.search_registered_models() if m.name == name],
        "stamped with the model": [int(v.version) for v in got
                                   if v.last_updated_timestamp == model.last_updated_timestamp],
    }


def stored_stages(r: BlobRegistryStore, name: str = "m") -> list[tuple[int, str]]:
    """The stage each version record holds, as written."""
    model = records.read(r.blobs, layout.registered_model(name))
    recs = [records.read(r.blobs, i.key) for i in r.blobs.list(layout.model_versions(model["id"]))]
    return sorted((int(v["version"]), v["current_stage"]) for v in recs
                  if v["current_stage"] != "Deleted_Internal")


def step() -> None:
    """Apart in time, so that no two steps share a millisecond on either store."""
    time.sleep(0.003)


# -- the same transitions as MLflow's sqlite registry ---------------------------------------------


def transitions(s: Any) -> list[Any]:
    r = Recorder()
    s.create_registered_model("m")
    for i in range(1, 7):
        s.create_model_version("m", f"s3://bucket/v{i}")

    def move(version: int, stage: str, archive: bool) -> None:
        step()
        label = f"v{version} to {stage}" + (" archiving" if archive else "")
        r.call(label, lambda: s.transition_model_version_stage("m", str(version), stage, archive),
               lambda v: (int(v.version), v.current_stage))
        r.call(f"after {label}", lambda: seen(s))

    move(1, "Staging", False)
    move(2, "Staging", False)
    move(3, "Staging", True)         # archives 1 and 2
    move(1, "Production", False)     # an archived one again
    move(4, "Production", True)      # archives 1
    move(1, "Production", False)     # back, after the archiving: 1 and 4 in Production
    move(5, "Production", True)      # archives 1 and 4
    step()
    r.call("delete v5", lambda: s.delete_model_version("m", "5"))
    r.call("after deleting v5", lambda: seen(s))   # 1 and 4 stay archived
    move(2, "Production", True)      # nothing left in Production to archive
    move(3, "None", False)           # leaves Staging
    move(4, "Staging", True)
    move(4, "Staging", True)         # into the stage it is in
    move(6, "Staging", False)
    move(2, "Staging", True)         # archives 4 and 6, leaves Production empty
    move(1, "Production", True)
    step()
    r.call("rename", lambda: s.rename_registered_model("m", "n"), lambda m: m.name)
    step()
    r.call("v3 to Production in the renamed model",
           lambda: s.transition_model_version_stage("n", "3", "Production", True),
           lambda v: (int(v.version), v.current_stage))
    r.call("renamed", lambda: seen(s, "n"))
    r.call("a new version", lambda: s.create_model_version("n", "s3://bucket/v7"),
           lambda v: (int(v.version), v.current_stage))
    r.call("with the new version", lambda: seen(s, "n"))
    return r.out


def test_transitions_same_as_sqlite(mlflow_reference: Callable[[], MlflowReference],
                                    store: Store) -> None:
    expected = transitions(mlflow_reference().registry_store())
    r = registry_store(store)
    assert_same_calls(expected, transitions(r), "MLflow's sqlite registry")
    assert stored_stages(r, "n") == seen(r, "n")["search"], \
        "a finished transition leaves the records saying what readers see"


# -- a transition cut short ----------------------------------------------------------------------


def populate(s: Any) -> None:
    s.create_registered_model("m")
    for i in range(1, 4):
        s.create_model_version("m", f"s3://bucket/v{i}")
    s.transition_model_version_stage("m", "1", "Production", False)
    s.transition_model_version_stage("m", "3", "Staging", False)
    step()


def cut_transition(s: Any) -> Any:
    """The transition cut short in the tests below: v2 to Production, archiving v1."""
    return s.transition_model_version_stage("m", "2", "Production", True)


def afterwards(s: Any) -> list[Any]:
    """What users do next: the one archived goes back, another transition archives."""
    r = Recorder()
    step()
    r.call("v1 to Staging", lambda: s.transition_model_version_stage("m", "1", "Staging", False),
           lambda v: v.current_stage)
    r.call("after v1 to Staging", lambda: seen(s))
    step()
    r.call("v3 to Production archiving",
           lambda: s.transition_model_version_stage("m", "3", "Production", True),
           lambda v: v.current_stage)
    r.call("after v3 to Production", lambda: seen(s))
    return r.out


def afterwards_deleting(s: Any) -> list[Any]:
    """What users may do next too: the version moved is deleted (the one it archived stays
    archived), that one goes back, a new version is moved in archiving."""
    r = Recorder()
    step()
    r.call("delete v2", lambda: s.delete_model_version("m", "2"))
    r.call("after deleting v2", lambda: seen(s))
    step()
    r.call("v1 to Production",
           lambda: s.transition_model_version_stage("m", "1", "Production", False),
           lambda v: v.current_stage)
    r.call("v4", lambda: s.create_model_version("m", "s3://bucket/v4"), lambda v: v.version)
    step()
    r.call("v4 to Production archiving",
           lambda: s.transition_model_version_stage("m", "4", "Production", True),
           lambda v: v.current_stage)
    r.call("after v4 to Production", lambda: seen(s))
    return r.out


def reference(mlflow_reference: Callable[[], MlflowReference], done: bool) -> Any:
    """MLflow's sqlite registry after ``populate`` and, when ``done``, the transition."""
    sqlite = mlflow_reference().registry_store()
    populate(sqlite)
    if done:
        cut_transition(sqlite)
    return sqlite


def assert_cut_left_one_of(clean: BlobRegistryStore, sqlite_not_done: Any, sqlite_done: Any,
                           then: Callable[[Any], list[Any]] = afterwards) -> bool:
    """What ``clean`` readers see equals the transition not done or done (which one: the
    answer); then it and sqlite go on alike (``then``), and the records end up saying what
    readers see."""
    view = seen(clean)
    production = view["per stage"]["Production"]
    assert len(production) == 1, f"readers see versions {production} in Production together"
    done = view == seen(sqlite_done)
    assert done or view == seen(sqlite_not_done), f"neither not done nor done: {view}"
    assert_same_calls(then(sqlite_done if done else sqlite_not_done), then(clean),
                      "MLflow's sqlite registry")
    assert stored_stages(clean) == seen(clean)["search"]
    return done


#: The writes of the transition, in order: the model record (the commit), the moved version,
#: the archived one.
WRITE_ORDER = ["registry/models/", "registry/versions/", "registry/versions/"]


@pytest.mark.parametrize("kind", ["503", "lost_answer_503"])
@pytest.mark.parametrize("cut", [1, 2, 3])
@pytest.mark.parametrize("backend", CLOUDS)
def test_a_transition_cut_short_by_faults(
        faulty: FaultyFactory, backend: str, cut: int, kind: str,
        monkeypatch: pytest.MonkeyPatch, mlflow_reference: Callable[[], MlflowReference]) -> None:
    """From its ``cut``-th write on, every request of the archiving transition fails (503:
    before the service wrote; lost_answer_503: it wrote, the answer is lost), on every
    attempt: the call raises.  Readers see the transition not done (only when its first write
    never landed) or done — the old code, which wrote the moved version first, showed v1 and
    v2 in Production once its second write (v1 archived) failed — and everything after
    behaves as in MLflow's sqlite store."""
    fs = faulty(backend, rate=0.0, kinds=[kind], methods=WRITES, retry_after=0)
    r = registry(fs.uri, fs.env, CLOUDTRACK_MAX_ATTEMPTS="2")
    populate(r)
    written: list[str] = []
    for method in ("put", "put_if_absent", "put_if_version", "delete"):
        real = getattr(r.blobs, method)

        def write(key: str, *args: Any, _real: Any = real) -> Any:
            if key.startswith("index/"):  # the registry's pages, written in the background
                return _real(key, *args)
            written.append(key)
            if len(written) < cut:
                return _real(key, *args)
            fs.proxy.configure(rate=1.0)
            try:
                return _real(key, *args)
            finally:
                fs.proxy.configure(rate=0.0)

        monkeypatch.setattr(r.blobs, method, write)
    with pytest.raises(MlflowException):
        cut_transition(r)
    assert fs.proxy.stats()["faults"][kind] >= 1

    clean = registry(fs.uri, fs.direct_env)
    done = assert_cut_left_one_of(clean, reference(mlflow_reference, False),
                                  reference(mlflow_reference, True))
    assert done == (cut > 1 or kind == "lost_answer_503")
    assert ["/".join(k.split("/")[:2]) + "/" for k in written] == WRITE_ORDER[:cut]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from cloudtrack.blobs.base import Blobs

    kill_after = int(sys.argv[1])   # writes; 0: right before the first
    real = Blobs.put_if_version
    done = []

    def put_if_version(self, key, data, version):
        if key.startswith("index/"):  # the registry's pages, written in the background
            return real(self, key, data, version)
        if len(done) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        got = real(self, key, data, version)
        done.append(key)
        if len(done) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return got

    Blobs.put_if_version = put_if_version
    from mlflow import MlflowClient
    MlflowClient().transition_model_version_stage("m", "2", "Production",
                                                  archive_existing_versions=True)
    print("not killed")
""")


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
@pytest.mark.parametrize("kill_after", [0, 1, 2])
def test_a_transition_killed_between_its_writes(
        store: Store, kill_after: int, mlflow_reference: Callable[[], MlflowReference]) -> None:
    """SIGKILL right before the transition's first write (nothing written: not done), after
    it (the model record: done), after the second (the moved version: done, v1 not yet
    archived in its record).  Readers see not done or done, never v1 and v2 in Production —
    the old code, which wrote the moved version first, showed both after its first write —
    and deleting the moved version does not bring v1 back."""
    r = registry_store(store)
    populate(r)
    env = {**os.environ, **store.env, "MLFLOW_TRACKING_URI": store.uri,
           "GIT_PYTHON_REFRESH": "quiet"}
    killed = subprocess.run([sys.executable, "-c", CHILD, str(kill_after)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    done = assert_cut_left_one_of(registry_store(store), reference(mlflow_reference, False),
                                  reference(mlflow_reference, True), afterwards_deleting)
    assert done == (kill_after > 0)


# -- what readers pay -----------------------------------------------------------------------------


def cut_after_commit(monkeypatch: pytest.MonkeyPatch, r: BlobRegistryStore) -> None:
    """Run the cut transition on ``r`` with every version write refused: only its commit lands
    (a raise from the blob layer, what a process killed there leaves; the faults and kills
    themselves are tested above)."""
    real = r.blobs.put_if_version

    def cut(key: str, *args: Any) -> Any:
        if key.startswith(layout.MODEL_VERSIONS):
            raise KeyboardInterrupt("cut short after its commit")
        return real(key, *args)

    monkeypatch.setattr(r.blobs, "put_if_version", cut)
    with pytest.raises(KeyboardInterrupt):
        cut_transition(r)
    monkeypatch.undo()


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
def test_readers_pay_no_request_for_a_transition_cut_short(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transition whose version records were never written (its call stopped after its
    commit): get_model_version still costs its two GETs (model, version),
    search_model_versions and get_latest_versions their LISTs and GETs — the model's record,
    which they read anyway, says what the version records do not yet."""
    r = registry_store(store)
    populate(r)
    for i in range(4, 12):
        r.create_model_version("m", f"s3://bucket/v{i}")
        r.transition_model_version_stage("m", str(i), "Staging", False)
    cut_after_commit(monkeypatch, r)
    # The writer's pages are merged by a thread of its own; a reader that came while it still
    # wrote them found a page newer than its listing and paid a GET more (seen once in CI).
    # Closed, as its process's exit would, the pages are done before the reader looks.
    r.close()
    assert r._page_writer.pending() == 0

    reader = registry_store(store)
    counter = Requests(reader)  # type: ignore[arg-type]
    assert reader.get_model_version("m", "1").current_stage == "Archived"
    assert reader.get_model_version("m", "2").current_stage == "Production"
    assert counter.take() == ["_get", "_get"] * 2
    found = reader.search_model_versions("name = 'm'")
    assert sorted(int(v.version) for v in found if v.current_stage == "Production") == [2]
    calls = counter.take()
    assert calls.count("_list_page") == 4 and calls.count("_get") <= 12, \
        "a LIST of the models and of all versions, one of the pages of each, and a GET of " \
        "the model and of each version (or of the pages holding them)"
    assert [int(v.version) for v in reader.get_latest_versions("m", ["Production"])] == [2]
    assert counter.take() == ["_get", "_list_page"], "records cached at their listed version"


# -- records from before the rule, clocks that disagree ------------------------------------------


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
def test_records_written_before_the_rule(store: Store, monkeypatch: pytest.MonkeyPatch,
                                         mlflow_reference: Callable[[], MlflowReference]) -> None:
    """Version records without ``stage_since`` (as the old code wrote them) entered their
    stage before any archiving transition: one cut short after its commit archives them."""
    r = registry_store(store)
    populate(r)
    for i in (1, 2, 3):
        key = layout.model_version(records.read(r.blobs, layout.registered_model("m"))["id"], i)
        rec = records.read(r.blobs, key)
        rec.pop("stage_since", None)
        r.blobs.put(key, records.dumps(rec))
    cut_after_commit(monkeypatch, r)
    assert assert_cut_left_one_of(registry_store(store), reference(mlflow_reference, False),
                                  reference(mlflow_reference, True))


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
def test_clocks_that_disagree(store: Store, monkeypatch: pytest.MonkeyPatch,
                              mlflow_reference: Callable[[], MlflowReference]) -> None:
    """A writer whose clock is an hour ahead moves v1 into Production, then one with the right
    clock moves v2 there archiving — cut short after its commit — and one whose clock is an
    hour behind moves v3 there without archiving: v1 is archived and v3 is not, as in MLflow's
    sqlite store, though by the clocks v1 entered after v2 and v3 before it.  (The clocks are
    shifted by patching the registry's clock: no service makes this process's clocks differ.)"""
    import cloudtrack.model_registry as registry_module

    real_now = registry_module.get_current_time_millis

    def calls(s: Any, cut: Callable[[Any], None]) -> list[Any]:
        s.create_registered_model("m")
        for i in range(1, 4):
            s.create_model_version("m", f"s3://bucket/v{i}")
        step()
        with monkeypatch.context() as m:
            m.setattr(registry_module, "get_current_time_millis", lambda: real_now() + 3_600_000)
            s.transition_model_version_stage("m", "1", "Production", False)
        step()
        cut(s)
        step()
        with monkeypatch.context() as m:
            m.setattr(registry_module, "get_current_time_millis", lambda: real_now() - 3_600_000)
            s.transition_model_version_stage("m", "3", "Production", False)
        r = Recorder()
        r.call("after", lambda: {k: v for k, v in seen(s).items()
                                 if k != "stamped with the model"})
        return r.out

    def cut(s: Any) -> None:
        if isinstance(s, BlobRegistryStore):
            cut_after_commit(monkeypatch, s)
        else:
            cut_transition(s)

    expected = calls(mlflow_reference().registry_store(), cut)
    r = registry_store(store)
    assert_same_calls(expected, calls(r, cut), "MLflow's sqlite registry")
