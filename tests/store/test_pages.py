"""PageMap (src/cloudtrack/store/pages.py) without a store: which listed page a reader looks
in for a key, and which pages some key can be looked for in at all (what the first search of
an experiment reads early, before it knows the keys)."""

from __future__ import annotations

import itertools
import random

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
