"""How the doctor tells an MLflow server from what else answers on a port, and which
credentials MLflow's REST client would send."""

from __future__ import annotations

from pathlib import Path

from cloudtrack.doctor.http import Answer, identify, server_credentials


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
