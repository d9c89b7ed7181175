"""Server-side copies on Azure beyond the conformance suite: signed by a bearer token, from a
source signed by a SAS, and a copy the service runs asynchronously."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from types import SimpleNamespace
from typing import Any

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from backends.azure.service import ACCOUNT, ACCOUNT_KEY, Azurite, MintedTokenCredential
from cloudtrack.blobs import open_blobs
from cloudtrack.blobs.azure import AzureBlobs
from cloudtrack.blobs.azure.blobs import await_copy
from cloudtrack.config import resolve
from cloudtrack.errors import BlobError, TransientError

MOVES = ("_get", "_put", "_download_file", "_upload_file")


def _no_bytes_through_us(*stores: AzureBlobs) -> list[str]:
    moved: list[str] = []
    for blobs in stores:
        for name in MOVES:
            setattr(blobs, name, lambda *a, _n=name: moved.append(_n))
    return moved


@pytest.mark.parametrize("store", ["azure-oauth"], indirect=True)
def test_copy_signed_by_a_token(store) -> None:  # type: ignore[no-untyped-def]
    """Within the account, the destination's bearer token authorises reading the source."""
    other = store.service.new_store("other")
    source = AzureBlobs(resolve(store.uri, store.env), credential=MintedTokenCredential())
    target = AzureBlobs(resolve(other, store.env), credential=MintedTokenCredential())
    with source, target:
        source.put("model/weights.bin", b"w" * 5000)
        assert target.same_account(source)
        moved = _no_bytes_through_us(source, target)
        version = target.copy_from(source, "model/weights.bin", "copy/weights.bin")
        assert moved == []
        assert target.stat("copy/weights.bin").version == version
    with AzureBlobs(resolve(other, store.env), credential=MintedTokenCredential()) as fresh:
        assert fresh.get("copy/weights.bin") == b"w" * 5000


@pytest.mark.parametrize("store", ["azure"], indirect=True)
def test_copy_from_a_source_signed_by_a_sas(store) -> None:  # type: ignore[no-untyped-def]
    """A read-only SAS of the source's container goes with the source URL; Azurite checks it
    (a request to the source with that signature) before it copies."""
    service = store.service
    assert isinstance(service, Azurite)
    container = urllib.parse.urlsplit(store.uri).netloc.split("@")[0]
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    sas_env = {"AZURE_STORAGE_CONNECTION_STRING":
               f"BlobEndpoint={service.blob_endpoint};SharedAccessSignature={sas}"}
    store.open().put("k", b"through the SAS")
    source = open_blobs(resolve(store.uri, sas_env))
    target_uri = service.new_store("target")
    target = open_blobs(resolve(target_uri, store.env))
    assert isinstance(source, AzureBlobs) and source.credentials.kind == "sas"
    assert target.same_account(source)
    moved = _no_bytes_through_us(source, target)
    target.copy_from(source, "k", "k")
    assert moved == []
    fresh = open_blobs(resolve(target_uri, store.env))
    assert isinstance(fresh, AzureBlobs)
    assert fresh.get("k") == b"through the SAS"
    # The service keeps the copy's source URL: the source's SAS went with it, once.
    copied = fresh._container.get_blob_client(fresh.config.key("k")).get_blob_properties()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(copied.copy.source).query)
    assert query["sig"] == urllib.parse.parse_qs(sas)["sig"]


# Azurite completes every copy within an account before it answers, so a pending copy is
# played by a stand-in blob client: a mock, where no real service here produces the behaviour.

class PendingCopy:
    """A blob client whose copy reports ``statuses`` (with progress) one look at a time."""

    def __init__(self, *statuses: tuple[str, str]) -> None:
        self.statuses = list(statuses)
        self.looks = 0
        self.aborted: list[str] = []

    def get_blob_properties(self) -> Any:
        status, progress = self.statuses[min(self.looks, len(self.statuses) - 1)]
        self.looks += 1
        copy = SimpleNamespace(status=status, progress=progress, id="copy-1",
                               status_description="500 InternalError" if status == "failed"
                               else None)
        return SimpleNamespace(copy=copy, etag='"0x8DC0FFEE"')

    def abort_copy(self, copy_id: str) -> None:
        self.aborted.append(copy_id)


def test_a_pending_copy_is_awaited() -> None:
    blob = PendingCopy(("pending", "0/10"), ("pending", "5/10"), ("success", "10/10"))
    slept: list[float] = []
    assert await_copy(blob, "COPY a TO b", "b", sleep=slept.append) == "0x8DC0FFEE"
    assert blob.looks == 3 and len(slept) == 2 and slept[1] > slept[0]


def test_a_failed_copy_is_a_refusal_and_a_stalled_one_is_aborted() -> None:
    with pytest.raises(BlobError) as e:
        await_copy(PendingCopy(("pending", "0/10"), ("failed", "3/10")), "COPY a TO b", "b",
                   sleep=lambda _: None)
    assert type(e.value) is BlobError and "failed" in str(e.value)  # streamed instead
    stalled = PendingCopy(("pending", "3/10"))
    with pytest.raises(TransientError, match="no progress"):
        await_copy(stalled, "COPY a TO b", "b", stall=0.0, sleep=lambda _: None)
    assert stalled.aborted == ["copy-1"]

