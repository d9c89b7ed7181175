"""Records cached by the version they were read at.

A listing reports every object's version, so a cached record is used only when the listing
vouches for it (same version), never trusted blindly: a search re-reads only what changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from cloudtrack.store import records
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

#: (key, version) pairs, as a listing reports them.
Listing = Iterable[tuple[str, str]]
#: ``map`` of a thread pool (``executor.map``), or the builtin for serial reads.
MapFn = Callable[[Callable[[str], tuple[str, str, Record | Exception]], list[str]],
                 Iterator[tuple[str, str, Record | Exception]]]


class VersionedCache:
    """key -> (version, record); thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Record]] = {}
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a lock no other thread holds (cloudtrack.forks)."""
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries = {}

    def missing(self, listing: Listing) -> list[str]:
        """The listed keys not cached at their listed version."""
        with self._lock:
            return [key for key, version in listing
                    if (hit := self._entries.get(key)) is None or hit[0] != version]

    def vouched(self, listing: Listing) -> dict[str, Record]:
        """The listed records cached at exactly their listed version, in listing order."""
        with self._lock:
            return {key: hit[1] for key, version in listing
                    if (hit := self._entries.get(key)) is not None and hit[0] == version}

    def entries(self, keys: Iterable[str]) -> dict[str, tuple[str, Record]]:
        """key -> (version, record) of the given keys this cache holds."""
        with self._lock:
            return {key: hit for key in keys if (hit := self._entries.get(key)) is not None}

    def merge(self, entries: Mapping[str, tuple[str, Record]]) -> None:
        """Take every entry whose version differs from the cached one (a listing decides later
        which of them to use)."""
        with self._lock:
            for key, (version, record) in entries.items():
                hit = self._entries.get(key)
                if hit is None or hit[0] != version:
                    self._entries[key] = (version, record)

    def read_many(self, blobs: Blobs, listing: Listing,
                  map_fn: MapFn) -> dict[str, Record | Exception]:
        """Every listed record: from the cache when it holds the listed version, else GET (the
        GETs through ``map_fn``, in parallel with a pool's ``map``).  A failed read is returned
        as its exception, so one bad object hides nothing else; a record read at a newer
        version than listed is returned (and cached at the version read)."""
        listing = list(listing)
        out: dict[str, Record | Exception] = dict(self.vouched(listing))
        todo = [key for key, _ in listing if key not in out]

        def fetch(key: str) -> tuple[str, str, Record | Exception]:
            try:
                record, version = records.read_versioned(blobs, key)
                return key, version, record
            except Exception as e:  # reported per object, see above
                return key, "", e

        for key, version, record in map_fn(fetch, todo):
            out[key] = record
            if not isinstance(record, Exception):
                with self._lock:
                    self._entries[key] = (version, record)
        return out
