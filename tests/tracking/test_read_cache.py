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


def swept_beside_mlflow(store: Any, reference: MlflowReference, name: str,
                        n: int) -> tuple[str, Any, str]:
    """A sweep of ``n`` runs by 4 writers, and the same runs in MLflow's sqlite store: the
    experiment's id, the sqlite store, and its experiment's id."""
    exp = tracking_store(store, strict=True).create_experiment(name)
    sweep(store, exp, n, writers=4)
    sqlite = reference.tracking_store()
    ref_exp = sqlite.create_experiment(name)
    for i in range(n):
        log_run(sqlite, ref_exp, i)
    return exp, sqlite, ref_exp


def test_a_new_process_lists_the_heads_and_reads_nothing_else(  # type: ignore[no-untyped-def]
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:
    exp, sqlite, ref_exp = swept_beside_mlflow(store, mlflow_reference(), "sweep", N)

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


def swept_and_searched(store: Any, name: str, n: int) -> tuple[str, list[str], list[Any], Path]:
    """A sweep of ``n`` runs by 4 writers, then searched by a process of its own (which fills
    the file): the experiment, its run ids, the search's answer, and the file."""
    exp = tracking_store(store, strict=True).create_experiment(name)
    ids = sweep(store, exp, n, writers=4)
    first = tracking_store(store, strict=True)
    expected, _ = searched(first, exp)
    return exp, ids, expected, cache_file(first)


def change_three(writer: Any, exp: str, ids: list[str]) -> str:
    """What another process (``writer``, a store of its own) changes after a search: a metric
    and a tag of the first run, the second run deleted, a run added (its id returned)."""
    writer.log_batch(ids[0], [Metric("m0", 42.0, 7, 1)], [], [RunTag("t0", "changed")])
    writer.delete_run(ids[1])
    return log_run(writer, exp, len(ids))


def saw_three(runs: list[Any], ids: list[str], extra: str) -> None:
    """A search answered what :func:`change_three` changed."""
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[ids[0]].data.metrics["m0"] == 42.0
    assert by_id[ids[0]].data.tags["t0"] == "changed"
    assert by_id[ids[1]].info.lifecycle_stage == "deleted"
    assert extra in by_id and len(runs) == len(ids) + 1


def test_what_changed_since_is_read_from_the_store(store) -> None:  # type: ignore[no-untyped-def]
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("changing")
    ids = sweep(store, exp, N, writers=4)
    searched(tracking_store(store, strict=True), exp)  # fills the file
    extra = change_three(tracking_store(store, strict=True), exp, ids)
    runs, calls = searched(tracking_store(store, strict=True), exp)
    saw_three(runs, ids, extra)
    assert calls["_get"] <= 3, f"{calls}: the three changed heads at most"


def test_a_damaged_or_missing_file_costs_requests_never_answers(store) -> None:  # type: ignore[no-untyped-def]
    exp, _, expected, path = swept_and_searched(store, "damaged", N)
    path.write_bytes(b"not a sqlite file" * 100)
    read_again_then_kept(store, exp, expected, "file")
    path.unlink()
    runs, _ = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert path.exists(), "a missing file is made again"


def read_again_then_kept(store: Any, exp: str, expected: list[Any], damaged: str) -> None:
    """After the file was damaged: the next process answers as before, from the store; the
    one after it from the file again (made again, or written over, and filled)."""
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] >= 1, f"nothing came from the damaged {damaged}"
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 0, f"{calls}: the damaged {damaged} was written again"


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


def test_rows_are_marshal_and_older_json_rows_still_serve(store) -> None:  # type: ignore[no-untyped-def]
    """The file keeps each head as compressed marshal bytes behind a CRC (decoded in half
    the time of JSON); files written before that, whose rows hold JSON, zlib-compressed or
    as it is, are still read; a row whose bytes fail the CRC, or that is in no known format,
    is read again from the store."""
    import marshal
    import sqlite3
    import zlib

    from cloudtrack.store import records

    exp, ids, expected, path = swept_and_searched(store, "compressed", 7)
    with sqlite3.connect(path) as db:
        bodies = dict(db.execute("SELECT key, body FROM records").fetchall())
        heads = [layout.head(exp, i) for i in ids]
        assert set(bodies) >= set(heads)
        for key in heads:
            body = bodies[key]
            assert body[:2] == b"M4" and zlib.crc32(body[6:]).to_bytes(4, "big") == body[2:6]
            assert marshal.loads(zlib.decompress(body[6:]))["info"]["run_id"] == \
                key.rsplit("/", 1)[1].removesuffix(".json")
        rec0, rec1 = (marshal.loads(zlib.decompress(bodies[k][6:])) for k in heads[:2])
        # Files written before: JSON zlib-compressed, and JSON as it is.
        db.execute("UPDATE records SET body = ? WHERE key = ?",
                   (zlib.compress(records.dumps(rec0), 1), heads[0]))
        db.execute("UPDATE records SET body = ? WHERE key = ?", (records.dumps(rec1), heads[1]))
        # Damaged: a flipped byte behind the CRC; a zlib tag without zlib; a format unknown.
        flipped = bytearray(bodies[heads[2]])
        flipped[-1] ^= 0x01
        db.execute("UPDATE records SET body = ? WHERE key = ?", (bytes(flipped), heads[2]))
        db.execute("UPDATE records SET body = ? WHERE key = ?", (b"\x78not zlib", heads[3]))
        db.execute("UPDATE records SET body = ? WHERE key = ?", (b"M9" + b"\0" * 40, heads[4]))
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 3, f"{calls}: only the three damaged rows' heads are read again"
    runs, calls = searched(tracking_store(store, strict=True), exp)
    assert summary(runs) == summary(expected)
    assert calls["_get"] == 0, f"{calls}: the rows read again were written over"


def test_heads_listed_before_are_listed_in_ranges_at_once(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A process whose file holds an experiment's heads splits the heads' LIST into ranges
    between keys it listed before, all read at once (one round trip, where a listing of
    several pages takes one per page), and still finds runs added since, before, between and
    after the bounds; so does a later search in the same process.  S3 and GCS (Azure's
    listing cannot start after a key, its pages hold 5,000)."""
    from cloudtrack.tracking import search as search_module

    monkeypatch.setattr(search_module, "RANGE_KEYS", 15)
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("ranges")
    sweep(store, exp, N, writers=4)

    def small_pages() -> BlobTrackingStore:
        s = tracking_store(store, strict=True)
        s.blobs.page_size = 40  # a range asks for 15 + 15 // 4 + 16 = 34 keys
        return s

    searched(small_pages(), exp)  # fills the file
    for i in range(N, N + 12):  # new runs, their ids anywhere between the bounds
        log_run(setup, exp, i)
    reader = small_pages()
    counter = Requests(reader)
    runs = search(reader, exp, ("", ["attributes.run_name ASC"]))
    calls = collections.Counter(counter.take())
    assert len(runs) == N + 12
    assert summary(runs) == summary(search(tracking_store(store, strict=True), exp,
                                           ("", ["attributes.run_name ASC"])))
    if not reader.blobs.lists_after:
        assert reader.blobs.backend == "azure" and calls["_list_page_after"] == 0
        return
    # 60 heads on disk: bounds at the 15th, 30th and 45th, four ranges of one page each;
    # the twelve new heads read from the store (their pages listed, then pages or heads),
    # not the 60 the file holds.
    assert calls["_list_page_after"] == 4 and calls["_list_page"] <= 1, calls
    assert calls["_get"] <= 2 * 12, calls
    # The same process again: bounds from its own listing of 72 heads, five ranges.  The
    # twelve heads it had to GET go into their pages in the background: that pass first (it
    # may write nothing: the runs' writer may have paged them meanwhile).
    reader._page_writer.write()
    counter.take()
    runs = search(reader, exp, ("", ["attributes.run_name ASC"]))
    calls = collections.Counter(counter.take())
    assert len(runs) == N + 12 and calls == {"_list_page_after": 5}, calls
