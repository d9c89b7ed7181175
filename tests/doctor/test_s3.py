"""``cloudtrack doctor`` on S3: one reproduction per failure of the catalogue (the causes of
docs/doctor.md) against moto with IAM enforced, and the fixes the doctor proposes where no
local service can produce the failure (AWS keys of an S3-compatible server sent to AWS itself,
row 3; the IAM policy for a prefix).

The doctor runs as the real command in a child process (tests/fixtures/doctor.py), exactly as
a user would run it.  Where no local service can produce a failure (an expired STS session, a
region redirect, a skewed clock), a stand-in from ``standins.py`` answers the same bytes the
real thing would; each such test says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import botocore.exceptions as bex
import pytest

from backends.s3.service import STORE_PREFIX, MotoS3Iam
from cloudtrack.config import resolve
from cloudtrack.doctor import s3
from cloudtrack.errors import Unauthenticated
from tests.doctor import standins
from tests.fixtures.doctor import (
    HEALTHY_SECONDS,
    RUN_BOUND,
    Run,
    assert_no_secrets,
    base_env,
    doctor,
    expect,
    healthy,
    secrets_of,
)

pytestmark = pytest.mark.timeout(300)


# -- the fixes, where no local service fails this way ----------------------------------------------


def _client_error(code: str, message: str, status: int) -> bex.ClientError:
    return bex.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_keys_sent_to_aws_say_where_and_why() -> None:
    """Row 3: without an endpoint variable, MinIO keys go to AWS; the finding names AWS's
    endpoint and the variable that would have sent them elsewhere."""
    config = resolve("s3://bucket/prefix", {"AWS_ACCESS_KEY_ID": "minioadmin"})
    classify = s3._classifier(config, "https://s3.us-east-1.amazonaws.com", False, None)
    error = Unauthenticated("PUT failed")
    error.__cause__ = _client_error("InvalidAccessKeyId", "The AWS Access Key Id you provided "
                                    "does not exist in our records.", 403)
    finding = classify(error, "write")
    assert (finding.layer, finding.cause) == ("auth", "credentials-invalid")
    assert "https://s3.us-east-1.amazonaws.com" in finding.summary
    assert "MLFLOW_S3_ENDPOINT_URL" in (finding.fix or "")


def test_minimal_policy_for_a_prefix() -> None:
    policy = s3.minimal_policy("bucket", "team/store")
    listing, objects = policy["Statement"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["team/store", "team/store/*"]
    assert objects["Resource"] == "arn:aws:s3:::bucket/team/store/*"
    assert set(objects["Action"]) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    role = s3.attach_command("arn:aws:sts::123456789012:assumed-role/TrainingJob/i-0abc",
                             "bucket", policy)
    assert role.startswith("aws iam put-role-policy --role-name TrainingJob ")
    assert json.loads(role.split("--policy-document '")[1].rstrip("'")) == policy


# -- the command against moto ----------------------------------------------------------------------


def test_s3_healthy(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    run = doctor(home, moto.env, s3_uri)
    healthy(run, "s3")
    assert "arn:aws:iam::" in run.check("auth.identity")["summary"]
    assert run.check("consistency.conditional-writes")["status"] == "ok"


def test_s3_missing_credentials(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 1: NoCredentialsError — nothing in the chain (the metadata service is disabled)."""
    env = {"MLFLOW_S3_ENDPOINT_URL": moto.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    run = doctor(home, env, s3_uri)
    expect(run, "credentials-missing", backend="s3")
    check = run.check("auth.credential")
    assert "AWS_ACCESS_KEY_ID" in check["fix"]
    assert "instance metadata: disabled" in check["summary"]


def test_s3_unknown_access_key(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 3: InvalidAccessKeyId — the report names the endpoint the keys went to and where
    that endpoint came from."""
    run = doctor(home, moto.bad_credentials_env(), s3_uri)
    expect(run, "credentials-invalid")
    summary = run.check("auth.accepted")["summary"]
    assert "InvalidAccessKeyId" in summary
    assert moto.endpoint in summary and "MLFLOW_S3_ENDPOINT_URL" in summary


def test_s3_wrong_secret_key(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    env = {**moto.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-" + "q" * 27}
    run = doctor(home, env, s3_uri)
    expect(run, "credentials-invalid")
    assert "secret key does not match" in run.check("auth.accepted")["summary"]


def test_s3_read_only_user_cannot_write(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 11/18 for S3: the credentials are accepted, PutObject is denied; the fix names the
    action, carries the minimal policy for the prefix and the command for this IAM user."""
    env = moto.read_only_env()
    run = doctor(home, env, s3_uri)
    expect(run, "permission-denied")
    write = run.check("authz.write")
    assert write["status"] == "fail" and "s3:PutObject" in write["summary"]
    assert "aws iam put-user-policy --user-name read-only-" in write["fix"]
    assert f'"arn:aws:s3:::{urllib.parse.urlsplit(s3_uri).netloc}/{STORE_PREFIX}/*"' \
        in write["fix"]
    assert run.check("authz.list")["status"] == "ok"
    # The same user is healthy for a read-only job.
    assert doctor(home, env, s3_uri, "--read-only").cause == "ok"


def test_s3_missing_bucket(home: Path, moto: MotoS3Iam) -> None:
    """Row 19: NoSuchBucket."""
    run = doctor(home, moto.env, moto.missing_store_uri())
    expect(run, "container-not-found")
    assert "aws s3 mb" in run.check("authz.container")["fix"]


def test_s3_endpoint_without_scheme(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 4: ValueError: Invalid endpoint — MLFLOW_S3_ENDPOINT_URL=host:port."""
    endpoint = moto.endpoint.removeprefix("http://")
    run = doctor(home, {**moto.env, "MLFLOW_S3_ENDPOINT_URL": endpoint}, s3_uri)
    expect(run, "config-invalid")
    assert f"MLFLOW_S3_ENDPOINT_URL=http://{endpoint}" in run.check("config.uri")["fix"]


def _confined_dns(tmp_path: Path) -> tuple[list[str] | None, str]:
    """A command prefix whose DNS goes to 127.0.0.1 only (a private mount namespace with its
    own resolv.conf), so looking up a name sends no packet off this machine."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, ""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    prefix = [unshare, "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
              str(conf)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return (prefix, "") if probe.returncode == 0 else (None, probe.stderr.decode())


def test_s3_endpoint_name_does_not_resolve(home: Path, moto: MotoS3Iam, s3_uri: str,
                                           tmp_path: Path) -> None:
    """Row 4: gaierror for a cluster-internal name used from outside.  DNS is confined to
    loopback (a stub answering NXDOMAIN); where namespaces are not allowed, a name with an
    over-long label fails in the resolver library itself, before any packet is sent."""
    wrap, _ = _confined_dns(tmp_path)
    host = "minio.minio.svc.cluster.local" if wrap else "x" * 70 + ".svc.cluster.local"
    env = {**moto.env, "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:9000"}
    with standins.nxdomain_dns():
        run = doctor(home, env, s3_uri, wrap=wrap)
    expect(run, "dns-failure")
    check = run.check("dns")
    assert host in check["summary"] and "cluster" in check["fix"]
    assert run.seconds < RUN_BOUND


def test_s3_closed_port(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 9: connection refused."""
    env = {**moto.env, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{standins.closed_port()}"}
    run = doctor(home, env, s3_uri)
    expect(run, "connection-refused")
    assert run.check("tcp")["status"] == "fail"


def test_s3_https_to_plain_http_port(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 10: WRONG_VERSION_NUMBER — https:// to moto's plain-HTTP port."""
    env = {**moto.env, "MLFLOW_S3_ENDPOINT_URL": moto.endpoint.replace("http://", "https://")}
    run = doctor(home, env, s3_uri)
    expect(run, "tls-mismatch")
    assert "plain HTTP" in run.check("tls")["summary"]


def test_s3_black_hole(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Packets black-holed after the handshake: the run ends with network-timeout, in time."""
    with standins.black_hole() as port:
        env = {**moto.env, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        run = doctor(home, env, s3_uri, "--timeout", "2")
    expect(run, "network-timeout")
    assert run.seconds < RUN_BOUND


def test_s3_instance_metadata_never_hangs(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Off EC2 with no keys, botocore asks the instance metadata service; here that service is
    a loopback black hole.  The doctor still answers credentials-missing, quickly."""
    with standins.black_hole() as port:
        env = {"MLFLOW_S3_ENDPOINT_URL": moto.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "false",
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}/"}
        run = doctor(home, env, s3_uri)
    expect(run, "credentials-missing")
    assert run.seconds < HEALTHY_SECONDS


def test_s3_expired_credentials(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """Row 5 with botocore's own expiry: AWS_CREDENTIAL_EXPIRATION in the past."""
    env = {**moto.env, "AWS_CREDENTIAL_EXPIRATION": "2020-01-01T00:00:00Z"}
    run = doctor(home, env, s3_uri)
    expect(run, "token-expired")
    assert "expired" in run.check("auth.credential")["summary"]


def test_s3_credentials_expiring_within_the_hour_warn(home: Path, moto: MotoS3Iam,
                                                       s3_uri: str) -> None:
    """Row 5, before it happens: credentials that cannot renew themselves and end within the
    hour are a warning, and the command still succeeds."""
    soon = (datetime.now(timezone.utc) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = doctor(home, {**moto.env, "AWS_CREDENTIAL_EXPIRATION": soon}, s3_uri)
    assert run.code == 0 and run.report["status"] == "warn"
    check = run.check("auth.expiry")
    assert check["status"] == "warn" and check["cause"] == "token-expired"


def test_s3_expired_sts_session(home: Path) -> None:
    """Row 5: (ExpiredToken) The provided token has expired.  moto never expires tokens, so a
    loopback stand-in answers every request the way S3 and STS answer an expired session."""
    with standins.StandIn(standins.s3_expired_token()) as server:
        env = {"MLFLOW_S3_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE01",
               "AWS_SECRET_ACCESS_KEY": "stand-in-secret-" + "s" * 24,
               "AWS_SESSION_TOKEN": "FQoGZXIvYXdzEHoaDstand-in-session-token",
               "AWS_DEFAULT_REGION": "us-east-1"}
        run = doctor(home, env, "s3://team-bucket/mlruns")
    expect(run, "token-expired")
    assert "ExpiredToken" in run.check("auth.accepted")["summary"]


def test_s3_bucket_in_another_region(home: Path) -> None:
    """Row 20: PermanentRedirect.  Needs a real multi-region S3; a loopback stand-in answers
    like S3 does for a bucket of eu-west-1 addressed as us-east-1."""
    with standins.StandIn(standins.s3_region_redirect("eu-west-1")) as server:
        env = {"MLFLOW_S3_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE01",
               "AWS_SECRET_ACCESS_KEY": "stand-in-secret-" + "s" * 24,
               "AWS_DEFAULT_REGION": "us-east-1"}
        run = doctor(home, env, "s3://team-bucket/mlruns")
    expect(run, "endpoint-mismatch")
    check = run.check("consistency.region")
    assert "eu-west-1" in check["summary"] and "AWS_REGION=eu-west-1" in check["fix"]


def test_s3_clock_skew(home: Path) -> None:
    """Row 21: RequestTimeTooSkewed.  The local clock cannot be moved in a test, so the
    stand-in's clock is: its Date header runs an hour ahead, and it refuses signed requests."""
    with standins.StandIn(standins.s3_skewed_clock(), clock_offset=3600) as server:
        env = {"MLFLOW_S3_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE01",
               "AWS_SECRET_ACCESS_KEY": "stand-in-secret-" + "s" * 24,
               "AWS_DEFAULT_REGION": "us-east-1"}
        run = doctor(home, env, "s3://team-bucket/mlruns")
    expect(run, "clock-skew")
    assert "behind" in run.check("auth.clock")["summary"]


def test_s3_sdk_not_installed(home: Path, moto: MotoS3Iam, s3_uri: str) -> None:
    """The s3 extra missing: botocore cannot be imported (blocked in the child process)."""
    code = ("import sys; sys.modules['botocore'] = None; sys.modules['boto3'] = None; "
            "from cloudtrack.cli import main; main()")
    env = {**base_env(home), **moto.env}
    proc = subprocess.run([sys.executable, "-c", code, "doctor", s3_uri, "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    run = Run(proc.returncode, proc.stdout, proc.stderr, 0.0)
    assert_no_secrets(run, secrets_of(env))
    expect(run, "dependency-missing")
    assert "pip install 'cloudtrack[s3]'" in run.check("config.extra")["fix"]
