"""``cloudtrack doctor`` on GCS: fake-gcs-server behind the OAuth front, one reproduction per
failure of the catalogue it can produce, and an emulator that ignores preconditions.

The doctor runs as the real command in a child process (tests/fixtures/doctor.py), exactly as
a user would run it.  A metadata server that never answers is a loopback black hole from
``standins.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.gcs.service import GcsEmulator
from tests.doctor import standins
from tests.fixtures.doctor import HEALTHY_SECONDS, doctor, expect, healthy

pytestmark = pytest.mark.timeout(300)


def test_gcs_healthy(home: Path, gcs: GcsEmulator, gs_uri: str) -> None:
    run = doctor(home, gcs.env, gs_uri)
    healthy(run, "gcs")
    assert "cloudtrack@cloudtrack-test.iam.gserviceaccount.com" in \
        run.check("auth.credential")["summary"]


def test_gcs_revoked_key(home: Path, gcs: GcsEmulator, gs_uri: str) -> None:
    """A key file whose key the token endpoint does not accept (invalid_grant)."""
    run = doctor(home, gcs.bad_credentials_env(), gs_uri)
    expect(run, "credentials-invalid")
    assert "invalid_grant" in run.check("auth.token")["summary"]


def test_gcs_malformed_key_file(home: Path, gcs: GcsEmulator, gs_uri: str, tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text("this is not a key file")
    run = doctor(home, {**gcs.env, "GOOGLE_APPLICATION_CREDENTIALS": str(key)}, gs_uri)
    expect(run, "credentials-invalid")


def test_gcs_account_of_another_project(home: Path, gcs: GcsEmulator, gs_uri: str) -> None:
    """Row 18: 403 … does not have storage.objects.create access."""
    run = doctor(home, gcs.credentials_env(project="other-project"), gs_uri)
    expect(run, "permission-denied")
    write = run.check("authz.write")
    assert "storage.objects.create" in write["summary"]
    assert "roles/storage.objectUser" in write["fix"]
    assert "serviceAccount:other@other-project.iam.gserviceaccount.com" in write["fix"]


def test_gcs_token_endpoint_hands_out_expired_tokens(home: Path, gcs: GcsEmulator,
                                                     gs_uri: str) -> None:
    run = doctor(home, gcs.credentials_env(token_ttl=0), gs_uri)
    expect(run, "token-expired")


def test_gcs_missing_bucket(home: Path, gcs: GcsEmulator) -> None:
    """Row 19: GCS 404 on the bucket."""
    run = doctor(home, gcs.env, gcs.missing_store_uri())
    expect(run, "container-not-found")


def test_gcs_no_application_default_credentials(home: Path, gcs: GcsEmulator,
                                                gs_uri: str) -> None:
    """Row 17: no ADC — where MLflow's own client silently goes anonymous."""
    run = doctor(home, {"API_ENDPOINT_OVERRIDE": gcs.url}, gs_uri)
    expect(run, "credentials-missing")
    check = run.check("auth.credential")
    assert "application-default login" in check["fix"]


def test_gcs_metadata_server_never_hangs(home: Path, gcs: GcsEmulator, gs_uri: str) -> None:
    """google-auth waits 3 s three times for a metadata server; here the 'metadata server' is a
    loopback black hole.  The doctor asks once, briefly, and answers credentials-missing."""
    with standins.black_hole() as port:
        env = {"API_ENDPOINT_OVERRIDE": gcs.url, "NO_GCE_CHECK": "false",
               "GCE_METADATA_IP": f"127.0.0.1:{port}", "GCE_METADATA_HOST": f"127.0.0.1:{port}"}
        run = doctor(home, env, gs_uri)
    expect(run, "credentials-missing")
    assert "metadata server" in run.check("auth.credential")["summary"]
    assert run.seconds < HEALTHY_SECONDS


def test_gcs_emulator_host_without_credentials(home: Path, gcs: GcsEmulator, gs_uri: str) -> None:
    """STORAGE_EMULATOR_HOST makes the SDK anonymous; this emulator wants credentials."""
    run = doctor(home, {"STORAGE_EMULATOR_HOST": gcs.url}, gs_uri)
    expect(run, "credentials-missing")


def test_gcs_emulator_ignoring_preconditions(home: Path) -> None:
    """gcp-storage-emulator ignores ifGenerationMatch: a second put-if-absent wins, so two
    writers would overwrite each other.  The doctor refuses such an endpoint."""
    from backends.gcs.service import PlainGcpStorageEmulator

    emulator = PlainGcpStorageEmulator()
    emulator.start()
    try:
        uri = emulator.new_store("doctor")
        run = doctor(home, emulator.env, uri)
    finally:
        emulator.stop()
    expect(run, "endpoint-mismatch")
    check = run.check("consistency.conditional-writes")
    assert check["status"] == "fail" and "ignores conditional writes" in check["summary"]
    assert run.check("auth.credential")["summary"].startswith("anonymous")
