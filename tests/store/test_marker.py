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


def test_a_store_where_conditional_writes_are_ignored_is_refused_before_any_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #11 item 6.  gcp-storage-emulator is a real endpoint that ignores
    ifGenerationMatch: a user's first logging call through MLflow gets an MlflowException (the
    UnsafeEndpoint behind it) naming the endpoint, and the bucket holds nothing afterwards —
    the probe removed, no marker, no Default experiment.  The doctor says the same."""
    import json
    import urllib.request

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from backends.gcs.service import PlainGcpStorageEmulator

    emulator = PlainGcpStorageEmulator()
    emulator.start()
    try:
        uri = emulator.new_store("unsafe")
        bucket = uri.removeprefix("gs://").split("/")[0]
        for key, value in emulator.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
        mlflow.set_tracking_uri(uri)
        with pytest.raises(MlflowException) as e:
            mlflow.log_metric("m", 1.0)
        assert isinstance(e.value.__cause__, marker.UnsafeEndpoint)
        assert emulator.url in e.value.message and uri in e.value.message
        assert "ignores conditional writes" in e.value.message
        assert "Nothing was written" in e.value.message
        with urllib.request.urlopen(f"{emulator.url}/storage/v1/b/{bucket}/o") as answer:
            listing = json.load(answer)
        assert listing.get("items", []) == []
        assert mlflow.active_run() is None
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        emulator.stop()
