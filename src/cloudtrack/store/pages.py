"""Pages: records packed by the writers that write them, so that a reader GETs a few hundred
per request (docs/format.md, "Head pages"): finished runs' heads (``index/heads/<exp>/``),
settled logged models (``index/logged-models/<exp>/``), registry records
(``index/registry/…``).

A record's page is named by the leading bits of the SHA-256 of its key: at least ``MIN_BITS``
bits (16 pages), one bit more wherever a page outgrows ``MAX_ENTRIES`` (the page is split in
two and left behind as a tombstone).  So pages stay small, a reader needs about one page per
few hundred runs, and writers finishing runs at once spread over many objects.

Nothing here is trusted blindly: every entry carries the version its head had when the entry
was written, and a reader takes an entry only when a fresh listing of the heads reports that
same version.  A missing, stale, damaged or half-split page costs requests, never
correctness, and losing a race for a page costs the writer nothing but the entry (after a few
attempts it gives up: no writer waits on another for long).

A page is gzip of lines: a JSON header (``{"page": 1}``, or ``{"page": 1, "split": true}``
for a tombstone), then one line per head, ``<head key> TAB <version> TAB <head JSON>``.  Lines
let a writer merge without decoding the heads it does not touch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from cloudtrack.errors import AlreadyExists, BlobNotFound, PreconditionFailed
from cloudtrack.store.cache import Listing, VersionedCache
from cloudtrack.store.records import Record
from cloudtrack.threads import on_own_thread

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.store")

#: Every experiment starts with 2**MIN_BITS pages, so concurrent writers rarely meet.
MIN_BITS = 4
#: A page holding more heads than this is split in two.
MAX_ENTRIES = 600
#: Attempts at one page before a writer gives its entries up (they are only a cache).
ATTEMPTS = 4
#: A reader missing fewer records than this GETs them rather than look in pages.
MIN_MISSES = 4

_HEADER = b'{"page":1}'
_TOMBSTONE = b'{"page":1,"split":true}'

#: head key -> (version, head bytes)
RawEntries = Mapping[str, tuple[str, bytes]]


def key_bits(key: str, depth: int) -> str:
    """The first ``depth`` bits of SHA-256(the record's key), as '0'/'1' characters."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "".join(f"{b:08b}" for b in digest[:(depth + 7) // 8])[:depth]


def page_key(folder: str, bits: str) -> str:
    """The page ``bits`` in ``folder`` (``layout.head_pages(exp)`` and the like)."""
    return f"{folder}p{bits}.gz"


def bits_of(key: str) -> str | None:
    """``index/heads/3/p0110.gz`` -> ``0110``; None for a key that is not a page."""
    name = key.rsplit("/", 1)[-1]
    if not (name.startswith("p") and name.endswith(".gz")):
        return None
    bits = name[1:-3]
    return bits if len(bits) >= MIN_BITS and set(bits) <= {"0", "1"} else None


class PageMap:
    """The pages a listing found, for finding the page that holds a run."""

    def __init__(self, bits: Iterable[str], *, known: bool = True) -> None:
        self.bits = set(bits)
        #: The pages were listed (False: not listed, or the listing failed): a record no
        #: listed page covers is then in no page only if this holds.
        self.known = known
        self.depth = max((len(b) for b in self.bits), default=MIN_BITS)

    def page_of(self, key: str) -> str | None:
        """The deepest listed page on the record's path (None if none is listed)."""
        path = key_bits(key, self.depth)
        for depth in range(len(path), MIN_BITS - 1, -1):
            if path[:depth] in self.bits:
                return path[:depth]
        return None

    def reachable(self) -> list[str]:
        """The listed pages :meth:`page_of` can answer for some key: all but those whose
        both halves are covered by deeper listed pages (a split's tombstone)."""
        prefixes = {b[:i] for b in self.bits for i in range(len(b) + 1)}

        def covered(bits: str) -> bool:  # every path through ``bits`` ends in a listed page
            if bits in self.bits:
                return True
            return bits in prefixes and covered(bits + "0") and covered(bits + "1")

        return sorted(b for b in self.bits
                      if not (b + "0" in prefixes and covered(b + "0") and covered(b + "1")))

    def has_halves(self, bits: str) -> bool:
        """Whether pages below ``bits`` are listed (it is split, or its split half-done)."""
        return any(len(b) > len(bits) and b.startswith(bits) for b in self.bits)

    def target_of(self, key: str) -> str:
        """Where a writer puts the record: its deepest listed page, or a new top-level one."""
        return self.page_of(key) or key_bits(key, MIN_BITS)


def list_pages(blobs: Blobs, folder: str) -> PageMap:
    return PageMap(b for i in blobs.list(folder) if (b := bits_of(i.key)) is not None)


def list_pages_for_reading(blobs: Blobs, folder: str) -> PageMap:
    """:func:`list_pages` for a reader: none when they cannot be listed (pages only save
    requests; the reader goes on with the records)."""
    try:
        return list_pages(blobs, folder)
    except Exception as e:
        log.debug("could not list the pages in %s: %r", blobs.object_uri(folder), e)
        return PageMap((), known=False)


# -- the page's bytes ------------------------------------------------------------------------

def pack(entries: RawEntries, *, split: bool = False) -> bytes:
    gz = zlib.compressobj(3, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    out = [gz.compress((_TOMBSTONE if split else _HEADER) + b"\n")]
    for key in sorted(entries):
        version, head = entries[key]
        out.append(gz.compress(b"\t".join((key.encode(), version.encode(), head)) + b"\n"))
    out.append(gz.flush())
    return b"".join(out)


def unpack(data: bytes) -> tuple[bool, dict[str, tuple[str, bytes]]]:
    """(split, entries) of a page's bytes; raises ValueError on anything malformed."""
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"not a gzip page: {e}") from e
    lines = text.split(b"\n")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("page") != 1:
        raise ValueError("not a page")
    entries: dict[str, tuple[str, bytes]] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, version, head = line.split(b"\t", 2)
        entries[key.decode()] = (version.decode(), head)
    return bool(header.get("split")), entries


def read_entries(blobs: Blobs, folder: str, bits: str,
                 wanted: Callable[[str], bool]) -> dict[str, tuple[str, Record]]:
    """The entries of one page that ``wanted`` asks for, heads decoded; empty when the page is
    missing or unreadable (a reader is then only slower)."""
    key = page_key(folder, bits)
    try:
        _, entries = unpack(blobs.get(key))
    except BlobNotFound:
        return {}
    except Exception as e:  # a damaged page is only a slower search
        log.warning("ignoring unreadable page %s: %r", blobs.object_uri(key), e)
        return {}
    chosen = [(head_key, version, head) for head_key, (version, head) in entries.items()
              if wanted(head_key)]
    decoded = _decode([head for *_, head in chosen])
    return {head_key: (version, record)
            for (head_key, version, _), record in zip(chosen, decoded, strict=True)
            if record is not None}


#: What :func:`read_early` gives: key -> (version, record) of every entry, and the pages read.
EarlyPages = tuple[dict[str, tuple[str, Record]], frozenset[str]]


def read_early(blobs: Blobs, folder: str, listed: Future[PageMap],
               map_fn: Callable[..., Iterable[Any]]) -> Future[EarlyPages]:
    """Every entry of every page in ``folder``, read as soon as ``listed`` gives the pages
    (while the records are still being listed: one round trip less), and the pages read; on
    a thread of its own, as it waits on ``map_fn``'s pool.  Nothing when the pages cannot be
    read (pages only save requests)."""

    def read() -> EarlyPages:
        found: dict[str, tuple[str, Record]] = {}
        bits: list[str] = []
        try:
            bits = listed.result().reachable()
            for part in map_fn(lambda b: read_entries(blobs, folder, b, _every_key), bits):
                found.update(part)
        except Exception as e:  # pages only save requests
            log.debug("could not read the pages in %s early: %r", blobs.object_uri(folder), e)
        return found, frozenset(bits)

    return on_own_thread(read, "cloudtrack-pages")


def _every_key(_: str) -> bool:
    return True


def _decode(heads: list[bytes]) -> list[Record | None]:
    """The records of a page's lines, None for a line that is not a JSON object.

    All in one ``json.loads`` of an array: decoding the 10,000 heads of an experiment's pages
    took 0.14 s so, against 0.21 s line by line, and the decoder shares the key strings of one
    call, so the heads held 5.0 KB each instead of 7.2 KB.  A page with a damaged line is
    decoded line by line (the other lines still serve)."""
    if not heads:
        return []
    try:
        decoded = json.loads(b"[" + b",".join(heads) + b"]")
        if len(decoded) == len(heads):
            return [rec if isinstance(rec, dict) else None for rec in decoded]
    except ValueError:
        pass
    out: list[Record | None] = []
    for head in heads:
        try:
            rec = json.loads(head)
        except ValueError:
            rec = None
        out.append(rec if isinstance(rec, dict) else None)
    return out


def seed(cache: VersionedCache, blobs: Blobs, folder: str, page_map: PageMap,
         listing: Listing, map_fn: Callable[..., Iterable[Any]],
         read: Collection[str] = ()) -> list[str]:
    """Fill ``cache`` with the listed records it lacks (at their listed version) from the
    pages that hold them, when that takes fewer GETs than the records, reading the pages
    through ``map_fn`` (a pool's ``map``).  ``read``: pages already read into ``cache`` (what
    they hold is there; they are not read again).

    Return the listed keys still missing that are known to be in no page at their listed
    version (their page was read without them, or the listed pages have none for them): what
    a reader may put into the pages.  Other missing keys were left to be read one by one
    because they were few, and may well be in their pages."""
    listing = list(listing)
    missing = cache.missing(listing)
    where = {key: page_map.page_of(key) for key in missing}
    read = set(read)
    if len(missing) >= MIN_MISSES:
        needed = {bits for bits in where.values() if bits is not None and bits not in read}
        if needed and len(needed) < len(missing):
            wanted = set(missing).__contains__
            for found in map_fn(lambda b: read_entries(blobs, folder, b, wanted),
                                sorted(needed)):
                cache.merge(found)
            read |= needed
            missing = cache.missing(listing)
    return [key for key in missing
            if where[key] in read or (where[key] is None and page_map.known)]


# -- writing ---------------------------------------------------------------------------------

def merge(blobs: Blobs, folder: str, entries: RawEntries, pages: PageMap | None = None,
          map_fn: Callable[..., Iterable[Any]] = map,
          ) -> dict[str, tuple[str, bytes]]:
    """Put ``entries`` into their pages; return the entries given up (lost races).

    ``pages`` is what the caller last listed (a page found split sends its entries on to its
    halves); ``map_fn`` (a pool's ``map``) writes several pages at once.  An error of one
    page is raised once the others are written (no write of the call is left running)."""
    if not entries:
        return {}
    if pages is None:
        pages = list_pages(blobs, folder)
    groups: dict[str, dict[str, tuple[str, bytes]]] = {}
    for key, entry in entries.items():
        groups.setdefault(pages.target_of(key), {})[key] = entry
    def one(item: tuple[str, dict[str, tuple[str, bytes]]],
            ) -> tuple[dict[str, tuple[str, bytes]], Exception | None]:
        try:
            return _merge_page(blobs, folder, *item, halved=pages.has_halves(item[0])), None
        except Exception as e:  # raised once every page's write has ended, not before
            return {}, e

    lost: dict[str, tuple[str, bytes]] = {}
    errors: list[Exception] = []
    for part, error in map_fn(one, list(groups.items())):
        lost.update(part)
        if error is not None:
            errors.append(error)
    if errors:
        raise errors[0]
    return lost


def _merge_page(blobs: Blobs, folder: str, bits: str, entries: dict[str, tuple[str, bytes]],
                *, halved: bool = False) -> dict[str, tuple[str, bytes]]:
    """Put ``entries`` into page ``bits``.  ``halved``: the listing shows pages below this
    one, so if it is not a tombstone it is a split left half-done by an older version
    (which wrote the halves first), and this writer finishes it."""
    key = page_key(folder, bits)
    for attempt in range(ATTEMPTS):
        try:
            data, version = blobs.get_versioned(key)
        except BlobNotFound:
            data, version = None, None
        stored: dict[str, tuple[str, bytes]] = {}
        if data is not None:
            try:
                split, stored = unpack(data)
            except ValueError as e:
                log.warning("rewriting unreadable page %s: %s", blobs.object_uri(key), e)
                split, stored = False, {}
            if split:
                return _merge_children(blobs, folder, bits, entries)
        elif halved:
            return _merge_children(blobs, folder, bits, entries)
        if all(stored.get(k, ("",))[0] == entry[0] for k, entry in entries.items()):
            return {}  # every entry is there at its version already: nothing to write
        merged = {**stored, **entries}
        try:
            if len(merged) > MAX_ENTRIES or halved:
                return _split(blobs, folder, bits, merged, version)
            if version is None:
                blobs.put_if_absent(key, pack(merged))
            else:
                blobs.put_if_version(key, pack(merged), version)
            return {}
        except (PreconditionFailed, AlreadyExists):
            # Another writer got there first: read again, with a little random patience so
            # that writers that met once do not meet again.
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    log.debug("gave up %d entries of page %s after %d lost races", len(entries),
              blobs.object_uri(key), ATTEMPTS)
    return entries


def _merge_children(blobs: Blobs, folder: str, bits: str,
                    entries: Mapping[str, tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    halves: dict[str, dict[str, tuple[str, bytes]]] = {bits + "0": {}, bits + "1": {}}
    for key, entry in entries.items():
        halves[key_bits(key, len(bits) + 1)][key] = entry
    lost: dict[str, tuple[str, bytes]] = {}
    for child, part in halves.items():
        if part:
            lost.update(_merge_page(blobs, folder, child, part))
    return lost


def _split(blobs: Blobs, folder: str, bits: str, merged: dict[str, tuple[str, bytes]],
           version: str | None) -> dict[str, tuple[str, bytes]]:
    """Leave a tombstone where the page was, then move its entries into its two halves;
    return the entries the halves did not take (lost races: the caller tries them again
    later).  Raises PreconditionFailed / AlreadyExists when another writer changed the page
    since it was read (the caller reads it again).

    The tombstone comes first, written only over the version read: from then on every writer
    that reads the page goes on to its halves, so no entry is ever added to a page readers no
    longer look in (halves written first would leave such a page behind whenever the
    tombstone lost its race for good).  Until the halves are written their entries are in no
    page: readers GET those heads, which costs requests, never correctness."""
    key = page_key(folder, bits)
    if version is None:
        blobs.put_if_absent(key, pack({}, split=True))
    else:
        blobs.put_if_version(key, pack({}, split=True), version)
    return _merge_children(blobs, folder, bits, merged)
