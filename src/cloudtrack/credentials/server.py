"""A ``cloudtrack login`` for an MLflow server, used by unchanged MLflow code.

MLflow builds its REST stores and HTTP artifact repositories from plugin registries that are
given the URI they are for, so cloudtrack registers its own builders for ``http``/``https``
(tracking and registry stores) and for ``http``/``https``/``mlflow-artifacts`` (artifacts).
They are MLflow's own classes; only where the credentials come from changes: when none of
MLflow's variables (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``/``AUTH``, SigV4)
is set and a login covers the URI, the host credentials name cloudtrack's request-auth
provider.  Its ``requests`` auth object sees every request's URL, so each request is signed
with the login of the server it actually goes to (two ``MlflowClient(tracking_uri=…)`` to two
servers each get their own), and because MLflow then passes an auth object to ``requests``,
``~/.netrc`` cannot replace it.  No variable is needed.

Tokens outlive the job: a token command's token (or any JWT with an expiry) is fetched again
a little before it expires — one refresh at a time — and once more when the server answers
401 (or 403 near the expiry), the request then sent again once, never in a loop.
"""

from __future__ import annotations

import base64
import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import requests
import requests.auth

from cloudtrack.config import redact
from cloudtrack.credentials.base import decode_jwt
from cloudtrack.credentials.vault import (
    ENV_CREDENTIALS,
    Login,
    Vault,
    canonical,
)
from cloudtrack.errors import CredentialsUnavailable

log = logging.getLogger("cloudtrack.credentials")

#: The name MLflow's request-auth registry knows cloudtrack's provider by.
AUTH_NAME = "cloudtrack"
#: Seconds a token command may take.
COMMAND_TIMEOUT = 60.0
#: Refresh this long before a token expires (at most; a quarter of a short token's life).
REFRESH_AHEAD = 180.0


def _mlflow_variables_set() -> bool:
    import os

    return any(os.environ.get(name) for name in ENV_CREDENTIALS["server"])


def login_for(url: str) -> Login | None:
    """The server login covering ``url`` (read from the keyring once per process)."""
    login = Vault().find(url)
    if login is None or not login.kind.startswith("server-"):
        return None
    return login


def host_creds(store_uri: str) -> Any:
    """MLflow's host credentials for ``store_uri``, naming cloudtrack's auth provider when a
    login covers it and no MLflow variable outranks it."""
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(store_uri)
    if not _mlflow_variables_set() and Vault().match(store_uri) is not None:
        creds.auth = AUTH_NAME
    return creds


def tracking_store(store_uri: str, **_: Any) -> Any:
    from mlflow.store.tracking.rest_store import RestStore

    return RestStore(partial(host_creds, store_uri))


def registry_store(store_uri: str, **_: Any) -> Any:
    from mlflow.store.model_registry.rest_store import RestStore

    return RestStore(partial(host_creds, store_uri))


# -- tokens ----------------------------------------------------------------------------------

class TokenSource:
    """The current token of one login: a token command's latest answer (fetched again before
    it expires), or a stored token."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self.command = login.secret.get("token_command") or None
        self._token: str | None = None if self.command else login.secret.get("token")
        self._expires: float | None = None
        self._issued: float | None = None
        self._lock = threading.Lock()
        self._note(self._token)
        #: Tokens fetched, for tests and ``whoami``.
        self.fetched = 0

    def _note(self, token: str | None) -> None:
        claims = decode_jwt(token) if token else {}
        exp, iat = claims.get("exp"), claims.get("iat")
        self._expires = float(exp) if isinstance(exp, int | float) else None
        self._issued = float(iat) if isinstance(iat, int | float) else time.time()

    @property
    def expires(self) -> float | None:
        return self._expires

    def _due(self) -> bool:
        if self._token is None:
            return True
        if self._expires is None or not self.command:
            return False
        life = self._expires - (self._issued or time.time())
        ahead = min(REFRESH_AHEAD, max(0.5, life / 4))
        return time.time() >= self._expires - ahead

    def token(self) -> str:
        with self._lock:
            if self._due():
                self._fetch()
            assert self._token is not None
            return self._token

    def refresh_after(self, used: str) -> str | None:
        """A new token after ``used`` was refused (None when there is none to be had: a
        stored token).  Threads refused with the same token share one refresh."""
        if not self.command:
            return None
        with self._lock:
            if self._token == used:
                self._fetch()
            return self._token

    def near_expiry(self, seconds: float = 30.0) -> bool:
        return self._expires is not None and time.time() >= self._expires - seconds

    def _fetch(self) -> None:
        assert self.command is not None
        target = self.login.target
        try:
            done = subprocess.run(shlex.split(self.command), capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, ValueError) as e:
            raise CredentialsUnavailable(
                f"the token command of `cloudtrack login {target}` could not run ({e}); log "
                "in again with a working --token-command", target, reason="invalid") from None
        except subprocess.TimeoutExpired:
            raise CredentialsUnavailable(
                f"the token command of `cloudtrack login {target}` printed nothing within "
                f"{COMMAND_TIMEOUT:g} s", target, reason="invalid") from None
        token = done.stdout.strip()
        if done.returncode != 0 or not token or any(c.isspace() for c in token):
            said = redact(" ".join(done.stderr.split()))[:300]
            raise CredentialsUnavailable(
                f"the token command of `cloudtrack login {target}` failed (exit "
                f"{done.returncode}{': ' + said if said else ''}"
                f"{'; it printed no single token' if done.returncode == 0 else ''})",
                target, reason="invalid")
        self._token = token
        self._note(token)
        self.fetched += 1
        log.debug("fetched a token for %s (expires in %s s)", target,
                  f"{self._expires - time.time():.0f}" if self._expires else "?")


_sources_lock = threading.Lock()
_sources: dict[str, TokenSource] = {}


def token_source(login: Login) -> TokenSource:
    """One token source per login per process."""
    with _sources_lock:
        source = _sources.get(login.key)
        if source is None:
            source = _sources[login.key] = TokenSource(login)
        return source


def forget_tokens() -> None:
    with _sources_lock:
        _sources.clear()


class LoginAuth(requests.auth.AuthBase):
    """Signs each request with the login of the server it goes to."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        login = login_for(str(r.url))
        if login is None:
            return r
        header, source = authorization(login)
        r.headers["Authorization"] = header
        if source is not None:
            r.register_hook("response", partial(self._refused, source))
        return r

    @staticmethod
    def _refused(source: TokenSource, response: requests.Response, **kwargs: Any) -> Any:
        request = response.request
        if getattr(request, "_cloudtrack_resent", False):
            return response
        refused = response.status_code == 401 or (response.status_code == 403
                                                  and source.near_expiry())
        if not refused:
            return response
        used = str(request.headers.get("Authorization", "")).removeprefix("Bearer ")
        fresh = source.refresh_after(used)
        if not fresh or fresh == used:
            return response
        body = request.body
        if body is not None and not isinstance(body, bytes | str):
            seek = getattr(body, "seek", None)
            if seek is None:
                return response  # a stream already sent cannot be sent again
            seek(0)
        again = request.copy()
        again.headers["Authorization"] = f"Bearer {fresh}"
        again._cloudtrack_resent = True  # type: ignore[attr-defined]
        response.content  # noqa: B018 - read it, so the connection can be reused
        response.raw.release_conn()
        resent = response.connection.send(again, **kwargs)
        resent.history.append(response)
        resent.request = again
        log.debug("resent a request refused with %d after a token refresh", response.status_code)
        return resent


def authorization(login: Login) -> tuple[str, TokenSource | None]:
    """The Authorization header for ``login`` and, for tokens, their source."""
    if login.kind == "server-basic":
        pair = f"{login.public.get('username', '')}:{login.secret.get('password', '')}"
        return "Basic " + base64.b64encode(pair.encode()).decode(), None
    source = token_source(login)
    return f"Bearer {source.token()}", source


_auth = LoginAuth()


class AuthProvider:
    """MLflow's request-auth provider interface (``mlflow.request_auth_provider``)."""

    def get_name(self) -> str:
        return AUTH_NAME

    def get_auth(self) -> requests.auth.AuthBase:
        return _auth


# -- artifacts through the server ------------------------------------------------------------

class _LoginArtifacts:
    """What MLflow's HTTP artifact repositories need to sign with a login: their host
    credentials (the rest is in :func:`_artifact_classes`)."""

    artifact_uri: str

    @property
    def _host_creds(self) -> Any:
        return host_creds(self.artifact_uri)

    @property
    def _artifact_server_host_creds(self) -> Any:
        uri, _, _ = self.artifact_uri.partition("/api/2.0/mlflow-artifacts/artifacts")
        return host_creds(uri.rstrip("/"))


def _artifact_classes() -> Mapping[str, Any]:
    from mlflow.store.artifact import http_artifact_repo
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    class LoginHttpArtifactRepository(_LoginArtifacts, HttpArtifactRepository):  # type: ignore[misc]
        pass

    class LoginMlflowArtifactsRepository(_LoginArtifacts,  # type: ignore[misc]
                                         MlflowArtifactsRepository):
        pass

    # Listing, multipart uploads and presigned downloads take their host credentials from the
    # module's own name for MLflow's function, not from a method a subclass could override:
    # that name becomes host_creds (MLflow's function, plus the login when one covers the URL
    # and no MLflow variable is set). Every repository of these schemes is one of the classes
    # above, so nothing else sees the change.
    http_artifact_repo.get_default_host_creds = host_creds  # type: ignore[attr-defined]
    return {"http": LoginHttpArtifactRepository, "mlflow-artifacts": LoginMlflowArtifactsRepository}


_classes: Mapping[str, Any] | None = None


def artifact_repository(artifact_uri: str, *args: Any, **kwargs: Any) -> Any:
    """MLflow's HTTP or ``mlflow-artifacts`` repository, signing with a login."""
    global _classes
    if _classes is None:
        _classes = _artifact_classes()
    kind = "mlflow-artifacts" if artifact_uri.startswith("mlflow-artifacts:") else "http"
    return _classes[kind](artifact_uri, *args, **kwargs)


def check(url: str, login: Login, timeout: float = 15.0,
          verify: bool | str = True) -> tuple[int, str]:
    """One live call with ``login``: (HTTP status, what it means)."""
    header, _ = authorization(login)
    base = canonical(url) if url.startswith(("http://", "https://")) else url

    def sign(r: requests.PreparedRequest) -> requests.PreparedRequest:
        # An auth object, not a header: given a header alone, requests lets ~/.netrc replace it.
        r.headers["Authorization"] = header
        return r

    try:
        r = requests.get(f"{base.rstrip('/')}/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, auth=sign, timeout=timeout, verify=verify,
                         allow_redirects=False)
    except requests.RequestException as e:
        return 0, f"no answer from {base} ({type(e).__name__}: {redact(str(e))[:200]})"
    said = {200: "accepted", 401: "refused: the server does not accept these credentials",
            403: "accepted, but this identity may not list experiments",
            404: "no MLflow REST API at this URL"}.get(r.status_code, f"HTTP {r.status_code}")
    return r.status_code, said
