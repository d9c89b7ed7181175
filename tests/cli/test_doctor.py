"""``cloudtrack doctor`` as a command: the text report, ``--verbose`` (the SDKs' debug logs,
without the tokens obtained during the run), usage errors; and the healthy runs' timings.

The per-backend reproductions of the catalogue are tests/doctor/test_<backend>.py; like them,
this runs the real command in a child process (tests/fixtures/doctor.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from backends.azure.service import Azurite, AzuriteOAuth
from backends.gcs.service import GcsEmulator
from backends.s3.service import MotoS3Iam
from tests.fixtures.doctor import base_env, doctor, sas_env

pytestmark = pytest.mark.timeout(300)


def test_text_report_names_the_fix_and_hides_secrets(home: Path, azurite: Azurite,
                                                     az_uri: str) -> None:
    env = sas_env(azurite, az_uri, 5, read=True, list=True)
    run = doctor(home, env, az_uri, json_out=False)
    assert run.code == 1
    assert re.search(r"FAIL\s+authz.write", run.out) and "fix: " in run.out
    assert "result: FAIL: permission-denied" in run.out


_JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.")


def test_verbose_logs_hide_tokens(home: Path, azurite_oauth: AzuriteOAuth, az_oauth_uri: str,
                                  gcs: GcsEmulator, gs_uri: str, moto: MotoS3Iam,
                                  s3_uri: str) -> None:
    """--verbose lets the SDKs' debug logs through; the tokens obtained during the run (an
    Entra ID JWT, a GCS access token) and the keys in play must not be in them."""
    for env, uri in ((azurite_oauth.token_env("valid"), az_oauth_uri), (gcs.env, gs_uri),
                     (moto.env, s3_uri)):
        run = doctor(home, env, uri, "--verbose")
        assert run.cause == "ok", run.err[-2000:]
        assert "DEBUG" in run.err, "the SDKs' debug logs are shown"
        assert not _JWT.search(run.text()), "a bearer token leaked into the logs"
        assert "ct-gcs." not in run.text(), "a GCS access token leaked into the logs"


def test_usage_errors_exit_2(home: Path) -> None:
    for args in (["--timeout", "0"], ["--no-such-option"], ["a", "b"]):
        proc = subprocess.run([sys.executable, "-m", "cloudtrack.cli", "doctor", *args],
                              env=base_env(home), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
