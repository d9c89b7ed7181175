"""A stand-in Databricks workspace: a threaded HTTP(S) server on ``127.0.0.1:<free port>``
answering the parts of the workspace REST API MLflow's Databricks client and the doctor use,
with the status codes and error bodies Databricks sends (public API docs, databricks-sdk's
tests, and answers quoted in public issues).

No real workspace is reachable from tests; this answers the same bytes for the cases the
doctor must tell apart:

* credentials: PATs (``dapi…``) as ``Authorization: Bearer``; no credential → 401
  ``{"error_code": 401, "message": "Credential was not sent or was of an unsupported type for
  this API. [ReqId: …]"}``; an unknown, revoked or expired token → **403** ``{"error_code":
  "403", "message": "Invalid access token."}`` (workspaces do not answer 401 here);
* OAuth M2M: ``POST /oidc/v1/token`` (client id and secret by HTTP Basic or in the form,
  ``grant_type=client_credentials``, ``scope=all-apis``) issues opaque tokens valid
  ``token_lifetime`` seconds; a wrong, revoked or expired secret → 401 ``{"error":
  "invalid_client", "error_description": "Client authentication failed"}``;
  ``/oidc/.well-known/oauth-authorization-server`` names the endpoints;
* ``GET /api/2.0/preview/scim/v2/Me``: the user, or the service principal (``applicationId``);
* MLflow: experiments ``search``/``get``/``get-by-name``/``create``/``delete``, runs
  ``create``/``delete``, ``registered-models/search``; experiment paths are workspace paths
  under existing folders (``/Users/<name>``, ``/Shared``); a folder in ``denied_folders`` →
  403 ``PERMISSION_DENIED``; a missing parent → 404 ``RESOURCE_DOES_NOT_EXIST``;
* Unity Catalog: ``GET /api/2.1/unity-catalog/catalogs``, ``POST``/``DELETE
  /api/2.1/unity-catalog/models``, ``GET /api/2.1/unity-catalog/effective-permissions/…``;
  privileges come from ``grants`` (principal → {(securable, privilege)}); a missing one →
  403 ``PERMISSION_DENIED`` "User does not have USE CATALOG on Catalog 'main'." (or USE
  SCHEMA / CREATE MODEL on Schema 'main.default').

Azure Databricks (a workspace that :meth:`StandInWorkspace.trust` s a token issuer):

* Entra ID access tokens of Azure Databricks (audience ``2ff814a6-…``, the Azure Databricks
  application) as ``Authorization: Bearer``, from :class:`EntraId` (client credentials) or a
  managed-identity endpoint (``backends/azureml``'s), or a user's from the Azure CLI
  (:meth:`EntraId.user_token`): the principal is the token's ``upn`` when that user was added to
  the workspace (:meth:`StandInWorkspace.add_azure_user`), else its ``appid`` when that service
  principal was (:meth:`StandInWorkspace.add_azure_sp`); otherwise the answer is Jetty's 403
  page ``User not authorized.`` (the bytes quoted in public issues of tools calling Azure
  Databricks with a service principal that is not a workspace user; today's answer may be
  JSON, written here by analogy with those quotes);
* ``X-Databricks-Azure-SP-Management-Token`` is recorded (:attr:`management_tokens`), not
  checked (the workspace uses it only to add a principal that is not yet a user);
* ``GET /aad/auth`` redirects to the tenant's authorize endpoint when :attr:`azure_tenant` is
  set (how databricks-sdk finds the tenant when ARM_TENANT_ID is unset).

:class:`EntraId` stands in for ``https://login.microsoftonline.com``: ``POST /<tenant>/oauth2/
token`` (v1, ``resource=``, what databricks-sdk calls) and ``/<tenant>/oauth2/v2.0/token``
(``scope=<resource>/.default``), ``grant_type=client_credentials`` with ``client_id`` and
``client_secret`` in the form.  Success and refusals have Entra ID's documented shapes
(``error``, ``error_description`` starting with the AADSTS code, ``error_codes``, trace and
correlation ids): an unknown tenant → 400 ``AADSTS90002`` (``AADSTS900023`` when it is neither
an id nor a domain); an app that is not in the tenant → 400 ``unauthorized_client``
``AADSTS700016``; a wrong secret → 401 ``invalid_client`` ``AADSTS7000215``; an expired secret
→ 401 ``invalid_client`` ``AADSTS7000222``.

Modes (:data:`MODES`): ``healthy`` (the above); ``sso`` (every path redirects to a login
page, as a workspace URL behind an SSO front or a private-link name reached from outside);
``reset`` (every connection is reset at its first bytes, as a firewall that cuts the TLS
handshake).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from backends._common import LOOPBACK, jwt, jwt_claims, send_answer

MODES = ("healthy", "sso", "reset")
#: The Azure Databricks application: the audience of Entra ID tokens for a workspace.
AZURE_DATABRICKS_APP = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
#: The Azure CLI's public client: the ``appid`` of the user tokens `az` gets.
AZURE_CLI_APP = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
NO_CREDENTIAL = "Credential was not sent or was of an unsupported type for this API."
INVALID_TOKEN = "Invalid access token."

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Principal:
    name: str
    #: ``user`` or ``service-principal`` (then ``name`` is its application id).
    kind: str = "user"
    display: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4().int)[:16])


class _Handler(BaseHTTPRequestHandler):
    server: StandInWorkspace
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.answer(self.command, self.path,
                                                      dict(self.headers.items()), body)
        send_answer(self, status, headers, payload)

    do_GET = do_POST = do_DELETE = do_PATCH = do_HEAD = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _reset_after_hello(sock: socket.socket) -> None:
    """What a firewall that filters by destination does: it lets the TCP handshake through,
    reads the first bytes (a TLS ClientHello, an HTTP request line) and resets the connection
    — no answer at all."""
    try:
        sock.settimeout(5.0)
        sock.recv(1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        sock.close()


def _json(status: int, obj: object, **headers: str) -> Reply:
    return status, {"Content-Type": "application/json", "x-databricks-org-id": "1234567890123456",
                    **headers}, json.dumps(obj).encode()


def _error(status: int, code: str | int, message: str) -> Reply:
    return _json(status, {"error_code": code, "message": message})


def _header(headers: Mapping[str, str], name: str) -> str:
    low = name.lower()
    return next((v for k, v in headers.items() if k.lower() == low), "")


def _not_authorized(path: str) -> Reply:
    """Jetty's error page, as Azure Databricks answered a valid Entra ID token of a principal
    that is not a workspace user (quoted in public issues)."""
    page = ("<html>\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html;"
            "charset=utf-8\"/>\n<title>Error 403 User not authorized.</title>\n</head>\n"
            f"<body><h2>HTTP ERROR 403</h2>\n<p>Problem accessing {path}. Reason:\n"
            "<pre>    User not authorized.</pre></p>\n</body>\n</html>\n")
    return 403, {"Content-Type": "text/html;charset=utf-8"}, page.encode()


class StandInWorkspace(ThreadingHTTPServer):
    """A Databricks workspace on a free loopback port (``with StandInWorkspace() as ws:``)."""

    daemon_threads = True

    def __init__(self, *, mode: str = "healthy", tls: tuple[Path, Path] | None = None,
                 token_lifetime: float = 3600.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        super().__init__((LOOPBACK, 0), _Handler)
        self.mode = mode
        self.token_lifetime = token_lifetime
        self.scheme = "http"
        if tls is not None and mode != "reset":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
        if tls is not None:
            self.scheme = "https"
        self._lock = threading.Lock()
        #: token -> (principal, expiry or None); revoked tokens are simply removed.
        self.tokens: dict[str, tuple[Principal, float | None]] = {}
        #: OAuth clients: application id -> (secret, principal)
        self.clients: dict[str, tuple[str, Principal]] = {}
        self.folders: set[str] = {"/", "/Users", "/Shared"}
        self.denied_folders: set[str] = set()
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, str] = {}
        #: principal name -> {(securable, privilege)}: ("catalog:main", "USE_CATALOG") …
        self.grants: dict[str, set[tuple[str, str]]] = {}
        self.catalogs: dict[str, set[str]] = {"main": {"default"}}
        self.models: set[str] = set()
        #: Every request, as (method, path) — tests check what the doctor left behind.
        self.requests: list[tuple[str, str]] = []
        #: Azure: issuers whose ``issued`` tokens are Entra ID tokens this workspace accepts.
        self.issuers: list[Any] = []
        #: Azure: service principals added to the workspace, by application id.
        self.azure_sps: dict[str, Principal] = {}
        #: Azure: Entra ID users added to the workspace, by user principal name.
        self.azure_users: dict[str, Principal] = {}
        #: Azure: the tenant ``/aad/auth`` redirects to (None: no redirect).
        self.azure_tenant: str | None = None
        #: Azure: every X-Databricks-Azure-SP-Management-Token received.
        self.management_tokens: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    # -- set-up ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.server_address[1]}"

    def add_user(self, name: str, *, lifetime: float | None = None) -> str:
        """A user with a home folder; returns a new PAT for them (valid ``lifetime`` s)."""
        return self.issue_pat(self._user(name), lifetime)

    def _user(self, name: str) -> Principal:
        """A workspace user and their home folder."""
        self.folders.add(f"/Users/{name}")
        return Principal(name, "user", name.split("@")[0].title())

    def issue_pat(self, principal: Principal, lifetime: float | None = None) -> str:
        token = "dapi" + secrets.token_hex(16)
        with self._lock:
            self.tokens[token] = (principal, time.time() + lifetime if lifetime else None)
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def add_service_principal(self, display: str) -> tuple[str, str]:
        """A service principal with an OAuth secret: (client id, client secret)."""
        client_id = str(uuid.uuid4())
        secret = "dose" + secrets.token_hex(16)
        principal = Principal(client_id, "service-principal", display)
        self.folders.add(f"/Users/{client_id}")
        self.clients[client_id] = (secret, principal)
        return client_id, secret

    def trust(self, issuer: Any) -> None:
        """Accept the Entra ID tokens ``issuer`` hands out (its ``issued`` set)."""
        self.issuers.append(issuer)

    def add_azure_sp(self, application_id: str, display: str) -> Principal:
        """An Entra ID service principal (or managed identity) added to the workspace."""
        principal = Principal(application_id, "service-principal", display)
        self.folders.add(f"/Users/{application_id}")
        self.azure_sps[application_id] = principal
        return principal

    def add_azure_user(self, upn: str) -> Principal:
        """An Entra ID user added to the workspace (signs in with Entra ID, no PAT)."""
        principal = self.azure_users[upn] = self._user(upn)
        return principal

    def grant(self, principal: str, securable: str, *privileges: str) -> None:
        """``grant("alice@x", "schema:main.default", "USE_SCHEMA", "CREATE_MODEL")``."""
        self.grants.setdefault(principal, set()).update((securable, p) for p in privileges)

    # -- the API ---------------------------------------------------------------------------

    def answer(self, method: str, raw_path: str, headers: Mapping[str, str],
               body: bytes) -> Reply:
        self.requests.append((method, raw_path))
        parts = urllib.parse.urlsplit(raw_path)
        path, query = parts.path, dict(urllib.parse.parse_qsl(parts.query))
        if self.mode == "sso":
            return self._sso(path, raw_path)
        if path == "/.well-known/databricks-config":
            # databricks-sdk reads this when it builds its Config (host metadata).
            return _json(200, {"oidc_endpoint": f"{self.url}/oidc",
                               "workspace_id": "1234567890123456"})
        if path == "/oidc/.well-known/oauth-authorization-server":
            return _json(200, {"issuer": f"{self.url}/oidc",
                               "authorization_endpoint": f"{self.url}/oidc/v1/authorize",
                               "token_endpoint": f"{self.url}/oidc/v1/token"})
        if path == "/oidc/v1/token" and method == "POST":
            return self._token(headers, body)
        if path == "/aad/auth" and self.azure_tenant:
            return 302, {"Location": f"https://login.microsoftonline.com/{self.azure_tenant}"
                         "/oauth2/authorize?response_type=code&client_id="
                         f"{AZURE_DATABRICKS_APP}&redirect_uri="
                         + urllib.parse.quote(f"{self.url}/aad/redirect", safe="")}, b""
        if not path.startswith("/api/"):
            return 200, {"Content-Type": "text/html; charset=utf-8"}, \
                b"<!doctype html><html><head><title>Databricks</title></head><body></body></html>"
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        if not auth.startswith("Bearer "):
            return _error(401, 401, f"{NO_CREDENTIAL} [ReqId: {uuid.uuid4()}]")
        with self._lock:
            known = self.tokens.get(auth[7:])
        management = _header(headers, "X-Databricks-Azure-SP-Management-Token")
        if management:
            self.management_tokens.append(management)
        if known is None and any(auth[7:] in issuer.issued for issuer in self.issuers):
            claims = jwt_claims(auth[7:])
            if float(claims.get("exp", 0)) <= time.time() or \
                    claims.get("aud") != AZURE_DATABRICKS_APP:
                return _error(403, "403", INVALID_TOKEN)
            member = self.azure_users.get(str(claims["upn"])) if claims.get("upn") else \
                self.azure_sps.get(str(claims.get("appid")))
            if member is None:
                return _not_authorized(path)
            known = (member, None)
        if known is None or (known[1] is not None and known[1] <= time.time()):
            return _error(403, "403", INVALID_TOKEN)
        who = known[0]
        data: dict[str, Any] = {}
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                return _error(400, "MALFORMED_REQUEST", "Invalid JSON given in the body")
        return self._api(method, path, query, data, who)

    def _sso(self, path: str, raw_path: str) -> Reply:
        if path.startswith("/login.html"):
            page = (b"<!DOCTYPE html><html><head><title>Databricks - Sign in</title></head>"
                    b"<body><form method='post' action='/j_security_check'>"
                    b"<input name='j_username'><input type='password' name='j_password'>"
                    b"<button>Sign in</button></form><a href='/sso'>Single sign-on</a>"
                    b"</body></html>")
            return 200, {"Content-Type": "text/html; charset=utf-8"}, page
        target = "/login.html?next_url=" + urllib.parse.quote(raw_path, safe="")
        return 303, {"Location": target, "Content-Type": "text/html"}, b""

    def _token(self, headers: Mapping[str, str], body: bytes) -> Reply:
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        if auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                pass
        known = self.clients.get(client_id)
        if form.get("grant_type") != "client_credentials":
            return _json(400, {"error": "unsupported_grant_type",
                               "error_description": "Unsupported grant type"})
        if known is None or not secrets.compare_digest(known[0], secret):
            return _json(401, {"error": "invalid_client",
                               "error_description": "Client authentication failed"})
        token = "eyJr" + secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = (known[1], time.time() + self.token_lifetime)
        return _json(200, {"access_token": token, "token_type": "Bearer",
                           "expires_in": int(self.token_lifetime),
                           "scope": form.get("scope", "all-apis")})

    def _api(self, method: str, path: str, query: Mapping[str, str], data: Mapping[str, Any],
             who: Principal) -> Reply:
        e: dict[str, Any] | None
        if path == "/api/2.0/preview/scim/v2/Me":
            return self._me(who)
        if path == "/api/2.0/mlflow/experiments/search":
            limit = int(query.get("max_results") or data.get("max_results") or 1000)
            visible = [e for e in self.experiments.values() if e["lifecycle_stage"] == "active"]
            return _json(200, {"experiments": visible[:limit]})
        if path == "/api/2.0/mlflow/experiments/get-by-name":
            name = query.get("experiment_name", "")
            for each in self.experiments.values():
                if each["name"] == name and each["lifecycle_stage"] == "active":
                    return self._readable(each, who)
            return _error(404, "RESOURCE_DOES_NOT_EXIST",
                          f"Could not find experiment with name {name}")
        if path == "/api/2.0/mlflow/experiments/get":
            e = self.experiments.get(query.get("experiment_id", ""))
            if e is None:
                return _error(404, "RESOURCE_DOES_NOT_EXIST",
                              f"Node ID {query.get('experiment_id')} does not exist.")
            return self._readable(e, who)
        if path == "/api/2.0/mlflow/experiments/create" and method == "POST":
            return self._create_experiment(str(data.get("name", "")), who)
        if path == "/api/2.0/mlflow/experiments/delete" and method == "POST":
            e = self.experiments.get(str(data.get("experiment_id")))
            if e is None:
                return _error(404, "RESOURCE_DOES_NOT_EXIST", "Experiment does not exist.")
            e["lifecycle_stage"] = "deleted"
            return _json(200, {})
        if path == "/api/2.0/mlflow/runs/create" and method == "POST":
            e = self.experiments.get(str(data.get("experiment_id")))
            if e is None:
                return _error(404, "RESOURCE_DOES_NOT_EXIST", "Experiment does not exist.")
            if self._denied(e["name"].rsplit("/", 1)[0]):
                return _error(403, "PERMISSION_DENIED", f"User {who.name} does not have "
                              f"permission 'CAN_EDIT' on experiment {e['experiment_id']}")
            run_id = uuid.uuid4().hex
            self.runs[run_id] = "active"
            return _json(200, {"run": {"info": {"run_id": run_id,
                                                "experiment_id": e["experiment_id"]}}})
        if path == "/api/2.0/mlflow/runs/delete" and method == "POST":
            self.runs[str(data.get("run_id"))] = "deleted"
            return _json(200, {})
        if path == "/api/2.0/mlflow/registered-models/search":
            return _json(200, {"registered_models": []})
        if path.startswith("/api/2.1/unity-catalog/"):
            return self._unity_catalog(method, path.removeprefix("/api/2.1/unity-catalog/"),
                                       query, data, who)
        return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    def _me(self, who: Principal) -> Reply:
        if who.kind == "service-principal":
            return _json(200, {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServicePrincipal"],
                "id": who.id, "applicationId": who.name, "displayName": who.display,
                "userName": who.name, "active": True,
                "groups": [{"display": "users", "value": "1"}]})
        return _json(200, {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                        "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"],
            "id": who.id, "userName": who.name, "displayName": who.display, "active": True,
            "emails": [{"type": "work", "value": who.name, "primary": True}],
            "groups": [{"display": "users", "value": "1"}]})

    def _denied(self, folder: str) -> bool:
        return any(folder == d or folder.startswith(d.rstrip("/") + "/")
                   for d in self.denied_folders)

    def _readable(self, e: Mapping[str, Any], who: Principal) -> Reply:
        return _json(200, {"experiment": dict(e)})

    def _create_experiment(self, name: str, who: Principal) -> Reply:
        if not name.startswith("/"):
            return _error(400, "INVALID_PARAMETER_VALUE",
                          f"Got an invalid experiment name '{name}'. An experiment name must "
                          "be an absolute path within the Databricks workspace, e.g. "
                          "'/Users/<some-username>/my-experiment'.")
        parent = name.rsplit("/", 1)[0] or "/"
        if parent not in self.folders:
            return _error(404, "RESOURCE_DOES_NOT_EXIST",
                          f"Parent directory {parent} does not exist.")
        if self._denied(parent):
            return _error(403, "PERMISSION_DENIED",
                          f"User {who.name} does not have permission 'CAN_EDIT' on "
                          f"directory {parent}")
        if any(e["name"] == name and e["lifecycle_stage"] == "active"
               for e in self.experiments.values()):
            return _error(400, "RESOURCE_ALREADY_EXISTS",
                          f"Node named '{name.rsplit('/', 1)[-1]}' already exists")
        exp_id = str(uuid.uuid4().int)[:16]
        location = f"dbfs:/databricks/mlflow-tracking/{exp_id}"
        self.experiments[exp_id] = {"experiment_id": exp_id, "name": name,
                                    "artifact_location": location, "lifecycle_stage": "active"}
        return _json(200, {"experiment_id": exp_id})

    # -- Unity Catalog ---------------------------------------------------------------------

    def _has(self, who: Principal, securable: str, privilege: str) -> bool:
        held = self.grants.get(who.name, set())
        catalog = securable.split(":", 1)[1].split(".")[0]
        return (securable, privilege) in held or (securable, "ALL_PRIVILEGES") in held or \
            (f"catalog:{catalog}", "ALL_PRIVILEGES") in held

    def _missing(self, who: Principal, catalog: str, schema: str) -> Reply | None:
        if not self._has(who, f"catalog:{catalog}", "USE_CATALOG"):
            return _error(403, "PERMISSION_DENIED",
                          f"User does not have USE CATALOG on Catalog '{catalog}'.")
        for privilege in ("USE_SCHEMA", "CREATE_MODEL"):
            if not self._has(who, f"schema:{catalog}.{schema}", privilege):
                return _error(403, "PERMISSION_DENIED",
                              f"User does not have {privilege.replace('_', ' ')} on Schema "
                              f"'{catalog}.{schema}'.")
        return None

    def _unity_catalog(self, method: str, path: str, query: Mapping[str, str],
                       data: Mapping[str, Any], who: Principal) -> Reply:
        if path == "catalogs" and method == "GET":
            visible = [c for c in self.catalogs
                       if any(s.split(":", 1)[1].split(".")[0] == c
                              for s, _ in self.grants.get(who.name, set()))]
            return _json(200, {"catalogs": [{"name": c, "catalog_type": "MANAGED_CATALOG"}
                                            for c in visible]})
        if path == "models" and method == "POST":
            catalog, schema = str(data.get("catalog_name")), str(data.get("schema_name"))
            if schema not in self.catalogs.get(catalog, set()):
                return _error(404, "SCHEMA_DOES_NOT_EXIST",
                              f"Schema '{catalog}.{schema}' does not exist.")
            refused = self._missing(who, catalog, schema)
            if refused is not None:
                return refused
            full = f"{catalog}.{schema}.{data.get('name')}"
            self.models.add(full)
            return _json(200, {"full_name": full, "catalog_name": catalog,
                               "schema_name": schema, "name": data.get("name"),
                               "owner": who.name})
        if path.startswith("models/") and method == "DELETE":
            full = path.removeprefix("models/")
            if full not in self.models:
                return _error(404, "NOT_FOUND", f"Registered model '{full}' does not exist.")
            self.models.discard(full)
            return _json(200, {})
        if path.startswith("effective-permissions/") and method == "GET":
            _, kind, full = path.split("/", 2)
            principal = query.get("principal", who.name)
            held = sorted(p for s, p in self.grants.get(principal, set())
                          if s == f"{kind}:{full}")
            if kind == "schema":
                catalog = full.split(".")[0]
                held += sorted(p for s, p in self.grants.get(principal, set())
                               if s == f"catalog:{catalog}" and p == "ALL_PRIVILEGES")
            return _json(200, {"privilege_assignments": [{
                "principal": principal,
                "privileges": [{"privilege": p} for p in held]}] if held else []})
        return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} /{path}'")

    # -- the server ------------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.mode == "reset":
            threading.Thread(target=_reset_after_hello, args=(request,), daemon=True).start()
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up early (the doctor's port sniff reads 16 bytes) are no error.
        pass

    def __enter__(self) -> StandInWorkspace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


# -- Entra ID's token endpoint -----------------------------------------------------------------

_GUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


@dataclass
class EntraApp:
    tenant: str
    secret: str
    display: str
    #: Entra ID's object id of the app's service principal in its tenant.
    oid: str = field(default_factory=lambda: str(uuid.uuid4()))
    secret_expired: bool = False


class _EntraHandler(BaseHTTPRequestHandler):
    server: EntraId
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server.answer(self.path, body)
        send_answer(self, status, {"Content-Type": "application/json; charset=utf-8",
                                   "Cache-Control": "no-store, no-cache",
                                   "x-ms-request-id": str(uuid.uuid4())},
                    json.dumps(payload).encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EntraId(ThreadingHTTPServer):
    """Entra ID's token endpoint for client credentials, on a free loopback port (HTTPS with
    ``tls``); clients reach it by ``login.microsoftonline.com`` through a test proxy."""

    daemon_threads = True

    def __init__(self, *, tls: tuple[Path, Path] | None = None, lifetime: int = 3599) -> None:
        super().__init__((LOOPBACK, 0), _EntraHandler)
        self.lifetime = lifetime
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.tenants: set[str] = set()
        self.apps: dict[str, EntraApp] = {}
        #: Every token handed out (workspaces that trust this issuer accept these).
        self.issued: set[str] = set()
        #: (tenant, client id, resource) of every token request, for the tests.
        self.requests: list[tuple[str, str, str]] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def add_app(self, tenant: str, display: str, *, secret_expired: bool = False
                ) -> tuple[str, str]:
        """An app registration with a client secret in ``tenant``: (client id, secret)."""
        self.tenants.add(tenant)
        client_id = str(uuid.uuid4())
        secret = "Q~" + secrets.token_urlsafe(30)
        self.apps[client_id] = EntraApp(tenant, secret, display, secret_expired=secret_expired)
        return client_id, secret

    def user_token(self, tenant: str, upn: str) -> str:
        """The Azure Databricks token `az account get-access-token --resource 2ff814a6-…` prints
        for a signed-in user: a delegated token of the Azure CLI's public client, naming the
        user by ``upn`` (no endpoint here: the Azure CLI itself is the test's stand-in)."""
        now = int(time.time())
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, upn))
        token = jwt({"typ": "JWT", "alg": "RS256", "kid": "cloudtrack-test"}, {
            "aud": AZURE_DATABRICKS_APP, "iss": f"https://sts.windows.net/{tenant}/",
            "iat": now - 5, "nbf": now - 5, "exp": now + self.lifetime, "appid": AZURE_CLI_APP,
            "appidacr": "0", "oid": oid, "sub": oid, "tid": tenant, "upn": upn,
            "unique_name": upn, "scp": "user_impersonation", "ver": "1.0"})
        self.issued.add(token)
        return token

    def answer(self, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        path = urllib.parse.urlsplit(raw_path).path.strip("/").split("/")
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        if len(path) not in (3, 4) or path[1:] not in (["oauth2", "token"],
                                                        ["oauth2", "v2.0", "token"]):
            return 404, {"error": "not_found"}
        tenant, v2 = path[0], len(path) == 4
        client_id = form.get("client_id", "")
        resource = form.get("scope", "").removesuffix("/.default") if v2 \
            else form.get("resource", "")
        self.requests.append((tenant, client_id, resource))
        if not (_GUID.fullmatch(tenant) or "." in tenant or tenant in self.tenants):
            # A tenant given by its display name, say: neither an id nor a domain.
            return 400, _aadsts("invalid_request", 900023,
                                f"Specified tenant identifier '{tenant}' is neither a valid DNS "
                                "name, nor a valid external domain.")
        if tenant not in self.tenants:
            return 400, _aadsts("invalid_request", 90002,
                                f"Tenant '{tenant}' not found. Check to make sure you have the "
                                "correct tenant ID and are signing into the correct cloud. Check "
                                "with your subscription administrator, this may happen if there "
                                "are no active subscriptions for the tenant.")
        if form.get("grant_type") != "client_credentials":
            return 400, _aadsts("unsupported_grant_type", 70003,
                                "The app requested an unsupported grant type.")
        app = self.apps.get(client_id)
        if app is None or app.tenant != tenant:
            return 400, _aadsts("unauthorized_client", 700016,
                                f"Application with identifier '{client_id}' was not found in the "
                                f"directory '{tenant}'. This can happen if the application has "
                                "not been installed by the administrator of the tenant or "
                                "consented to by any user in the tenant. You may have sent your "
                                "authentication request to the wrong tenant.")
        if not secrets.compare_digest(app.secret, form.get("client_secret", "")):
            return 401, _aadsts("invalid_client", 7000215,
                                "Invalid client secret provided. Ensure the secret being sent in "
                                "the request is the client secret value, not the client secret "
                                f"ID, for a secret added to app '{client_id}'.")
        if app.secret_expired:
            return 401, _aadsts("invalid_client", 7000222,
                                f"The provided client secret keys for app '{client_id}' are "
                                "expired. Visit the Azure portal to create new keys for your "
                                "app: https://aka.ms/NewClientSecret, or consider using "
                                "certificate credentials for added security: "
                                "https://aka.ms/certCreds.")
        now = int(time.time())
        claims = {"aud": resource, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 5,
                  "nbf": now - 5, "exp": now + self.lifetime, "appid": client_id,
                  "appidacr": "1", "idp": f"https://sts.windows.net/{tenant}/", "oid": app.oid,
                  "sub": app.oid, "tid": tenant, "uti": secrets.token_urlsafe(16),
                  "ver": "1.0"}
        token = jwt({"typ": "JWT", "alg": "RS256", "kid": "cloudtrack-test"}, claims)
        self.issued.add(token)
        if v2:
            return 200, {"token_type": "Bearer", "expires_in": self.lifetime,
                         "ext_expires_in": self.lifetime, "access_token": token}
        # The v1 endpoint answers its numbers as strings.
        return 200, {"token_type": "Bearer", "expires_in": str(self.lifetime),
                     "ext_expires_in": str(self.lifetime), "expires_on": str(claims["exp"]),
                     "not_before": str(claims["nbf"]), "resource": resource,
                     "access_token": token}

    def __enter__(self) -> EntraId:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def _aadsts(error: str, code: int, message: str) -> dict[str, Any]:
    """An Entra ID error body: the AADSTS code leads the description, ids trail it."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return {"error": error,
            "error_description": f"AADSTS{code}: {message}\r\nTrace ID: {trace}\r\n"
                                 f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
            "error_codes": [code], "timestamp": stamp, "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}"}
