"""``cloudtrack doctor`` on Azure Machine Learning workspaces (``azureml://`` tracking URIs;
catalogue rows 26 and 27).

No Azure ML runs on loopback, so the workspace is the stand-in of ``backends/azureml`` (its
docstring says what it answers, and where those answers come from), reached through the
``azureml://`` URI itself: the doctor runs as the real command in a child process whose mount
namespace has its own ``/etc/hosts`` (``eastus.api.azureml.ms`` → 127.0.0.1) and a
``/etc/resolv.conf`` pointing at 127.0.0.1, so no name lookup leaves this machine; the URI
carries the stand-in's port (azureml-mlflow connects to ``https://`` + the URI's netloc).
Tokens come from ``DefaultAzureCredential``'s unmodified chain, through the stand-in of App
Service's managed-identity endpoint.

azureml-mlflow is not installed here (nor may it be required).  Where a test needs MLflow's
plugin present, a tiny fake distribution on the child's PYTHONPATH stands in for it: an
``azureml.mlflow`` module and the ``mlflow.tracking_store`` entry point ``azureml`` that the
real package registers — the doctor only looks them up, never imports the plugin.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.azureml.service import (
    APP_ID,
    HOST,
    OTHER_TENANT_ID,
    OUTSIDER_OID,
    REGION,
    REGISTRY,
    RESOURCE_GROUP,
    RUN_ID,
    SUBSCRIPTION,
    TENANT_ID,
    WORKSPACE,
    AzureMLWorkspace,
    registry_uri,
    tracking_uri,
)
from cloudtrack.doctor import azureml
from tests.doctor import standins
from tests.fixtures.doctor import RUN_BOUND, Run, assert_no_secrets, doctor, expect, healthy

pytestmark = pytest.mark.timeout(120)

WSID = "0a1b2c3d-4e5f-4a6b-8c7d-000000000123"
PRIVATE_HOST = f"{WSID}.workspace.{REGION}.api.azureml.ms"


# -- the URI -------------------------------------------------------------------------------------


def test_parse_names_every_part() -> None:
    ws = azureml.parse(tracking_uri(443))
    assert isinstance(ws, azureml.Workspace)
    assert (ws.region, ws.subscription, ws.resource_group, ws.name) == (
        REGION, SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)
    assert ws.endpoint == f"https://{HOST}" and ws.cloud.scope == \
        "https://management.azure.com/.default"
    assert ws.api_base("2.0").endswith(f"/mlflow/v2.0/subscriptions/{SUBSCRIPTION}/resourceGroups/"
                                       f"{RESOURCE_GROUP}/providers/Microsoft."
                                       f"MachineLearningServices/workspaces/{WORKSPACE}")
    private = azureml.parse(tracking_uri(443, PRIVATE_HOST))
    assert isinstance(private, azureml.Workspace) and private.workspace_id == WSID
    china = azureml.parse(tracking_uri(443, "chinaeast2.api.ml.azure.cn"))
    assert isinstance(china, azureml.Workspace) and "chinacloudapi" in china.cloud.scope


def test_parse_a_registry_uri() -> None:
    """An Azure ML registry's URI (``…/registries/<name>``, for ``mlflow.set_registry_uri``)
    is valid: the same parts, the registry's resource id."""
    reg = azureml.parse(registry_uri(443))
    assert isinstance(reg, azureml.Workspace) and reg.registry and reg.noun == "registry"
    assert reg.name == REGISTRY and reg.resource_id.endswith(f"/registries/{REGISTRY}")
    assert reg.search.startswith("/api/2.0/mlflow/registered-models/search")
    workspace = azureml.parse(tracking_uri(443))
    assert isinstance(workspace, azureml.Workspace) and not workspace.registry


@pytest.mark.parametrize("uri, why", [
    ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/abc/resourceGroups/rg/providers/"
     "Microsoft.MachineLearningServices/workspaces/ws", "not a subscription id"),
    ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/" + SUBSCRIPTION, "path"),
    ("azureml://example.com/mlflow/v1.0/subscriptions/" + SUBSCRIPTION, "regional endpoint"),
    ("azureml:///mlflow/v1.0", "no host"),
])
def test_parse_says_what_is_wrong(uri: str, why: str) -> None:
    found = azureml.parse(uri)
    assert isinstance(found, str) and why in found


def test_malformed_uri(home: Path) -> None:
    """An azureml:// URI cut short (a copy-paste that lost the workspace): config-invalid,
    and the fix shows the expected form and the command that prints the real URI.  The old
    SDK's URIs carried a token in ``?auth=``: it is not printed."""
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLWNsYWltcw.c2lnbmF0dXJl"
    run = doctor(home, {}, f"azureml://{HOST}/mlflow/v1.0/subscriptions/{SUBSCRIPTION}"
                 f"/resourceGroups/{RESOURCE_GROUP}?auth-type=ArmTokenAuthentication&auth={token}",
                 extra_secrets=(token,))
    expect(run, "config-invalid", backend="azureml")
    fix = run.check("config.uri")["fix"]
    assert "workspaces/<workspace>" in fix and "mlflow_tracking_uri" in fix


# -- the command against the stand-in workspace -------------------------------------------------


def _confine(tmp_path: Path, hosts: str, *, no_network: bool = False) -> list[str]:
    """A command prefix: a private mount namespace (and with ``no_network`` a network
    namespace with nothing in it) whose /etc/hosts is ``hosts`` and whose DNS server is
    127.0.0.1 — no lookup leaves this machine."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not available: names cannot be confined to loopback")
    (tmp_path / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}\n")
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    prefix = [unshare, "-mn" if no_network else "-m", "sh", "-c",
              'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift '
              '&& exec "$@"', str(tmp_path / "hosts"), str(tmp_path / "resolv.conf")]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are not allowed here: {probe.stderr.decode()[-300:]}")
    return prefix


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder for PYTHONPATH standing in for an installed azureml-mlflow: its module and the
    entry point through which MLflow finds it (both are all the doctor looks at)."""
    root = tmp_path_factory.mktemp("fake-azureml-mlflow")
    module = root / "azureml" / "mlflow"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text('"""Stands in for azureml-mlflow in tests."""\n')
    info = root / "azureml_mlflow-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: azureml-mlflow\n"
                                   "Version: 0.0.0+cloudtrack.standin\n")
    (info / "entry_points.txt").write_text(
        "[mlflow.tracking_store]\nazureml = azureml.mlflow.entry_point_loaders:"
        "azureml_store_builder\n")
    return str(root)


@pytest.fixture
def workspace() -> Iterator[AzureMLWorkspace]:
    with AzureMLWorkspace() as ws:
        yield ws


def _run(home: Path, tmp_path: Path, ws: AzureMLWorkspace, kind: str | None, plugin: str | None,
         uri: str | None = None, **extra: str) -> Run:
    env = {**(ws.env(kind) if kind else {"REQUESTS_CA_BUNDLE": str(ws.tls.ca),
                                         "SSL_CERT_FILE": str(ws.tls.ca)}), **extra}
    if plugin:
        env["PYTHONPATH"] = plugin
    run = doctor(home, env, uri or ws.uri, wrap=_confine(tmp_path, f"127.0.0.1 {HOST}"))
    assert_no_secrets(run, sorted(ws.tokens.minted))
    assert ws.tokens.minted or kind is None
    assert run.report["backend"] == "azureml"
    return run


def test_healthy(home: Path, tmp_path: Path, workspace: AzureMLWorkspace, plugin: str) -> None:
    """A workspace where the managed identity holds 'AzureML Data Scientist', with the plugin
    installed (the fake distribution stands in for it): every check passes."""
    run = _run(home, tmp_path, workspace, "valid", plugin)
    healthy(run, "azureml")
    assert "0.0.0+cloudtrack.standin" in run.check("config.extra")["summary"]
    assert "/mlflow/v2.0/" in run.check("config.settings")["summary"]
    assert "ManagedIdentityCredential" in run.check("auth.credential")["summary"]
    assert TENANT_ID in run.check("auth.tenant")["summary"]
    assert any(bearer and "experiments/search" in path
               for _, path, bearer in workspace.requests), "the token was sent to the workspace"


def test_plugin_missing(home: Path, tmp_path: Path, workspace: AzureMLWorkspace) -> None:
    """Row 26: "unsupported URI 'azureml://…'" — azureml-mlflow is not installed (as here).
    dependency-missing with the install command; everything else is still diagnosed (and
    passes: the same healthy workspace)."""
    run = _run(home, tmp_path, workspace, "valid", None)
    expect(run, "dependency-missing")
    assert [c["id"] for c in run.failing()] == ["config.extra"]
    assert "pip install azureml-mlflow" in run.check("config.extra")["fix"]
    assert run.check("authz.read")["status"] == "ok"


def test_no_credential_in_the_chain(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                                    plugin: str) -> None:
    """Row 27, first half: DefaultAzureCredential failed to retrieve a token.  The chain is
    limited to the developer credentials (AZURE_TOKEN_CREDENTIALS=dev), so it never asks the
    instance metadata service (which would leave loopback); none of them is signed in here."""
    run = _run(home, tmp_path, workspace, None, plugin, AZURE_TOKEN_CREDENTIALS="dev")
    expect(run, "credentials-missing")
    check = run.check("auth.credential")
    assert "AzureCliCredential" in check["summary"] and "management.azure.com" in check["summary"]
    assert f"az login --tenant {TENANT_ID}" in check["fix"], "the tenant of the 401 challenge"


def test_expired_token(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                       plugin: str) -> None:
    """A stale token cache handing out an expired token: the doctor says so from the token's
    claims, and shows the workspace's own 401 ExpiredAuthenticationToken."""
    run = _run(home, tmp_path, workspace, "expired", plugin)
    expect(run, "token-expired")
    assert "expired" in run.check("auth.identity")["summary"]
    assert "ExpiredAuthenticationToken" in run.check("auth.accepted")["summary"]


def test_invalid_token(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                       plugin: str) -> None:
    """A token the workspace does not accept though its claims look fine (a revoked or
    tampered one; here its signature is not one the stand-in issued): 401
    InvalidAuthenticationToken → credentials-invalid."""
    run = _run(home, tmp_path, workspace, "forged", plugin)
    expect(run, "credentials-invalid")
    assert "InvalidAuthenticationToken" in run.check("auth.accepted")["summary"]


def test_no_workspace_role(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                           plugin: str) -> None:
    """Row 27: AuthorizationFailed — a principal with no role on the workspace: the doctor
    names the action, the role and the command that grants it, scoped to the workspace."""
    run = _run(home, tmp_path, workspace, "no-role", plugin)
    expect(run, "permission-denied")
    check = run.check("authz.read")
    assert "workspaces/experiments/read" in check["summary"]
    assert run.check("auth.accepted")["status"] == "ok"
    fix = check["fix"]
    assert 'az role assignment create --assignee c10d7ac4-0000-4000-8000-0000000000cc' in fix
    assert '--role "AzureML Data Scientist"' in fix
    assert f"workspaces/{WORKSPACE}" in fix


def test_tenant_mismatch(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                         plugin: str) -> None:
    """A credential signed in to another tenant than the subscription's (a guest, a second
    directory): the token's tid against the tenant of the workspace's 401 challenge, and the
    workspace's own InvalidAuthenticationTokenTenant."""
    run = _run(home, tmp_path, workspace, "other-tenant", plugin)
    expect(run, "credentials-invalid")
    tenant = run.check("auth.tenant")
    assert tenant["status"] == "fail"
    assert OTHER_TENANT_ID in tenant["summary"] and TENANT_ID in tenant["summary"]
    assert f"az login --tenant {TENANT_ID}" in tenant["fix"]
    assert f"--tenant {TENANT_ID}" in run.check("auth.accepted")["fix"]


def test_workspace_refuses_this_network(home: Path, tmp_path: Path, plugin: str) -> None:
    """Row 27, the network half: a workspace without public network access, reached from
    outside its virtual network, refuses even an unauthenticated request with 403 "Access to
    workspace was denied based on workspace private link configuration." — told apart from
    a credential problem; the credential is still checked (and is fine)."""
    with AzureMLWorkspace(private_link=True) as ws:
        run = _run(home, tmp_path, ws, "valid", plugin)
    expect(run, "permission-denied")
    check = run.check("http.answer")
    assert "private link" in check["summary"] and "no credentials" in check["summary"]
    assert "--public-network-access Enabled" in check["fix"]
    assert run.check("auth.credential")["status"] == "ok"


def test_wrong_workspace(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                         plugin: str) -> None:
    """A URI naming a workspace that is not there: 404 ResourceNotFound."""
    env = {**workspace.env("valid"), "PYTHONPATH": plugin}
    uri = tracking_uri(workspace.port, workspace="no-such-ws")
    run = doctor(home, env, uri, wrap=_confine(tmp_path, f"127.0.0.1 {HOST}"))
    expect(run, "container-not-found")
    assert "az ml workspace show" in run.check("authz.read")["fix"]


def test_private_link_name_from_outside(home: Path, tmp_path: Path, plugin: str) -> None:
    """Row 27: a private-link workspace from outside its virtual network.  Its name resolves
    (through the privatelink alias, as the private DNS zone answers) to the private endpoint's
    address, which this machine has no route to.  The child runs in an empty network namespace,
    so the connection attempt fails at once and sends nothing anywhere."""
    wrap = _confine(tmp_path, f"10.20.0.5 {WSID}.workspace.{REGION}.privatelink.api.azureml.ms "
                    f"{PRIVATE_HOST}", no_network=True)
    env = {"PYTHONPATH": plugin, "AZURE_TOKEN_CREDENTIALS": "dev"}
    run = doctor(home, env, tracking_uri(443, PRIVATE_HOST), wrap=wrap)
    expect(run, "network-timeout")
    assert "private" in run.check("dns")["summary"]
    tcp = run.check("tcp")
    assert "outside the workspace's virtual network" in tcp["summary"]
    assert "privatelink.api.azureml.ms" in tcp["fix"]
    assert run.check("auth.credential")["status"] == "fail", "credentials are checked too"
    assert run.seconds < RUN_BOUND


def test_name_does_not_resolve(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                               plugin: str) -> None:
    """gaierror for the workspace's host: a private-link name whose private DNS zone this
    machine's DNS does not know (DNS confined to a loopback stub answering NXDOMAIN).  The
    credential is still checked."""
    env = {**workspace.env("valid"), "PYTHONPATH": plugin}
    with standins.nxdomain_dns():
        run = doctor(home, env, tracking_uri(workspace.port, PRIVATE_HOST),
                     wrap=_confine(tmp_path, ""))
    expect(run, "dns-failure")
    check = run.check("dns")
    assert PRIVATE_HOST in check["summary"] and "privatelink.api.azureml.ms" in check["fix"]
    assert run.check("auth.credential")["status"] == "ok"
    assert run.seconds < RUN_BOUND


# -- a registry URI --------------------------------------------------------------------------------


def test_registry_healthy(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                          plugin: str) -> None:
    """A registry URI is diagnosed like a workspace's, not refused as invalid: the last check
    is MLflow's registered-models/search with the token."""
    run = _run(home, tmp_path, workspace, "valid", plugin, uri=registry_uri(workspace.port))
    healthy(run, "azureml")
    assert f"registry '{REGISTRY}'" in run.check("config.uri")["summary"]
    assert "Azure ML registry URI" in run.check("config.uri")["summary"]
    read = run.check("authz.read")["summary"]
    assert f"registered models of registry '{REGISTRY}'" in read and "at least one" in read
    assert any(bearer and f"registries/{REGISTRY}/api/2.0/mlflow/registered-models/search" in path
               for _, path, bearer in workspace.requests)


def test_registry_no_role(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                          plugin: str) -> None:
    """A principal with no role on the registry: the action Azure names, and the registry's
    role granted on the registry's scope."""
    run = _run(home, tmp_path, workspace, "no-role", plugin, uri=registry_uri(workspace.port))
    expect(run, "permission-denied")
    check = run.check("authz.read")
    assert "registries/read" in check["summary"] and "registry 'ml-registry'" in check["summary"]
    assert '--role "AzureML Registry User"' in check["fix"]
    assert f"registries/{REGISTRY}" in check["fix"]


def test_wrong_registry(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                        plugin: str) -> None:
    run = _run(home, tmp_path, workspace, "valid", plugin,
               uri=registry_uri(workspace.port, registry="no-such-registry"))
    expect(run, "container-not-found")
    check = run.check("authz.read")
    assert "registry 'no-such-registry' does not exist" in check["summary"]
    assert "az ml registry show --name no-such-registry" in check["fix"]


# -- inside an Azure ML job ------------------------------------------------------------------------


@pytest.mark.parametrize("value, year", [("4102444800", 2100), ("2100-01-01T00:00:00Z", 2100),
                                         ("2100-01-01 00:00:00", 2100), ("soon", None)])
def test_run_token_expiry_variable(value: str, year: int | None) -> None:
    """AZUREML_RUN_TOKEN_EXPIRY as azureml-core reads it: epoch seconds or a date."""
    when = azureml.run_token_expiry(value)
    assert (when.year if when else None) == year


def test_run_token_needs_all_four_variables() -> None:
    """azureml-mlflow signs with MLFLOW_TRACKING_TOKEN only when the URI, the token, the run id
    and an experiment are all present (its service-context loader's test)."""
    env = {"MLFLOW_TRACKING_URI": "azureml://x", "MLFLOW_TRACKING_TOKEN": "t",
           "MLFLOW_RUN_ID": "r", "MLFLOW_EXPERIMENT_ID": "1"}
    assert azureml.run_token_missing(env) == ()
    del env["MLFLOW_EXPERIMENT_ID"]
    assert azureml.run_token_missing(env) == ("MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME",)


def _in_job(home: Path, tmp_path: Path, ws: AzureMLWorkspace, env: dict[str, str],
            plugin: str, *args: str, json_out: bool = True) -> Run:
    """``cloudtrack doctor`` run by a job's process: its environment, no URI argument unless
    given (MLflow's is MLFLOW_TRACKING_URI)."""
    run = doctor(home, {**env, "PYTHONPATH": plugin}, *args, json_out=json_out,
                 wrap=_confine(tmp_path, f"127.0.0.1 {HOST}"))
    assert_no_secrets(run, sorted(ws.tokens.minted))
    return run


def test_job_healthy(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                     plugin: str) -> None:
    """A command job's process as the platform starts it (its AZUREML_* and MLFLOW_* variables,
    the run token in MLFLOW_TRACKING_TOKEN): the stand-in accepts its own run's token as Azure
    ML accepts a run's AML token.  The doctor names the job and signs with the run token, not
    with DefaultAzureCredential; no token in the text or the JSON."""
    env = workspace.job_env("valid")
    run = _in_job(home, tmp_path, workspace, env, plugin)
    healthy(run, "azureml in a job")
    job = run.check("config.job")["summary"]
    assert RUN_ID in job and f"workspace '{WORKSPACE}'" in job and SUBSCRIPTION in job
    assert "env:MLFLOW_TRACKING_URI" in run.check("config.uri")["summary"]
    credential = run.check("auth.credential")["summary"]
    assert "run token (MLFLOW_TRACKING_TOKEN)" in credential and "DefaultAzureCredential" in \
        credential, "says which credential, and why not the chain"
    assert "renews" in run.check("auth.identity")["summary"]
    assert not workspace.tokens.issued, "no Entra ID token was asked for"
    assert any(bearer and f"workspaces/{WORKSPACE}/api/2.0/mlflow/experiments/search" in path
               for _, path, bearer in workspace.requests)
    text = _in_job(home, tmp_path, workspace, env, plugin, json_out=False)
    assert text.code == 0 and "config.job" in text.out
    assert env["MLFLOW_TRACKING_TOKEN"] not in text.text() + run.text()


def test_job_run_token_expired(home: Path, tmp_path: Path, workspace: AzureMLWorkspace,
                               plugin: str) -> None:
    """Row 6 in a job: a run token past its exp (copied from an earlier run, or a job resumed
    after it expired), which the stand-in refuses with 401 ExpiredAuthenticationToken as
    Resource Manager refuses expired tokens: token-expired, from the token's own claims and
    from the workspace's answer, with the fix for long jobs."""
    env = workspace.job_env("expired")
    run = _in_job(home, tmp_path, workspace, env, plugin)
    expect(run, "token-expired", backend="azureml")
    identity = run.check("auth.identity")
    assert identity["status"] == "fail" and "expired" in identity["summary"]
    assert "MLFLOW_TRACKING_TOKEN" in identity["fix"] and "identity-based" in identity["fix"]
    accepted = run.check("auth.accepted")
    assert "ExpiredAuthenticationToken" in accepted["summary"]
    assert "resubmit the job" in accepted["fix"]
    text = _in_job(home, tmp_path, workspace, env, plugin, json_out=False)
    assert text.code == 1 and "token-expired" in text.out


def test_job_token_for_another_workspace(home: Path, tmp_path: Path,
                                         workspace: AzureMLWorkspace, plugin: str) -> None:
    """A job whose MLFLOW_TRACKING_URI was changed by hand to another workspace: azureml-mlflow
    would send the job's run token there (its run-token test looks only at the variables'
    presence), where a run token of another workspace is refused.  A consistency failure that
    names both workspaces; the token is not sent to the other one."""
    other = "ml-ws-other"
    env = {**workspace.job_env("valid"),
           "MLFLOW_TRACKING_URI": tracking_uri(workspace.port, workspace=other)}
    run = _in_job(home, tmp_path, workspace, env, plugin)
    expect(run, "endpoint-mismatch", backend="azureml")
    check = run.check("consistency.job-token")
    assert check["status"] == "fail"
    assert f"'{WORKSPACE}'" in check["summary"] and f"'{other}'" in check["summary"]
    assert "unset MLFLOW_TRACKING_TOKEN" in check["fix"]
    assert run.check("config.job-uri")["status"] == "warn"
    assert [c["id"] for c in run.failing()] == ["consistency.job-token"]
    assert not any(bearer and f"workspaces/{other}/" in path
                   for _, path, bearer in workspace.requests)


def test_job_managed_identity_without_role(home: Path, tmp_path: Path,
                                           workspace: AzureMLWorkspace, plugin: str) -> None:
    """A job without the run token variables (MLFLOW_TRACKING_TOKEN removed to use
    identity-based access) on a compute whose managed identity has no role on the workspace:
    DefaultAzureCredential reaches the stand-in of Azure ML compute's identity endpoint
    (MSI_ENDPOINT/MSI_SECRET), and the workspace answers 403 AuthorizationFailed as it does to a
    principal without a role.  permission-denied naming the role, for that identity."""
    env = workspace.job_env(None, identity="no-role")
    run = _in_job(home, tmp_path, workspace, env, plugin)
    expect(run, "permission-denied", backend="azureml")
    assert APP_ID in run.check("config.job")["summary"], "DEFAULT_IDENTITY_CLIENT_ID is shown"
    credential = run.check("auth.credential")["summary"]
    assert "ManagedIdentityCredential" in credential
    assert "MLFLOW_TRACKING_TOKEN is not set" in credential, "why not the run token"
    check = run.check("authz.read")
    assert "the job's identity" in check["summary"]
    assert f"--assignee {OUTSIDER_OID}" in check["fix"]
    assert '--role "AzureML Data Scientist"' in check["fix"] and "resubmit" in check["fix"]


def test_job_tracking_uri_overridden_to_a_local_path(home: Path, tmp_path: Path,
                                                     workspace: AzureMLWorkspace,
                                                     plugin: str) -> None:
    """A job whose MLFLOW_TRACKING_URI was set by hand to a local path: the workspace itself is
    fine (diagnosed from the command line), but the job's runs go to the compute's disk — a
    warning, exit 0."""
    env = {**workspace.job_env("valid"), "MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}
    run = _in_job(home, tmp_path, workspace, env, plugin, workspace.uri)
    expect(run, "ok")
    assert run.report["status"] == "warn"
    warning = run.check("config.job-uri")
    assert warning["status"] == "warn" and "file:///tmp/mlruns" in warning["summary"]
    assert "environment_variables" in warning["fix"]
