"""PageMap (src/cloudtrack/store/pages.py) without a store: which listed page a reader looks
in for a key, and which pages some key can be looked for in at all (what the first search of
an experiment reads early, before it knows the keys); and how a page's lines are read back,
on a local store."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.store import pages
from cloudtrack.store.pages import PageMap


def pages_some_path_ends_in(page_map: PageMap) -> set[str]:
    """By brute force: page_of over every path of the map's depth."""
    out = set()
    for path in itertools.product("01", repeat=page_map.depth):
        bits = "".join(path)
        for depth in range(len(bits), 3, -1):
            if bits[:depth] in page_map.bits:
                out.add(bits[:depth])
                break
    return out


def test_reachable_pages_are_exactly_those_page_of_can_answer() -> None:
    for seed in range(300):  # random maps of 1-13 pages, 4-7 bits deep
        rnd = random.Random(seed)
        bits = {"".join(rnd.choice("01") for _ in range(rnd.randrange(4, 8)))
                for _ in range(rnd.randrange(1, 14))}
        page_map = PageMap(bits)
        assert set(page_map.reachable()) == pages_some_path_ends_in(page_map), sorted(bits)


def test_a_split_page_is_not_reachable_a_half_done_split_is() -> None:
    split = PageMap(["0000", "00000", "00001", "0001"])
    assert split.reachable() == ["00000", "00001", "0001"]
    # Only one half written: the other half's keys are still looked for in the old page.
    half_done = PageMap(["0000", "00000", "0001"])
    assert half_done.reachable() == ["0000", "00000", "0001"]
    # Halves covered deeper down count as covered.
    deep = PageMap(["0000", "00000", "000010", "000011"])
    assert deep.reachable() == ["00000", "000010", "000011"]


def test_a_page_reads_whole_and_a_damaged_line_hides_only_itself(tmp_path: Path) -> None:
    """read_entries decodes a page's wanted lines in one go; a line that is not a JSON
    object (cut short, two objects, a number) is left out and the others still serve."""
    blobs = open_blobs(resolve(str(tmp_path / "store")))
    blobs.create_container()
    folder = "index/heads/1/"
    heads = {f"heads/1/{i:032x}.json": {"info": {"run_id": f"{i:032x}", "n": i},
                                        "params": {"p": str(i)}, "metrics": {}}
             for i in range(40)}
    entries: dict[str, tuple[str, bytes]] = {
        key: (f"v{i}", json.dumps(head).encode()) for i, (key, head) in enumerate(heads.items())}
    read = pages.read_entries
    blobs.put("index/heads/1/p0000.gz", pages.pack(entries))
    assert read(blobs, folder, "0000", lambda _: True) == {
        key: (f"v{i}", head) for i, (key, head) in enumerate(heads.items())}
    wanted = set(list(heads)[::7])
    assert set(read(blobs, folder, "0000", wanted.__contains__)) == wanted

    keys = list(heads)
    damaged = dict(entries)
    damaged[keys[3]] = ("v3", b'{"info": {"run_id"')
    damaged[keys[4]] = ("v4", b'{"a": 1},{"b": 2}')
    damaged[keys[5]] = ("v5", b"3")
    blobs.put("index/heads/1/p0001.gz", pages.pack(damaged))
    assert read(blobs, folder, "0001", lambda _: True) == {
        key: (f"v{i}", head) for i, (key, head) in enumerate(heads.items()) if i not in (3, 4, 5)}
