"""cloudtrack.store.marker: what a reader accepts and refuses (the tracking store and the
doctor both go through it; tests/doctor/test_local.py checks the doctor's wording)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.errors import CorruptObject
from cloudtrack.store import layout, marker

URI = "file:///store/cloudtrack.json"


def test_the_current_format_is_read() -> None:
    got = marker.parse(b'{"format": "cloudtrack", "version": 1, "created": 5}', URI)
    assert got == marker.Marker("cloudtrack", 1, 5)


@pytest.mark.parametrize("data", [b"\x00 not json", b"[1, 2]", b'{"format": "cloudtrack", '
                                  b'"version": "one"}'])
def test_damage_is_a_corrupt_object(data: bytes) -> None:
    with pytest.raises(CorruptObject) as e:
        marker.parse(data, URI)
    assert URI in str(e.value) and not isinstance(e.value, marker.ForeignFormat)


def test_a_foreign_marker_names_its_format() -> None:
    with pytest.raises(marker.ForeignFormat) as e:
        marker.parse(b'{"format": "other", "version": 99}', URI)
    assert e.value.found == "other" and isinstance(e.value, CorruptObject)


def test_a_newer_version_says_to_upgrade() -> None:
    with pytest.raises(marker.NewerFormatVersion) as e:
        marker.parse(b'{"format": "cloudtrack", "version": 99}', URI, "s3://b/store")
    assert e.value.version == 99
    assert "s3://b/store" in str(e.value) and "pip install -U cloudtrack" in str(e.value)


def test_create_then_read(tmp_path: Path) -> None:
    blobs = open_blobs(resolve(str(tmp_path)))
    blobs.create_container()
    assert marker.read(blobs) is None
    marker.create(blobs)
    first = blobs.get(layout.MARKER)
    marker.create(blobs)  # a second initialiser leaves the first marker alone
    assert blobs.get(layout.MARKER) == first
    got = marker.read(blobs)
    assert got is not None and got.version == layout.FORMAT_VERSION and got.created
