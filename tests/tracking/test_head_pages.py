"""Head pages (src/cloudtrack/store/pages.py): writers keep them, so the first search after a
sweep costs a few requests per thousand runs, whoever searched before; and readers never trust
them blindly (a stale, damaged, half-split or missing page costs requests, never a wrong
answer).  Every backend, real services; the differential parts compare with MLflow's sqlite
store."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from mlflow.entities import ExperimentTag, Metric, Param, RunStatus, RunTag, ViewType

from cloudtrack.store import layout, pages, records
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.reference import MlflowReference
from tests.fixtures.stores import tracking_store
from tests.tracking.test_request_budget import Requests

QUERIES: list[tuple[str, list[str] | None]] = [
    ("", None),
    ("metrics.m0 > 0.5 and params.p1 = '3'", ["metrics.m2 DESC"]),
    ("params.p0 != '1'", ["params.p2 ASC", "attributes.run_name DESC"]),
    ("attributes.status = 'RUNNING'", ["attributes.start_time ASC"]),
    ("tags.t0 LIKE 'x%'", ["metrics.m1 ASC"]),
]


def log_run(s: Any, exp: str, i: int, *, finish: bool = True) -> str:
    """Run ``i`` of a sweep: 10 params, 10 metrics, 5 tags, the same on every store."""
    rid: str = s.create_run(exp, "u", 1_000 + i, [], f"run-{i:04d}").info.run_id
    s.log_batch(rid, [Metric(f"m{k}", ((i * 7 + k * 13) % 100) / 100, 5 + i, 0) for k in range(10)],
                [Param(f"p{k}", str((i + k) % 10)) for k in range(10)],
                [RunTag(f"t{k}", f"x{(i * k) % 7}") for k in range(5)])
    if finish:
        s.update_run_info(rid, RunStatus.FINISHED, 2_000 + i, None)
    return rid


def summary(runs: list[Any]) -> list[Any]:
    """What a search answered, without the ids each store makes up."""
    return [(r.info.run_name, r.info.status, r.info.start_time, r.info.end_time,
             sorted(r.data.params.items()), sorted(r.data.metrics.items()),
             sorted((k, v) for k, v in r.data.tags.items() if not k.startswith("mlflow.")))
            for r in runs]


def search(s: Any, exp: str, query: tuple[str, list[str] | None]) -> list[Any]:
    return s.search_runs([exp], query[0], ViewType.ALL, max_results=None, order_by=query[1])


def sweep(store: Any, exp: str, n: int, writers: int = 8,
          running: Callable[[int], bool] = lambda i: False) -> list[str]:
    """``n`` runs logged by ``writers`` stores of their own (as processes would), closed after:
    what a sweep leaves behind."""
    def work(w: int) -> list[str]:
        s = tracking_store(store, strict=True)
        try:
            return [log_run(s, exp, i, finish=not running(i)) for i in range(w, n, writers)]
        finally:
            s.close()

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        return [rid for part in pool.map(work, range(writers)) for rid in part]


def swept_reader(store: Any, monkeypatch: Any, name: str, n: int, writers: int,
                 ) -> tuple[str, list[Any], BlobTrackingStore]:
    """An experiment of ``n`` finished runs by ``writers`` processes, the answer to
    ``QUERIES[1]`` over it, and a new reader without a read cache that has read nothing."""
    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    exp = tracking_store(store, strict=True).create_experiment(name)
    sweep(store, exp, n, writers=writers)
    expected = summary(search(tracking_store(store, strict=True), exp, QUERIES[1]))
    return exp, expected, tracking_store(store, strict=True)


def page_entries(s: BlobTrackingStore, exp: str) -> dict[str, dict[str, Any]]:
    """bits -> (split, entries) of every page, read straight from the store."""
    out = {}
    for info in s.blobs.list(layout.head_pages(exp)):
        split, entries = pages.unpack(s.blobs.get(info.key))
        out[pages.bits_of(info.key)] = {"split": split, "keys": set(entries)}
    return out


def test_first_search_after_a_sweep_reads_pages_not_heads(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No search before: the writers' pages alone make the first search of a new process cheap,
    and the count of GETs follows the pages, not the runs."""
    monkeypatch.setattr(pages, "MAX_ENTRIES", 12)  # splits at this small size too
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("sweep")
    ids = sweep(store, exp, 240)
    found = page_entries(setup, exp)
    live = {b: v for b, v in found.items() if not v["split"]}
    assert any(v["split"] for v in found.values()), "240 runs over 16 pages of 12 must split"
    # Readers look for a run's entry in the deepest page on its path only: an entry anywhere
    # else (in a page whose split was left half-done) is as good as none.
    page_map = pages.PageMap(found)
    covered = {k for bits, v in live.items() for k in v["keys"] if page_map.page_of(k) == bits}
    # Writers give entries up after a few lost races (at this page size they race a lot):
    # each costs a reader one GET, so a few are allowed, not more.
    uncovered = {layout.head(exp, r) for r in ids} - covered
    assert len(uncovered) <= len(ids) // 20, f"{len(uncovered)} runs in no page"
    assert all(len(v["keys"]) <= 12 for v in live.values())
    # And no live page holds an entry off its deepest path (a split left half-done would).
    assert covered == set().union(*(v["keys"] for v in live.values()))

    reader = tracking_store(store, strict=True)
    counter = Requests(reader)
    runs = reader.search_runs([exp], "", ViewType.ALL, max_results=None)
    calls = collections.Counter(counter.take())
    assert len(runs) == 240
    assert calls["_get"] <= len(live) + len(uncovered), \
        f"{calls}: one GET per live page, and per run in no page"
    assert calls["_list_page"] <= 3, calls


def key_under(bits: str, *taken: str) -> str:
    """A head key (of experiment 7) whose page path starts with ``bits``, not one of ``taken``."""
    return next(k for i in range(100_000)
                if pages.key_bits(k := layout.head("7", f"{i:032x}"), len(bits)) == bits
                and k not in taken)


def test_a_split_is_tombstoned_first_and_a_half_done_one_is_finished(store) -> None:  # type: ignore[no-untyped-def]
    """A split writes its tombstone before its halves, so a page that lost the race for its
    tombstone is never left live beside its halves; a split an older version left half-done
    (halves written, page still live) is finished by the next writer that lands on it."""
    blobs = tracking_store(store, strict=True).blobs
    folder = layout.head_pages("7")
    old_0 = key_under("00000")
    old_1 = key_under("000011")
    new_1 = key_under("000010")
    entry = ('"v1"', b'{"info": {}}')
    # What an older version leaves when its tombstone loses for good: p0000 live, p00000 too.
    blobs.put(pages.page_key(folder, "0000"), pages.pack({old_0: entry, old_1: entry}))
    blobs.put(pages.page_key(folder, "00000"), pages.pack({old_0: entry}))
    assert pages.merge(blobs, folder, {new_1: entry}) == {}
    assert page_entries_in(blobs, folder) == {
        "0000": (True, set()), "00000": (False, {old_0}), "00001": (False, {old_1, new_1})}

    # A split now: tombstone first. Once the tombstone is written, a writer that still lists
    # only the old page goes on to its halves.
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(pages, "MAX_ENTRIES", 2)
    written: list[str] = []
    put_if_version = blobs.put_if_version

    def record(key: str, data: bytes, version: str) -> Any:
        written.append(f"{pages.bits_of(key)}:{pages.unpack(data)[0]}")
        return put_if_version(key, data, version)

    monkeypatch.setattr(blobs, "put_if_version", record)
    try:
        third = key_under("000011", old_1)
        assert pages.merge(blobs, folder, {third: entry}) == {}
    finally:
        monkeypatch.undo()
    assert written[0] == "00001:True", written
    found = page_entries_in(blobs, folder)
    assert found["00001"] == (True, set())
    assert found["000010"] == (False, {new_1}) and found["000011"] == (False, {old_1, third})
    stale = pages.PageMap(["0000"])  # a listing taken before any split
    fourth = key_under("000010", new_1)
    assert pages.merge(blobs, folder, {fourth: entry}, stale) == {}
    found = page_entries_in(blobs, folder)
    assert fourth in found[pages.PageMap(found).page_of(fourth) or ""][1]
    assert not any(fourth in keys for bits, (split, keys) in found.items() if split)


def page_entries_in(blobs: Any, folder: str) -> dict[str, tuple[bool, set[str]]]:
    out = {}
    for info in blobs.list(folder):
        split, entries = pages.unpack(blobs.get(info.key))
        out[pages.bits_of(info.key) or ""] = (split, set(entries))
    return out


def test_search_results_equal_mlflow_with_pages_and_running_runs(
        store, mlflow_reference: Callable[[], MlflowReference], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pages, "MAX_ENTRIES", 10)
    n = 90

    def running(i: int) -> bool:
        return i % 9 == 0

    sqlite = mlflow_reference().tracking_store()
    sexp = sqlite.create_experiment("same")
    for i in range(n):
        log_run(sqlite, sexp, i, finish=not running(i))
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("same")
    sweep(store, exp, n, running=running)
    for q in QUERIES:
        fresh = tracking_store(store, strict=True)
        assert summary(search(fresh, exp, q)) == summary(search(sqlite, sexp, q)), q
        fresh.close()
    # Pagination as MLflow pages.
    fresh = tracking_store(store, strict=True)
    token, ours = None, []
    while True:
        page = fresh.search_runs([exp], "", ViewType.ALL, max_results=7,
                                 order_by=["metrics.m3 DESC"], page_token=token)
        ours += page
        token = page.token
        if not token:
            break
    assert summary(ours) == summary(search(sqlite, sexp, ("", ["metrics.m3 DESC"])))


def test_stale_damaged_and_missing_pages_never_change_results(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pages, "MAX_ENTRIES", 10)
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("untrusted")
    ids = sweep(store, exp, 60)
    truth = summary(search(tracking_store(store, strict=True), exp, QUERIES[1]))

    # Stale: a finished run changed behind the writers' backs (the head rewritten directly,
    # so no page entry follows it): the listing's version differs, the head is read again.
    key = layout.head(exp, ids[0])
    head, version = records.read_versioned(setup.blobs, key)
    head["metrics"]["m0"][1] = 0.999
    head["params"]["p1"] = "3"
    setup.blobs.put_if_version(key, records.dumps(head), version)
    reader = tracking_store(store, strict=True)
    counter = Requests(reader)
    got = search(reader, exp, QUERIES[1])
    assert ids[0] in {r.info.run_id for r in got}
    paged = set().union(*(v["keys"] for v in page_entries(setup, exp).values()))
    unpaged = len({layout.head(exp, r) for r in ids} - paged)
    assert collections.Counter(counter.take())["_get"] <= \
        len(page_entries(setup, exp)) + 1 + unpaged
    truth = summary(got)

    # Damaged: every page garbage.
    for info in setup.blobs.list(layout.head_pages(exp)):
        setup.blobs.put(info.key, b"not a page")
    assert summary(search(tracking_store(store, strict=True), exp, QUERIES[1])) == truth

    # Entries that lie: a page claiming another version for a head.
    bits = pages.key_bits(layout.head(exp, ids[1]), pages.MIN_BITS)
    setup.blobs.put(pages.page_key(exp, bits), pages.pack(
        {layout.head(exp, ids[1]): ('"not-its-version"', b'{"info": {}}')}))
    assert summary(search(tracking_store(store, strict=True), exp, QUERIES[1])) == truth

    # Missing: the whole index deleted.
    setup.blobs.delete_prefix(layout.head_pages(exp))
    assert summary(search(tracking_store(store, strict=True), exp, QUERIES[1])) == truth


def test_a_store_without_pages_is_served_and_upgraded_by_its_first_search(store) -> None:  # type: ignore[no-untyped-def]
    """A store written by the previous version has heads and no pages: the first search GETs
    the heads (correct), and leaves pages behind so the next process does not."""
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("old")
    sweep(store, exp, 40)
    setup.blobs.delete_prefix(layout.head_pages(exp))  # what the previous version wrote

    first = tracking_store(store, strict=True)
    counter = Requests(first)
    expected = summary(search(first, exp, ("", ["attributes.run_name ASC"])))
    assert len(expected) == 40
    assert collections.Counter(counter.take())["_get"] >= 40
    first.close()  # the upgrade is written by now (at exit for a process)
    assert page_entries(setup, exp), "the first search left pages behind"

    second = tracking_store(store, strict=True)
    counter = Requests(second)
    assert summary(search(second, exp, ("", ["attributes.run_name ASC"]))) == expected
    assert collections.Counter(counter.take())["_get"] <= 16


@pytest.mark.slow
def test_searches_while_writers_finish_never_miss_an_acknowledged_run(
        store, mlflow_reference: Callable[[], MlflowReference], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """8 writers finish runs (and leave some running) while readers, each a fresh store as a
    new process would be, search: no search misses a run whose writes were acknowledged
    before it began, or shows one twice; at the end the answer equals MLflow's for the same
    data."""
    monkeypatch.setattr(pages, "MAX_ENTRIES", 8)
    n, writers = 96, 8

    def running(i: int) -> bool:
        return i % 11 == 0

    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("live")
    acked: list[tuple[float, str]] = []
    lock = threading.Lock()
    done = threading.Event()
    problems: list[str] = []

    def write(w: int) -> None:
        s = tracking_store(store, strict=True)
        try:
            for i in range(w, n, writers):
                rid = log_run(s, exp, i, finish=not running(i))
                with lock:
                    acked.append((time.monotonic(), rid))
        finally:
            s.close()

    def read() -> int:
        searches = 0
        while not done.is_set():
            began = time.monotonic()
            with lock:
                before = {rid for t, rid in acked if t < began}
            r = tracking_store(store, strict=True)
            got = [x.info.run_id for x in r.search_runs([exp], "", ViewType.ALL, max_results=None)]
            r.close()
            if len(got) != len(set(got)):
                problems.append(f"a run twice in one answer: {len(got)} vs {len(set(got))}")
            if missed := before - set(got):
                problems.append(f"search {searches} missed {len(missed)} acknowledged runs")
            searches += 1
        return searches

    with concurrent.futures.ThreadPoolExecutor(writers + 2) as pool:
        readers = [pool.submit(read) for _ in range(2)]
        list(pool.map(write, range(writers)))
        done.set()
        assert sum(f.result() for f in readers) >= 2
    assert not problems, problems[:5]

    sqlite = mlflow_reference().tracking_store()
    sexp = sqlite.create_experiment("live")
    for i in range(n):
        log_run(sqlite, sexp, i, finish=not running(i))
    for q in QUERIES:
        assert summary(search(tracking_store(store, strict=True), exp, q)) == \
            summary(search(sqlite, sexp, q)), q


def test_first_search_cost_does_not_grow_with_the_runs(store) -> None:  # type: ignore[no-untyped-def]
    """The budget: a first search after a sweep of N runs is not O(N) requests.  With pages of
    the default size, 50 and 300 finished runs both cost the listing plus at most one GET per
    top-level page."""
    costs = []
    for n in (50, 300):
        setup = tracking_store(store, strict=True)
        exp = setup.create_experiment(f"budget-{n}")
        sweep(store, exp, n)
        reader = tracking_store(store, strict=True)
        counter = Requests(reader)
        assert len(reader.search_runs([exp], "", ViewType.ALL, max_results=None)) == n
        costs.append(len(counter.take()))
    assert costs[1] <= 2 ** pages.MIN_BITS + 3, costs
    assert costs[1] < 300 / 10, costs


def test_first_search_reads_the_pages_while_the_heads_are_still_listed(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The first search of an experiment in a process GETs its pages as soon as they are
    listed, not after the heads' listing (a round trip less); a later search of it in the same
    process reads no page early.  Here the heads' LIST answers are held back until a page GET
    has begun (at most 60 s: the code before, which read pages after the listing, fails).
    Without the read cache: a process that finds the heads on disk reads no page at all."""
    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("early")
    sweep(store, exp, 60, writers=4)
    reader = tracking_store(store, strict=True)
    reader.blobs.page_size = 20  # three LIST pages of heads
    heads, folder = layout.heads(exp), layout.head_pages(exp)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    page_read = threading.Event()
    real_list, real_get = reader.blobs._list_page, reader.blobs._get

    def held_list(prefix: str, token: str | None) -> Any:
        answer = real_list(prefix, token)
        if prefix.startswith(heads):
            page_read.wait(60)
            with lock:
                events.append(("heads listed", prefix))
        return answer

    def get(key: str) -> Any:
        with lock:
            events.append(("get", key))
        if key.startswith(folder):
            page_read.set()
        return real_get(key)

    reader.blobs._list_page, reader.blobs._get = held_list, get  # type: ignore[method-assign]
    expected = summary(search(tracking_store(store, strict=True), exp, ("", None)))
    assert summary(search(reader, exp, ("", None))) == expected
    page_gets = [i for i, (what, key) in enumerate(events)
                 if what == "get" and key.startswith(folder)]
    first_listed = min(i for i, (what, _) in enumerate(events) if what == "heads listed")
    assert page_gets and min(page_gets) < first_listed, events
    events.clear()
    assert summary(search(reader, exp, ("", None))) == expected
    assert not [key for what, key in events if what == "get"], "nothing read a second time"


def test_searches_that_start_during_the_first_read_wait_for_it(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Searches of an experiment that start while this process is still reading it for the
    first time (the UI sends several requests as a page opens; a server's read-ahead may be
    reading it) wait for that read, then only list: every page is read once.  The first
    search's heads' listing is held until the second search has been going for 0.5 s; before,
    the second read every page beside the first."""
    exp, expected, reader = swept_reader(store, monkeypatch, "together", 40, writers=4)
    heads, folder = layout.heads(exp), layout.head_pages(exp)
    listing, second_started = threading.Event(), threading.Event()
    gets: list[str] = []
    real_list, real_get = reader.blobs._list_page, reader.blobs._get

    def held_list(prefix: str, token: str | None) -> Any:
        if prefix.startswith(heads) and not listing.is_set():
            listing.set()
            second_started.wait(60)
            time.sleep(0.5)
        return real_list(prefix, token)

    def get(key: str) -> Any:
        gets.append(key)
        return real_get(key)

    reader.blobs._list_page, reader.blobs._get = held_list, get  # type: ignore[method-assign]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(search, reader, exp, QUERIES[1])
        assert listing.wait(60)
        second = pool.submit(search, reader, exp, QUERIES[1])
        second_started.set()
        assert summary(first.result(120)) == expected
        assert summary(second.result(120)) == expected
    page_gets = collections.Counter(k for k in gets if k.startswith(folder))
    assert page_gets and max(page_gets.values()) == 1, page_gets
    assert not [k for k in gets if k.startswith(heads)], "every head was in a page"


def test_a_search_during_the_first_read_lists_beside_it(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A search that starts while the first read of its experiment goes on sends its listing
    of the heads at once, beside that read, and waits only for the pages and their decoding
    (before, it listed only after the first read had ended).  It still lists after it began: a
    run finished after the first read's listing and before the search started is in its
    answer."""
    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("beside")
    sweep(store, exp, 30, writers=4)
    reader = tracking_store(store, strict=True)
    heads = layout.heads(exp)
    first_listed, second_listing = threading.Event(), threading.Event()
    beside: list[bool] = []  # whether the second search listed while the first read went on
    real_list = reader.blobs._list_page

    def held_list(prefix: str, token: str | None) -> Any:
        if not prefix.startswith(heads):
            return real_list(prefix, token)
        if not first_listed.is_set():  # the first read: listed, then held
            got = real_list(prefix, token)
            first_listed.set()
            beside.append(second_listing.wait(10))
            return got
        second_listing.set()
        return real_list(prefix, token)

    reader.blobs._list_page = held_list  # type: ignore[method-assign]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(search, reader, exp, ("", None))
        assert first_listed.wait(60)
        late = log_run(setup, exp, 30)  # acknowledged after the first read listed
        second = pool.submit(search, reader, exp, ("", None))
        assert late not in {r.info.run_id for r in first.result(120)}
        got = second.result(120)
    assert beside == [True], "the second search listed only after the first read"
    expected = summary(search(tracking_store(store, strict=True), exp, ("", None)))
    assert len(expected) == 31
    assert summary(got) == expected


def test_a_search_reads_the_heads_while_its_filter_is_parsed(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The heads' listing goes out before the filter is parsed and is answered while it is
    parsed (a process's first parse builds sqlparse's lexer: as long as a listing).  Here the
    heads' LIST is held until the parse has begun (at most 20 s: the code before, which parsed
    only after reading, fails); a filter MLflow refuses still raises MLflow's error, whatever
    the runs."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.search_utils import SearchUtils

    exp, expected, reader = swept_reader(store, monkeypatch, "parsed", 12, writers=2)
    heads = layout.heads(exp)
    parsing = threading.Event()
    beside: list[bool] = []  # whether the heads' listing was answered during the parse
    real_list, real_parse = reader.blobs._list_page, SearchUtils.parse_search_filter

    def list_page(prefix: str, token: str | None) -> Any:
        if prefix.startswith(heads):
            beside.append(parsing.wait(20))
        return real_list(prefix, token)

    def parse(filter_string: str | None) -> Any:
        parsing.set()
        return real_parse(filter_string)

    reader.blobs._list_page = list_page  # type: ignore[method-assign]
    monkeypatch.setattr(SearchUtils, "parse_search_filter", staticmethod(parse))
    assert summary(search(reader, exp, QUERIES[1])) == expected
    assert beside and all(beside), "the heads were listed only before the filter was parsed"
    with pytest.raises(MlflowException) as refused:
        search(reader, exp, ("nonsense.x = 1", None))
    with pytest.raises(MlflowException) as mlflows:
        real_parse("nonsense.x = 1")
    assert refused.value.error_code == mlflows.value.error_code
    assert str(refused.value) == str(mlflows.value)


def test_the_first_search_reads_each_page_once(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Heads newer than their page entries (here 30 of 60, rewritten behind the writers'
    backs) are read one by one; the pages read early are not read a second time for them
    (they hold nothing newer).  Before, every page holding a stale entry was read twice."""
    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("once")
    ids = sweep(store, exp, 60, writers=4)
    for rid in ids[:30]:
        key = layout.head(exp, rid)
        head, version = records.read_versioned(setup.blobs, key)
        head["tags"]["t0"] = "x-newer"  # another body: on S3 and GCS another version too
        setup.blobs.put_if_version(key, records.dumps(head), version)
    expected = summary(search(tracking_store(store, strict=True), exp, QUERIES[4]))
    reader = tracking_store(store, strict=True)
    gets: list[str] = []
    real_get = reader.blobs._get

    def get(key: str) -> Any:
        gets.append(key)
        return real_get(key)

    reader.blobs._get = get  # type: ignore[method-assign]
    assert summary(search(reader, exp, QUERIES[4])) == expected
    page_gets = collections.Counter(k for k in gets if k.startswith(layout.head_pages(exp)))
    assert page_gets and max(page_gets.values()) == 1, page_gets
    assert {layout.head(exp, rid) for rid in ids[:30]} <= set(gets)


def give_up(s: BlobTrackingStore, exp: str, run_ids: list[str]) -> None:
    """What writers that lost their races on a page leave: these runs in no page."""
    gone = {layout.head(exp, r) for r in run_ids}
    for info in s.blobs.list(layout.head_pages(exp)):
        split, entries = pages.unpack(s.blobs.get(info.key))
        if not split and gone & set(entries):
            s.blobs.put(info.key, pages.pack({k: v for k, v in entries.items() if k not in gone}))


def head_gets(s: BlobTrackingStore, exp: str) -> list[str]:
    """The heads of ``exp`` that ``s`` GETs one by one from now on (appended as it does)."""
    gets: list[str] = []
    real_get = s.blobs._get

    def get(key: str) -> Any:
        if key.startswith(layout.heads(exp)):
            gets.append(key)
        return real_get(key)

    s.blobs._get = get  # type: ignore[method-assign]
    return gets


def test_a_reader_pages_the_few_heads_the_writers_gave_up(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Three finished runs in no page (their writers gave them up): the first reader GETs
    them, and puts them into the pages, so that the next reader of another machine does not
    (before, a reader paged only 16 or more)."""
    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("healed")
    ids = sweep(store, exp, 40, writers=4)
    give_up(setup, exp, ids[:3])
    first = tracking_store(store, strict=True)
    gets = head_gets(first, exp)
    expected = summary(search(first, exp, QUERIES[1]))
    assert sorted(gets) == sorted(layout.head(exp, r) for r in ids[:3])
    first.close()  # what a process does at exit: its page writes end
    second = tracking_store(store, strict=True)
    gets = head_gets(second, exp)
    assert summary(search(second, exp, QUERIES[1])) == expected
    assert gets == []


def test_a_merge_that_adds_nothing_writes_nothing(store) -> None:  # type: ignore[no-untyped-def]
    """Entries already in their page at their versions (a writer's retry, a reader paging
    what a writer paged meanwhile) cost the merge a GET of the page, not a PUT."""
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("merged-twice")
    ids = sweep(store, exp, 12, writers=2)
    folder = layout.head_pages(exp)
    heads = {layout.head(exp, r): records.read_versioned(setup.blobs, layout.head(exp, r))
             for r in ids}
    entries = {key: (version, records.dumps(rec)) for key, (rec, version) in heads.items()}
    assert pages.merge(setup.blobs, folder, entries) == {}  # whatever the writers left
    # What this store queued itself (the experiment's record for the experiments' pages) is
    # written now, not by its page thread while the requests below are counted.
    setup._page_writer.write()
    counter = Requests(setup)
    assert pages.merge(setup.blobs, folder, entries) == {}
    calls = counter.take()
    assert "_get" in calls and "_put" not in calls and "_delete" not in calls, calls
    # One entry at another version: its page is written, the others are not.
    key = layout.head(exp, ids[0])
    assert pages.merge(setup.blobs, folder, {key: ('"another"', entries[key][1])}) == {}
    assert counter.take().count("_put") == 1


def test_records_read_one_by_one_because_they_were_few_are_not_paged_again(store) -> None:  # type: ignore[no-untyped-def]
    """A reader that GETs a few records because that is cheaper than their pages does not know
    whether a page holds them, and queues none (it would rewrite pages that hold them); records
    its pages lacked it does queue (see the test above)."""
    setup = tracking_store(store, strict=True)
    for i in range(2):
        setup.create_experiment(f"few-{i}")
    setup.close()  # its experiment records are in the pages
    first = tracking_store(store, strict=True)
    assert len(first.search_experiments(ViewType.ALL, max_results=100)) == 3
    first.close()  # it paged the default experiment if no page lay on its path
    reader = tracking_store(store, strict=True)
    paged = set().union(*(keys for _, keys in
                          page_entries_in(reader.blobs, layout.experiment_pages()).values()))
    assert paged >= {layout.experiment("1"), layout.experiment("2")}, paged
    counter = Requests(reader)
    assert len(reader.search_experiments(ViewType.ALL, max_results=100)) == 3
    assert counter.take().count("_get") == 3  # fewer than pages.MIN_MISSES: read directly
    assert reader._page_writer.pending() == 0
    reader._page_writer.write()
    assert not [c for c in counter.take() if c.startswith("_put")]


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_reader_that_may_not_write_stops_paging(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A reader whose credentials may only read and list (a bucket policy, enforced by the
    IAM-enforcing moto) tries to page what it had to GET once, is refused, and then sends no
    more page writes: the searches answer the same."""
    from cloudtrack.config import resolve

    monkeypatch.setenv("CLOUDTRACK_READ_CACHE", "off")
    setup = tracking_store(store, strict=True)
    exps = [setup.create_experiment(f"read-only-{i}") for i in range(2)]
    ids = {exp: sweep(store, exp, 20, writers=2) for exp in exps}
    reference = tracking_store(store, strict=True)
    expected = [summary(search(reference, exp, QUERIES[1])) for exp in exps]
    reference.close()  # its page writes, if it had any, are done
    for exp in exps:
        give_up(setup, exp, ids[exp][:3])
    env = {**store.env, **store.service.read_only_env()}
    reader = BlobTrackingStore(store.uri, config=resolve(store.uri, env))
    counter = Requests(reader)
    assert summary(search(reader, exps[0], QUERIES[1])) == expected[0]
    reader._page_writer.write()  # its background pass, now
    assert "_put" in counter.take() and reader._page_writer._refused
    assert summary(search(reader, exps[1], QUERIES[1])) == expected[1]
    reader._page_writer.write()
    assert "_put" not in counter.take()
    reader.close()


def test_logged_models_are_paged_too(store, mlflow_reference: Callable[[], MlflowReference]) -> None:  # type: ignore[no-untyped-def]
    """search_logged_models of a new process reads the pages writers kept for the models they
    finalized (a pending one directly), and answers as MLflow's sqlite store does."""
    from mlflow.entities import LoggedModelParameter, LoggedModelStatus

    def populate(s: Any, exp: str, first: int, count: int) -> None:
        for i in range(first, first + count):
            m = s.create_logged_model(exp, name=f"model-{i:03d}",
                                      params=[LoggedModelParameter("i", str(i))])
            if i % 10:
                s.finalize_logged_model(m.model_id, LoggedModelStatus.READY)

    def show(models: Any) -> list[Any]:
        return [(m.name, str(m.status), sorted(m.params.items())) for m in models]

    sqlite = mlflow_reference().tracking_store()
    sexp = sqlite.create_experiment("models")
    populate(sqlite, sexp, 0, 60)
    setup = tracking_store(store, strict=True)
    exp = setup.create_experiment("models")

    def write(w: int) -> None:
        s = tracking_store(store, strict=True)
        populate(s, exp, w * 15, 15)
        s.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    order = [{"field_name": "name", "ascending": True}]
    reader = tracking_store(store, strict=True)
    counter = Requests(reader)
    got = reader.search_logged_models([exp], order_by=order, max_results=100)
    calls = collections.Counter(counter.take())
    assert show(got) == show(sqlite.search_logged_models([sexp], order_by=order, max_results=100))
    assert calls["_get"] <= 16 + 6, f"{calls}: pages plus the 6 pending models"


def test_experiments_are_paged_too(store, mlflow_reference: Callable[[], MlflowReference]) -> None:  # type: ignore[no-untyped-def]
    """search_experiments of a new process reads the pages writers kept of the experiment
    records (not one GET per experiment), and answers as MLflow's sqlite store does, deleted
    and renamed experiments included."""
    n = 64

    def populate(s: Any, first: int, count: int) -> None:
        for i in range(first, first + count):
            exp = s.create_experiment(f"exp-{i:03d}", tags=[ExperimentTag("i", str(i))])
            if i % 7 == 0:
                s.delete_experiment(exp)
            elif i % 5 == 0:
                s.rename_experiment(exp, f"renamed-{i:03d}")

    def show(exps: Any) -> list[Any]:
        return sorted((e.name, e.lifecycle_stage, sorted(e.tags.items())) for e in exps)

    sqlite = mlflow_reference().tracking_store()
    populate(sqlite, 0, n)

    def write(w: int) -> None:
        s = tracking_store(store, strict=True)
        populate(s, w * (n // 4), n // 4)
        s.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    for view in (ViewType.ACTIVE_ONLY, ViewType.DELETED_ONLY, ViewType.ALL):
        reader = tracking_store(store, strict=True)
        counter = Requests(reader)
        got = reader.search_experiments(view, max_results=1000)
        calls = collections.Counter(counter.take())
        assert show(got) == show(sqlite.search_experiments(view, max_results=1000)), view
        assert calls["_get"] <= 16 + 4, f"{calls}: the pages, not {n} experiment records"
        reader.close()
    # A damaged page costs GETs, never an experiment.
    setup = tracking_store(store, strict=True)
    for info in setup.blobs.list(layout.experiment_pages()):
        setup.blobs.put(info.key, b"not a page")
    got = tracking_store(store, strict=True).search_experiments(ViewType.ALL, max_results=1000)
    assert show(got) == show(sqlite.search_experiments(ViewType.ALL, max_results=1000))


def test_an_experiment_creation_in_progress_is_not_paged(store) -> None:  # type: ignore[no-untyped-def]
    """A process whose last write of an experiment record is a creation not yet settled (it
    was killed, or its name claim failed) leaves nothing of it in the pages: readers read such
    records directly and decide by the claim."""
    from cloudtrack.store import claims

    writer = tracking_store(store, strict=True)
    writer.create_experiment("settled")
    key = layout.experiment("424242")
    writer.blobs.put(key, records.dumps({"experiment_id": "424242", "name": "in-progress",
                                         claims.PENDING: True}))
    writer.close()  # what is queued for the pages is written now
    reader = tracking_store(store, strict=True)
    paged = set().union(*(pages.unpack(reader.blobs.get(i.key))[1]
                          for i in reader.blobs.list(layout.experiment_pages())))
    assert paged and key not in paged
