"""``mlflow gc`` on a cloudtrack store, compared with ``mlflow gc`` on MLflow's sqlite store (the
spec): its options (``--run-ids``, ``--experiment-ids``, ``--logged-model-ids``,
``--older-than``) through its click command in this process, and the store methods it calls
(``_hard_delete_*``, ``_get_deleted_*``) under what other processes do meanwhile.  Every
backend, real services; test_gc_command.py runs the command as a process of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import RunStatus, ViewType
from mlflow.exceptions import MlflowException

from cloudtrack.check import check
from cloudtrack.store import layout, pages, purge
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference
from tests.housekeeping.scenario import (
    gc_in_process,
    keys_of,
    log_run,
    observe,
    populate,
    reuse_name,
    traces,
)


def _late(s: Any, ids: dict[str, str], tmp: Path) -> None:
    """Deleted just before gc runs: too young for ``--older-than``."""
    ids["late"] = log_run(s, ids["keep"], "late", None)
    ids["m-late"] = s.create_logged_model(ids["keep"], name="m-late").model_id
    ids["drop2"] = s.create_experiment("drop2")
    s.delete_run(ids["late"])
    s.delete_logged_model(ids["m-late"])
    s.delete_experiment(ids["drop2"])


def _steps(ids: dict[str, str]) -> list[tuple[str, list[str]]]:
    """Calls gc refuses.  Each carries --older-than where it would otherwise first remove
    every deleted run and experiment (in an order of its own), as MLflow's gc does."""
    day = ["--older-than", "1d"]
    return [
        ("an active run", ["--run-ids", ids["r-live"], *day]),
        ("an active experiment", ["--experiment-ids", ids["keep"]]),
        ("an active logged model", ["--logged-model-ids", ids["m-live"], *day]),
        ("a run deleted just now", ["--run-ids", ids["r-del"], *day]),
        ("an experiment deleted just now", ["--experiment-ids", ids["drop"], *day]),
        ("a model deleted just now", ["--logged-model-ids", ids["m-del"], *day]),
        ("nothing is a day old", day),
        ("a run that does not exist", ["--run-ids", "f" * 32, *day]),
        ("a bad age", ["--older-than", "yesterday"]),
    ]


def test_gc_options_decide_as_on_sqlite(
        cloud: BlobTrackingStore, mlflow_reference: Callable[[], MlflowReference],
        tmp_path: Path) -> None:
    """--run-ids, --experiment-ids, --logged-model-ids, --older-than: refusals refuse and
    change nothing, and each accepted combination removes exactly what sqlite's removes."""
    ref = mlflow_reference()
    sqlite = ref.tracking_store()
    ids_sql = populate(sqlite, tmp_path)
    ids = populate(cloud, tmp_path)
    before = observe(sqlite, ids_sql)
    assert observe(cloud, ids) == before

    for what, args in _steps(ids):
        args_sql = [ids_sql[next(k for k, v in ids.items() if v == a)] if a in ids.values()
                    else a for a in args]
        code_sql, text_sql = gc_in_process(ref.uri, *args_sql)
        code, text = gc_in_process(cloud.store_uri, *args)
        assert (code != 0) == (code_sql != 0), f"{what}: sqlite {text_sql!r} / cloud {text!r}"
        assert (code != 0) == (what != "nothing is a day old"), f"{what}: {text}"
        assert "permanently deleted" not in text, what
        assert observe(cloud, ids) == before, what

    time.sleep(2.2)  # what populate deleted is now older than 2s
    for s, i, uri in ((sqlite, ids_sql, ref.uri), (cloud, ids, cloud.store_uri)):
        _late(s, i, tmp_path)
        code, text = gc_in_process(uri, "--older-than", "2s")
        assert code == 0, text
    after = observe(cloud, ids)
    assert after == observe(sqlite, ids_sql)
    assert after["r-del"] == after["b1"] == after["m-del"] == ("error", "RESOURCE_DOES_NOT_EXIST")
    assert cloud.get_run(ids["late"]).info.lifecycle_stage == "deleted"
    assert cloud.get_experiment(ids["drop2"]).lifecycle_stage == "deleted"
    assert cloud.get_logged_model(ids["m-late"], allow_deleted=True) is not None

    for i, uri in ((ids_sql, ref.uri), (ids, cloud.store_uri)):
        code, text = gc_in_process(uri, "--run-ids", i["late"], "--logged-model-ids",
                                   i["m-late"], "--experiment-ids", i["drop2"])
        assert code == 0, text
    for label in ("late", "m-late"):
        with pytest.raises(MlflowException, match="not found"):
            (cloud.get_run(ids[label]) if label == "late"
             else cloud.get_logged_model(ids[label], allow_deleted=True))
    assert [e.name for e in cloud.search_experiments(ViewType.ALL)] == \
        [e.name for e in sqlite.search_experiments(ViewType.ALL)]
    assert traces(keys_of(cloud), ids, ["late", "m-late"]) == []
    assert reuse_name(cloud) == reuse_name(sqlite)


def test_hard_delete_of_a_deleted_experiment_takes_everything_in_it(
        cloud: BlobTrackingStore, tmp_path: Path) -> None:
    """Like sqlite's cascade: runs whatever their stage (one restored after the experiment
    was deleted), logged models, pages; and, beyond sqlite, the artifacts under the store's
    own default location.  An experiment that takes the id next sees none of it."""
    artifact = tmp_path / "a.txt"
    artifact.write_text("a")
    exp = cloud.create_experiment("cascade")
    runs = [log_run(cloud, exp, f"r{i}", artifact) for i in range(3)]
    model = cloud.create_logged_model(exp, name="m").model_id
    cloud.delete_experiment(exp)
    cloud.restore_run(runs[0])
    cloud._page_writer.write()
    assert any(k.startswith(layout.head_pages(exp)) for k in keys_of(cloud))
    with pytest.raises(MlflowException, match=r"No Experiment with id=0 exists"):
        cloud._hard_delete_experiment("0")  # active: refused in sqlite's words
    cloud._hard_delete_experiment(exp)
    left = keys_of(cloud)
    assert [k for k in left if any(r in k for r in [*runs, model])] == []
    assert [k for k in left if k.startswith((layout.experiment(exp), layout.heads(exp),
                                             f"{layout.INDEX}heads/{exp}/",
                                             f"{layout.ARTIFACTS}/{exp}/"))] == []
    again = cloud.create_experiment("cascade")
    assert again == exp  # the id is free again, as on sqlite
    assert cloud.search_runs([again], "", ViewType.ALL) == []
    assert list(cloud.search_logged_models([again])) == []
    with pytest.raises(MlflowException, match="not found"):
        cloud.get_run(runs[0])


def test_a_run_restored_before_its_hard_delete_is_kept(cloud: BlobTrackingStore) -> None:
    """gc lists the deleted runs, then deletes them one by one: one restored in between is
    read again and refused, whole."""
    exp = cloud.create_experiment("restore")
    rid = log_run(cloud, exp, "r", None)
    cloud.delete_run(rid)
    assert rid in cloud._get_deleted_runs()
    other = tracking_store_like(cloud)
    other.restore_run(rid)
    with pytest.raises(MlflowException, match="not in the deleted lifecycle stage"):
        cloud._hard_delete_run(rid)
    run = other.get_run(rid)
    assert run.info.lifecycle_stage == "active" and run.data.params == {"p": "r"}
    assert [m.step for m in other.get_metric_history(rid, "m")] == list(range(5))
    other.close()


def tracking_store_like(s: BlobTrackingStore) -> BlobTrackingStore:
    """Another process's store on the same store (its own caches)."""
    return BlobTrackingStore(s.store_uri, config=s.config)


def test_page_entries_of_hard_deleted_runs_go_and_never_show_a_run(
        cloud: BlobTrackingStore) -> None:
    exp = cloud.create_experiment("paged")
    runs = [log_run(cloud, exp, f"r{i:02d}", None) for i in range(24)]
    cloud._page_writer.write()
    gone = runs[:6]
    for rid in gone:
        cloud.delete_run(rid)
    cloud._page_writer.write()
    old = {rid: cloud.blobs.get_versioned(layout.head(exp, rid)) for rid in gone}
    for rid in cloud._get_deleted_runs():
        cloud._hard_delete_run(rid)
    entries: dict[str, Any] = {}
    for info in cloud.blobs.list(layout.head_pages(exp)):
        entries.update(pages.unpack(cloud.blobs.get(info.key))[1])
    assert {layout.head(exp, r) for r in runs[6:]} <= set(entries)
    assert not {layout.head(exp, r) for r in gone} & set(entries)
    # A page writer that was late puts an entry back (or the drop lost its races): readers
    # take entries only for heads a fresh listing shows, so the run stays gone.
    pages.merge(cloud.blobs, layout.head_pages(exp),
                {layout.head(exp, r): (v, data) for r, (data, v) in old.items()})
    reader = tracking_store_like(cloud)
    found = reader.search_runs([exp], "", ViewType.ALL, max_results=None)
    assert sorted(r.info.run_id for r in found) == sorted(runs[6:])
    assert purge.drop_page_entries(cloud.blobs, layout.head_pages(exp),
                                   [layout.head(exp, r) for r in gone]) == len(gone)
    reader.close()


def test_gc_of_finished_and_running_runs_keeps_search_whole(cloud: BlobTrackingStore) -> None:
    """A deleted run that was still RUNNING (never in a page) goes the same way."""
    exp = cloud.create_experiment("running")
    running = log_run(cloud, exp, "running", None, finish=False)
    done = log_run(cloud, exp, "done", None)
    cloud.update_run_info(done, RunStatus.FAILED, 3_000, None)
    cloud.delete_run(running)
    cloud._hard_delete_run(running)
    assert [r.info.run_name for r in cloud.search_runs([exp], "", ViewType.ALL)] == ["done"]
    with pytest.raises(MlflowException, match="not found"):
        cloud.get_metric_history(running, "m")


class Killed(Exception):
    """Stands for the process dying at that point (no real service can make a client die
    between two given requests; the requests before it are real)."""


def test_a_hard_delete_killed_half_way_is_finished_by_gc_or_check(
        cloud: BlobTrackingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = cloud.create_experiment("crash")
    runs = [log_run(cloud, exp, f"r{i}", None) for i in range(3)]
    cloud.delete_experiment(exp)
    cloud._page_writer.write()  # (else its late pages of the experiment are check's to find)
    real_delete = cloud.blobs.delete
    deleted: list[str] = []

    def dies_on_second_head(key: str) -> None:
        if key.startswith(layout.heads(exp)) and len([k for k in deleted
                                                     if k.startswith(layout.heads(exp))]) == 1:
            raise Killed(key)
        deleted.append(key)
        real_delete(key)

    # Killed among the runs: the experiment is still there, deleted, and gc finishes it.
    monkeypatch.setattr(cloud.blobs, "delete", dies_on_second_head)
    with pytest.raises(Killed):
        cloud._hard_delete_experiment(exp)
    monkeypatch.setattr(cloud.blobs, "delete", real_delete)
    assert cloud.get_experiment(exp).lifecycle_stage == "deleted"
    assert len(cloud.search_runs([exp], "", ViewType.ALL)) == 2
    other = tracking_store_like(cloud)
    other._hard_delete_experiment(exp)
    assert cloud.get_experiment_by_name("crash") is None

    # Killed between the name claim and the record: no reader sees the experiment (its
    # record is pending, no claim points at it), the name is free, check removes the rest.
    exp = cloud.create_experiment("crash2")
    cloud.delete_experiment(exp)

    def dies_on_record(key: str) -> None:
        if key == layout.experiment(exp):
            raise Killed(key)
        real_delete(key)

    monkeypatch.setattr(cloud.blobs, "delete", dies_on_record)
    with pytest.raises(Killed):
        cloud._hard_delete_experiment(exp)
    monkeypatch.setattr(cloud.blobs, "delete", real_delete)
    assert exp not in [e.experiment_id for e in other.search_experiments(ViewType.ALL)]
    with pytest.raises(MlflowException, match="No Experiment"):
        other.get_experiment(exp)
    assert other.create_experiment("crash2") != exp
    report = check(cloud.blobs, repair_=True, grace=0)
    assert [(f.kind, f.subject) for f in report.problems] == \
        [("pending_experiment", layout.experiment(exp))]
    assert report.exit_code == 0 and not cloud.blobs.exists(layout.experiment(exp))
    assert not [k for k in keys_of(cloud) for r in runs if r in k]
    other.close()


def test_artifacts_another_experiment_was_given_are_kept(
        cloud: BlobTrackingStore, tmp_path: Path) -> None:
    """An experiment created with an artifact location inside another's default folder keeps
    its artifacts when that other one is hard-deleted."""
    artifact = tmp_path / "a.txt"
    artifact.write_text("a")
    a = cloud.create_experiment("owner")
    inside = cloud.get_experiment(a).artifact_location + "/guest"
    b = cloud.create_experiment("guest", artifact_location=inside)
    rid = log_run(cloud, b, "guest-run", artifact)
    cloud.delete_experiment(a)
    cloud._hard_delete_experiment(a)
    assert [k for k in keys_of(cloud) if rid in k and k.startswith(layout.ARTIFACTS)]
    assert cloud.get_run(rid).info.lifecycle_stage == "active"
