"""The format marker, ``cloudtrack.json`` at the store's root: which format the store holds.

``{"format": "cloudtrack", "version": 1, "created": <ms>}``.  A reader refuses a foreign
marker (:class:`ForeignFormat`) and a newer version than it understands
(:class:`NewerFormatVersion`, which says to upgrade).  The tracking store reads it when it
opens a store and writes it when the store is new; the doctor checks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudtrack.errors import AlreadyExists, BlobNotFound, CloudtrackError, CorruptObject
from cloudtrack.store import layout, records

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs


@dataclass(frozen=True)
class Marker:
    format: str
    version: int
    #: Milliseconds since the epoch; None in markers written without it.
    created: int | None = None


class ForeignFormat(CorruptObject):
    """The marker names another format: the URI points at something that is not a cloudtrack
    store."""

    def __init__(self, uri: str, found: object) -> None:
        super().__init__(uri, f"not a cloudtrack marker (format {found!r})")
        self.found = found


class NewerFormatVersion(CloudtrackError):
    """The store uses a newer format version than this cloudtrack understands."""

    def __init__(self, store_uri: str, version: int) -> None:
        super().__init__(
            f"store {store_uri} uses cloudtrack format version {version}, newer than this "
            f"cloudtrack understands ({layout.FORMAT_VERSION}); upgrade cloudtrack "
            "(pip install -U cloudtrack)")
        self.version = version


def parse(data: bytes, uri: str, store_uri: str | None = None) -> Marker:
    """Validate a marker's bytes read from ``uri``.

    Raises :class:`~cloudtrack.errors.CorruptObject` (not a JSON object, a version that is not
    a number), :class:`ForeignFormat`, or :class:`NewerFormatVersion` naming ``store_uri``.
    """
    record = records.parse(data, uri)
    if record.get("format") != layout.FORMAT:
        raise ForeignFormat(uri, record.get("format"))
    try:
        version = int(record.get("version", 0))
    except (TypeError, ValueError):
        raise CorruptObject(uri, f"version {record.get('version')!r} is not a number") from None
    if version > layout.FORMAT_VERSION:
        raise NewerFormatVersion(store_uri or uri, version)
    created = record.get("created")
    return Marker(layout.FORMAT, version, created if isinstance(created, int) else None)


def read(blobs: Blobs) -> Marker | None:
    """The store's marker, validated (see :func:`parse`); None for a store not initialised yet."""
    try:
        data = blobs.get(layout.MARKER)
    except BlobNotFound:
        return None
    return parse(data, blobs.object_uri(layout.MARKER), blobs.uri.rstrip("/"))


def create(blobs: Blobs) -> None:
    """Write the marker of the current format, unless another process just did."""
    marker = {"format": layout.FORMAT, "version": layout.FORMAT_VERSION,
              "created": int(time.time() * 1000)}
    try:
        blobs.put_if_absent(layout.MARKER, records.dumps(marker))
    except AlreadyExists:
        pass
