"""Network probes every remote backend shares: name lookup → TCP connect → TLS handshake, each
bounded by a timeout and each failure named with its catalogue cause; the classification of
the network errors SDKs raise; the server's clock from its ``Date`` header; one bounded HTTP
request that honours the resolved environment's proxies and CA bundle.

Only what the client would reach is probed: the endpoint, or the proxy in front of it.
"""

from __future__ import annotations

import email.utils
import errno
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudtrack.blobs.sdk_errors import exception_chain
from cloudtrack.config import redact_uri
from cloudtrack.config.tls import Trust
from cloudtrack.doctor.core import (
    SKEW_FAIL,
    SKEW_WARN,
    Probe,
    ProbeTimeout,
    duration,
    run_bounded,
)

#: Bytes read to tell what a port speaks.
_SNIFF = 16
#: Seconds a plain-HTTP server gets to answer the sniff (it answers at once or not at all).
SNIFF_TIMEOUT = 2.0


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_uri(url)!r} is not an http:// or https:// URL with a host")
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname, port)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class TlsHints:
    """How a backend's users fix TLS: the variable naming a CA bundle, the test-only switch."""

    ca_variable: str
    insecure: str | None = None

    @classmethod
    def of(cls, trust: Trust) -> TlsHints:
        """The hints of an endpoint's :class:`~cloudtrack.config.tls.Trust`."""
        return cls(trust.ca_variable or "REQUESTS_CA_BUNDLE", trust.insecure_switch)

    def untrusted_fix(self) -> str:
        fix = (f"set {self.ca_variable} to the CA bundle (PEM) that signed the server's "
               "certificate (your company's or proxy's root CA)")
        if self.insecure:
            fix += f"; for a test server only, {self.insecure} turns verification off"
        return fix


class NetFailure(Exception):
    """A network step failed; ``layer`` and ``cause`` say where and why."""

    def __init__(self, layer: str, cause: str, summary: str, fix: str | None = None, *,
                 timed_out: bool = False) -> None:
        super().__init__(summary)
        self.layer = layer
        self.cause = cause
        self.summary = summary
        self.fix = fix
        #: The step gave up waiting after the time it was allowed.
        self.timed_out = timed_out


# -- trust -----------------------------------------------------------------------------------


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if isinstance(verify, str):
        import os

        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    # requests and botocore both default to certifi's bundle.
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


# -- proxies ---------------------------------------------------------------------------------


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy ``requests``/botocore would use for ``url`` under ``environ``, or None."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return None
        entry = entry.split(":")[0].lstrip(".")
        if host == entry or host.endswith("." + entry):
            return None
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return None
        except ValueError:
            pass
    scheme = parts.scheme.lower()
    proxy = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY") \
        or environ.get("all_proxy") or environ.get("ALL_PROXY")
    return proxy or None


# -- the three steps -------------------------------------------------------------------------


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def lookup(host: str, port: int, timeout: float) -> list[Any]:
    """The socket addresses of ``host``; getaddrinfo has no timeout, so it runs bounded."""
    try:
        infos = run_bounded(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                            timeout, f"looking up {host}")
    except ProbeTimeout:
        raise NetFailure("dns", "dns-failure",
                         f"looking up {host} took longer than {timeout:.1f}s (no DNS server "
                         "answers: offline, VPN down, or a resolver that drops queries)",
                         "check the network and /etc/resolv.conf; a name that only resolves "
                         "inside a cluster or VPN needs that network", timed_out=True) from None
    except (socket.gaierror, UnicodeError) as e:
        code = getattr(e, "errno", None)
        if code == socket.EAI_AGAIN:
            raise NetFailure("dns", "dns-failure",
                             f"{host} does not resolve: no DNS server answered (offline, VPN "
                             "down, or the resolver is unreachable)",
                             "check the network connection, the VPN and the DNS servers in "
                             "/etc/resolv.conf") from None
        why = "the name does not exist in DNS" if code in (
            socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)) else f"lookup failed: {e}"
        raise NetFailure("dns", "dns-failure", f"{host} does not resolve: {why}",
                         f"check the host name {host!r}; a cluster-internal name (*.svc, "
                         "*.cluster.local, *.internal) only resolves inside that cluster or "
                         "VPN — use an address reachable from here") from None
    addresses = []
    for family, socktype, proto, _, sockaddr in infos:
        addresses.append((family, socktype, proto, sockaddr))
    return addresses


def connect(addresses: list[Any], timeout: float, host: str, port: int) -> socket.socket:
    """A connected socket to the first address that accepts."""
    last: NetFailure | None = None
    for family, socktype, proto, sockaddr in addresses:
        sock = socket.socket(family, socktype, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except TimeoutError:
            sock.close()
            last = NetFailure("tcp", "network-timeout",
                              f"connecting to {host}:{port} ({sockaddr[0]}) got no answer within "
                              f"{timeout:.1f}s: packets are dropped (firewall, security group, "
                              "VPN) or the host is down",
                              f"check that {host}:{port} is reachable from this machine "
                              "(firewall rules, security groups, the VPN)", timed_out=True)
        except OSError as e:
            sock.close()
            if e.errno == errno.ECONNREFUSED:
                last = NetFailure("tcp", "connection-refused",
                                  f"{host}:{port} ({sockaddr[0]}) refused the connection: nothing "
                                  "listens on that port",
                                  f"start the server, or fix the host or port ({host}:{port})")
            elif e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                last = NetFailure("tcp", "network-timeout",
                                  f"{host}:{port} is unreachable ({e.strerror}): no route",
                                  "check the network connection, VPN and routes")
            else:
                last = NetFailure("tcp", "connection-refused",
                                  f"connecting to {host}:{port} failed: {e.strerror or e}",
                                  f"check the host and port ({host}:{port})")
    assert last is not None
    raise last


def sniff(address: Any, host: str, timeout: float) -> bytes | None:
    """The first bytes a port answers to a plain HTTP request; None when it stays silent."""
    family, socktype, proto, sockaddr = address
    try:
        with socket.socket(family, socktype, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return sock.recv(_SNIFF)
    except TimeoutError:
        return None
    except OSError:
        return b""


def speaks_tls(address: Any, host: str, timeout: float) -> bool:
    family, socktype, proto, sockaddr = address
    ctx = ssl_context(False)
    try:
        with socket.socket(family, socktype, proto) as raw:
            raw.settimeout(timeout)
            raw.connect(sockaddr)
            with ctx.wrap_socket(raw, server_hostname=None if is_ip(host) else host):
                return True
    except (OSError, ssl.SSLError):
        return False


def handshake(sock: socket.socket, address: Any, host: str, port: int, verify: bool | str,
              timeout: float, hints: TlsHints) -> str:
    """Complete a TLS handshake on ``sock`` (closed afterwards); a description of the session."""
    ctx = ssl_context(verify)
    sock.settimeout(timeout)
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            cert: dict[str, Any] = dict(tls.getpeercert() or {})
            subject = {str(k): str(v) for rdn in cert.get("subject", ()) for k, v in rdn}
            issuer = {str(k): str(v) for rdn in cert.get("issuer", ()) for k, v in rdn}
            parts = [str(tls.version())]
            if subject:
                parts.append(f"certificate {subject.get('commonName', '?')}")
            if issuer:
                parts.append(f"issued by {issuer.get('commonName', issuer.get('organizationName', '?'))}")
            if cert.get("notAfter"):
                parts.append(f"valid until {cert['notAfter']}")
            if verify is False:
                parts.append("not verified (verification is turned off)")
            return ", ".join(parts)
    except ssl.SSLCertVerificationError as e:
        why = e.verify_message or str(e)
        if e.verify_code == 62 or "hostname" in why.lower() or "IP address mismatch" in why:
            summary = (f"the certificate of {host}:{port} is not valid for the name {host} "
                       f"({why})")
            fix = (f"connect with the name the certificate was issued for, or get a "
                   f"certificate that includes {host}")
        else:
            summary = f"the certificate of {host}:{port} is not trusted: {why}"
            fix = hints.untrusted_fix()
        raise NetFailure("tls", "tls-untrusted", summary, fix) from None
    except TimeoutError:
        answer = sniff(address, host, min(timeout, SNIFF_TIMEOUT))
        if answer and answer.startswith(b"HTTP/"):
            raise _plain_http(host, port) from None
        raise NetFailure("tls", "network-timeout",
                         f"{host}:{port} accepted the connection but did not answer the TLS "
                         f"handshake within {timeout:.1f}s (packets dropped, or a server that "
                         "never responds)",
                         f"check that {host}:{port} is the right service and is not overloaded "
                         "or firewalled", timed_out=True) from None
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as e:
        answer = sniff(address, host, min(timeout, SNIFF_TIMEOUT))
        if answer and answer.startswith(b"HTTP/"):
            raise _plain_http(host, port) from None
        raise NetFailure("tls", "tls-mismatch",
                         f"the TLS handshake with {host}:{port} failed ({_ssl_reason(e)}): the "
                         "port does not speak TLS as expected, or a proxy/firewall cuts it",
                         "check the port and whether the URL should be http:// or https://; "
                         "behind an intercepting proxy, set HTTPS_PROXY and trust its CA") from None


def _plain_http(host: str, port: int) -> NetFailure:
    return NetFailure("tls", "tls-mismatch",
                      f"https:// was used, but {host}:{port} speaks plain HTTP (its answer to "
                      "a TLS handshake is an HTTP response: WRONG_VERSION_NUMBER)",
                      f"use http://{host}:{port}, or enable TLS on the server")


def _ssl_reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or type(e).__name__)


def probe_endpoint(p: Probe, url: str, *, verify: bool | str, hints: TlsHints,
                   what: str = "the endpoint") -> None:
    """Record the dns, tcp and tls checks of ``url`` (or of the proxy in front of it).
    Ends the chain (:class:`~cloudtrack.doctor.core.Stop`) at the first failure."""
    target = Target.from_url(url)
    proxy = proxy_for(url, p.environ)
    probed = target
    via = ""
    # Each step's time is fixed before it starts (and named when it gives up): asked again
    # afterwards, the run's budget would have shrunk by the very wait being reported.
    allowed = p.step_timeout()
    if proxy:
        try:
            probed = Target.from_url(proxy if "://" in proxy else f"http://{proxy}")
        except ValueError:
            p.fail("config.proxy", "config", "config-invalid",
                   f"the proxy {redact_uri(proxy)!r} for {target.host} is not a URL",
                   "set HTTPS_PROXY / HTTP_PROXY like http://proxy.example:3128")
        via = f" (through the proxy {probed.netloc}, from the *_PROXY variables)"
    try:
        if is_ip(probed.host):
            addresses = lookup(probed.host, probed.port, allowed)
            p.ok("dns", "dns", f"{probed.host} is an IP address: no lookup{via}")
        else:
            start = time.monotonic()
            addresses = lookup(probed.host, probed.port, allowed)
            shown = ", ".join(sorted({str(a[3][0]) for a in addresses})[:4])
            p.ok("dns", "dns", f"{probed.host} resolves to {shown} "
                 f"({(time.monotonic() - start) * 1000:.0f} ms){via}")
        start = time.monotonic()
        allowed = p.step_timeout()
        sock = connect(addresses, allowed, probed.host, probed.port)
        peer = sock.getpeername()
        p.ok("tcp", "tcp", f"connected to {probed.host}:{probed.port} ({peer[0]}) in "
             f"{(time.monotonic() - start) * 1000:.0f} ms{via}")
        address = next(a for a in addresses if a[0] == sock.family)
        if proxy:
            sock.close()
            p.ok("tls", "tls", f"{what} is reached through a proxy: TLS to {target.netloc} is "
                 "checked by the requests themselves")
            return
        if target.scheme == "https":
            allowed = p.step_timeout()
            info = handshake(sock, address, target.host, target.port, verify, allowed, hints)
            p.ok("tls", "tls", f"TLS with {target.netloc}: {info}")
            return
        sock.close()
        allowed = p.step_timeout()
        start = time.monotonic()
        answer = sniff(address, target.host, allowed)
        if answer is None:
            raise NetFailure("http", "network-timeout",
                             f"{target.netloc} accepted the connection but answered nothing "
                             f"within {time.monotonic() - start:.1f}s (a black-holed or hung "
                             "server)",
                             f"check that {target.netloc} is the right service and is not "
                             "overloaded or firewalled", timed_out=True)
        if answer[:1] in (b"\x15", b"\x16"):
            raise NetFailure("tls", "tls-mismatch",
                             f"http:// was used, but {target.netloc} speaks TLS",
                             f"use https://{target.netloc}")
        if not answer and speaks_tls(address, target.host, p.step_timeout()):
            raise NetFailure("tls", "tls-mismatch",
                             f"http:// was used, but {target.netloc} speaks TLS "
                             "(it closed the connection on a plain HTTP request)",
                             f"use https://{target.netloc}")
        p.ok("tls", "tls", f"plain HTTP to {target.netloc} (http://: no TLS)")
    except NetFailure as f:
        note = p.cut_short(allowed) if f.timed_out else ""
        p.fail(f.layer, f.layer, f.cause, f.summary + via + note, f.fix)


# -- errors raised by SDKs ---------------------------------------------------------------------


_TIMEOUT_NAMES = {"ReadTimeout", "ConnectTimeout", "ReadTimeoutError", "ConnectTimeoutError",
                  "Timeout", "TimeoutError", "timeout", "ProbeTimeout"}


def transport_failure(e: BaseException, where: str) -> NetFailure | None:
    """A :class:`NetFailure` when ``e`` (any SDK's wrapping of it) is a network failure."""
    texts = []
    for x in exception_chain(e):
        if isinstance(x, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(x):
            return NetFailure("tls", "tls-untrusted",
                              f"the TLS certificate of {where} is not trusted ({_short(x)})")
        if isinstance(x, socket.gaierror):
            return NetFailure("dns", "dns-failure", f"{where} does not resolve ({_short(x)})")
        if isinstance(x, ConnectionRefusedError):
            return NetFailure("tcp", "connection-refused", f"{where} refused the connection")
        if any(c.__name__ in _TIMEOUT_NAMES for c in type(x).__mro__):
            return NetFailure("http", "network-timeout",
                              f"{where} did not answer in time ({_short(x)})")
        if isinstance(x, ssl.SSLError):
            return NetFailure("tls", "tls-mismatch", f"TLS with {where} failed ({_short(x)})")
        texts.append(str(x))
    text = " ".join(texts)
    low = text.lower()
    if "wrong_version_number" in low or "record layer failure" in low \
            or "eof occurred in violation" in low or "unexpected_eof" in low:
        return NetFailure("tls", "tls-mismatch", f"TLS with {where} failed ({_short(text)})")
    if "connection refused" in low or "errno 111" in low:
        return NetFailure("tcp", "connection-refused", f"{where} refused the connection")
    if any(s in low for s in ("name or service not known", "nodename nor servname",
                              "temporary failure in name resolution", "getaddrinfo failed",
                              "no address associated")):
        return NetFailure("dns", "dns-failure", f"{where} does not resolve ({_short(text)})")
    if "timed out" in low or "read timeout" in low or "connect timeout" in low:
        return NetFailure("http", "network-timeout", f"{where} did not answer in time")
    if any(s in low for s in ("remotedisconnected", "connection aborted", "connection reset",
                              "badstatusline", "connection was closed",
                              "connectionclosederror")):
        return NetFailure("http", "server-error",
                          f"{where} closed the connection without an HTTP answer")
    return None


def _short(x: object, limit: int = 300) -> str:
    text = " ".join(str(x).split())
    return text if len(text) <= limit else text[:limit] + "…"


# -- clocks ----------------------------------------------------------------------------------


def clock_skew(date_header: str | None, now: float | None = None) -> float | None:
    """Seconds the server's clock is ahead of ours (negative: behind), from a ``Date``."""
    if not date_header:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date_header.split(",  ")[0])
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when.timestamp() - (time.time() if now is None else now)


def check_clock(p: Probe, date_header: str | None, *, id: str = "auth.clock",
                server: str = "the server") -> float | None:
    """Record how far this machine's clock is from the server's; None without a Date."""
    skew = clock_skew(date_header)
    if skew is None:
        return None
    mine = "behind" if skew > 0 else "ahead of"
    if abs(skew) > SKEW_FAIL:
        p.fail(id, "auth", "clock-skew",
               f"this machine's clock is {duration(skew)} {mine} {server}'s (Date: "
               f"{date_header}); signed requests and tokens are refused beyond 15 min",
               "synchronise the clock (`sudo timedatectl set-ntp true`, `sudo chronyc "
               "makestep`, or w32tm /resync on Windows)")
    if abs(skew) > SKEW_WARN:
        p.warn(id, "auth", "clock-skew",
               f"this machine's clock is {duration(skew)} {mine} {server}'s; near 15 min "
               "signed requests and tokens start to fail", "synchronise the clock with NTP")
    else:
        p.ok(id, "auth", f"clock within {abs(skew):.0f}s of {server}'s")
    return skew


# -- one HTTP request --------------------------------------------------------------------------


def http_request(method: str, url: str, *, environ: Mapping[str, str], verify: bool | str,
                 timeout: float, headers: Mapping[str, str] | None = None,
                 auth: tuple[str, str] | None = None, json: Any = None,
                 allow_redirects: bool = True, cert: str | None = None) -> Any:
    """One request with the environment's proxies and the given trust; a requests.Response."""
    import requests

    proxy = proxy_for(url, environ)
    with requests.Session() as session:
        session.trust_env = False  # the resolved environment decides, not os.environ
        return session.request(
            method, url, headers=dict(headers or {}), auth=auth, json=json, verify=verify,
            timeout=(timeout, timeout), allow_redirects=allow_redirects, cert=cert,
            proxies={"http": proxy, "https": proxy} if proxy else None)
