"""Stores written before head pages: search_runs reads an experiment's old head snapshot
instead of one GET per run, and never trusts it blindly: a head changed since the snapshot is
read again."""

from __future__ import annotations

import concurrent.futures

from mlflow.entities import Metric, Param, ViewType

from cloudtrack.store import layout, snapshots
from cloudtrack.tracking import BlobTrackingStore, search
from tests.fixtures.stores import tracking_store


class CountingGets:
    """Counts the store's GETs (instrumentation around the real backend, not a stand-in)."""

    def __init__(self, store: BlobTrackingStore) -> None:
        self.n = 0
        real = store.blobs._get

        def counted(key: str):  # type: ignore[no-untyped-def]
            self.n += 1
            return real(key)

        store.blobs._get = counted  # type: ignore[method-assign]


def test_search_uses_an_old_snapshot_but_checks_versions(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A store written before head pages may have a snapshot a search left: used (with the
    version rule) while the experiment has no pages."""
    monkeypatch.setattr(search, "SNAPSHOT_MIN_MISSES", 10)
    writer = tracking_store(store, strict=True)
    exp = writer.create_experiment("snap")

    def make(i: int) -> str:
        run = writer.create_run(exp, "u", i, [], f"r{i}")
        writer.log_batch(run.info.run_id, [Metric("acc", i / 100, 0, 0)], [Param("i", str(i))], [])
        return run.info.run_id

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(make, range(60)))
    listed = list(writer.blobs.list(layout.heads(exp)))
    writer.blobs.put(layout.head_snapshot(exp), snapshots.pack(
        (i.key, i.version, writer.blobs.get(i.key)) for i in listed))
    assert not list(writer.blobs.list(layout.head_pages(exp))), "running runs have no pages"

    # A head changes after the snapshot was written: the next cold search must see it.
    writer.log_batch(ids[0], [Metric("acc", 0.99, 1, 1)], [], [])
    cold = tracking_store(store, strict=True)
    gets = CountingGets(cold)
    runs = cold.search_runs([exp], "metrics.acc >= 0.3", ViewType.ALL, order_by=["metrics.acc DESC"])
    assert runs[0].info.run_id == ids[0] and len(runs) == 31
    assert gets.n <= 3, f"{gets.n} GETs: snapshot + the one changed head expected"

    # Warm: no GET at all when nothing changed.
    gets.n = 0
    again = cold.search_runs([exp], "metrics.acc >= 0.3", ViewType.ALL)
    assert len(again) == 31 and gets.n == 0


def test_damaged_snapshot_is_only_slower(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(search, "SNAPSHOT_MIN_MISSES", 1)
    s = tracking_store(store, strict=True)
    exp = s.create_experiment("damaged")
    for i in range(3):
        s.create_run(exp, "u", i, [], f"r{i}")
    s.blobs.put(layout.head_snapshot(exp), b"not gzip at all")
    assert len(tracking_store(store, strict=True).search_runs([exp], "", ViewType.ALL)) == 3
