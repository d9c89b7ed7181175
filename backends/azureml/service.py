"""A stand-in for an Azure Machine Learning workspace's MLflow endpoint, over HTTPS on a free
loopback port, and a token source for ``DefaultAzureCredential`` on loopback.

No emulator of Azure ML exists, so :class:`AzureMLWorkspace` answers the way the regional
endpoint ``https://<region>.api.azureml.ms/mlflow/v2.0/subscriptions/<sub>/resourceGroups/<rg>/
providers/Microsoft.MachineLearningServices/workspaces/<ws>/api/2.0/mlflow/…`` does:

* no ``Authorization`` header: 401 with the Bearer challenge naming the subscription's tenant
  (``WWW-Authenticate: Bearer authorization_uri="https://login.microsoftonline.com/<tid>"`` —
  how Azure tools discover a subscription's tenant);
* a token it did not issue, an expired one, one for another audience or from another tenant:
  401 with Azure Resource Manager's documented error codes (``InvalidAuthenticationToken``,
  ``ExpiredAuthenticationToken``, ``InvalidAuthenticationTokenTenant``) and their messages;
* a principal without a role on the workspace: 403 ``AuthorizationFailed`` naming the action
  (``Microsoft.MachineLearningServices/workspaces/experiments/read``) and the scope, in the
  words of Azure's "Troubleshoot Azure RBAC" page;
* another workspace than its own: 404 ``ResourceNotFound``;
* ``private_link=True``: every request, signed or not, refused with Azure ML's 403
  ``UserError`` "Access to workspace was denied based on workspace private link
  configuration." (what a workspace without public network access answers from outside);
* otherwise ``experiments/search`` answers 200 with MLflow's JSON.

The same path with ``registries/<name>`` in place of ``workspaces/<ws>`` is an Azure ML
registry (:func:`registry_uri`): the same refusals (the action a principal without a role
lacks is then ``Microsoft.MachineLearningServices/registries/read``, written here by analogy:
no captured answer of a registry was at hand), and ``registered-models/search`` answers.

Clients reach it by the workspace's real host name: the certificate (signed by a throw-away CA,
trusted through ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``) is issued for ``*.api.azureml.ms``,
the tests map the name to 127.0.0.1 in the doctor's own mount namespace (its ``/etc/hosts``),
and the URI carries the port — azureml-mlflow builds its host URL as ``"https://" + netloc``,
so a port in the URI is used as given.

Tokens come from :class:`ManagedIdentityEndpoint`, the same stand-in for App Service's
managed-identity endpoint as ``backends/azure``'s (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``,
read by ``DefaultAzureCredential``'s unmodified chain), minting management-audience tokens of
several principals: one holding a workspace role, one holding none, one of another tenant.
Signatures are random; the workspace accepts exactly the tokens the endpoint issued.  A
``client_id`` other than the identity's (a user-assigned identity not assigned here) gets App
Service's 400 ``Unable to load the proper Managed Identity.``

Inside an Azure ML job (:meth:`AzureMLWorkspace.job_env`):

* the environment a job's process sees: ``AZUREML_RUN_ID``, ``AZUREML_ARM_SUBSCRIPTION``/
  ``_RESOURCEGROUP``/``_WORKSPACE_NAME``/``_PROJECT_NAME``, ``AZUREML_RUN_TOKEN`` and
  ``AZUREML_RUN_TOKEN_EXPIRY`` (the names azureml-pipeline-steps' DatabricksStep documents and
  azureml-core reads), ``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_NAME``
  and ``MLFLOW_TRACKING_TOKEN`` (the four azureml-mlflow tests for before it signs with the run
  token).  The names are verified; that a job sets all of them together, and the values, are
  written by analogy — no environment of a real job was at hand;
* run tokens (:meth:`AzureMLWorkspace.run_token`): JWTs whose only claims are their times
  (azureml-mlflow reads ``exp``; the real token's other claims were not at hand, so none are
  made up).  The workspace accepts one of its own runs, unexpired, with the run's rights
  (``experiments/search`` answers 200); refuses an expired one with 401
  ``ExpiredAuthenticationToken`` and one presented to another workspace with 401
  ``InvalidAuthenticationToken`` — both written by analogy with Resource Manager's answers to
  Entra ID tokens, no captured answer to a run token was at hand;
* the compute's managed identity (:meth:`ManagedIdentityEndpoint.aml_env`): Azure ML compute's
  endpoint as azure-identity (``azure_ml.py``) and MSAL (``managed_identity.py``) call it —
  ``MSI_ENDPOINT``, a ``secret: <MSI_SECRET>`` header, ``api-version=2017-09-01``,
  ``resource``, a user-assigned identity chosen by ``clientid`` — with
  ``DEFAULT_IDENTITY_CLIENT_ID`` naming the compute's default identity (Azure ML's "Set up
  authentication between Azure ML and other services", compute cluster).  The request is
  verified (it is what those clients send); the body (``access_token``, ``expires_on`` in epoch
  seconds, as azure-identity notes Azure ML answers) is written by analogy with App Service's.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from backends._common import LOOPBACK, jwt, jwt_claims, send_answer
from backends.azure.service import make_tls_files

REGION = "eastus"
HOST = f"{REGION}.api.azureml.ms"
SUBSCRIPTION = "5a1b2c3d-0000-4000-8000-00000000a001"
RESOURCE_GROUP = "ml-rg"
WORKSPACE = "ml-ws"
#: The one Azure ML registry there (what ``mlflow.set_registry_uri`` takes for shared models).
REGISTRY = "ml-registry"
#: The tenant the subscription belongs to, and another one.
TENANT_ID = "c10d7ac4-0000-4000-8000-000000000001"
OTHER_TENANT_ID = "d20e8bd5-0000-4000-8000-000000000002"
#: Principals: one with "AzureML Data Scientist" on the workspace, one with no role there.
MEMBER_OID = "c10d7ac4-0000-4000-8000-0000000000aa"
OUTSIDER_OID = "c10d7ac4-0000-4000-8000-0000000000cc"
APP_ID = "c10d7ac4-0000-4000-8000-0000000000bb"
MANAGEMENT = "https://management.azure.com/"
#: What the token endpoint hands out: ``valid`` (the member), ``no-role`` (the outsider),
#: ``other-tenant`` (the member's app in another tenant), ``expired``, ``forged`` (a token the
#: workspace never issued: its signature does not verify), ``wrong-audience`` (for Storage).
TOKEN_KINDS = ("valid", "no-role", "other-tenant", "expired", "forged", "wrong-audience")
SCOPE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
         f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
#: The job a :meth:`AzureMLWorkspace.job_env` environment belongs to.
RUN_ID = "cloudtrack-job_1700000000_0a1b2c3d"
EXPERIMENT_NAME = "cloudtrack-experiment"
#: What a run token can be: ``valid`` (its run's, unexpired) or ``expired``.
RUN_TOKEN_KINDS = ("valid", "expired")


def tracking_uri(port: int, host: str = HOST, *, workspace: str = WORKSPACE) -> str:
    """The workspace's MLflow tracking URI as ``az ml workspace show`` prints it (v1.0), with
    the stand-in's port."""
    return (f"azureml://{host}:{port}/mlflow/v1.0/subscriptions/{SUBSCRIPTION}/resourceGroups/"
            f"{RESOURCE_GROUP}/providers/Microsoft.MachineLearningServices/workspaces/{workspace}")


def registry_uri(port: int, host: str = HOST, *, registry: str = REGISTRY) -> str:
    """The registry's MLflow registry URI, with the stand-in's port."""
    return (f"azureml://{host}:{port}/mlflow/v1.0/subscriptions/{SUBSCRIPTION}/resourceGroups/"
            f"{RESOURCE_GROUP}/providers/Microsoft.MachineLearningServices/registries/{registry}")


def mint(kind: str, audience: str = MANAGEMENT, *, lifetime: int = 3600) -> str:
    """A JWT shaped like an Entra ID access token of ``kind`` (one of :data:`TOKEN_KINDS`)."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}")
    now = int(time.time())
    iat = now - 2 * lifetime if kind == "expired" else now - 60
    tenant = OTHER_TENANT_ID if kind == "other-tenant" else TENANT_ID
    claims: dict[str, Any] = {
        "aud": "https://storage.azure.com" if kind == "wrong-audience" else audience,
        "iss": f"https://sts.windows.net/{tenant}/", "iat": iat, "nbf": iat,
        "exp": iat + lifetime, "tid": tenant, "appid": APP_ID,
        "oid": OUTSIDER_OID if kind == "no-role" else MEMBER_OID,
        "sub": "cloudtrack-test-identity", "ver": "1.0",
    }
    return jwt({"alg": "RS256", "typ": "JWT", "kid": "cloudtrack-test"}, claims)


def mint_run_token(kind: str = "valid", *, lifetime: int = 3600) -> str:
    """A JWT standing in for a job's run token (only its times are claims: see the module's
    docstring)."""
    if kind not in RUN_TOKEN_KINDS:
        raise ValueError(f"unknown run token kind {kind!r}; one of {', '.join(RUN_TOKEN_KINDS)}")
    now = int(time.time())
    iat = now - 2 * lifetime if kind == "expired" else now - 60
    return jwt({"alg": "RS256", "typ": "JWT"}, {"iat": iat, "nbf": iat, "exp": iat + lifetime})


# -- TLS -----------------------------------------------------------------------------------


# -- the managed-identity token source ------------------------------------------------------


class _Json(BaseHTTPRequestHandler):
    def reply(self, status: int, body: Mapping[str, Any] | None,
              headers: Mapping[str, str] | None = None) -> None:
        send_answer(self, status, {"Content-Type": "application/json; charset=utf-8",
                                   **(headers or {})},
                    json.dumps(body).encode() if body is not None else b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TokenHandler(_Json):
    server: ManagedIdentityEndpoint

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = dict(urllib.parse.parse_qsl(url.query))
        if len(parts) == 3 and parts[1:] == ["aml", "token"]:
            return self._azure_ml(parts[0], query)
        if self.headers.get("X-IDENTITY-HEADER") != self.server.secret:
            return self.reply(401, {"error": "unauthorized",
                                    "error_description": "X-IDENTITY-HEADER missing or wrong"})
        if len(parts) != 3 or parts[1:] != ["msi", "token"] or parts[0] not in TOKEN_KINDS:
            return self.reply(404, {"error": "not_found"})
        resource = query.get("resource")
        if not resource:
            return self.reply(400, {"error": "invalid_request",
                                    "error_description": "resource is required"})
        if query.get("client_id", APP_ID) != APP_ID:
            # A user-assigned identity not assigned to this app: App Service's answer (its
            # statusCode/message shape, which MSAL reads).
            return self.reply(400, {"statusCode": 400,
                                    "message": "Unable to load the proper Managed Identity.",
                                    "correlationId": str(uuid.uuid4())})
        token = mint(parts[0], resource)
        self.server.minted.add(token)
        if parts[0] != "forged":
            self.server.issued.add(token)
        self.reply(200, {"access_token": token, "expires_on": str(jwt_claims(token)["exp"]),
                         "resource": resource, "token_type": "Bearer", "client_id": APP_ID})


    def _azure_ml(self, kind: str, query: Mapping[str, str]) -> None:
        """Azure ML compute's identity endpoint (``MSI_ENDPOINT``, api-version 2017-09-01)."""
        if self.headers.get("secret") != self.server.secret:
            return self.reply(401, {"error": "unauthorized",
                                    "error_description": "secret header missing or wrong"})
        if kind not in TOKEN_KINDS:
            return self.reply(404, {"error": "not_found"})
        if query.get("api-version") != "2017-09-01" or not query.get("resource"):
            return self.reply(400, {"error": "invalid_request",
                                    "error_description": "api-version 2017-09-01 and resource "
                                                         "are required"})
        if query.get("clientid", APP_ID) != APP_ID:
            return self.reply(400, {"error": "invalid_request",
                                    "error_description": "No managed identity with this client "
                                                         "id is assigned to the compute."})
        token = mint(kind, query["resource"])
        self.server.minted.add(token)
        if kind != "forged":
            self.server.issued.add(token)
        self.reply(200, {"access_token": token, "expires_on": int(jwt_claims(token)["exp"]),
                         "resource": query["resource"], "token_type": "Bearer",
                         "client_id": APP_ID})


class ManagedIdentityEndpoint(ThreadingHTTPServer):
    """App Service's managed-identity endpoint, on loopback: ``env(kind)`` announces it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _TokenHandler)
        self.secret = secrets.token_hex(16)
        #: Every token handed out (the workspace accepts these and no others).
        self.issued: set[str] = set()
        #: Every token minted, issued or forged (none may appear in a client's output).
        self.minted: set[str] = set()

    def env(self, kind: str = "valid") -> dict[str, str]:
        if kind not in TOKEN_KINDS:
            raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}")
        return {"IDENTITY_ENDPOINT": f"http://{LOOPBACK}:{self.server_address[1]}/{kind}/msi/token",
                "IDENTITY_HEADER": self.secret}

    def aml_env(self, kind: str = "valid") -> dict[str, str]:
        """An Azure ML compute's managed identity handing out ``kind`` tokens, as a job sees
        it."""
        if kind not in TOKEN_KINDS:
            raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}")
        return {"MSI_ENDPOINT": f"http://{LOOPBACK}:{self.server_address[1]}/{kind}/aml/token",
                "MSI_SECRET": self.secret, "DEFAULT_IDENTITY_CLIENT_ID": APP_ID}


# -- the workspace -----------------------------------------------------------------------------


_PATH = re.compile(r"^/mlflow/v[12]\.0/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/"
                   r"Microsoft\.MachineLearningServices/(workspaces|registries)/([^/]+)(/.*)$",
                   re.IGNORECASE)
_AUDIENCES = ("https://management.core.windows.net/", "https://management.core.windows.net",
              "https://management.azure.com/", "https://management.azure.com")


def _arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _challenge(tenant: str, error: str = "", description: str = "") -> dict[str, str]:
    value = f'Bearer authorization_uri="https://login.microsoftonline.com/{tenant}"'
    if error:
        value += f', error="{error}", error_description="{description}"'
    return {"WWW-Authenticate": value}


class _WorkspaceHandler(_Json):
    server: AzureMLWorkspace
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body, headers = self.server.answer(self.command, self.path,
                                                   self.headers.get("Authorization", ""))
        self.reply(status, body, {"x-ms-request-id": str(uuid.uuid4()),
                                  "x-aml-cluster": f"vienna-{REGION}-01",
                                  "x-request-time": "0.012", **headers})

    do_GET = do_POST = do_PATCH = do_DELETE = _any


class AzureMLWorkspace(ThreadingHTTPServer):
    """The stand-in workspace endpoint (see the module's docstring), with its token source.

    Use as a context manager; :attr:`uri` is the tracking URI, :meth:`env` the variables of a
    client whose ``DefaultAzureCredential`` gets ``kind`` tokens."""

    daemon_threads = True

    def __init__(self, *, private_link: bool = False) -> None:
        super().__init__((LOOPBACK, 0), _WorkspaceHandler)
        self.private_link = private_link
        self._tmp = Path(tempfile.mkdtemp(prefix="cloudtrack-azureml-"))
        self.tls = make_tls_files(self._tmp, common_name=HOST, names=(
            HOST, "*.api.azureml.ms", f"*.workspace.{REGION}.api.azureml.ms"))
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.tokens = ManagedIdentityEndpoint()
        #: (method, path, had a bearer token) of every request, for the tests.
        self.requests: list[tuple[str, str, bool]] = []
        #: Run tokens handed out, and the workspace of the run each belongs to.
        self.run_tokens: dict[str, str] = {}
        self._serving = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
                         for s in (self, self.tokens)]

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def uri(self) -> str:
        return tracking_uri(self.port)

    def env(self, kind: str = "valid") -> dict[str, str]:
        ca = str(self.tls.ca)
        return {**self.tokens.env(kind), "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca}

    def run_token(self, kind: str = "valid", *, workspace: str = WORKSPACE) -> str:
        """A run token of a job of ``workspace`` (accepted by that workspace only)."""
        token = mint_run_token(kind)
        self.run_tokens[token] = workspace
        self.tokens.minted.add(token)
        return token

    def job_env(self, run_token: str | None = "valid", *, identity: str | None = None,
                workspace: str = WORKSPACE) -> dict[str, str]:
        """The environment of a job's process (see the module's docstring): with a
        ``run_token`` of that kind (None: no run token variables), and with ``identity`` the
        compute's managed identity handing out tokens of that kind."""
        env = {"REQUESTS_CA_BUNDLE": str(self.tls.ca), "SSL_CERT_FILE": str(self.tls.ca),
               "AZUREML_RUN_ID": RUN_ID, "AZUREML_ARM_SUBSCRIPTION": SUBSCRIPTION,
               "AZUREML_ARM_RESOURCEGROUP": RESOURCE_GROUP,
               "AZUREML_ARM_WORKSPACE_NAME": workspace,
               "AZUREML_ARM_PROJECT_NAME": EXPERIMENT_NAME,
               "MLFLOW_TRACKING_URI": tracking_uri(self.port, workspace=workspace),
               "MLFLOW_RUN_ID": RUN_ID, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT_NAME}
        if run_token is not None:
            token = self.run_token(run_token, workspace=workspace)
            env.update(MLFLOW_TRACKING_TOKEN=token, AZUREML_RUN_TOKEN=token,
                       AZUREML_RUN_TOKEN_EXPIRY=str(jwt_claims(token)["exp"]))
        if identity is not None:
            env.update(self.tokens.aml_env(identity))
        return env

    def __enter__(self) -> AzureMLWorkspace:
        for t in self._serving:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in (self, self.tokens):
            s.shutdown()
            s.server_close()
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- what the endpoint answers -----------------------------------------------------------

    def answer(self, method: str, path: str, authorization: str
               ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        self.requests.append((method, path, authorization.startswith("Bearer ")))
        if self.private_link:
            return 403, {"error": {
                "code": "UserError",
                "message": "Access to workspace was denied based on workspace private link "
                           "configuration.",
                "details": [],
                "additionalInfo": [{"type": "ComponentName",
                                    "info": {"value": "managementfrontend"}}]}}, {}
        m = _PATH.match(urllib.parse.urlsplit(path).path)
        if m is None:
            return 404, _arm_error("NotFound", "The requested resource was not found."), {}
        if not authorization.startswith("Bearer "):
            return 401, _arm_error("AuthenticationFailed",
                                   "Authentication failed. The 'Authorization' header is "
                                   "missing."), _challenge(
                TENANT_ID, "invalid_token",
                "The authentication failed because of missing 'Authorization' header.")
        token = authorization[len("Bearer "):]
        claims = jwt_claims(token)
        sub, rg, kind, ws, rest = m.groups()
        kind = kind.lower()
        run = token in self.run_tokens
        refused = self._run_token_refusal(token, claims, kind, ws) if run else \
            self._refusal(token, claims)
        if refused is not None:
            code, message = refused
            return 401, _arm_error(code, message), _challenge(TENANT_ID, "invalid_token",
                                                              message.split(". ")[0] + ".")
        known = REGISTRY if kind == "registries" else WORKSPACE
        if (sub.lower(), rg.lower(), ws.lower()) != (SUBSCRIPTION, RESOURCE_GROUP.lower(),
                                                     known.lower()):
            return 404, _arm_error(
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/{kind}/{ws}' under "
                f"resource group '{rg}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix"), {}
        if not run and claims.get("oid") != MEMBER_OID:
            oid = claims.get("oid", "?")
            action, scope = (("registries/read", SCOPE.replace(f"workspaces/{WORKSPACE}",
                                                               f"registries/{REGISTRY}"))
                             if kind == "registries" else ("workspaces/experiments/read", SCOPE))
            return 403, _arm_error(
                "AuthorizationFailed",
                f"The client '{oid}' with object id '{oid}' does not have authorization to "
                f"perform action 'Microsoft.MachineLearningServices/{action}' "
                f"over scope '{scope}' or the scope is invalid. If access was recently granted, "
                "please refresh your credentials."), {}
        if kind == "registries":
            if rest.startswith("/api/2.0/mlflow/registered-models/search"):
                return 200, {"registered_models": [{
                    "name": "shared-model", "creation_timestamp": 1700000000000,
                    "last_updated_timestamp": 1700000000000}]}, {}
            return 404, {"error_code": "ENDPOINT_NOT_FOUND",
                         "message": f"No API found for '{rest}'"}, {}
        if rest.startswith("/api/2.0/mlflow/experiments/search"):
            return 200, {"experiments": [{
                "experiment_id": "8d5f5c0e-0c1f-4c3b-9f0a-5b9e2a1d0001", "name": "Default",
                "artifact_location": "", "lifecycle_stage": "active",
                "creation_time": 1700000000000, "last_update_time": 1700000000000}]}, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND",
                     "message": f"No API found for '{rest}'"}, {}

    def _run_token_refusal(self, token: str, claims: Mapping[str, Any], kind: str,
                           ws: str) -> tuple[str, str] | None:
        now = time.time()
        if float(claims.get("exp", 0)) <= now:
            return ("ExpiredAuthenticationToken",
                    "The access token expiry UTC time '"
                    + dt.datetime.fromtimestamp(float(claims.get("exp", 0)), dt.timezone.utc)
                    .strftime("%m/%d/%Y %H:%M:%S") + "' is earlier than current UTC time '"
                    + dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime(
                        "%m/%d/%Y %H:%M:%S") + "'.")
        if kind != "workspaces" or ws.lower() != self.run_tokens[token].lower():
            return "InvalidAuthenticationToken", "The access token is invalid."
        return None

    def _refusal(self, token: str, claims: Mapping[str, Any]) -> tuple[str, str] | None:
        if token not in self.tokens.issued or not claims:
            return "InvalidAuthenticationToken", "The access token is invalid."
        now = time.time()
        if float(claims.get("exp", 0)) <= now:
            def utc(t: float) -> str:
                return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(
                    "%m/%d/%Y %H:%M:%S")
            return ("ExpiredAuthenticationToken",
                    f"The access token expiry UTC time '{utc(float(claims['exp']))}' is "
                    f"earlier than current UTC time '{utc(now)}'.")
        if claims.get("aud") not in _AUDIENCES:
            return ("InvalidAuthenticationToken",
                    f"The access token has been obtained for wrong audience or resource "
                    f"'{claims.get('aud')}'. It should exactly match with one of the allowed "
                    f"audiences '{', '.join(_AUDIENCES)}'.")
        if claims.get("tid") != TENANT_ID:
            return ("InvalidAuthenticationTokenTenant",
                    f"The access token is from the wrong issuer '{claims.get('iss')}'. It must "
                    f"match the tenant 'https://sts.windows.net/{TENANT_ID}/' associated with "
                    f"this subscription. Please use the authority (URL) "
                    f"'https://login.windows.net/{TENANT_ID}' to get the token.")
        return None


__all__ = [
    "EXPERIMENT_NAME",
    "HOST",
    "OTHER_TENANT_ID",
    "REGION",
    "REGISTRY",
    "RESOURCE_GROUP",
    "RUN_ID",
    "RUN_TOKEN_KINDS",
    "SUBSCRIPTION",
    "TENANT_ID",
    "TOKEN_KINDS",
    "WORKSPACE",
    "AzureMLWorkspace",
    "ManagedIdentityEndpoint",
    "mint",
    "mint_run_token",
    "registry_uri",
    "tracking_uri",
]
