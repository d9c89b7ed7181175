"""Reading the whole of ``os.environ`` safely while other threads change it.

An iteration of ``os.environ`` lists the names first and reads each value after: a variable
another thread removes in between raises ``KeyError``.  requests (under the GCS and Azure
clients) iterates it for the proxy variables on every request, botocore once per client, and
a store copies it when it opens.  MLflow's telemetry client sets and removes such a variable
(``_MLFLOW_TELEMETRY_SESSION_ID``); a writer was seen to fail in ``set_terminated`` that way,
its run left RUNNING.  Here the environment is read with a few retries of exactly that failure,
and a requests session reads it once per host it talks to: what the environment said about a
host at the session's first request to it holds for the session's life."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies

T = TypeVar("T")

#: Attempts at a read of the environment that another thread's change keeps breaking.
ATTEMPTS = 20


def _raised_by_environ(e: BaseException) -> bool:
    """Whether ``e`` came out of ``os.environ`` itself (a name listed, then gone) rather
    than out of the caller's code."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    return code.co_name == "__getitem__" and code.co_filename in (os.__file__, "<frozen os>")


def read_environment(read: Callable[[], T]) -> T:
    """``read()``, again if another thread removed a variable while it iterated
    ``os.environ``; any other error, and the last of those, is raised as it is."""
    for attempt in range(ATTEMPTS):
        try:
            return read()
        except KeyError as e:
            if attempt == ATTEMPTS - 1 or not _raised_by_environ(e):
                raise
    raise AssertionError("unreachable")


def snapshot() -> dict[str, str]:
    """A copy of ``os.environ``."""
    return read_environment(lambda: dict(os.environ))


class _SettledEnvironment:
    """A session's ``merge_environment_settings`` that reads the environment once per host
    (and per ``no_proxy`` asked for) and merges as requests does."""

    def __init__(self, session: requests.Session) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._hosts: dict[tuple[str, str, str | None],
                          tuple[dict[str, str], str | None]] = {}

    def _for(self, url: str, no_proxy: str | None) -> tuple[dict[str, str], str | None]:
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.netloc.lower(), no_proxy)
        found = self._hosts.get(key)
        if found is None:
            proxies = read_environment(lambda: get_environ_proxies(url, no_proxy=no_proxy))
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = (dict(proxies), bundle)
            with self._lock:
                self._hosts[key] = found
        return found

    def __call__(self, url: str, proxies: dict[str, str] | None, stream: bool | None,
                 verify: Any, cert: Any) -> dict[str, Any]:
        session = self._session
        if session.trust_env:
            no_proxy = proxies.get("no_proxy") if proxies is not None else None
            env_proxies, bundle = self._for(url, no_proxy)
            if proxies is not None:
                for k, v in env_proxies.items():
                    proxies.setdefault(k, v)
            if verify is True or verify is None:
                verify = bundle or verify
        return {"proxies": merge_setting(proxies, session.proxies),
                "stream": merge_setting(stream, session.stream),
                "verify": merge_setting(verify, session.verify),
                "cert": merge_setting(cert, session.cert)}


def settle(session: requests.Session) -> requests.Session:
    """``session``, reading the environment once per host instead of on every request."""
    if not isinstance(getattr(session, "merge_environment_settings", None),
                      _SettledEnvironment):
        session.merge_environment_settings = _SettledEnvironment(session)  # type: ignore[method-assign]
    return session
