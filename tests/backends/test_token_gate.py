"""The service of ``backends/tokens`` itself: the bearer-token gate in front of a real MLflow
server — its token endpoint, tokens accepted and expiring, 401s by reason, requests and
artifacts reaching MLflow, the token command — and, against a tiny local server that records
what reached it, the parts MLflow does not exercise (chunked bodies, 100-continue)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from backends._common import LOOPBACK
from backends.mlflow import MlflowServer
from backends.tokens import REASONS, TokenGate, sign_jwt
from cloudtrack.credentials import decode_jwt
from tests.fixtures.credentials import TokenGateFactory

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _token(gate: TokenGate) -> str:
    r = requests.post(gate.token_url, headers={"X-Client-Secret": gate.client_secret},
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer" and r.json()["expires_in"] == gate.lifetime
    return str(r.json()["access_token"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _assert_401(r: requests.Response, reason_word: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error_code"] == "UNAUTHENTICATED"
    assert reason_word in r.json()["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")


# -- against MLflow -----------------------------------------------------------------------------


def test_no_token_no_entry(token_gate: TokenGateFactory) -> None:
    gate = token_gate()
    _assert_401(requests.get(gate.url + SEARCH, timeout=30), "bearer token")
    _assert_401(requests.get(gate.url + SEARCH, auth=("admin", "password"), timeout=30),
                "bearer token")
    r = requests.get(gate.url + SEARCH, headers=_bearer("not-a-jwt"), timeout=30)
    _assert_401(r, "not a JWT")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    stats = gate.stats()
    assert stats.unauthorized == {"missing": 2, "invalid": 1, "expired": 0, "client_secret": 0}
    assert stats.forwarded == 0 and stats.rejected == 3


def test_a_token_lets_requests_through_to_mlflow(token_gate: TokenGateFactory,
                                                 mlflow_upstream: MlflowServer) -> None:
    gate = token_gate()
    token = _token(gate)
    claims = decode_jwt(token)
    assert claims["sub"] == "cloudtrack-test" and claims["iss"] == gate.url
    assert claims["exp"] - claims["iat"] == pytest.approx(gate.lifetime, abs=0.01)
    with requests.Session() as s:
        s.headers.update(_bearer(token))
        r = s.get(gate.url + SEARCH, timeout=30)
        assert r.status_code == 200, r.text
        assert "experiments" in r.json()
        # A write through the gate lands in MLflow: read it back without the gate.
        name = f"gate-{uuid.uuid4().hex[:8]}"
        r = s.post(gate.url + "/api/2.0/mlflow/experiments/create", json={"name": name},
                   timeout=30)
        assert r.status_code == 200, r.text
    direct = requests.get(f"{mlflow_upstream.url}/api/2.0/mlflow/experiments/get-by-name",
                          params={"experiment_name": name}, timeout=30)
    assert direct.json()["experiment"]["experiment_id"] == r.json()["experiment_id"]
    # MLflow's own errors come back as they are, status and body.
    with requests.Session() as s:
        s.headers.update(_bearer(token))
        r = s.get(gate.url + "/api/2.0/mlflow/experiments/get",
                  params={"experiment_id": "987654321"}, timeout=30)
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    stats = gate.stats()
    assert (stats.issued, stats.forwarded, stats.rejected) == (1, 3, 0)


def test_a_token_expires_after_its_lifetime(token_gate: TokenGateFactory) -> None:
    gate = token_gate(lifetime=1.5)
    token = _token(gate)
    assert requests.get(gate.url + SEARCH, headers=_bearer(token), timeout=30).status_code == 200
    time.sleep(max(0.0, decode_jwt(token)["exp"] - time.time()) + 0.05)
    r = requests.get(gate.url + SEARCH, headers=_bearer(token), timeout=30)
    _assert_401(r, "expired")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    # A new token works again.
    assert requests.get(gate.url + SEARCH, headers=_bearer(_token(gate)),
                        timeout=30).status_code == 200
    stats = gate.stats()
    assert stats.unauthorized["expired"] == 1 and stats.issued == 2 and stats.forwarded == 2


def test_forged_tokens_are_invalid(token_gate: TokenGateFactory) -> None:
    gate, other = token_gate(), token_gate()
    claims = decode_jwt(other.issue())
    unsigned = f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}."
    for token, word in [(other.issue(), "signature"),  # another gate's key
                        (sign_jwt(claims, b"guessed"), "signature"),
                        (unsigned, "HS256"),  # alg "none"
                        ("a.b.c", "base64url")]:
        _assert_401(requests.get(gate.url + SEARCH, headers=_bearer(token), timeout=30), word)
    assert gate.stats().unauthorized["invalid"] == 4
    assert gate.stats().forwarded == 0


def test_the_token_endpoint_wants_the_client_secret(token_gate: TokenGateFactory) -> None:
    gate = token_gate()
    for kwargs in [{}, {"headers": {"X-Client-Secret": "wrong"}},
                   {"json": {"client_secret": "wrong"}}]:
        r = requests.post(gate.token_url, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
        assert gate.client_secret not in r.text
    for kwargs in [{"json": {"client_secret": gate.client_secret}},
                   {"data": {"client_secret": gate.client_secret}}]:
        r = requests.post(gate.token_url, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200 and gate.verify(r.json()["access_token"])
    assert requests.get(gate.token_url, timeout=30).status_code == 405
    stats = gate.stats()
    assert stats.unauthorized["client_secret"] == 3 and stats.issued == 2
    assert set(stats.unauthorized) == set(REASONS)


def test_mlflow_client_logs_artifacts_through_the_gate(
        token_gate: TokenGateFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own client with MLFLOW_TRACKING_TOKEN: a run, a 3 MiB artifact up (proxied by
    the server, so through the gate) and down again, byte for byte."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    gate = token_gate()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", _token(gate))
    client = MlflowClient(tracking_uri=gate.url)
    experiment_id = client.create_experiment(f"gate-artifacts-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    payload = os.urandom(3 << 20)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "blob.bin").write_bytes(payload)
    client.log_artifact(run.info.run_id, str(tmp_path / "up" / "blob.bin"))
    down = client.download_artifacts(run.info.run_id, "blob.bin", str(tmp_path))
    assert hashlib.sha256(Path(down).read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert gate.stats().rejected == 0 and gate.stats().forwarded >= 4
    # The same client without a token is turned away, as MLflow's errors say.
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    with pytest.raises(MlflowException) as refused:
        MlflowClient(tracking_uri=gate.url).get_run(run.info.run_id)
    assert refused.value.error_code == "UNAUTHENTICATED", refused.value


# -- the token command --------------------------------------------------------------------------


def test_the_token_command_prints_a_token_and_nothing_else(token_gate: TokenGateFactory,
                                                           tmp_path: Path) -> None:
    gate = token_gate()
    argv = gate.token_command()
    assert gate.client_secret not in " ".join(argv)
    assert stat.S_IMODE(gate.secret_file.stat().st_mode) == 0o600
    # From another directory, without PYTHONPATH: how cloudtrack would run it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    token = proc.stdout.removesuffix("\n")
    assert "\n" not in token and gate.verify(token)["sub"] == "cloudtrack-test"
    assert requests.get(gate.url + SEARCH, headers=_bearer(token), timeout=30).status_code == 200
    # The shell form is the same command.
    shell = subprocess.run(gate.token_command_line(), shell=True, capture_output=True,
                           text=True, cwd=tmp_path, timeout=60)
    assert shell.returncode == 0 and gate.verify(shell.stdout.strip())


def test_the_token_command_fails_loudly(token_gate: TokenGateFactory, tmp_path: Path) -> None:
    gate = token_gate()
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret\n")
    cases = [
        (["--secret-file", str(wrong)], "answered 401"),
        (["--secret-file", str(tmp_path / "missing")], "cannot read the client secret"),
    ]
    for extra, message in cases:
        proc = subprocess.run([sys.executable, "-m", "backends.tokens", "issue", "--url",
                               gate.url, *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stdout == "" and message in proc.stderr, proc
    argv = gate.token_command()
    gate.stop()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert "failed" in proc.stderr or "cannot read" in proc.stderr


# -- against a tiny origin that records what reached it ------------------------------------------


class _Origin(BaseHTTPRequestHandler):
    """Answers every request with what it received: method, path, headers, body digest."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, object]]

    def log_message(self, *args: object) -> None:
        pass

    def _record(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                  "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        self.server.seen.append(record)  # type: ignore[attr-defined]
        data = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _record


@pytest.fixture
def origin() -> Iterator[tuple[str, list[dict[str, object]]]]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _Origin)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_what_reaches_the_upstream(token_gate: TokenGateFactory,
                                   origin: tuple[str, list[dict[str, object]]]) -> None:
    url, seen = origin
    gate = token_gate(url + "/prefix")
    token = gate.issue()
    body = os.urandom(2 << 20)
    with requests.Session() as s:
        s.headers.update(_bearer(token))
        r = s.put(gate.url + "/a/b?x=1&y=%2F", data=body, headers={"X-Custom": "kept"},
                  timeout=30)
        assert r.status_code == 200
        # A generator body goes out chunked and arrives whole.
        r2 = s.post(gate.url + "/chunked", data=iter([body[:1000], body[1000:]]), timeout=30)
        assert r2.status_code == 200
    first, second = seen
    assert first["method"] == "PUT" and first["path"] == "/prefix/a/b?x=1&y=%2F"
    assert first["sha256"] == second["sha256"] == hashlib.sha256(body).hexdigest()
    headers = first["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Custom"] == "kept" and "Authorization" not in headers
    assert headers["Host"] == url.removeprefix("http://")


def test_a_refused_upload_gets_its_401_before_the_body(
        token_gate: TokenGateFactory, origin: tuple[str, list[dict[str, object]]]) -> None:
    """``Expect: 100-continue`` without a token: 401 instead of ``100 Continue``, body unsent;
    a plain upload with an expired token: its body is read and dropped, then 401."""
    url, seen = origin
    gate = token_gate(url)
    conn = http.client.HTTPConnection(LOOPBACK, gate.port, timeout=30)
    conn.putrequest("PUT", "/upload")
    conn.putheader("Content-Length", str(1 << 20))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    response = conn.getresponse()  # only the head went out
    assert response.status == 401 and response.getheader("Connection") == "close"
    conn.close()
    r = requests.put(gate.url + "/upload", data=os.urandom(4 << 20),
                     headers=_bearer(gate.issue(lifetime=-1)), timeout=30)
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert seen == []
    assert gate.stats().unauthorized == {"missing": 1, "invalid": 0, "expired": 1,
                                         "client_secret": 0}


def test_an_unreachable_upstream_is_a_502(token_gate: TokenGateFactory) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    gate = token_gate(f"http://{LOOPBACK}:{port}", upstream_timeout=5)
    r = requests.get(gate.url + "/x", headers=_bearer(gate.issue()), timeout=30)
    assert r.status_code == 502 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert gate.stats().upstream_errors == 1


def test_stop_leaves_nothing_behind(origin: tuple[str, list[dict[str, object]]]) -> None:
    gate = TokenGate(origin[0])
    gate.start()
    port, workdir = gate.port, gate.workdir
    with requests.Session() as s:  # a keep-alive connection left open at stop()
        assert s.get(gate.url + "/", headers=_bearer(gate.issue()), timeout=30).ok
        gate.stop()
        gate.stop()
    with socket.socket() as s:
        assert s.connect_ex((LOOPBACK, port)) != 0, f"something still listens on {port}"
    assert workdir is not None and not workdir.exists()
