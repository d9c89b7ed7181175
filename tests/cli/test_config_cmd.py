"""``cloudtrack config [URI]``: the URI defaults to ``MLFLOW_TRACKING_URI`` like the doctor's, a
usage error (exit 2) says what to do when there is none, access key ids are masked the way the
doctor masks them, and no secret is ever shown — in the text and in ``--json``.

The command runs in a child process with a controlled environment, with the keys of the real
services the other tests use (moto with IAM, Azurite and a SAS it accepts).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.azure.service import ACCOUNT_KEY, Azurite
from backends.s3.service import MotoS3Iam
from cloudtrack.credentials import mask_key_id
from tests.fixtures.doctor import ALL, base_env, doctor, sas_env, secrets_of

pytestmark = pytest.mark.timeout(300)


@dataclass
class Done:
    code: int
    out: str
    err: str


def config(home: Path, env: dict[str, str], *args: str) -> Done:
    full = {**base_env(home), **env}
    proc = subprocess.run([sys.executable, "-m", "cloudtrack.cli", "config", *args], env=full,
                          capture_output=True, text=True, timeout=120)
    done = Done(proc.returncode, proc.stdout, proc.stderr)
    for secret in secrets_of(full):
        assert secret not in done.out + done.err, f"a secret leaked: {secret[:4]}…"
    return done


def test_the_uri_defaults_to_mlflow_tracking_uri(home: Path, moto: MotoS3Iam,
                                                 s3_uri: str) -> None:
    done = config(home, {**moto.env, "MLFLOW_TRACKING_URI": s3_uri})
    assert done.code == 0, done.err
    assert done.out.splitlines()[0] == f"store      {s3_uri}  (from env:MLFLOW_TRACKING_URI)"
    data = json.loads(config(home, {**moto.env, "MLFLOW_TRACKING_URI": s3_uri}, "--json").out)
    assert (data["uri"], data["origin"]) == (s3_uri, "env:MLFLOW_TRACKING_URI")
    # An argument wins over the variable.
    other = config(home, {**moto.env, "MLFLOW_TRACKING_URI": "s3://elsewhere/x"}, s3_uri)
    assert other.out.splitlines()[0] == f"store      {s3_uri}"


def test_no_uri_and_no_variable_is_a_usage_error(home: Path) -> None:
    done = config(home, {})
    assert done.code == 2
    assert "no store URI" in done.err and "MLFLOW_TRACKING_URI" in done.err
    assert "Usage:" in done.err
    assert config(home, {"MLFLOW_TRACKING_URI": ""}).code == 2


def test_a_misspelt_scheme_asks_did_you_mean(home: Path) -> None:
    done = config(home, {}, "s4://bucket/x")
    assert done.code == 2
    assert "did you mean 's3://bucket/x'?" in done.err
    from_env = config(home, {"MLFLOW_TRACKING_URI": "gcs://bucket/x"})
    assert from_env.code == 2
    assert "did you mean 'gs://bucket/x'?" in from_env.err
    assert "(the URI came from env:MLFLOW_TRACKING_URI)" in from_env.err


def test_access_key_ids_are_masked_like_the_doctor_does(home: Path, moto: MotoS3Iam,
                                                        s3_uri: str) -> None:
    key_id = moto.env["AWS_ACCESS_KEY_ID"]
    masked = mask_key_id(key_id)
    assert masked != key_id
    done = config(home, moto.env, s3_uri)
    assert done.code == 0, done.err
    assert key_id not in done.out
    (line,) = [row for row in done.out.splitlines() if row.strip().startswith("access_key_id")]
    assert line.split()[1] == masked
    data = json.loads(config(home, moto.env, s3_uri, "--json").out)
    shown = {s["name"]: s["value"] for s in data["settings"]}
    assert shown["access_key_id"] == masked
    # The doctor shows the very same form.
    report = doctor(home, moto.env, s3_uri, "--read-only")
    assert f"access_key_id={masked} (env:AWS_ACCESS_KEY_ID)" in \
        report.check("config.settings")["summary"]


def test_secrets_stay_redacted(home: Path, moto: MotoS3Iam, s3_uri: str, azurite: Azurite,
                               az_uri: str) -> None:
    """The secret key, an account key, a SAS and a password inside an endpoint URL: never
    shown, whole or in part (``config`` checks every secret of the environment)."""
    endpoint = moto.endpoint.replace("http://", "http://minio:endpoint-password-1@")
    for env, uri in ((moto.env, s3_uri), (azurite.env, az_uri),
                     (sas_env(azurite, az_uri, 5, **ALL), az_uri),
                     ({**moto.env, "MLFLOW_S3_ENDPOINT_URL": endpoint}, s3_uri)):
        for args in ((uri,), (uri, "--json")):
            done = config(home, env, *args)
            assert done.code == 0, done.err
            for secret in (ACCOUNT_KEY, moto.env["AWS_SECRET_ACCESS_KEY"],
                           "endpoint-password-1"):
                assert secret not in done.out
    shown = config(home, {**moto.env, "MLFLOW_S3_ENDPOINT_URL": endpoint}, s3_uri).out
    assert "http://minio:***@" in shown


def test_the_settings_read_apart_from_the_stores_are_shown_too(home: Path, tmp_path: Path) -> None:
    """The logins, the read cache and a server's read-ahead are read by other modules than the
    store's configuration; ``config`` shows them with their source, and refuses a wrong one
    as the process using it would (exit 2)."""
    store = f"file://{tmp_path}/store"
    shown = {line.split()[0]: line.split(None, 1)[1]
             for line in config(home, {}, store).out.splitlines() if line.startswith("  ")}
    assert shown["keyring"].split() == ["on", "from", "default"], shown
    assert shown["read_cache"].split() == ["on", "from", "default"], shown
    assert shown["server_warmup"].split() == ["20000", "runs", "from", "default"], shown
    env = {"CLOUDTRACK_KEYRING": "off", "CLOUDTRACK_SERVER_WARMUP": "0",
           "CLOUDTRACK_READ_CACHE": "off"}
    data = json.loads(config(home, env, "s3://bucket/x", "--json").out)
    values = {s["name"]: (s["value"], s["source"]) for s in data["settings"]}
    assert values["keyring"] == ("off", "env:CLOUDTRACK_KEYRING"), values
    assert values["read_cache"] == ("off", "env:CLOUDTRACK_READ_CACHE"), values
    assert values["server_warmup"] == ("off", "env:CLOUDTRACK_SERVER_WARMUP"), values
    for name, wrong in (("CLOUDTRACK_SERVER_WARMUP", "lots"), ("CLOUDTRACK_KEYRING", "of"),
                        ("CLOUDTRACK_READ_CACHE", "maybe"), ("CLOUDTRACK_KEYRING_TIMEOUT", "abc")):
        done = config(home, {name: wrong}, store)
        assert done.code == 2 and name in done.err and done.out == "", (name, done)
