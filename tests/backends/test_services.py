"""The services of ``backends/mlflow`` and ``backends/proxy`` themselves: a real MLflow server
(plain and basic-auth), and the latency proxy in front of it and of a small local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from backends._common import LOOPBACK, ROOT
from backends.mlflow import MlflowServer, MlflowServerError
from backends.proxy import LatencyProxy, remote_reset, remote_stats

N_MS = 20
BIG = 50 * 1024 * 1024


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MlflowServer]]:
    """A plain server (proxied artifacts), a basic-auth one (a direct artifact root) and one
    that cannot start, launched together so that their ~10 s start-ups overlap; the broken one
    is waited for by its own test."""
    direct_root = tmp_path_factory.mktemp("direct-artifacts").as_uri()
    started = {"plain": MlflowServer(),
               "auth": MlflowServer(artifact_root=direct_root, basic_auth=True),
               "broken": MlflowServer(backend_store_uri="nosuchscheme://nowhere")}
    try:
        for srv in started.values():
            srv.launch()
        started["plain"].wait_ready()
        started["auth"].wait_ready()
        yield started
    finally:
        left = [(srv.pid, srv.port, srv.workdir) for srv in started.values()]
        for srv in started.values():
            srv.stop()
    # Cleanup is part of the contract: a teardown error here means a leaked server or folder.
    for pid, port, workdir in left:
        assert pid is None or not _alive(pid), f"mlflow server {pid} still running"
        assert _refused(port), f"something still listens on {port}"
        assert workdir is None or not workdir.exists(), f"{workdir} left behind"


@pytest.fixture(scope="module")
def mlflow_server(servers: dict[str, MlflowServer]) -> MlflowServer:
    return servers["plain"]


@pytest.fixture(scope="module")
def auth_server(servers: dict[str, MlflowServer]) -> MlflowServer:
    return servers["auth"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /big: BIG deterministic bytes; GET /slow/<ms>: a tiny answer after <ms>; PUT: answers
    the body's length and sha256, read in chunks; GET anything else: a tiny answer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add 40 ms to every small response

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(int(self.path.rsplit("/", 1)[1]) / 1000)
            return self._answer(b"slow")
        if self.path != "/big":
            return self._answer(b"ok")
        self.send_response(200)
        self.send_header("Content-Length", str(BIG))
        self.end_headers()
        for block in _blocks():
            self.wfile.write(block)

    def do_PUT(self) -> None:
        remaining = int(self.headers["Content-Length"])
        digest, size = hashlib.sha256(), 0
        while remaining:
            data = self.rfile.read(min(remaining, 1 << 20))
            if not data:
                break
            digest.update(data)
            size += len(data)
            remaining -= len(data)
        self._answer(f"{size} {digest.hexdigest()}".encode())


def _blocks() -> Iterator[bytes]:
    """BIG bytes in 1 MiB blocks that differ from each other, so a reordering would show."""
    for i in range(BIG >> 20):
        yield hashlib.sha256(str(i).encode()).digest() * (1 << 15)


@pytest.fixture(scope="module")
def http_target() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _refused(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return True
    return False


# -- the MLflow server ----------------------------------------------------------------------

def test_mlflow_client_round_trip(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    assert mlflow_server.env == {"MLFLOW_TRACKING_URI": mlflow_server.url}
    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp_id = client.create_experiment(f"services-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp_id).info.run_id
    for step, value in enumerate([0.9, 0.5, 0.25]):
        client.log_metric(run_id, "loss", value, step=step)
    client.log_param(run_id, "lr", "0.01")
    (tmp_path / "notes.txt").write_text("proxied artifact")
    client.log_artifact(run_id, str(tmp_path / "notes.txt"))
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.data.metrics == {"loss": 0.25}
    assert run.data.params == {"lr": "0.01"}
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(mlflow_server.artifact_root)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.9, 0.5, 0.25]
    assert [a.path for a in client.list_artifacts(run_id)] == ["notes.txt"]
    local = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "down"))
    assert Path(local).read_text() == "proxied artifact"


def test_basic_auth_rejects_wrong_password_and_accepts_admin(
        auth_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    admin = auth_server.admin
    assert admin is not None
    assert auth_server.env == {"MLFLOW_TRACKING_URI": auth_server.url, **admin.env}
    search = f"{auth_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=(admin.username, "wrong"), timeout=30).status_code == 401
    assert requests.get(search, auth=admin.auth, timeout=30).status_code == 200

    for key, value in auth_server.env.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=auth_server.url)
    exp_id = client.create_experiment(f"admin-{uuid.uuid4().hex[:8]}")
    # This server was given a direct artifact root instead of proxying artifacts.
    assert auth_server.artifact_root.startswith("file:///")
    assert client.get_experiment(exp_id).artifact_location.startswith(auth_server.artifact_root)


def test_basic_auth_user_without_permission_gets_403(auth_server: MlflowServer) -> None:
    admin = auth_server.admin
    assert admin is not None
    api = f"{auth_server.url}/api/2.0/mlflow"
    created = requests.post(f"{api}/experiments/create", auth=admin.auth, timeout=30,
                            json={"name": f"owned-by-admin-{uuid.uuid4().hex[:8]}"})
    exp_id = created.json()["experiment_id"]
    user = auth_server.create_user()

    # default_permission READ: reading is allowed, writing to someone else's experiment is not.
    def read_experiment() -> int:
        return requests.get(f"{api}/experiments/get", params={"experiment_id": exp_id},
                            auth=user.auth, timeout=30).status_code

    assert read_experiment() == 200
    denied = requests.post(f"{api}/runs/create", auth=user.auth, timeout=30,
                           json={"experiment_id": exp_id})
    assert denied.status_code == 403, denied.text

    auth_server.grant(user.username, exp_id, "DENY")
    assert read_experiment() == 403


def test_failed_start_raises_with_log_tail_and_cleans_up(
        servers: dict[str, MlflowServer]) -> None:
    srv = servers["broken"]
    with pytest.raises(MlflowServerError, match="exited with") as err:
        srv.wait_ready()
    assert "nosuchscheme" in str(err.value)  # the server's own log names the culprit
    assert srv.workdir is None and srv.pid is None


# -- the latency proxy ------------------------------------------------------------------------

def test_proxy_adds_latency_per_request_and_counts_exactly(mlflow_server: MlflowServer) -> None:
    path = "/api/2.0/mlflow/experiments/get?experiment_id=0"
    with LatencyProxy(LOOPBACK, mlflow_server.port, N_MS) as proxy, \
            requests.Session() as direct, requests.Session() as proxied:
        for session, base in ((direct, mlflow_server.url), (proxied, proxy.url)):
            session.get(base + path, timeout=30).raise_for_status()  # open the connections
        proxy.reset()
        times: dict[str, list[float]] = {"direct": [], "proxied": []}
        # Interleaved, so a load spike on the machine hits both sides alike.
        for _ in range(20):
            for key, session, base in (("direct", direct, mlflow_server.url),
                                       ("proxied", proxied, proxy.url)):
                t0 = time.perf_counter()
                session.get(base + path, timeout=30).raise_for_status()
                times[key].append(time.perf_counter() - t0)
        stats = proxy.stats()

    assert sum(times["proxied"]) >= 20 * N_MS / 1000
    delta_ms = (statistics.median(times["proxied"]) - statistics.median(times["direct"])) * 1000
    assert 0.8 * N_MS <= delta_ms <= 1.5 * N_MS, (delta_ms, times)
    # Keep-alive: 20 requests, 20 round trips, no new connection.
    assert stats["requests"] == 20 and stats["round_trips"] == 20
    assert stats["connections"] == 0


def test_proxy_counts_mlflow_client_calls_and_serves_stats_to_other_processes(
        mlflow_server: MlflowServer) -> None:
    from mlflow import MlflowClient

    with LatencyProxy(LOOPBACK, mlflow_server.port, 1) as proxy:
        client = MlflowClient(tracking_uri=proxy.url)
        client.get_experiment("0")
        with proxy.counting() as cost:
            client.get_experiment("0")
            client.search_experiments(max_results=5)
        assert cost.requests == 2
        # The control channel is what a benchmark in another process reads.
        read = subprocess.run(
            [sys.executable, "-c",
             "import sys, json; from backends.proxy import remote_stats; "
             "print(json.dumps(remote_stats(sys.argv[1])))", proxy.control_url],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(read.stdout) == proxy.stats()
        assert remote_reset(proxy.control_url)["requests"] == 2
        assert remote_stats(proxy.control_url)["requests"] == 0


def test_proxy_measures_the_service_time_apart_from_its_latency(http_target: int) -> None:
    with LatencyProxy(LOOPBACK, http_target, 50) as proxy, requests.Session() as session:
        session.get(f"{proxy.url}/fast", timeout=30).raise_for_status()
        fast = proxy.reset()
        for _ in range(3):
            session.get(f"{proxy.url}/slow/200", timeout=30).raise_for_status()
        slow = proxy.stats()
    # The added 50 ms is latency, not service time: a tiny answer takes well under it.
    assert 0 < fast["service_us"] < 50_000, fast
    assert 3 * 200_000 <= slow["service_us"] < 3 * 200_000 + 3 * 50_000, slow


def test_large_bodies_pass_intact(http_target: int) -> None:
    expected = hashlib.sha256()
    for block in _blocks():
        expected.update(block)
    body = b"".join(_blocks())
    with LatencyProxy(LOOPBACK, http_target, 5) as proxy, requests.Session() as session:
        up = session.put(f"{proxy.url}/upload", data=body, timeout=120)
        assert up.text == f"{BIG} {expected.hexdigest()}"
        down = hashlib.sha256()
        with session.get(f"{proxy.url}/big", stream=True, timeout=120) as resp:
            for chunk in resp.iter_content(1 << 20):
                down.update(chunk)
        assert down.hexdigest() == expected.hexdigest()
        stats = proxy.stats()
    assert stats["requests"] == 2 and stats["connections"] == 1
    assert stats["bytes_up"] > BIG and stats["bytes_down"] > BIG


def test_expect_100_continue_is_one_request_two_round_trips(http_target: int) -> None:
    body = b"x" * 1000
    with LatencyProxy(LOOPBACK, http_target, 1) as proxy, \
            socket.create_connection((LOOPBACK, proxy.port), timeout=30) as sock:
        sock.sendall(f"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        answer = b""
        while not answer.endswith(hashlib.sha256(body).hexdigest().encode()):
            answer += sock.recv(1024)
        stats = proxy.stats()
    assert stats["requests"] == 1 and stats["round_trips"] == 2


def test_concurrent_connections_wait_concurrently(http_target: int) -> None:
    latency_ms = 50

    def two_requests(_: int) -> list[int]:
        with requests.Session() as s:
            return [s.get(f"{proxy.url}/", timeout=30).status_code for _ in range(2)]

    with LatencyProxy(LOOPBACK, http_target, latency_ms) as proxy:
        t0 = time.monotonic()
        with ThreadPoolExecutor(50) as pool:
            codes = list(pool.map(two_requests, range(50)))
        elapsed = time.monotonic() - t0
        stats = proxy.stats()
    assert codes == [[200, 200]] * 50
    assert stats["connections"] == 50 and stats["requests"] == 100
    # connect + 2 round trips each: 150 ms if concurrent, 7.5 s if serialised.
    assert 3 * latency_ms / 1000 <= elapsed < 5.0


def test_stop_closes_open_connections_and_the_port(http_target: int) -> None:
    proxy = LatencyProxy(LOOPBACK, http_target, 0)
    proxy.start()
    session = requests.Session()
    assert session.get(f"{proxy.url}/", timeout=30).status_code == 200  # stays open
    t0 = time.monotonic()
    proxy.stop()
    assert time.monotonic() - t0 < 2
    assert _refused(proxy.port)
    with pytest.raises(requests.ConnectionError):
        session.get(f"{proxy.url}/", timeout=5)
    session.close()


# -- python -m backends -----------------------------------------------------------------------

def test_up_latency_puts_a_proxy_in_front_of_every_loopback_endpoint(http_target: int) -> None:
    from backends.__main__ import _proxied

    proxies: list[LatencyProxy] = []
    env = {"SOME_ENDPOINT": f"http://{LOOPBACK}:{http_target}/x", "OTHER": "untouched"}
    try:
        out = _proxied("my-svc", env, 1, proxies)
        assert len(proxies) == 1
        assert out["SOME_ENDPOINT"] == f"http://{LOOPBACK}:{proxies[0].port}/x"
        assert out["OTHER"] == "untouched"
        assert requests.get(out["SOME_ENDPOINT"], timeout=30).status_code == 200
        assert remote_stats(out["BACKENDS_PROXY_MY_SVC"])["requests"] == 1
    finally:
        for proxy in proxies:
            proxy.stop()


def test_backends_up_prints_env_skips_unknown_and_cleans_up(tmp_path: Path) -> None:
    env_file = tmp_path / "env.sh"
    proc = subprocess.Popen(
        [sys.executable, "-m", "backends", "up", "local", "no-such-service",
         "--env-file", str(env_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not env_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "# local: LocalDirectory" in env_file.read_text()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "no-such-service: skipped" in err
    assert "a fresh store: file://" in out
    assert not env_file.exists()
