"""The doctor of Databricks workspaces (``databricks``, ``databricks://PROFILE``,
``databricks-uc``, ``databricks-uc://PROFILE``).

The configuration is resolved the way MLflow's Databricks client resolves it — databricks-sdk's
unified authentication: the ``DATABRICKS_*`` / ``ARM_*`` variables first, then the profile of
``~/.databrickscfg`` (``DATABRICKS_CONFIG_FILE``) named by the URI, ``DATABRICKS_CONFIG_PROFILE``,
the file's ``[__settings__] default_profile`` or ``DEFAULT``; the file is skipped when no profile
is named and the environment already configures a host or a credential.  The credential is the
first of the SDK's chain that is configured (PAT, basic, OAuth M2M, Azure service principal,
Azure managed identity, Azure CLI, the Databricks CLI's OAuth login); the report says which one
and why the others were skipped.  Then, on the workspace itself, bounded by the probe's
timeouts: the network path; that the Databricks REST API answers (JSON, not a login page);
the credential (a PAT is checked by the API's answer — workspaces answer an unknown token
with 403 ``Invalid access token``, not 401 — an OAuth token is obtained from ``/oidc/v1/token``,
an Azure service principal's or managed identity's from Entra ID) and whose identity it is
(SCIM ``Me``); listing experiments, writing into the configured
experiment path (a probe run or a probe experiment, removed at once); the model registry
(workspace registry, or Unity Catalog with the catalog/schema privileges it needs); and
whether the tracking and registry URIs of the environment point at the same workspace.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudtrack.config import redact_uri
from cloudtrack.config import tls as trust
from cloudtrack.credentials import Credential, decode_jwt, jwt_expiry
from cloudtrack.doctor import net
from cloudtrack.doctor.answer import Answer, call_endpoint
from cloudtrack.doctor.core import Probe, ProbeTimeout, check_expiry

#: requests (the SDK's HTTP client) reads the CA bundle from these.
TRUST = trust.Trust(trust.REQUESTS)
TLS = net.TlsHints.of(TRUST)
SEARCH = "/api/2.0/mlflow/experiments/search"
ME = "/api/2.0/preview/scim/v2/Me"
TOKEN = "/oidc/v1/token"
#: The Azure Databricks application (the resource Azure CLI tokens are issued for).
AZURE_DATABRICKS_APP = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
PROBE = "cloudtrack-doctor-probe"
#: The credentials the doctor signs with itself; for the others it checks the path and the API.
REPRODUCED = ("pat", "basic", "oauth-m2m", "azure-client-secret", "azure-msi", "azure-cli",
              "databricks-cli")
#: The credentials that sign with an Entra ID token (Azure Databricks).
ENTRA = ("azure-client-secret", "azure-msi", "azure-cli")
#: Names the Unity Catalog schema whose privileges the doctor checks (``catalog.schema``).
UC_SCHEMA_VARIABLE = "CLOUDTRACK_DOCTOR_UC_SCHEMA"

#: The SDK's configuration attributes the doctor reads, with their variables.
_ENV = {
    "host": "DATABRICKS_HOST", "token": "DATABRICKS_TOKEN",
    "username": "DATABRICKS_USERNAME", "password": "DATABRICKS_PASSWORD",
    "client_id": "DATABRICKS_CLIENT_ID", "client_secret": "DATABRICKS_CLIENT_SECRET",
    "auth_type": "DATABRICKS_AUTH_TYPE", "profile": "DATABRICKS_CONFIG_PROFILE",
    "config_file": "DATABRICKS_CONFIG_FILE", "databricks_cli_path": "DATABRICKS_CLI_PATH",
    "azure_workspace_resource_id": "DATABRICKS_AZURE_RESOURCE_ID",
    "azure_use_msi": "ARM_USE_MSI", "azure_client_secret": "ARM_CLIENT_SECRET",
    "azure_client_id": "ARM_CLIENT_ID", "azure_tenant_id": "ARM_TENANT_ID",
}
#: Which authentication method each attribute belongs to (the SDK's ``auth=``).
_AUTH_OF = {"token": "pat", "username": "basic", "password": "basic", "client_id": "oauth",
            "client_secret": "oauth", "azure_workspace_resource_id": "azure",
            "azure_use_msi": "azure", "azure_client_secret": "azure", "azure_client_id": "azure",
            "azure_tenant_id": "azure"}
_SECRET_ATTRS = ("token", "password", "client_secret", "azure_client_secret")
_LOGIN_WORDS = re.compile(rb"(type=[\"']?password|sign[ -]?in|log[ -]?in|single sign-on|sso)",
                          re.IGNORECASE)
_PRIVILEGE = re.compile(r"does not have ([A-Z][A-Z_ ]+?) (?:privilege )?on (Catalog|Schema|Metastore)"
                        r" '?([^'\s.]+(?:\.[^'\s]+)?)'?", re.IGNORECASE)


class ConfigProblem(Exception):
    """The configuration cannot be resolved; ``cause`` and ``fix`` for the report."""

    def __init__(self, id: str, cause: str, summary: str, fix: str) -> None:
        super().__init__(summary)
        self.id = id
        self.cause = cause
        self.summary = summary
        self.fix = fix


# -- the configuration, as databricks-sdk resolves it ------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """The resolved configuration of one Databricks URI."""

    uri: str
    #: ``workspace`` (``databricks``) or ``unity-catalog`` (``databricks-uc``).
    registry: str
    #: The profile read (None: the file was not used), and why that one.
    profile: str | None
    profile_reason: str
    config_file: str
    values: Mapping[str, str] = field(default_factory=dict)
    #: attribute -> ``env:NAME`` or ``<file> [profile]``
    sources: Mapping[str, str] = field(default_factory=dict)
    file_note: str = ""

    def get(self, name: str) -> str | None:
        return self.values.get(name) or None

    def source(self, name: str) -> str:
        return self.sources.get(name, "?")

    @property
    def host(self) -> str:
        """The host as the SDK uses it (``https://`` added when there is no scheme)."""
        raw = (self.get("host") or "").strip()
        if raw and "://" not in raw:
            raw = "https://" + raw
        return raw.rstrip("/")

    @property
    def base(self) -> str:
        """``scheme://host[:port]`` of :attr:`host`: where the REST API lives."""
        parts = urllib.parse.urlsplit(self.host)
        return f"{parts.scheme}://{parts.netloc}"


def split_uri(uri: str) -> tuple[str, str | None]:
    """(``databricks`` or ``databricks-uc``, the profile or None) of a Databricks URI; like
    MLflow's ``get_db_info_from_uri``, ``databricks://profile:prefix`` names ``profile``."""
    uri = uri.strip()
    scheme, _, rest = uri.partition("://")
    if not rest:
        return uri.split(":")[0], None
    profile = urllib.parse.unquote(rest.split("/")[0].split(":")[0]) or None
    return scheme, profile


def resolve(uri: str, environ: Mapping[str, str]) -> Workspace:
    """The configuration MLflow's Databricks client would use for ``uri`` (raises
    :class:`ConfigProblem` where the SDK raises)."""
    scheme, uri_profile = split_uri(uri)
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name, var in _ENV.items():
        if environ.get(var):
            values[name] = environ[var]
            sources[name] = f"env:{var}"
    home = environ.get("HOME") or os.path.expanduser("~")
    config_file = values.get("config_file") or "~/.databrickscfg"
    path = os.path.expanduser(config_file) if not config_file.startswith("~") \
        else os.path.join(home, config_file[2:])
    requested = uri_profile or values.get("profile")
    reason = "named by the URI" if uri_profile else (
        "from env:DATABRICKS_CONFIG_PROFILE" if values.get("profile") else "")
    registry = "unity-catalog" if scheme == "databricks-uc" else "workspace"
    auth_in_env = sorted(sources[n] for n in values if n in _AUTH_OF or n == "host")
    if not requested and auth_in_env:
        return Workspace(uri, registry, None, "", path, values, sources,
                         f"{path} is not read: no profile is named and "
                         f"{', '.join(s.removeprefix('env:') for s in auth_in_env)} "
                         "configure the workspace (the SDK reads the file only when nothing is "
                         "set)")
    if not os.path.exists(path):
        if requested:
            raise ConfigProblem(
                "config.profile", "config-invalid",
                f"profile {requested!r} ({reason}) cannot be read: {path} does not exist",
                f"create it: `databricks configure --profile {requested}` (or `databricks auth "
                f"login --host <workspace URL> --profile {requested}`), or set "
                "DATABRICKS_CONFIG_FILE to the file that has it")
        return Workspace(uri, registry, None, "", path, values, sources,
                         f"{path} does not exist")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as e:
        raise ConfigProblem("config.profile", "config-invalid",
                            f"{path} cannot be parsed: {' '.join(str(e).split())[:200]}",
                            f"fix the syntax of {path} (INI: [profile] then key = value)") from None
    sections = {name: dict(parser._sections[name])  # type: ignore[attr-defined]
                for name in parser.sections() if name != "__settings__"}
    if parser.defaults():
        sections["DEFAULT"] = dict(parser.defaults())
    fallback = False
    if not requested:
        default = parser.get("__settings__", "default_profile", fallback=None) \
            if parser.has_section("__settings__") else None
        if default:
            requested, reason = default, f"[__settings__] default_profile of {path}"
        elif "DEFAULT" in sections:
            requested, reason, fallback = "DEFAULT", "the file's DEFAULT (nothing else named)", \
                True
        else:
            return Workspace(uri, registry, None, "", path, values, sources,
                             f"{path} has no DEFAULT profile and none is named")
    if requested not in sections:
        if fallback:
            return Workspace(uri, registry, None, "", path, values, sources,
                             f"{path} has no DEFAULT profile")
        known = ", ".join(sorted(sections)) or "none"
        raise ConfigProblem(
            "config.profile", "config-invalid",
            f"{path} has no {requested} profile configured (profile {reason}; the file has: "
            f"{known})",
            f"add it: `databricks configure --profile {requested}` (or `databricks auth login "
            f"--host <workspace URL> --profile {requested}`), or use one of: "
            + ", ".join(f"databricks://{s}" for s in sorted(sections)))
    for key, value in sections[requested].items():
        if key in _ENV and key not in values and value:
            values[key] = value
            sources[key] = f"{path} [{requested}]"
    return Workspace(uri, registry, requested, reason, path, values, sources)


# -- the credential chain ----------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The credential the SDK's chain would pick, and why every other was skipped."""

    kind: str | None
    detail: str
    skipped: tuple[str, ...]
    #: Why the installed SDK cannot use ``kind`` although it is configured ("" : it can).
    unsupported: str = ""


def is_azure(host: str) -> bool:
    name = (urllib.parse.urlsplit(host).hostname or "").lower()
    return name.endswith((".azuredatabricks.net", ".databricks.azure.cn",
                          ".databricks.azure.us"))


@dataclass(frozen=True)
class AzureCloud:
    """The Entra ID authority and service-management resource of one Azure cloud."""

    name: str
    login: str
    management: str


#: By the workspace's DNS zone, as databricks-sdk's ``environments.py`` maps them; the SDK
#: reads neither AZURE_AUTHORITY_HOST nor (when a host is set) ARM_ENVIRONMENT.
_CLOUDS = ((".databricks.azure.cn", AzureCloud("China", "https://login.chinacloudapi.cn",
                                               "https://management.core.chinacloudapi.cn/")),
           (".databricks.azure.us", AzureCloud(
               "US Government", "https://login.microsoftonline.us",
               "https://management.core.usgovcloudapi.net/")))
AZURE_PUBLIC = AzureCloud("public", "https://login.microsoftonline.com",
                          "https://management.core.windows.net/")


def azure_cloud(host: str) -> AzureCloud:
    name = (urllib.parse.urlsplit(host).hostname or "").lower()
    return next((cloud for zone, cloud in _CLOUDS if name.endswith(zone)), AZURE_PUBLIC)


def sdk_auth_types() -> frozenset[str] | None:
    """The credentials of the installed databricks-sdk's default chain (None: unknown)."""
    try:
        from databricks.sdk.credentials_provider import DefaultCredentials

        return frozenset(str(provider.auth_type())
                         for provider in DefaultCredentials()._auth_providers)
    except Exception:  # a private attribute: any change only loses this refinement
        return None


def _sdk_version() -> str:
    try:
        from databricks.sdk.version import __version__
    except ImportError:
        return "?"
    return str(__version__)


def choose(ws: Workspace, environ: Mapping[str, str]) -> Choice:
    """The first credential of the SDK's default chain that is configured."""
    g = ws.get
    host = ws.host
    wanted = (g("auth_type") or "").lower() or None
    skipped: list[str] = []
    candidates: list[tuple[str, str | None, str]] = []  # (kind, why not or None, detail)

    def need(*names: str) -> str | None:
        missing = [_ENV[n] if n in _ENV else n for n in names if not g(n)]
        return f"{' and '.join(missing)} not set" if missing else None

    candidates.append(("pat", need("host", "token"),
                       f"a personal access token from {ws.source('token')}"))
    candidates.append(("basic", need("host", "username", "password"),
                       f"user {g('username')!r} and password from {ws.source('password')}"))
    candidates.append(("oauth-m2m", need("host", "client_id", "client_secret"),
                       f"OAuth M2M: service principal {g('client_id')} (client id from "
                       f"{ws.source('client_id')}, secret from {ws.source('client_secret')})"))
    azure_host = is_azure(host) or bool(g("azure_workspace_resource_id"))
    not_azure = "the host is not an Azure Databricks workspace" if not azure_host else None
    # The tenant is not needed: the SDK finds it from the workspace's /aad/auth redirect.
    candidates.append(("azure-client-secret",
                       not_azure or need("azure_client_id", "azure_client_secret"),
                       f"Azure service principal {g('azure_client_id')} (client id from "
                       f"{ws.source('azure_client_id')}, secret from "
                       f"{ws.source('azure_client_secret')})"))
    msi = (g("azure_use_msi") or "").lower() in ("1", "true", "yes")
    known = sdk_auth_types()
    # databricks-sdk for Python (MLflow's client) has no azure-msi credential as of 0.162
    # (databricks-sdk-py#164, open); its Go SDK, the CLI and Terraform have one.
    unsupported = "" if known is None or "azure-msi" in known else \
        f"databricks-sdk {_sdk_version()} (MLflow's Databricks client) has no azure-msi credential"
    msi_why = not_azure or (None if msi else "ARM_USE_MSI not true")
    msi_detail = "an Azure managed identity (ARM_USE_MSI" + (
        f", user-assigned {g('azure_client_id')} from {ws.source('azure_client_id')})"
        if g("azure_client_id") else ", system-assigned)")
    candidates.append(("azure-msi", msi_why or unsupported or None, msi_detail))
    az = shutil.which("az", path=environ.get("PATH"))
    candidates.append(("azure-cli", not_azure or (None if az else "`az` is not on PATH"),
                       f"the Azure CLI's login ({az})"))
    cli = shutil.which(g("databricks_cli_path") or "databricks", path=environ.get("PATH"))
    candidates.append(("databricks-cli", need("host") or (
        None if cli else "the `databricks` CLI (its `auth login` token cache) is not on PATH"),
        f"the Databricks CLI's OAuth login ({cli})"))
    chosen: tuple[str, str] | None = None
    for kind, why_not, detail in candidates:
        if wanted and kind != wanted:
            skipped.append(f"{kind}: DATABRICKS_AUTH_TYPE/auth_type is {wanted}")
            continue
        if why_not is None and chosen is None:
            chosen = (kind, detail)
        elif why_not is None:
            skipped.append(f"{kind}: configured too, but {chosen[0] if chosen else '?'} "
                           "comes first")
        else:
            skipped.append(f"{kind}: {why_not}")
    if chosen is None:
        if msi_why is None and unsupported and wanted in (None, "azure-msi"):
            # Nothing MLflow can use; the managed identity is still probed, to tell whether it
            # would work through a credential the SDK has (`az login --identity`).
            return Choice("azure-msi", msi_detail, tuple(skipped), unsupported)
        return Choice(None, "", tuple(skipped))
    return Choice(chosen[0], chosen[1], tuple(skipped))


def _methods(ws: Workspace) -> list[str]:
    return sorted({_AUTH_OF[n] for n in ws.values if n in _AUTH_OF})


# -- talking to the workspace -----------------------------------------------------------------


class _Client:
    def __init__(self, p: Probe, host: str, verify: bool | str, *,
                 timeout_fix: str = "check the workspace's status page and any proxy in "
                                    "between",
                 network_fix: str = "check the workspace URL and the network (VPN, private "
                                    "link)") -> None:
        self.p = p
        self.host = host
        self.verify = verify
        self.headers: dict[str, str] = {}
        self.timeout_fix = timeout_fix
        self.network_fix = network_fix

    def request(self, method: str, endpoint: str, *, what: str, json_body: Any = None,
                data: Mapping[str, str] | None = None, auth: tuple[str, str] | None = None,
                headers: Mapping[str, str] | None = None, follow: bool = True) -> Answer:
        import requests

        url = self.host + endpoint
        sent = dict(headers if headers is not None else self.headers)

        def send() -> Answer:
            proxy = net.proxy_for(url, self.p.environ)
            with requests.Session() as session:
                session.trust_env = False
                return Answer.of(session.request(
                    method, url, headers=sent, json=json_body, data=data, auth=auth,
                    verify=self.verify, timeout=(self.p.step_timeout(), self.p.step_timeout()),
                    allow_redirects=follow,
                    proxies={"http": proxy, "https": proxy} if proxy else None))

        return call_endpoint(self.p, send, what=what, shown=self.host, hints=TLS,
                             timeout_fix=self.timeout_fix, network_fix=self.network_fix)


def error_of(answer: Answer) -> tuple[str, str]:
    """(error code, message) of a Databricks error answer (REST API or OAuth)."""
    body = answer.json()
    if not isinstance(body, dict):
        return "", answer.text
    code = str(body.get("error_code") or body.get("error") or "")
    message = str(body.get("message") or body.get("error_description") or "")
    return code, " ".join(message.split())[:300]


def said(answer: Answer) -> str:
    """``HTTP 403 PERMISSION_DENIED: …`` for the report (the code once, when it is the status)."""
    code, message = error_of(answer)
    code = "" if code == str(answer.status) else f" {code}"
    return f"HTTP {answer.status}{code}: {message or answer.text[:160] or '(empty body)'}"


def not_a_user(answer: Answer) -> bool:
    """Azure Databricks refusing a valid Entra ID token whose principal is not a workspace user:
    403 ``User not authorized.`` — Jetty's HTML error page, or the same words as JSON."""
    return answer.status in (401, 403) and b"user not authorized" in answer.body.lower()


def invalid_token(answer: Answer) -> bool:
    """A workspace refusing the token itself: 403 ``Invalid access token`` (not 401), told
    from a 403 PERMISSION_DENIED by the body."""
    code, message = error_of(answer)
    if code in ("PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return False
    low = message.lower()
    return answer.status in (401, 403) and (
        "invalid access token" in low or "token is expired" in low or "expired token" in low
        or code in ("UNAUTHENTICATED", "401") or answer.status == 401)


def _kind_of_answer(answer: Answer) -> tuple[str, str]:
    """What answered: ``databricks``, ``login``, ``html``, ``server-error`` or ``other``."""
    body = answer.json()
    if answer.status >= 500:
        return "server-error", f"HTTP {answer.status}: {answer.text[:160]}"
    if isinstance(body, dict) and ("error_code" in body or "experiments" in body
                                   or answer.status == 200):
        org = answer.headers.get("x-databricks-org-id")
        return "databricks", "the Databricks REST API answers" + (
            f" (workspace id {org})" if org else "")
    redirected = any(re.search(r"(login|sso|oauth|saml|aad|authorize)",
                               urllib.parse.urlsplit(u).path, re.IGNORECASE)
                     for u in answer.redirects)
    if answer.html and (redirected or _LOGIN_WORDS.search(answer.body)):
        via = f" (redirected to {redact_uri(answer.redirects[-1])})" if answer.redirects else ""
        return "login", f"a login page{via}, not the REST API"
    if answer.html:
        title = re.search(rb"<title>(.*?)</title>", answer.body, re.IGNORECASE | re.DOTALL)
        named = f" titled {title.group(1).decode('utf-8', 'replace').strip()[:80]!r}" \
            if title else ""
        return "html", f"an HTML page{named} (HTTP {answer.status}), not the REST API"
    return "other", (f"HTTP {answer.status}, {answer.headers.get('content-type') or 'no content'}"
                     f"{': ' + answer.text[:120] if answer.text else ''}")


# -- the diagnosis -----------------------------------------------------------------------------


def diagnose(p: Probe, uri: str, origin: str) -> None:
    try:
        ws = resolve(uri, p.environ)
    except ConfigProblem as e:
        p.ok("config.uri", "config", _describe_uri(uri, origin))
        p.fail(e.id, "config", e.cause, e.summary, e.fix)
    for name in _SECRET_ATTRS:
        p.secret(ws.get(name))
    p.ok("config.uri", "config", _describe_uri(uri, origin))
    _sdk(p)
    _profile(p, ws)
    host = _host(p, ws)
    choice = choose(ws, p.environ)
    _credential_config(p, ws, choice)
    _consistency(p, ws, uri, origin)

    verify = TRUST.verify(p.environ)
    net.probe_endpoint(p, host, verify=verify, hints=TLS, what="the workspace")
    client = _Client(p, host, verify)
    expires = _obtain(p, ws, choice, client)
    search = client.request("GET", SEARCH + "?max_results=1",
                            what="MLflow's experiments/search on the workspace")
    if choice.kind in ENTRA and not_a_user(search):
        _not_a_workspace_user(p, ws, client, search)
    kind, detail = _kind_of_answer(search)
    if kind == "server-error":
        p.fail("http.answer", "http", "server-error", f"{host} answered {detail}",
               "the workspace (or a proxy in front of it) is failing: check "
               "https://status.databricks.com and retry")
    if kind != "databricks":
        p.fail("http.answer", "http", "not-mlflow-server", f"{host} answers {detail}",
               "set the host to the workspace URL itself (https://<workspace>.cloud.databricks"
               ".com, https://adb-<id>.<n>.azuredatabricks.net) — not a browser URL, an SSO "
               "page, or a private-link name that only resolves inside the VNet")
    p.ok("http.answer", "http", f"{host}: {detail}")
    net.check_clock(p, search.headers.get("date"), server="the workspace")
    if choice.kind not in REPRODUCED:
        return
    _authentication(p, ws, choice, client, search, expires)
    me = _identity(p, client)
    _authorization(p, ws, client, search, me)


def _describe_uri(uri: str, origin: str) -> str:
    scheme, profile = split_uri(uri)
    registry = "Unity Catalog model registry" if scheme == "databricks-uc" else \
        "Databricks workspace tracking"
    return (f"{registry} {uri} (from {origin})"
            + (f", profile {profile!r}" if profile else ", no profile in the URI"))


def _sdk(p: Probe) -> None:
    try:
        import databricks.sdk  # noqa: F401
        from databricks.sdk.version import __version__
    except ImportError:
        p.fail("config.extra", "config", "dependency-missing",
               "databricks-sdk is not installed: MLflow's Databricks client needs it for "
               "databricks:// URIs", "run: pip install databricks-sdk")
    p.ok("config.extra", "config", f"databricks-sdk {__version__} is installed (MLflow's "
         "Databricks client authenticates with it)")


def _profile(p: Probe, ws: Workspace) -> None:
    if ws.profile is None:
        p.ok("config.profile", "config", f"no profile used: {ws.file_note}")
    else:
        keys = ", ".join(sorted(k for k, s in ws.sources.items() if s.startswith(ws.config_file)))
        p.ok("config.profile", "config", f"profile {ws.profile!r} of {ws.config_file} "
             f"({ws.profile_reason}): {keys or 'nothing'} read from it (variables set in the "
             "environment win over it)")


def _host(p: Probe, ws: Workspace) -> str:
    raw = ws.get("host")
    if not raw:
        where = f"profile {ws.profile!r} of {ws.config_file}" if ws.profile else \
            "the environment"
        p.fail("config.host", "config", "config-invalid",
               f"no workspace host: neither DATABRICKS_HOST nor {where} sets one (the SDK says "
               "`default auth: cannot configure default credentials`)",
               "set DATABRICKS_HOST=https://<workspace URL>, or `databricks configure "
               f"--profile {ws.profile or 'DEFAULT'}` to write host and token into "
               f"{ws.config_file}")
    parts = urllib.parse.urlsplit(ws.host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        p.fail("config.host", "config", "config-invalid",
               f"host {raw!r} (from {ws.source('host')}) is not a URL with a host",
               "set it to the workspace URL, like https://dbc-1234abcd-5678.cloud.databricks.com")
    clean = ws.base
    if parts.query or parts.fragment or parts.path.strip("/"):
        extra = ("?" + parts.query if parts.query else "") + (
            "#" + parts.fragment if parts.fragment else "") or parts.path
        # The SDK keeps all of it and MLflow appends /api/… behind it: every request lands on
        # the web UI.  Recorded without ending the chain, so the bare host is diagnosed too.
        p.note_fail("config.host", "config", "not-mlflow-server",
                    f"host {raw!r} (from {ws.source('host')}) carries {extra!r}: a URL pasted "
                    "from the browser; the SDK keeps it, so MLflow's API requests go to the web "
                    f"UI, not the REST API (the checks below use {clean})",
                    f"set the host to {clean} only (no ?o=, no /#/…, no path) in "
                    f"{ws.source('host').removeprefix('env:')}")
    elif "://" not in raw:
        p.warn("config.host", "config", "config-invalid",
               f"host {raw!r} (from {ws.source('host')}) has no scheme: the SDK assumes "
               f"{clean}", f"write the scheme: host = {clean}")
    else:
        p.ok("config.host", "config", f"workspace {clean} (from {ws.source('host')})")
    return clean


def _credential_config(p: Probe, ws: Workspace, choice: Choice) -> None:
    methods = _methods(ws)
    if len(methods) > 1 and not ws.get("auth_type"):
        p.fail("config.credential", "config", "config-invalid",
               f"more than one authorization method is configured: {', '.join(methods)} "
               f"({', '.join(sorted({ws.source(n) for n in ws.values if n in _AUTH_OF}))}): "
               "the SDK refuses with `validate: more than one authorization method configured`",
               "remove all but one (unset DATABRICKS_TOKEN or DATABRICKS_CLIENT_ID/SECRET, or "
               "edit the profile), or set DATABRICKS_AUTH_TYPE to the one to use")
    skipped = "; ".join(choice.skipped)
    if choice.kind is None:
        where = f"profile {ws.profile!r} of {ws.config_file}" if ws.profile else \
            "the environment"
        p.fail("auth.credential", "auth", "credentials-missing",
               f"no credential for {ws.base}: {where} has a host but no token or client secret "
               f"(the SDK says `default auth: cannot configure default credentials`); tried: "
               f"{skipped}",
               f"add `token = <PAT>` (or client_id/client_secret of a service principal) to "
               f"{'[' + ws.profile + '] of ' + ws.config_file if ws.profile else ws.config_file}"
               ", or set DATABRICKS_TOKEN, or run `databricks auth login --host "
               f"{ws.base}`")
    if choice.unsupported:
        client_id = ws.get("azure_client_id")
        skipped = "; ".join(s for s in choice.skipped if not s.startswith("azure-msi:"))
        p.note_fail("config.credential", "config", "credentials-missing",
                    f"{choice.detail} is configured, but {choice.unsupported}: MLflow finds no "
                    "credential (`default auth: cannot configure default credentials`); the "
                    "checks below still sign with the managed identity, to tell whether it "
                    f"would work; skipped: {skipped}",
                    "let the SDK's azure-cli credential use the managed identity: run `az login "
                    "--identity" + (f" --client-id {client_id}` (older az: --username "
                                    f"{client_id})" if client_id else "`")
                    + " on this machine; or use a service principal secret (ARM_CLIENT_ID, "
                    "ARM_CLIENT_SECRET, ARM_TENANT_ID) or OAuth M2M (DATABRICKS_CLIENT_ID, "
                    "DATABRICKS_CLIENT_SECRET)")
        return
    p.ok("config.credential", "config", f"signing with {choice.detail} (the first of the SDK's "
         f"chain that is configured); skipped: {skipped}")


def _registry_uri(environ: Mapping[str, str], tracking: str) -> tuple[str, str]:
    registry = environ.get("MLFLOW_REGISTRY_URI")
    if registry:
        return registry, "env:MLFLOW_REGISTRY_URI"
    scheme, profile = split_uri(tracking)
    if scheme == "databricks-uc":
        return tracking, "the URI"
    # MLflow 3: a Databricks tracking URI implies the Unity Catalog registry.
    return ("databricks-uc" + (f"://{profile}" if profile else "")), \
        "MLflow's default for a databricks tracking URI"


def _consistency(p: Probe, ws: Workspace, uri: str, origin: str) -> None:
    tracking = p.environ.get("MLFLOW_TRACKING_URI")
    here = ws.base
    if tracking and origin == "the command line" and tracking.strip() != uri.strip():
        there = _host_of(tracking, p.environ)
        if there and here and _netloc(there) != _netloc(here):
            p.note_fail("consistency.tracking", "consistency", "endpoint-mismatch",
                        f"{uri} is workspace {_netloc(here)}, but MLFLOW_TRACKING_URI="
                        f"{tracking} logs to {_netloc(there)}: runs go elsewhere than "
                        "diagnosed",
                        f"set MLFLOW_TRACKING_URI={uri}, or diagnose {tracking}")
        else:
            p.ok("consistency.tracking", "consistency",
                 f"MLFLOW_TRACKING_URI={tracking} names the same workspace")
    registry, source = _registry_uri(p.environ, tracking or uri)
    if not registry.startswith("databricks"):
        p.warn("consistency.registry", "consistency", "endpoint-mismatch",
               f"models are registered at {registry} ({source}), not in a Databricks workspace",
               "unset MLFLOW_REGISTRY_URI to register into the workspace (databricks-uc)")
        return
    other = _host_of(registry, p.environ)
    if other and here and _netloc(other) != _netloc(here):
        p.warn("consistency.registry", "consistency", "endpoint-mismatch",
               f"the registry {registry} ({source}) is workspace {_netloc(other)}, tracking is "
               f"{_netloc(here)}: models are registered in another workspace than runs",
               "if that is not a shared registry workspace on purpose, set "
               f"MLFLOW_REGISTRY_URI=databricks-uc{'://' + ws.profile if ws.profile else ''}")
        return
    kind = "Unity Catalog" if registry.startswith("databricks-uc") else "the workspace registry"
    p.ok("consistency.registry", "consistency", f"models go to {kind} ({registry}, {source}) "
         "of the same workspace")


def _host_of(uri: str, environ: Mapping[str, str]) -> str | None:
    if uri.strip() in ("databricks", "databricks-uc") or \
            uri.startswith(("databricks://", "databricks-uc://")):
        try:
            return resolve(uri, environ).base or None
        except ConfigProblem:
            return None
    return uri if "://" in uri else None


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


# -- authentication ----------------------------------------------------------------------------


def _obtain(p: Probe, ws: Workspace, choice: Choice, client: _Client) -> float | None:
    """Set the client's Authorization header the way the chosen credential signs; for OAuth
    and the Azure CLI, obtain the token (the seconds it is valid, when known)."""
    if choice.kind == "pat":
        client.headers = {"Authorization": f"Bearer {ws.get('token')}"}
        return None
    if choice.kind == "basic":
        import base64

        raw = f"{ws.get('username')}:{ws.get('password')}".encode()
        encoded = base64.standard_b64encode(raw).decode()
        p.secret(encoded)
        client.headers = {"Authorization": f"Basic {encoded}"}
        return None
    if choice.kind == "oauth-m2m":
        return _oauth_m2m(p, ws, client)
    if choice.kind == "azure-client-secret":
        return _azure_client_secret(p, ws, client)
    if choice.kind == "azure-msi":
        return _azure_msi(p, ws, client)
    if choice.kind == "azure-cli":
        return _azure_cli(p, client)
    if choice.kind == "databricks-cli":
        return _databricks_cli(p, ws, client)
    p.warn("auth.credential", "auth", "credentials-missing",
           f"{choice.detail} is configured; the doctor does not obtain tokens for "
           f"{choice.kind}: only the network path and the REST API are checked",
           "compare with a PAT (DATABRICKS_TOKEN) or OAuth M2M to tell credential problems "
           "from workspace problems")
    return None


def _oauth_m2m(p: Probe, ws: Workspace, client: _Client) -> float | None:
    client_id = ws.get("client_id") or ""
    answer = client.request("POST", TOKEN, what="the OAuth token endpoint",
                            data={"grant_type": "client_credentials", "scope": "all-apis"},
                            auth=(client_id, ws.get("client_secret") or ""), headers={})
    body = answer.json()
    if answer.status == 200 and isinstance(body, dict) and body.get("access_token"):
        token = str(body["access_token"])
        p.secret(token)
        client.headers = {"Authorization": f"Bearer {token}"}
        expires = body.get("expires_in")
        return float(expires) if isinstance(expires, int | float) else None
    _, detail = _kind_of_answer(answer)
    if answer.status >= 500:
        p.fail("http.answer", "http", "server-error",
               f"the OAuth token endpoint {client.host}{TOKEN} answered {detail}",
               "the workspace is failing: check https://status.databricks.com and retry")
    if answer.html or not isinstance(body, dict):
        p.fail("http.answer", "http", "not-mlflow-server",
               f"the OAuth token endpoint {client.host}{TOKEN} answers {detail}",
               "set the host to the workspace URL itself, not a browser URL or an SSO page")
    code, message = error_of(answer)
    p.fail("auth.token", "auth", "credentials-invalid",
           f"the workspace refused the client credentials of service principal {client_id} "
           f"(from {ws.source('client_id')}): HTTP {answer.status} {code}: {message or '-'} — "
           "the client id is wrong, or its secret is wrong, revoked or expired (OAuth secrets "
           "have a lifetime)",
           f"create a new OAuth secret for service principal {client_id} (workspace or account "
           "console → Service principals → Secrets) and set DATABRICKS_CLIENT_SECRET (or "
           f"client_secret in {ws.config_file})")


def _databricks_cli(p: Probe, ws: Workspace, client: _Client) -> float | None:
    """What the SDK's ``databricks-cli`` credential runs: ``databricks auth token --host``."""
    cli = ws.get("databricks_cli_path") or "databricks"
    argv = [cli, "auth", "token", "--host", ws.base]
    try:
        proc = p.call(lambda: subprocess.run(argv, capture_output=True, text=True,
                                             timeout=p.step_timeout(), env=dict(p.environ)),
                      what="databricks auth token")
    except Exception as e:
        p.fail("auth.token", "auth", "credentials-missing",
               f"the Databricks CLI gave no token: {type(e).__name__}: {e}",
               f"run `databricks auth login --host {ws.base}`")
    if proc.returncode != 0:
        stderr = " ".join(proc.stderr.split())[:300]
        p.fail("auth.token", "auth", "token-expired" if "expired" in stderr.lower()
               else "credentials-missing",
               f"the Databricks CLI gave no token for {ws.base}: {stderr}",
               f"run `databricks auth login --host {ws.base}` (its refresh token has expired "
               "or was never obtained)")
    try:
        body = json.loads(proc.stdout)
        token = str(body["access_token"])
    except (ValueError, KeyError, TypeError):
        p.fail("auth.token", "auth", "credentials-invalid",
               "`databricks auth token` answered no access_token",
               f"update the Databricks CLI and run `databricks auth login --host {ws.base}`")
    p.secret(token, body.get("refresh_token"))
    client.headers = {"Authorization": f"Bearer {token}"}
    p.ok("auth.token", "auth", f"got an OAuth token from the Databricks CLI ({cli})")
    return None


def _where(ws: Workspace, name: str) -> str:
    """Where to change a setting: its variable, or its key in the profile."""
    source = ws.source(name)
    if source.startswith("env:"):
        return source.removeprefix("env:")
    return f"{name} in {source}" if source != "?" else _ENV[name]


def _azure_headers(ws: Workspace, token: str, management: str | None) -> dict[str, str]:
    """What databricks-sdk's Azure credentials send: the token, the service-management token
    (the workspace adds a principal that is not yet a user, but holds Contributor on the
    workspace resource, on first use) and the workspace's resource id when configured."""
    headers = {"Authorization": f"Bearer {token}"}
    if management:
        headers["X-Databricks-Azure-SP-Management-Token"] = management
    if ws.get("azure_workspace_resource_id"):
        headers["X-Databricks-Azure-Workspace-Resource-Id"] = str(
            ws.get("azure_workspace_resource_id"))
    return headers


def _tenant(p: Probe, ws: Workspace, client: _Client) -> tuple[str, str]:
    """(tenant, where it came from): ARM_TENANT_ID, or what the SDK falls back to, the tenant
    in the Location of the workspace's ``/aad/auth`` redirect."""
    tenant = ws.get("azure_tenant_id")
    if tenant:
        return tenant, ws.source("azure_tenant_id")
    answer = client.request("GET", "/aad/auth", what="the workspace's Entra ID tenant (/aad/auth)",
                            headers={}, follow=False)
    location = answer.headers.get("location", "")
    segments = urllib.parse.urlsplit(location).path.split("/")
    if answer.status // 100 == 3 and len(segments) > 1 and segments[1]:
        return segments[1], "the workspace's /aad/auth redirect (ARM_TENANT_ID is not set)"
    p.fail("auth.token", "auth", "config-invalid",
           f"ARM_TENANT_ID is not set and {ws.base}/aad/auth names no tenant (HTTP "
           f"{answer.status}{', Location ' + redact_uri(location) if location else ''}): the "
           "SDK then asks Entra ID for a tenant named 'None'",
           "set ARM_TENANT_ID (or azure_tenant_id in the profile) to the Directory (tenant) ID "
           "of the workspace's subscription: `az account show --query tenantId -o tsv`")


_AADSTS = re.compile(r"AADSTS(\d+)")


def _entra_token(p: Probe, ws: Workspace, entra: _Client, tenant: str, tenant_from: str,
                 resource: str) -> tuple[str, float | None]:
    """A client-credentials token for ``resource`` from Entra ID's v1 endpoint, as
    databricks-sdk asks it (``resource=``, id and secret in the form)."""
    app = ws.get("azure_client_id") or ""
    answer = entra.request("POST", f"/{urllib.parse.quote(tenant, safe='')}/oauth2/token",
                           what="Entra ID's token endpoint", headers={}, data={
                               "grant_type": "client_credentials", "client_id": app,
                               "client_secret": ws.get("azure_client_secret") or "",
                               "resource": resource})
    body = answer.json()
    if answer.status == 200 and isinstance(body, dict) and body.get("access_token"):
        token = str(body["access_token"])
        p.secret(token)
        try:
            return token, float(str(body.get("expires_in")))  # v1 answers it as a string
        except (TypeError, ValueError):
            return token, None
    shown = f"{entra.host}/{tenant}/oauth2/token"
    if answer.status >= 500:
        p.fail("auth.token", "auth", "server-error",
               f"Entra ID's token endpoint {shown} answered HTTP {answer.status}: "
               f"{answer.text[:160]}", "retry; check https://status.azure.com")
    if not isinstance(body, dict):
        p.fail("auth.token", "auth", "endpoint-mismatch",
               f"{shown} does not answer like Entra ID: {_kind_of_answer(answer)[1]}",
               "a proxy in between answers instead of Entra ID: let it through to "
               f"{entra.host}, or check HTTPS_PROXY/NO_PROXY")
    description = str(body.get("error_description") or "")
    said = " ".join(description.split("Trace ID:")[0].split()) or str(body.get("error"))
    codes = body.get("error_codes")
    found = _AADSTS.search(description)
    code = str(codes[0]) if isinstance(codes, list) and codes else \
        (found.group(1) if found else "")
    secret_at = _where(ws, "azure_client_secret")
    new_secret = (f"create a new client secret for app {app} (`az ad app credential reset --id "
                  f"{app} --append`, or portal → App registrations → Certificates & secrets) "
                  f"and put its Value in {secret_at}")
    who = f"app {app} (client id from {ws.source('azure_client_id')})"
    if code == "7000215":
        p.fail("auth.token", "auth", "credentials-invalid",
               f"Entra ID refused the client secret of {who} from {secret_at}: {said}",
               "the secret is wrong — it must be the secret's Value, not its Secret ID; "
               + new_secret)
    if code == "7000222":
        p.fail("auth.token", "auth", "token-expired",
               f"the client secret of {who} has expired: {said}", new_secret)
    if code == "700016":
        p.fail("auth.token", "auth", "credentials-invalid",
               f"{who} does not exist in tenant {tenant} (from {tenant_from}): {said}",
               f"check {_where(ws, 'azure_client_id')} (the app's Application (client) ID, not "
               f"its object id) and the tenant: the app must be registered in tenant {tenant} "
               "or have a service principal there (`az ad sp show --id "
               f"{app}` signed in to that tenant)")
    if code in ("90002", "900023"):
        p.fail("auth.token", "auth", "config-invalid",
               f"tenant {tenant} (from {tenant_from}) is not known to Entra ID at "
               f"{entra.host} ({azure_cloud(ws.host).name} cloud): {said}",
               f"set {_where(ws, 'azure_tenant_id')} to the Directory (tenant) ID of the "
               "workspace's subscription (`az account show --query tenantId -o tsv`)")
    p.fail("auth.token", "auth", "credentials-invalid",
           f"Entra ID refused the client credentials of {who} in tenant {tenant}: HTTP "
           f"{answer.status} {body.get('error') or ''}: {said}",
           f"check {_where(ws, 'azure_client_id')}, {secret_at} and "
           f"{_where(ws, 'azure_tenant_id')}")


def _azure_client_secret(p: Probe, ws: Workspace, client: _Client) -> float | None:
    """databricks-sdk's azure-client-secret: an Entra ID token for Azure Databricks and one
    for the cloud's service management, by client credentials."""
    cloud = azure_cloud(ws.host)
    tenant, tenant_from = _tenant(p, ws, client)
    entra = _Client(p, cloud.login, client.verify,
                    timeout_fix=f"check the network path to {cloud.login} (proxy, firewall)",
                    network_fix=f"this machine must reach {cloud.login} (Entra ID) directly or "
                                "through HTTPS_PROXY")
    token, expires = _entra_token(p, ws, entra, tenant, tenant_from, AZURE_DATABRICKS_APP)
    management, _ = _entra_token(p, ws, entra, tenant, tenant_from, cloud.management)
    client.headers = _azure_headers(ws, token, management)
    ignored = p.environ.get("AZURE_AUTHORITY_HOST")
    p.ok("auth.token", "auth",
         f"got an Entra ID token for Azure Databricks from {cloud.login} (tenant {tenant}, from "
         f"{tenant_from}) for app {ws.get('azure_client_id')}, and a service-management token "
         f"({cloud.management}) sent as X-Databricks-Azure-SP-Management-Token, as the SDK does"
         + (f"; AZURE_AUTHORITY_HOST={ignored} is not read by databricks-sdk" if ignored else ""))
    return expires


def _azure_msi(p: Probe, ws: Workspace, client: _Client) -> float | None:
    """A managed identity's tokens (Azure Databricks, service management), from the endpoint
    azure-identity finds: IDENTITY_ENDPOINT (App Service, Functions, Azure ML compute),
    MSI_ENDPOINT, or the instance metadata service.  azure-identity reads them from this
    process's environment."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import CredentialUnavailableError, ManagedIdentityCredential
    except ImportError:
        p.fail("auth.token", "auth", "dependency-missing",
               "azure-identity is not installed: the doctor asks the managed identity endpoint "
               "through it", "run: pip install 'cloudtrack[azure]'")
    env = p.environ
    client_id = ws.get("azure_client_id")
    which = (f"user-assigned identity {client_id} (from {ws.source('azure_client_id')})"
             if client_id else "the system-assigned identity")
    if env.get("IDENTITY_ENDPOINT") and env.get("IDENTITY_HEADER"):
        where = f"the managed identity endpoint {env['IDENTITY_ENDPOINT']} (IDENTITY_ENDPOINT)"
    elif env.get("MSI_ENDPOINT"):
        where = f"the managed identity endpoint {env['MSI_ENDPOINT']} (MSI_ENDPOINT)"
    else:
        imds = env.get("AZURE_POD_IDENTITY_AUTHORITY_HOST") or "http://169.254.169.254"
        where = f"the instance metadata service {imds} (IMDS)"
    cloud = azure_cloud(ws.host)
    seconds = p.step_timeout()
    # One attempt, bounded: IMDS's default retries would outlast the step.
    credential = ManagedIdentityCredential(client_id=client_id, connection_timeout=seconds,
                                           read_timeout=seconds, retry_total=0)
    missing_fix = ("ARM_USE_MSI needs a machine with a managed identity (an Azure VM or scale "
                   "set, App Service/Functions, Azure ML compute) that reaches its identity "
                   "endpoint; elsewhere unset ARM_USE_MSI and use a service principal "
                   "(ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_TENANT_ID), OAuth M2M "
                   "(DATABRICKS_CLIENT_ID, DATABRICKS_CLIENT_SECRET) or `az login`")
    refused_fix = (f"assign the user-assigned identity {client_id} to this machine (portal → "
                   "the VM or app → Identity → User assigned), or unset ARM_CLIENT_ID to use "
                   "the system-assigned identity" if client_id else
                   "turn on this machine's system-assigned identity (portal → the VM or app → "
                   "Identity), or set ARM_CLIENT_ID to a user-assigned identity assigned to it")
    def get(resource: str, label: str) -> Any:
        # The scope of a resource is "<resource>/.default", its trailing slash kept.
        return p.call(lambda: credential.get_token(f"{resource}/.default"),
                      what=f"ManagedIdentityCredential.get_token ({label})")

    try:
        tokens = [get(AZURE_DATABRICKS_APP, "Azure Databricks"),
                  get(cloud.management, "service management")]
    except ProbeTimeout as e:
        if "IMDS" in where:
            p.fail("auth.token", "auth", "credentials-missing",
                   f"{e}: {where} does not answer — this machine has no managed identity",
                   missing_fix)
        p.fail("auth.token", "auth", "network-timeout", f"{e}: {where} accepted the request "
               "but did not answer", "check the identity endpoint's host (restart the app)")
    except CredentialUnavailableError as e:
        text = " ".join(str(e).split())[:400]
        if "Token request error:" in text:
            # The endpoint answered and refused; azure-identity's lead-in says otherwise.
            said = text.split("Token request error:", 1)[1].strip()
            p.fail("auth.token", "auth", "credentials-invalid",
                   f"{where} refused a token for {which}: {said}", refused_fix)
        p.fail("auth.token", "auth", "credentials-missing",
               f"no managed identity answered at {where}: {text}", missing_fix)
    except ClientAuthenticationError as e:
        p.fail("auth.token", "auth", "credentials-invalid",
               f"{where} refused a token for {which}: {' '.join(str(e).split())[:400]}",
               refused_fix)
    finally:
        try:
            credential.close()
        except Exception:  # closing must not hide the diagnosis
            pass
    for token in tokens:
        p.secret(token.token)
    claims = decode_jwt(tokens[0].token) if tokens[0].token.count(".") == 2 else {}
    client.headers = _azure_headers(ws, tokens[0].token, tokens[1].token)
    app = claims.get("appid") or claims.get("azp") or client_id or "?"
    p.ok("auth.token", "auth", f"got a managed identity token for Azure Databricks from {where}: "
         f"{which}, application id {app}; and a service-management token ({cloud.management}), "
         "sent as X-Databricks-Azure-SP-Management-Token")
    return max(0.0, float(tokens[0].expires_on) - time.time())


def _not_a_workspace_user(p: Probe, ws: Workspace, client: _Client, answer: Answer) -> None:
    token = client.headers.get("Authorization", "")[7:]
    claims = decode_jwt(token) if token.count(".") == 2 else {}
    user = claims.get("upn") or claims.get("unique_name")
    app = str(claims.get("appid") or claims.get("azp") or ws.get("azure_client_id") or "?")
    p.ok("http.answer", "http", f"{ws.base}: the workspace answers (its own 403 page)")
    if user:
        p.fail("auth.credential", "auth", "permission-denied",
               f"Entra ID signed in user {user}, but {ws.base} does not know that user (HTTP "
               f"{answer.status} User not authorized.)",
               f"ask a workspace admin to add {user} to the workspace (Settings → Identity and "
               "access → Users), or sign in to the tenant the workspace belongs to")
    p.fail("auth.credential", "auth", "permission-denied",
           f"Entra ID issued a token for service principal {app} (tenant "
           f"{claims.get('tid') or '?'}), but it is not a user of {ws.base}: HTTP "
           f"{answer.status} User not authorized.",
           f"add the service principal to the workspace: Settings → Identity and access → "
           f"Service principals → Add, application id {app} (or `databricks service-principals "
           f"create --application-id {app}` as an admin); or give it Contributor on the "
           "workspace's Azure resource and set DATABRICKS_AZURE_RESOURCE_ID (or "
           "azure_workspace_resource_id), so the workspace adds it on first use")


def _azure_cli(p: Probe, client: _Client) -> float | None:
    argv = ["az", "account", "get-access-token", "--resource", AZURE_DATABRICKS_APP,
            "--output", "json"]
    try:
        proc = p.call(lambda: subprocess.run(argv, capture_output=True, text=True,
                                             timeout=p.step_timeout(), env=dict(p.environ)),
                      what="az account get-access-token")
    except Exception as e:
        p.fail("auth.token", "auth", "credentials-missing",
               f"the Azure CLI gave no token: {type(e).__name__}: {e}", "run `az login`")
    if proc.returncode != 0:
        stderr = " ".join(proc.stderr.split())[:300]
        expired = "expired" in stderr.lower() or "AADSTS700082" in stderr
        p.fail("auth.token", "auth", "token-expired" if expired else "credentials-missing",
               f"the Azure CLI gave no token for Azure Databricks: {stderr}",
               "run `az login` (with the tenant of the workspace: `az login --tenant <id>`)")
    try:
        token = json.loads(proc.stdout)["accessToken"]
    except (ValueError, KeyError, TypeError):
        p.fail("auth.token", "auth", "credentials-invalid",
               "the Azure CLI answered no accessToken", "update the Azure CLI and `az login`")
    p.secret(token)
    client.headers = {"Authorization": f"Bearer {token}"}
    p.ok("auth.token", "auth", "got an Entra ID token for Azure Databricks from the Azure CLI")
    return None


def _authentication(p: Probe, ws: Workspace, choice: Choice, client: _Client, search: Answer,
                    expires: float | None) -> None:
    if invalid_token(search):
        said_ = said(search)
        if not client.headers:
            p.fail("auth.credential", "auth", "credentials-missing",
                   f"the workspace requires a credential and none was sent ({said_})",
                   "set DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID/DATABRICKS_CLIENT_SECRET")
        token = ws.get("token") if choice.kind == "pat" else None
        claims = decode_jwt(token) if token and token.count(".") == 2 else {}
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp <= time.time():
            p.fail("auth.credential", "auth", "token-expired",
                   f"the workspace refused {choice.detail}: it expired "
                   f"{(time.time() - exp) / 60:.0f} min ago ({said_})",
                   f"get a new token (`databricks auth token --host {ws.base}`) and set it again")
        if choice.kind == "pat":
            p.fail("auth.credential", "auth", "credentials-invalid",
                   f"the workspace refused {choice.detail} ({said_}): the token is revoked, "
                   "expired, or belongs to another workspace (Databricks answers an unknown "
                   "token with 403, not 401)",
                   f"create a new token in {ws.base} (Settings → Developer → Access tokens, "
                   "or `databricks tokens create --lifetime-seconds 7776000`) and put it in "
                   f"{ws.source('token').removeprefix('env:')}")
        p.fail("auth.credential", "auth", "credentials-invalid",
               f"the workspace refused {choice.detail} ({said_})",
               "check that the credential belongs to this workspace and is still valid")
    p.ok("auth.credential", "auth", f"the workspace accepted {choice.detail}")
    if expires is not None:
        until = time.time() + expires
        from datetime import datetime, timezone

        label, what, renewer = {
            "azure-client-secret": ("Entra ID", "the Entra ID access token",
                                    "the SDK (from the client secret)"),
            "azure-msi": ("managed identity", "the managed identity's access token",
                          "the managed identity endpoint"),
        }.get(choice.kind or "", ("OAuth M2M", "the OAuth access token",
                                  "the SDK (from the client secret)"))
        check_expiry(p, "auth.expiry", Credential(
            "token", label, "the SDK", expires=datetime.fromtimestamp(until, timezone.utc),
            renews=True), what=what, fix="-", renewer=renewer)
    elif choice.kind == "pat":
        token = ws.get("token") or ""
        claims = decode_jwt(token) if token.count(".") == 2 else {}
        when = jwt_expiry(claims)
        if when is not None:
            check_expiry(p, "auth.expiry", Credential("token", "DATABRICKS_TOKEN",
                                                      ws.source("token"), expires=when),
                         what="the token (a static token cannot renew itself)",
                         fix=f"use OAuth M2M or `databricks auth login --host {ws.base}`, "
                             "whose tokens the SDK renews")


def _identity(p: Probe, client: _Client) -> dict[str, Any]:
    answer = client.request("GET", ME, what="SCIM Me")
    body = answer.json()
    if answer.status != 200 or not isinstance(body, dict):
        code, message = error_of(answer)
        p.warn("auth.identity", "auth", "permission-denied" if answer.status == 403 else
               "server-error", f"SCIM Me answered HTTP {answer.status} {code}: {message}",
               "the identity is unknown; the checks below still tell what it may do")
        return {}
    schemas = " ".join(str(s) for s in body.get("schemas") or [])
    name = str(body.get("userName") or body.get("displayName") or "?")
    if "ServicePrincipal" in schemas or body.get("applicationId"):
        who = f"service principal {body.get('displayName') or name} (application id " \
              f"{body.get('applicationId') or name})"
    else:
        who = f"user {name}"
    groups = [str(g.get("display")) for g in body.get("groups") or [] if isinstance(g, dict)]
    p.ok("auth.identity", "auth", f"signed in as {who}"
         + (f", groups: {', '.join(groups[:6])}" if groups else ""))
    return body


# -- authorization -----------------------------------------------------------------------------


def _authorization(p: Probe, ws: Workspace, client: _Client, search: Answer,
                   me: Mapping[str, Any]) -> None:
    code, message = error_of(search)
    principal = str(me.get("userName") or me.get("applicationId") or "<you>")
    if search.status == 200:
        body = search.json() or {}
        shown = len(body.get("experiments") or []) if isinstance(body, dict) else 0
        p.ok("authz.list", "authz", f"may list experiments ({shown} shown of max_results=1)")
    else:
        p.note_fail("authz.list", "authz", "permission-denied" if code == "PERMISSION_DENIED"
                    else "server-error", f"listing experiments answered HTTP {search.status} "
                    f"{code}: {message}",
                    "ask a workspace admin for access to the workspace (the Workspace access "
                    "entitlement)")
    _experiment(p, ws, client, principal)
    _registry(p, ws, client, principal)


def _experiment(p: Probe, ws: Workspace, client: _Client, principal: str) -> None:
    env = p.environ
    name = env.get("MLFLOW_EXPERIMENT_NAME")
    ident = env.get("MLFLOW_EXPERIMENT_ID")
    if ident:
        answer = client.request("GET", "/api/2.0/mlflow/experiments/get?experiment_id="
                                + urllib.parse.quote(ident), what="reading the experiment")
        label = f"experiment {ident} (MLFLOW_EXPERIMENT_ID)"
    elif name:
        answer = client.request("GET", "/api/2.0/mlflow/experiments/get-by-name?"
                                "experiment_name=" + urllib.parse.quote(name),
                                what="reading the experiment")
        label = f"experiment {name!r} (MLFLOW_EXPERIMENT_NAME)"
    else:
        answer = None
        label = ""
    home = f"/Users/{principal}"
    folder = home
    if answer is not None:
        code, message = error_of(answer)
        if answer.status == 200 and isinstance(answer.json(), dict):
            experiment = answer.json().get("experiment") or {}
            p.ok("authz.read", "authz", f"may read {label}: {experiment.get('name')!r} "
                 f"(id {experiment.get('experiment_id')})")
            if not p.read_only:
                _probe_run(p, client, str(experiment.get("experiment_id")), label, principal)
            return
        if code == "PERMISSION_DENIED" or answer.status == 403:
            p.note_fail("authz.read", "authz", "permission-denied",
                        f"reading {label} is denied for {principal}: {code}: {message}",
                        f"ask the experiment's owner for CAN READ (CAN EDIT to log runs) on it "
                        f"for {principal}, or log to an experiment under {home}")
            return
        if code != "RESOURCE_DOES_NOT_EXIST" and answer.status != 404:
            p.note_fail("authz.read", "authz", "server-error",
                        f"reading {label} answered HTTP {answer.status} {code}: {message}",
                        "retry; check the workspace's status")
            return
        if ident:
            p.fail("authz.read", "authz", "container-not-found",
                   f"{label} does not exist in {ws.base} ({message})",
                   "check MLFLOW_EXPERIMENT_ID (the id from the experiment page of this "
                   "workspace), or use MLFLOW_EXPERIMENT_NAME=/Users/<you>/<name>")
        if not (name or "").startswith("/"):
            p.note_fail("authz.read", "authz", "config-invalid",
                        f"{label} is not a workspace path: on Databricks experiment names are "
                        "absolute paths", f"set MLFLOW_EXPERIMENT_NAME={home}/{name}")
            return
        folder = (name or "").rsplit("/", 1)[0] or "/"
        p.ok("authz.read", "authz", f"{label} does not exist yet: MLflow creates it on the "
             f"first run, in {folder}")
    else:
        p.ok("authz.read", "authz", "no experiment is configured (MLFLOW_EXPERIMENT_NAME, "
             f"MLFLOW_EXPERIMENT_ID): outside a notebook MLflow needs one; the write probe goes "
             f"to {home}")
    if p.read_only:
        return
    _probe_experiment(p, client, folder, principal)


def _denied_fix(folder: str, principal: str) -> str:
    return (f"ask the folder's owner (or an admin) for CAN EDIT on {folder} for {principal} "
            "(workspace → folder → Share), or set MLFLOW_EXPERIMENT_NAME to a path under "
            f"/Users/{principal}")


def _probe_experiment(p: Probe, client: _Client, folder: str, principal: str) -> None:
    path = f"{folder.rstrip('/')}/{PROBE}-{uuid.uuid4().hex[:8]}"
    created = client.request("POST", "/api/2.0/mlflow/experiments/create",
                             json_body={"name": path}, what="creating a probe experiment")
    code, message = error_of(created)
    body = created.json()
    if created.status != 200 or not isinstance(body, dict) or not body.get("experiment_id"):
        if code == "PERMISSION_DENIED" or created.status == 403:
            p.note_fail("authz.write", "authz", "permission-denied",
                        f"creating an experiment in {folder} is denied for {principal}: {code}: "
                        f"{message}", _denied_fix(folder, principal))
        elif code == "RESOURCE_DOES_NOT_EXIST":
            p.note_fail("authz.write", "authz", "container-not-found",
                        f"the folder {folder} does not exist ({message})",
                        f"create it (`databricks workspace mkdirs {folder}`), or set "
                        f"MLFLOW_EXPERIMENT_NAME to a path under /Users/{principal}")
        else:
            p.note_fail("authz.write", "authz", "server-error",
                        f"creating a probe experiment answered HTTP {created.status} {code}: "
                        f"{message}", "retry; check the workspace's status")
        return
    exp_id = str(body["experiment_id"])
    deleted = client.request("POST", "/api/2.0/mlflow/experiments/delete",
                             json_body={"experiment_id": exp_id},
                             what="deleting the probe experiment")
    if deleted.status == 200:
        p.ok("authz.write", "authz", f"created and deleted the probe experiment {path} (it "
             "stays in the trash until the workspace purges it)")
    else:
        p.warn("authz.write", "authz", "permission-denied",
               f"created the probe experiment {path} (id {exp_id}) but deleting it answered "
               f"HTTP {deleted.status}: it is left behind",
               f"delete it by hand: `databricks experiments delete-experiment {exp_id}`")


def _probe_run(p: Probe, client: _Client, exp_id: str, label: str, principal: str) -> None:
    created = client.request("POST", "/api/2.0/mlflow/runs/create", json_body={
        "experiment_id": exp_id, "run_name": PROBE, "start_time": int(time.time() * 1000),
        "tags": [{"key": "cloudtrack.doctor", "value": "probe run; safe to delete"}]},
        what="creating a probe run")
    code, message = error_of(created)
    body = created.json()
    run_id = body.get("run", {}).get("info", {}).get("run_id") if isinstance(body, dict) \
        else None
    if created.status != 200 or not run_id:
        if code == "PERMISSION_DENIED" or created.status == 403:
            p.note_fail("authz.write", "authz", "permission-denied",
                        f"creating a run in {label} is denied for {principal}: {code}: "
                        f"{message}", f"ask the experiment's owner for CAN EDIT on it for "
                        f"{principal}, or log to an experiment under /Users/{principal}")
        else:
            p.note_fail("authz.write", "authz", "server-error",
                        f"creating a probe run answered HTTP {created.status} {code}: "
                        f"{message}", "retry; check the workspace's status")
        return
    deleted = client.request("POST", "/api/2.0/mlflow/runs/delete", json_body={"run_id": run_id},
                             what="deleting the probe run")
    if deleted.status == 200:
        p.ok("authz.write", "authz", f"created and deleted a probe run in {label} (it stays "
             "among the deleted runs until the workspace purges them)")
    else:
        p.warn("authz.write", "authz", "permission-denied",
               f"created the probe run {run_id} in {label}; deleting it answered HTTP "
               f"{deleted.status}, so it is left behind", "delete it in the experiment's page")


def _registry(p: Probe, ws: Workspace, client: _Client, principal: str) -> None:
    registry, source = _registry_uri(p.environ, ws.uri)
    if not registry.startswith("databricks-uc"):
        answer = client.request("GET", "/api/2.0/mlflow/registered-models/search?max_results=1",
                                what="the workspace model registry")
        code, message = error_of(answer)
        if answer.status == 200:
            p.ok("authz.registry", "authz", f"may search the workspace model registry ({source})")
        else:
            p.note_fail("authz.registry", "authz", "permission-denied" if answer.status == 403
                        else "server-error", f"the workspace model registry answered HTTP "
                        f"{answer.status} {code}: {message}",
                        "ask an admin for access to the model registry, or use Unity Catalog "
                        "(MLFLOW_REGISTRY_URI=databricks-uc)")
        return
    schema = p.environ.get(UC_SCHEMA_VARIABLE, "").strip()
    if not schema:
        answer = client.request("GET", "/api/2.1/unity-catalog/catalogs?max_results=20",
                                what="Unity Catalog catalogs")
        code, message = error_of(answer)
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            p.note_fail("authz.registry", "authz", "permission-denied" if code ==
                        "PERMISSION_DENIED" else "server-error",
                        f"Unity Catalog ({registry}, {source}) answered HTTP {answer.status} "
                        f"{code}: {message}", "attach the workspace to a Unity Catalog "
                        "metastore, or use the workspace registry: "
                        "MLFLOW_REGISTRY_URI=databricks")
            return
        names = [str(c.get("name")) for c in body.get("catalogs") or [] if isinstance(c, dict)]
        p.ok("authz.registry", "authz", f"models register into Unity Catalog ({registry}, "
             f"{source}); catalogs visible to {principal}: {', '.join(names) or 'none'}. "
             f"Registering needs USE CATALOG, USE SCHEMA and CREATE MODEL on the target "
             f"(set {UC_SCHEMA_VARIABLE}=catalog.schema to check them)")
        return
    catalog, _, schema_name = schema.partition(".")
    if not schema_name:
        p.note_fail("authz.registry", "authz", "config-invalid",
                    f"{UC_SCHEMA_VARIABLE}={schema} is not catalog.schema",
                    f"set {UC_SCHEMA_VARIABLE}=<catalog>.<schema>")
        return
    if p.read_only:
        _uc_effective(p, client, catalog, schema_name, principal)
        return
    probe = f"{PROBE.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    created = client.request("POST", "/api/2.1/unity-catalog/models", json_body={
        "catalog_name": catalog, "schema_name": schema_name, "name": probe,
        "comment": "cloudtrack doctor probe; safe to delete"}, what="creating a probe model")
    code, message = error_of(created)
    if created.status == 200:
        full = f"{catalog}.{schema_name}.{probe}"
        deleted = client.request("DELETE", f"/api/2.1/unity-catalog/models/{full}",
                                 what="deleting the probe model")
        if deleted.status == 200:
            p.ok("authz.registry", "authz", f"created and deleted the probe model {full} in "
                 f"Unity Catalog ({registry}, {source}): USE CATALOG, USE SCHEMA and CREATE "
                 "MODEL are granted")
        else:
            p.warn("authz.registry", "authz", "permission-denied",
                   f"created the probe model {full} but deleting it answered HTTP "
                   f"{deleted.status}: it is left behind",
                   f"drop it: DROP MODEL {full} (or `databricks registered-models delete {full}`)")
        return
    _uc_denied(p, code, message, created.status, catalog, schema_name, principal)


def _uc_effective(p: Probe, client: _Client, catalog: str, schema: str, principal: str) -> None:
    have: set[str] = set()
    for kind, full in (("catalog", catalog), ("schema", f"{catalog}.{schema}")):
        answer = client.request(
            "GET", f"/api/2.1/unity-catalog/effective-permissions/{kind}/{full}?principal="
            + urllib.parse.quote(principal), what=f"effective permissions on {kind} {full}")
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            code, message = error_of(answer)
            _uc_denied(p, code, message, answer.status, catalog, schema, principal)
            return
        for assignment in body.get("privilege_assignments") or []:
            for privilege in assignment.get("privileges") or []:
                have.add(f"{kind}:{privilege.get('privilege')}")
    needed = [("catalog", "USE_CATALOG"), ("schema", "USE_SCHEMA"), ("schema", "CREATE_MODEL")]
    missing = [(k, n) for k, n in needed if f"{k}:{n}" not in have
               and f"{k}:ALL_PRIVILEGES" not in have
               and not (k == "schema" and "catalog:ALL_PRIVILEGES" in have)]
    if missing:
        k, n = missing[0]
        _uc_denied(p, "PERMISSION_DENIED", f"User does not have {n.replace('_', ' ')} on "
                   f"{k.capitalize()} '{catalog if k == 'catalog' else catalog + '.' + schema}'"
                   " (effective permissions)", 403, catalog, schema, principal)
        return
    p.ok("authz.registry", "authz", f"{principal} holds USE CATALOG on {catalog}, USE SCHEMA and "
         f"CREATE MODEL on {catalog}.{schema} (effective permissions)")


def _uc_denied(p: Probe, code: str, message: str, status: int, catalog: str, schema: str,
               principal: str) -> None:
    m = _PRIVILEGE.search(message)
    if code == "PERMISSION_DENIED" or status == 403:
        if m:
            privilege = m.group(1).upper().replace("_", " ").strip()
            kind, securable = m.group(2).upper(), m.group(3)
        else:
            privilege, kind, securable = "USE CATALOG", "CATALOG", catalog
        fix = (f"ask the owner of {kind.lower()} {securable} (or a metastore admin) to run: "
               f"GRANT {privilege} ON {kind} {securable} TO `{principal}`")
        if privilege != "USE CATALOG":
            fix += f" (registering also needs USE CATALOG on {catalog})"
        p.note_fail("authz.registry", "authz", "permission-denied",
                    f"the Unity Catalog registry refuses {principal}: {privilege} on "
                    f"{kind.lower()} {securable} is missing ({code}: {message})", fix)
        return
    if code in ("CATALOG_DOES_NOT_EXIST", "SCHEMA_DOES_NOT_EXIST", "NOT_FOUND") or status == 404:
        p.note_fail("authz.registry", "authz", "container-not-found",
                    f"Unity Catalog has no schema {catalog}.{schema} ({code}: {message})",
                    f"check {UC_SCHEMA_VARIABLE}, or create it: CREATE SCHEMA {catalog}.{schema}")
        return
    p.note_fail("authz.registry", "authz", "server-error",
                f"the Unity Catalog registry answered HTTP {status} {code}: {message}",
                "retry; check the workspace's status")
