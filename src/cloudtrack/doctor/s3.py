"""The doctor of ``s3://`` stores, on AWS or any S3-compatible endpoint, through
:class:`S3Blobs` and its :class:`~cloudtrack.credentials.s3.S3Credentials`: which endpoint and
where it came from, the network path to it, whether it answers like S3, which credential of
the AWS chain signs and whose identity it is (STS GetCallerIdentity), its expiry, the clock,
the bucket's region, and the access probes — with the IAM actions, the minimal policy for the
prefix and the command that attaches it when something is denied."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cloudtrack.blobs.s3 import S3Blobs
from cloudtrack.blobs.s3.client import sdk_verify
from cloudtrack.config import StoreConfig, redact_uri
from cloudtrack.config import tls as trust
from cloudtrack.credentials import Credential
from cloudtrack.credentials.s3 import S3Credentials
from cloudtrack.doctor import net
from cloudtrack.doctor.answer import Answer, Service, probe_answer
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
    ConfigError,
    ContainerNotFound,
    CredentialsUnavailable,
    MissingDependencyError,
    PermissionDenied,
    Unauthenticated,
)

TLS = net.TlsHints.of(trust.S3)

#: The IAM action each probe needs.
ACTIONS = {"list": "s3:ListBucket", "read": "s3:GetObject", "write": "s3:PutObject",
           "delete": "s3:DeleteObject"}

#: Headers only S3 (and its imitations) send.
_S3_HEADERS = ("x-amz-request-id", "x-amzn-requestid", "x-amz-id-2", "x-amz-bucket-region")
_EMULATOR_HINTS = ("localhost", "127.", "minio", "moto", "localstack", "ceph", "seaweed",
                   "garage", "::1", "host.docker.internal")


def _s3ish(answer: Answer) -> bool:
    """S3 and its imitations send x-amz-* headers; an HTML page or a bare 404/405 is not S3."""
    if any(h in answer.headers for h in _S3_HEADERS) or re.search(
            r"AmazonS3|MinIO|Ceph|SeaweedFS|Garage|moto", answer.server, re.I):
        return True
    return not ("html" in answer.headers.get("content-type", "")
                or (answer.status in (404, 405) and not answer.code))


SERVICE = Service(
    "S3", _s3ish, "no x-amz-* headers", "HEAD bucket",
    server_error_fix="the service is failing or overloaded: retry later, check its status page "
                     "or logs; if it persists, check the endpoint is the S3 API and not a web "
                     "page",
    mismatch_fix="point MLFLOW_S3_ENDPOINT_URL at the S3 API port of the server (MinIO: 9000, "
                 "not the console port)")


def diagnose(p: Probe, config: StoreConfig) -> None:
    endpoint_setting = config.setting("endpoint_url")
    custom = endpoint_setting is not None and endpoint_setting.value is not None
    try:
        blobs = p.call(lambda: S3Blobs(with_timeouts(config, p.timeout)),
                       what="building the S3 client (and finding credentials)")
    except (ConfigError, MissingDependencyError) as e:
        cause = "dependency-missing" if isinstance(e, MissingDependencyError) else "config-invalid"
        p.fail("config.client", "config", cause, str(e),
               "fix the variable named above (`cloudtrack config URI` shows every setting)")
    except ProbeTimeout as e:
        p.fail("auth.credential", "auth", "network-timeout",
               f"{e}: the AWS credential chain waited on a credentials endpoint (instance "
               "metadata, a container or SSO endpoint) that does not answer",
               "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE; off EC2, "
               "AWS_EC2_METADATA_DISABLED=true skips the metadata service")
    try:
        _diagnose(p, config, blobs, custom)
    finally:
        blobs.close()


def _diagnose(p: Probe, config: StoreConfig, blobs: S3Blobs, custom: bool) -> None:
    endpoint = blobs.endpoint_url
    region = blobs.region
    source = config.setting("endpoint_url")
    where = (f"{redact_uri(endpoint)} (from {source.source})" if custom and source
             else f"{endpoint} (AWS's endpoint for region {region}: no MLFLOW_S3_ENDPOINT_URL, "
                  "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL is set)")
    p.ok("config.client", "config", f"S3 client: endpoint {where}, region {region} "
         f"({_source(config, 'region')})")
    _static_consistency(p, config)
    net.probe_endpoint(p, endpoint, verify=config.tls_verify, hints=TLS, what="the S3 endpoint")

    credential = _credentials(p, blobs.credentials)
    head = probe_answer(p, endpoint, lambda: _answer(blobs), SERVICE, TLS)
    net.check_clock(p, head.headers.get("date"),
                    server=f"the S3 endpoint {net.Target.from_url(endpoint).netloc}")
    _expiry(p, credential)
    identity = _identity(p, config, blobs, custom)

    bucket_region = head.headers.get("x-amz-bucket-region")
    redirect = head.code in ("PermanentRedirect", "AuthorizationHeaderMalformed")
    if head.status in (301, 307) or redirect:
        p.fail("consistency.region", "consistency", "endpoint-mismatch",
               f"bucket {blobs.bucket!r} is in region {bucket_region or '(not said)'}, but the "
               f"client signs for {region} and sends to {endpoint} (HTTP {head.status} "
               f"{head.code if redirect else 'PermanentRedirect'})",
               f"set AWS_REGION={bucket_region or '<the bucket region>'} (or AWS_DEFAULT_REGION)")
    if head.status == 404:
        p.fail("authz.container", "authz", "container-not-found",
               f"bucket {blobs.bucket!r} does not exist at {endpoint} (HEAD answered 404)",
               _missing_bucket_fix(config, blobs.bucket, custom))
    probe_access(p, blobs, classify=_classifier(config, endpoint, custom, identity),
                 access_fix=_access_fix(config, identity), where=config.display_uri,
                 doubt=_bucket_doubt(p, config, blobs, head, identity))
    if bucket_region and region and bucket_region != region:
        p.warn("consistency.region", "consistency", "endpoint-mismatch",
               f"bucket {blobs.bucket!r} reports region {bucket_region}, the client uses "
               f"{region}; this endpoint tolerates it, AWS would redirect",
               f"set AWS_REGION={bucket_region}")
    elif bucket_region:
        p.ok("consistency.region", "consistency", f"bucket region {bucket_region} matches "
             "the client's")
    check_marker(p, blobs)


def _answer(blobs: S3Blobs) -> Answer:
    facts = blobs.head_bucket()
    return Answer(facts.status, facts.headers, code=facts.code)


# -- config ----------------------------------------------------------------------------------


def _source(config: StoreConfig, name: str) -> str:
    s = config.setting(name)
    return s.source if s is not None else "sdk-default"


def _static_consistency(p: Probe, config: StoreConfig) -> None:
    endpoint = config.setting("endpoint_url")
    env = p.environ
    if endpoint is None or endpoint.value is None:
        p.ok("consistency.endpoint", "consistency",
             "real AWS S3 (no custom endpoint is configured)")
        return
    value = str(endpoint.value)
    host = (net.Target.from_url(value).host if "://" in value else value).lower()
    kind = "a local emulator or S3-compatible server" if any(h in host for h in _EMULATOR_HINTS) \
        else ("AWS S3 through an explicit endpoint" if host.endswith("amazonaws.com")
              else "an S3-compatible server")
    shadowed = [name for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
                if env.get(name) and env.get(name) != value
                and endpoint.source != f"env:{name}"]
    if shadowed:
        p.warn("consistency.endpoint", "consistency", "endpoint-mismatch",
               f"{redact_uri(value)} from {endpoint.source} ({kind}) wins over "
               + ", ".join(f"{n}={redact_uri(env[n])}" for n in shadowed)
               + "; other AWS tools on this machine use the latter",
               "set one endpoint variable, or make them agree")
    else:
        p.ok("consistency.endpoint", "consistency",
             f"custom endpoint {redact_uri(value)} from {endpoint.source}: {kind}")


# -- credentials -----------------------------------------------------------------------------


def _credentials(p: Probe, provider: S3Credentials) -> Credential:
    try:
        credential = p.call(provider.current, what="refreshing the AWS credentials")
    except ProbeTimeout as e:
        p.fail("auth.credential", "auth", "network-timeout",
               f"{e}: the credential provider ({provider.describe().signer}) did not answer",
               "check the provider's endpoint (SSO, STS, metadata), or use static keys")
    except CredentialsUnavailable as e:
        if e.reason == "missing":
            p.fail("auth.credential", "auth", "credentials-missing", str(e),
                   "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for "
                   "temporary keys), or AWS_PROFILE naming a profile of ~/.aws/credentials, or "
                   "run `aws sso login --profile <name>`; on a server, attach a role")
        p.fail("auth.credential", "auth", unavailable_cause(e), str(e),
               _renew_fix(str(getattr(provider.signing(), "method", ""))))
    p.secret(*credential.secrets)
    p.ok("auth.credential", "auth", f"signing with {credential.signer}")
    return credential


def _renew_fix(method: str) -> str:
    if method == "env":
        return ("get new temporary credentials (e.g. `aws sts assume-role` or your SSO portal) "
                "and export AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and "
                "AWS_CREDENTIAL_EXPIRATION again; a long job needs a profile that renews "
                "itself (role_arn + source_profile, or SSO)")
    if method == "sso":
        return "run `aws sso login --profile <profile>`"
    return "renew the credentials of the profile, or use a role that renews itself"


def _expiry(p: Probe, credential: Credential) -> None:
    if credential.expires is None:
        if credential.source == "env" and p.environ.get("AWS_SESSION_TOKEN"):
            p.ok("auth.expiry", "auth",
                 "temporary credentials of unknown expiry (AWS_CREDENTIAL_EXPIRATION is unset)")
        return
    check_expiry(p, "auth.expiry", credential, what="the credentials",
                 fix=_renew_fix(credential.source))


# -- identity --------------------------------------------------------------------------------


def _identity(p: Probe, config: StoreConfig, blobs: S3Blobs, custom: bool) -> str | None:
    """The caller's ARN from STS GetCallerIdentity at the STS endpoint the environment names
    (or the S3 endpoint when it is custom); None when no STS answers."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    env = p.environ
    sts_endpoint = env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL") or (
        blobs.endpoint_url if custom else None)
    frozen = blobs.credentials.signing().get_frozen_credentials()
    try:
        sts = blobs.credentials.session.create_client(
            "sts", region_name=blobs.region, endpoint_url=sts_endpoint,
            verify=sdk_verify(config), aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key, aws_session_token=frozen.token,
            config=Config(connect_timeout=p.step_timeout(), read_timeout=p.step_timeout(),
                          retries={"total_max_attempts": 1}))
        answer = p.call(sts.get_caller_identity, what="STS GetCallerIdentity")
    except ClientError as e:
        code = (e.response.get("Error") or {}).get("Code", "")
        p.ok("auth.identity", "auth",
             f"STS at {sts_endpoint or 'AWS'} did not say who this is ({code or e}); the "
             "S3 requests below decide whether the credentials are accepted")
        return None
    except (BotoCoreError, ProbeTimeout) as e:
        p.ok("auth.identity", "auth", f"no STS answered at {sts_endpoint or 'AWS'} "
             f"({type(e).__name__}); identity unknown")
        return None
    arn = str(answer.get("Arn", ""))
    p.ok("auth.identity", "auth", f"identity {arn} (account {answer.get('Account')}, from STS "
         f"GetCallerIdentity at {sts_endpoint or 'AWS'})")
    return arn or None


# -- errors and fixes ------------------------------------------------------------------------


def _classifier(config: StoreConfig, endpoint: str, custom: bool,
                identity: str | None) -> Any:
    source = config.setting("endpoint_url")
    where = (f"{endpoint} (from {source.source})" if custom and source
             else f"AWS ({endpoint}; no MLFLOW_S3_ENDPOINT_URL/AWS_ENDPOINT_URL is set)")
    key_hint = ("" if custom else "; if these keys belong to MinIO or another S3-compatible "
                "server, set MLFLOW_S3_ENDPOINT_URL to its URL — they were sent to AWS")

    def classify(e: BaseException, op: str) -> Finding:
        facts = S3Blobs.error_facts(e)
        answered = facts is not None and facts.kind == "response"
        code = facts.code if facts is not None and answered else ""
        message = facts.message if facts is not None and answered else ""
        status = facts.status if facts is not None else 0
        headers: Mapping[str, str] = facts.headers if facts is not None else {}
        details: Mapping[str, str] = facts.details if facts is not None else {}
        said = f"{code}: {message}" if message else (code or str(e))
        if code == "InvalidAccessKeyId":
            return Finding("auth", "credentials-invalid",
                           f"{where} does not know the access key id ({said})",
                           "use keys issued by this endpoint's account" + key_hint,
                           id="auth.accepted")
        if code in ("SignatureDoesNotMatch", "InvalidSignature", "IncompleteSignature"):
            return Finding("auth", "credentials-invalid",
                           f"{where} knows the access key id but the secret key does not match "
                           f"it ({code})",
                           "set AWS_SECRET_ACCESS_KEY to the secret issued with this access key "
                           "(check for a stray space or newline); if the key is right, check "
                           "the clock" + key_hint, id="auth.accepted")
        if code in ("ExpiredToken", "TokenRefreshRequired", "RequestExpired",
                    "ExpiredTokenException"):
            return Finding("auth", "token-expired",
                           f"{where} says the session token has expired ({said})",
                           _renew_fix("env"), id="auth.accepted")
        if code in ("InvalidToken", "InvalidClientTokenId"):
            return Finding("auth", "credentials-invalid",
                           f"{where} refused the session token ({said})",
                           "AWS_SESSION_TOKEN must come with the access key it was issued with; "
                           "unset it for long-term keys", id="auth.accepted")
        if code == "RequestTimeTooSkewed":
            return Finding("auth", "clock-skew",
                           f"{where} refused the request: this machine's clock is too far off "
                           f"({said})", "synchronise the clock with NTP",
                           id="auth.clock")
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                    "IllegalLocationConstraintException") or status in (301, 307):
            region = (headers.get("x-amz-bucket-region") or details.get("BucketRegion")
                      or details.get("Region") or _region_in(message) or "?")
            return Finding("consistency", "endpoint-mismatch",
                           f"the bucket is in region {region}, not the client's ({said})",
                           f"set AWS_REGION={region}", id="consistency.region")
        if isinstance(e, ContainerNotFound) or code == "NoSuchBucket":
            return Finding("authz", "container-not-found",
                           f"bucket {config.container!r} does not exist at {where} ({said})",
                           _missing_bucket_fix(config, config.container, custom),
                           id="authz.container", stop=True)
        if isinstance(e, Unauthenticated):
            return Finding("auth", "credentials-invalid", f"{where} refused the credentials "
                           f"({said})", "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" + key_hint,
                           id="auth.accepted")
        if isinstance(e, PermissionDenied):
            return Finding("authz", "permission-denied",
                           f"{op} under the prefix is denied: {ACTIONS[op]} is missing for "
                           f"{identity or 'these credentials'} ({said})")
        if status >= 500:
            return Finding("http", "server-error", f"{where} answered HTTP {status} ({said})",
                           "the service is failing: retry later or check its logs")
        return fallback_finding(e, op, endpoint)

    return classify


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: the fewest inserted, deleted or replaced characters from a to b."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def _nearest(name: str, names: Sequence[str], most: int = 3) -> list[str]:
    """The names ``name`` most likely mistypes: those fewest edits away, when that is at most
    one edit in five characters (two at least). A ratio of likeness would also offer names
    that merely share a pattern (bucket names with random suffixes share many characters)."""
    scored = sorted((_edits(name, n), n) for n in names)
    if not scored or scored[0][0] > max(2, len(name) // 5):
        return []
    return [n for d, n in scored if d == scored[0][0]][:most]


def _bucket_doubt(p: Probe, config: StoreConfig, blobs: S3Blobs, head: Answer,
                  identity: str | None) -> ContainerDoubt:
    """Catalogue row 28: S3 answers AccessDenied, not NoSuchBucket, to a caller without rights
    on a bucket, whether it exists or not, so a mistyped name reads as a missing permission.
    When every probe is denied and so is the bucket-level HEAD (a HEAD that answers proves the
    bucket exists), ListBuckets with the same credentials tells which is likelier: a bucket
    of this account is listed; one missing from the list is most likely a wrong name."""
    bucket = config.container

    def doubt(denied: Sequence[str]) -> Finding | None:
        if head.status != 403:
            return None
        names = _bucket_names(p, blobs)
        if names is not None and bucket in names:
            return None  # the account's own bucket: the name is right, the policy is not
        who = f"the credentials of {identity}" if identity else "the credentials"
        seen = (f"every request on it is denied, the bucket-level HEAD too (HTTP 403), though "
                f"S3 accepts {who} (AccessDenied, not a signature error)")
        why = ("S3 answers AccessDenied, not NoSuchBucket, for a bucket the caller has no "
               "rights on, whether it exists or not")
        if names is None:
            summary = (f"the bucket name {bucket!r} may be wrong: {seen}. {why}, so a wrong name "
                       "is as likely as a missing permission; these credentials may not list "
                       "buckets either (no s3:ListAllMyBuckets), so the doctor cannot tell which")
            fix = (f"check the bucket name {bucket!r} in the URI (the S3 console, or `aws s3 "
                   "ls` with credentials that may list buckets, shows the real names); if it "
                   "is right, grant the access below")
            return Finding("authz", "permission-denied", summary, fix, id="authz.container")
        close = _nearest(bucket, names)
        meant = " or ".join(f"s3://{c}/{config.prefix}".rstrip("/") for c in close)
        summary = (f"the bucket name {bucket!r} is likely wrong: it is not among the "
                   f"{len(names)} bucket(s) these credentials can list (ListBuckets), and "
                   f"{seen}. {why}; another account's bucket (whose bucket policy would have "
                   "to let these credentials in) is the less likely reading"
                   + (f". Did you mean {meant}?" if meant else ""))
        fix = ((f"use {meant} if that is the bucket you meant; otherwise check" if meant
                else "check")
               + f" the bucket name {bucket!r} in the URI (`aws s3 ls` lists this account's "
               "buckets); if it is right — another account's bucket — its owner must grant "
               "the access below")
        return Finding("authz", "permission-denied", summary, fix, id="authz.container")

    return doubt


def _bucket_names(p: Probe, blobs: S3Blobs) -> list[str] | None:
    """The buckets these credentials can list (ListBuckets), or None when they may not."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = p.call(blobs.client.list_buckets, what="ListBuckets")
    except (ClientError, BotoCoreError, ProbeTimeout):
        return None
    return [str(b.get("Name")) for b in answer.get("Buckets") or []]


def _region_in(message: str) -> str | None:
    m = re.search(r"expecting '([a-z0-9-]+)'", message) or re.search(r"region '?([a-z]{2}-[a-z]+-\d)", message)
    return m.group(1) if m else None


def _missing_bucket_fix(config: StoreConfig, bucket: str, custom: bool) -> str:
    endpoint = config.get("endpoint_url")
    create = f"aws s3 mb s3://{bucket}" + (f" --endpoint-url {endpoint}" if endpoint else "")
    hint = "" if custom else (" — or, if the bucket is on MinIO/another S3-compatible server, "
                              "set MLFLOW_S3_ENDPOINT_URL to it")
    return f"check the bucket name in the URI, or create it: `{create}`{hint}"


def minimal_policy(bucket: str, prefix: str, read_only: bool = False) -> dict[str, Any]:
    """The IAM policy that lets cloudtrack use ``s3://bucket/prefix`` and nothing else."""
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listing: dict[str, Any] = {"Effect": "Allow", "Action": "s3:ListBucket",
                               "Resource": f"arn:aws:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    actions = ["s3:GetObject"] if read_only else ["s3:GetObject", "s3:PutObject",
                                                  "s3:DeleteObject"]
    return {"Version": "2012-10-17",
            "Statement": [listing, {"Effect": "Allow", "Action": actions, "Resource": objects}]}


def attach_command(identity: str | None, bucket: str, policy: Mapping[str, Any]) -> str:
    doc = json.dumps(policy, separators=(",", ":"))
    name = f"cloudtrack-{bucket}"[:128]
    if identity:
        m = re.match(r"arn:aws[\w-]*:iam::\d+:user/(?:.*/)?([^/]+)$", identity)
        if m:
            return (f"aws iam put-user-policy --user-name {m.group(1)} --policy-name {name} "
                    f"--policy-document '{doc}'")
        m = re.match(r"arn:aws[\w-]*:sts::\d+:assumed-role/([^/]+)/", identity)
        if m:
            return (f"aws iam put-role-policy --role-name {m.group(1)} --policy-name {name} "
                    f"--policy-document '{doc}'")
    return f"attach this policy to the identity that signs: {doc}"


def _access_fix(config: StoreConfig, identity: str | None) -> AccessFix:
    def fix(denied: Sequence[str]) -> str:
        actions = ", ".join(ACTIONS[op] for op in denied)
        policy = minimal_policy(config.container, config.prefix)
        return (f"allow {actions} on s3://{config.container}/{config.prefix} — the minimal "
                f"policy for the prefix: {attach_command(identity, config.container, policy)} "
                "(or add the same statements to the bucket policy)")
    return fix

