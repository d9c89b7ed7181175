"""Parse a store URI and resolve it, with the environment, into one frozen :class:`StoreConfig`.

This is the single place where cloudtrack decides which bucket, prefix, endpoint, region,
account and credential source a store uses, and it records where each value came from.  The
blob layer, the doctor and the migration all call :func:`resolve`, so the doctor tests exactly
what a logging process would use.

Every environment variable cloudtrack reads is declared once in :data:`VARIABLES`; the README's
configuration reference is generated from that table (``python -m cloudtrack.config``) and a test
keeps the two identical.  Variables the SDKs read by themselves (the AWS credential chain,
``AWS_CA_BUNDLE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_CLIENT_ID`` …) are left to the
SDKs, which build their own clients and credential chains; the table lists the ones whose
source we report.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from cloudtrack.errors import ConfigError

Backend = Literal["file", "s3", "gcs", "azure"]


@dataclass(frozen=True)
class EnvVar:
    """An environment variable cloudtrack reads (or reports the SDK reading)."""

    name: str
    backend: str
    meaning: str
    default: str = ""
    secret: bool = False


def _v(name: str, backend: str, meaning: str, default: str = "", secret: bool = False) -> EnvVar:
    return EnvVar(name, backend, meaning, default, secret)


MLFLOW_S3_ENDPOINT_URL = _v("MLFLOW_S3_ENDPOINT_URL", "s3",
                            "S3-compatible endpoint (MinIO, moto …); wins over the AWS variables")
AWS_ENDPOINT_URL_S3 = _v("AWS_ENDPOINT_URL_S3", "s3", "S3 endpoint, as the AWS SDKs read it")
AWS_ENDPOINT_URL = _v("AWS_ENDPOINT_URL", "s3", "endpoint for every AWS service")
MLFLOW_S3_IGNORE_TLS = _v("MLFLOW_S3_IGNORE_TLS", "s3",
                          "`true` turns TLS verification off (self-signed endpoints)", "false")
AWS_CA_BUNDLE = _v("AWS_CA_BUNDLE", "s3", "CA bundle to trust for the S3 endpoint")
MLFLOW_S3_UPLOAD_EXTRA_ARGS = _v("MLFLOW_S3_UPLOAD_EXTRA_ARGS", "s3",
                                 'JSON of extra PutObject arguments, e.g. `{"ServerSideEncryption": "aws:kms"}`')
AWS_REGION = _v("AWS_REGION", "s3", "region of the bucket's endpoint")
AWS_DEFAULT_REGION = _v("AWS_DEFAULT_REGION", "s3", "region, when AWS_REGION is unset")
AWS_PROFILE = _v("AWS_PROFILE", "s3", "named profile of ~/.aws/config and ~/.aws/credentials")
AWS_ACCESS_KEY_ID = _v("AWS_ACCESS_KEY_ID", "s3", "access key (else profiles, SSO, web identity, instance metadata)")
AWS_SECRET_ACCESS_KEY = _v("AWS_SECRET_ACCESS_KEY", "s3", "secret key for AWS_ACCESS_KEY_ID", secret=True)
AWS_SESSION_TOKEN = _v("AWS_SESSION_TOKEN", "s3", "STS session token", secret=True)

STORAGE_EMULATOR_HOST = _v("STORAGE_EMULATOR_HOST", "gcs", "GCS emulator address, e.g. `http://127.0.0.1:4443`")
API_ENDPOINT_OVERRIDE = _v("API_ENDPOINT_OVERRIDE", "gcs", "GCS JSON API endpoint, as google-cloud-storage reads it")
GOOGLE_APPLICATION_CREDENTIALS = _v("GOOGLE_APPLICATION_CREDENTIALS", "gcs",
                                    "service-account or external-account key file (else Application Default Credentials)")
GOOGLE_CLOUD_PROJECT = _v("GOOGLE_CLOUD_PROJECT", "gcs", "project for requests that need one")

AZURE_STORAGE_CONNECTION_STRING = _v("AZURE_STORAGE_CONNECTION_STRING", "azure",
                                     "connection string (key, SAS, or endpoints only — then the credential chain signs)", secret=True)
AZURE_STORAGE_ACCESS_KEY = _v("AZURE_STORAGE_ACCESS_KEY", "azure", "account key for the account in the URI", secret=True)
AZURE_STORAGE_SAS_TOKEN = _v("AZURE_STORAGE_SAS_TOKEN", "azure", "SAS token for the account in the URI", secret=True)

CLOUDTRACK_CONNECT_TIMEOUT = _v("CLOUDTRACK_CONNECT_TIMEOUT", "all", "seconds to wait for a connection", "10")
CLOUDTRACK_READ_TIMEOUT = _v("CLOUDTRACK_READ_TIMEOUT", "all", "seconds to wait for a response", "60")
CLOUDTRACK_STRICT = _v("CLOUDTRACK_STRICT", "all",
                       "`true`: every logging call is durable when it returns (else buffered, flushed about once a second, at end_run and at exit)",
                       "false")
CLOUDTRACK_MAX_ATTEMPTS = _v("CLOUDTRACK_MAX_ATTEMPTS", "all", "attempts for a transient failure (5xx, 429, reset, timeout)", "5")

VARIABLES: tuple[EnvVar, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, EnvVar)
)

#: scheme -> (backend, the URI form shown when one is malformed)
SCHEMES: Mapping[str, tuple[Backend, str]] = MappingProxyType({
    "s3": ("s3", "s3://<bucket>[/<prefix>]"),
    "gs": ("gcs", "gs://<bucket>[/<prefix>]"),
    "wasbs": ("azure", "wasbs://<container>@<account>.blob.core.windows.net[/<prefix>]"),
    "abfss": ("azure", "abfss://<container>@<account>.dfs.core.windows.net[/<prefix>]"),
    "file": ("file", "file:///<absolute path>, file:<relative path>, or a plain path"),
})


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from."""

    name: str
    value: str | int | float | bool | None
    #: ``uri``, ``argument``, ``env:<NAME>``, ``connection-string``, ``sdk-default`` or ``default``.
    source: str
    secret: bool = False

    def shown(self) -> str:
        """The value as it may appear in output."""
        if self.value is None:
            return "(unset)"
        return "***" if self.secret else str(self.value)

    def __repr__(self) -> str:
        return f"Setting({self.name}={self.shown()!r}, source={self.source!r})"


@dataclass(frozen=True)
class StoreConfig:
    """Everything a backend needs to open a store, with the origin of every value."""

    backend: Backend
    scheme: str
    #: Bucket or container; for ``file``, the absolute root directory.
    container: str
    #: Key prefix inside the container, without leading or trailing '/'; '' for none.
    prefix: str
    display_uri: str
    settings: tuple[Setting, ...] = ()
    #: The environment the values were read from; backends read SDK variables from it too.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def setting(self, name: str) -> Setting | None:
        for s in self.settings:
            if s.name == name:
                return s
        return None

    def get(self, name: str, default: object = None) -> object:
        s = self.setting(name)
        return default if s is None or s.value is None else s.value

    def key(self, key: str) -> str:
        """``key`` with the store's prefix in front: the name inside the container."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def __str__(self) -> str:
        return self.display_uri


# -- redaction -----------------------------------------------------------------------------

_SECRET_QUERY_KEYS = {"sig", "signature", "x-amz-signature", "x-amz-credential",
                      "x-amz-security-token", "token", "access_token", "code", "password",
                      "accountkey", "sharedaccesssignature", "client_secret"}
_SECRET_PAIR = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|sig|password|secret|token|access_token|"
    r"x-amz-signature|x-amz-security-token|client_secret)=([^;&\s\"']+)"
)


def redact(text: str) -> str:
    """Remove passwords in URIs, SAS signatures, keys and tokens from free text."""
    text = re.sub(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@/\s]+)@", r"\1***@", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}=***", text)
    text = re.sub(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]+", r"\1***", text)
    return text


def redact_uri(uri: str) -> str:
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError:
        return redact(uri)
    netloc = parsed.netloc
    if "@" in netloc and ":" in netloc.split("@", 1)[0]:
        user = netloc.split("@", 1)[0].split(":", 1)[0]
        netloc = f"{user}:***@{netloc.split('@', 1)[1]}"
    query = parsed.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}={'***' if k.lower() in _SECRET_QUERY_KEYS else v}" for k, v in pairs
        )
    if netloc == parsed.netloc and query == parsed.query:
        return redact(uri)  # nothing structural to hide; keep the URI exactly as written
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, query, parsed.fragment))


# -- parsing -------------------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
_AZ_CONTAINER = re.compile(r"^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")
_AZ_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


def _bad(uri: str, scheme: str, why: str) -> ConfigError:
    form = SCHEMES[scheme][1]
    return ConfigError(f"malformed store URI {redact_uri(uri)!r}: {why}; expected {form}")


def _clean_prefix(uri: str, scheme: str, path: str) -> str:
    prefix = path.strip("/")
    if prefix:
        for part in prefix.split("/"):
            if part in ("", ".", ".."):
                raise _bad(uri, scheme, "the prefix has an empty, '.' or '..' segment")
            if "%2e" in part.lower() and urllib.parse.unquote(part) in (".", ".."):
                raise _bad(uri, scheme, "the prefix has an encoded '.' or '..' segment")
    return prefix


def known_schemes() -> list[str]:
    return sorted(SCHEMES)


def split_scheme(uri: str) -> str:
    """The URI's scheme, or ``file`` for a plain path."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return uri.split(":", 1)[0].lower()
    return "file"


def local_path(uri: str) -> str:
    """The absolute directory a ``file:`` URI or plain path names."""
    if uri.startswith("file:"):
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc not in ("", "localhost"):
            raise _bad(uri, "file", f"host {parsed.netloc!r} is not supported")
        path = urllib.parse.unquote(parsed.path)
        if not path:
            raise _bad(uri, "file", "no path")
    else:
        path = uri
    return os.path.abspath(os.path.expanduser(path))


def _read(environ: Mapping[str, str], var: EnvVar) -> str | None:
    value = environ.get(var.name)
    return value if value not in (None, "") else None


def _first(environ: Mapping[str, str], name: str, *candidates: EnvVar,
           secret: bool = False) -> Setting | None:
    for var in candidates:
        value = _read(environ, var)
        if value is not None:
            return Setting(name, value, f"env:{var.name}", secret or var.secret)
    return None


def _endpoint(uri: str, scheme: str, s: Setting | None) -> Setting | None:
    if s is None or s.value is None:
        return s
    value = str(s.value)
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"endpoint {redact_uri(value)!r} from {s.source} for {redact_uri(uri)!r} has no "
            "http:// or https:// scheme or no host; set it like https://host:port"
        )
    return s


def _bool_env(environ: Mapping[str, str], var: EnvVar) -> bool | None:
    value = _read(environ, var)
    if value is None:
        return None
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var.name}={value!r} is not a boolean; use true or false")


def _number(environ: Mapping[str, str], var: EnvVar, kind: type) -> Setting:
    raw = _read(environ, var)
    name = var.name.removeprefix("CLOUDTRACK_").lower()
    if raw is None:
        return Setting(name, kind(var.default), "default")
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{var.name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{var.name}={raw!r} must be positive")
    return Setting(name, value, f"env:{var.name}")


def _common(environ: Mapping[str, str]) -> list[Setting]:
    strict = _bool_env(environ, CLOUDTRACK_STRICT)
    return [
        Setting("strict", bool(strict), "env:CLOUDTRACK_STRICT" if strict is not None else "default"),
        _number(environ, CLOUDTRACK_CONNECT_TIMEOUT, float),
        _number(environ, CLOUDTRACK_READ_TIMEOUT, float),
        _number(environ, CLOUDTRACK_MAX_ATTEMPTS, int),
    ]


def _resolve_s3(uri: str, parsed: urllib.parse.SplitResult,
                environ: Mapping[str, str]) -> StoreConfig:
    bucket = parsed.netloc
    if not bucket:
        raise _bad(uri, "s3", "no bucket")
    if "@" in bucket or ":" in bucket:
        raise _bad(uri, "s3", "credentials or a port do not belong in the bucket part")
    if not _BUCKET.match(bucket):
        raise _bad(uri, "s3", f"{bucket!r} is not a valid bucket name")
    prefix = _clean_prefix(uri, "s3", parsed.path)
    settings = _common(environ)
    endpoint = _endpoint(uri, "s3", _first(environ, "endpoint_url", MLFLOW_S3_ENDPOINT_URL,
                                          AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL))
    settings.append(endpoint or Setting("endpoint_url", None, "sdk-default"))
    ignore_tls = _bool_env(environ, MLFLOW_S3_IGNORE_TLS)
    settings.append(Setting("verify_tls", not ignore_tls,
                            "env:MLFLOW_S3_IGNORE_TLS" if ignore_tls is not None else "default"))
    settings.append(_first(environ, "ca_bundle", AWS_CA_BUNDLE)
                    or Setting("ca_bundle", None, "sdk-default"))
    settings.append(_first(environ, "region", AWS_REGION, AWS_DEFAULT_REGION)
                    or Setting("region", None, "sdk-default"))
    settings.append(_first(environ, "profile", AWS_PROFILE)
                    or Setting("profile", None, "sdk-default"))
    settings.append(_first(environ, "access_key_id", AWS_ACCESS_KEY_ID)
                    or Setting("access_key_id", None, "sdk-default"))
    extra = _read(environ, MLFLOW_S3_UPLOAD_EXTRA_ARGS)
    if extra is not None:
        try:
            parsed_extra = json.loads(extra)
        except ValueError as e:
            raise ConfigError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS is not valid JSON: {e}") from None
        if not isinstance(parsed_extra, dict):
            raise ConfigError("MLFLOW_S3_UPLOAD_EXTRA_ARGS must be a JSON object")
        settings.append(Setting("upload_extra_args", json.dumps(parsed_extra, sort_keys=True),
                                "env:MLFLOW_S3_UPLOAD_EXTRA_ARGS"))
    return StoreConfig("s3", "s3", bucket, prefix, redact_uri(uri), tuple(settings), environ)


def _resolve_gcs(uri: str, parsed: urllib.parse.SplitResult,
                 environ: Mapping[str, str]) -> StoreConfig:
    bucket = parsed.netloc
    if not bucket:
        raise _bad(uri, "gs", "no bucket")
    if not _BUCKET.match(bucket):
        raise _bad(uri, "gs", f"{bucket!r} is not a valid bucket name")
    prefix = _clean_prefix(uri, "gs", parsed.path)
    settings = _common(environ)
    emulator = _first(environ, "emulator_host", STORAGE_EMULATOR_HOST)
    if emulator is not None and "://" not in str(emulator.value):
        emulator = Setting("emulator_host", f"http://{emulator.value}", emulator.source)
    settings.append(_endpoint(uri, "gs", emulator) or Setting("emulator_host", None, "default"))
    settings.append(_endpoint(uri, "gs", _first(environ, "api_endpoint", API_ENDPOINT_OVERRIDE))
                    or Setting("api_endpoint", None, "sdk-default"))
    settings.append(_first(environ, "credentials_file", GOOGLE_APPLICATION_CREDENTIALS)
                    or Setting("credentials_file", None, "sdk-default"))
    settings.append(_first(environ, "project", GOOGLE_CLOUD_PROJECT)
                    or Setting("project", None, "sdk-default"))
    return StoreConfig("gcs", "gs", bucket, prefix, redact_uri(uri), tuple(settings), environ)


def parse_connection_string(value: str) -> dict[str, str]:
    """``Key=Value;…`` pairs of an Azure connection string, keys as written."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError("AZURE_STORAGE_CONNECTION_STRING is malformed: expected Key=Value;… pairs")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _resolve_azure(uri: str, parsed: urllib.parse.SplitResult,
                   environ: Mapping[str, str]) -> StoreConfig:
    scheme = parsed.scheme.lower()
    if "@" not in parsed.netloc:
        raise _bad(uri, scheme, "no '<container>@' before the host")
    container, host = parsed.netloc.split("@", 1)
    host = host.lower()
    kind = "blob" if scheme == "wasbs" else "dfs"
    m = re.match(rf"^([a-z0-9]+)\.{kind}\.(.+)$", host)
    if not m:
        raise _bad(uri, scheme, f"host {host!r} is not <account>.{kind}.<cloud suffix>")
    account, suffix = m.group(1), m.group(2)
    if not _AZ_ACCOUNT.match(account):
        raise _bad(uri, scheme, f"{account!r} is not a valid storage account name")
    if not _AZ_CONTAINER.match(container):
        raise _bad(uri, scheme, f"{container!r} is not a valid container name")
    prefix = _clean_prefix(uri, scheme, parsed.path)
    settings = _common(environ)
    settings.append(Setting("account", account, "uri"))
    endpoint = Setting("endpoint_url", f"https://{account}.blob.{suffix}", "uri")
    conn = _read(environ, AZURE_STORAGE_CONNECTION_STRING)
    if conn is not None:
        pairs = {k.lower(): v for k, v in parse_connection_string(conn).items()}
        conn_account = pairs.get("accountname")
        if conn_account is not None:
            settings.append(Setting("connection_string_account", conn_account,
                                    "env:AZURE_STORAGE_CONNECTION_STRING"))
        if "blobendpoint" in pairs:
            endpoint = _endpoint(uri, scheme, Setting(
                "endpoint_url", pairs["blobendpoint"].rstrip("/"),
                "env:AZURE_STORAGE_CONNECTION_STRING")) or endpoint
        elif pairs.get("usedevelopmentstorage", "").lower() == "true":
            endpoint = Setting("endpoint_url", "http://127.0.0.1:10000/devstoreaccount1",
                               "env:AZURE_STORAGE_CONNECTION_STRING")
        if "accountkey" in pairs:
            cred = "account-key"
        elif "sharedaccesssignature" in pairs:
            cred = "sas"
        else:
            cred = "credential-chain"
        settings.append(Setting("credential", cred, "env:AZURE_STORAGE_CONNECTION_STRING"))
    else:
        key = _first(environ, "credential", AZURE_STORAGE_ACCESS_KEY, AZURE_STORAGE_SAS_TOKEN)
        if key is None:
            settings.append(Setting("credential", "credential-chain", "sdk-default"))
        else:
            kind_name = "account-key" if key.source.endswith("ACCESS_KEY") else "sas"
            settings.append(Setting("credential", kind_name, key.source))
    settings.append(endpoint)
    return StoreConfig("azure", scheme, container, prefix, redact_uri(uri), tuple(settings), environ)


def _resolve_file(uri: str, environ: Mapping[str, str]) -> StoreConfig:
    root = local_path(uri)
    return StoreConfig("file", "file", root, "", redact_uri(uri) if uri.startswith("file:")
                       else uri, tuple(_common(environ)), environ)


def resolve(uri: str, environ: Mapping[str, str] | None = None) -> StoreConfig:
    """Resolve a store URI with ``environ`` (default: the process environment).

    Raises :class:`ConfigError` for a malformed URI (showing the expected form) or an unknown
    scheme (listing the known ones).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("empty store URI; expected one of: "
                          + "; ".join(form for _, form in SCHEMES.values()))
    uri = uri.strip()
    env: Mapping[str, str] = os.environ if environ is None else environ
    scheme = split_scheme(uri)
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unknown scheme {scheme!r} in {redact_uri(uri)!r}; cloudtrack stores take "
            + ", ".join(f"{s}://" if s != "file" else "file: or a plain path"
                        for s in known_schemes())
            + " (http(s):// is MLflow's own REST client)"
        )
    if scheme == "file":
        return _resolve_file(uri, env)
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError as e:
        raise _bad(uri, scheme, str(e)) from None
    if parsed.query or parsed.fragment:
        raise _bad(uri, scheme, "a query or fragment is not part of a store URI "
                   "(quote '?' and '#' in the prefix as %3F and %23)")
    if scheme == "s3":
        return _resolve_s3(uri, parsed, env)
    if scheme == "gs":
        return _resolve_gcs(uri, parsed, env)
    return _resolve_azure(uri, parsed, env)


def reference_markdown() -> str:
    """The configuration reference of the README, generated from this module."""
    lines = ["| URI | backend |", "|---|---|"]
    for _scheme, (backend, form) in SCHEMES.items():
        lines.append(f"| `{form}` | {backend} |")
    lines += ["", "| variable | backend | meaning | default |", "|---|---|---|---|"]
    for var in VARIABLES:
        lines.append(f"| `{var.name}` | {var.backend} | {var.meaning} | {var.default or '—'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
