"""Every authentication or network error cloudtrack raises while logging ends with the command
that explains it — ``Run `cloudtrack doctor <store URI>` to see why.`` — once, whatever wraps
it (the retries that ran out, MLflow's boundary), and without a secret.

Each failure is a real one, through MLflow's own API: a plain script calling
``mlflow.log_param`` with ``MLFLOW_TRACKING_URI`` set (a wrong S3 secret against moto with IAM,
a wrong Azure account key against Azurite, a refused Google key, a store behind a closed port,
an untrusted certificate), and ``MlflowClient`` in this process for a write the bucket policy
refuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from backends.azure.service import ACCOUNT_KEY, Azurite, AzuriteOAuth
from backends.gcs.service import GcsEmulator
from backends.s3.service import MotoS3Iam
from cloudtrack import errors
from cloudtrack.config import resolve
from cloudtrack.errors import advise, doctor_hint, with_advice, without_doctor_hint
from cloudtrack.tracking import BlobTrackingStore
from tests.doctor import standins
from tests.fixtures.doctor import base_env, secrets_of

pytestmark = pytest.mark.timeout(300)

#: Small retry bounds, so that a network failure ends the script in seconds.
QUICK = {"CLOUDTRACK_MAX_ATTEMPTS": "2", "CLOUDTRACK_RETRY_DEADLINE": "3",
         "CLOUDTRACK_CONNECT_TIMEOUT": "1", "CLOUDTRACK_READ_TIMEOUT": "1"}

#: A user's script: one param, and what it raised as JSON on the last line of stdout.
SCRIPT = textwrap.dedent("""
    import json
    import mlflow

    try:
        mlflow.log_param("alpha", "0.5")
    except Exception as e:
        print(json.dumps({"type": type(e).__name__, "code": getattr(e, "error_code", None),
                          "cause": type(e.__cause__).__name__, "message": str(e)}))
    else:
        print(json.dumps({"type": None}))
""")


def log_param(tmp_path: Path, uri: str, env: dict[str, str]) -> dict[str, Any]:
    """What ``mlflow.log_param`` raises in a script logging to ``uri``; no secret of ``env``
    may appear anywhere in its output."""
    full = {**base_env(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"), **env,
            "MLFLOW_TRACKING_URI": uri}
    (tmp_path / "home").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    for secret in secrets_of(full):
        assert secret not in output, f"a secret leaked: {secret[:4]}…"
    assert proc.returncode == 0, output[-3000:]
    failure: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert failure["type"] == "MlflowException", output[-3000:]
    return failure


def assert_ends_with_the_doctor(message: str, store_uri: str) -> None:
    display = resolve(store_uri, {}).display_uri
    assert message.endswith(f". Run `cloudtrack doctor {display}` to see why."), message
    assert message.count("cloudtrack doctor") == 1, message


# -- authentication --------------------------------------------------------------------------


def test_wrong_s3_secret_key(tmp_path: Path, moto: MotoS3Iam) -> None:
    uri = moto.new_store("hint-secret")
    env = {**moto.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-" + "q" * 27}
    failure = log_param(tmp_path, uri, env)
    assert failure["code"] == "UNAUTHENTICATED" and failure["cause"] == "Unauthenticated"
    assert "SignatureDoesNotMatch" in failure["message"]
    assert_ends_with_the_doctor(failure["message"], uri)


def test_wrong_azure_account_key(tmp_path: Path, azurite: Azurite) -> None:
    uri = azurite.new_store("hint-key")
    wrong = ACCOUNT_KEY[:-8] + "AAAAAAA="
    env = {"AZURE_STORAGE_CONNECTION_STRING":
           azurite.env["AZURE_STORAGE_CONNECTION_STRING"].replace(ACCOUNT_KEY, wrong)}
    assert wrong in env["AZURE_STORAGE_CONNECTION_STRING"]
    failure = log_param(tmp_path, uri, env)
    assert failure["code"] in ("UNAUTHENTICATED", "PERMISSION_DENIED"), failure
    assert_ends_with_the_doctor(failure["message"], uri)


def test_refused_google_key(tmp_path: Path, gcs: GcsEmulator) -> None:
    """No request is ever signed: the token endpoint refuses the key (invalid_grant), a
    credential that cannot be had rather than one the storage service rejects."""
    uri = gcs.new_store("hint-gcs")
    failure = log_param(tmp_path, uri, gcs.bad_credentials_env())
    assert failure["code"] == "UNAUTHENTICATED", failure
    assert_ends_with_the_doctor(failure["message"], uri)


def test_a_refused_write_through_the_client(moto: MotoS3Iam,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """403: the store opens (the user may read it), its first write is denied."""
    uri = moto.new_store("hint-denied")
    BlobTrackingStore(uri, config=resolve(uri, moto.env)).close()  # initialised by its owner
    reader = moto.read_only_env()
    for name, value in {**reader, "CLOUDTRACK_STRICT": "true"}.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(tracking_uri=uri)
    with pytest.raises(MlflowException) as e:
        client.create_experiment("refused")
    assert e.value.error_code == "PERMISSION_DENIED"
    assert isinstance(e.value.__cause__, errors.PermissionDenied)
    assert_ends_with_the_doctor(e.value.message, uri)
    assert reader["AWS_SECRET_ACCESS_KEY"] not in e.value.message


# -- the network -----------------------------------------------------------------------------


def test_closed_port(tmp_path: Path, moto: MotoS3Iam) -> None:
    """Connection refused until the retries run out: the hint that the retries add is the
    only one."""
    uri = moto.new_store("hint-closed")
    env = {**moto.env, **QUICK,
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{standins.closed_port()}"}
    failure = log_param(tmp_path, uri, env)
    assert failure["code"] == "TEMPORARILY_UNAVAILABLE" and failure["cause"] == "TransientError"
    assert " failed after 2 attempts in " in failure["message"]
    assert_ends_with_the_doctor(failure["message"], uri)


def test_untrusted_certificate(tmp_path: Path, azurite_oauth: AzuriteOAuth) -> None:
    """A private CA this process does not trust: not retried, and still explained."""
    uri = azurite_oauth.new_store("hint-tls")
    env = {k: v for k, v in azurite_oauth.token_env("valid").items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    failure = log_param(tmp_path, uri, {**env, **QUICK})
    assert "certificate" in failure["message"].lower(), failure
    assert_ends_with_the_doctor(failure["message"], uri)


# -- once, whatever wraps it -----------------------------------------------------------------


def test_the_hint_is_added_once() -> None:
    hint = doctor_hint("s3://bkt/p")
    error = errors.Unauthenticated("GET s3://bkt/p/k failed: refused; check the keys", "s3://bkt/p/k")
    advise(advise(error, hint), hint)
    assert str(error) == f"GET s3://bkt/p/k failed: refused; check the keys. {hint}"
    # A hint for another store (a copy's source) is not added to one that has its own.
    assert with_advice(str(error), doctor_hint("gs://other")) == str(error)
    assert doctor_hint("file:///tmp/a b") == "Run `cloudtrack doctor 'file:///tmp/a b'` to see why."
    assert without_doctor_hint(str(error)) == "GET s3://bkt/p/k failed: refused; check the keys."
