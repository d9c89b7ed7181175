"""The doctor of ``wasbs://`` and ``abfss://`` stores, through :class:`AzureBlobs` and its
:class:`~cloudtrack.credentials.azure.AzureCredentials`:
which credential signs (account key, SAS, or the token ``DefaultAzureCredential`` gets — with
every credential it tried when it gets none), the token's claims (tenant, app, object id,
audience, expiry), the SAS's permissions and validity, the account named by the URI against
the connection string's, the endpoint (Azure or an emulator), and the access probes — naming
the role or SAS permission that is missing and the command that grants it."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from cloudtrack.blobs.azure import DATA_ROLE, AzureBlobs
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.config import tls as trust
from cloudtrack.credentials.azure import SCOPE, AzureCredentials, sas_time
from cloudtrack.doctor import net
from cloudtrack.doctor.answer import Answer, Service, probe_answer, unsigned_request
from cloudtrack.doctor.core import (
    SKEW_WARN,
    Probe,
    ProbeTimeout,
    check_expiry,
    duration,
    unavailable_cause,
    with_timeouts,
)
from cloudtrack.doctor.store import (
    AccessFix,
    ContainerDoubt,
    Finding,
    check_marker,
    fallback_finding,
    probe_access,
)
from cloudtrack.errors import (
    ConfigError,
    ContainerNotFound,
    CredentialsUnavailable,
    PermissionDenied,
    TransientError,
    Unauthenticated,
)

TLS = net.TlsHints.of(trust.AZURE)
#: Audiences Azure Storage accepts in a bearer token.
_AUDIENCES = ("https://storage.azure.com", "https://storage.azure.com/")
#: What each probe needs in a SAS (``sp=``), and as a data action of a role.
SAS_LETTERS = {"list": "l", "read": "r", "write": "cw", "delete": "d"}
_PUBLIC_SUFFIXES = ("blob.core.windows.net", "blob.core.chinacloudapi.cn",
                    "blob.core.usgovcloudapi.net", "dfs.core.windows.net")


def _azureish(answer: Answer) -> bool:
    # Azure answers even an unsigned request (401/403/404) with its own headers.
    return any(h in answer.headers for h in ("x-ms-request-id", "x-ms-error-code")) or \
        bool(re.search(r"Windows-Azure|Azurite", answer.server))


SERVICE = Service(
    "Azure Blob Storage", _azureish, "no x-ms-* headers", "unsigned request",
    server_error_fix="the storage service is failing or overloaded: retry later, check Azure's "
                     "status page",
    mismatch_fix="check BlobEndpoint in AZURE_STORAGE_CONNECTION_STRING, or the URI's account")


def diagnose(p: Probe, config: StoreConfig) -> None:
    try:
        blobs = p.call(lambda: AzureBlobs(with_timeouts(config, p.timeout)),
                       what="building the Azure client")
    except ConfigError as e:
        p.fail("config.client", "config", "config-invalid", str(e),
               "fix AZURE_STORAGE_CONNECTION_STRING (or the variable named above); with a "
               "token credential the endpoint must be https://")
    try:
        _diagnose(p, config, blobs)
    finally:
        blobs.close()


def _diagnose(p: Probe, config: StoreConfig, blobs: AzureBlobs) -> None:
    endpoint = str(config.get("endpoint_url"))
    account = str(config.get("account"))
    credentials = blobs.credentials
    source = config.setting("endpoint_url")
    p.ok("config.client", "config", f"Azure client for account {account!r}: endpoint "
         f"{redact_uri(endpoint)} ({source.source if source else 'uri'}), signed by "
         f"{credentials.signer}")
    _static_consistency(p, config, endpoint)
    net.probe_endpoint(p, endpoint, verify=config.tls_verify, hints=TLS,
                       what="the Azure endpoint")
    url = f"{endpoint.rstrip('/')}/{urllib.parse.quote(config.container)}?restype=container"
    answer = probe_answer(p, endpoint, unsigned_request(p, url, config.tls_verify), SERVICE, TLS)
    skew = net.check_clock(p, answer.headers.get("date"), server="the storage service")

    if credentials.kind == "sas":
        _sas(p, config, credentials, skew)
    elif credentials.kind == "account-key":
        _account_key(p, config, credentials)
    else:
        _token(p, credentials)

    mismatches: set[str] = set()
    sas_scope = credentials.sas_fields().get("sr", "") if credentials.kind == "sas" else ""
    probe_access(p, blobs, classify=_classifier(config, credentials.kind, credentials.signer,
                                                skew, sas_scope, mismatches),
                 access_fix=_access_fix(config, credentials.kind, p), where=config.display_uri,
                 doubt=_container_doubt(config, credentials.kind, mismatches))
    check_marker(p, blobs)


def _static_consistency(p: Probe, config: StoreConfig, endpoint: str) -> None:
    account = str(config.get("account"))
    named = config.get("connection_string_account")
    if named and str(named).lower() != account:
        # A failure, not a warning: every write would land in the other account, while MLflow
        # records the URI's account in every artifact location.
        source = config.setting("connection_string_account")
        p.fail("consistency.account", "consistency", "endpoint-mismatch",
               f"the URI names account {account!r}, the connection string (from "
               f"{source.source if source else 'AZURE_STORAGE_CONNECTION_STRING'}) account "
               f"{named!r}: requests would go to the connection string's endpoint "
               f"{redact_uri(endpoint)}, signed for {named!r}, so every write would land in "
               f"{named!r}", f"use a connection string of {account!r}, or fix the URI's account")
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    if any(host.endswith(s) for s in _PUBLIC_SUFFIXES):
        what = "Azure Storage"
    elif host in ("127.0.0.1", "localhost", "::1") or "azurite" in host:
        what = "a local emulator (Azurite)"
    else:
        what = "a custom endpoint (private endpoint, sovereign cloud or emulator)"
    p.ok("consistency.endpoint", "consistency", f"endpoint {redact_uri(endpoint)} is {what}")


# -- credentials -----------------------------------------------------------------------------


def _account_key(p: Probe, config: StoreConfig, credentials: AzureCredentials) -> None:
    origin = credentials.describe().source
    try:
        credentials.current()
    except CredentialsUnavailable as e:
        p.fail("auth.credential", "auth", "credentials-invalid", str(e),
               "copy the key again from the portal (Storage account → Access keys), whole")
    named = config.get("connection_string_account") or config.get("account")
    p.ok("auth.credential", "auth", f"shared key of account {named!r} from {origin}; the "
         "service checks it on the first signed request")


def _sas(p: Probe, config: StoreConfig, credentials: AzureCredentials,
         skew: float | None) -> None:
    credential = credentials.describe()
    p.secret(*credential.secrets)
    fields = credentials.sas_fields()
    now = time.time()
    server_now = now + (skew or 0.0)
    scope = {"c": "container", "b": "blob", "d": "directory"}.get(
        fields.get("sr", ""), "account" if "ss" in fields else "?")
    what = (f"SAS from {credential.source} (scope {scope}, permissions "
            f"sp={fields.get('sp') or '(none)'}"
            + (f", IP {fields['sip']}" if fields.get("sip") else "") + ")")
    expiry = credential.expires
    if expiry is not None and server_now < expiry.timestamp() <= now:
        p.fail("auth.credential", "auth", "clock-skew",
               f"the SAS is still valid by the server's clock but expired by this "
               f"machine's, which is {duration(skew or 0)} ahead (se={fields['se']})",
               "synchronise this machine's clock with NTP")
    start = sas_time(fields.get("st", ""))
    if start is not None and start.timestamp() > server_now + 300:
        cause = "clock-skew" if skew is not None and abs(skew) > SKEW_WARN else "token-expired"
        p.fail("auth.credential", "auth", cause,
               f"the SAS is not valid before {fields['st']} (signed start in the future"
               + (": this machine's clock is off" if cause == "clock-skew" else "") + ")",
               "synchronise the clock, or issue the SAS without a start time (st)")
    if expiry is None:
        p.ok("auth.credential", "auth", what)
        return
    check_expiry(p, "auth.credential", credential, what=what, skew=skew or 0.0,
                 fix=_sas_fix(config, "a new SAS" if expiry.timestamp() <= server_now
                              else "a SAS that outlives the job"))


def _sas_fix(config: StoreConfig, what: str) -> str:
    account = config.get("connection_string_account") or config.get("account")
    return (f"issue {what}: `az storage container generate-sas --account-name {account} "
            f"--name {config.container} --permissions racwdl --expiry <UTC date> "
            "--auth-mode login --as-user -o tsv`, and put it in AZURE_STORAGE_SAS_TOKEN (or "
            "SharedAccessSignature= in the connection string)")


def _token(p: Probe, credentials: AzureCredentials) -> None:
    try:
        credential = p.call(credentials.current, what="DefaultAzureCredential.get_token")
    except ProbeTimeout as e:
        p.fail("auth.credential", "auth", "network-timeout",
               f"{e}: a credential of the chain (managed identity endpoint, Azure CLI) hangs",
               "sign in with `az login`, or set AZURE_TOKEN_CREDENTIALS to the one credential "
               "you use (e.g. AzureCliCredential, ManagedIdentityCredential)")
    except CredentialsUnavailable as e:
        p.fail("auth.credential", "auth", unavailable_cause(e), str(e),
               "sign in with `az login` (then AZURE_TOKEN_CREDENTIALS=AzureCliCredential "
               "speeds the chain up), run where a managed or workload identity is assigned, "
               "or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET for a service "
               "principal; or sign with a key/SAS via AZURE_STORAGE_CONNECTION_STRING")
    p.secret(*credential.secrets)
    p.ok("auth.credential", "auth", f"{credential.signer} got a token from {credential.source}")
    aud = str(credential.claims.get("aud", ""))
    who = credential.identity or "identity not in the token"
    if credential.claims and aud not in _AUDIENCES and not aud.rstrip("/").endswith(
            ".blob.core.windows.net"):
        p.fail("auth.identity", "auth", "credentials-invalid",
               f"the token is for audience {aud!r}, not Azure Storage "
               f"(https://storage.azure.com); {who}",
               f"the credential must request the scope {SCOPE}; a token minted for another "
               "resource (e.g. management.azure.com) is refused")
    what = f"{who}; audience {aud or '?'}; the token"
    if credential.expires is None:
        p.ok("auth.identity", "auth", f"{what} (no expiry given)")
        return
    check_expiry(p, "auth.identity", credential, what=what,
                 fix="a stale token cache or a broken identity endpoint: `az account clear && "
                     "az login`, or restart the managed identity's host")


# -- errors and fixes ------------------------------------------------------------------------


#: SAS scopes (``sr=``) signed for one container: blob, container, directory.
_ONE_CONTAINER = ("b", "c", "d")


def _classifier(config: StoreConfig, kind: str, signer: str, skew: float | None,
                sas_scope: str = "", denials: set[str] | None = None) -> Any:
    """``denials`` collects the error code of every refusal, for :func:`_container_doubt`."""
    account = str(config.get("connection_string_account") or config.get("account"))

    def classify(e: BaseException, op: str) -> Finding:
        facts = AzureBlobs.error_facts(e)
        code = facts.code if facts is not None else ""
        status = facts.status if facts is not None else 0
        detail = facts.details.get("authenticationerrordetail", "") if facts is not None else ""
        text = f"{e} {detail}".lower()
        said = f"{code}: {detail}" if detail else code or str(e)
        if isinstance(e, ContainerNotFound):
            return Finding("authz", "container-not-found",
                           f"container {config.container!r} does not exist in account "
                           f"{account!r}", f"check the URI, or create it: `az storage container "
                           f"create --account-name {account} --name {config.container} "
                           "--auth-mode login`", id="authz.container", stop=True)
        if isinstance(e, Unauthenticated):
            if "specified time frame" in text or "signed expiry" in text or "expired" in text \
                    or "lifetime validation failed" in text:
                cause = "clock-skew" if skew is not None and abs(skew) > SKEW_WARN else \
                    "token-expired"
                return Finding("auth", cause, f"the service refused {signer}: it has expired "
                               f"or is not yet valid ({said})",
                               "synchronise the clock" if cause == "clock-skew" else
                               (_sas_fix(config, "a new SAS") if kind == "sas" else
                                "renew the credential (`az login`)"), id="auth.accepted")
            if "audience" in text:
                return Finding("auth", "credentials-invalid", f"the token's audience is wrong "
                               f"({said})", f"request tokens for {SCOPE}", id="auth.accepted")
            doubt = ""
            if kind == "account-key":
                fix = (f"the key is not the key of account {account!r}: copy key1 or key2 again "
                       "(Storage account → Access keys), or it was rotated")
            elif kind == "sas" and sas_scope in _ONE_CONTAINER:
                # The container's name is part of what a container SAS signs: one issued for
                # another container fails here, never as ContainerNotFound.
                doubt = (f"; a SAS of scope sr={sas_scope} is signed for one container, and a "
                         "SAS issued for another container is refused exactly like this, so "
                         f"the container name {config.container!r} in the URI may be wrong — "
                         "as likely as a SAS whose signing key was rotated or that was copied "
                         "incompletely")
                fix = (f"check that {config.container!r}, the URI's container, is the one the "
                       "SAS was issued for; if it is, "
                       + _sas_fix(config, "a new SAS (the key that signed this one was "
                                  "rotated, or it was cut short)"))
            elif kind == "sas":
                fix = _sas_fix(config, "a new SAS (this one is malformed or its signing key "
                               "was rotated)")
            else:
                fix = "sign in again (`az login`) or check the identity's tenant"
            return Finding("auth", "credentials-invalid",
                           f"the service could not authenticate {signer} ({said or e}){doubt}",
                           fix, id="auth.accepted")
        if isinstance(e, PermissionDenied):
            if denials is not None:
                denials.add(code)
            if code == "AuthorizationFailure":
                why = ("the account's firewall / virtual-network rules refuse this network, or "
                       "the account forbids this kind of credential")
            elif code == "KeyBasedAuthenticationNotPermitted":
                why = "the account forbids shared-key (and SAS) access"
            elif code == "AuthorizationSourceIPMismatch":
                why = "the SAS is limited to other IP addresses (sip=)"
            elif kind == "sas":
                why = f"the SAS lacks {SAS_LETTERS[op]!r} in its permissions (sp=)"
            else:
                why = f"the identity has no '{DATA_ROLE}' role (or it is not effective yet)"
            return Finding("authz", "permission-denied", f"{op} is denied: {why} ({said})")
        if isinstance(e, TransientError) and status >= 500:
            return Finding("http", "server-error", str(e), "retry later; check Azure's status")
        return fallback_finding(e, op, str(config.get("endpoint_url")))

    return classify


def _container_doubt(config: StoreConfig, kind: str, denials: set[str]) -> ContainerDoubt:
    """With a token, a role granted on some containers only answers
    AuthorizationPermissionMismatch — not ContainerNotFound — for any other container name,
    whether it exists or not: when every probe is refused that way, the name may be wrong."""
    account = str(config.get("connection_string_account") or config.get("account"))

    def doubt(denied: Sequence[str]) -> Finding | None:
        if kind in ("account-key", "sas") or denials != {"AuthorizationPermissionMismatch"}:
            return None
        return Finding(
            "authz", "permission-denied",
            f"every request on container {config.container!r} is refused with "
            "AuthorizationPermissionMismatch: the identity has no data role on it — or the "
            "container name is wrong, since Azure answers the same, not ContainerNotFound, "
            "when the identity's role covers other containers only, whether this one exists "
            "or not",
            f"check the container name in the URI (`az storage container list --account-name "
            f"{account} --auth-mode login -o table` lists those you may see); if it is right, "
            "grant the role below", id="authz.container")

    return doubt


def _access_fix(config: StoreConfig, kind: str, p: Probe) -> AccessFix:
    account = str(config.get("connection_string_account") or config.get("account"))
    scope = (f"/subscriptions/<subscription>/resourceGroups/<group>/providers/"
             f"Microsoft.Storage/storageAccounts/{account}/blobServices/default/containers/"
             f"{config.container}")

    def fix(denied: Sequence[str]) -> str:
        if kind == "sas":
            return (f"the SAS must grant {''.join(SAS_LETTERS[o] for o in denied)} too "
                    f"(cloudtrack needs sp=racwdl): " + _sas_fix(config, "a SAS with racwdl"))
        if kind == "account-key":
            return (f"allow this network in the account's firewall (`az storage account "
                    f"network-rule add --account-name {account} --ip-address <this machine's "
                    "public IP>`), or allow shared-key access (`az storage account update "
                    f"--name {account} --allow-shared-key-access true`), or sign in with an "
                    f"identity holding '{DATA_ROLE}'")
        return (f"grant the '{DATA_ROLE}' role on the container (Owner/Contributor give no data "
                f"access): `az role assignment create --assignee <object id above> --role "
                f"\"{DATA_ROLE}\" --scope {scope}`; new assignments take a few minutes")

    return fix
