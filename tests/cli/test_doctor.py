"""``cloudtrack doctor`` against real services on loopback: one reproduction per failure of the
catalogue (the causes of docs/doctor.md) that can be produced here, each asserting the reported
``cause`` and that none of the secrets in play reaches stdout or stderr.

The doctor runs as the real command in a child process with a controlled environment (HOME
is an empty folder, metadata services are disabled unless a test points them at a loopback
black hole), exactly as a user would run it.  Where no local service can produce a failure
(an expired STS session, a region redirect, a skewed clock, a storage firewall, a token-checking
proxy, a login page, another program on the port) a stand-in from ``standins.py`` answers the
same bytes the real thing would; each such test says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from backends.azure.service import (
    ACCOUNT,
    ACCOUNT_KEY,
    Azurite,
    AzuriteOAuth,
    make_tls_files,
)
from backends.gcs.service import GcsEmulator
from backends.mlflow.service import MlflowServer
from backends.s3.service import STORE_PREFIX, MotoS3Iam
from tests.cli import standins

pytestmark = pytest.mark.timeout(300)

#: Healthy runs must take well under 5 s on loopback; CI machines are loaded, so the
#: assertion is loose and the real numbers are printed.
HEALTHY_SECONDS = 15.0
#: The issue's bound for a whole run, black holes included.
RUN_BOUND = 30.0


# -- running the command -------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def report(self) -> dict[str, Any]:
        value = json.loads(self.out)
        assert isinstance(value, dict)
        return value

    @property
    def cause(self) -> str:
        return str(self.report["cause"])

    def check(self, id: str) -> dict[str, Any]:
        for check in self.report["checks"]:
            if check["id"] == id:
                return dict(check)
        raise AssertionError(f"no check {id!r} in {[c['id'] for c in self.report['checks']]}")

    def failing(self) -> list[dict[str, Any]]:
        return [c for c in self.report["checks"] if c["status"] == "fail"]

    def text(self) -> str:
        return self.out + self.err


_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCESS_KEY",
                "AZURE_STORAGE_SAS_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                "IDENTITY_HEADER", "AZURE_CLIENT_SECRET")


def secrets_of(env: Mapping[str, str], *extra: str) -> list[str]:
    """The secret strings a test hands the doctor: variables, connection-string keys, SAS
    signatures, passwords inside URIs, private keys inside key files."""
    found = [env[name] for name in _SECRET_VARS if env.get(name)]
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
    for m in re.finditer(r"(?i)(AccountKey|SharedAccessSignature)=([^;]+)", conn):
        found.append(m.group(2))
    for value in [*list(found), env.get("MLFLOW_TRACKING_URI", "")]:
        found += [v for k, v in urllib.parse.parse_qsl(value) if k == "sig"]
        try:
            password = urllib.parse.urlsplit(value).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    key_file = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file and os.path.exists(key_file):
        try:
            info = json.loads(Path(key_file).read_text())
            body = info["private_key"].split("-----")[2].strip()
            found += [line for line in body.splitlines() if len(line) > 20][:3]
        except (ValueError, KeyError, IndexError):
            pass
    return [s for s in found + list(extra) if s and len(s) >= 6]


def assert_no_secrets(run: Run, secrets: list[str]) -> None:
    text = run.text()
    for secret in secrets:
        assert secret not in text, f"a secret leaked into the output: {secret[:4]}…"
        quoted = urllib.parse.quote(secret, safe="")
        assert quoted not in text, f"a secret leaked (URL-quoted): {secret[:4]}…"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty HOME: no ~/.aws, ~/.azure, gcloud or ~/.mlflow of whoever runs the tests."""
    return tmp_path_factory.mktemp("home")


def base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # Loopback only: the credential chains must not ask cloud metadata services.
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_GCE_CHECK": "true",
    }


def doctor(home: Path, env: Mapping[str, str], *args: str, json_out: bool = True,
           wrap: list[str] | None = None, extra_secrets: tuple[str, ...] = ()) -> Run:
    full = {**base_env(home), **env}
    argv = [sys.executable, "-m", "cloudtrack.cli", "doctor", *args]
    if json_out:
        argv.append("--json")
    start = time.monotonic()
    proc = subprocess.run((wrap or []) + argv, env=full, capture_output=True, text=True,
                          timeout=120)
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    assert_no_secrets(run, secrets_of(full, *extra_secrets))
    if json_out:
        assert proc.returncode in (0, 1), run.text()[-3000:]
        report = run.report  # exactly one JSON object on stdout
        assert set(report) == {"uri", "backend", "status", "cause", "checks"}
        assert report["status"] in ("ok", "warn", "fail")
        assert (proc.returncode == 1) == (report["status"] == "fail")
        for check in report["checks"]:
            assert set(check) == {"id", "layer", "status", "cause", "summary", "fix"}
            if check["status"] == "fail":
                assert check["fix"], f"a failure without a fix: {check}"
    return run


def expect(run: Run, cause: str, *, backend: str | None = None) -> None:
    assert run.cause == cause, json.dumps(run.report, indent=1)[-4000:]
    assert run.code == (0 if cause == "ok" else 1)
    if backend is not None:
        assert run.report["backend"] == backend


TIMINGS: dict[str, float] = {}


def healthy(run: Run, name: str) -> None:
    expect(run, "ok")
    assert run.report["status"] == "ok", json.dumps(run.report, indent=1)
    TIMINGS[name] = run.seconds
    print(f"\nhealthy {name}: {run.seconds:.2f}s for the whole command "
          f"({len(run.report['checks'])} checks)")
    assert run.seconds < HEALTHY_SECONDS


# -- services ------------------------------------------------------------------------------------


def service(request: pytest.FixtureRequest, name: str) -> Any:
    """``tests/conftest.py``'s ``service()`` (started once per session, stopped at its end),
    found among pytest's plugins: importing the conftest again would make a second copy."""
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    for plugin in request.config.pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", "") or "/").resolve() == conftest:
            return plugin.service(name)
    raise RuntimeError(f"{conftest} is not loaded as a pytest plugin")


@pytest.fixture(scope="module")
def moto(request: pytest.FixtureRequest) -> MotoS3Iam:
    svc = service(request, "s3")
    assert isinstance(svc, MotoS3Iam)
    return svc


@pytest.fixture(scope="module")
def s3_uri(moto: MotoS3Iam) -> str:
    return moto.new_store("doctor")


@pytest.fixture(scope="module")
def azurite(request: pytest.FixtureRequest) -> Azurite:
    svc = service(request, "azure")
    assert isinstance(svc, Azurite)
    return svc


@pytest.fixture(scope="module")
def azurite_oauth(request: pytest.FixtureRequest) -> AzuriteOAuth:
    svc = service(request, "azure-oauth")
    assert isinstance(svc, AzuriteOAuth)
    return svc


@pytest.fixture(scope="module")
def gcs(request: pytest.FixtureRequest) -> GcsEmulator:
    svc = service(request, "gcs")
    assert isinstance(svc, GcsEmulator)
    return svc


@dataclass
class MlflowPair:
    auth: MlflowServer  # basic auth; experiments write artifacts straight to s3://
    proxied: MlflowServer  # no auth; proxies artifacts to an s3:// it has no credentials for
    bucket: str


@pytest.fixture(scope="module")
def mlflow(moto: MotoS3Iam) -> Iterator[MlflowPair]:
    bucket = urllib.parse.urlsplit(moto.new_store("mlflow-artifacts")).netloc
    auth = MlflowServer(artifact_root=f"s3://{bucket}/direct", basic_auth=True,
                        extra_env=moto.env)
    proxied = MlflowServer(artifacts_destination=f"s3://{bucket}/proxied", extra_env={
        "MLFLOW_S3_ENDPOINT_URL": moto.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HOME": "/nonexistent"})
    try:
        auth.launch()
        proxied.launch()  # both start at once: MLflow's ~10 s start-up overlaps
        auth.wait_ready()
        proxied.wait_ready()
        yield MlflowPair(auth, proxied, bucket)
    finally:
        auth.stop()
        proxied.stop()


# == local directory ===============================================================================


def test_local_store_healthy(home: Path, tmp_path: Path) -> None:
    run = doctor(home, {}, str(tmp_path))
    healthy(run, "local")
    assert run.report["backend"] == "file"
    assert run.check("authz.write")["status"] == "ok"
    assert not any(tmp_path.iterdir()), "the probe object was not removed"


def test_local_default_uri_is_mlflows(home: Path, tmp_path: Path) -> None:
    """No URI and no MLFLOW_TRACKING_URI: MLflow would use sqlite:///mlflow.db, a store the
    doctor does not diagnose; it says so and which URI it looked at."""
    run = doctor(home, {}, wrap=["env", "-C", str(tmp_path)])
    expect(run, "config-invalid")
    assert run.report["backend"] is None
    assert run.report["uri"].startswith("sqlite:///") and "mlflow.db" in run.report["uri"]
    assert "MLflow's default" in run.check("config.uri")["summary"]


def test_local_read_only_writes_nothing(home: Path, tmp_path: Path) -> None:
    (tmp_path / "cloudtrack.json").write_text('{"format": "cloudtrack", "version": 1}')
    before = sorted(p.name for p in tmp_path.iterdir())
    run = doctor(home, {"MLFLOW_TRACKING_URI": f"file:{tmp_path}"}, "--read-only")
    expect(run, "ok", backend="file")
    assert run.check("authz.read")["status"] == "ok"
    assert not any(c["id"] == "authz.write" for c in run.report["checks"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_local_store_of_a_newer_format(home: Path, tmp_path: Path) -> None:
    (tmp_path / "cloudtrack.json").write_text('{"format": "cloudtrack", "version": 99}')
    run = doctor(home, {}, str(tmp_path))
    expect(run, "dependency-missing")
    assert "pip install -U cloudtrack" in run.check("consistency.format")["fix"]


# == S3 (moto with IAM enforced) ===================================================================


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


# == Azure (Azurite over HTTP with the account key, over HTTPS with OAuth) ========================


def _container(uri: str) -> str:
    return urllib.parse.urlsplit(uri).netloc.split("@")[0]


def _sas_env(azurite: Azurite, uri: str, hours: float, **perms: bool) -> dict[str, str]:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT, _container(uri), account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(**perms),
        expiry=datetime.now(timezone.utc) + timedelta(hours=hours))
    return {"AZURE_STORAGE_CONNECTION_STRING":
            f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}"}


ALL = {"read": True, "add": True, "create": True, "write": True, "delete": True, "list": True}


@pytest.fixture(scope="module")
def az_uri(azurite: Azurite) -> str:
    return azurite.new_store("doctor")


@pytest.fixture(scope="module")
def az_oauth_uri(azurite_oauth: AzuriteOAuth) -> str:
    return azurite_oauth.new_store("doctor")


def test_azure_healthy_account_key(home: Path, azurite: Azurite, az_uri: str) -> None:
    run = doctor(home, azurite.env, az_uri)
    healthy(run, "azure (key, http)")
    assert "Azurite" in run.check("http.answer")["summary"]


def test_azure_healthy_token_over_https(home: Path, azurite_oauth: AzuriteOAuth,
                                        az_oauth_uri: str) -> None:
    """DefaultAzureCredential's unmodified chain gets a token (App Service managed identity
    stand-in of the service); the report shows the token's claims and who issued it."""
    run = doctor(home, azurite_oauth.token_env("valid"), az_oauth_uri)
    healthy(run, "azure (token, https)")
    assert "ManagedIdentityCredential" in run.check("auth.credential")["summary"]
    identity = run.check("auth.identity")["summary"]
    assert "tenant c10d7ac4" in identity and "object id" in identity


def test_azure_healthy_sas(home: Path, azurite: Azurite, az_uri: str) -> None:
    run = doctor(home, _sas_env(azurite, az_uri, 5, **ALL), az_uri)
    expect(run, "ok")
    assert "sp=racwdl" in run.check("auth.credential")["summary"]


def test_azure_wrong_account_key(home: Path, azurite: Azurite, az_uri: str) -> None:
    """Row 14, the bad-key half: Azurite answers a wrong SharedKey signature with
    AuthorizationFailure; the doctor calls it what it is."""
    run = doctor(home, azurite.bad_credentials_env(), az_uri)
    expect(run, "credentials-invalid")
    assert "Access keys" in run.check("auth.accepted")["fix"]


def test_azure_expired_sas(home: Path, azurite: Azurite, az_uri: str) -> None:
    """Row 16: Signature not valid in the specified time frame — an expired SAS."""
    run = doctor(home, _sas_env(azurite, az_uri, -1, read=True, list=True), az_uri)
    expect(run, "token-expired")
    assert "az storage container generate-sas" in run.check("auth.credential")["fix"]


def test_azure_read_only_sas(home: Path, azurite: Azurite, az_uri: str) -> None:
    """Row 13 with a SAS: AuthorizationPermissionMismatch on write; the fix names sp=racwdl."""
    run = doctor(home, _sas_env(azurite, az_uri, 5, read=True, list=True), az_uri)
    expect(run, "permission-denied")
    write = run.check("authz.write")
    assert "AuthorizationPermissionMismatch" in write["summary"] and "racwdl" in write["fix"]


def test_azure_missing_container(home: Path, azurite: Azurite) -> None:
    """Row 19: ContainerNotFound."""
    run = doctor(home, azurite.env, azurite.missing_store_uri())
    expect(run, "container-not-found")
    assert "az storage container create" in run.check("authz.container")["fix"]


def test_azure_expired_token(home: Path, azurite_oauth: AzuriteOAuth, az_oauth_uri: str) -> None:
    """Row 15: the identity endpoint hands out an expired token (a stale cache)."""
    run = doctor(home, azurite_oauth.token_env("expired"), az_oauth_uri)
    expect(run, "token-expired")
    assert "expired" in run.check("auth.identity")["summary"]


def test_azure_wrong_audience_token(home: Path, azurite_oauth: AzuriteOAuth,
                                    az_oauth_uri: str) -> None:
    run = doctor(home, azurite_oauth.token_env("wrong-audience"), az_oauth_uri)
    expect(run, "credentials-invalid")
    assert "management.azure.com" in run.check("auth.identity")["summary"]


def test_azure_no_credential_in_the_chain(home: Path, azurite_oauth: AzuriteOAuth,
                                          az_oauth_uri: str) -> None:
    """Row 15: DefaultAzureCredential failed to retrieve a token.  The chain is limited to the
    developer credentials (AZURE_TOKEN_CREDENTIALS=dev) so that it never asks the instance
    metadata service, which would leave loopback; none of them is signed in here."""
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite_oauth.blob_endpoint};",
           "REQUESTS_CA_BUNDLE": azurite_oauth.ca_file, "AZURE_TOKEN_CREDENTIALS": "dev"}
    run = doctor(home, env, az_oauth_uri)
    expect(run, "credentials-missing")
    summary = run.check("auth.credential")["summary"]
    assert "AzureCliCredential" in summary, "every credential tried is listed"
    assert "az login" in run.check("auth.credential")["fix"]


def test_azure_untrusted_certificate(home: Path, azurite_oauth: AzuriteOAuth,
                                     az_oauth_uri: str) -> None:
    """Row 10: a private CA the client does not trust."""
    env = {k: v for k, v in azurite_oauth.token_env("valid").items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    run = doctor(home, env, az_oauth_uri)
    expect(run, "tls-untrusted")
    assert "REQUESTS_CA_BUNDLE" in run.check("tls")["fix"]


def test_azure_token_over_plain_http_is_refused(home: Path, azurite: Azurite, az_uri: str) -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.blob_endpoint};"}
    run = doctor(home, env, az_uri)
    expect(run, "config-invalid")
    assert "https" in run.check("config.client")["summary"]


def test_azure_account_mismatch_warns(home: Path, azurite: Azurite) -> None:
    """The URI names one account, the connection string another: requests go to the latter."""
    uri = azurite.new_store("mismatch").replace(f"@{ACCOUNT}.", "@otheraccount.")
    run = doctor(home, azurite.env, uri)
    assert run.code == 0 and run.report["status"] == "warn"
    check = run.check("consistency.account")
    assert check["cause"] == "endpoint-mismatch" and "otheraccount" in check["summary"]


def test_azure_firewall(home: Path) -> None:
    """Row 14, the network-rule half: Azure's firewall answers every request with 403
    AuthorizationFailure 'This request is not authorized…'.  Azurite has no firewall; a
    loopback stand-in answers those bytes."""
    with standins.StandIn(standins.azure_firewall()) as server:
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={server.url}/{ACCOUNT};")
        run = doctor(home, {"AZURE_STORAGE_CONNECTION_STRING": conn},
                     f"wasbs://runs@{ACCOUNT}.blob.core.windows.net/mlruns")
    expect(run, "permission-denied")
    assert "firewall" in run.check("authz.list")["summary"]
    assert "network-rule add" in run.check("authz.list")["fix"]


def test_azure_clock_skew(home: Path) -> None:
    """Row 16, the clock half: a stand-in Azure whose Date is an hour ahead."""
    with standins.StandIn(standins.azure_firewall(), clock_offset=-3600) as server:
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={server.url}/{ACCOUNT};")
        run = doctor(home, {"AZURE_STORAGE_CONNECTION_STRING": conn},
                     f"wasbs://runs@{ACCOUNT}.blob.core.windows.net/mlruns")
    expect(run, "clock-skew")
    assert "ahead of" in run.check("auth.clock")["summary"]


# == GCS (fake-gcs-server behind the OAuth front) ==================================================


@pytest.fixture(scope="module")
def gs_uri(gcs: GcsEmulator) -> str:
    return gcs.new_store("doctor")


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


# == MLflow tracking servers =======================================================================


def test_mlflow_healthy(home: Path, mlflow: MlflowPair, moto: MotoS3Iam) -> None:
    """An admin of a basic-auth server whose experiments write artifacts straight to S3: the
    artifact store is checked with this machine's AWS credentials too."""
    assert mlflow.auth.admin is not None
    env = {**mlflow.auth.admin.env, **moto.env, "MLFLOW_TRACKING_URI": mlflow.auth.url}
    run = doctor(home, env)
    healthy(run, "mlflow")
    assert re.search(r"MLflow \d+\.\d+", run.check("http.answer")["summary"])
    assert "'admin'" in run.check("auth.identity")["summary"]
    assert run.check("artifacts.authz.write")["status"] == "ok"


def test_mlflow_no_credentials(home: Path, mlflow: MlflowPair) -> None:
    """Row 11: 401 You are not authenticated — no MLFLOW_TRACKING_USERNAME/PASSWORD."""
    run = doctor(home, {"MLFLOW_TRACKING_URI": mlflow.auth.url})
    expect(run, "credentials-missing", backend="http")
    assert "MLFLOW_TRACKING_USERNAME" in run.check("auth.credential")["fix"]


def test_mlflow_wrong_password(home: Path, mlflow: MlflowPair) -> None:
    env = {"MLFLOW_TRACKING_URI": mlflow.auth.url, "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": "not-the-admin-password"}
    run = doctor(home, env)
    expect(run, "credentials-invalid")
    assert mlflow.auth.admin is not None
    assert mlflow.auth.admin.password not in run.text()


def test_mlflow_password_inside_the_uri(home: Path, mlflow: MlflowPair) -> None:
    assert mlflow.auth.admin is not None
    netloc = f"admin:{urllib.parse.quote(mlflow.auth.admin.password, safe='')}@127.0.0.1"
    uri = mlflow.auth.url.replace("127.0.0.1", netloc)
    run = doctor(home, {}, uri, extra_secrets=(mlflow.auth.admin.password,))
    assert run.check("auth.credential")["status"] == "ok"
    text = doctor(home, {}, uri, json_out=False, extra_secrets=(mlflow.auth.admin.password,))
    assert "admin:***@" in text.out


def test_mlflow_user_without_permission(home: Path, mlflow: MlflowPair, moto: MotoS3Iam) -> None:
    """Row 11: 403 Permission denied — a user who may read the Default experiment but not
    create runs in it; the fix grants EDIT with MLflow's own auth client."""
    user = mlflow.auth.create_user()
    env = {**user.env, **moto.env, "MLFLOW_TRACKING_URI": mlflow.auth.url}
    run = doctor(home, env)
    expect(run, "permission-denied")
    write = run.check("authz.write")
    assert "grant_user_permission" in write["fix"] and "'EDIT'" in write["fix"]
    assert user.username in write["fix"]
    assert f"signed in as {user.username!r}" in run.check("auth.identity")["summary"]


def test_mlflow_client_without_storage_credentials(home: Path, mlflow: MlflowPair,
                                                   moto: MotoS3Iam) -> None:
    """Row 1: the experiment's artifacts go to s3:// directly and this client has no AWS
    credentials — MLflow logs fine until the first log_artifact."""
    assert mlflow.auth.admin is not None
    env = {**mlflow.auth.admin.env, "MLFLOW_TRACKING_URI": mlflow.auth.url,
           "MLFLOW_S3_ENDPOINT_URL": moto.endpoint}
    run = doctor(home, env)
    expect(run, "credentials-missing")
    failing = run.failing()
    assert [c["id"] for c in failing] == ["artifacts.auth.credential"]
    assert failing[0]["layer"] == "consistency"
    assert f"s3://{mlflow.bucket}/direct" in run.check("consistency.artifacts")["summary"]


def test_mlflow_server_without_storage_credentials(home: Path, mlflow: MlflowPair) -> None:
    """Row 2: the server proxies artifacts into a bucket it has no credentials for; the
    client needs none, the server does — a warning that says who needs access."""
    run = doctor(home, {"MLFLOW_TRACKING_URI": mlflow.proxied.url})
    assert run.code == 0, run.text()
    check = run.check("consistency.artifacts")
    assert check["status"] == "warn" and check["cause"] == "server-error"
    assert "the server needs credentials" in check["fix"]


def test_mlflow_browser_url(home: Path, mlflow: MlflowPair) -> None:
    """Row 7: a browser URL as tracking URI answers the web UI's HTML."""
    run = doctor(home, {"MLFLOW_TRACKING_URI": mlflow.proxied.url + "/#/experiments/0"})
    expect(run, "not-mlflow-server")
    assert f"MLFLOW_TRACKING_URI={mlflow.proxied.url}" in run.check("http.answer")["fix"]


def test_mlflow_https_to_plain_http_port(home: Path, mlflow: MlflowPair) -> None:
    """Row 10: SSLError WRONG_VERSION_NUMBER — https:// to the plain-HTTP server."""
    run = doctor(home, {}, mlflow.proxied.url.replace("http://", "https://"))
    expect(run, "tls-mismatch")
    assert f"use {mlflow.proxied.url}" in run.check("tls")["fix"]


def test_mlflow_closed_port(home: Path) -> None:
    """Row 9: Max retries exceeded … Connection refused."""
    run = doctor(home, {}, f"http://127.0.0.1:{standins.closed_port()}")
    expect(run, "connection-refused")


def test_mlflow_black_hole(home: Path) -> None:
    with standins.black_hole() as port:
        run = doctor(home, {}, f"http://127.0.0.1:{port}")
    expect(run, "network-timeout")
    assert run.seconds < RUN_BOUND


def test_https_black_hole(home: Path) -> None:
    """Over https the handshake waits on the black hole instead; still bounded."""
    with standins.black_hole() as port:
        run = doctor(home, {}, f"https://127.0.0.1:{port}", "--timeout", "2")
    expect(run, "network-timeout")
    assert run.seconds < RUN_BOUND


def test_html_page_server(home: Path) -> None:
    """Row 7: response body was not in a valid JSON format: '<!DOCTYPE html>…' (a stand-in web
    server: a reverse proxy whose MLflow upstream is not configured)."""
    with standins.StandIn(standins.html_page) as server:
        run = doctor(home, {}, server.url)
    expect(run, "not-mlflow-server")
    assert "Welcome to nginx" in run.check("http.answer")["summary"]


def test_login_page(home: Path) -> None:
    """Row 7: an SSO proxy redirects API calls to its login page (a stand-in: no SSO here)."""
    with standins.StandIn(standins.login_page) as server:
        run = doctor(home, {}, server.url)
    expect(run, "not-mlflow-server")
    check = run.check("http.answer")
    assert "login page" in check["summary"] and "MLFLOW_TRACKING_TOKEN" in check["fix"]


def test_another_program_answers_403(home: Path) -> None:
    """Row 8: 403 with an empty body on localhost:5000 (a stand-in for macOS AirPlay)."""
    with standins.StandIn(standins.empty_forbidden) as server:
        run = doctor(home, {}, server.url)
    expect(run, "not-mlflow-server")
    assert "another program" in run.check("http.answer")["summary"]


def test_server_answering_503(home: Path) -> None:
    with standins.StandIn(standins.unavailable) as server:
        run = doctor(home, {}, server.url)
    expect(run, "server-error")
    assert "503" in run.check("http.answer")["summary"]


def test_self_signed_tls_server(home: Path, tmp_path: Path) -> None:
    """Row 10: unable to get local issuer certificate — a server whose certificate a private
    CA signed.  With MLFLOW_TRACKING_SERVER_CERT_PATH naming that CA, TLS passes (and the
    server, a plain web page, is then found not to be MLflow)."""
    tls = make_tls_files(tmp_path)
    with standins.StandIn(standins.html_page, tls=(tls.cert, tls.key)) as server:
        run = doctor(home, {}, server.url)
        trusted = doctor(home, {"MLFLOW_TRACKING_SERVER_CERT_PATH": str(tls.ca)}, server.url)
    expect(run, "tls-untrusted")
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in run.check("tls")["fix"]
    expect(trusted, "not-mlflow-server")
    assert trusted.check("tls")["status"] == "ok"


def test_expired_tracking_token(home: Path) -> None:
    """Rows 6 and 12: a bearer token that has expired.  The local mlflow server does basic auth
    only; a stand-in plays an MLflow API behind a token-checking proxy."""
    token = standins.jwt(time.time() - 600)
    with standins.StandIn(standins.token_mlflow()) as server:
        run = doctor(home, {"MLFLOW_TRACKING_TOKEN": token}, server.url)
    expect(run, "token-expired")
    assert "MLFLOW_TRACKING_TOKEN" in run.check("auth.credential")["fix"]


def test_tracking_token_expiring_soon_warns(home: Path) -> None:
    """Row 6, before it happens: MLflow reads the token once; a job outliving it gets 401."""
    token = standins.jwt(time.time() + 1800)
    with standins.StandIn(standins.token_mlflow()) as server:
        run = doctor(home, {"MLFLOW_TRACKING_TOKEN": token}, server.url)
    assert run.code == 0 and run.report["status"] == "warn"
    assert run.check("auth.expiry")["cause"] == "token-expired"


def test_invalid_databricks_style_token(home: Path) -> None:
    """Row 12: Error 403 Invalid access token (a stand-in answering Databricks' JSON)."""
    with standins.StandIn(standins.token_mlflow(databricks_style=True)) as server:
        run = doctor(home, {"MLFLOW_TRACKING_TOKEN": "dapi0123456789abcdef0123456789abcdef"},
                     server.url)
    expect(run, "credentials-invalid")


# == the command itself ============================================================================


def test_text_report_names_the_fix_and_hides_secrets(home: Path, azurite: Azurite,
                                                     az_uri: str) -> None:
    env = _sas_env(azurite, az_uri, 5, read=True, list=True)
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


def test_timings(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the healthy runs' timings measured above."""
    with capsys.disabled():
        for name, seconds in TIMINGS.items():
            print(f"\n  doctor healthy {name:<22} {seconds:5.2f}s", end="")
