"""The fast listing paths of S3, Azure and GCS give exactly what the SDKs' own parsers give.

S3 reads ListObjectsV2 replies with ElementTree in a botocore ``before-parse`` hook, Azure
sends List Blobs through the container client's pipeline and reads the XML itself, GCS reads
the JSON API's reply without building a ``Blob`` per item (the SDKs' generic parsers cost
0.1-1.3 ms per listed object: docs/benchmarks.md).  Each test lists the same awkward keys over
several pages both ways and compares every field.
"""

from __future__ import annotations

from typing import Any

import pytest

from cloudtrack.blobs.azure import AzureBlobs
from cloudtrack.blobs.base import BlobInfo, Blobs
from cloudtrack.blobs.s3 import S3Blobs
from cloudtrack.blobs.s3.listing import EVENT, parse_listing

KEYS = [
    "runs/plain.json",
    "runs/with space/and more.bin",
    "runs/plus+sign/a+b=c.txt",
    "runs/percent%20literal/%2e%2e/x",
    "runs/hash#and?question/file#1?.txt",
    "runs/unicode/日本語/données-ü.json",
    "runs/emoji/🙂.txt",
    "runs/quote'and\"double/x",
    "runs/semi;colon,comma/&amp;<tag>",
    "runs/tab\tand\u00a0nbsp",
    *(f"runs/many/{i:03d}" for i in range(12)),
]


def _fields(infos: list[BlobInfo]) -> list[tuple[str, int, str, Any]]:
    return [(i.key, i.size, i.version, i.modified) for i in infos]


def _fill(blobs: Blobs) -> None:
    for n, key in enumerate(KEYS):
        blobs.put(key, b"x" * n)
    blobs.put("other/not-listed", b"x")


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_s3_listing_hook_matches_botocore(store) -> None:  # type: ignore[no-untyped-def]
    blobs = store.open()
    assert isinstance(blobs, S3Blobs)
    _fill(blobs)
    blobs.page_size = 5
    fast = _fields(list(blobs.list("runs/")))
    fast_dir = blobs.list_dir("runs")
    events = blobs.client.meta.events
    events.unregister(EVENT, parse_listing)
    try:
        slow = _fields(list(blobs.list("runs/")))
        slow_dir = blobs.list_dir("runs")
    finally:
        events.register(EVENT, parse_listing)
    assert [k for k, *_ in slow] == sorted(KEYS, key=lambda k: k.encode())
    assert fast == slow
    assert _fields(fast_dir[0]) == _fields(slow_dir[0]) and fast_dir[1] == slow_dir[1]
    assert {"many", "unicode", "emoji"} <= set(fast_dir[1])


@pytest.mark.parametrize("store", ["azure"], indirect=True)
def test_azure_raw_listing_matches_the_sdk(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    blobs = store.open()
    assert isinstance(blobs, AzureBlobs)
    _fill(blobs)
    blobs.page_size = 5
    calls: list[str | None] = []
    raw = blobs._list_page_raw

    def counting(prefix: str, token: str | None) -> Any:
        calls.append(token)
        return raw(prefix, token)

    monkeypatch.setattr(blobs, "_list_page_raw", counting)
    fast = _fields(list(blobs.list("runs/")))
    assert len(calls) == 5 and calls[0] is None and all(calls[1:]), calls

    def unavailable(prefix: str, token: str | None) -> Any:
        from cloudtrack.blobs.azure.listing import ListingNotUnderstood

        raise ListingNotUnderstood("test: the SDK's path")

    monkeypatch.setattr(blobs, "_list_page_raw", unavailable)
    slow = _fields(list(blobs.list("runs/")))
    assert [k for k, *_ in slow] == sorted(KEYS, key=lambda k: k.encode())
    assert fast == slow


@pytest.mark.parametrize("store", ["azure"], indirect=True)
def test_azure_raw_listing_reports_a_missing_container(store) -> None:  # type: ignore[no-untyped-def]
    from cloudtrack.blobs import open_blobs
    from cloudtrack.config import resolve
    from cloudtrack.errors import ContainerNotFound

    blobs = open_blobs(resolve(store.service.missing_store_uri(), store.env))
    with pytest.raises(ContainerNotFound, match="does not exist"):
        list(blobs.list("runs/"))


@pytest.mark.parametrize("store", ["gcs"], indirect=True)
def test_gcs_json_listing_matches_the_sdk(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from cloudtrack.blobs import gcs

    blobs = store.open()
    assert isinstance(blobs, gcs.GcsBlobs)
    _fill(blobs)
    blobs.page_size = 5
    fast = _fields(list(blobs.list("runs/")))
    monkeypatch.setattr(blobs, "_list_page", blobs._list_page_sdk)
    slow = _fields(list(blobs.list("runs/")))
    assert [k for k, *_ in slow] == sorted(KEYS, key=lambda k: k.encode())
    assert fast == slow


def test_gcs_timestamps_with_nanoseconds() -> None:
    from datetime import datetime, timezone

    from cloudtrack.blobs.gcs.listing import timestamp

    assert timestamp("2026-11-26T12:00:00.123Z") == datetime(2026, 11, 26, 12, 0, 0, 123000,
                                                              tzinfo=timezone.utc)
    assert timestamp("2026-11-26T12:00:00.123456789Z") == datetime(
        2026, 11, 26, 12, 0, 0, 123456, tzinfo=timezone.utc)


def test_spread_listing_finds_exactly_what_a_plain_listing_finds(blobs) -> None:  # type: ignore[no-untyped-def]
    """``list_spread`` reads a large prefix as one listing per next character, in parallel:
    every backend, keys of every first character an id may have, the first page ending inside
    one character's keys."""
    import concurrent.futures
    import uuid

    keys = [f"heads/7/{uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % 2**128).hex}.json"
            for i in range(1, 160)]
    keys += ["heads/7/A-upper.json", "heads/7/Zz.json", "heads/7/g-after-hex.json",
             "heads/7/zz.json", "heads/70-not-under-the-prefix.json", "heads/8/other.json"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: blobs.put(k, b"{}"), keys))
    if blobs.backend != "file":
        blobs.page_size = 7
    calls: list[str] = []
    real = blobs._list_page

    def counted(prefix: str, token: str | None) -> Any:
        calls.append(prefix)
        return real(prefix, token)

    blobs._list_page = counted
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        spread = blobs.list_spread("heads/7/", pool.map)
    plain = list(blobs.list("heads/7/"))
    assert _fields(spread) == _fields(plain)
    assert len(plain) == 159 + 4
    if blobs.backend != "file":  # the object stores: the rest read per first character
        assert len(set(calls)) > 16, calls


def test_range_listing_finds_exactly_what_a_plain_listing_finds(blobs) -> None:  # type: ignore[no-untyped-def]
    """``list_ranges`` reads a prefix as key ranges between bounds an earlier listing gave,
    in parallel: whatever changed since (keys added before, between and after the bounds, a
    bound's own key deleted, keys of any first character), it finds what a plain listing
    finds.  S3 and GCS start each range after its bound (one request a range here, so the
    emulators honour StartAfter / startOffset); the others list plainly."""
    import concurrent.futures
    import uuid

    prefix = "heads/7/"
    keys = [f"{prefix}{uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % 2**128).hex}.json"
            for i in range(1, 120)]
    keys += [f"{prefix}A-upper.json", f"{prefix}Zz.json", f"{prefix}g-after-hex.json",
             f"{prefix}zz.json", f"{prefix}-dash.json", f"{prefix}.dot.json",
             "heads/70-not-under-the-prefix.json", "heads/8/other.json", "heads/7.json"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: blobs.put(k, b"{}"), keys))
    earlier = [i.key for i in blobs.list(prefix)]
    bounds = earlier[20::20]
    later = [bounds[0] + "0", bounds[1][:-6] + "-after.json", bounds[-1] + "x",
             f"{prefix}0", f"{prefix}~tilde.json", f"{prefix}{earlier[0][len(prefix):]}-2"]
    for key in later:
        blobs.put(key, b"{}")
    blobs.delete(bounds[2])
    if blobs.backend != "file":
        blobs.page_size = 50
    calls: list[str | None] = []
    if blobs.lists_after:
        real = blobs._list_page_after

        def counted(prefix: str, after: str | None, token: str | None, size: int) -> Any:
            calls.append(after)
            return real(prefix, after, token, size)

        blobs._list_page_after = counted
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ranged = blobs.list_ranges(prefix, bounds, pool.map, per_range=20)
    ranged_calls = list(calls)  # the plain listing below may go through the same method
    plain = list(blobs.list(prefix))
    assert _fields(ranged) == _fields(plain)
    assert len(plain) == len(earlier) + len(later) - 1
    if blobs.lists_after:
        assert sorted(set(ranged_calls), key=str) == sorted([None, *bounds], key=str)
        assert len(ranged_calls) <= len(bounds) + 1 + 2, ranged_calls
    assert blobs.lists_after == (blobs.backend in ("s3", "gcs"))
