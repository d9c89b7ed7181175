"""The conformance suite's race tests can fail: they catch a GCS emulator that ignores
generation preconditions, and pass on the emulator the suite runs against.

gcp-storage-emulator ignores ``ifGenerationMatch`` everywhere; fake-gcs-server 1.54 checks it
on multipart uploads only, so a conditional write above 8 MiB (a resumable upload) slips
through.  ``backends.gcs.service.GcsEmulator`` puts a front before fake-gcs-server that
enforces the preconditions on every upload kind; these tests show the difference.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import pytest

from backends._common import StorageService
from backends.gcs.service import BareFakeGcsServer, GcsEmulator, PlainGcpStorageEmulator
from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.config import resolve
from cloudtrack.errors import AlreadyExists, PreconditionFailed
from tests.blobs.races import run_increment_race, run_put_if_absent_race

pytestmark = pytest.mark.slow

#: Above the SDK's 8 MiB multipart limit: google-cloud-storage sends it as a resumable upload.
RESUMABLE = b"r" * (9 * 1024 * 1024)


def _running(cls: type[StorageService]) -> Iterator[StorageService]:
    svc = cls()
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[StorageService]:
    yield from _running(PlainGcpStorageEmulator)


@pytest.fixture(scope="module")
def bare() -> Iterator[StorageService]:
    yield from _running(BareFakeGcsServer)


@pytest.fixture(scope="module")
def enforcing(gcs: GcsEmulator) -> StorageService:
    """The emulator the conformance suite runs on."""
    return gcs


def _open(svc: StorageService) -> Blobs:
    return open_blobs(resolve(svc.new_store(), svc.env))


def test_put_if_absent_race_detects_an_emulator_that_ignores_preconditions(
        plain: StorageService) -> None:
    winners = run_put_if_absent_race(plain.new_store(), plain.env)
    assert winners > 1, "every writer should have 'won' on gcp-storage-emulator"


def test_increment_race_detects_lost_updates_where_preconditions_are_ignored(
        plain: StorageService) -> None:
    lost = run_increment_race(plain.new_store(), plain.env, workers=4, rounds=10)
    assert lost > 0, "workers reading the same value should have overwritten each other"


def test_both_races_hold_on_the_enforcing_emulator(enforcing: StorageService) -> None:
    assert run_put_if_absent_race(enforcing.new_store(), enforcing.env) == 1
    assert run_increment_race(enforcing.new_store(), enforcing.env, workers=4, rounds=10) == 0


@pytest.mark.parametrize("size", ["multipart", "resumable"])
def test_stale_write_is_refused_only_by_the_enforcing_emulator(
        plain: StorageService, enforcing: StorageService, size: str) -> None:
    """The races above, reduced to one deterministic interleaving."""
    data = b"small" if size == "multipart" else RESUMABLE
    for svc, enforced in ((plain, False), (enforcing, True)):
        b = _open(svc)
        v1 = b.put("doc", b"v1")
        b.put_if_version("doc", data, v1)  # another writer got there first
        if enforced:
            with pytest.raises(PreconditionFailed):
                b.put_if_version("doc", data + b"-stale", v1)
        else:
            b.put_if_version("doc", data + b"-stale", v1)
            assert b.get("doc") == data + b"-stale"


def test_bare_fake_gcs_server_ignores_preconditions_on_resumable_uploads(
        bare: StorageService, enforcing: StorageService) -> None:
    b = _open(bare)
    b.put_if_absent("small", b"first")
    with pytest.raises(AlreadyExists):  # multipart: fake-gcs-server checks this one
        b.put_if_absent("small", b"second")
    b.put_if_absent("big", RESUMABLE)
    b.put_if_absent("big", RESUMABLE + b"!")  # resumable: accepted although it exists
    assert b.stat("big").size == len(RESUMABLE) + 1

    e = _open(enforcing)
    e.put_if_absent("big", RESUMABLE)
    with pytest.raises(AlreadyExists):
        e.put_if_absent("big", RESUMABLE + b"!")
    assert e.stat("big").size == len(RESUMABLE)


def test_resumable_put_if_absent_race_has_one_winner(enforcing: StorageService) -> None:
    """Chunked uploads overlap in time; the front must still let exactly one commit."""
    uri, env = enforcing.new_store(), enforcing.env

    def claim(me: int) -> bool:
        b = open_blobs(resolve(uri, env))
        try:
            b.put_if_absent("race/big", RESUMABLE + bytes([me]))
            return True
        except AlreadyExists:
            return False
        finally:
            b.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        winners = [me for me, won in enumerate(pool.map(claim, range(4))) if won]
    assert len(winners) == 1
    assert open_blobs(resolve(uri, env)).get("race/big") == RESUMABLE + bytes(winners)
