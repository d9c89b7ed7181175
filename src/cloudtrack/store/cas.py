"""The versioned read-modify-write every changing record goes through (rule 1 of
docs/format.md): read the record and its version, change it, write it back only if the version
is still the one read; on a lost race, read again and re-apply the change."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudtrack.errors import BlobNotFound, PreconditionFailed
from cloudtrack.store import records
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

#: The change to apply: gets a copy of the record, returns the new record, or None for "no
#: change".  It may run several times (once per lost race) and may raise to abort.
Change = Callable[[Record], Record | None]


def versioned_update(blobs: Blobs, key: str, change: Change, *,
                     known: tuple[Record, str] | None = None,
                     missing: Callable[[], Exception] | None = None) -> tuple[Record, str]:
    """Apply ``change`` to the record at ``key``; return the record as stored and its version.

    ``known`` is a cached (record, version) to try first: it saves the GET when nobody else
    wrote since.  ``missing`` builds the error to raise when the record does not exist
    (default: the BlobNotFound itself).
    """
    attempt = 0
    while True:
        if known is None:
            try:
                record, version = records.read_versioned(blobs, key)
            except BlobNotFound:
                if missing is not None:
                    raise missing() from None
                raise
        else:
            # A JSON round trip: a deep copy (faster than copy.deepcopy for records), and the
            # change sees exactly what a GET would have given it.
            record, version = json.loads(json.dumps(known[0])), known[1]
            known = None
        new = change(record)
        if new is None:
            return record, version
        try:
            return new, blobs.put_if_version(key, records.dumps(new), version)
        except PreconditionFailed:
            attempt += 1
            # Somebody else wrote between our read and write: back off a little and re-read.
            time.sleep(min(0.5, 0.005 * (2 ** min(attempt, 7))) * (0.5 + 0.5 * (attempt % 3)))
