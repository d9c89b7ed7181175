"""cloudtrack.environment: reads of ``os.environ`` that survive another thread removing a
variable, and a requests session that reads the proxy settings once per host yet merges
them exactly as requests itself does (requests' own ``merge_environment_settings`` is the
spec the settled one is compared with)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from cloudtrack import environment
from cloudtrack.environment import read_environment, settle, snapshot

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy",
                   "https_proxy", "no_proxy", "all_proxy", "REQUESTS_CA_BUNDLE",
                   "CURL_CA_BUNDLE")


@pytest.fixture
def clean_proxies(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def test_a_variable_removed_during_the_read_is_read_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def read() -> dict[str, str]:
        calls.append(1)
        if len(calls) < 3:
            # Exactly the failure of os.environ's own __getitem__: a name listed, then gone.
            os.environ.__getitem__("_CLOUDTRACK_SURELY_NOT_SET")
        return {"ok": "1"}

    monkeypatch.delenv("_CLOUDTRACK_SURELY_NOT_SET", raising=False)
    assert read_environment(read) == {"ok": "1"}
    assert len(calls) == 3


def test_a_keyerror_of_the_callers_own_is_not_retried() -> None:
    calls = []

    def read() -> None:
        calls.append(1)
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        read_environment(read)
    assert calls == [1]


def test_a_race_that_never_ends_is_raised_after_the_last_attempt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.delenv("_CLOUDTRACK_SURELY_NOT_SET", raising=False)

    def read() -> None:
        calls.append(1)
        os.environ.__getitem__("_CLOUDTRACK_SURELY_NOT_SET")

    with pytest.raises(KeyError, match="_CLOUDTRACK_SURELY_NOT_SET"):
        read_environment(read)
    assert len(calls) == environment.ATTEMPTS


def test_snapshot_is_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_CLOUDTRACK_SNAPSHOT", "before")
    copy = snapshot()
    monkeypatch.setenv("_CLOUDTRACK_SNAPSHOT", "after")
    assert copy["_CLOUDTRACK_SNAPSHOT"] == "before"
    assert copy is not os.environ and isinstance(copy, dict)


URLS = ["https://storage.example.com/b/o", "http://127.0.0.1:10000/account/c",
        "https://internal.corp/x", "https://a.internal.corp:8443/y"]


@pytest.mark.parametrize("env", [
    {},
    {"HTTPS_PROXY": "http://proxy:3128"},
    {"HTTPS_PROXY": "http://proxy:3128", "HTTP_PROXY": "http://proxy:3129",
     "NO_PROXY": "127.0.0.1,.internal.corp"},
    {"ALL_PROXY": "socks5://proxy:1080", "no_proxy": "internal.corp"},
    {"REQUESTS_CA_BUNDLE": "/etc/ca.pem"},
    {"CURL_CA_BUNDLE": "/etc/curl.pem", "HTTPS_PROXY": "http://p:1"},
], ids=["none", "https", "no-proxy", "all-proxy", "ca-bundle", "curl-bundle"])
@pytest.mark.parametrize("trust_env", [True, False])
def test_settled_session_merges_as_requests_does(
        clean_proxies: pytest.MonkeyPatch, env: dict[str, str], trust_env: bool) -> None:
    for name, value in env.items():
        clean_proxies.setenv(name, value)
    plain, settled = requests.Session(), settle(requests.Session())
    for session in (plain, settled):
        session.trust_env = trust_env
    for url in URLS:
        for proxies, verify in [({}, None), ({"no_proxy": "example.com"}, True),
                                ({"https": "http://mine:1"}, False), ({}, "/mine.pem")]:
            want = plain.merge_environment_settings(url, dict(proxies), None, verify, None)
            got = settled.merge_environment_settings(url, dict(proxies), None, verify, None)
            assert got == want, (url, proxies, verify)


def test_settled_session_reads_the_environment_once_per_host(
        clean_proxies: pytest.MonkeyPatch) -> None:
    clean_proxies.setenv("HTTPS_PROXY", "http://proxy:3128")
    session = settle(requests.Session())
    first = session.merge_environment_settings(URLS[0], {}, None, None, None)
    clean_proxies.setenv("HTTPS_PROXY", "http://elsewhere:3128")
    # The same host: what the environment said at the first request holds.
    again = session.merge_environment_settings(URLS[0] + "/other", {}, None, None, None)
    assert again["proxies"] == first["proxies"] == {"https": "http://proxy:3128"}
    # Another host reads the environment as it is now.
    other = session.merge_environment_settings("https://other.example.com/", {}, None, None,
                                               None)
    assert other["proxies"] == {"https": "http://elsewhere:3128"}
    assert settle(session) is session
