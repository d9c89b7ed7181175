"""``cloudtrack doctor`` on Azure: Azurite over HTTP with the account key and over HTTPS with
OAuth (one reproduction per failure of the catalogue that Azurite can produce), and the fix for
an identity without a data role (row 13: Azurite has no RBAC).

The doctor runs as the real command in a child process (tests/fixtures/doctor.py), exactly as
a user would run it.  Where no local service can produce a failure (a storage firewall, a
skewed clock), a stand-in from ``standins.py`` answers the same bytes the real thing would;
each such test says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.azure.service import ACCOUNT, ACCOUNT_KEY, Azurite, AzuriteOAuth
from cloudtrack.config import resolve
from cloudtrack.doctor import azure
from cloudtrack.errors import PermissionDenied
from tests.doctor import standins
from tests.fixtures.doctor import ALL, doctor, expect, healthy, sas_env

pytestmark = pytest.mark.timeout(300)


def test_identity_without_a_data_role() -> None:
    """Row 13: AuthorizationPermissionMismatch for a signed-in identity (Azurite has no RBAC):
    the fix names 'Storage Blob Data Contributor' and the az command with the scope."""
    config = resolve("wasbs://runs@acct.blob.core.windows.net/mlruns", {})
    classify = azure._classifier(config, "credential-chain", "DefaultAzureCredential", None)
    error = PermissionDenied("PUT failed")

    class HttpError(Exception):
        error_code = "AuthorizationPermissionMismatch"
        additional_info: dict[str, str] = {}

    error.__cause__ = HttpError()
    finding = classify(error, "write")
    assert (finding.layer, finding.cause) == ("authz", "permission-denied")
    assert "Storage Blob Data Contributor" in finding.summary
    fix = azure._access_fix(config, "credential-chain", None)(["write"])  # type: ignore[arg-type]
    assert "az role assignment create" in fix
    assert "storageAccounts/acct/blobServices/default/containers/runs" in fix


# -- the command against Azurite -------------------------------------------------------------------


def test_azure_healthy_account_key(home: Path, azurite: Azurite, az_uri: str) -> None:
    run = doctor(home, azurite.env, az_uri)
    healthy(run, "azure (key, http)")
    assert "Azurite" in run.check("http.answer")["summary"]


def test_azure_healthy_token_over_https(home: Path, azurite_oauth: AzuriteOAuth,
                                        az_oauth_uri: str) -> None:
    """DefaultAzureCredential's unmodified chain gets a token (App Service managed identity
    stand-in of the service); the report shows the token's claims and who issued it."""
    run = doctor(home, azurite_oauth.token_env("valid"), az_oauth_uri)
    healthy(run, "azure (token, https)")
    assert "ManagedIdentityCredential" in run.check("auth.credential")["summary"]
    identity = run.check("auth.identity")["summary"]
    assert "tenant c10d7ac4" in identity and "object id" in identity


def test_azure_healthy_sas(home: Path, azurite: Azurite, az_uri: str) -> None:
    run = doctor(home, sas_env(azurite, az_uri, 5, **ALL), az_uri)
    expect(run, "ok")
    assert "sp=racwdl" in run.check("auth.credential")["summary"]


def test_azure_wrong_account_key(home: Path, azurite: Azurite, az_uri: str) -> None:
    """Row 14, the bad-key half: Azurite answers a wrong SharedKey signature with
    AuthorizationFailure; the doctor calls it what it is."""
    run = doctor(home, azurite.bad_credentials_env(), az_uri)
    expect(run, "credentials-invalid")
    assert "Access keys" in run.check("auth.accepted")["fix"]


def test_azure_expired_sas(home: Path, azurite: Azurite, az_uri: str) -> None:
    """Row 16: Signature not valid in the specified time frame — an expired SAS."""
    run = doctor(home, sas_env(azurite, az_uri, -1, read=True, list=True), az_uri)
    expect(run, "token-expired")
    assert "az storage container generate-sas" in run.check("auth.credential")["fix"]


def test_azure_read_only_sas(home: Path, azurite: Azurite, az_uri: str) -> None:
    """Row 13 with a SAS: AuthorizationPermissionMismatch on write; the fix names sp=racwdl."""
    run = doctor(home, sas_env(azurite, az_uri, 5, read=True, list=True), az_uri)
    expect(run, "permission-denied")
    write = run.check("authz.write")
    assert "AuthorizationPermissionMismatch" in write["summary"] and "racwdl" in write["fix"]


def test_azure_missing_container(home: Path, azurite: Azurite) -> None:
    """Row 19: ContainerNotFound."""
    run = doctor(home, azurite.env, azurite.missing_store_uri())
    expect(run, "container-not-found")
    assert "az storage container create" in run.check("authz.container")["fix"]


def test_azure_expired_token(home: Path, azurite_oauth: AzuriteOAuth, az_oauth_uri: str) -> None:
    """Row 15: the identity endpoint hands out an expired token (a stale cache)."""
    run = doctor(home, azurite_oauth.token_env("expired"), az_oauth_uri)
    expect(run, "token-expired")
    assert "expired" in run.check("auth.identity")["summary"]


def test_azure_wrong_audience_token(home: Path, azurite_oauth: AzuriteOAuth,
                                    az_oauth_uri: str) -> None:
    run = doctor(home, azurite_oauth.token_env("wrong-audience"), az_oauth_uri)
    expect(run, "credentials-invalid")
    assert "management.azure.com" in run.check("auth.identity")["summary"]


def test_azure_no_credential_in_the_chain(home: Path, azurite_oauth: AzuriteOAuth,
                                          az_oauth_uri: str) -> None:
    """Row 15: DefaultAzureCredential failed to retrieve a token.  The chain is limited to the
    developer credentials (AZURE_TOKEN_CREDENTIALS=dev) so that it never asks the instance
    metadata service, which would leave loopback; none of them is signed in here."""
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite_oauth.blob_endpoint};",
           "REQUESTS_CA_BUNDLE": azurite_oauth.ca_file, "AZURE_TOKEN_CREDENTIALS": "dev"}
    run = doctor(home, env, az_oauth_uri)
    expect(run, "credentials-missing")
    summary = run.check("auth.credential")["summary"]
    assert "AzureCliCredential" in summary, "every credential tried is listed"
    assert "az login" in run.check("auth.credential")["fix"]


def test_azure_untrusted_certificate(home: Path, azurite_oauth: AzuriteOAuth,
                                     az_oauth_uri: str) -> None:
    """Row 10: a private CA the client does not trust."""
    env = {k: v for k, v in azurite_oauth.token_env("valid").items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    run = doctor(home, env, az_oauth_uri)
    expect(run, "tls-untrusted")
    assert "REQUESTS_CA_BUNDLE" in run.check("tls")["fix"]


def test_azure_token_over_plain_http_is_refused(home: Path, azurite: Azurite, az_uri: str) -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.blob_endpoint};"}
    run = doctor(home, env, az_uri)
    expect(run, "config-invalid")
    assert "https" in run.check("config.client")["summary"]


def test_azure_account_mismatch_fails(home: Path, azurite: Azurite) -> None:
    """Row 29: the URI names one account, the connection string another: every write would
    land in the latter, so it is a failure (exit 1), and nothing is probed there."""
    uri = azurite.new_store("mismatch").replace(f"@{ACCOUNT}.", "@otheraccount.")
    run = doctor(home, azurite.env, uri)
    assert run.code == 1 and run.report["status"] == "fail"
    check = run.check("consistency.account")
    assert check["status"] == "fail" and check["cause"] == "endpoint-mismatch"
    assert "otheraccount" in check["summary"] and "land in" in check["summary"]
    assert not any(c["id"].startswith("authz.") for c in run.report["checks"])


def test_azure_firewall(home: Path) -> None:
    """Row 14, the network-rule half: Azure's firewall answers every request with 403
    AuthorizationFailure 'This request is not authorized…'.  Azurite has no firewall; a
    loopback stand-in answers those bytes."""
    with standins.StandIn(standins.azure_firewall()) as server:
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={server.url}/{ACCOUNT};")
        run = doctor(home, {"AZURE_STORAGE_CONNECTION_STRING": conn},
                     f"wasbs://runs@{ACCOUNT}.blob.core.windows.net/mlruns")
    expect(run, "permission-denied")
    assert "firewall" in run.check("authz.list")["summary"]
    assert "network-rule add" in run.check("authz.list")["fix"]


def test_azure_clock_skew(home: Path) -> None:
    """Row 16, the clock half: a stand-in Azure whose Date is an hour ahead."""
    with standins.StandIn(standins.azure_firewall(), clock_offset=-3600) as server:
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={server.url}/{ACCOUNT};")
        run = doctor(home, {"AZURE_STORAGE_CONNECTION_STRING": conn},
                     f"wasbs://runs@{ACCOUNT}.blob.core.windows.net/mlruns")
    expect(run, "clock-skew")
    assert "ahead of" in run.check("auth.clock")["summary"]
