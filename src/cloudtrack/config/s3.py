"""``s3://<bucket>[/<prefix>]``: endpoint, TLS, region, profile and access key, each with
where it came from.  The AWS credential chain itself is left to botocore."""

from __future__ import annotations

import json
from collections.abc import Mapping

from cloudtrack.config.common import (
    BUCKET,
    bool_env,
    clean_prefix,
    common_settings,
    endpoint,
    first,
    malformed,
    or_default,
    read,
    split_store_uri,
)
from cloudtrack.config.model import Setting, StoreConfig
from cloudtrack.config.redaction import redact_uri
from cloudtrack.config.variables import (
    AWS_ACCESS_KEY_ID,
    AWS_CA_BUNDLE,
    AWS_DEFAULT_REGION,
    AWS_ENDPOINT_URL,
    AWS_ENDPOINT_URL_S3,
    AWS_PROFILE,
    AWS_REGION,
    MLFLOW_S3_ENDPOINT_URL,
    MLFLOW_S3_IGNORE_TLS,
    MLFLOW_S3_UPLOAD_EXTRA_ARGS,
)
from cloudtrack.errors import ConfigError


def resolve_s3(uri: str, environ: Mapping[str, str]) -> StoreConfig:
    parsed = split_store_uri(uri, "s3")
    bucket = parsed.netloc
    if not bucket:
        raise malformed(uri, "s3", "no bucket")
    if "@" in bucket or ":" in bucket:
        raise malformed(uri, "s3", "credentials or a port do not belong in the bucket part")
    if not BUCKET.match(bucket):
        raise malformed(uri, "s3", f"{bucket!r} is not a valid bucket name")
    prefix = clean_prefix(uri, "s3", parsed.path)
    settings = common_settings(environ)
    settings.append(or_default(endpoint(uri, first(
        environ, "endpoint_url", MLFLOW_S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)),
        "endpoint_url"))
    ignore_tls = bool_env(environ, MLFLOW_S3_IGNORE_TLS)
    settings.append(Setting("verify_tls", not ignore_tls,
                            "env:MLFLOW_S3_IGNORE_TLS" if ignore_tls is not None else "default"))
    settings.append(or_default(first(environ, "ca_bundle", AWS_CA_BUNDLE), "ca_bundle"))
    settings.append(or_default(first(environ, "region", AWS_REGION, AWS_DEFAULT_REGION), "region"))
    settings.append(or_default(first(environ, "profile", AWS_PROFILE), "profile"))
    settings.append(or_default(first(environ, "access_key_id", AWS_ACCESS_KEY_ID), "access_key_id"))
    extra = read(environ, MLFLOW_S3_UPLOAD_EXTRA_ARGS)
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
