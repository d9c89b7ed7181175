"""The format marker, ``cloudtrack.json`` at the store's root: which format the store holds.

``{"format": "cloudtrack", "version": 1, "created": <ms>}``.  A reader refuses a foreign
marker (:class:`ForeignFormat`) and a newer version than it understands
(:class:`NewerFormatVersion`, which says to upgrade).  The tracking store reads it when it
opens a store and writes it when the store is new; the doctor checks it.

Before a store is created, :func:`check_conditional_writes` makes sure the endpoint enforces
conditional writes, which every rule of the format rests on (:class:`UnsafeEndpoint`
otherwise); the doctor runs the same check (:func:`second_write_refused`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudtrack.config.redaction import redact_uri
from cloudtrack.errors import AlreadyExists, BlobNotFound, CloudtrackError, CorruptObject
from cloudtrack.store import layout, records
from cloudtrack.store.local import ENDPOINT_SETTINGS

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


class UnsafeEndpoint(CloudtrackError):
    """The endpoint ignores conditional writes (put-if-absent, put-if-version): concurrent
    writers would overwrite each other's records, so no store is created there."""

    def __init__(self, store_uri: str, endpoint: str) -> None:
        super().__init__(
            f"cloudtrack will not create a store at {store_uri}: the endpoint {endpoint} "
            "accepted a second put-if-absent of the same object, so it ignores conditional "
            "writes (If-None-Match / If-Match, ifGenerationMatch on GCS) and concurrent "
            "writers would silently overwrite each other's records. Use a service that "
            "enforces them: AWS S3, Google Cloud Storage, Azure Blob Storage (or Azurite), a "
            "recent MinIO, fake-gcs-server behind a front that checks generations. Nothing "
            "was written.")
        self.endpoint = endpoint


#: What :func:`check_conditional_writes` names its probe object with (removed right after).
#: At the root, not in a folder of probes: a local store prunes a folder its last object left,
#: and a concurrent initialiser writing its probe into that folder would fail.
PROBE_PREFIX = ".cloudtrack-probe-"
PROBE_DATA = b"cloudtrack probe object: does this endpoint enforce conditional writes?\n"


def second_write_refused(blobs: Blobs, key: str) -> bool:
    """Whether a second put-if-absent of ``key`` (which exists) is refused, as it must be.

    An endpoint that ignores the condition would let concurrent writers overwrite each
    other's records.  Other errors are raised."""
    try:
        blobs.put_if_absent(key, b"second writer")
    except AlreadyExists:
        return True
    return False


def check_conditional_writes(blobs: Blobs) -> None:
    """Write a probe object, check that a second put-if-absent of it is refused, remove it.

    Raises :class:`UnsafeEndpoint` naming the endpoint when the second write is accepted."""
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    blobs.put_if_absent(key, PROBE_DATA)
    try:
        refused = second_write_refused(blobs, key)
    finally:
        with contextlib.suppress(CloudtrackError):
            blobs.delete(key)
    if not refused:
        config = blobs.config
        endpoint = next((str(config.get(n)) for n in ENDPOINT_SETTINGS
                         if config.get(n) is not None), f"of {config.backend}")
        raise UnsafeEndpoint(blobs.uri.rstrip("/"), redact_uri(endpoint))


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
