"""The network probes' pure parts and their behaviour on loopback sockets: timeouts,
refused ports, TLS spoken to a plain port and plain HTTP spoken to a TLS port, clocks,
proxies, and the classification of the errors SDKs wrap network failures in."""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudtrack.doctor import net
from cloudtrack.doctor.core import Probe, Stop

HINTS = net.TlsHints("REQUESTS_CA_BUNDLE", "X_INSECURE=true")


@pytest.fixture
def plain_http() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    from backends.azure.service import make_tls_files

    files = make_tls_files(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(100)
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield int(listener.getsockname()[1]), files.ca
    listener.close()


def _run(url: str, verify: bool | str = True, timeout: float = 2.0,
         budget: float = 25.0) -> Probe:
    probe = Probe({}, timeout=timeout, budget=budget)
    try:
        net.probe_endpoint(probe, url, verify=verify, hints=HINTS)
    except Stop:
        pass
    return probe


def _failure(probe: Probe) -> tuple[str, str]:
    failed = [c for c in probe.checks if c.status == "fail"]
    assert failed, [c.summary for c in probe.checks]
    return failed[0].layer, failed[0].cause


def test_plain_http_passes(plain_http: int) -> None:
    probe = _run(f"http://127.0.0.1:{plain_http}")
    assert [c.id for c in probe.checks] == ["dns", "tcp", "tls"]
    assert not probe.failed()


def test_refused_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _failure(_run(f"http://127.0.0.1:{port}")) == ("tcp", "connection-refused")


def test_black_hole_is_a_timeout_and_bounded() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        start = time.monotonic()
        http = _run(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        https = _run(f"https://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
    assert _failure(http) == ("http", "network-timeout")
    assert _failure(https) == ("tls", "network-timeout")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(("timeout", "budget"), [(1.0, 1.6), (3.0, 1.0)])
def test_black_hole_reports_the_time_it_waited(timeout: float, budget: float) -> None:
    """F21: the message says how long the doctor waited, not what the run had left afterwards;
    when the run's budget, not --timeout, ended the wait, it says that too.  The black hole is
    a socket made here that accepts (the kernel completes the handshake) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        start = time.monotonic()
        probe = _run(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=timeout, budget=budget)
        elapsed = time.monotonic() - start
    assert _failure(probe) == ("http", "network-timeout")
    summary = next(c.summary for c in probe.checks if c.status == "fail")
    said = float(re.search(r"answered nothing within ([\d.]+)s", summary).group(1))  # type: ignore[union-attr]
    waited = min(timeout, budget)
    assert waited - 0.15 <= said <= elapsed + 0.05, (summary, elapsed)
    capped = "--timeout 3 allowed longer, but the doctor's whole run is capped at 1s"
    assert (capped in summary) == (budget < timeout), summary


def test_https_to_a_plain_port_is_a_mismatch(plain_http: int) -> None:
    probe = _run(f"https://127.0.0.1:{plain_http}")
    assert _failure(probe) == ("tls", "tls-mismatch")
    assert "plain HTTP" in probe.checks[-1].summary


def test_untrusted_then_trusted_certificate(tls_port: tuple[int, Path]) -> None:
    port, ca = tls_port
    untrusted = _run(f"https://127.0.0.1:{port}")
    assert _failure(untrusted) == ("tls", "tls-untrusted")
    assert "REQUESTS_CA_BUNDLE" in (untrusted.checks[-1].fix or "")
    assert not _run(f"https://127.0.0.1:{port}", verify=str(ca)).failed()
    assert not _run(f"https://127.0.0.1:{port}", verify=False).failed()


def test_certificate_for_another_name(tmp_path: Path) -> None:
    """A trusted certificate issued for other.example, served on 127.0.0.1."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other.example")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(10)
            except (OSError, ssl.SSLError):
                pass

        threading.Thread(target=serve, daemon=True).start()
        probe = _run(f"https://127.0.0.1:{listener.getsockname()[1]}", verify=str(cert_file))
    assert _failure(probe) == ("tls", "tls-untrusted")
    assert "not valid for the name 127.0.0.1" in probe.checks[-1].summary


def test_http_to_a_tls_port_is_a_mismatch(tls_port: tuple[int, Path]) -> None:
    port, _ = tls_port
    assert _failure(_run(f"http://127.0.0.1:{port}")) == ("tls", "tls-mismatch")


def test_clock_skew_from_date_headers() -> None:
    now = time.time()
    ahead = email.utils.formatdate(now + 3600, usegmt=True)
    assert net.clock_skew(ahead, now) == pytest.approx(3600, abs=1)
    doubled = f"{email.utils.formatdate(now, usegmt=True)}, {email.utils.formatdate(now, usegmt=True)}"
    assert net.clock_skew(doubled, now) == pytest.approx(0, abs=1)
    assert net.clock_skew("garbage", now) is None and net.clock_skew(None) is None


def test_clock_check_thresholds() -> None:
    probe = Probe({})
    net.check_clock(probe, email.utils.formatdate(time.time() + 2, usegmt=True))
    net.check_clock(probe, email.utils.formatdate(time.time() - 300, usegmt=True))
    with pytest.raises(Stop):
        net.check_clock(probe, email.utils.formatdate(time.time() + 3600, usegmt=True))
    assert [c.status for c in probe.checks] == ["ok", "warn", "fail"]
    assert probe.checks[-1].cause == "clock-skew"


def test_proxies_follow_no_proxy() -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.internal,10.0.0.0/8"}
    assert net.proxy_for("https://s3.amazonaws.com/x", env) == "http://proxy:3128"
    assert net.proxy_for("https://minio.corp.internal:9000", env) is None
    assert net.proxy_for("https://10.1.2.3:9000", env) is None
    assert net.proxy_for("http://example.com", env) is None
    assert net.proxy_for("https://x", {"https_proxy": "http://p:1", "no_proxy": "*"}) is None


def test_transport_failures_inside_sdk_wrappers() -> None:
    class Wrapper(Exception):
        def __init__(self, inner: BaseException) -> None:
            super().__init__("wrapped")
            self.inner_exception = inner

    cases = {
        "tls-untrusted": ssl.SSLCertVerificationError(1, "CERTIFICATE_VERIFY_FAILED"),
        "dns-failure": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        "connection-refused": ConnectionRefusedError(111, "Connection refused"),
        "network-timeout": TimeoutError("timed out"),
    }
    for cause, inner in cases.items():
        outer = RuntimeError("SDK failed")
        outer.__cause__ = Wrapper(inner)
        failure = net.transport_failure(outer, "the endpoint")
        assert failure is not None and failure.cause == cause
    text_only = RuntimeError("HTTPSConnectionPool: [SSL: WRONG_VERSION_NUMBER] wrong version")
    assert net.transport_failure(text_only, "x").cause == "tls-mismatch"  # type: ignore[union-attr]
    assert net.transport_failure(ValueError("unrelated"), "x") is None
