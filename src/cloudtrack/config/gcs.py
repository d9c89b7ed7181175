"""``gs://<bucket>[/<prefix>]``: emulator or API endpoint, key file and project, each with
where it came from.  Application Default Credentials are left to google-auth."""

from __future__ import annotations

from collections.abc import Mapping

from cloudtrack.config.common import (
    BUCKET,
    clean_prefix,
    common_settings,
    endpoint,
    first,
    malformed,
    or_default,
    split_store_uri,
)
from cloudtrack.config.model import Setting, StoreConfig
from cloudtrack.config.redaction import redact_uri
from cloudtrack.config.variables import (
    API_ENDPOINT_OVERRIDE,
    GOOGLE_APPLICATION_CREDENTIALS,
    GOOGLE_CLOUD_PROJECT,
    STORAGE_EMULATOR_HOST,
)


def resolve_gcs(uri: str, environ: Mapping[str, str]) -> StoreConfig:
    parsed = split_store_uri(uri, "gs")
    bucket = parsed.netloc
    if not bucket:
        raise malformed(uri, "gs", "no bucket")
    if not BUCKET.match(bucket):
        raise malformed(uri, "gs", f"{bucket!r} is not a valid bucket name")
    prefix = clean_prefix(uri, "gs", parsed.path)
    settings = common_settings(environ)
    emulator = first(environ, "emulator_host", STORAGE_EMULATOR_HOST)
    if emulator is not None and "://" not in str(emulator.value):
        emulator = Setting("emulator_host", f"http://{emulator.value}", emulator.source)
    settings.append(or_default(endpoint(uri, emulator), "emulator_host", "default"))
    settings.append(or_default(endpoint(uri, first(environ, "api_endpoint", API_ENDPOINT_OVERRIDE)),
                               "api_endpoint"))
    settings.append(or_default(first(environ, "credentials_file", GOOGLE_APPLICATION_CREDENTIALS),
                               "credentials_file"))
    settings.append(or_default(first(environ, "project", GOOGLE_CLOUD_PROJECT), "project"))
    return StoreConfig("gcs", "gs", bucket, prefix, redact_uri(uri), tuple(settings), environ)
