"""Which credentials and endpoint GcsBlobs uses: the resolved config decides, and a missing
ADC is an error, never an anonymous client (as MLflow's own gs:// client silently makes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials

from backends.gcs.auth import generate_key, service_account_info
from cloudtrack.blobs.gcs import DEFAULT_ENDPOINT, GcsBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import Unauthenticated

EMULATOR = "http://127.0.0.1:9"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    key = generate_key()
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(service_account_info(
        email="unit@proj.iam.gserviceaccount.com", project="proj", key_id=key.key_id,
        private_pem=key.private_pem, token_uri="http://127.0.0.1:9/token")))
    return path


@pytest.mark.parametrize("environ", [{}, {"API_ENDPOINT_OVERRIDE": EMULATOR}])
def test_missing_adc_is_unauthenticated_not_anonymous(tmp_path: Path,
                                                      environ: dict[str, str]) -> None:
    # A child process with a bare environment: google-auth reads os.environ (and some of it
    # at import time), and there must be no gcloud login or metadata server to fall back on.
    script = textwrap.dedent(f"""
        from cloudtrack.blobs import open_blobs
        from cloudtrack.errors import Unauthenticated
        blobs = open_blobs("gs://bkt/p", {environ!r})
        try:
            blobs.get("x")
        except Unauthenticated as e:
            print(type(e.__cause__).__name__, "|", e)
        else:
            print("NO ERROR")
    """)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "CLOUDSDK_CONFIG": str(tmp_path), "NO_GCE_CHECK": "true"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("DefaultCredentialsError |"), out.stdout
    assert "gcloud auth application-default login" in out.stdout
    assert "GOOGLE_APPLICATION_CREDENTIALS" in out.stdout


def test_bare_emulator_host_is_anonymous() -> None:
    blobs = GcsBlobs(resolve("gs://bkt/p", {"STORAGE_EMULATOR_HOST": "127.0.0.1:9"}))
    assert isinstance(blobs.credentials.load()[0], AnonymousCredentials)
    assert blobs.client._connection.API_BASE_URL == EMULATOR


def test_emulator_host_with_a_key_file_sends_the_key(key_file: Path) -> None:
    blobs = GcsBlobs(resolve("gs://bkt/p", {"STORAGE_EMULATOR_HOST": EMULATOR,
                                            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}))
    creds, project = blobs.credentials.load()
    assert creds.service_account_email == "unit@proj.iam.gserviceaccount.com"
    assert project == "proj"


def test_key_file_comes_from_the_resolved_environment(key_file: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/other.json")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    blobs = GcsBlobs(resolve("gs://bkt/p", {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}))
    assert blobs.client._credentials.service_account_email == \
        "unit@proj.iam.gserviceaccount.com"
    # The process's STORAGE_EMULATOR_HOST must not redirect a store resolved without it.
    assert blobs.client._connection.API_BASE_URL == DEFAULT_ENDPOINT
    assert blobs.client.project == "proj"


def test_unreadable_key_file_names_the_variable(tmp_path: Path) -> None:
    blobs = GcsBlobs(resolve("gs://bkt/p", {
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json")}))
    with pytest.raises(Unauthenticated) as e:
        blobs.get("x")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(e.value)
    assert "missing.json" in str(e.value)


def test_timeouts_come_from_the_config() -> None:
    blobs = GcsBlobs(resolve("gs://bkt/p", {"CLOUDTRACK_CONNECT_TIMEOUT": "3",
                                            "CLOUDTRACK_READ_TIMEOUT": "17"}))
    assert blobs.timeout == (3.0, 17.0)
