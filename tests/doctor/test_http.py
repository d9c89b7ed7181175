"""The doctor of MLflow tracking servers (``http://`` and ``https://`` URIs): how it tells an
MLflow server from what else answers on a port and which credentials MLflow's REST client would
send; then ``cloudtrack doctor`` against two real MLflow servers (basic auth with a direct S3
artifact root, and one proxying artifacts into a bucket it cannot reach).

The doctor runs as the real command in a child process (tests/fixtures/doctor.py), exactly as
a user would run it.  Where no local service can produce a failure (a token-checking proxy, a
login page, a web page, another program on the port, a failing server), a stand-in from
``standins.py`` answers the same bytes the real thing would; each such test says so.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.azure.service import make_tls_files
from backends.mlflow.service import MlflowServer
from backends.s3.service import MotoS3Iam
from cloudtrack.doctor.http import Answer, identify, server_credentials
from tests.doctor import standins
from tests.fixtures.doctor import RUN_BOUND, doctor, expect, healthy

pytestmark = pytest.mark.timeout(300)


def _a(status: int, body: bytes = b"", ctype: str = "", redirects: tuple[str, ...] = (),
       **headers: str) -> Answer:
    h = {k.lower().replace("_", "-"): v for k, v in headers.items()}
    if ctype:
        h["content-type"] = ctype
    return Answer(status, h, body, "http://h/api", redirects)


def test_mlflow_json_answers() -> None:
    assert identify(_a(200, b'{"experiments": []}', "application/json"), None)[0] == "mlflow"
    assert identify(_a(404, b'{"error_code": "ENDPOINT_NOT_FOUND"}'), None)[0] == "mlflow"


def test_mlflow_basic_auth_401() -> None:
    body = (b"You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/"
            b"index.html#authenticating-to-mlflow on how to authenticate.")
    api = _a(401, body, "text/html; charset=utf-8", www_authenticate='Basic realm="mlflow"')
    assert identify(api, None)[0] == "mlflow"


def test_server_info_identifies_mlflow_behind_a_plain_403() -> None:
    api = _a(403, b"Permission denied", "text/html")
    info = _a(200, b'{"store_type": "SqlStore"}', "application/json")
    assert identify(api, info)[0] == "mlflow"


def test_login_page_by_redirect_or_form() -> None:
    page = b"<!DOCTYPE html><html><form><input type='password'></form></html>"
    assert identify(_a(200, page, "text/html"), None)[0] == "login"
    redirected = _a(200, b"<html><body>Welcome</body></html>", "text/html",
                    ("https://sso.example.com/oauth2/authorize?x=1",))
    assert identify(redirected, None)[0] == "login"


def test_html_page_is_not_mlflow() -> None:
    kind, detail = identify(_a(200, b"<!doctype html><title>MLflow</title>", "text/html"), None)
    assert kind == "html" and "MLflow" in detail


def test_empty_403_is_another_program() -> None:
    kind, detail = identify(_a(403, b"", server="AirTunes/860.7.1"), _a(403))
    assert kind == "other" and "AirPlay" in detail and "AirTunes" in detail


def test_server_errors() -> None:
    assert identify(_a(503, b"upstream connect error"), None)[0] == "server-error"
    assert identify(_a(502), None)[0] == "server-error"


def test_other_401_asks_for_credentials() -> None:
    assert identify(_a(401, b"", www_authenticate='Basic realm="Restricted"'),
                    None)[0] == "auth-required"


def test_credentials_follow_mlflows_precedence(tmp_path: Path) -> None:
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = file-user\nmlflow_tracking_password = file-pw\n")
    home = {"HOME": str(tmp_path)}
    creds = server_credentials("http://h", home)
    assert (creds.kind, creds.username, creds.password) == ("basic", "file-user", "file-pw")
    assert creds.sources["username"].endswith("credentials")
    creds = server_credentials("http://h", {**home, "MLFLOW_TRACKING_USERNAME": "env-user"})
    assert (creds.username, creds.password) == ("env-user", "file-pw")
    assert creds.sources["username"] == "env:MLFLOW_TRACKING_USERNAME"
    token_only = server_credentials("http://h", {"MLFLOW_TRACKING_TOKEN": "t0ken-value"})
    assert token_only.kind == "token"
    assert token_only.headers() == {"Authorization": "Bearer t0ken-value"}
    in_uri = server_credentials("http://me:s3cr%40t@h", {})
    assert (in_uri.kind, in_uri.password, in_uri.sources["password"]) == ("basic", "s3cr@t",
                                                                          "the URI")


def test_tls_settings() -> None:
    assert server_credentials("https://h", {"MLFLOW_TRACKING_INSECURE_TLS": "true"}).verify \
        is False
    assert server_credentials("https://h", {"MLFLOW_TRACKING_SERVER_CERT_PATH": "/ca.pem",
                                            "MLFLOW_TRACKING_INSECURE_TLS": "true"}).verify \
        == "/ca.pem"
    assert server_credentials("https://h", {"REQUESTS_CA_BUNDLE": "/b.pem"}).verify == "/b.pem"


# -- the command against MLflow servers ------------------------------------------------------------


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
    """Row 7: a browser URL as tracking URI answers the web UI's HTML.  F8: the server is
    MLflow, so the doctor says the URL is the web UI's, not "a login page"."""
    run = doctor(home, {"MLFLOW_TRACKING_URI": mlflow.proxied.url + "/#/experiments/1"})
    expect(run, "not-mlflow-server")
    check = run.check("http.answer")
    assert f"MLFLOW_TRACKING_URI={mlflow.proxied.url}" in check["fix"]
    assert "login page" not in check["summary"], check["summary"]
    assert "MLflow web UI" in check["summary"]
    assert f"the tracking server itself is {mlflow.proxied.url}" in check["summary"]


def test_mlflow_https_to_plain_http_port(home: Path, mlflow: MlflowPair) -> None:
    """Row 10: SSLError WRONG_VERSION_NUMBER — https:// to the plain-HTTP server."""
    run = doctor(home, {}, mlflow.proxied.url.replace("http://", "https://"))
    expect(run, "tls-mismatch")
    assert f"use {mlflow.proxied.url}" in run.check("tls")["fix"]


def test_mlflow_closed_port(home: Path) -> None:
    """Row 9: Max retries exceeded … Connection refused."""
    run = doctor(home, {}, f"http://127.0.0.1:{standins.closed_port()}")
    expect(run, "connection-refused")


def test_a_wrong_setting_is_named_not_called_a_bug(home: Path) -> None:
    """A setting the doctor reads on its way (here the logins': the keyring's switch and its
    timeout) with a wrong value is a config failure that names the variable, not an
    "unexpected" error to report."""
    uri = f"http://127.0.0.1:{standins.closed_port()}"
    for name, wrong in (("CLOUDTRACK_KEYRING_TIMEOUT", "abc"), ("CLOUDTRACK_KEYRING", "of")):
        run = doctor(home, {name: wrong}, uri)
        expect(run, "config-invalid")
        check = run.check("config.setting")
        assert f"{name}={wrong!r}" in check["summary"], check
        assert "report this" not in check["fix"], check


def test_mlflow_black_hole(home: Path) -> None:
    with standins.black_hole() as port:
        run = doctor(home, {}, f"http://127.0.0.1:{port}", "--timeout", "3")
    expect(run, "network-timeout")
    assert run.seconds < RUN_BOUND
    # F21: the wait it reports is the --timeout it was given (tests/doctor/test_net.py has the
    # case where the run's budget cuts the wait short).
    assert "answered nothing within 3.0s" in run.check("http")["summary"]


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
