"""The real ``mlflow gc`` command, run as a user runs it (a process of its own) on a cloudtrack
store of every backend, compared with the same command on MLflow's sqlite store: the same
things go, the same survive, nothing of what went is left in the store, and the name of a
hard-deleted experiment can be used again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlflow.entities import ViewType

from cloudtrack.store import layout, pages
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference
from tests.fixtures.services import Store
from tests.housekeeping.scenario import (
    gc_in_process,
    gc_subprocess,
    keys_of,
    observe,
    populate,
    reuse_name,
    traces,
)


def test_mlflow_gc_command_removes_what_sqlite_removes(
        store: Store, cloud: BlobTrackingStore,
        mlflow_reference: Callable[[], MlflowReference], tmp_path: Path) -> None:
    ref = mlflow_reference()
    sqlite = ref.tracking_store()
    ids_sql = populate(sqlite, tmp_path)
    ids = populate(cloud, tmp_path)
    cloud._page_writer.write()  # as a process long finished would have

    code, text = gc_in_process(ref.uri)
    assert code == 0, text
    done = gc_subprocess(store.uri, store.env)
    assert done.returncode == 0, done.stderr[-3000:]
    # Two deleted runs of `drop`, the deleted run of `keep`, one logged model, one experiment.
    assert done.stdout.count("has been permanently deleted") == \
        text.count("has been permanently deleted") == 5, done.stdout

    after = observe(cloud, ids)
    assert after == observe(sqlite, ids_sql)
    assert after["r-del"] == ("error", "RESOURCE_DOES_NOT_EXIST")
    assert after["r-live"][5] == ["weights.txt"]
    # Nothing of what gc removed is left in the store: heads, history, run and model indexes,
    # page entries, the experiment's record and name, artifacts.
    gone = ["r-del", "b1", "b2", "m-del", "m-b"]
    assert traces(keys_of(cloud), ids, gone) == []
    for info in cloud.blobs.list(layout.INDEX):
        _, entries = pages.unpack(cloud.blobs.get(info.key))
        assert not [k for k in entries for label in gone if ids[label] in k]
    drop = ids["drop"]
    assert not [k for k in keys_of(cloud) if k.startswith((
        layout.experiment(drop), layout.heads(drop), layout.head_pages(drop),
        layout.logged_models(drop), f"{layout.ARTIFACTS}/{drop}/"))]
    assert not cloud.blobs.exists(layout.experiment_name("drop"))
    if store.backend == "local":  # nor the deleted runs' folders, emptied by gc
        artifacts = Path(cloud.blobs.root, layout.ARTIFACTS)
        assert not [p for p in artifacts.rglob("*") for label in gone if ids[label] in p.name]

    # The name is free again, as on sqlite (which gives the next id the same way).
    assert reuse_name(cloud) == reuse_name(sqlite)
    new = cloud.get_experiment_by_name("drop")
    assert new is not None and new.lifecycle_stage == "active"
    assert cloud.search_runs([new.experiment_id], "", ViewType.ALL) == []
