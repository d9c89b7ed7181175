"""The head snapshot of an experiment: its run heads packed into one object, each with the
version it was read at (``snapshots/heads/<exp>.json.gz``, docs/format.md).

The store's checkpoint: a reader that would GET thousands of heads GETs this one object
instead and takes from it only the heads whose version equals the version a fresh listing
reports.  So a stale or damaged snapshot costs requests, never correctness; nobody has to keep
it current, and no writer fights over it.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cloudtrack.errors import BlobNotFound
from cloudtrack.store import layout, records
from cloudtrack.store.cache import Listing, VersionedCache
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


def write(blobs: Blobs, experiment_id: str, cache: VersionedCache, listing: Listing) -> None:
    """Pack the listed heads that ``cache`` holds at their listed version."""
    listing = list(listing)
    vouched = cache.vouched(listing)
    entries = {key: [version, vouched[key]] for key, version in listing if key in vouched}
    body = gzip.compress(records.dumps({"heads": entries, "written": int(time.time() * 1000)}),
                         compresslevel=5)
    blobs.put(layout.head_snapshot(experiment_id), body)
