"""The read cache (src/cloudtrack/store/readcache.py): a new process's search takes the run
heads an earlier process read from the local file, at the version the store lists them, and
lists nothing but the heads; anything changed since is read from the store; a damaged file,
or none, costs requests, never a wrong answer. Every cloud backend, real services; the
answers are compared with MLflow's sqlite store. Each ``tracking_store`` here stands for a new
process (its own in-memory cache, the same cache folder)."""

from __future__ import annotations

import collections
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, RunTag

import backends
from cloudtrack.store import layout
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference
from tests.fixtures.stores import tracking_store
from tests.tracking.test_head_pages import QUERIES, log_run, search, summary, sweep
from tests.tracking.test_request_budget import Requests

CLOUDS = [s for s in backends.STORAGE_SERVICES if s != "local"]
pytestmark = pytest.mark.parametrize("store", CLOUDS, indirect=True)

N = 60


def cache_file(s: BlobTrackingStore) -> Path:
    path = s._read_cache.path
    assert path is not None, "the read cache is on for a cloud store"
    return path


def searched(s: BlobTrackingStore, exp: str) -> tuple[list[Any], collections.Counter[str]]:
    counter = Requests(s)
    runs = search(s, exp, ("", ["attributes.run_name ASC"]))
    s._pool.shutdown(wait=True)  # the cache is written in the background: wait for it
    return runs, collections.Counter(counter.take())


def test_a_new_process_lists_the_heads_and_reads_nothing_else(  # type: ignore[no-untyped-def]
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("sweep")
    sweep(store, exp, N, writers=4)
    sqlite = mlflow_reference().tracking_store()
    ref_exp = sqlite.create_experiment("sweep")
    for i in range(N):
        log_run(sqlite, ref_exp, i)

    first, first_calls = searched(tracking_store(store, strict=True), exp)
    assert first_calls["_get"] >= 1, "the first process reads pages (or heads) from the store"
    second_store = tracking_store(store, strict=True)
    second, second_calls = searched(second_store, exp)
    assert second_calls["_get"] == 0, second_calls
    assert set(second_calls) == {"_list_page"}, "only the heads are listed"
    assert summary(second) == summary(first)
    for query in QUERIES:
        assert summary(search(tracking_store(store, strict=True), exp, query)) == \
            summary(search(sqlite, ref_exp, query)), query
    mode = stat.S_IMODE(os.stat(cache_file(second_store)).st_mode)
    assert mode == 0o600, oct(mode)


def test_what_changed_since_is_read_from_the_store(store) -> None:  # type: ignore[no-untyped-def]
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("changing")
    ids = sweep(store, exp, N, writers=4)
    searched(tracking_store(store, strict=True), exp)  # fills the file
    writer = tracking_store(store, strict=True)
    writer.log_batch(ids[0], [Metric("m0", 42.0, 7, 1)], [], [RunTag("t0", "changed")])
    writer.delete_run(ids[1])
    extra = log_run(writer, exp, N)
    reader = tracking_store(store, strict=True)
    runs, calls = searched(reader, exp)
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[ids[0]].data.metrics["m0"] == 42.0
    assert by_id[ids[0]].data.tags["t0"] == "changed"
    assert by_id[ids[1]].info.lifecycle_stage == "deleted"
    assert extra in by_id and len(runs) == N + 1
    assert calls["_get"] <= 3, f"{calls}: the three changed heads at most"


def test_a_damaged_or_missing_file_costs_requests_never_answers(store) -> None:  # type: ignore[no-untyped-def]
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("damaged")
    sweep(store, exp, N, writers=4)
    first = tracking_store(store, strict=True)
    expected, _ = searched(first, exp)
    path = cache_file(first)
    path.write_bytes(b"not a sqlite file" * 100)
    damaged = tracking_store(store, strict=True)
    runs, calls = searched(damaged, exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] >= 1, "nothing came from the damaged file"
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 0, "the damaged file was made again, and filled"
    path.unlink()
    runs, _ = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert path.exists(), "a missing file is made again"


def test_a_head_cached_at_an_older_version_is_not_used(store) -> None:  # type: ignore[no-untyped-def]
    """The file's row for a head whose version the store no longer lists is never used, even
    if the file says otherwise about its contents."""
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("versions")
    rid = log_run(setup, exp, 0)
    first = tracking_store(store, strict=True)
    searched(first, exp)
    import sqlite3

    with sqlite3.connect(cache_file(first)) as db:
        db.execute("UPDATE records SET version = 'not-a-listed-version' WHERE key = ?",
                   (layout.head(exp, rid),))
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert [r.info.run_id for r in runs] == [rid] and calls["_get"] == 1


def test_off_writes_no_file(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    s = tracking_store(store, strict=True)
    assert s._read_cache.path is None
    exp = s.create_experiment("off")
    sweep(store, exp, 8, writers=2)
    runs, _ = searched(s, exp)
    assert len(runs) == 8
    assert not list((Path(os.environ["XDG_CACHE_HOME"]) / "cloudtrack" / "reads").glob(
        f"*{store.uri.split('//')[1].split('/')[0].split('@')[0]}*"))


def test_rows_are_compressed_and_older_plain_rows_still_serve(store) -> None:  # type: ignore[no-untyped-def]
    """The file keeps each head zlib-compressed (a JSON head on a page of its own made a file
    of 58,541 heads 274 MB; compressed they fit several to a page); a file written before
    that, whose rows hold the JSON itself, is still read, and a row that is neither is read
    again from the store."""
    import sqlite3
    import zlib

    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("compressed")
    ids = sweep(store, exp, 6, writers=2)
    first = tracking_store(store, strict=True)
    expected, _ = searched(first, exp)
    with sqlite3.connect(cache_file(first)) as db:
        bodies = dict(db.execute("SELECT key, body FROM records").fetchall())
        head = layout.head(exp, ids[0])
        assert set(bodies) >= {layout.head(exp, i) for i in ids}
        assert all(not body.startswith(b"{") for body in bodies.values())
        # As a file written before compression: the JSON itself; and one row damaged.
        db.execute("UPDATE records SET body = ? WHERE key = ?",
                   (zlib.decompress(bodies[head]), head))
        db.execute("UPDATE records SET body = ? WHERE key = ?",
                   (b"\x78not zlib", layout.head(exp, ids[1])))
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 1, f"{calls}: only the damaged row's head is read from the store"
