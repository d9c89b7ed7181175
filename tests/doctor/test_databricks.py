"""``cloudtrack doctor`` on Databricks URIs (``databricks``, ``databricks://PROFILE``,
``databricks-uc``): the configuration resolved as databricks-sdk resolves it (compared with the
SDK's own ``Config``), then the catalogue's Databricks rows (22 to 25)
reproduced with the real command in a child process (tests/fixtures/doctor.py).

No real workspace is reachable from tests: a stand-in workspace (``backends/databricks``)
answers the REST API, SCIM ``Me``, OAuth M2M and Unity Catalog with Databricks' status codes
and error bodies; each test says which real behaviour it stands in for.  The host reaches the
doctor the way a user writes it: a profile of ``~/.databrickscfg`` in the test's HOME, or
``DATABRICKS_HOST``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.azure.service import make_tls_files
from backends.azureml.service import APP_ID, ManagedIdentityEndpoint
from backends.databricks import StandInWorkspace
from backends.databricks.service import EntraId, Principal
from cloudtrack.doctor import databricks as db
from tests.doctor import standins
from tests.doctor.test_s3 import _confined_dns
from tests.fixtures.doctor import RUN_BOUND, Run, assert_no_secrets, doctor, expect, healthy

pytestmark = pytest.mark.timeout(120)

USER = "alice@example.com"


# -- resolving the configuration, without the network ------------------------------------------


def _cfg(home: Path, text: str) -> Path:
    path = home / ".databrickscfg"
    path.write_text(text)
    return path


def test_profile_resolution_matches_the_sdk(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile, host and token MLflow's client gets (databricks-sdk's own ``Config`` with
    PAT auth) are the ones the doctor reports, for the URI's profile,
    DATABRICKS_CONFIG_PROFILE, DEFAULT, and variables that win over the file."""
    from databricks.sdk.config import Config

    # The SDK asks each host for its metadata while it builds a Config: stand-ins answer.
    with StandInWorkspace() as one, StandInWorkspace() as two:
        _check_against_sdk(tmp_path, monkeypatch, Config, one.url, two.url,
                           one.url.replace("127.0.0.1", "localhost"))


def _check_against_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: type,
                       default: str, team: str, other: str) -> None:
    _cfg(tmp_path, f"[DEFAULT]\nhost = {default}\ntoken = dapi-def000\n"
                   f"[team]\nhost = {team}\ntoken = dapi-team00\n")
    cases: list[tuple[str, dict[str, str]]] = [
        ("databricks://team", {}),
        ("databricks", {}),
        ("databricks", {"DATABRICKS_CONFIG_PROFILE": "team"}),
        ("databricks://team", {"DATABRICKS_TOKEN": "dapi-env000"}),
        ("databricks", {"DATABRICKS_HOST": other, "DATABRICKS_TOKEN": "dapi-env000"}),
    ]
    seen = set()
    for uri, extra in cases:
        env = {"HOME": str(tmp_path), **extra}
        for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE",
                     "DATABRICKS_CONFIG_FILE", "DATABRICKS_CLIENT_ID",
                     "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE"):
            monkeypatch.delenv(name, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        ws = db.resolve(uri, env)
        sdk = config(profile=db.split_uri(uri)[1])
        assert (ws.host, ws.get("token")) == (sdk.host, sdk.token), (uri, extra)
        assert sdk.auth_type == "pat" and db.choose(ws, env).kind == "pat"
        seen.add((ws.host, ws.get("token")))
    assert len(seen) == 4  # the cases do tell the sources apart


def test_missing_profile_names_profile_and_file(tmp_path: Path) -> None:
    _cfg(tmp_path, "[team]\nhost = https://team.cloud.databricks.com\n")
    with pytest.raises(db.ConfigProblem) as e:
        db.resolve("databricks://prod", {"HOME": str(tmp_path)})
    assert "has no prod profile configured" in e.value.summary
    assert str(tmp_path / ".databrickscfg") in e.value.summary
    assert "databricks://team" in e.value.fix


def test_chain_order_and_reasons(tmp_path: Path) -> None:
    """The SDK's default chain: PAT before OAuth M2M; Azure methods only for Azure hosts."""
    env = {"HOME": str(tmp_path), "PATH": str(tmp_path),
           "DATABRICKS_HOST": "https://adb-1.2.azuredatabricks.net",
           "DATABRICKS_CLIENT_ID": "c0ffee", "DATABRICKS_CLIENT_SECRET": "dose0123456789"}
    choice = db.choose(db.resolve("databricks", env), env)
    assert choice.kind == "oauth-m2m"
    assert any(s.startswith("pat: DATABRICKS_TOKEN not set") for s in choice.skipped)
    assert any(s.startswith("azure-cli: `az` is not on PATH") for s in choice.skipped)
    aws = {**env, "DATABRICKS_HOST": "https://dbc-1.cloud.databricks.com"}
    choice = db.choose(db.resolve("databricks", aws), aws)
    assert "azure-cli: the host is not an Azure Databricks workspace" in choice.skipped


def test_invalid_token_is_told_from_permission_denied_by_the_body() -> None:
    """Row 23: both are HTTP 403; only the body tells a refused token from a refused action."""
    def a(status: int, body: object) -> db.Answer:
        return db.Answer(status, {"content-type": "application/json"},
                         json.dumps(body).encode())
    assert db.invalid_token(a(403, {"error_code": "403", "message": "Invalid access token."}))
    assert db.invalid_token(a(401, {"error_code": 401, "message": db_no_credential()}))
    assert not db.invalid_token(a(403, {"error_code": "PERMISSION_DENIED",
                                        "message": "User does not have permission 'CAN_EDIT'"}))


def db_no_credential() -> str:
    from backends.databricks.service import NO_CREDENTIAL

    return NO_CREDENTIAL


# -- the real command against a stand-in workspace ---------------------------------------------


@pytest.fixture
def dbhome(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> object:
    return make_tls_files(tmp_path_factory.mktemp("dbtls"))


@pytest.fixture
def workspace() -> Iterator[StandInWorkspace]:
    with StandInWorkspace() as ws:
        yield ws


def _issued(ws: StandInWorkspace) -> tuple[str, ...]:
    return tuple(ws.tokens)


def _active(ws: StandInWorkspace) -> list[str]:
    return [e["name"] for e in ws.experiments.values() if e["lifecycle_stage"] == "active"]


def test_healthy_pat_profile_over_https(dbhome: Path, tls: object) -> None:
    """A user's PAT in a ~/.databrickscfg profile, the workspace over HTTPS with a private CA
    (REQUESTS_CA_BUNDLE, read by the SDK's requests session); the write probe leaves nothing
    active behind."""
    with StandInWorkspace(tls=(tls.cert, tls.key)) as ws:  # type: ignore[attr-defined]
        pat = ws.add_user(USER)
        _cfg(dbhome, f"[myprofile]\nhost = {ws.url}\ntoken = {pat}\n")
        run = doctor(dbhome, {"REQUESTS_CA_BUNDLE": str(tls.ca)},  # type: ignore[attr-defined]
                     "databricks://myprofile", extra_secrets=(pat,))
        assert _active(ws) == []
    healthy(run, "databricks PAT profile (https)")
    assert run.report["backend"] == "databricks"
    assert "TLS" in run.check("tls")["summary"]
    assert "personal access token" in run.check("config.credential")["summary"]
    assert "oauth-m2m: DATABRICKS_CLIENT_ID" in run.check("config.credential")["summary"]
    assert f"user {USER}" in run.check("auth.identity")["summary"]
    assert "created and deleted" in run.check("authz.write")["summary"]


def test_healthy_oauth_m2m_with_experiment(dbhome: Path, workspace: StandInWorkspace) -> None:
    """A service principal with an OAuth secret in the environment (no profile: the file is
    not read), an existing experiment path; the token comes from /oidc/v1/token, the
    identity from SCIM Me, a probe run is created and deleted; Unity Catalog privileges are
    checked with a probe model that is dropped again."""
    ws = workspace
    client_id, secret = ws.add_service_principal("ci-bot")
    ws.folders.add("/Shared")
    ws._create_experiment("/Shared/team-exp", db_principal(ws, client_id))
    ws.grant(client_id, "catalog:main", "USE_CATALOG")
    ws.grant(client_id, "schema:main.default", "USE_SCHEMA", "CREATE_MODEL")
    env = {"DATABRICKS_HOST": ws.url, "DATABRICKS_CLIENT_ID": client_id,
           "DATABRICKS_CLIENT_SECRET": secret, "MLFLOW_EXPERIMENT_NAME": "/Shared/team-exp",
           db.UC_SCHEMA_VARIABLE: "main.default"}
    run = doctor(dbhome, env, "databricks", extra_secrets=(secret,))
    assert_no_issued_token(run, ws)
    healthy(run, "databricks OAuth M2M")
    assert "service principal ci-bot" in run.check("auth.identity")["summary"]
    assert "renews it" in run.check("auth.expiry")["summary"]
    assert "probe run" in run.check("authz.write")["summary"]
    assert "USE CATALOG, USE SCHEMA and CREATE MODEL" in run.check("authz.registry")["summary"]
    assert ws.models == set() and _active(ws) == ["/Shared/team-exp"]
    assert "not read" in run.check("config.profile")["summary"]


def db_principal(ws: StandInWorkspace, client_id: str) -> Principal:
    return ws.clients[client_id][1]


def assert_no_issued_token(run: Run, ws: StandInWorkspace) -> None:
    for token in _issued(ws):
        assert token not in run.text(), "an issued OAuth token leaked"


def test_profile_missing_from_the_file(dbhome: Path) -> None:
    """Row 22: `databricks://prof` with no [prof] in ~/.databrickscfg (the SDK: `has no prof
    profile configured`): config-invalid naming the profile and the file."""
    _cfg(dbhome, "[other]\nhost = https://dbc-1.cloud.databricks.com\ntoken = dapi0000000000\n")
    run = doctor(dbhome, {}, "databricks://myprofile")
    expect(run, "config-invalid", backend="databricks")
    check = run.check("config.profile")
    assert "myprofile" in check["summary"] and str(dbhome / ".databrickscfg") in check["summary"]
    assert "databricks configure --profile myprofile" in check["fix"]


def test_profile_with_host_but_no_token(dbhome: Path, workspace: StandInWorkspace) -> None:
    """Row 22: a profile with a host and nothing to sign with (the SDK: `default auth: cannot
    configure default credentials`): credentials-missing, every credential tried listed."""
    _cfg(dbhome, f"[myprofile]\nhost = {workspace.url}\n")
    run = doctor(dbhome, {}, "databricks://myprofile")
    expect(run, "credentials-missing")
    check = run.check("auth.credential")
    assert "myprofile" in check["summary"] and "pat: DATABRICKS_TOKEN" in check["summary"]
    assert "token = <PAT>" in check["fix"]
    assert workspace.requests == []  # nothing sent without a credential


def test_revoked_pat(dbhome: Path, workspace: StandInWorkspace) -> None:
    """Row 23: a revoked PAT — Databricks answers 403 `Invalid access token` (not 401)."""
    pat = workspace.add_user(USER)
    workspace.revoke(pat)
    run = doctor(dbhome, {"DATABRICKS_HOST": workspace.url, "DATABRICKS_TOKEN": pat},
                 "databricks")
    expect(run, "credentials-invalid")
    check = run.check("auth.credential")
    assert "Invalid access token" in check["summary"] and "403" in check["summary"]
    assert "DATABRICKS_TOKEN" in check["fix"]
    assert run.check("http.answer")["status"] == "ok"


def test_bad_oauth_client_secret(dbhome: Path, workspace: StandInWorkspace) -> None:
    """A service principal whose OAuth secret is wrong or expired: the token endpoint answers
    401 invalid_client `Client authentication failed`."""
    client_id, _ = workspace.add_service_principal("ci-bot")
    _cfg(dbhome, f"[ci]\nhost = {workspace.url}\nclient_id = {client_id}\n"
                 "client_secret = dose-expired-0123456789\n")
    run = doctor(dbhome, {}, "databricks://ci", extra_secrets=("dose-expired-0123456789",))
    expect(run, "credentials-invalid")
    check = run.check("auth.token")
    assert "invalid_client" in check["summary"] and client_id in check["summary"]
    assert "new OAuth secret" in check["fix"]


def test_permission_denied_on_the_experiment_path(dbhome: Path,
                                                  workspace: StandInWorkspace) -> None:
    """Row 23's other 403: a valid PAT, but PERMISSION_DENIED creating the experiment in a
    folder the user may not edit — permission-denied, the credential reported as accepted."""
    pat = workspace.add_user(USER)
    workspace.folders.add("/Shared/restricted")
    workspace.denied_folders.add("/Shared/restricted")
    env = {"DATABRICKS_HOST": workspace.url, "DATABRICKS_TOKEN": pat,
           "MLFLOW_EXPERIMENT_NAME": "/Shared/restricted/churn"}
    run = doctor(dbhome, env, "databricks")
    expect(run, "permission-denied")
    assert run.check("auth.credential")["status"] == "ok"
    check = run.check("authz.write")
    assert "PERMISSION_DENIED" in check["summary"] and "/Shared/restricted" in check["summary"]
    assert f"/Users/{USER}" in check["fix"]


def test_sso_login_page(dbhome: Path) -> None:
    """Row 24: the host answers an SSO login page (HTML) where the REST API's JSON was
    expected — a browser-only front or a private-link host reached from outside."""
    with StandInWorkspace(mode="sso") as ws:
        run = doctor(dbhome, {"DATABRICKS_HOST": ws.url,
                              "DATABRICKS_TOKEN": "dapi0123456789abcdef0123456789ab"},
                     "databricks")
    expect(run, "not-mlflow-server")
    check = run.check("http.answer")
    assert "login page" in check["summary"] and "login.html" in check["summary"]


def test_browser_url_as_host(dbhome: Path, workspace: StandInWorkspace) -> None:
    """Row 24: `?o=<workspace id>` pasted from the browser into DATABRICKS_HOST: the SDK keeps
    it, so API paths land on the web UI; the fix is the bare host, and the rest of the chain is
    diagnosed against it."""
    pat = workspace.add_user(USER)
    env = {"DATABRICKS_HOST": f"{workspace.url}/?o=1234567890123456#/mlflow/experiments",
           "DATABRICKS_TOKEN": pat}
    run = doctor(dbhome, env, "databricks")
    expect(run, "not-mlflow-server")
    check = run.check("config.host")
    assert "?o=1234567890123456" in check["summary"] and check["fix"].startswith(
        f"set the host to {workspace.url} only")
    assert run.check("auth.credential")["status"] == "ok"


def test_firewall_resets_the_connection(dbhome: Path, tls: object) -> None:
    """A corporate firewall that resets TLS connections to the workspace (the TCP connect
    succeeds, the handshake is cut with RST)."""
    with StandInWorkspace(mode="reset", tls=(tls.cert, tls.key)) as ws:  # type: ignore[attr-defined]
        run = doctor(dbhome, {"DATABRICKS_HOST": ws.url,
                              "DATABRICKS_TOKEN": "dapi0123456789abcdef0123456789ab"},
                     "databricks")
    expect(run, "tls-mismatch")
    assert "firewall" in run.check("tls")["summary"]
    assert run.check("tcp")["status"] == "ok"


def test_unity_catalog_privilege_missing(dbhome: Path, workspace: StandInWorkspace) -> None:
    """Row 25: the `databricks-uc` registry refuses with PERMISSION_DENIED `User does not have
    CREATE MODEL on Schema 'main.default'` — permission-denied naming the privilege; with
    --read-only the same answer comes from the effective permissions."""
    pat = workspace.add_user(USER)
    workspace.grant(USER, "catalog:main", "USE_CATALOG")
    workspace.grant(USER, "schema:main.default", "USE_SCHEMA")
    _cfg(dbhome, f"[uc]\nhost = {workspace.url}\ntoken = {pat}\n")
    env = {db.UC_SCHEMA_VARIABLE: "main.default"}
    run = doctor(dbhome, env, "databricks-uc://uc", extra_secrets=(pat,))
    expect(run, "permission-denied")
    check = run.check("authz.registry")
    assert "CREATE MODEL on schema main.default" in check["summary"]
    assert f"GRANT CREATE MODEL ON SCHEMA main.default TO `{USER}`" in check["fix"]
    before = len(workspace.requests)
    quiet = doctor(dbhome, env, "databricks-uc://uc", "--read-only", extra_secrets=(pat,))
    expect(quiet, "permission-denied")
    assert "CREATE MODEL" in quiet.check("authz.registry")["summary"]
    assert all(method == "GET" for method, _ in workspace.requests[before:])
    assert workspace.models == set() and _active(workspace) == []


def test_tracking_uri_names_another_workspace(dbhome: Path, workspace: StandInWorkspace) -> None:
    """The workspace diagnosed is not the one MLFLOW_TRACKING_URI logs to (two profiles)."""
    pat = workspace.add_user(USER)
    _cfg(dbhome, f"[dev]\nhost = {workspace.url}\ntoken = {pat}\n"
                 f"[prod]\nhost = https://127.0.0.1:{standins.closed_port()}\ntoken = {pat}\n")
    run = doctor(dbhome, {"MLFLOW_TRACKING_URI": "databricks://prod"}, "databricks://dev",
                 extra_secrets=(pat,))
    expect(run, "endpoint-mismatch")
    assert "MLFLOW_TRACKING_URI=databricks://prod" in run.check("consistency.tracking")["summary"]


def test_two_auth_methods_configured(dbhome: Path) -> None:
    """A PAT and an OAuth client at once: the SDK refuses (`more than one authorization
    method configured`) — config-invalid before any request."""
    env = {"DATABRICKS_HOST": "https://dbc-1.cloud.databricks.com",
           "DATABRICKS_TOKEN": "dapi0123456789abcdef0123456789ab",
           "DATABRICKS_CLIENT_ID": "c0ffee", "DATABRICKS_CLIENT_SECRET": "dose0123456789"}
    run = doctor(dbhome, env, "databricks", extra_secrets=("dose0123456789",))
    expect(run, "config-invalid")
    assert "DATABRICKS_AUTH_TYPE" in run.check("config.credential")["fix"]


def test_workspace_name_does_not_resolve(dbhome: Path, tmp_path: Path) -> None:
    """An Azure Databricks workspace name that does not resolve from here (private link, or a
    typo); DNS confined to a loopback stub answering NXDOMAIN, as in test_s3."""
    wrap, _ = _confined_dns(tmp_path)
    host = "adb-1234567890123456.7.azuredatabricks.net" if wrap else \
        "x" * 70 + ".azuredatabricks.net"
    env = {"DATABRICKS_HOST": f"https://{host}",
           "DATABRICKS_TOKEN": "dapi0123456789abcdef0123456789ab"}
    started = time.monotonic()
    with standins.nxdomain_dns():
        run = doctor(dbhome, env, "databricks", wrap=wrap)
    expect(run, "dns-failure")
    assert host in run.check("dns")["summary"]
    assert time.monotonic() - started < RUN_BOUND


def test_registry_in_another_workspace_warns(dbhome: Path, workspace: StandInWorkspace) -> None:
    """`cloudtrack doctor` without a URI diagnoses MLFLOW_TRACKING_URI; MLFLOW_REGISTRY_URI
    naming another workspace's profile registers models away from the runs: a warning (a
    shared registry workspace can be deliberate), exit 0."""
    pat = workspace.add_user(USER)
    _cfg(dbhome, f"[dev]\nhost = {workspace.url}\ntoken = {pat}\n"
                 f"[prod]\nhost = https://127.0.0.1:{standins.closed_port()}\ntoken = {pat}\n")
    run = doctor(dbhome, {"MLFLOW_TRACKING_URI": "databricks://dev",
                          "MLFLOW_REGISTRY_URI": "databricks-uc://prod"}, extra_secrets=(pat,))
    expect(run, "ok", backend="databricks")
    assert run.report["status"] == "warn"
    check = run.check("consistency.registry")
    assert check["status"] == "warn" and check["cause"] == "endpoint-mismatch"
    assert "databricks-uc://prod" in check["summary"]
    assert "env:MLFLOW_TRACKING_URI" in run.check("config.uri")["summary"]


def test_databricks_cli_login(dbhome: Path, workspace: StandInWorkspace, tmp_path: Path) -> None:
    """A profile with only a host, after `databricks auth login`: the SDK's databricks-cli
    credential runs `databricks auth token --host …` (here a script printing what the CLI
    prints) and signs with its access token."""
    token = workspace.add_user(USER)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "databricks"
    cli.write_text("#!/bin/sh\n[ \"$1 $2 $3\" = \"auth token --host\" ] || exit 2\n"
                   f"echo '{{\"access_token\": \"{token}\", \"token_type\": \"Bearer\"}}'\n")
    cli.chmod(0o755)
    _cfg(dbhome, f"[u2m]\nhost = {workspace.url}\n")
    import os

    run = doctor(dbhome, {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
                 "databricks://u2m", extra_secrets=(token,))
    healthy(run, "databricks CLI login")
    assert "Databricks CLI" in run.check("config.credential")["summary"]
    assert run.check("auth.token")["status"] == "ok"


def _fake_az(tmp_path: Path, script: str) -> dict[str, str]:
    """A PATH whose `az` is ``script``: no Entra ID runs on loopback, so the Azure CLI is the
    one thing here that stands in, printing what `az account get-access-token` prints."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text("#!/bin/sh\n" + script)
    az.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


AZURE_RESOURCE = ("/subscriptions/5a1b2c3d-0000-4000-8000-00000000a001/resourceGroups/rg/"
                  "providers/Microsoft.Databricks/workspaces/adb-ws")


def test_azure_cli_login(dbhome: Path, workspace: StandInWorkspace, tmp_path: Path) -> None:
    """Azure Databricks after `az login`, nothing else configured: the SDK's azure-cli
    credential asks `az account get-access-token --resource <Azure Databricks' app id>`
    and signs with that Entra ID token."""
    token = workspace.add_user(USER)
    want = f"account get-access-token --resource {db.AZURE_DATABRICKS_APP} --output json"
    env = _fake_az(tmp_path, f"[ \"$*\" = \"{want}\" ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n"
                             f"echo '{{\"accessToken\": \"{token}\", \"tokenType\": \"Bearer\", "
                             "\"expiresOn\": \"2099-01-01 00:00:00.000000\"}'\n")
    _cfg(dbhome, f"[azure]\nhost = {workspace.url}\n"
                 f"azure_workspace_resource_id = {AZURE_RESOURCE}\n")
    run = doctor(dbhome, env, "databricks://azure", extra_secrets=(token,))
    healthy(run, "Azure CLI login")
    assert "Azure CLI" in run.check("config.credential")["summary"]
    assert "Entra ID token" in run.check("auth.token")["summary"]
    assert f"user {USER}" in run.check("auth.identity")["summary"]


def test_azure_cli_login_expired(dbhome: Path, workspace: StandInWorkspace,
                                 tmp_path: Path) -> None:
    """The Azure CLI's refresh token expired (what it prints then, AADSTS700082): the doctor
    says so and the fix is `az login`, before any request is blamed on the workspace."""
    env = _fake_az(tmp_path, "echo 'ERROR: AADSTS700082: The refresh token has expired due to "
                             "inactivity.' >&2\nexit 1\n")
    _cfg(dbhome, f"[azure]\nhost = {workspace.url}\n"
                 f"azure_workspace_resource_id = {AZURE_RESOURCE}\n")
    run = doctor(dbhome, env, "databricks://azure")
    expect(run, "token-expired")
    check = run.check("auth.token")
    assert "AADSTS700082" in check["summary"] and "az login" in check["fix"]


# -- Azure Databricks: Entra ID service principals and managed identities -------------------------
#
# The workspace and Entra ID are reached by their real names (adb-….azuredatabricks.net,
# login.microsoftonline.com) through a loopback CONNECT proxy whose allow-list maps them to the
# stand-ins (HTTPS_PROXY, as a corporate proxy carries them): the doctor asks the authority the
# SDK would ask, no name is looked up and nothing else is let through.  One throw-away CA signs
# both names (REQUESTS_CA_BUNDLE).

ADB = "adb-1234567890123456.7.azuredatabricks.net"
LOGIN = "login.microsoftonline.com"
TENANT = "72f9a8bf-0000-4000-8000-0000000000aa"


@dataclass
class AzureSite:
    ws: StandInWorkspace
    entra: EntraId
    identity: ManagedIdentityEndpoint
    proxy: standins.TunnelProxy
    env: dict[str, str]

    def minted(self) -> list[str]:
        return sorted(self.entra.issued | self.identity.minted)


@pytest.fixture(scope="module")
def azure_tls(tmp_path_factory: pytest.TempPathFactory) -> object:
    return make_tls_files(tmp_path_factory.mktemp("adbtls"), names=(ADB, LOGIN))


@pytest.fixture
def azure(azure_tls: object, tmp_path: Path) -> Iterator[AzureSite]:
    tls = (azure_tls.cert, azure_tls.key)  # type: ignore[attr-defined]
    identity = ManagedIdentityEndpoint()
    serving = threading.Thread(target=identity.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    no_tools = tmp_path / "empty-path"
    no_tools.mkdir()
    try:
        with StandInWorkspace(tls=tls) as ws, EntraId(tls=tls) as entra, \
                standins.TunnelProxy({f"{ADB}:443": ws.server_address[1],
                                      f"{LOGIN}:443": entra.port}) as proxy:
            ws.trust(entra)
            ws.trust(identity)
            # PATH without `az` or `databricks`: the chain must not find a developer login.
            env = {"DATABRICKS_HOST": f"https://{ADB}", "HTTPS_PROXY": proxy.url,
                   "NO_PROXY": "127.0.0.1,localhost", "PATH": str(no_tools),
                   "REQUESTS_CA_BUNDLE": str(azure_tls.ca)}  # type: ignore[attr-defined]
            yield AzureSite(ws, entra, identity, proxy, env)
            assert set(proxy.seen) <= {f"{ADB}:443", f"{LOGIN}:443"}, proxy.seen
    finally:
        identity.shutdown()
        identity.server_close()


def test_azure_clouds_and_chain() -> None:
    """The authority follows the workspace's cloud (databricks-sdk's environments); ARM_USE_MSI
    alone is what MLflow's databricks-sdk cannot use when its chain has no azure-msi."""
    assert db.azure_cloud(f"https://{ADB}").login == "https://login.microsoftonline.com"
    assert db.azure_cloud("https://adb-1.2.databricks.azure.cn").login == \
        "https://login.chinacloudapi.cn"
    assert db.azure_cloud("https://adb-1.2.databricks.azure.us").login == \
        "https://login.microsoftonline.us"
    env = {"HOME": "/nonexistent", "PATH": "/nonexistent", "DATABRICKS_HOST": f"https://{ADB}",
           "ARM_USE_MSI": "true"}
    choice = db.choose(db.resolve("databricks", env), env)
    assert choice.kind == "azure-msi"
    known = db.sdk_auth_types()
    assert known is not None and "azure-client-secret" in known
    assert bool(choice.unsupported) == ("azure-msi" not in known)


def test_azure_service_principal_healthy(dbhome: Path, azure: AzureSite) -> None:
    """An Entra ID service principal added to an Azure Databricks workspace, client id and
    secret in a profile, no tenant (the SDK reads it from the workspace's /aad/auth redirect):
    client-credentials tokens from Entra ID sign every probe, with the management token."""
    client_id, secret = azure.entra.add_app(TENANT, "ci-bot")
    azure.ws.add_azure_sp(client_id, "ci-bot")
    azure.ws.azure_tenant = TENANT
    _cfg(dbhome, f"[adb]\nhost = https://{ADB}\nazure_client_id = {client_id}\n"
                 f"azure_client_secret = {secret}\n")
    env = {k: v for k, v in azure.env.items() if k != "DATABRICKS_HOST"}
    run = doctor(dbhome, env, "databricks://adb", extra_secrets=(secret,))
    healthy(run, "Azure Databricks service principal")
    assert "Azure service principal" in run.check("config.credential")["summary"]
    token = run.check("auth.token")["summary"]
    assert TENANT in token and "/aad/auth" in token and "Management-Token" in token
    assert f"service principal ci-bot (application id {client_id})" in \
        run.check("auth.identity")["summary"]
    assert "renews it" in run.check("auth.expiry")["summary"]
    assert {r for _, _, r in azure.entra.requests} == {db.AZURE_DATABRICKS_APP,
                                                       "https://management.core.windows.net/"}
    assert azure.ws.management_tokens, "the management token was not sent"
    text = doctor(dbhome, env, "databricks://adb", json_out=False, extra_secrets=(secret,))
    assert text.code == 0 and "Entra ID token" in text.out
    for each in (run, text):
        assert_no_secrets(each, azure.minted())


@pytest.mark.parametrize("case, cause, said, fix", [
    ("wrong-secret", "credentials-invalid", "AADSTS7000215", "not its Secret ID"),
    ("expired-secret", "token-expired", "AADSTS7000222", "new client secret"),
    ("app-not-in-tenant", "credentials-invalid", "AADSTS700016", "Application (client) ID"),
    ("unknown-tenant", "config-invalid", "AADSTS90002", "Directory (tenant) ID"),
    ("tenant-by-name", "config-invalid", "AADSTS900023", "Directory (tenant) ID"),
])
def test_azure_service_principal_refused(dbhome: Path, azure: AzureSite, case: str, cause: str,
                                         said: str, fix: str) -> None:
    """Entra ID refusing the client credentials with the AADSTS errors users meet: a wrong
    secret (or its Secret ID), an expired secret, an app not in the tenant, a wrong tenant, a
    tenant given by its display name instead of its id."""
    client_id, secret = azure.entra.add_app(TENANT, "ci-bot",
                                            secret_expired=case == "expired-secret")
    other_tenant = "0b1c2d3e-0000-4000-8000-0000000000ff"
    azure.entra.tenants.add(other_tenant)
    sent = "Q~not-the-secret-0123456789" if case == "wrong-secret" else secret
    tenant = {"app-not-in-tenant": other_tenant,
              "unknown-tenant": "5c6d7e8f-0000-4000-8000-000000000bad",
              "tenant-by-name": "Contoso Research"}.get(case, TENANT)
    env = {**azure.env, "ARM_CLIENT_ID": client_id, "ARM_CLIENT_SECRET": sent,
           "ARM_TENANT_ID": tenant}
    run = doctor(dbhome, env, "databricks", extra_secrets=(secret, sent))
    expect(run, cause)
    check = run.check("auth.token")
    assert said in check["summary"] and fix in check["fix"]
    if case == "app-not-in-tenant":
        assert other_tenant in check["summary"]
    assert not any(method != "GET" for method, _ in azure.ws.requests)
    assert_no_secrets(run, azure.minted())


def test_azure_service_principal_not_in_workspace(dbhome: Path, azure: AzureSite) -> None:
    """A valid Entra ID token of a service principal nobody added to the workspace: Azure
    Databricks answers its 403 page `User not authorized.` (HTML, not the REST API's JSON)."""
    client_id, secret = azure.entra.add_app(TENANT, "ci-bot")
    env = {**azure.env, "ARM_CLIENT_ID": client_id, "ARM_CLIENT_SECRET": secret,
           "ARM_TENANT_ID": TENANT}
    run = doctor(dbhome, env, "databricks", extra_secrets=(secret,))
    expect(run, "permission-denied")
    assert run.check("auth.token")["status"] == "ok"
    check = run.check("auth.credential")
    assert client_id in check["summary"] and "User not authorized" in check["summary"]
    assert "add the service principal to the workspace" in check["fix"] and \
        client_id in check["fix"]
    assert_no_secrets(run, azure.minted())


@pytest.mark.parametrize("member", [True, False], ids=["workspace-user", "not-a-user"])
def test_azure_cli_user(dbhome: Path, azure: AzureSite, tmp_path: Path, member: bool) -> None:
    """`az login` as an Entra ID user, nothing else configured: the Azure CLI's token for Azure
    Databricks signs every probe.  A user the workspace does not know gets Azure Databricks'
    403 `User not authorized.`: permission-denied, naming the user, not a bad token."""
    user = "dana@contoso.example"
    if member:
        azure.ws.add_azure_user(user)
    token = azure.entra.user_token(TENANT, user)
    want = f"account get-access-token --resource {db.AZURE_DATABRICKS_APP} --output json"
    env = {**azure.env, **_fake_az(
        tmp_path, f"[ \"$*\" = \"{want}\" ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n"
                  f"echo '{{\"accessToken\": \"{token}\", \"tokenType\": \"Bearer\", "
                  "\"expiresOn\": \"2099-01-01 00:00:00.000000\"}'\n")}
    run = doctor(dbhome, env, "databricks")
    assert "Azure CLI" in run.check("config.credential")["summary"]
    assert run.check("auth.token")["status"] == "ok"
    if member:
        healthy(run, "Azure CLI user")
        assert f"user {user}" in run.check("auth.identity")["summary"]
    else:
        expect(run, "permission-denied")
        check = run.check("auth.credential")
        assert f"signed in user {user}" in check["summary"]
        assert "User not authorized" in check["summary"]
        assert f"add {user} to the workspace" in check["fix"]
    assert_no_secrets(run, azure.minted())


def test_azure_managed_identity_via_identity_endpoint(dbhome: Path, azure: AzureSite) -> None:
    """ARM_USE_MSI on App Service/Functions/Azure ML compute (IDENTITY_ENDPOINT and
    IDENTITY_HEADER, the stand-in of backends/azureml): the managed identity's token signs every
    probe; while MLflow's databricks-sdk has no azure-msi credential, that is the one failure,
    with `az login --identity` as the fix."""
    azure.ws.add_azure_sp(APP_ID, "vm-identity")
    env = {**azure.env, "ARM_USE_MSI": "true", **azure.identity.env("valid")}
    run = doctor(dbhome, env, "databricks")
    assert "IDENTITY_ENDPOINT" in run.check("auth.token")["summary"]
    assert f"application id {APP_ID}" in run.check("auth.identity")["summary"]
    assert "valid for" in run.check("auth.expiry")["summary"]
    assert "created and deleted" in run.check("authz.write")["summary"]
    known = db.sdk_auth_types()
    if known is not None and "azure-msi" not in known:
        expect(run, "credentials-missing")
        assert [c["id"] for c in run.failing()] == ["config.credential"]
        assert "az login --identity" in run.check("config.credential")["fix"]
    else:
        healthy(run, "Azure Databricks managed identity")
    text = doctor(dbhome, env, "databricks", json_out=False)
    for each in (run, text):
        assert_no_secrets(each, azure.minted())


def test_azure_managed_identity_not_assigned(dbhome: Path, azure: AzureSite) -> None:
    """ARM_CLIENT_ID names a user-assigned identity that is not assigned to this app: App
    Service's identity endpoint answers 400 `Unable to load the proper Managed Identity.`"""
    other = "c10d7ac4-0000-4000-8000-0000000000ee"
    env = {**azure.env, "ARM_USE_MSI": "true", "ARM_CLIENT_ID": other,
           **azure.identity.env("valid")}
    run = doctor(dbhome, env, "databricks")
    assert run.check("auth.token")["cause"] == "credentials-invalid"
    assert "Unable to load the proper Managed Identity" in run.check("auth.token")["summary"]
    assert other in run.check("auth.token")["fix"]


def test_azure_managed_identity_unreachable(dbhome: Path, azure: AzureSite) -> None:
    """ARM_USE_MSI off Azure: no identity endpoint answers (IMDS is pointed at a closed loopback
    port with AZURE_POD_IDENTITY_AUTHORITY_HOST, which azure-identity reads, instead of
    169.254.169.254): credentials-missing at once."""
    env = {**azure.env, "ARM_USE_MSI": "true",
           "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{standins.closed_port()}"}
    run = doctor(dbhome, env, "databricks", "--timeout", "2")
    check = run.check("auth.token")
    assert check["status"] == "fail" and check["cause"] == "credentials-missing"
    assert "IMDS" in check["summary"] and "ARM_USE_MSI needs a machine" in check["fix"]
    assert run.seconds < RUN_BOUND
