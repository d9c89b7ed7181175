"""The read cache's packs (src/cloudtrack/store/readcache.py): a process's first search of an
experiment keeps every head it listed as one pack, which the next process decodes in one call
and takes from only at the versions the store lists; heads changed since are read from the
store and kept as rows beside the pack, until a search finds more than a tenth of the
experiment outside it and writes it again; a damaged pack, or a pack entry at another
version, costs requests, never an answer.  Every backend, the local store included (packs
only, no rows), real services; answers compared with MLflow's sqlite store.  Each
``tracking_store`` here stands for a new process (its own memory, the same cache folder)."""

from __future__ import annotations

import marshal
import sqlite3
import zlib
from collections.abc import Callable

import pytest
from mlflow.entities import RunTag

from cloudtrack.store import layout, readcache
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference
from tests.fixtures.stores import tracking_store
from tests.tracking.test_head_pages import QUERIES, search, summary, sweep
from tests.tracking.test_read_cache import (
    cache_file,
    change_three,
    read_again_then_kept,
    saw_three,
    searched,
    swept_and_searched,
    swept_beside_mlflow,
)

N = 40


@pytest.fixture(autouse=True)
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packs of experiments of 20 runs and more, so that a sweep of 40 makes one."""
    monkeypatch.setattr(readcache, "PACK_MIN", 20)


def file_of(s: BlobTrackingStore, exp: str) -> tuple[int, int]:
    """(packs, rows) the file holds for the experiment's heads."""
    prefix = layout.heads(exp)
    with sqlite3.connect(cache_file(s)) as db:
        packs = db.execute("SELECT COUNT(*) FROM packs WHERE prefix = ?", (prefix,)).fetchone()
        rows = db.execute("SELECT COUNT(*) FROM records WHERE key >= ? AND key < ?",
                          (prefix, prefix + "\U0010ffff")).fetchone()
    return packs[0], rows[0]


def test_a_sweep_is_kept_as_one_pack_and_the_next_process_only_lists(  # type: ignore[no-untyped-def]
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:
    exp, sqlite, ref_exp = swept_beside_mlflow(store, mlflow_reference(), "packed", N)

    first = tracking_store(store, strict=True)
    expected, calls = searched(first, exp)
    assert calls["_get"] >= 1, "the first process reads pages (or heads) from the store"
    assert file_of(first, exp) == (1, 0), "one pack, no rows"
    second = tracking_store(store, strict=True)
    runs, calls = searched(second, exp)
    assert calls["_get"] == 0, calls
    assert set(calls) <= {"_list_page", "_list_page_after"}, "only the heads are listed"
    assert summary(runs) == summary(expected)
    for query in QUERIES:
        assert summary(search(tracking_store(store, strict=True), exp, query)) == \
            summary(search(sqlite, ref_exp, query)), query


def test_what_changed_since_the_pack_is_read_and_the_pack_written_again(  # type: ignore[no-untyped-def]
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:
    exp, sqlite, ref_exp = swept_beside_mlflow(store, mlflow_reference(), "changing", N)
    by_name = ("", ["attributes.run_name ASC"])
    runs, _ = searched(tracking_store(store, strict=True), exp)  # the pack
    ids = [r.info.run_id for r in runs]
    ref_ids = [r.info.run_id for r in search(sqlite, ref_exp, by_name)]
    extra = change_three(tracking_store(store, strict=True), exp, ids)
    change_three(sqlite, ref_exp, ref_ids)

    # Three heads of 41 outside the pack: read from the store, kept as rows beside it.
    reader = tracking_store(store, strict=True)
    runs, calls = searched(reader, exp)
    saw_three(runs, ids, extra)
    assert calls["_get"] <= 3, f"{calls}: the three changed heads at most"
    rows = 0 if store.backend == "local" else 3
    assert file_of(reader, exp) == (1, rows), "a local store keeps no rows"
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert len(runs) == N + 1
    if store.backend == "local":  # no rows: the three are read again, the pack not yet
        assert 1 <= calls["_get"] <= 3 and file_of(reader, exp) == (1, 0), calls
    else:
        assert calls["_get"] == 0, calls

    # A fifth of the experiment changed: the pack is written again, the rows folded in.
    writer = tracking_store(store, strict=True)
    for theirs, ours in zip(ids[2:10], ref_ids[2:10], strict=True):
        writer.set_tag(theirs, RunTag("t1", "again"))
        sqlite.set_tag(ours, RunTag("t1", "again"))
    changed = tracking_store(store, strict=True)
    runs, calls = searched(changed, exp)
    assert sum(r.data.tags.get("t1") == "again" for r in runs) == 8
    assert file_of(changed, exp) == (1, 0)
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert calls["_get"] == 0, calls
    for query in QUERIES:
        assert summary(search(tracking_store(store, strict=True), exp, query)) == \
            summary(search(sqlite, ref_exp, query)), query


def test_a_damaged_pack_or_an_entry_at_another_version_costs_requests_only(  # type: ignore[no-untyped-def]
        store) -> None:
    exp, ids, expected, path = swept_and_searched(store, "damaged", N)
    prefix = layout.heads(exp)

    # One entry at a version the store does not list: that head alone is read again.
    with sqlite3.connect(path) as db:
        (body,) = db.execute("SELECT body FROM packs WHERE prefix = ?", (prefix,)).fetchone()
        assert body[:2] == b"M4" and zlib.crc32(body[6:]).to_bytes(4, "big") == body[2:6]
        heads = marshal.loads(zlib.decompress(body[6:]))
        assert set(heads) == {layout.head(exp, rid) for rid in ids}
        key = layout.head(exp, ids[0])
        heads[key] = ("not-a-listed-version", heads[key][1])
        data = zlib.compress(marshal.dumps(heads, 4), 1)
        db.execute("UPDATE packs SET body = ? WHERE prefix = ?",
                   (b"M4" + zlib.crc32(data).to_bytes(4, "big") + data, prefix))
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 1, calls

    # A flipped byte behind the CRC: nothing comes from the pack, and it is written again.
    with sqlite3.connect(path) as db:
        (body,) = db.execute("SELECT body FROM packs WHERE prefix = ?", (prefix,)).fetchone()
        flipped = bytearray(body)
        flipped[-1] ^= 0x01
        db.execute("UPDATE packs SET body = ? WHERE prefix = ?", (bytes(flipped), prefix))
    read_again_then_kept(store, exp, expected, "pack")


def test_a_file_from_before_packs_still_serves_and_gets_one(store) -> None:  # type: ignore[no-untyped-def]
    """A file written by the version before packs (a ``records`` table only, rows of heads)
    is served as it is, then given a ``packs`` table and the experiment's pack."""
    if store.backend == "local":
        pytest.skip("a local store had no read cache before packs")
    exp, _, expected, path = swept_and_searched(store, "older", N)
    prefix = layout.heads(exp)
    with sqlite3.connect(path) as db:  # the pack as rows, then the table dropped
        (body,) = db.execute("SELECT body FROM packs WHERE prefix = ?", (prefix,)).fetchone()
        heads = marshal.loads(zlib.decompress(body[6:]))
        rows = []
        for key, (version, rec) in heads.items():
            data = zlib.compress(marshal.dumps(rec, 4), 1)
            rows.append((key, version, b"M4" + zlib.crc32(data).to_bytes(4, "big") + data))
        db.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
        db.execute("DROP TABLE packs")
    older = tracking_store(store, strict=True)
    runs, calls = searched(older, exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 0, f"{calls}: every head came from the rows"
    assert file_of(older, exp) == (1, 0), "the rows were packed"
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected) and calls["_get"] == 0, calls


def test_small_local_experiments_write_no_file(store) -> None:  # type: ignore[no-untyped-def]
    """A local store keeps no rows, and packs only experiments of PACK_MIN runs or more: a
    store of small experiments leaves nothing in the cache folder."""
    if store.backend != "local":
        pytest.skip("the local store's rule")
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("small")
    sweep(store, exp, readcache.PACK_MIN - 1, writers=2)
    s = tracking_store(store, strict=True)
    runs, _ = searched(s, exp)
    assert len(runs) == readcache.PACK_MIN - 1
    assert not cache_file(s).exists()
