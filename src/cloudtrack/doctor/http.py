"""The doctor of an MLflow tracking server (``http://`` and ``https://`` URIs).

The URI is used the way MLflow's REST client uses it (``<uri>/api/2.0/mlflow/…``) with the
credentials and TLS settings MLflow would read (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or
``~/.mlflow/credentials``, ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_INSECURE_TLS``,
``MLFLOW_TRACKING_SERVER_CERT_PATH`` …).  Checked: the network path; that an MLflow server
answers (its version) and not a login page, a web page or another program; who the server
takes us for; whether we may read the experiment runs go to and create runs in it; and where
that experiment's artifacts live — when the client writes them itself (``s3://`` …), that
store is diagnosed too, with this machine's credentials.
"""

from __future__ import annotations

import base64
import configparser
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudtrack.config import SCHEMES, redact_uri, resolve, split_scheme
from cloudtrack.config import tls as trust
from cloudtrack.credentials import Credential, decode_jwt, jwt_expiry
from cloudtrack.doctor import net
from cloudtrack.doctor.answer import Answer, call_endpoint
from cloudtrack.doctor.core import Probe, Stop, check_expiry
from cloudtrack.errors import ConfigError

TLS = net.TlsHints.of(trust.MLFLOW_SERVER)
log = logging.getLogger("cloudtrack.doctor.http")

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
SERVER_INFO = "/api/3.0/mlflow/server-info"
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?\S*$")
_LOGIN_WORDS = re.compile(rb"(type=[\"']?password|sign[ -]?in|log[ -]?in|single sign-on|sso)",
                          re.IGNORECASE)
_LOGIN_URL = re.compile(r"(login|signin|sso|oauth|saml|auth)", re.IGNORECASE)


# -- what MLflow's client would send -----------------------------------------------------------


@dataclass(frozen=True)
class ServerCredentials:
    """What MLflow's REST client authenticates and verifies with, and where each came from."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    client_cert: str | None = None
    #: Why the ``cloudtrack login`` covering the server could not be read (a locked keyring).
    login_error: str | None = None

    @property
    def kind(self) -> str:
        if self.username and self.password:
            return "basic"
        if self.token:
            return "token"
        return "none"

    def headers(self) -> dict[str, str]:
        # MLflow's rest_utils.http_request: basic auth wins over a token.
        if self.kind == "basic":
            raw = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.standard_b64encode(raw).decode()}
        if self.kind == "token":
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def describe(self) -> str:
        if self.kind == "basic":
            return (f"basic auth as {self.username!r} (user from {self.sources['username']}, "
                    f"password from {self.sources['password']})")
        if self.kind == "token":
            return f"a bearer token from {self.sources['token']}"
        if self.username or self.password:
            have = "MLFLOW_TRACKING_USERNAME" if self.username else "MLFLOW_TRACKING_PASSWORD"
            return f"no credentials (only {have} is set; MLflow needs both)"
        return "no credentials"


def server_credentials(uri: str, environ: Mapping[str, str]) -> ServerCredentials:
    """Like MLflow's ``get_default_host_creds``: variables first, then ``~/.mlflow/credentials``
    field by field; the token from ``MLFLOW_TRACKING_TOKEN``; userinfo in the URI last (requests
    sends it when nothing else is set)."""
    sources: dict[str, str] = {}
    file_user = file_password = None
    home = environ.get("HOME") or os.path.expanduser("~")
    path = os.path.join(home, ".mlflow", "credentials")
    if os.path.exists(path):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
            if "mlflow" in parser:
                file_user = parser["mlflow"].get("mlflow_tracking_username")
                file_password = parser["mlflow"].get("mlflow_tracking_password")
        except configparser.Error:
            pass
    username = environ.get("MLFLOW_TRACKING_USERNAME") or file_user
    password = environ.get("MLFLOW_TRACKING_PASSWORD") or file_password
    sources["username"] = "env:MLFLOW_TRACKING_USERNAME" if environ.get(
        "MLFLOW_TRACKING_USERNAME") else path
    sources["password"] = "env:MLFLOW_TRACKING_PASSWORD" if environ.get(
        "MLFLOW_TRACKING_PASSWORD") else path
    token = environ.get("MLFLOW_TRACKING_TOKEN") or None
    sources["token"] = "env:MLFLOW_TRACKING_TOKEN"
    from cloudtrack.credentials.vault import ENV_CREDENTIALS

    if not any(environ.get(name) for name in ENV_CREDENTIALS["server"]):
        # A `cloudtrack login` comes after MLflow's variables and before its credentials file
        # (cloudtrack's plugin signs every request with it: src/cloudtrack/credentials/server.py).
        found = _login_credentials(uri, environ)
        if isinstance(found, str):
            return ServerCredentials(None, None, None, {}, trust.MLFLOW_SERVER.verify(environ),
                                     environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None,
                                     login_error=found)
        if found is not None:
            username, password, token, sources = found
            return ServerCredentials(username, password, token, sources,
                                     trust.MLFLOW_SERVER.verify(environ),
                                     environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None)
    parts = urllib.parse.urlsplit(uri)
    if not (username and password) and not token and parts.username and parts.password:
        username, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(
            parts.password)
        sources["username"] = sources["password"] = "the URI"
    return ServerCredentials(username, password, token, sources,
                             trust.MLFLOW_SERVER.verify(environ),
                             environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None)


def _login_credentials(uri: str, environ: Mapping[str, str]
                       ) -> tuple[str | None, str | None, str | None, dict[str, str]] | str | None:
    """(username, password, token, sources) of the login covering ``uri``; a string saying
    why it cannot be read; None when no login covers it."""
    from cloudtrack.credentials import server
    from cloudtrack.credentials.vault import Vault
    from cloudtrack.errors import CredentialsUnavailable

    try:
        login = Vault(environ).find(uri)
        if login is None or not login.kind.startswith("server-"):
            return None
        if login.kind == "server-basic":
            return (login.public.get("username"), login.secret.get("password"), None,
                    {"username": login.source, "password": login.source})
        header, _ = server.authorization(login)
        what = " (its token command)" if login.kind == "server-token-command" else ""
        return None, None, header.removeprefix("Bearer "), {"token": login.source + what}
    except CredentialsUnavailable as e:
        return str(e)


# -- what answered -----------------------------------------------------------------------------


def identify(api: Answer, info: Answer | None) -> tuple[str, str]:
    """What answered MLflow's API request: ``mlflow``, ``auth-required`` (something asks for
    credentials first), ``server-error``, ``login``, ``html`` or ``other``; and a description."""
    server = api.headers.get("server", "")
    api_json = api.json()
    info_json = info.json() if info is not None else None
    if api.status >= 500:
        return "server-error", (f"HTTP {api.status}" + (f" from {server}" if server else "")
                                + (f": {api.text}" if api.text else ""))
    if isinstance(api_json, dict) and ("experiments" in api_json or "error_code" in api_json):
        return "mlflow", "MLflow's REST API answers"
    realm = api.headers.get("www-authenticate", "")
    if api.status in (401, 403) and ('realm="mlflow"' in realm.lower()
                                     or b"mlflow.org/docs" in api.body):
        return "mlflow", "MLflow's REST API answers (its basic-auth app asks for credentials)"
    if isinstance(info_json, dict) and "store_type" in info_json:
        return "mlflow", f"MLflow server-info answers (store {info_json.get('store_type')})"
    login_redirect = any(_LOGIN_URL.search(urllib.parse.urlsplit(u).path + "?"
                                           + urllib.parse.urlsplit(u).query)
                         for u in api.redirects)
    if api.html and (login_redirect or _LOGIN_WORDS.search(api.body)):
        via = f" (redirected to {redact_uri(api.redirects[-1])})" if api.redirects else ""
        return "login", f"a login page{via}: a single-sign-on proxy or a web UI answers"
    if api.html:
        title = re.search(rb"<title>(.*?)</title>", api.body, re.IGNORECASE | re.DOTALL)
        named = f" titled {title.group(1).decode('utf-8', 'replace').strip()[:80]!r}" if title else ""
        return "html", f"an HTML page{named} (HTTP {api.status})"
    if api.status == 401 and realm:
        return "auth-required", f"HTTP 401 asking for {realm.split(' ')[0]} credentials"
    if api.status in (401, 403) and not api.body.strip():
        return "other", (f"HTTP {api.status} with an empty body"
                         + (f" from {server}" if server else "")
                         + ": another program owns this port (on macOS, port 5000 is the "
                         "AirPlay Receiver)")
    if api.status == 404:
        return "other", "HTTP 404: no MLflow API under this URL (wrong port or path prefix)"
    return "other", (f"HTTP {api.status}, {api.headers.get('content-type', 'no content type')}"
                     + (f" from {server}" if server else "")
                     + (f": {api.text[:120]}" if api.text else ""))


# -- the diagnosis -----------------------------------------------------------------------------


class _Client:
    def __init__(self, p: Probe, uri: str, creds: ServerCredentials) -> None:
        self.p = p
        self.base = uri.rstrip("/")
        self.creds = creds
        self.display = redact_uri(uri)

    def request(self, method: str, endpoint: str, *, auth: bool = True, json: object = None,
                what: str = "") -> Answer:
        # MLflow joins host and endpoint with plain string concatenation; so do we.
        url = self.base + endpoint
        headers = self.creds.headers() if auth else {}
        return call_endpoint(
            self.p, lambda: Answer.of(net.http_request(
                method, url, environ=self.p.environ, verify=self.creds.verify,
                timeout=self.p.step_timeout(), headers=headers, json=json,
                cert=self.creds.client_cert)),
            what=what or f"{method} {endpoint}", shown=self.display, hints=TLS,
            timeout_fix="check that the server is healthy (its logs) and not overloaded; a "
                        "proxy in between may hold the request",
            network_fix="check the URL, the server and the network")


def diagnose(p: Probe, uri: str, origin: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        p.fail("config.uri", "config", "config-invalid",
               f"{redact_uri(uri)} (from {origin}) has no host",
               "set MLFLOW_TRACKING_URI like http://mlflow.example.com:5000")
    creds = server_credentials(uri, p.environ)
    if creds.login_error:
        p.fail("auth.login", "auth", "credentials-missing",
               f"the `cloudtrack login` for {redact_uri(uri)} cannot be read: {creds.login_error}",
               "unlock or start the keyring (`cloudtrack whoami` shows which one is in use), "
               f"or log in again: `cloudtrack login {redact_uri(uri)}`")
    p.secret(creds.password, creds.token)
    if creds.kind == "basic":
        raw = f"{creds.username}:{creds.password}".encode()
        p.secret(base64.standard_b64encode(raw).decode())
    p.ok("config.uri", "config", f"MLflow tracking server {redact_uri(uri)} (from {origin})")
    p.ok("config.extra", "config", "MLflow's REST client needs no extra")
    browser = bool(parts.fragment) or bool(parts.query)
    if browser:
        p.warn("config.browser-url", "config", "not-mlflow-server",
               f"the URI has {'#' + parts.fragment if parts.fragment else '?' + parts.query}: "
               "it looks like a browser URL, not the server's base URL",
               f"set MLFLOW_TRACKING_URI={parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
               f"{parts.path.rstrip('/')}")
    tls = ("verification off (MLFLOW_TRACKING_INSECURE_TLS)" if creds.verify is False
           else f"CA {creds.verify}" if isinstance(creds.verify, str) else "default CA bundle")
    p.ok("config.settings", "config", f"credentials: {creds.describe()}; TLS: {tls}"
         + (f"; client certificate {creds.client_cert}" if creds.client_cert else ""))
    for name in ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4"):
        if p.environ.get(name):
            p.warn("config.auth-plugin", "config", "config-invalid",
                   f"{name}={p.environ[name]} is set: MLflow signs with that plugin, which the "
                   "doctor does not reproduce; its authentication results may differ",
                   f"run the doctor without {name} to compare")

    base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    net.probe_endpoint(p, base, verify=creds.verify, hints=TLS, what="the tracking server")

    client = _Client(p, uri, creds)
    api = client.request("GET", SEARCH, what="MLflow's experiments/search")
    info = client.request("GET", SERVER_INFO, auth=False, what="MLflow's server-info")
    kind, detail = identify(api, info)
    if kind == "server-error":
        p.fail("http.answer", "http", "server-error",
               f"{redact_uri(uri)} answered {detail}",
               "the server (or a proxy in front of it) is failing or still starting: check "
               "its logs; a 502/503/504 usually comes from the proxy when MLflow is down")
    if kind in ("login", "html", "other"):
        fix = {
            "login": "a login page means a single-sign-on proxy sits in front of MLflow: "
                     "get an API token and set MLFLOW_TRACKING_TOKEN, or use the API's own "
                     "host name (ask the platform team)",
            "html": "use the server's base URL (the one `mlflow server` prints), not a page of "
                    "the web UI",
            "other": "check the host and port: start MLflow on a free port "
                     "(`mlflow server --port 5001`) and point MLFLOW_TRACKING_URI at it",
        }[kind]
        summary = f"{redact_uri(uri)} is not an MLflow tracking server: {detail}"
        if browser:
            tracking = f"{base}{parts.path.rstrip('/')}"
            fix = f"the URI is a browser URL: set MLFLOW_TRACKING_URI={tracking}"
            if _is_mlflow(p, tracking, creds):
                summary = (f"{redact_uri(uri)} is the address of a page of the MLflow web UI "
                           "(a browser URL), not a tracking URI: MLflow's REST client sends its "
                           "requests under it and gets the UI's HTML page back; the tracking "
                           f"server itself is {tracking}, where MLflow's REST API answers")
        p.fail("http.answer", "http", "not-mlflow-server", summary, fix)
    version = client.request("GET", "/version", what="MLflow's /version")
    text = version.body.decode("utf-8", "replace").strip()
    shown = f"MLflow {text}" if version.status == 200 and _VERSION.match(text) else (
        "MLflow (version shown after authentication)" if version.status in (401, 403)
        else "MLflow (no /version)")
    p.ok("http.answer", "http", f"{redact_uri(uri)}: {shown}; {detail}")

    net.check_clock(p, api.headers.get("date"), server="the tracking server")
    _authentication(p, client, api, kind)
    experiment = _experiment(p, client)
    if experiment is not None:
        _artifacts(p, client, experiment, parts)


def _is_mlflow(p: Probe, uri: str, creds: ServerCredentials) -> bool:
    """Whether MLflow's REST API answers at ``uri`` (a browser URL's base): one request, and
    any failure of it just means "cannot tell"."""
    try:
        answer = p.call(lambda: Answer.of(net.http_request(
            "GET", uri + SEARCH, environ=p.environ, verify=creds.verify,
            timeout=p.step_timeout(), headers=creds.headers(), cert=creds.client_cert)),
            what="MLflow's experiments/search at the browser URL's base")
    except Exception:
        log.debug("asking %s whether it is MLflow failed", redact_uri(uri), exc_info=True)
        return False
    return identify(answer, None)[0] == "mlflow"


def _authentication(p: Probe, client: _Client, api: Answer, kind: str) -> None:
    creds = client.creds
    if api.status == 401 or kind == "auth-required" or (
            api.status == 403 and isinstance(api.json(), dict)):
        said = api.json().get("message") if isinstance(api.json(), dict) else api.text
        if creds.kind == "none":
            p.fail("auth.credential", "auth", "credentials-missing",
                   f"the server requires authentication and {creds.describe()} "
                   f"(HTTP {api.status}: {said})",
                   "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow's "
                   "basic-auth app), or MLFLOW_TRACKING_TOKEN for a token-protected server")
        expired = _jwt_expired(creds.token) if creds.kind == "token" else False
        cause = "token-expired" if expired or "expired" in str(said).lower() else \
            "credentials-invalid"
        p.fail("auth.credential", "auth", cause,
               f"the server refused {creds.describe()} (HTTP {api.status}: {said})",
               "renew the token and export MLFLOW_TRACKING_TOKEN again (MLflow reads it once "
               "per process: a long job needs a token that outlives it)" if cause ==
               "token-expired" else
               "check the user name and password (or token) with the server's admin; MLflow "
               "reads MLFLOW_TRACKING_USERNAME/PASSWORD before ~/.mlflow/credentials")
    if creds.kind == "none":
        p.ok("auth.credential", "auth", "the server answers without credentials (no "
             "authentication configured)")
        return
    p.ok("auth.credential", "auth", f"the server accepted {creds.describe()}")
    if creds.kind == "token":
        _token_expiry(p, creds.token or "")
    current = client.request("GET", "/api/2.0/mlflow/users/current", what="users/current")
    user = current.json() if current.status == 200 else None
    if isinstance(user, dict) and isinstance(user.get("user"), dict):
        u = user["user"]
        p.ok("auth.identity", "auth", f"signed in as {u.get('username')!r}"
             + (" (an admin)" if u.get("is_admin") else ""))
    elif creds.kind == "basic":
        p.ok("auth.identity", "auth", f"user {creds.username!r} (the server does not say "
             "who it takes us for: no users/current endpoint)")


def _jwt_claims(token: str | None) -> dict[str, Any]:
    return decode_jwt(token) if token and token.count(".") == 2 else {}


def _jwt_expired(token: str | None) -> bool:
    exp = _jwt_claims(token).get("exp")
    return isinstance(exp, int | float) and exp <= time.time()


def _token_expiry(p: Probe, token: str) -> None:
    credential = Credential("token", "MLFLOW_TRACKING_TOKEN", "env:MLFLOW_TRACKING_TOKEN",
                            expires=jwt_expiry(_jwt_claims(token)))
    check_expiry(p, "auth.expiry", credential, what="MLFLOW_TRACKING_TOKEN (MLflow reads it "
                 "once per process)",
                 fix="use a token that outlives the job, or a request-auth plugin that "
                     "refreshes it")


def _experiment(p: Probe, client: _Client) -> dict[str, Any] | None:
    """Read the experiment runs go to (MLFLOW_EXPERIMENT_ID/NAME, else Default) and, unless
    read-only, create and delete a run in it."""
    env = p.environ
    if env.get("MLFLOW_EXPERIMENT_ID"):
        ident = env["MLFLOW_EXPERIMENT_ID"]
        endpoint = f"/api/2.0/mlflow/experiments/get?experiment_id={urllib.parse.quote(ident)}"
        label = f"experiment {ident} (MLFLOW_EXPERIMENT_ID)"
    elif env.get("MLFLOW_EXPERIMENT_NAME"):
        ident = env["MLFLOW_EXPERIMENT_NAME"]
        endpoint = ("/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                    + urllib.parse.quote(ident))
        label = f"experiment {ident!r} (MLFLOW_EXPERIMENT_NAME)"
    else:
        ident, label = "0", "the Default experiment (0)"
        endpoint = "/api/2.0/mlflow/experiments/get?experiment_id=0"
    answer = client.request("GET", endpoint, what="reading the experiment")
    user = client.creds.username or "<user>"
    if answer.status == 403:
        p.note_fail("authz.read", "authz", "permission-denied",
                    f"reading {label} is denied (HTTP 403: {answer.text})",
                    _grant_fix(client, user, ident, "READ"))
        return None
    body = answer.json()
    if answer.status == 404 or (isinstance(body, dict)
                                and body.get("error_code") == "RESOURCE_DOES_NOT_EXIST"):
        if env.get("MLFLOW_EXPERIMENT_NAME") and not env.get("MLFLOW_EXPERIMENT_ID"):
            p.ok("authz.read", "authz", f"{label} does not exist yet: MLflow creates it on the "
                 "first run (creating experiments must be allowed)")
            return None
        p.fail("authz.read", "authz", "container-not-found", f"{label} does not exist",
               "check MLFLOW_EXPERIMENT_ID, or use MLFLOW_EXPERIMENT_NAME")
    if answer.status != 200 or not isinstance(body, dict) or "experiment" not in body:
        p.fail("authz.read", "authz", "server-error",
               f"reading {label} answered HTTP {answer.status}: {answer.text}",
               "check the server's logs")
    experiment = body["experiment"]
    exp_id = str(experiment.get("experiment_id"))
    name = experiment.get("name")
    p.ok("authz.read", "authz", f"may read {label}: {name!r}, artifacts at "
         f"{redact_uri(str(experiment.get('artifact_location')))}")
    if p.read_only:
        return experiment
    created = client.request("POST", "/api/2.0/mlflow/runs/create", json={
        "experiment_id": exp_id, "run_name": "cloudtrack-doctor-probe",
        "start_time": int(time.time() * 1000),
        "tags": [{"key": "cloudtrack.doctor", "value": "probe run; safe to delete"}]},
        what="creating a probe run")
    if created.status == 403:
        p.note_fail("authz.write", "authz", "permission-denied",
                    f"creating a run in {label} is denied for {client.creds.describe()} "
                    f"(HTTP 403: {created.text})", _grant_fix(client, user, exp_id, "EDIT"))
        return experiment
    run = created.json()
    run_id = run.get("run", {}).get("info", {}).get("run_id") if isinstance(run, dict) else None
    if created.status != 200 or not run_id:
        p.note_fail("authz.write", "authz", "server-error",
                    f"creating a probe run answered HTTP {created.status}: {created.text}",
                    "check the server's logs (its backend store may be failing)")
        return experiment
    deleted = client.request("POST", "/api/2.0/mlflow/runs/delete", json={"run_id": run_id},
                             what="deleting the probe run")
    if deleted.status == 200:
        p.ok("authz.write", "authz", f"created and deleted a probe run in {label} (it stays "
             "among the deleted runs until `mlflow gc`)")
    else:
        client.request("POST", "/api/2.0/mlflow/runs/update",
                       json={"run_id": run_id, "status": "KILLED",
                             "end_time": int(time.time() * 1000)}, what="ending the probe run")
        p.ok("authz.write", "authz", f"created a probe run in {label}; deleting it was refused "
             f"(HTTP {deleted.status}), so run {run_id} 'cloudtrack-doctor-probe' stays, "
             "ended as KILLED")
    return experiment


def _grant_fix(client: _Client, user: str, experiment: str, permission: str) -> str:
    return (f"ask an admin to grant {permission} on experiment {experiment} to {user!r}: "
            f"MLFLOW_TRACKING_USERNAME=<admin> MLFLOW_TRACKING_PASSWORD=<password> python -c "
            f"\"from mlflow.server import get_app_client; get_app_client('basic-auth', "
            f"tracking_uri='{client.display}').grant_user_permission('{user}', 'experiment', "
            f"'{experiment}', '{permission}')\" — or log to an experiment of your own "
            "(MLFLOW_EXPERIMENT_NAME=<new name>: its creator may write to it)")


def _artifacts(p: Probe, client: _Client, experiment: Mapping[str, Any],
               parts: urllib.parse.SplitResult) -> None:
    location = str(experiment.get("artifact_location") or "")
    scheme = split_scheme(location) if location else ""
    if scheme in ("mlflow-artifacts", "http", "https"):
        listing = client.request(
            "GET", "/api/2.0/mlflow-artifacts/artifacts?path="
            + urllib.parse.quote(str(experiment.get("experiment_id"))),
            what="listing artifacts through the server")
        if listing.status >= 500 or _artifact_store_refused(listing):
            p.warn("consistency.artifacts", "consistency", "server-error",
                   f"artifacts go through the server ({location}), and the server cannot reach "
                   f"its own artifact store (HTTP {listing.status}: {listing.text})",
                   "the server needs credentials and endpoint for its --artifacts-destination "
                   "(set them where `mlflow server` runs); clients need none")
        else:
            p.ok("consistency.artifacts", "consistency",
                 f"artifacts go through the server ({location}): the server's credentials "
                 "write them, this machine needs none")
        return
    if scheme in SCHEMES and SCHEMES[scheme][0] != "file":
        p.ok("consistency.artifacts", "consistency",
             f"this client writes artifacts itself, to {redact_uri(location)} (the server does "
             "not proxy them): that store is checked below with this machine's credentials")
        _probe_artifact_store(p, location)
        return
    if scheme == "file":
        local = (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")
        if local:
            p.ok("consistency.artifacts", "consistency",
                 f"artifacts go to {location} on this machine, where the server runs too")
        else:
            p.warn("consistency.artifacts", "consistency", "endpoint-mismatch",
                   f"artifacts of this experiment go to {location}, a path on THIS machine, "
                   "not on the server: other machines and the UI will not see them",
                   "start the server with --serve-artifacts (mlflow-artifacts:) or a shared "
                   "--default-artifact-root (s3://…), and create a new experiment")
        return
    p.ok("consistency.artifacts", "consistency", f"artifacts go to {redact_uri(location)} "
         "(not a store the doctor checks)")


#: MLflow's error codes for a store the server could not use (the server's own auth app
#: answers its refusals in plain text, not with an error code).
_STORE_REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def _artifact_store_refused(listing: Answer) -> bool:
    """Did the artifact handler itself fail on the server's credentials for its store?"""
    body = listing.json()
    return listing.status in (401, 403) and isinstance(body, dict) and \
        body.get("error_code") in _STORE_REFUSED


def _probe_artifact_store(p: Probe, location: str) -> None:
    from cloudtrack.doctor import diagnose_store

    child = p.child("artifacts.", "consistency", artifact_store=True)
    try:
        try:
            config = resolve(location, p.environ)
        except ConfigError as e:
            child.fail("config.uri", "config", "config-invalid", str(e),
                       "the experiment's artifact location is not a valid store URI")
        diagnose_store(child, config)
    except Stop:
        pass
    finally:
        p.adopt(child)
