"""``cloudtrack check``: each kind of damage a test plants is found (one test per kind), and
``--repair`` removes exactly the garbage — every object that was there before the damage
reads back byte for byte, and MLflow reads back the same store — while damage it cannot
prove to be garbage (a record that does not parse, an object of unknown kind, anything
younger than the grace period) stays.  Real services: every kind on a local store, all kinds
at once on every backend."""

from __future__ import annotations

import gzip
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType

from cloudtrack.blobs import Blobs
from cloudtrack.check import HARMLESS, check
from cloudtrack.cli import main
from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.store import build, layout, pages, records
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.services import Store
from tests.fixtures.stores import registry_store, tracking_store
from tests.housekeeping.scenario import log_run


class Base:
    """A small store with one of everything: an experiment, a finished run with history and
    an artifact, a logged model with an artifact, a registered model with a version."""

    def __init__(self, store: Store, tmp: Path) -> None:
        self.store = store
        self.s: BlobTrackingStore = tracking_store(store, strict=True)
        self.reg: BlobRegistryStore = registry_store(store)
        self.blobs: Blobs = self.s.blobs
        artifact = tmp / "weights.txt"
        artifact.write_text("0.5\n")
        self.exp = self.s.create_experiment("base")
        self.run = log_run(self.s, self.exp, "run", artifact)
        self.other = log_run(self.s, self.exp, "other", None)
        self.model = self.s.create_logged_model(self.exp, name="lm").model_id
        model_artifacts = layout.ARTIFACTS + f"/{self.exp}/models/{self.model}/artifacts/"
        self.blobs.put(model_artifacts + "MLmodel", b"flavors: {}\n")
        self.reg.create_registered_model("rm")
        self.reg.create_model_version("rm", f"runs:/{self.run}/model", self.run)
        self.s._page_writer.write()
        self.reg_id = next(iter(records.read(self.blobs, k)["id"] for k in
                                [i.key for i in self.blobs.list(layout.REGISTERED_MODELS)]))

    def objects(self) -> dict[str, bytes]:
        """Every object but the pages (a cache, rewritten by a repair) and their bytes."""
        return {i.key: self.blobs.get(i.key) for i in self.blobs.list("")
                if not i.key.startswith(layout.INDEX)}

    def readback(self) -> Any:
        """What a new process's MLflow stores read of the store."""
        s = BlobTrackingStore(self.s.store_uri, config=self.s.config)
        reg = BlobRegistryStore(self.s.store_uri, config=self.s.config)
        try:
            exps = sorted((e.experiment_id, e.name, e.lifecycle_stage)
                          for e in s.search_experiments(ViewType.ALL))
            runs = sorted((r.info.run_id, r.info.run_name, r.data.params, r.data.metrics,
                           r.data.tags) for r in s.search_runs([self.exp], "", ViewType.ALL))
            by_id = [(r, s.get_run(r).data.params,
                      [(m.value, m.step) for m in s.get_metric_history(r, "m")])
                     for r in (self.run, self.other)]
            by_name = s.get_experiment_by_name("base")
            model = s.get_logged_model(self.model)
            models = [m.model_id for m in s.search_logged_models([self.exp])]
            versions = [(v.name, v.version, v.source)
                        for v in reg.search_model_versions("name = 'rm'")]
            return (exps, runs, by_id, by_name and by_name.experiment_id,
                    (model.name, model.experiment_id), models, versions)
        finally:
            s.close()

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def base(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Base]:
    for k, v in store.env.items():
        monkeypatch.setenv(k, v)
    b = Base(store, tmp_path)
    yield b
    b.close()


def _hex() -> str:
    return uuid.uuid4().hex


def _json(obj: object) -> bytes:
    return records.dumps(obj)


# Each planter damages the store the way a crashed writer, a half-done hard delete or a
# hand-edit would; it returns the keys it changed on purpose (left out of the byte compare).

def _unreadable_record(b: Base) -> set[str]:
    key = layout.head(b.exp, _hex())
    b.blobs.put(key, b"{not json")
    return {key}


def _unknown_object(b: Base) -> set[str]:
    b.blobs.put("stray/notes.txt", b"hello")
    return {"stray/notes.txt"}


def _unreadable_page(b: Base) -> set[str]:
    key = pages.page_key(layout.head_pages(b.exp), "0" * 8)
    b.blobs.put(key, b"not gzip")
    return {key}


def _pending_experiment(b: Base) -> set[str]:
    key = layout.experiment("99")
    b.blobs.put(key, _json({"experiment_id": "99", "name": "ghost", "pending": True,
                            "lifecycle_stage": "active", "artifact_location": "x",
                            "creation_time": 1, "last_update_time": 1, "tags": {}}))
    return {key}


def _experiment_without_name(b: Base) -> set[str]:
    key = layout.experiment_name("base")
    b.blobs.delete(key)
    return set()  # written back by the repair, the same bytes


def _name_without_experiment(b: Base) -> set[str]:
    key = layout.experiment_name("nobody")
    b.blobs.put(key, _json({"experiment_id": "77"}))
    return {key}


def _copied_head(b: Base, exp: str, run_id: str) -> bytes:
    head = records.read(b.blobs, layout.head(b.exp, b.run))
    head["info"].update(run_id=run_id, experiment_id=exp)
    return _json(head)


def _run_of_missing_experiment(b: Base) -> set[str]:
    rid = _hex()
    keys = {layout.head("55", rid), layout.run_index(rid), layout.history_batch(rid, "b")}
    b.blobs.put(layout.head("55", rid), _copied_head(b, "55", rid))
    b.blobs.put(layout.run_index(rid), _json({"experiment_id": "55"}))
    b.blobs.put(layout.history_batch(rid, "b"), _json({"metrics": []}))
    return keys


def _head_without_run_index(b: Base) -> set[str]:
    b.blobs.delete(layout.run_index(b.run))
    return set()


def _run_index_mismatch(b: Base) -> set[str]:
    rid = _hex()
    b.blobs.put(layout.head(b.exp, rid), _copied_head(b, b.exp, rid))
    b.blobs.put(layout.run_index(rid), _json({"experiment_id": "0"}))
    return {layout.head(b.exp, rid), layout.run_index(rid)}


def _run_index_without_head(b: Base) -> set[str]:
    rid = _hex()
    b.blobs.put(layout.run_index(rid), _json({"experiment_id": b.exp}))
    b.blobs.put(layout.history_batch(rid, "b"), _json({"metrics": []}))
    return {layout.run_index(rid), layout.history_batch(rid, "b")}


def _history_without_run(b: Base) -> set[str]:
    key = layout.history_batch(_hex(), "0001-x")
    b.blobs.put(key, _json({"metrics": [["m", 1.0, 1, 0, None, None, None]]}))
    return {key}


def _logged_model_of_missing_experiment(b: Base) -> set[str]:
    mid = f"m-{_hex()}"
    rec = records.read(b.blobs, layout.logged_model(b.exp, b.model))
    b.blobs.put(layout.logged_model("55", mid), _json({**rec, "model_id": mid}))
    b.blobs.put(layout.logged_model_index(mid), _json({"experiment_id": "55"}))
    return {layout.logged_model("55", mid), layout.logged_model_index(mid)}


def _logged_model_without_index(b: Base) -> set[str]:
    b.blobs.delete(layout.logged_model_index(b.model))
    return set()


def _model_index_without_model(b: Base) -> set[str]:
    key = layout.logged_model_index(f"m-{_hex()}")
    b.blobs.put(key, _json({"experiment_id": b.exp}))
    return {key}


def _pages_of_missing_experiment(b: Base) -> set[str]:
    page = next(iter(b.blobs.list(layout.head_pages(b.exp)))).key
    key = layout.head_pages("55") + page.rsplit("/", 1)[-1]
    b.blobs.put(key, b.blobs.get(page))
    return {key}


def _stale_page_entries(b: Base) -> set[str]:
    key = layout.head(b.exp, _hex())
    pages.merge(b.blobs, layout.head_pages(b.exp), {key: ("v1", b"{}")})
    return set()


def _snapshot_of_missing_experiment(b: Base) -> set[str]:
    key = layout.head_snapshot("55")
    b.blobs.put(key, gzip.compress(json.dumps({"heads": {}, "written": 1}).encode()))
    return {key}


def _versions_of_missing_model(b: Base) -> set[str]:
    key = layout.model_version(_hex(), 1)
    b.blobs.put(key, b.blobs.get(layout.model_version(b.reg_id, 1)))
    return {key}


def _artifacts_of_missing_run(b: Base) -> set[str]:
    key = f"{layout.ARTIFACTS}/{b.exp}/{_hex()}/artifacts/model.pkl"
    b.blobs.put(key, b"x" * 1000)
    return {key}


def _artifacts_of_missing_model(b: Base) -> set[str]:
    key = f"{layout.ARTIFACTS}/{b.exp}/models/m-{_hex()}/artifacts/MLmodel"
    b.blobs.put(key, b"flavors: {}\n")
    return {key}


PLANTERS: dict[str, Callable[[Base], set[str]]] = {
    name.lstrip("_"): fn for name, fn in list(globals().items())
    if name.startswith("_") and callable(fn) and name.lstrip("_") in {
        "unreadable_record", "unknown_object", "unreadable_page", "pending_experiment",
        "experiment_without_name", "name_without_experiment", "run_of_missing_experiment",
        "head_without_run_index", "run_index_mismatch", "run_index_without_head",
        "history_without_run", "logged_model_of_missing_experiment",
        "logged_model_without_index", "model_index_without_model",
        "pages_of_missing_experiment", "stale_page_entries", "snapshot_of_missing_experiment",
        "versions_of_missing_model", "artifacts_of_missing_run", "artifacts_of_missing_model"}
}
#: Kinds a repair leaves (nothing about them is provable).
KEPT = {"unreadable_record", "unknown_object", "run_index_mismatch"}


def _settled(report: dict[str, Any]) -> dict[str, int]:
    """The counts of a report but stale page entries, which a page writer still running in
    this process (the planting one) may leave at any moment: harmless, repaired next time."""
    return {k: n for k, n in report["counts"].items() if k != "stale_page_entries"}


def _check(uri: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["check", uri, "--json", "--grace", "0", *args])
    assert result.exit_code in (0, 1), result.output + repr(result.exception)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("kind", sorted(PLANTERS))
def test_check_finds_the_damage_and_repair_removes_only_garbage(base: Base, kind: str) -> None:
    code, report = _check(base.s.store_uri)
    assert (code, report["counts"]) == (0, {}), report["findings"]
    before, reads = base.objects(), base.readback()

    planted = PLANTERS[kind](base)
    sizes = {k: len(base.blobs.get(k)) for k in planted if base.blobs.exists(k)}
    damaged = base.readback() if kind in KEPT else None
    code, report = _check(base.s.store_uri)
    assert report["counts"] == {kind: 1}, report["findings"]
    assert report["whole"] == (kind in HARMLESS) and code == (0 if kind in HARMLESS else 1)

    code, dry = _check(base.s.store_uri, "--repair", "--dry-run")
    assert dry["objects_removed"] == 0 and dry["counts"] == {kind: 1}
    code, repaired = _check(base.s.store_uri, "--repair")
    after = base.objects()
    assert {k: v for k, v in after.items() if k not in planted} == \
        {k: v for k, v in before.items() if k not in planted}, "a repair changed data"
    # What a repair leaves reads as it did; everything else reads as before the damage.
    assert base.readback() == (damaged if kind in KEPT else reads)
    code, again = _check(base.s.store_uri)
    if kind in KEPT:
        assert _settled(again) == {kind: 1} and set(planted) <= set(after)
        assert code == repaired["exit_code"] == (0 if kind in HARMLESS else 1)
    else:
        assert (code, _settled(again)) == (0, {}), again["findings"]
        assert repaired["exit_code"] == 0 and repaired["repaired"] == 1
        gone = planted - set(after)
        assert repaired["objects_removed"] == len(gone)
        assert repaired["bytes_reclaimed"] == sum(sizes[k] for k in gone)
        assert dry["plan"]["bytes"] == sum(sizes[k] for k in gone)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_temporary_file_of_a_killed_local_writer(store: Store) -> None:
    """Only a local store writes through temporary files (renamed into place)."""
    s = tracking_store(store, strict=True)
    root = Path(s.blobs.root)  # type: ignore[attr-defined]
    dead = root / "heads" / ".cloudtrack-tmp-999999999-abc"
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_bytes(b"half a head")
    live = root / "heads" / f".cloudtrack-tmp-{os.getpid()}-def"
    live.write_bytes(b"being written")
    code, report = _check(s.store_uri)
    assert code == 1 and report["counts"] == {"temporary_file": 2}
    code, report = _check(s.store_uri, "--repair")
    assert code == 0 and report["bytes_reclaimed"] == len(b"half a head")
    assert not dead.exists()
    # A live writer's file is never garbage, however old and whatever the grace period.
    assert live.exists()
    assert [f["young"] for f in report["findings"] if f["subject"].endswith("-def")] == [True]
    s.close()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_stale_entry_is_dropped_from_the_page_it_is_in(base: Base) -> None:
    """A stale entry whose path also runs through a deeper page (here an unreadable one, as
    ``cloudtrack check`` runs into after a crash or a hand edit) is dropped from the page it
    was found in.  The drop used to look only in the deepest page on the path, left the entry,
    and a second check found it again; that needed the 1 in 256 such key in the test of all
    kinds at once, which is how CI found it."""
    folder = layout.head_pages(base.exp)
    key = next(k for k in (layout.head(base.exp, _hex()) for _ in range(100_000))
               if pages.key_bits(k, 8) == "0" * 8)
    pages.merge(base.blobs, folder, {key: ("v1", b"{}")})
    base.blobs.put(pages.page_key(folder, "0" * 8), b"not gzip")
    code, report = _check(base.s.store_uri, "--repair")
    assert report["counts"] == {"stale_page_entries": 1, "unreadable_page": 1}
    assert report["repaired"] == 2, report
    code, report = _check(base.s.store_uri)
    assert (code, report["counts"]) == (0, {}), report["findings"]
    assert not any(key in pages.unpack(base.blobs.get(i.key))[1]
                   for i in base.blobs.list(folder))


def test_every_kind_at_once_and_nothing_young_is_touched(base: Base) -> None:
    """On every backend: all the damage at once is found, one finding per plant; with the
    default grace period it is all too young to be garbage (a writer could be half-way), so
    a repair changes nothing; past it, the repair leaves the store whole but for what it
    cannot prove."""
    before = base.objects()
    planted: set[str] = set()
    for kind in sorted(PLANTERS):
        planted |= PLANTERS[kind](base)
    uri = base.s.store_uri
    result = CliRunner().invoke(main, ["check", uri, "--json", "--repair"])
    young = json.loads(result.stdout)
    assert young["objects_removed"] == 0
    assert {f["kind"] for f in young["findings"] if f["young"]} == \
        {k for k in PLANTERS if k not in KEPT} - {"head_without_run_index",
                                                  "logged_model_without_index",
                                                  "experiment_without_name",
                                                  "stale_page_entries"}
    # What can be rebuilt is rebuilt whatever its age: it only writes what was lost.
    assert base.blobs.exists(layout.run_index(base.run))

    code, report = _check(uri)
    rebuilt = ("head_without_run_index", "logged_model_without_index", "experiment_without_name",
               "stale_page_entries")
    assert code == 1 and report["counts"] == {k: 1 for k in PLANTERS if k not in rebuilt}
    code, report = _check(uri, "--repair")
    assert code == 1 and report["repaired"] == len(PLANTERS) - len(KEPT) - len(rebuilt)
    code, report = _check(uri)
    assert _settled(report) == {k: 1 for k in KEPT}, report["findings"]
    after = base.objects()
    assert {k: v for k, v in after.items() if k not in planted} == before


def test_artifacts_a_model_version_points_at_are_never_garbage(base: Base) -> None:
    """A registered model version keeps the artifacts of its run, even once the run is
    hard-deleted (MLflow's gc removes the run's artifacts itself, not check)."""
    base.s.delete_run(base.run)
    base.s._hard_delete_run(base.run)
    code, report = _check(base.s.store_uri)
    report["counts"].pop("stale_page_entries", None)  # (a tidy-up; see below)
    assert (code, report["counts"]) == (0, {}), report["findings"]
    assert any(i.key.startswith(f"{layout.ARTIFACTS}/{base.exp}/{base.run}/")
               for i in base.blobs.list(layout.ARTIFACTS + "/"))
    base.reg.delete_registered_model("rm")
    code, report = _check(base.s.store_uri, "--repair")
    # (The registry's delete may leave its page entries: a tidy-up, not a problem.)
    report["counts"].pop("stale_page_entries", None)
    assert code == 0 and report["counts"] == {"artifacts_of_missing_run": 1}
    assert not any(i.key.startswith(f"{layout.ARTIFACTS}/{base.exp}/{base.run}/")
                   for i in base.blobs.list(layout.ARTIFACTS + "/"))


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["check", str(tmp_path), "--grace", "soon"]).exit_code == 2
    assert runner.invoke(main, ["check", str(tmp_path), "--dry-run"]).exit_code == 2
    assert runner.invoke(main, ["check", str(tmp_path / "nothing-here")]).exit_code == 2
    assert runner.invoke(main, ["check"]).exit_code == 2
    assert runner.invoke(main, ["check", "http://localhost:1/x"]).exit_code == 2


def test_progress_is_drawn_on_a_terminal_only(base: Base) -> None:
    import io

    from cloudtrack.cli.check_cmd import Bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        check(base.blobs, progress=Bar(stream))
    assert "reading records" in tty.getvalue() and "[" in tty.getvalue()
    assert pipe.getvalue() == ""
    result = CliRunner().invoke(main, ["check", base.s.store_uri])
    assert result.exit_code == 0 and "the store is whole" in result.stdout
    assert os.linesep not in result.stderr.strip()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_the_old_record_of_an_unfinished_rename_is_garbage(base: Base) -> None:
    """A rename of "rm" to "rm-new" killed after it wrote the new record and before it deleted
    the old one leaves the old record, marked with the new name, beside the new one (same id):
    readers see only "rm-new", a repair removes the old record and nothing else.  A mark
    without the new record (killed before it wrote it) is the live model: left alone."""
    uri = base.s.store_uri
    old_key, new_key = layout.registered_model("rm"), layout.registered_model("rm-new")
    rec = records.read(base.blobs, old_key)

    def names() -> list[Any]:
        reg = BlobRegistryStore(uri, config=base.s.config)
        try:
            return [(m.name, [v.version for v in reg.search_model_versions(
                f"name = '{m.name}'")]) for m in reg.search_registered_models()]
        finally:
            reg.close()

    base.blobs.put(old_key, records.dumps({**rec, build.RENAMED_TO: "rm-new"}))
    assert _check(uri)[1]["counts"] == {}, "a mark alone is no leftover"
    base.blobs.put(new_key, records.dumps({**rec, "name": "rm-new", build.RENAMED_FROM: "rm"}))
    seen = names()
    assert seen == [("rm-new", [1])]
    code, report = _check(uri)
    assert code == 1 and report["counts"] == {"unfinished_rename": 1}, report["findings"]
    before = base.objects()
    code, repaired = _check(uri, "--repair")
    assert code == 0 and repaired["objects_removed"] == 1
    after = base.objects()
    assert set(before) - set(after) == {old_key}
    assert all(after[k] == before[k] for k in after), "a repair changed data"
    assert names() == seen


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["check", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def test_a_folder_of_other_files_holds_no_store(tmp_path: Path) -> None:
    """A mistyped path to a folder of other files is told it holds no store, as an empty
    folder is (exit 2), never that the store is whole — and a repair touches nothing."""
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    (other / "sub").mkdir(parents=True)
    (other / "a.txt").write_text("a\n")
    (other / "sub" / "b.txt").write_text("b\n")
    code, out, err = _cli(str(empty))
    assert (code, out) == (2, "") and "holds no cloudtrack store" in err
    for args in ([], ["--repair", "--grace", "0"], ["--json"]):
        code, out, err = _cli(str(other), *args)
        assert (code, out) == (2, ""), out
        assert err == f"error: {other} holds no cloudtrack store (no cloudtrack.json and no " \
                      "experiment record under it); check the URI\n"
    assert sorted(p.name for p in other.rglob("*")) == ["a.txt", "b.txt", "sub"]
    (other / "cloudtrack.json").write_text('{"format": "something-else"}')
    code, out, err = _cli(str(other))
    assert (code, out) == (2, "") and "holds no cloudtrack store: its cloudtrack.json is of " \
        "format 'something-else'" in err, err


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_store_that_lost_its_marker_is_still_checked(base: Base) -> None:
    """A store's first writer writes the Default experiment before the marker: its records
    make it a store without one (the next writer adds the marker)."""
    base.blobs.delete(layout.MARKER)
    code, report = _check(base.s.store_uri)
    assert (code, _settled(report)) == (0, {}), report["findings"]


def test_a_file_given_as_a_local_store(tmp_path: Path) -> None:
    """One line that says the path is a file, exit 2 (a usage error, as a path that does not
    exist), and the same words where a tracking store is opened on it."""
    path = tmp_path / "afile"
    path.write_text("hi\n")
    for args in ([], ["--repair", "--grace", "0"], ["--json"]):
        code, out, err = _cli(str(path), *args)
        assert (code, out) == (2, "")
        assert err == f"error: {path} is a file, not a store directory: a local store is a " \
                      "directory; check the path\n"
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="is a file, not a store directory") as info:
        BlobTrackingStore(f"file://{path}")
    assert "clash" not in str(info.value)
    assert path.read_text() == "hi\n"


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("record", [{}, {"experiment_id": "77", "name": None,
                                         "artifact_location": "x", "lifecycle_stage": "active"}],
                         ids=["empty", "no-name"])
def test_a_malformed_experiment_record_is_reported_and_kept(base: Base,
                                                            record: dict[str, Any]) -> None:
    """A record that parses but has no name is data a person decides about, as one that does
    not parse: reported under its key, and a repair writes no name claim from it (one for
    "None" would take that name from every experiment) and removes nothing."""
    key = layout.experiment("77")
    base.blobs.put(key, _json(record))
    before = base.objects()
    code, report = _check(base.s.store_uri)
    assert code == 1 and _settled(report) == {"unreadable_record": 1}, report["findings"]
    (found,) = [f for f in report["findings"] if f["kind"] == "unreadable_record"]
    assert found["subject"] == key and "malformed experiment record" in found["detail"]
    assert found["action"] is None
    code, repaired = _check(base.s.store_uri, "--repair")
    assert code == 1 and repaired["repaired"] == 0
    assert base.objects() == before
    assert not base.blobs.exists(layout.experiment_name("None"))
    assert base.s.create_experiment("None")  # the name is free


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_what_a_malformed_experiment_record_held_is_kept(base: Base) -> None:
    """The runs, logged models, pages and artifacts of an experiment whose record became
    malformed are not garbage: restoring the record brings them all back."""
    key = layout.experiment(base.exp)
    good = base.blobs.get(key)
    reads = base.readback()
    base.blobs.put(key, _json({"lifecycle_stage": "active"}))
    before = base.objects()
    code, report = _check(base.s.store_uri, "--repair")
    assert code == 1 and _settled(report) == {"unreadable_record": 1}, report["findings"]
    assert report["objects_removed"] == 0 and base.objects() == before
    base.blobs.put(key, good)
    assert base.readback() == reads
    code, report = _check(base.s.store_uri)
    assert (code, _settled(report)) == (0, {}), report["findings"]


def _summary_numbers(line: str) -> tuple[int, int, int]:
    """(the problem count, the sum of its kinds' counts, the sum of the others' counts) of a
    check's line ``N problem(s): n kind, …; not problems: n kind (why), …``."""
    head, _, rest = line.partition("; not problems: ")
    count, _, kinds = head.partition(" problem(s): ")

    def total(text: str) -> int:
        return sum(int(n) for n in re.findall(r"(?:^|, )(\d+) ", text))
    return int(count), total(kinds), total(rest)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_the_counts_add_up_to_the_findings_listed(base: Base) -> None:
    """Problems (an unreadable record, a malformed experiment record), a finding younger than
    the grace period and harmless ones (an unknown object, stale page entries): the problem
    count is the sum of its kinds, and with the rest it is every finding listed."""
    _unreadable_record(base)
    base.blobs.put(layout.experiment("77"), b"{}")
    _run_index_without_head(base)
    _unknown_object(base)
    _stale_page_entries(base)
    uri = base.s.store_uri
    for args, problems in ((["--grace", "1h"], 2), (["--grace", "0"], 3)):
        code, out, _ = _cli(uri, *args)
        lines = out.splitlines()
        listed = [ln for ln in lines if ln.startswith("  ")]
        summary = next(ln for ln in lines if "problem(s): " in ln)
        count, kinds, rest = _summary_numbers(summary)
        assert (code, count, kinds) == (1, problems, problems), out
        assert count + rest == len(listed) == 5, out
        report = json.loads(CliRunner().invoke(main, ["check", uri, "--json", *args]).stdout)
        assert sum(report["problems"].values()) == problems
        assert sum(report["counts"].values()) == len(report["findings"]) == 5


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_whole_store_says_what_it_did_not_count(base: Base) -> None:
    """Harmless findings only: whole, and each one not counted is named with why (not "younger
    than the grace period" for what is not young)."""
    _unknown_object(base)
    _stale_page_entries(base)
    code, out, _ = _cli(base.s.store_uri, "--grace", "0")
    listed = [ln for ln in out.splitlines() if ln.startswith("  ")]
    assert code == 0 and len(listed) == 2 and all("(harmless: not a problem)" in ln
                                                   for ln in listed), out
    assert "the store is whole (not problems: 1 stale_page_entries (harmless), " \
           "1 unknown_object (harmless))" in out.splitlines(), out
