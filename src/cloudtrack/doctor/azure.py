"""The doctor of ``wasbs://`` and ``abfss://`` stores, through :class:`AzureBlobs`' own client:
which credential signs (account key, SAS, or the token ``DefaultAzureCredential`` gets — with
every credential it tried when it gets none), the token's claims (tenant, app, object id,
audience, expiry), the SAS's permissions and validity, the account named by the URI against
the connection string's, the endpoint (Azure or an emulator), and the access probes — naming
the role or SAS permission that is missing and the command that grants it."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cloudtrack.blobs.azure import DATA_ROLE, AzureBlobs
from cloudtrack.config import StoreConfig, parse_connection_string, redact_uri
from cloudtrack.doctor import net
from cloudtrack.doctor.core import (
    EXPIRY_WARNING,
    SKEW_WARN,
    Probe,
    ProbeTimeout,
    duration,
    with_timeouts,
)
from cloudtrack.doctor.store import AccessFix, Finding, check_marker, probe_access
from cloudtrack.errors import (
    BlobError,
    ConfigError,
    ContainerNotFound,
    PermissionDenied,
    TransientError,
    Unauthenticated,
)

TLS = net.TlsHints("REQUESTS_CA_BUNDLE")
SCOPE = "https://storage.azure.com/.default"
#: Audiences Azure Storage accepts in a bearer token.
_AUDIENCES = ("https://storage.azure.com", "https://storage.azure.com/")
#: What each probe needs in a SAS (``sp=``), and as a data action of a role.
SAS_LETTERS = {"list": "l", "read": "r", "write": "cw", "delete": "d"}
_PUBLIC_SUFFIXES = ("blob.core.windows.net", "blob.core.chinacloudapi.cn",
                    "blob.core.usgovcloudapi.net", "dfs.core.windows.net")


def diagnose(p: Probe, config: StoreConfig) -> None:
    kind = str(config.get("credential") or "credential-chain")
    source = config.setting("credential")
    origin = source.source if source is not None else "sdk-default"
    try:
        blobs = p.call(lambda: AzureBlobs(with_timeouts(config, p.timeout)),
                       what="building the Azure client")
    except ConfigError as e:
        p.fail("config.client", "config", "config-invalid", str(e),
               "fix AZURE_STORAGE_CONNECTION_STRING (or the variable named above); with a "
               "token credential the endpoint must be https://")
    try:
        _diagnose(p, config, blobs, kind, origin)
    finally:
        blobs.close()


def _diagnose(p: Probe, config: StoreConfig, blobs: AzureBlobs, kind: str, origin: str) -> None:
    endpoint = str(config.get("endpoint_url"))
    account = str(config.get("account"))
    signer = blobs._signer
    p.ok("config.client", "config", f"Azure client for account {account!r}: endpoint "
         f"{redact_uri(endpoint)} ({config.setting('endpoint_url').source if config.setting('endpoint_url') else 'uri'}), "  # type: ignore[union-attr]
         f"signed by {signer}")
    _static_consistency(p, config, endpoint)
    verify = _verify(p.environ)
    net.probe_endpoint(p, endpoint, verify=verify, hints=TLS, what="the Azure endpoint")
    answer = _http(p, endpoint, config.container, verify)
    skew = net.check_clock(p, answer.headers.get("Date"), server="the storage service")

    if kind == "sas":
        _sas(p, config, origin, skew)
    elif kind == "account-key":
        _account_key(p, config, origin)
    else:
        _token(p, blobs, config, endpoint)

    probe_access(p, blobs, classify=_classifier(config, kind, signer, skew),
                 access_fix=_access_fix(config, kind, p), where=config.display_uri)
    check_marker(p, blobs)


def _verify(environ: Mapping[str, str]) -> bool | str:
    # The same variables, in the same order, as AzureBlobs' transport.
    return environ.get("REQUESTS_CA_BUNDLE") or environ.get("SSL_CERT_FILE") \
        or environ.get("CURL_CA_BUNDLE") or True


def _static_consistency(p: Probe, config: StoreConfig, endpoint: str) -> None:
    account = str(config.get("account"))
    named = config.get("connection_string_account")
    if named and str(named).lower() != account:
        p.warn("consistency.account", "consistency", "endpoint-mismatch",
               f"the URI names account {account!r}, AZURE_STORAGE_CONNECTION_STRING account "
               f"{named!r}: requests go to the connection string's endpoint "
               f"{redact_uri(endpoint)}, signed for {named!r}",
               f"use a connection string of {account!r}, or fix the URI's account")
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    if any(host.endswith(s) for s in _PUBLIC_SUFFIXES):
        what = "Azure Storage"
    elif host in ("127.0.0.1", "localhost", "::1") or "azurite" in host:
        what = "a local emulator (Azurite)"
    else:
        what = "a custom endpoint (private endpoint, sovereign cloud or emulator)"
    p.ok("consistency.endpoint", "consistency", f"endpoint {redact_uri(endpoint)} is {what}")


def _http(p: Probe, endpoint: str, container: str, verify: bool | str) -> Any:
    """An unsigned request to the container: Azure answers even that (401/403/404) with its
    own headers, which tells it from a web page or another service."""
    url = f"{endpoint.rstrip('/')}/{urllib.parse.quote(container)}?restype=container"
    try:
        answer = p.call(lambda: net.http_request("GET", url, environ=p.environ, verify=verify,
                                                 timeout=p.step_timeout()),
                        what="an unsigned request to the container")
    except ProbeTimeout as e:
        p.fail("http.answer", "http", "network-timeout", f"{e}: {endpoint} did not answer",
               "check the endpoint's health and any proxy in between")
    except Exception as e:
        failure = net.transport_failure(e, redact_uri(endpoint))
        if failure is None:
            raise
        p.fail("http.answer" if failure.layer == "http" else failure.layer, failure.layer,
               failure.cause, failure.summary,
               TLS.untrusted_fix() if failure.cause == "tls-untrusted"
               else failure.fix or "check the endpoint and the network")
    server = answer.headers.get("Server", "")
    azureish = any(h in answer.headers for h in ("x-ms-request-id", "x-ms-error-code")) or \
        bool(re.search(r"Windows-Azure|Azurite", server))
    if answer.status_code >= 500:
        p.fail("http.answer", "http", "server-error",
               f"{redact_uri(endpoint)} answered HTTP {answer.status_code}"
               + (f" ({answer.headers.get('x-ms-error-code')})"
                  if answer.headers.get("x-ms-error-code") else ""),
               "the storage service is failing or overloaded: retry later, check Azure's "
               "status page")
    if not azureish:
        p.fail("http.answer", "http", "endpoint-mismatch",
               f"{redact_uri(endpoint)} does not answer like Azure Blob Storage (HTTP "
               f"{answer.status_code}, {answer.headers.get('Content-Type', 'no content type')}, "
               "no x-ms-* headers)",
               "check BlobEndpoint in AZURE_STORAGE_CONNECTION_STRING, or the URI's account")
    p.ok("http.answer", "http", f"{redact_uri(endpoint)} answers like Azure Blob Storage "
         f"({server or 'x-ms headers'}; unsigned request: HTTP {answer.status_code} "
         f"{answer.headers.get('x-ms-error-code', '')})".rstrip())
    return answer


# -- credentials -----------------------------------------------------------------------------


def _secret_value(p: Probe, config: StoreConfig, name: str) -> str | None:
    conn = p.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        try:
            pairs = {k.lower(): v for k, v in parse_connection_string(conn).items()}
        except ConfigError:
            return None
        return pairs.get({"key": "accountkey", "sas": "sharedaccesssignature"}[name])
    var = {"key": "AZURE_STORAGE_ACCESS_KEY", "sas": "AZURE_STORAGE_SAS_TOKEN"}[name]
    return p.environ.get(var)


def _account_key(p: Probe, config: StoreConfig, origin: str) -> None:
    key = _secret_value(p, config, "key") or ""
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        p.fail("auth.credential", "auth", "credentials-invalid",
               f"the account key from {origin} is not valid base64, so nothing can be signed",
               "copy the key again from the portal (Storage account → Access keys), whole")
    named = config.get("connection_string_account") or config.get("account")
    p.ok("auth.credential", "auth", f"shared key of account {named!r} from {origin}; the "
         "service checks it on the first signed request")


def parse_sas(token: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(token.lstrip("?"), keep_blank_values=True))


def _when(value: str) -> datetime | None:
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _sas(p: Probe, config: StoreConfig, origin: str, skew: float | None) -> None:
    fields = parse_sas(_secret_value(p, config, "sas") or "")
    p.secret(fields.get("sig"))
    now = time.time()
    server_now = now + (skew or 0.0)
    expiry, start = _when(fields.get("se", "")), _when(fields.get("st", ""))
    perms = fields.get("sp", "")
    scope = {"c": "container", "b": "blob", "d": "directory"}.get(fields.get("sr", ""),
                                                                   "account" if "ss" in fields else "?")
    described = (f"SAS from {origin}: scope {scope}, permissions sp={perms or '(none)'}"
                 + (f", expires {expiry:%Y-%m-%d %H:%M} UTC" if expiry else "")
                 + (f", IP {fields['sip']}" if fields.get("sip") else ""))
    if expiry is not None:
        if expiry.timestamp() <= server_now:
            p.fail("auth.credential", "auth", "token-expired",
                   f"the SAS expired {duration(server_now - expiry.timestamp())} ago "
                   f"(se={fields['se']}; {described})",
                   _sas_fix(config, "a new SAS"))
        if expiry.timestamp() <= now:
            p.fail("auth.credential", "auth", "clock-skew",
                   f"the SAS is still valid by the server's clock but expired by this "
                   f"machine's, which is {duration(skew or 0)} ahead (se={fields['se']})",
                   "synchronise this machine's clock with NTP")
    if start is not None and start.timestamp() > server_now + 300:
        cause = "clock-skew" if skew is not None and abs(skew) > SKEW_WARN else "token-expired"
        p.fail("auth.credential", "auth", cause,
               f"the SAS is not valid before {fields['st']} (signed start in the future"
               + (": this machine's clock is off" if cause == "clock-skew" else "") + ")",
               "synchronise the clock, or issue the SAS without a start time (st)")
    if expiry is not None and expiry.timestamp() - server_now < EXPIRY_WARNING:
        p.warn("auth.credential", "auth", "token-expired",
               f"{described}: it expires in {duration(expiry.timestamp() - server_now)} and "
               "cannot be renewed by the client; a longer job will fail mid-run",
               _sas_fix(config, "a SAS that outlives the job"))
    else:
        p.ok("auth.credential", "auth", described)


def _sas_fix(config: StoreConfig, what: str) -> str:
    account = config.get("connection_string_account") or config.get("account")
    return (f"issue {what}: `az storage container generate-sas --account-name {account} "
            f"--name {config.container} --permissions racwdl --expiry <UTC date> "
            "--auth-mode login --as-user -o tsv`, and put it in AZURE_STORAGE_SAS_TOKEN (or "
            "SharedAccessSignature= in the connection string)")


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the service verifies; we only read)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _chain_lines(message: str) -> list[str]:
    lines = [line.strip() for line in message.splitlines()]
    return [line for line in lines if re.match(r"^[A-Za-z]+Credential:", line)]


def _token(p: Probe, blobs: AzureBlobs, config: StoreConfig, endpoint: str) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    credential = blobs._owned_credential
    if credential is None:
        p.ok("auth.credential", "auth", f"signed by {blobs._signer}")
        return
    try:
        token = p.call(lambda: credential.get_token(SCOPE),
                       what="DefaultAzureCredential.get_token")
    except ProbeTimeout as e:
        p.fail("auth.credential", "auth", "network-timeout",
               f"{e}: a credential of the chain (managed identity endpoint, Azure CLI) hangs",
               "sign in with `az login`, or set AZURE_TOKEN_CREDENTIALS to the one credential "
               "you use (e.g. AzureCliCredential, ManagedIdentityCredential)")
    except ClientAuthenticationError as e:
        message = str(getattr(e, "message", "") or e)
        tried = _chain_lines(message)
        # The chain goes on past a credential that is merely unavailable and stops at the
        # first that tried and failed: all of them listed means none could even try.
        total = len(getattr(credential, "credentials", ()) or ())
        last = tried[-1].lower() if tried else message.lower()
        if tried and len(tried) >= total:
            cause = "credentials-missing"
        elif "expired" in last or "aadsts700082" in last or "aadsts50173" in last:
            cause = "token-expired"
        else:
            cause = "credentials-invalid"
        p.fail("auth.credential", "auth", cause,
               "DefaultAzureCredential got no token for Azure Storage; it tried: "
               + (" | ".join(tried) if tried else " ".join(message.split())[:600]),
               "sign in with `az login` (then AZURE_TOKEN_CREDENTIALS=AzureCliCredential "
               "speeds the chain up), run where a managed or workload identity is assigned, "
               "or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET for a service "
               "principal; or sign with a key/SAS via AZURE_STORAGE_CONNECTION_STRING")
    p.secret(token.token)
    used = getattr(credential, "_successful_credential", None)
    inner = getattr(used, "_credential", None)
    used_name = type(used).__name__ if used is not None else "a credential of the chain"
    if inner is not None and type(inner).__name__ != used_name:
        used_name += f" ({type(inner).__name__})"
    claims = decode_jwt(token.token)
    who = ", ".join(f"{label} {claims[key]}" for key, label in (
        ("tid", "tenant"), ("appid", "app"), ("azp", "app"), ("oid", "object id"),
        ("upn", "user"), ("unique_name", "user")) if claims.get(key))
    aud = str(claims.get("aud", ""))
    exp = float(claims.get("exp") or token.expires_on or 0)
    left = exp - time.time()
    p.ok("auth.credential", "auth", f"DefaultAzureCredential got a token from {used_name}")
    if claims and aud not in _AUDIENCES and not aud.endswith(".blob.core.windows.net") \
            and not aud.endswith(".blob.core.windows.net/"):
        p.fail("auth.identity", "auth", "credentials-invalid",
               f"the token is for audience {aud!r}, not Azure Storage "
               f"(https://storage.azure.com); {who}",
               f"the credential must request the scope {SCOPE}; a token minted for another "
               "resource (e.g. management.azure.com) is refused")
    if left <= 0:
        p.fail("auth.identity", "auth", "token-expired",
               f"the token {used_name} handed out expired {duration(left)} ago "
               f"({datetime.fromtimestamp(exp, timezone.utc):%Y-%m-%d %H:%M:%S} UTC); {who}",
               "a stale token cache or a broken identity endpoint: `az account clear && az "
               "login`, or restart the managed identity's host")
    p.ok("auth.identity", "auth", f"{who or 'identity not in the token'}; audience {aud or '?'}; "
         f"valid for {duration(left)} — {used_name} renews it")


# -- errors and fixes ------------------------------------------------------------------------


def _classifier(config: StoreConfig, kind: str, signer: str, skew: float | None) -> Any:
    account = str(config.get("connection_string_account") or config.get("account"))

    def classify(e: BaseException, op: str) -> Finding:
        cause_error = e.__cause__
        raw = getattr(cause_error, "error_code", None)
        code = str(getattr(raw, "value", raw) or "")
        info = getattr(cause_error, "additional_info", None) or {}
        detail = str(info.get("authenticationerrordetail") or "")
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
            if kind == "account-key":
                fix = (f"the key is not the key of account {account!r}: copy key1 or key2 again "
                       "(Storage account → Access keys), or it was rotated")
            elif kind == "sas":
                fix = _sas_fix(config, "a new SAS (this one is malformed or its signing key "
                               "was rotated)")
            else:
                fix = "sign in again (`az login`) or check the identity's tenant"
            return Finding("auth", "credentials-invalid",
                           f"the service could not authenticate {signer} ({said or e})", fix,
                           id="auth.accepted")
        if isinstance(e, PermissionDenied):
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
        if isinstance(e, TransientError) and "answered 5" in str(e):
            return Finding("http", "server-error", str(e), "retry later; check Azure's status")
        failure = net.transport_failure(e, str(config.get("endpoint_url")))
        if failure is not None:
            return Finding(failure.layer, failure.cause, failure.summary,
                           failure.fix or "check the endpoint and the network")
        if isinstance(e, BlobError):
            return Finding("authz", "permission-denied", f"{op} failed: {e}")
        return Finding("http", "server-error", f"{op} failed: {e}")

    return classify


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
