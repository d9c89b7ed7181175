"""The doctor of ``gs://`` stores, through :class:`GcsBlobs` and its
:class:`~cloudtrack.credentials.gcs.GcsCredentials`: which credential
(the key file, gcloud's Application Default Credentials, the metadata server — looked for
without hanging an offline machine — or none), whose identity it is, whether its token
endpoint grants a token and for how long, the bucket's ``testIamPermissions``, and the access
probes, naming the missing ``storage.*`` permission and the role that grants it."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from typing import Any

from cloudtrack.blobs.gcs import GcsBlobs
from cloudtrack.blobs.gcs.errors import PERMISSION
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.config import tls as trust
from cloudtrack.credentials.gcs import GcsCredentials
from cloudtrack.doctor import net
from cloudtrack.doctor.answer import Answer, Service, probe_answer, unsigned_request
from cloudtrack.doctor.core import (
    Probe,
    ProbeTimeout,
    check_expiry,
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
    BlobError,
    ContainerNotFound,
    CredentialsUnavailable,
    PermissionDenied,
    TransientError,
    Unauthenticated,
)

TLS = net.TlsHints.of(trust.GCS)
PERMISSIONS = {"list": "storage.objects.list", "read": "storage.objects.get",
               "write": "storage.objects.create", "delete": "storage.objects.delete"}
ROLE = "roles/storage.objectUser"
READ_ROLE = "roles/storage.objectViewer"
#: Seconds a metadata server gets to say it is there (google-auth waits 3 s, 3 times).
METADATA_TIMEOUT = 1.0
_LOGIN = ("run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
          "to a service-account key file; on GCE/GKE/Cloud Run, attach a service account")


def _json_api(answer: Answer) -> bool:
    body = answer.json()
    return isinstance(body, dict) and ("error" in body or body.get("kind") == "storage#bucket")


SERVICE = Service(
    "the GCS JSON API", _json_api, "not the JSON API's answer", "unauthenticated request",
    server_error_fix="the storage service is failing: retry later, check its status page",
    mismatch_fix="check STORAGE_EMULATOR_HOST / API_ENDPOINT_OVERRIDE")


def diagnose(p: Probe, config: StoreConfig) -> None:
    blobs = GcsBlobs(with_timeouts(config, p.timeout))
    try:
        _diagnose(p, config, blobs)
    finally:
        blobs.close()


def _diagnose(p: Probe, config: StoreConfig, blobs: GcsBlobs) -> None:
    endpoint = blobs.endpoint
    setting = config.setting("emulator_host")
    if not (setting and setting.value):
        setting = config.setting("api_endpoint")
    origin = setting.source if setting and setting.value else "the SDK's default"
    p.ok("config.client", "config", f"GCS client: endpoint {redact_uri(endpoint)} ({origin})")
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    kind = "Google Cloud Storage" if host.endswith("googleapis.com") else \
        "a local emulator" if host in ("127.0.0.1", "localhost", "::1") else "a custom endpoint"
    p.ok("consistency.endpoint", "consistency", f"endpoint {redact_uri(endpoint)} is {kind}")
    net.probe_endpoint(p, endpoint, verify=config.tls_verify, hints=TLS, what="the GCS endpoint")
    url = f"{endpoint.rstrip('/')}/storage/v1/b/{urllib.parse.quote(config.container, safe='')}"
    answer = probe_answer(p, endpoint, unsigned_request(p, url, config.tls_verify), SERVICE, TLS)
    net.check_clock(p, answer.headers.get("date"), server="the storage service")
    credentials = blobs.credentials
    anonymous = _preflight(p, credentials)

    try:
        p.call(credentials.load, what="finding Google credentials")
    except ProbeTimeout as e:
        p.fail("auth.credential", "auth", "network-timeout",
               f"{e}: google-auth waited on the metadata server", _LOGIN)
    except CredentialsUnavailable as e:
        p.fail("auth.credential", "auth", unavailable_cause(e), str(e), _LOGIN)
    identity = None if anonymous else _identity(p, credentials)
    if not anonymous:
        _token(p, credentials)
    classify = _classifier(config, endpoint, credentials)
    _iam(p, blobs, classify, identity, config)
    probe_access(p, blobs, classify=classify, access_fix=_access_fix(config, identity),
                 where=config.display_uri,
                 doubt=None if anonymous else _bucket_doubt(config, credentials))
    check_marker(p, blobs)


# -- credentials, before any network ---------------------------------------------------------


def _preflight(p: Probe, credentials: GcsCredentials) -> bool:
    """Check the credential source without the network; True when the client is anonymous."""
    if credentials.key_file:
        problem = credentials.key_file_problem()
        if problem is not None:
            p.fail("auth.credential", "auth",
                   "credentials-missing" if problem.reason == "missing" else
                   "credentials-invalid", problem.summary, problem.fix)
        return False
    if credentials.anonymous:
        p.ok("auth.credential", "auth", "anonymous: STORAGE_EMULATOR_HOST is set and "
             "GOOGLE_APPLICATION_CREDENTIALS is not, so no credentials are sent")
        return True
    if os.path.exists(credentials.adc_file):
        return False
    looked = list(credentials.places())
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


# -- identity and token ----------------------------------------------------------------------


def _identity(p: Probe, credentials: GcsCredentials) -> str | None:
    credential = credentials.describe()
    project = credentials.project()
    p.ok("auth.credential", "auth", f"{credentials.who()}, from {credential.source}"
         + (f" (project {project})" if project else ""))
    return credential.identity


def _token(p: Probe, credentials: GcsCredentials) -> None:
    try:
        credential = p.call(lambda: credentials.current(p.step_timeout()),
                            what="getting an access token")
    except ProbeTimeout as e:
        p.fail("auth.token", "auth", "network-timeout", f"{e}: the token endpoint did not answer",
               "check the network path to the token endpoint (oauth2.googleapis.com)")
    except CredentialsUnavailable as e:
        p.fail("auth.token", "auth", unavailable_cause(e), str(e),
               "the key was deleted or revoked, or the login expired: create a new key "
               "(`gcloud iam service-accounts keys create`) or run `gcloud auth "
               "application-default login` again")
    except TransientError as e:
        failure = net.transport_failure(e, "the token endpoint")
        p.fail("auth.token", "auth", failure.cause if failure else "network-timeout", str(e),
               "check the network path to the token endpoint")
    p.secret(*credential.secrets)
    if credential.expires is None:
        p.ok("auth.token", "auth", "got an access token (no expiry given)")
        return
    check_expiry(p, "auth.token", credential, what="the access token", renewer="google-auth",
                 fix="the credential's token source is broken or this machine's clock is off: "
                     "check the clock, create a new key, or log in again")


def _iam(p: Probe, blobs: GcsBlobs, classify: Any, identity: str | None,
         config: StoreConfig) -> None:
    wanted = [PERMISSIONS["list"], PERMISSIONS["read"]] + (
        [] if p.read_only else [PERMISSIONS["write"], PERMISSIONS["delete"]])
    try:
        granted = p.call(lambda: blobs.test_permissions(wanted), what="testIamPermissions")
    except ProbeTimeout as e:
        p.fail("http.iam", "http", "network-timeout", str(e), "check the endpoint's health")
    except BlobError as e:
        facts = blobs.error_facts(e)
        if facts is not None and facts.status in (400, 404, 501):
            p.ok("authz.iam", "authz", f"the endpoint does not serve testIamPermissions (HTTP "
                 f"{facts.status}); the probes below test each operation")
            return
        finding = classify(e, "list")
        if finding.stops:
            p.fail(finding.id or f"{finding.layer}.iam", finding.layer, finding.cause,
                   finding.summary, finding.fix)
        p.ok("authz.iam", "authz", f"testIamPermissions was refused ({finding.summary}); "
             "the probes below test each operation")
        return
    missing = [perm for perm in wanted if perm not in set(granted)]
    if missing:
        denied = [op for op, perm in PERMISSIONS.items() if perm in missing]
        p.note_fail("authz.iam", "authz", "permission-denied",
                    f"testIamPermissions on gs://{config.container}: missing "
                    + ", ".join(missing), _access_fix(config, identity)(denied))
    else:
        p.ok("authz.iam", "authz", "testIamPermissions: " + ", ".join(wanted) + " granted")


# -- errors and fixes ------------------------------------------------------------------------


def _classifier(config: StoreConfig, endpoint: str, credentials: GcsCredentials) -> Any:
    def classify(e: BaseException, op: str) -> Finding:
        text = str(e)
        facts = GcsBlobs.error_facts(e)
        if isinstance(e, ContainerNotFound):
            return Finding("authz", "container-not-found",
                           f"bucket gs://{config.container} does not exist at "
                           f"{redact_uri(endpoint)}",
                           f"check the bucket name (and project), or create it: `gcloud storage "
                           f"buckets create gs://{config.container}`",
                           id="authz.container", stop=True)
        if isinstance(e, Unauthenticated):
            if credentials.anonymous:
                return Finding("auth", "credentials-missing",
                               f"the service wants credentials and none are sent ({text})",
                               "set GOOGLE_APPLICATION_CREDENTIALS to a key file",
                               id="auth.accepted")
            left = credentials.describe().seconds_left()
            if left is not None and left <= 0:
                return Finding("auth", "token-expired", f"the access token has expired ({text})",
                               "create a new key or log in again", id="auth.accepted")
            return Finding("auth", "credentials-invalid", f"the service refused the "
                           f"credentials ({text})", _LOGIN, id="auth.accepted")
        if isinstance(e, PermissionDenied):
            found = PERMISSION.search(facts.message if facts is not None else text)
            perm = found.group(0) if found else PERMISSIONS[op]
            return Finding("authz", "permission-denied", f"{op} is denied: {perm} is missing "
                           f"on gs://{config.container}")
        if isinstance(e, TransientError) and facts is not None and facts.status >= 500:
            return Finding("http", "server-error", text, "retry later; check the service")
        return fallback_finding(e, op, redact_uri(endpoint))

    return classify


def _bucket_doubt(config: StoreConfig, credentials: GcsCredentials) -> ContainerDoubt:
    """GCS answers 404 for a bucket that does not exist, so a bucket where every probe is
    denied exists — but the caller may do nothing in it, which is what another project's
    bucket looks like: bucket names are global, and a mistyped or generic name often belongs
    to someone else.  Said beside the permission, which it may be just as well."""
    def doubt(denied: Sequence[str]) -> Finding:
        who = credentials.who()
        project = credentials.project()
        mine = f"the buckets of project {project}" if project else "your project's buckets"
        return Finding(
            "authz", "permission-denied",
            f"bucket gs://{config.container} exists (GCS answers 404, not 403, for a bucket "
            f"that does not exist), but {who} may do nothing in it: either it is not the "
            "bucket you meant — bucket names are global, so a mistyped or generic name often "
            "belongs to another project — or no role on it was granted to this account",
            f"check the bucket name in the URI first (`gcloud storage ls` lists {mine}); if "
            "it is the right bucket, grant the role below", id="authz.container")

    return doubt


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
