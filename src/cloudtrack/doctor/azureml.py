"""The doctor of an Azure Machine Learning workspace or registry (``azureml://`` tracking and
registry URIs).

MLflow reaches Azure ML only through the ``azureml-mlflow`` plugin, which turns
``azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/<sub>/resourceGroups/<rg>/
providers/Microsoft.MachineLearningServices/workspaces/<ws>`` into REST calls to
``https://<netloc>/mlflow/v2.0/<the workspace's resource id>/api/2.0/mlflow/…`` (v1.0 with
MLflow 1.x), signed with a token for Azure Resource Manager (``https://management.azure.com/
.default``) from ``DefaultAzureCredential``'s chain.  Checked, each with its fix:

* the URI's form (region, subscription, resource group, workspace);
* the plugin: without it MLflow answers "unsupported URI 'azureml://…'" — reported, and the
  rest is diagnosed anyway, since none of it needs the plugin;
* the regional endpoint's name, port and TLS — a name that resolves to a private-endpoint
  address or through a ``privatelink`` alias is said to be a private-link workspace, so that a
  failure to reach it reads as "outside the virtual network", not as bad credentials;
* what answers there unauthenticated: Azure ML's 401 Bearer challenge (it names the
  subscription's tenant) or a refusal of this network (private link, public access disabled);
* the credential chain (every credential tried and why it was skipped), the token's tenant,
  principal, audience and expiry, and the token's tenant against the subscription's;
* the workspace's answer to MLflow's ``experiments/search`` with the token: refused tokens by
  Azure's error code, a missing role by the action Azure names, with the ``az role assignment
  create`` command scoped to the workspace.

A registry URI (``…/registries/<name>``, what ``mlflow.set_registry_uri`` takes for an Azure ML
registry shared by workspaces) goes through the same checks, its last one MLflow's
``registered-models/search`` instead.

Inside an Azure ML job (command job, pipeline step) the doctor says which run and workspace the
job belongs to, signs as azureml-mlflow would there — with the job's run token when the
platform's MLflow variables are all set, else with the job's identity through the chain — and
checks what goes wrong only there: an expired run token, a run token sent to another workspace
than its run's, a ``MLFLOW_TRACKING_URI`` changed by hand, a job identity without the role.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import re
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cloudtrack.config import redact_uri
from cloudtrack.config import tls as trust
from cloudtrack.credentials import Credential, decode_jwt, jwt_expiry
from cloudtrack.credentials.azure import AzureCredentials, chain_error
from cloudtrack.doctor import net
from cloudtrack.doctor.answer import Answer, call_endpoint
from cloudtrack.doctor.core import Probe, ProbeTimeout, Stop, check_expiry, duration

#: The plugin MLflow needs for ``azureml://`` URIs, and how MLflow finds it.
PLUGIN = "azureml-mlflow"
INSTALL = f"pip install {PLUGIN}"
ENTRY_POINT_GROUP = "mlflow.tracking_store"
#: The role that lets a principal log runs to a workspace, and use a registry's models.
ROLE = "AzureML Data Scientist"
REGISTRY_ROLE = "AzureML Registry User"
TLS = net.TlsHints.of(trust.MLFLOW_SERVER)
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
REGISTRY_SEARCH = "/api/2.0/mlflow/registered-models/search?max_results=1"

FORM = ("azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/<subscription id>/"
        "resourceGroups/<resource group>/providers/Microsoft.MachineLearningServices/"
        "workspaces/<workspace>")
FORM_FIX = (f"use the workspace's tracking URI, of the form {FORM}; `az ml workspace show "
            "--name <workspace> --resource-group <group> --query mlflow_tracking_uri -o tsv` "
            "prints it")


@dataclass(frozen=True)
class Cloud:
    """An Azure cloud: the suffix of its Azure ML hosts, its Resource Manager scope and its
    Entra ID authority (azureml-mlflow's ``_get_default_scope``/``_get_authority``)."""

    name: str
    suffix: str
    scope: str
    authority: str


CLOUDS = (
    Cloud("AzureCloud", "api.azureml.ms", "https://management.azure.com/.default",
          "login.microsoftonline.com"),
    Cloud("AzureChinaCloud", "api.ml.azure.cn", "https://management.chinacloudapi.cn/.default",
          "login.chinacloudapi.cn"),
    Cloud("AzureUSGovernment", "api.ml.azure.us",
          "https://management.usgovcloudapi.net/.default", "login.microsoftonline.us"),
)
_AUDIENCES = {"https://management.azure.com", "https://management.core.windows.net",
              "https://management.chinacloudapi.cn", "https://management.core.chinacloudapi.cn",
              "https://management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net"}

_PATH = re.compile(r"^/mlflow/v(?P<version>\d+\.\d+)/subscriptions/(?P<sub>[^/]+)/"
                   r"resourceGroups/(?P<rg>[^/]+)/providers/"
                   r"Microsoft\.MachineLearningServices/(?P<kind>workspaces|registries)/"
                   r"(?P<ws>[^/]+)/?$",
                   re.IGNORECASE)
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_TENANT_IN_URI = re.compile(r"https://[^/\"]+/([0-9a-f-]{36}|[a-z0-9.-]+\.onmicrosoft\.com)",
                            re.IGNORECASE)
#: What Azure ML answers when its network rules, not an identity, refuse the request.
_NETWORK_REFUSAL = re.compile(r"(private link|privatelink|public network access|public access|"
                              r"not allowed from this network|ip address .* not allowed|"
                              r"firewall)", re.IGNORECASE)


@dataclass(frozen=True)
class Workspace:
    """What an ``azureml://`` URI names."""

    uri: str
    host: str
    port: int
    region: str
    #: Set for a private-link workspace's own host name (``<id>.workspace.<region>…``).
    workspace_id: str | None
    cloud: Cloud
    subscription: str
    resource_group: str
    name: str
    uri_version: str
    #: ``workspaces`` (a tracking URI) or ``registries`` (a registry URI).
    kind: str = "workspaces"

    @property
    def registry(self) -> bool:
        return self.kind.lower() == "registries"

    @property
    def noun(self) -> str:
        return "registry" if self.registry else "workspace"

    @property
    def search(self) -> str:
        """MLflow's search the last check sends, and what it is called."""
        return REGISTRY_SEARCH if self.registry else SEARCH

    @property
    def searched(self) -> str:
        return "registered-models/search" if self.registry else "experiments/search"

    @property
    def role(self) -> str:
        return REGISTRY_ROLE if self.registry else ROLE

    @property
    def show(self) -> str:
        """The command that prints the URI again."""
        if self.registry:
            return (f"az ml registry show --name {self.name} --resource-group "
                    f"{self.resource_group} --query mlflow_registry_uri -o tsv")
        return ("az ml workspace show --name <workspace> --resource-group <group> "
                "--subscription <id> --query mlflow_tracking_uri -o tsv")

    @property
    def netloc(self) -> str:
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        # azureml-mlflow: host_url = "https://" + parsed_url.netloc.
        return f"https://{self.netloc}"

    @property
    def resource_id(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/"
                f"providers/Microsoft.MachineLearningServices/{self.kind}/{self.name}")

    def api_base(self, version: str) -> str:
        return f"{self.endpoint}/mlflow/v{version}{self.resource_id}"


def parse(uri: str) -> Workspace | str:
    """The workspace (or registry) ``uri`` names, or what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port or 443
    except ValueError as e:
        return f"it is not a valid URI ({e})"
    host = (parts.hostname or "").lower()
    if not host:
        return "it has no host (the regional endpoint, like eastus.api.azureml.ms)"
    cloud = next((c for c in CLOUDS if host.endswith("." + c.suffix)), None)
    if cloud is None:
        return (f"its host {host!r} is not an Azure ML regional endpoint "
                f"(<region>.{CLOUDS[0].suffix})")
    head = host[:-len(cloud.suffix) - 1]
    m = re.fullmatch(r"(?:(?P<id>[0-9a-f-]{36})\.workspace\.)?(?P<region>[a-z0-9-]+)", head)
    if m is None:
        return f"its host {host!r} does not name a region (<region>.{cloud.suffix})"
    path = _PATH.match(urllib.parse.unquote(parts.path))
    if path is None:
        return "its path does not name a workspace (or a registry)"
    if not _GUID.match(path["sub"]):
        return f"the subscription {path['sub']!r} is not a subscription id (a GUID)"
    return Workspace(uri, host, port, m["region"], m["id"], cloud, path["sub"], path["rg"],
                     path["ws"], path["version"], path["kind"].lower())


def plugin_api_version() -> tuple[str, str]:
    """The ``/mlflow/vX.Y`` azureml-mlflow sends to (it decides by MLflow's major version,
    whatever the URI says), and MLflow's version."""
    try:
        mlflow_version = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        try:
            mlflow_version = importlib.metadata.version("mlflow-skinny")
        except importlib.metadata.PackageNotFoundError:
            return "2.0", "not installed"
    major = mlflow_version.split(".")[0]
    return ("1.0" if major == "1" else "2.0"), mlflow_version


# -- the diagnosis -------------------------------------------------------------------------------


def diagnose(p: Probe, uri: str, origin: str) -> None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)
    # Workspace.get_mlflow_tracking_uri() of the old SDK put a bearer token in ?auth=.
    p.secret(*(v for name in ("auth", "token") for v in query.get(name, ())))
    found = parse(uri)
    if isinstance(found, str):
        p.fail("config.uri", "config", "config-invalid",
               f"{redact_uri(uri)} (from {origin}) is not an Azure ML tracking URI: {found}",
               FORM_FIX)
    ws = found
    where = f"{ws.noun} {ws.name!r} in resource group {ws.resource_group!r}, subscription " \
        f"{ws.subscription}, region {ws.region}"
    if ws.workspace_id:
        where += f" (private-link host of workspace id {ws.workspace_id})"
    p.ok("config.uri", "config", f"Azure ML {'registry' if ws.registry else 'tracking'} URI "
         f"(from {origin}): {where}"
         + (f"; {ws.cloud.name}" if ws.cloud is not CLOUDS[0] else ""))
    if "auth" in query:
        p.warn("config.uri-token", "config", "config-invalid",
               "the URI carries a token (?auth=, from the old SDK's get_mlflow_tracking_uri): "
               "azureml-mlflow ignores it and signs with DefaultAzureCredential's chain",
               "drop the query from the URI; it holds a secret that ends up in logs")
    _plugin(p)
    job = job_of(p.environ)
    missing = run_token_missing(p.environ)
    if job is not None:
        _job(p, job)
    version, mlflow_version = plugin_api_version()
    verify = trust.MLFLOW_SERVER.verify(p.environ)
    narrowed = p.environ.get("AZURE_TOKEN_CREDENTIALS")
    tls = ("verification off (MLFLOW_TRACKING_INSECURE_TLS)" if verify is False
           else f"CA {verify}" if isinstance(verify, str) else "default CA bundle")
    signer = ("the run token in MLFLOW_TRACKING_TOKEN" if not missing else
              f"DefaultAzureCredential for {ws.cloud.scope}"
              + (f", chain narrowed by AZURE_TOKEN_CREDENTIALS={narrowed}" if narrowed else "")
              + (f", tenant from AZURE_TENANT_ID={p.environ['AZURE_TENANT_ID']}"
                 if p.environ.get("AZURE_TENANT_ID") else ""))
    p.ok("config.settings", "config",
         f"MLflow's requests go to {ws.api_base(version)}/api/2.0/mlflow/… (azureml-mlflow "
         f"uses /mlflow/v{version} with MLflow {mlflow_version}); tokens: {signer}; TLS: {tls}")

    # The token comes from Entra ID, not from the workspace: it is checked even when the
    # workspace cannot be reached, so that one run tells everything.
    stopped: Stop | None = None
    answer: Answer | None = None
    private = False
    try:
        private = _network(p, ws, verify)
        answer = _unauthenticated(p, ws, version, verify, private)
    except Stop as e:
        stopped = e
    tenant = _challenge_tenant(answer) if answer is not None else None
    token = _token(p, ws, tenant, job, missing) if missing else _run_token(p, ws, job)
    if stopped is not None:
        raise stopped
    assert answer is not None
    if token.run:
        _run_token_workspace(p, ws, job, uri, origin)
    _tenant_check(p, ws, token, tenant)
    _authorized(p, ws, version, verify, token, tenant, job)


# -- the plugin --------------------------------------------------------------------------------


def _plugin(p: Probe) -> None:
    """Is azureml-mlflow installed where MLflow would find it (its ``mlflow.tracking_store``
    entry point ``azureml``)?  A failure that does not end the chain."""
    try:
        points = [e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                  if e.name == "azureml"]
    except Exception:  # a broken distribution's metadata must not end the diagnosis
        points = []
    try:
        spec = importlib.util.find_spec("azureml.mlflow")
    except (ImportError, ValueError):
        spec = None
    if points:
        dist = getattr(points[0], "dist", None)
        name = getattr(dist, "name", None) or PLUGIN
        version = getattr(dist, "version", None) or "?"
        where = f" (module at {spec.origin})" if spec is not None and spec.origin else ""
        if spec is None:
            p.note_fail("config.extra", "config", "dependency-missing",
                        f"{name} {version} registers MLflow's 'azureml' tracking store, but its "
                        "module azureml.mlflow cannot be found: a broken install",
                        f"reinstall it: pip install --force-reinstall {PLUGIN}")
            return
        p.ok("config.extra", "config", f"{name} {version} is installed: MLflow's 'azureml' "
             f"tracking store ({points[0].value}){where}")
        return
    if spec is not None:
        p.note_fail("config.extra", "config", "dependency-missing",
                    f"the module azureml.mlflow is importable ({spec.origin}) but no "
                    f"distribution registers MLflow's '{ENTRY_POINT_GROUP}' entry point "
                    "'azureml': MLflow still answers \"unsupported URI 'azureml://…'\"",
                    f"reinstall it so that its metadata is found: pip install "
                    f"--force-reinstall {PLUGIN}")
        return
    p.note_fail("config.extra", "config", "dependency-missing",
                f"{PLUGIN}, the plugin MLflow needs for azureml:// URIs, is not installed: "
                "MLflow fails with UnsupportedModelRegistryStoreURIException / \"unsupported "
                "URI 'azureml://…'\" (the checks below do not need it)",
                f"{INSTALL} (in the environment that runs MLflow)")


# -- the network -------------------------------------------------------------------------------


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_private and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def _aliases(host: str, p: Probe) -> list[str]:
    """The names ``host`` resolves through (its CNAME chain, as the resolver reports it)."""
    try:
        canonical, aliases, _ = p.call(lambda: socket.gethostbyname_ex(host),
                                       what=f"looking up {host}'s aliases", seconds=2.0)
    except (OSError, ProbeTimeout, UnicodeError):
        return []
    return [n.lower() for n in [canonical, *aliases] if n and n.lower() != host]


_PRIVATE_FIX = ("connect from the {noun}'s virtual network (a VPN or peered network, a "
                "compute instance), with the private DNS zone privatelink.api.azureml.ms "
                "linked to the DNS this machine uses; or let the {noun} accept public "
                "traffic: `az ml {noun} update --name {ws} --resource-group {rg} "
                "--public-network-access Enabled`")


def _network(p: Probe, ws: Workspace, verify: bool | str) -> bool:
    """dns, tcp and tls of the regional endpoint; True when it is a private endpoint."""
    if net.proxy_for(ws.endpoint, p.environ):
        net.probe_endpoint(p, ws.endpoint, verify=verify, hints=TLS, what=f"the {ws.noun}")
        return False
    private_fix = _PRIVATE_FIX.format(ws=ws.name, rg=ws.resource_group, noun=ws.noun)
    start = time.monotonic()
    try:
        addresses = net.lookup(ws.host, ws.port, p.step_timeout())
    except net.NetFailure as f:
        p.fail("dns", "dns", f.cause, f.summary,
               f"check the network and DNS; a private-link {ws.noun}'s name resolves only "
               f"through its private DNS zone — {private_fix}")
    took = (time.monotonic() - start) * 1000
    ips = sorted({str(a[3][0]) for a in addresses})
    aliases = _aliases(ws.host, p)
    privatelink = any("privatelink" in a for a in aliases)
    private_ips = [ip for ip in ips if _is_private(ip)]
    private = bool(private_ips) or privatelink
    via = f" via {', '.join(aliases[:3])}" if aliases else ""
    note = ""
    if private_ips:
        note = (f": {', '.join(private_ips)} is a private address — the {ws.noun}'s private "
                "endpoint (private link), reachable only from its virtual network")
    elif privatelink:
        note = (f": a private-link {ws.noun} resolved through public DNS (its public address: "
                f"it answers only if the {ws.noun} allows public network access)")
    p.ok("dns", "dns", f"{ws.host} resolves to {', '.join(ips[:4])}{via} ({took:.0f} ms){note}")
    try:
        start = time.monotonic()
        sock = net.connect(addresses, p.step_timeout(), ws.host, ws.port)
    except net.NetFailure as f:
        if private_ips:
            p.fail("tcp", "tcp", f.cause,
                   f"{f.summary}; {ws.host} is the private endpoint {', '.join(private_ips)}: "
                   f"this machine is outside the {ws.noun}'s virtual network (or the VPN is "
                   "down) — not a credential problem", private_fix)
        p.fail("tcp", "tcp", f.cause, f.summary,
               f.fix or "check the network, the VPN and any outbound firewall (port 443)")
    peer = sock.getpeername()
    p.ok("tcp", "tcp", f"connected to {ws.netloc} ({peer[0]}) in "
         f"{(time.monotonic() - start) * 1000:.0f} ms")
    address = next(a for a in addresses if a[0] == sock.family)
    try:
        info = net.handshake(sock, address, ws.host, ws.port, verify, p.step_timeout(), TLS)
    except net.NetFailure as f:
        fix = f.fix
        if f.cause == "tls-mismatch":
            fix = (f"a firewall or an intercepting proxy cuts TLS to the {ws.noun}: allow "
                   f"{ws.host}:443 outbound, or set HTTPS_PROXY and trust its CA "
                   "(REQUESTS_CA_BUNDLE)")
        p.fail("tls", "tls", f.cause, f.summary, fix)
    p.ok("tls", "tls", f"TLS with {ws.netloc}: {info}")
    return private


def _request(p: Probe, url: str, verify: bool | str, token: str | None, what: str) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return call_endpoint(
        p, lambda: Answer.of(net.http_request("GET", url, environ=p.environ, verify=verify,
                                              timeout=p.step_timeout(), headers=headers,
                                              allow_redirects=False)),
        what=what, shown=redact_uri(url.split("?")[0]), hints=TLS,
        timeout_fix="the workspace endpoint accepted the connection but did not answer: check "
                    "a proxy or firewall in between; retry later",
        network_fix="check the network path to the workspace (firewall, proxy, VPN)")


def _error(answer: Answer) -> tuple[str, str]:
    """Azure's error code and message (``{"error": {"code", "message"}}``), or MLflow's."""
    body = answer.json()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code") or ""), str(error.get("message") or "")
        if "error_code" in body:
            return str(body["error_code"]), str(body.get("message") or "")
    return "", answer.text


def _challenge_tenant(answer: Answer | None) -> str | None:
    """The tenant a 401's ``WWW-Authenticate: Bearer authorization_uri=…`` names."""
    if answer is None:
        return None
    header = answer.headers.get("www-authenticate", "")
    m = re.search(r'authorization_uri="?([^",]+)', header, re.IGNORECASE)
    if not m:
        return None
    t = _TENANT_IN_URI.match(m.group(1))
    return t.group(1).lower() if t else None


def _network_refusal(p: Probe, ws: Workspace, answer: Answer, check: str, layer: str,
                     private: bool, signed: bool) -> None:
    code, message = _error(answer)
    said = f"HTTP {answer.status}" + (f" {code}" if code else "") + (f": {message}"
                                                                     if message else "")
    p.fail(check, layer, "permission-denied",
           f"the {ws.noun} refuses requests from this network ({said})"
           + ("" if signed else " — the request carried no credentials, so it is the "
              f"{ws.noun}'s network rules (private link, public network access disabled, IP "
              "allow-list), not an identity, that refuse it")
           + (": this machine reached a public address, not the private endpoint"
              if not private else ""),
           _PRIVATE_FIX.format(ws=ws.name, rg=ws.resource_group, noun=ws.noun)
           + f"; or add this machine's public IP to the {ws.noun}'s allowed addresses")


def _unauthenticated(p: Probe, ws: Workspace, version: str, verify: bool | str,
                     private: bool) -> Answer:
    """What answers the MLflow API without credentials: Azure ML's challenge, or else."""
    url = ws.api_base(version) + ws.search
    answer = _request(p, url, verify, None, f"an unauthenticated {ws.searched}")
    code, message = _error(answer)
    if answer.status in (403, 502) and _NETWORK_REFUSAL.search(message or answer.text):
        _network_refusal(p, ws, answer, "http.answer", "http", private, signed=False)
    if answer.status >= 500:
        p.fail("http.answer", "http", "server-error",
               f"{ws.endpoint} answered HTTP {answer.status}"
               + (f" {code}: {message}" if code else f": {answer.text}"),
               "Azure ML is failing or overloaded: retry later; check Azure's status page")
    if answer.html:
        p.fail("http.answer", "http", "not-mlflow-server",
               f"{ws.endpoint} answered an HTML page (HTTP {answer.status}), not Azure ML's API: "
               "a proxy or a captive portal answers for it",
               f"check HTTPS_PROXY/NO_PROXY and the network; the host must be the {ws.noun}'s "
               "regional endpoint")
    if answer.status == 403:
        _network_refusal(p, ws, answer, "http.answer", "http", private, signed=False)
    tenant = _challenge_tenant(answer)
    azure = tenant is not None or any(h in answer.headers for h in (
        "x-ms-request-id", "x-aml-cluster", "x-ms-correlation-request-id")) or bool(code)
    if not azure:
        p.fail("http.answer", "http", "endpoint-mismatch",
               f"{ws.endpoint} does not answer like Azure ML (HTTP {answer.status}, "
               f"{answer.headers.get('content-type') or 'no content type'}, no Bearer "
               "challenge, no x-ms-* headers)",
               "check the host of the tracking URI and any proxy in between")
    asked = f"an Entra ID token of tenant {tenant}" if tenant else "credentials"
    p.ok("http.answer", "http", f"{ws.endpoint} answers like Azure ML (unauthenticated "
         f"{ws.searched}: HTTP {answer.status}" + (f" {code}" if code else "")
         + (f", asking for {asked}" if answer.status == 401 else "") + ")")
    net.check_clock(p, answer.headers.get("date"), server="Azure ML")
    return answer


# -- the credential ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    value: str
    claims: Mapping[str, Any]
    #: The job's run token (MLFLOW_TRACKING_TOKEN), not an Entra ID token of the chain.
    run: bool = False


def _token(p: Probe, ws: Workspace, tenant: str | None, job: Job | None = None,
           missing: tuple[str, ...] = ()) -> _Token:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    from cloudtrack.doctor.core import unavailable_cause

    credential = DefaultAzureCredential(authority=ws.cloud.authority)
    login = f"az login --tenant {tenant}" if tenant else "az login"
    try:
        try:
            token = p.call(lambda: credential.get_token(ws.cloud.scope),
                           what="DefaultAzureCredential.get_token")
        except ProbeTimeout as e:
            p.fail("auth.credential", "auth", "network-timeout",
                   f"{e}: a credential of the chain (managed identity endpoint, Azure CLI) "
                   "hangs", f"sign in with `{login}`, or set AZURE_TOKEN_CREDENTIALS to the one "
                   "credential you use (e.g. AzureCliCredential, ManagedIdentityCredential)")
        except ClientAuthenticationError as e:
            error = chain_error(credential, e, ws.cloud.scope)
            fix = (f"sign in with `{login}` (then AZURE_TOKEN_CREDENTIALS=AzureCliCredential "
                   "speeds the chain up), run where a managed or workload identity is "
                   "assigned, or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET for a "
                   "service principal (azureml-mlflow would then fall back to an interactive "
                   "browser or device-code login, which a job cannot answer)")
            if job is not None:
                fix = (f"in a job: keep the run token the platform sets ({_needs(missing)}), "
                       "or assign a managed identity to the compute (its Managed identity "
                       f"setting) and grant it '{ws.role}' on the {ws.noun}")
            p.fail("auth.credential", "auth", unavailable_cause(error), str(error), fix)
        p.secret(token.token)
        used = AzureCredentials._used_credential(credential)
        claims = decode_jwt(token.token)
        why = ""
        if job is not None:
            why = (f"; in this job azureml-mlflow signs with this chain, not with a run token, "
                   f"because {_needs(missing)}")
        p.ok("auth.credential", "auth",
             f"DefaultAzureCredential got a token for {ws.cloud.scope} from {used}{why}")
        _identity(p, ws, token.token, claims, token.expires_on)
        return _Token(token.token, claims)
    finally:
        try:
            credential.close()
        except Exception:  # closing must not hide the diagnosis
            pass


def _who(claims: Mapping[str, Any]) -> str:
    return ", ".join(f"{label} {claims[key]}" for key, label in (
        ("tid", "tenant"), ("appid", "app"), ("azp", "app"), ("oid", "object id"),
        ("upn", "user"), ("unique_name", "user")) if claims.get(key)) \
        or "identity not in the token"


def _identity(p: Probe, ws: Workspace, token: str, claims: Mapping[str, Any],
              expires_on: int | None) -> None:
    who = _who(claims)
    aud = str(claims.get("aud", ""))
    if claims and aud.rstrip("/") not in _AUDIENCES:
        p.note_fail("auth.identity", "auth", "credentials-invalid",
                    f"the token is for audience {aud!r}, not Azure Resource Manager; {who}",
                    f"the credential must request the scope {ws.cloud.scope} (what "
                    "azureml-mlflow requests); a token for another resource is refused")
        return
    from datetime import datetime, timezone

    expires = jwt_expiry(claims) or (datetime.fromtimestamp(expires_on, timezone.utc)
                                     if expires_on else None)
    credential = Credential("token", "DefaultAzureCredential", "the credential chain",
                            expires=expires, renews=True)
    what = f"{who}; audience {aud or '?'}; the token"
    left = credential.seconds_left()
    if expires is None or left is None:
        p.ok("auth.identity", "auth", f"{what} (no expiry given)")
    elif left <= 0:
        # Not the end: the workspace's own answer to it is shown too.
        p.note_fail("auth.identity", "auth", "token-expired",
                    f"{what} expired {duration(left)} ago ({expires:%Y-%m-%d %H:%M:%S} UTC)",
                    "a stale token cache or a broken identity endpoint: `az account clear && "
                    "az login`, or restart the managed identity's host")
    else:
        check_expiry(p, "auth.identity", credential, what=what, fix="renew the token")


def _tenant_check(p: Probe, ws: Workspace, token: _Token, tenant: str | None) -> None:
    tid = str(token.claims.get("tid", "")).lower()
    if not tenant or not tid or not _GUID.match(tenant):
        return
    if tid == tenant:
        p.ok("auth.tenant", "auth", f"the token's tenant {tid} is the one the {ws.noun}'s "
             "subscription belongs to (its 401 challenge names it)")
        return
    p.note_fail("auth.tenant", "auth", "credentials-invalid",
                f"the token is from tenant {tid}, but the {ws.noun}'s subscription belongs to "
                f"tenant {tenant} (named by its 401 challenge): the {ws.noun} refuses tokens "
                "of another tenant",
                f"get the token from the {ws.noun}'s tenant: `az login --tenant {tenant}`, or "
                f"AZURE_TENANT_ID={tenant} for a service principal (a guest account must be "
                "invited to that tenant)")


# -- the workspace's answer ----------------------------------------------------------------------


def _authorized(p: Probe, ws: Workspace, version: str, verify: bool | str, token: _Token,
                tenant: str | None, job: Job | None = None) -> None:
    url = ws.api_base(version) + ws.search
    answer = _request(p, url, verify, token.value, f"{ws.searched} with the token")
    code, message = _error(answer)
    said = f"HTTP {answer.status}" + (f" {code}" if code else "") + (f": {message}"
                                                                     if message else "")
    oid = str(token.claims.get("oid") or token.claims.get("appid") or "<object id>")
    if answer.status == 401 and token.run:
        low = f"{code} {message}".lower()
        p.fail("auth.accepted", "auth", "token-expired" if "expired" in low
               else "credentials-invalid",
               f"the {ws.noun} refused the job's run token (MLFLOW_TRACKING_TOKEN, run "
               f"{job.run_id if job else p.environ.get('MLFLOW_RUN_ID', '?')}): {said}",
               RUN_TOKEN_FIX.format(role=ws.role, noun=ws.noun))
    if answer.status == 401:
        low = f"{code} {message} {answer.headers.get('www-authenticate', '')}".lower()
        if "expired" in low:
            p.fail("auth.accepted", "auth", "token-expired",
                   f"the {ws.noun} refused the token as expired ({said})",
                   "renew the credential (`az login`); a job that outlives a token must get "
                   "a new one (azureml-mlflow asks its credential again on every request)")
        if "tenant" in low or "wrong issuer" in low:
            named = re.search(r"must match the tenant 'https://[^/']+/([^/']+)", message)
            right = named.group(1) if named else (tenant or "<the subscription's tenant>")
            p.fail("auth.accepted", "auth", "credentials-invalid",
                   f"the {ws.noun} refused a token of another tenant ({said})",
                   f"`az login --tenant {right}`, or AZURE_TENANT_ID={right}")
        if "audience" in low:
            p.fail("auth.accepted", "auth", "credentials-invalid",
                   f"the {ws.noun} refused the token's audience ({said})",
                   f"request tokens for {ws.cloud.scope}")
        p.fail("auth.accepted", "auth", "credentials-invalid",
               f"the {ws.noun} refused the token of {_who(token.claims)} ({said})",
               "sign in again (`az account clear && az login`), or check that the credential "
               "belongs to this cloud and tenant")
    if answer.status == 403 and _NETWORK_REFUSAL.search(message or answer.text):
        _network_refusal(p, ws, answer, "authz.read", "authz", False, signed=True)
    whose = "the job's run token" if token.run else f"the token of {_who(token.claims)}"
    p.ok("auth.accepted", "auth", f"the {ws.noun} accepted {whose}"
         + ("" if answer.status == 200 else f" (HTTP {answer.status}, not 401)"))
    if answer.status == 403:
        action = re.search(r"perform action '([^']+)'", message)
        needed = action.group(1) if action else (
            "Microsoft.MachineLearningServices/registries/read" if ws.registry else
            "Microsoft.MachineLearningServices/workspaces/experiments/read")
        principal = "the job's run token" if token.run else f"object id {oid}"
        if job is not None and not token.run:
            principal = f"the job's identity (object id {oid})"
        grant = (f"grant '{ws.role}' on the {ws.noun}: `az role assignment create --assignee "
                 f"{oid} --role \"{ws.role}\" --scope {ws.resource_id}`")
        if token.run:
            fix = (f"the run token acts for the job's run only: unset MLFLOW_TRACKING_TOKEN so "
                   "that azureml-mlflow signs with the job's managed identity, and grant that "
                   f"identity '{ws.role}' on the {ws.noun} (scope {ws.resource_id})")
        elif job is not None:
            fix = (f"{grant} (the compute's managed identity), then resubmit the job"
                   + _identity_hint(p.environ, token.claims))
        else:
            fix = f"{grant}, then get a new token (`az account clear && az login`)"
        p.fail("authz.read", "authz", "permission-denied",
               f"the {ws.noun} refuses {principal} the action {needed} ("
               + (f"HTTP 403 {code}" if action else said) + "): the "
               f"principal has no role on {ws.noun} {ws.name!r} that allows it — a role on "
               f"another scope (another {ws.noun}, resource group or subscription) does not "
               "count, nor Reader for writes; a new assignment takes a few minutes", fix)
    if answer.status == 404 and code in ("ResourceNotFound", "ResourceGroupNotFound",
                                         "SubscriptionNotFound", "WorkspaceNotFound",
                                         "RegistryNotFound"):
        p.fail("authz.read", "authz", "container-not-found",
               f"{ws.noun} {ws.name!r} does not exist in resource group {ws.resource_group!r} "
               f"of subscription {ws.subscription} — or it is another tenant's ({said})",
               f"copy the {'registry' if ws.registry else 'tracking'} URI again: `{ws.show}`")
    if answer.status >= 500:
        p.fail("authz.read", "authz", "server-error", f"the {ws.noun} answered {said}",
               "Azure ML is failing: retry later; check Azure's status page")
    body = answer.json()
    if answer.status != 200 or not isinstance(body, dict):
        p.fail("authz.read", "authz", "not-mlflow-server",
               f"{ws.searched} did not answer MLflow's JSON ({said})",
               f"check the URI (`{ws.show}`)")
    what = "registered models" if ws.registry else "experiments"
    count = len(body.get("registered_models" if ws.registry else "experiments") or [])
    p.ok("authz.read", "authz", f"may read the {what} of {ws.noun} {ws.name!r} "
         f"({'at least one' if count else 'none yet'} visible); "
         + ("registering also needs write access" if ws.registry else
            "logging also needs write access")
         + f", which '{ws.role}' grants (not probed: the doctor creates nothing in a "
         f"{ws.noun})")


# -- inside an Azure ML job ----------------------------------------------------------------------
#
# What this section relies on, and where it was read (facts only; nothing copied):
# * azureml-mlflow 1.62.0.post6 (the PyPI wheel), azureml/mlflow/_internal/
#   service_context_loader.py and utils.py: when MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN,
#   MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID or _NAME are all present (presence only, whatever
#   their values), every azureml:// tracking or registry URI is signed with
#   MLFLOW_TRACKING_TOKEN (AzureMLTokenAuthentication), the workspace taken from the URI, not
#   from the token; otherwise with DefaultAzureCredential's credentials followed by interactive
#   ones.  It reads neither DEFAULT_IDENTITY_CLIENT_ID nor AZUREML_OBO_ENABLED, and has no
#   on-behalf-of credential.
# * the same wheel, _common/_authentication/azureml_token_authentication.py: a run token is
#   good only in the context of its submitted run; its expiry is the JWT's `exp` (azureml-core
#   also reads AZUREML_RUN_TOKEN_EXPIRY, a date or epoch seconds, beside AZUREML_RUN_TOKEN); a
#   daemon thread of the plugin renews it about 95 s before it expires from the run history
#   service (…/experimentids/<id>/runs/<run>/token), signing that request with the token itself
#   — so only in the process holding it, and never once it has expired.
# * azureml-pipeline-steps, DatabricksStep's docstring, and azureml-core's
#   AzureMLTokenAuthentication: a run's process gets AZUREML_RUN_TOKEN, AZUREML_RUN_TOKEN_EXPIRY,
#   AZUREML_RUN_ID, AZUREML_ARM_SUBSCRIPTION, AZUREML_ARM_RESOURCEGROUP,
#   AZUREML_ARM_WORKSPACE_NAME, AZUREML_ARM_PROJECT_NAME (the experiment), AZUREML_SERVICE_ENDPOINT.
# * Azure ML docs, "Configure MLflow for Azure Machine Learning": jobs on compute clusters get
#   the tracking URI configured automatically; MLflow tracking needs workspaces/experiments/*
#   and workspaces/jobs/*, which 'AzureML Data Scientist' grants.
# * Azure ML docs, "Set up authentication between Azure ML and other services" (compute
#   cluster): code in a job reaches the compute's default managed identity with
#   ManagedIdentityCredential(client_id=DEFAULT_IDENTITY_CLIENT_ID).
# * azure-identity 1.27 (_credentials/azure_ml.py, managed_identity.py) and MSAL 1.39
#   (managed_identity.py): Azure ML compute's identity endpoint is MSI_ENDPOINT with the header
#   `secret: MSI_SECRET`; DefaultAzureCredential takes a user-assigned identity's client id from
#   AZURE_CLIENT_ID only.
# * promptflow's IdentityEnvironmentVariable (copied from mldesigner): AZUREML_OBO_ENABLED
#   marks a job run as the submitting user (identity type user_identity); the Azure ML REST
#   reference (JobBase identity): AmlToken (the default), ManagedIdentity, UserIdentity.

#: What azureml-mlflow needs present to sign with the run token (the last: either name).
RUN_TOKEN_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID",
                       "MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME")

RUN_TOKEN_FIX = (
    "a run token is issued when the job starts, and azureml-mlflow renews it shortly before it "
    "expires, in memory, only in the process that holds it and only while it is still valid: "
    "do not set MLFLOW_TRACKING_TOKEN by hand nor hand it to other processes or a resumed job "
    "— let each process read the one the platform sets, and resubmit the job for a new one; "
    "for a job that must outlive it, use identity-based access: unset MLFLOW_TRACKING_TOKEN so "
    "that azureml-mlflow signs with the job's managed identity, renewed by its credential, and "
    "grant that identity '{role}' on the {noun}")


@dataclass(frozen=True)
class Job:
    """The Azure ML job this process runs in, as its environment says."""

    run_id: str | None
    experiment: str | None
    subscription: str | None
    resource_group: str | None
    workspace: str | None
    #: The job's ``MLFLOW_TRACKING_URI`` (None when unset).
    tracking_uri: str | None
    #: ``DEFAULT_IDENTITY_CLIENT_ID``: the compute's default managed identity.
    identity_client_id: str | None
    #: ``AZUREML_OBO_ENABLED``: the job runs as the user who submitted it.
    obo: bool
    #: ``MSI_ENDPOINT`` and ``MSI_SECRET``: the compute's managed identity endpoint.
    compute_identity: bool

    @property
    def where(self) -> str:
        if not self.workspace:
            return "its workspace not named (AZUREML_ARM_WORKSPACE_NAME unset)"
        return (f"workspace {self.workspace!r} in resource group {self.resource_group!r}, "
                f"subscription {self.subscription}")

    def owns(self, ws: Workspace) -> bool | None:
        """Is ``ws`` the job's own workspace (None: the environment does not say)?"""
        if not (self.workspace and self.subscription and self.resource_group) or ws.registry:
            return None
        return (self.subscription.lower(), self.resource_group.lower(),
                self.workspace.lower()) == (ws.subscription.lower(), ws.resource_group.lower(),
                                            ws.name.lower())

    @property
    def identity(self) -> str:
        if self.obo:
            return ("the submitting user's identity (AZUREML_OBO_ENABLED; azureml-mlflow has "
                    "no on-behalf-of credential)")
        if self.identity_client_id:
            return (f"the compute's managed identity (DEFAULT_IDENTITY_CLIENT_ID "
                    f"{self.identity_client_id})")
        if self.compute_identity:
            return "the compute's managed identity (MSI_ENDPOINT)"
        return "no managed identity in the environment"


def job_of(environ: Mapping[str, str]) -> Job | None:
    """The job, when the environment is that of an Azure ML job's process."""
    get = environ.get
    if not (get("AZUREML_RUN_ID") or get("AZUREML_ARM_WORKSPACE_NAME")):
        return None
    return Job(
        run_id=get("AZUREML_RUN_ID") or get("MLFLOW_RUN_ID") or None,
        experiment=(get("MLFLOW_EXPERIMENT_NAME") or get("AZUREML_ARM_PROJECT_NAME")
                    or get("MLFLOW_EXPERIMENT_ID") or None),
        subscription=get("AZUREML_ARM_SUBSCRIPTION") or None,
        resource_group=get("AZUREML_ARM_RESOURCEGROUP") or None,
        workspace=get("AZUREML_ARM_WORKSPACE_NAME") or None,
        tracking_uri=get("MLFLOW_TRACKING_URI"),
        identity_client_id=get("DEFAULT_IDENTITY_CLIENT_ID") or None,
        obo=(get("AZUREML_OBO_ENABLED") or "").strip().lower() in ("1", "true", "yes", "on"),
        compute_identity=bool(get("MSI_ENDPOINT") and get("MSI_SECRET")))


def run_token_missing(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Which of :data:`RUN_TOKEN_VARIABLES` are absent: none means azureml-mlflow signs with
    ``MLFLOW_TRACKING_TOKEN`` (inside a job or not)."""
    missing = [v for v in RUN_TOKEN_VARIABLES[:3] if v not in environ]
    if "MLFLOW_EXPERIMENT_ID" not in environ and "MLFLOW_EXPERIMENT_NAME" not in environ:
        missing.append(RUN_TOKEN_VARIABLES[3])
    return tuple(missing)


def _needs(missing: tuple[str, ...]) -> str:
    return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set"


def run_token_expiry(value: str) -> datetime | None:
    """``AZUREML_RUN_TOKEN_EXPIRY``: epoch seconds or a date (azureml-core accepts both)."""
    value = value.strip()
    try:
        return datetime.fromtimestamp(float(value), timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _job(p: Probe, job: Job) -> None:
    """The job's line, and a warning when its MLFLOW_TRACKING_URI is not its workspace."""
    p.ok("config.job", "config", f"inside an Azure ML job: run {job.run_id or '?'}"
         + (f" of experiment {job.experiment!r}" if job.experiment else "")
         + f", {job.where}; the job's identity: {job.identity}")
    if not job.workspace:
        return
    own = (f"workspace {job.workspace!r} (resource group {job.resource_group!r}, subscription "
           f"{job.subscription})")
    fix = ("remove MLFLOW_TRACKING_URI from the job's environment_variables and any "
           "mlflow.set_tracking_uri(...) from its code: the platform sets it to the job's "
           "workspace")
    if job.tracking_uri is None:
        p.warn("config.job-uri", "config", "endpoint-mismatch",
               "MLFLOW_TRACKING_URI is not set in this job: MLflow logs to a local store on "
               f"the compute (./mlruns or sqlite), lost with it, not to {own}", fix)
        return
    found = parse(job.tracking_uri)
    shown = redact_uri(job.tracking_uri)
    if isinstance(found, str):
        p.warn("config.job-uri", "config", "endpoint-mismatch",
               f"the job's MLFLOW_TRACKING_URI is {shown}, not its workspace's: runs go there "
               f"(a local path is lost with the compute), not to {own} — set by hand?", fix)
        return
    if job.owns(found) is False:
        p.warn("config.job-uri", "config", "endpoint-mismatch",
               f"the job's MLFLOW_TRACKING_URI names {found.noun} {found.name!r} (resource "
               f"group {found.resource_group!r}, subscription {found.subscription}), not the "
               f"job's {own}: runs go there — set by hand?", fix)


def _run_token(p: Probe, ws: Workspace, job: Job | None) -> _Token:
    """The credential azureml-mlflow uses when the run token variables are all present."""
    value = p.environ.get("MLFLOW_TRACKING_TOKEN", "")
    p.secret(value, p.environ.get("AZUREML_RUN_TOKEN"))
    run = job.run_id if job else p.environ.get("MLFLOW_RUN_ID")
    why = ("azureml-mlflow signs with it, not with DefaultAzureCredential, because "
           "MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN, MLFLOW_RUN_ID and "
           "MLFLOW_EXPERIMENT_ID/_NAME are all set")
    if not value.strip():
        p.fail("auth.credential", "auth", "credentials-missing",
               f"MLFLOW_TRACKING_TOKEN is set but empty: {why}, so every request goes "
               "unsigned", "unset MLFLOW_TRACKING_TOKEN (the chain then signs: the job's "
               "managed identity), or leave the one the platform sets alone")
    p.ok("auth.credential", "auth", f"the job's run token (MLFLOW_TRACKING_TOKEN) for run "
         f"{run or '?'}: {why}" + ("" if job else " (outside an Azure ML job: set by hand?)"))
    claims = decode_jwt(value)
    expires = jwt_expiry(claims)
    source = "its exp claim"
    if expires is None and p.environ.get("AZUREML_RUN_TOKEN_EXPIRY"):
        expires = run_token_expiry(p.environ["AZUREML_RUN_TOKEN_EXPIRY"])
        source = "AZUREML_RUN_TOKEN_EXPIRY"
    credential = Credential("token", "the run token", "MLFLOW_TRACKING_TOKEN",
                            expires=expires, renews=True)
    what = f"the run token (expiry from {source})"
    left = credential.seconds_left()
    if expires is None or left is None:
        p.ok("auth.identity", "auth", "the run token carries no expiry the doctor can read "
             "(not a JWT with exp, no AZUREML_RUN_TOKEN_EXPIRY)")
    elif left <= 0:
        p.note_fail("auth.identity", "auth", "token-expired",
                    f"{what} expired {duration(left)} ago ({expires:%Y-%m-%d %H:%M:%S} UTC): "
                    "azureml-mlflow cannot renew an expired run token",
                    RUN_TOKEN_FIX.format(role=ws.role, noun=ws.noun))
    else:
        check_expiry(p, "auth.identity", credential, what=what,
                     fix=RUN_TOKEN_FIX.format(role=ws.role, noun=ws.noun),
                     renewer="azureml-mlflow (in the process holding it)")
    return _Token(value, claims, run=True)


def _run_token_workspace(p: Probe, ws: Workspace, job: Job | None, uri: str,
                         origin: str) -> None:
    """A run token is its run's: sent to another workspace it is refused, so it is not sent."""
    if job is None or job.owns(ws) is not False:
        return
    p.fail("consistency.job-token", "consistency", "endpoint-mismatch",
           f"the run token in MLFLOW_TRACKING_TOKEN is run {job.run_id or '?'}'s, of workspace "
           f"{job.workspace!r} (resource group {job.resource_group!r}, subscription "
           f"{job.subscription}), but {redact_uri(uri)} (from {origin}) names workspace "
           f"{ws.name!r} (resource group {ws.resource_group!r}, subscription {ws.subscription}):"
           " azureml-mlflow signs every azureml:// URI with that token while the run token "
           "variables are set, and a run token is good only in its own run's workspace (the "
           "doctor did not send it there)",
           f"to log to the job's workspace, drop the MLFLOW_TRACKING_URI set by hand (the job's "
           "environment_variables, mlflow.set_tracking_uri in its code); to log to "
           f"{ws.name!r} from the job, unset MLFLOW_TRACKING_TOKEN so that azureml-mlflow signs "
           f"with the job's managed identity, and grant that identity '{ROLE}' on {ws.name!r}: "
           f"`az role assignment create --assignee <its object id> --role \"{ROLE}\" --scope "
           f"{ws.resource_id}`")


def _identity_hint(environ: Mapping[str, str], claims: Mapping[str, Any]) -> str:
    """When the token is not the compute's default identity: DefaultAzureCredential reads a
    user-assigned identity's client id from AZURE_CLIENT_ID, not DEFAULT_IDENTITY_CLIENT_ID."""
    default = environ.get("DEFAULT_IDENTITY_CLIENT_ID")
    app = str(claims.get("appid") or claims.get("azp") or "")
    if not default or not app or app.lower() == default.lower() or environ.get("AZURE_CLIENT_ID"):
        return ""
    return (f"; the token is of app {app}, not the compute's default identity {default}: set "
            f"AZURE_CLIENT_ID={default} to sign as that one")
