"""The head snapshot of an experiment, as stores written before head pages have it: its run
heads packed into one object, each with the version it was read at
(``snapshots/heads/<exp>.json.gz``, docs/format.md).  Read only now (while an experiment has
no head pages: :mod:`cloudtrack.store.pages` replaced it); a reader takes from it only the
heads whose version equals the version a fresh listing reports.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from cloudtrack.errors import BlobNotFound
from cloudtrack.store import layout, records
from cloudtrack.store.cache import VersionedCache
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.store")

#: head key -> (version, head)
Entries = Mapping[str, tuple[str, Record]]


def read(blobs: Blobs, experiment_id: str) -> Entries:
    """The snapshot's entries; empty when there is none or it cannot be read (only slower)."""
    key = layout.head_snapshot(experiment_id)
    try:
        snap = json.loads(gzip.decompress(blobs.get(key)))
        return {head_key: (version, head) for head_key, (version, head) in snap["heads"].items()}
    except BlobNotFound:
        return {}
    except Exception as e:  # a damaged snapshot is only a slower search
        log.warning("ignoring unreadable snapshot %s: %r", blobs.object_uri(key), e)
        return {}


def load_into(cache: VersionedCache, blobs: Blobs, experiment_id: str) -> None:
    """Seed ``cache`` from the experiment's snapshot: one GET instead of one per head."""
    cache.merge(read(blobs, experiment_id))


def pack(entries: Iterable[tuple[str, str, bytes]]) -> bytes:
    """A snapshot's bytes from (head key, version, head's record bytes), each key once.

    Decompresses to the bytes of ``records.dumps({"heads": {key: [version, head]}, "written":
    <ms>})``, built without decoding the heads, so a writer may keep the heads it wrote as
    bytes.
    """
    ordered = sorted(entries, key=lambda e: e[0])
    gz = zlib.compressobj(5, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    out = [gz.compress(b'{"heads":{')]
    for i, (key, version, head) in enumerate(ordered):
        item = records.dumps(key) + b":[" + records.dumps(version) + b"," + head + b"]"
        out.append(gz.compress(item if i == 0 else b"," + item))
    out.append(gz.compress(b'},"written":' + str(int(time.time() * 1000)).encode() + b"}"))
    out.append(gz.flush())
    return b"".join(out)
