"""The doctor of ``gs://`` stores, through :class:`GcsBlobs`' own client: which credential
(the key file, gcloud's Application Default Credentials, the metadata server — looked for
without hanging an offline machine — or none), whose identity it is, whether its token
endpoint grants a token and for how long, the bucket's ``testIamPermissions``, and the access
probes, naming the missing ``storage.*`` permission and the role that grants it."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cloudtrack.blobs.gcs import DEFAULT_ENDPOINT, GcsBlobs
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.doctor import net
from cloudtrack.doctor.core import Probe, ProbeTimeout, duration, with_timeouts
from cloudtrack.doctor.store import AccessFix, Finding, check_marker, probe_access
from cloudtrack.errors import (
    BlobError,
    ContainerNotFound,
    PermissionDenied,
    TransientError,
    Unauthenticated,
)

TLS = net.TlsHints("REQUESTS_CA_BUNDLE")
PERMISSIONS = {"list": "storage.objects.list", "read": "storage.objects.get",
               "write": "storage.objects.create", "delete": "storage.objects.delete"}
ROLE = "roles/storage.objectUser"
READ_ROLE = "roles/storage.objectViewer"
#: Seconds a metadata server gets to say it is there (google-auth waits 3 s, 3 times).
METADATA_TIMEOUT = 1.0
_LOGIN = ("run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
          "to a service-account key file; on GCE/GKE/Cloud Run, attach a service account")
_PERMISSION = re.compile(r"\bstorage\.[a-zA-Z]+\.[a-zA-Z]+\b")


def diagnose(p: Probe, config: StoreConfig) -> None:
    blobs = GcsBlobs(with_timeouts(config, p.timeout))
    try:
        _diagnose(p, config, blobs)
    finally:
        blobs.close()


def _diagnose(p: Probe, config: StoreConfig, blobs: GcsBlobs) -> None:
    endpoint = blobs._endpoint() or DEFAULT_ENDPOINT
    setting = config.setting("emulator_host")
    if not (setting and setting.value):
        setting = config.setting("api_endpoint")
    origin = setting.source if setting and setting.value else "the SDK's default"
    p.ok("config.client", "config", f"GCS client: endpoint {redact_uri(endpoint)} ({origin})")
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    kind = "Google Cloud Storage" if host.endswith("googleapis.com") else \
        "a local emulator" if host in ("127.0.0.1", "localhost", "::1") else "a custom endpoint"
    p.ok("consistency.endpoint", "consistency", f"endpoint {redact_uri(endpoint)} is {kind}")
    verify = net.requests_verify(p.environ)
    net.probe_endpoint(p, endpoint, verify=verify, hints=TLS, what="the GCS endpoint")
    answer = _http(p, endpoint, config.container, verify)
    net.check_clock(p, answer.headers.get("Date"), server="the storage service")
    anonymous = _preflight(p, config)

    try:
        client = p.call(lambda: blobs.client, what="finding Google credentials")
    except ProbeTimeout as e:
        p.fail("auth.credential", "auth", "network-timeout",
               f"{e}: google-auth waited on the metadata server", _LOGIN)
    except Unauthenticated as e:
        missing = "not set up" in str(e) or "was not found" in str(e)
        p.fail("auth.credential", "auth", "credentials-missing" if missing
               else "credentials-invalid", str(e), _LOGIN)
    creds = client._credentials
    identity = _identity(p, creds, anonymous, config)
    if not anonymous:
        _token(p, creds)
    classify = _classifier(config, endpoint, creds, anonymous)
    _iam(p, blobs, classify, identity, config)
    probe_access(p, blobs, classify=classify, access_fix=_access_fix(config, identity),
                 where=config.display_uri)
    check_marker(p, blobs)


# -- credentials, before any network ---------------------------------------------------------


def _adc_file(environ: Mapping[str, str]) -> str:
    base = environ.get("CLOUDSDK_CONFIG") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config", "gcloud")
    return os.path.join(base, "application_default_credentials.json")


def _preflight(p: Probe, config: StoreConfig) -> bool:
    """Check the credential source without the network; True when the client is anonymous."""
    path = config.get("credentials_file")
    if path:
        path = str(path)
        if not os.path.exists(path):
            p.fail("auth.credential", "auth", "credentials-missing",
                   f"GOOGLE_APPLICATION_CREDENTIALS names {path}, which does not exist",
                   "point GOOGLE_APPLICATION_CREDENTIALS at the key file, or unset it to use "
                   "gcloud's Application Default Credentials")
        try:
            with open(path) as f:
                info = json.load(f)
        except OSError as e:
            p.fail("auth.credential", "auth", "credentials-missing",
                   f"GOOGLE_APPLICATION_CREDENTIALS={path} cannot be read ({e.strerror})",
                   f"make {path} readable by this user")
        except ValueError:
            p.fail("auth.credential", "auth", "credentials-invalid",
                   f"GOOGLE_APPLICATION_CREDENTIALS={path} is not a JSON key file",
                   "download the key again (IAM → Service accounts → Keys), or run "
                   "`gcloud auth application-default login`")
        kind = info.get("type") if isinstance(info, dict) else None
        if kind not in ("service_account", "authorized_user", "external_account",
                        "impersonated_service_account", "external_account_authorized_user"):
            p.fail("auth.credential", "auth", "credentials-invalid",
                   f"GOOGLE_APPLICATION_CREDENTIALS={path} is not a credentials file "
                   f"(type {kind!r})", "use a service-account key or an ADC file")
        return False
    if config.get("emulator_host"):
        p.ok("auth.credential", "auth", "anonymous: STORAGE_EMULATOR_HOST is set and "
             "GOOGLE_APPLICATION_CREDENTIALS is not, so no credentials are sent")
        return True
    adc = _adc_file(p.environ)
    if os.path.exists(adc):
        return False
    looked = ["GOOGLE_APPLICATION_CREDENTIALS: unset", f"gcloud ADC file {adc}: missing"]
    if (p.environ.get("NO_GCE_CHECK") or "").lower() == "true":
        looked.append("metadata server: not asked (NO_GCE_CHECK=true)")
    else:
        where, answered = _metadata(p)
        if answered:
            return False
        looked.append(f"metadata server {where}: no answer within {METADATA_TIMEOUT:.0f}s "
                      "(not on Google Cloud)")
    p.fail("auth.credential", "auth", "credentials-missing",
           "no Google credentials (Application Default Credentials are not set up); looked at: "
           + "; ".join(looked)
           + ". (MLflow's own gs:// client silently falls back to anonymous access here.)",
           _LOGIN)


def _metadata(p: Probe) -> tuple[str, bool]:
    """Is a GCE metadata server there?  Asked once, briefly: google-auth would wait 3 s three
    times on an offline machine."""
    host = p.environ.get("GCE_METADATA_IP") or p.environ.get("GCE_METADATA_HOST") \
        or p.environ.get("GCE_METADATA_ROOT") or "169.254.169.254"
    url = f"http://{host}/"
    try:
        answer = p.call(lambda: net.http_request(
            "GET", url, environ={}, verify=True, timeout=min(METADATA_TIMEOUT, p.step_timeout()),
            headers={"Metadata-Flavor": "Google"}), what="asking the metadata server",
            seconds=METADATA_TIMEOUT + 0.5)
    except Exception:
        return host, False
    return host, answer.headers.get("Metadata-Flavor") == "Google"


def _http(p: Probe, endpoint: str, bucket: str, verify: bool | str) -> Any:
    url = f"{endpoint.rstrip('/')}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
    try:
        answer = p.call(lambda: net.http_request("GET", url, environ=p.environ, verify=verify,
                                                 timeout=p.step_timeout()),
                        what="an unauthenticated request for the bucket")
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
    if answer.status_code >= 500:
        p.fail("http.answer", "http", "server-error",
               f"{redact_uri(endpoint)} answered HTTP {answer.status_code}",
               "the storage service is failing: retry later, check its status page")
    try:
        body = answer.json()
        gcsish = isinstance(body, dict) and ("error" in body or body.get("kind") == "storage#bucket")
    except ValueError:
        gcsish = False
    if not gcsish:
        p.fail("http.answer", "http", "endpoint-mismatch",
               f"{redact_uri(endpoint)} does not answer like the GCS JSON API (HTTP "
               f"{answer.status_code}, {answer.headers.get('Content-Type', 'no content type')})",
               "check STORAGE_EMULATOR_HOST / API_ENDPOINT_OVERRIDE")
    p.ok("http.answer", "http", f"{redact_uri(endpoint)} answers like the GCS JSON API "
         f"(unauthenticated request: HTTP {answer.status_code})")
    return answer


# -- identity and token ----------------------------------------------------------------------


def _identity(p: Probe, creds: Any, anonymous: bool, config: StoreConfig) -> str | None:
    if anonymous:
        return None
    kind = type(creds).__module__ + "." + type(creds).__name__
    email = getattr(creds, "service_account_email", None) or getattr(creds, "signer_email", None)
    project = getattr(creds, "project_id", None) or getattr(creds, "quota_project_id", None)
    source = config.setting("credentials_file")
    where = f"the key file from {source.source}" if source and source.value else \
        "Application Default Credentials"
    if "service_account" in kind and email:
        who = f"service account {email}"
    elif "oauth2.credentials" in kind:
        account = getattr(creds, "account", None)
        who = "the user login of `gcloud auth application-default login`" + (
            f" ({account})" if account else "")
    elif "external_account" in kind or "identity_pool" in kind or "aws" in kind:
        who = "workload identity federation" + (f" as {email}" if email else "")
    elif "compute_engine" in kind:
        who = "the VM's service account" + (f" {email}" if email and email != "default" else "")
    elif "impersonated" in kind:
        who = f"impersonating {getattr(creds, '_target_principal', '?')}"
    else:
        who = type(creds).__name__
    p.ok("auth.credential", "auth", f"{who}, from {where}"
         + (f" (project {project})" if project else ""))
    if "service_account" in kind and email:
        return f"serviceAccount:{email}"
    if "oauth2.credentials" in kind and getattr(creds, "account", None):
        return f"user:{creds.account}"
    return None


def _token(p: Probe, creds: Any) -> None:
    import google.auth.exceptions
    import google.auth.transport.requests as gtr

    limit = p.step_timeout()

    class _Bounded(gtr.Request):
        def __call__(self, url: str, method: str = "GET", body: Any = None,
                     headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
            return super().__call__(url, method=method, body=body, headers=headers,
                                    timeout=limit, **kwargs)

    try:
        p.call(lambda: creds.refresh(_Bounded()), what="getting an access token")
    except ProbeTimeout as e:
        p.fail("auth.token", "auth", "network-timeout", f"{e}: the token endpoint did not answer",
               "check the network path to the token endpoint (oauth2.googleapis.com)")
    except google.auth.exceptions.RefreshError as e:
        said = " ".join(str(e.args[0] if e.args else e).split())
        p.fail("auth.token", "auth", "token-expired" if "expired" in said.lower()
               else "credentials-invalid",
               f"the token endpoint refused the credentials ({said})",
               "the key was deleted or revoked, or the login expired: create a new key "
               "(`gcloud iam service-accounts keys create`) or run `gcloud auth "
               "application-default login` again")
    except google.auth.exceptions.TransportError as e:
        failure = net.transport_failure(e, "the token endpoint")
        p.fail("auth.token", "auth", failure.cause if failure else "network-timeout",
               f"the token endpoint could not be reached ({e})",
               "check the network path to the token endpoint")
    p.secret(getattr(creds, "token", None))
    expiry = getattr(creds, "expiry", None)
    if not isinstance(expiry, datetime):
        p.ok("auth.token", "auth", "got an access token (no expiry given)")
        return
    left = (expiry.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)).total_seconds()
    if left <= 0:
        p.fail("auth.token", "auth", "token-expired",
               f"the token endpoint handed out a token that expired {duration(left)} ago",
               "the credential's token source is broken or this machine's clock is off: "
               "check the clock, create a new key, or log in again")
    p.ok("auth.token", "auth", f"got an access token valid for {duration(left)}; the "
         "credentials renew it")


def _iam(p: Probe, blobs: GcsBlobs, classify: Any, identity: str | None,
         config: StoreConfig) -> None:
    wanted = [PERMISSIONS["list"], PERMISSIONS["read"]] + (
        [] if p.read_only else [PERMISSIONS["write"], PERMISSIONS["delete"]])
    from google.api_core import exceptions as api

    try:
        granted = p.call(lambda: blobs._bucket().test_iam_permissions(
            wanted, retry=None, timeout=p.step_timeout()), what="testIamPermissions")
    except (api.MethodNotImplemented, api.NotFound, api.BadRequest) as e:
        p.ok("authz.iam", "authz", f"the endpoint does not serve testIamPermissions (HTTP "
             f"{e.code}); the probes below test each operation")
        return
    except ProbeTimeout as e:
        p.fail("http.iam", "http", "network-timeout", str(e), "check the endpoint's health")
    except Exception as e:
        from cloudtrack.errors import CloudtrackError

        try:
            blobs._raise(e, None, "testIamPermissions", missing="bucket")
        except CloudtrackError as translated:
            finding = classify(translated, "list")
            if finding.stops:
                p.fail(finding.id or f"{finding.layer}.iam", finding.layer, finding.cause,
                       finding.summary, finding.fix)
            p.ok("authz.iam", "authz", f"testIamPermissions was refused ({finding.summary}); "
                 "the probes below test each operation")
            return
    missing = [perm for perm in wanted if perm not in set(granted or [])]
    if missing:
        denied = [op for op, perm in PERMISSIONS.items() if perm in missing]
        p.note_fail("authz.iam", "authz", "permission-denied",
                    f"testIamPermissions on gs://{config.container}: missing "
                    + ", ".join(missing), _access_fix(config, identity)(denied))
    else:
        p.ok("authz.iam", "authz", "testIamPermissions: " + ", ".join(wanted) + " granted")


# -- errors and fixes ------------------------------------------------------------------------


def _classifier(config: StoreConfig, endpoint: str, creds: Any, anonymous: bool) -> Any:
    def classify(e: BaseException, op: str) -> Finding:
        text = str(e)
        if isinstance(e, ContainerNotFound):
            return Finding("authz", "container-not-found",
                           f"bucket gs://{config.container} does not exist at "
                           f"{redact_uri(endpoint)}",
                           f"check the bucket name (and project), or create it: `gcloud storage "
                           f"buckets create gs://{config.container}`",
                           id="authz.container", stop=True)
        if isinstance(e, Unauthenticated):
            if anonymous:
                return Finding("auth", "credentials-missing",
                               f"the service wants credentials and none are sent ({text})",
                               "set GOOGLE_APPLICATION_CREDENTIALS to a key file",
                               id="auth.accepted")
            expiry = getattr(creds, "expiry", None)
            if isinstance(expiry, datetime) and expiry.replace(tzinfo=timezone.utc) <= \
                    datetime.now(timezone.utc):
                return Finding("auth", "token-expired", f"the access token has expired ({text})",
                               "create a new key or log in again", id="auth.accepted")
            return Finding("auth", "credentials-invalid", f"the service refused the "
                           f"credentials ({text})", _LOGIN, id="auth.accepted")
        if isinstance(e, PermissionDenied):
            found = _PERMISSION.search(text)
            perm = found.group(0) if found else PERMISSIONS[op]
            return Finding("authz", "permission-denied", f"{op} is denied: {perm} is missing "
                           f"on gs://{config.container}")
        if isinstance(e, TransientError) and re.search(r"answered 5\d\d", text):
            return Finding("http", "server-error", text, "retry later; check the service")
        failure = net.transport_failure(e, redact_uri(endpoint))
        if failure is not None:
            return Finding(failure.layer, failure.cause, failure.summary,
                           failure.fix or "check the endpoint and the network")
        if isinstance(e, BlobError):
            return Finding("authz", "permission-denied", f"{op} failed: {text}")
        return Finding("http", "server-error", f"{op} failed: {text}")

    return classify


def _access_fix(config: StoreConfig, identity: str | None) -> AccessFix:
    def fix(denied: Sequence[str]) -> str:
        perms = ", ".join(PERMISSIONS[op] for op in denied)
        role = READ_ROLE if set(denied) <= {"list", "read"} else ROLE
        member = identity or "serviceAccount:<the account above>"
        return (f"grant {perms} on the bucket — the role {role} has them: `gcloud storage "
                f"buckets add-iam-policy-binding gs://{config.container} --member={member} "
                f"--role={role}` (for the prefix only, add an IAM condition on "
                f"resource.name.startsWith(\"projects/_/buckets/{config.container}/objects/"
                f"{config.prefix}\"))")
    return fix
