"""URI parsing and configuration resolution: forms, errors, sources, redaction."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cloudtrack import config as cfg
from cloudtrack.config import redact, redact_uri, resolve
from cloudtrack.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(("uri", "backend", "container", "prefix"), [
    ("s3://bucket", "s3", "bucket", ""),
    ("s3://my-bucket/team/exp/", "s3", "my-bucket", "team/exp"),
    ("gs://b.with.dots/p", "gcs", "b.with.dots", "p"),
    ("wasbs://runs@acct01.blob.core.windows.net/ml", "azure", "runs", "ml"),
    ("abfss://runs@acct01.dfs.core.windows.net/ml/x", "azure", "runs", "ml/x"),
    ("wasbs://runs@acct01.blob.core.chinacloudapi.cn", "azure", "runs", ""),
])
def test_cloud_forms(uri: str, backend: str, container: str, prefix: str) -> None:
    c = resolve(uri, {})
    assert (c.backend, c.container, c.prefix) == (backend, container, prefix)


def test_abfss_uses_the_blob_endpoint() -> None:
    c = resolve("abfss://runs@acct01.dfs.core.windows.net/ml", {})
    assert c.get("endpoint_url") == "https://acct01.blob.core.windows.net"
    assert c.get("account") == "acct01"


@pytest.mark.parametrize("uri", ["file:///tmp/store", "file:/tmp/store", "/tmp/store"])
def test_absolute_local_forms(uri: str) -> None:
    assert resolve(uri, {}).container == "/tmp/store"


def test_relative_local_forms() -> None:
    here = os.getcwd()
    assert resolve("file:./mlruns", {}).container == os.path.join(here, "mlruns")
    assert resolve("mlruns", {}).container == os.path.join(here, "mlruns")
    assert resolve("~/x", {}).container == os.path.expanduser("~/x")


@pytest.mark.parametrize(("uri", "fragment"), [
    ("s3://", "s3://<bucket>"),
    ("s3://Bad_Bucket/x", "s3://<bucket>"),
    ("s3://key:secret@bucket/x", "s3://<bucket>"),
    ("gs://", "gs://<bucket>"),
    ("wasbs://acct.blob.core.windows.net/x", "wasbs://<container>@<account>"),
    ("wasbs://c@acct.dfs.core.windows.net/x", "wasbs://<container>@<account>"),
    ("abfss://c@acct.blob.core.windows.net/x", "abfss://<container>@<account>"),
    ("s3://bucket/a/../b", "s3://<bucket>"),
    ("s3://bucket/a/%2e%2e/b", "s3://<bucket>"),
    ("s3://bucket/p?x=1", "s3://<bucket>"),
])
def test_malformed_uris_show_the_expected_form(uri: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve(uri, {})
    assert fragment in str(e.value)
    assert "secret" not in str(e.value)


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as e:
        resolve("ftp://host/x", {})
    for scheme in ("s3://", "gs://", "wasbs://", "abfss://", "file:"):
        assert scheme in str(e.value)


def test_empty_uri() -> None:
    with pytest.raises(ConfigError):
        resolve("  ", {})


def test_s3_endpoint_precedence_and_sources() -> None:
    env = {"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3only:2"}
    assert resolve("s3://bkt", env).setting("endpoint_url").source == "env:AWS_ENDPOINT_URL_S3"  # type: ignore[union-attr]
    env["MLFLOW_S3_ENDPOINT_URL"] = "http://mlflow:3"
    s = resolve("s3://bkt", env).setting("endpoint_url")
    assert s is not None and (s.value, s.source) == ("http://mlflow:3", "env:MLFLOW_S3_ENDPOINT_URL")
    assert resolve("s3://bkt", {}).setting("endpoint_url").source == "sdk-default"  # type: ignore[union-attr]


def test_endpoint_without_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        resolve("s3://bkt", {"MLFLOW_S3_ENDPOINT_URL": "minio:9000"})
    assert "MLFLOW_S3_ENDPOINT_URL" in str(e.value) and "http://" in str(e.value)


def test_ignore_tls_and_extra_args() -> None:
    c = resolve("s3://bkt", {"MLFLOW_S3_IGNORE_TLS": "true",
                           "MLFLOW_S3_UPLOAD_EXTRA_ARGS": '{"ServerSideEncryption": "AES256"}'})
    assert c.get("verify_tls") is False
    assert "AES256" in str(c.get("upload_extra_args"))
    with pytest.raises(ConfigError):
        resolve("s3://bkt", {"MLFLOW_S3_IGNORE_TLS": "maybe"})
    with pytest.raises(ConfigError):
        resolve("s3://bkt", {"MLFLOW_S3_UPLOAD_EXTRA_ARGS": "{not json"})


def test_gcs_emulator_host_gets_a_scheme() -> None:
    c = resolve("gs://bucket", {"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"})
    assert c.get("emulator_host") == "http://127.0.0.1:4443"


def test_azure_credential_sources() -> None:
    key = "c2VjcmV0LWtleS12YWx1ZQ=="
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
    c = resolve("wasbs://runs@devstoreaccount1.blob.core.windows.net/p",
                {"AZURE_STORAGE_CONNECTION_STRING": conn})
    assert c.get("endpoint_url") == "http://127.0.0.1:10000/devstoreaccount1"
    assert c.get("credential") == "account-key"
    assert c.get("connection_string_account") == "devstoreaccount1"
    assert key not in repr(c) and key not in str(c)
    c = resolve("wasbs://runs@acct01.blob.core.windows.net", {"AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=abc"})
    assert (c.get("credential"), c.setting("credential").source) == ("sas", "env:AZURE_STORAGE_SAS_TOKEN")  # type: ignore[union-attr]
    c = resolve("wasbs://runs@acct01.blob.core.windows.net", {})
    assert c.get("credential") == "credential-chain"


def test_timeouts_and_attempts() -> None:
    c = resolve("s3://bkt", {"CLOUDTRACK_READ_TIMEOUT": "5", "CLOUDTRACK_MAX_ATTEMPTS": "2"})
    assert c.get("read_timeout") == 5.0 and c.get("max_attempts") == 2
    assert c.setting("connect_timeout").source == "default"  # type: ignore[union-attr]
    with pytest.raises(ConfigError):
        resolve("s3://bkt", {"CLOUDTRACK_READ_TIMEOUT": "-1"})


def test_retry_deadline_bounds_the_retries_of_one_operation() -> None:
    from cloudtrack.blobs.base import retry_policy

    c = resolve("s3://bkt", {})
    assert (c.get("connect_timeout"), c.get("read_timeout"), c.get("retry_deadline")) == \
        (5.0, 10.0, 30.0)
    assert c.setting("retry_deadline").source == "default"  # type: ignore[union-attr]
    policy = retry_policy(c)
    assert (policy.attempts, policy.deadline, policy.attempt_timeout) == (5, 30.0, 15.0)
    # The defaults let a hung attempt be retried once, and never a third time: an endpoint
    # that never answers costs two read timeouts, not attempts x read timeout.
    assert policy.stop(1, 10.0, 0.1) is None and policy.stop(2, 20.1, 0.1)
    c = resolve("gs://bkt", {"CLOUDTRACK_RETRY_DEADLINE": "2.5"})
    assert (c.get("retry_deadline"), c.setting("retry_deadline").source) == (  # type: ignore[union-attr]
        2.5, "env:CLOUDTRACK_RETRY_DEADLINE")
    with pytest.raises(ConfigError, match="CLOUDTRACK_RETRY_DEADLINE"):
        resolve("s3://bkt", {"CLOUDTRACK_RETRY_DEADLINE": "0"})


def test_config_is_frozen_and_secret_free() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    c = resolve("s3://bkt/p", {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret})
    assert secret not in repr(c) and secret not in str(c)
    with pytest.raises(AttributeError):
        c.prefix = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "secret"), [
    ("https://user:hunter2@host/x", "hunter2"),
    ("https://acct.blob.core.windows.net/c/b?sv=2020&sig=abcDEF%2B123&se=x", "abcDEF%2B123"),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy==;", "Zm9vYmFy=="),
    ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig-part", "eyJhbGciOi"),
])
def test_redact(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert secret not in redact_uri(text) or "://" not in text


def test_every_variable_read_is_declared() -> None:
    """Config reads variables only through EnvVar objects listed in VARIABLES."""
    sources = {p.name: p.read_text() for p in Path(cfg.__file__).parent.glob("*.py")}
    assert "variables.py" in sources and "s3.py" in sources
    used = {name for source in sources.values()
            for name in re.findall(r'_v\("([A-Z0-9_]+)"', source)}
    assert used == {v.name for v in cfg.VARIABLES}
    for name, source in sources.items():
        assert "os.environ.get" not in source and "os.getenv" not in source, name


def test_readme_reference_is_generated_from_the_config_module() -> None:
    text = README.read_text()
    start = text.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end].strip() == cfg.reference_markdown().strip(), (
        "README's configuration reference is stale: regenerate it with "
        "`python -m cloudtrack.config` and paste between the markers"
    )


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x.db", "file:///tmp/a", "s3://bkt/p",
                                 "wasbs://c@a.blob.core.windows.net/p"])
def test_redact_uri_keeps_uris_without_secrets_intact(uri: str) -> None:
    assert redact_uri(uri) == uri


def test_one_backend_table_names_every_layers_part() -> None:
    """Each row's parts exist and agree with it: the blob class and the credential provider
    say they serve that backend, its doctor module diagnoses, its URIs resolve to it."""
    import importlib

    from cloudtrack.config.backends import BACKENDS

    examples = {"s3": "s3://bkt/p", "gs": "gs://bkt/p",
                "wasbs": "wasbs://box@acct01.blob.core.windows.net/p",
                "abfss": "abfss://box@acct01.dfs.core.windows.net/p", "file": "file:///tmp/x"}
    assert set(examples) == set(cfg.SCHEMES)
    for spec in BACKENDS:
        assert spec.load("blobs").backend == spec.name
        assert spec.load("credentials").backend == spec.name
        assert callable(importlib.import_module(spec.doctor).diagnose)
        assert spec.install_hint() == (f"pip install 'cloudtrack[{spec.extra}]'" if spec.extra
                                       else "pip install cloudtrack")
        for scheme in spec.schemes:
            assert resolve(examples[scheme], {}).backend == spec.name
