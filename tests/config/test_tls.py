"""TLS verification is worked out once, by resolve(), from each backend's variables in the
order its client reads them — and the blob clients and the doctor's probes use that value."""

from __future__ import annotations

import pytest

from cloudtrack.blobs.azure.client import transport
from cloudtrack.blobs.gcs.client import make_client as gcs_client
from cloudtrack.blobs.s3.client import sdk_verify
from cloudtrack.config import resolve, tls
from cloudtrack.credentials.gcs import GcsCredentials
from cloudtrack.doctor import azure, gcs, http, s3

S3 = "s3://bkt/p"
AZURE = "wasbs://box@acct01.blob.core.windows.net/p"
GCS = "gs://bkt/p"


@pytest.mark.parametrize(("uri", "environ", "expected"), [
    (S3, {}, True),
    (S3, {"AWS_CA_BUNDLE": "/aws.pem", "REQUESTS_CA_BUNDLE": "/req.pem"}, "/aws.pem"),
    (S3, {"REQUESTS_CA_BUNDLE": "/req.pem"}, "/req.pem"),
    (S3, {"MLFLOW_S3_IGNORE_TLS": "true", "AWS_CA_BUNDLE": "/aws.pem"}, False),
    (S3, {"MLFLOW_S3_IGNORE_TLS": "false", "AWS_CA_BUNDLE": "/aws.pem"}, "/aws.pem"),
    (S3, {"SSL_CERT_FILE": "/ssl.pem"}, True),
    (AZURE, {}, True),
    (AZURE, {"SSL_CERT_FILE": "/ssl.pem", "CURL_CA_BUNDLE": "/curl.pem"}, "/ssl.pem"),
    (AZURE, {"REQUESTS_CA_BUNDLE": "/req.pem", "SSL_CERT_FILE": "/ssl.pem"}, "/req.pem"),
    (AZURE, {"CURL_CA_BUNDLE": "/curl.pem"}, "/curl.pem"),
    (AZURE, {"AWS_CA_BUNDLE": "/aws.pem"}, True),
    (GCS, {"CURL_CA_BUNDLE": "/curl.pem"}, "/curl.pem"),
    (GCS, {"REQUESTS_CA_BUNDLE": "/req.pem", "CURL_CA_BUNDLE": "/curl.pem"}, "/req.pem"),
    (GCS, {"SSL_CERT_FILE": "/ssl.pem"}, True),
    ("/tmp/store", {"REQUESTS_CA_BUNDLE": "/req.pem"}, True),
])
def test_resolve_decides_once(uri: str, environ: dict[str, str], expected: bool | str) -> None:
    assert resolve(uri, environ).tls_verify == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, True),
    ({"MLFLOW_TRACKING_INSECURE_TLS": "true", "REQUESTS_CA_BUNDLE": "/req.pem"}, False),
    ({"MLFLOW_TRACKING_SERVER_CERT_PATH": "/server.pem",
      "MLFLOW_TRACKING_INSECURE_TLS": "true"}, "/server.pem"),
    ({"MLFLOW_TRACKING_INSECURE_TLS": "nonsense", "CURL_CA_BUNDLE": "/curl.pem"}, "/curl.pem"),
])
def test_an_mlflow_server_is_trusted_as_mlflows_client_trusts_it(
        environ: dict[str, str], expected: bool | str) -> None:
    assert tls.MLFLOW_SERVER.verify(environ) == expected
    assert http.server_credentials("http://h:5000", environ).verify == expected


def test_every_client_gets_the_resolved_value() -> None:
    s3_config = resolve(S3, {"AWS_CA_BUNDLE": "/aws.pem"})
    assert sdk_verify(s3_config) == "/aws.pem"
    # botocore keeps its own default — a profile's ca_bundle — when nothing was set.
    assert sdk_verify(resolve(S3, {})) is None
    assert sdk_verify(resolve(S3, {"MLFLOW_S3_IGNORE_TLS": "1"})) is False

    azure_config = resolve(AZURE, {"SSL_CERT_FILE": "/ssl.pem", "AZURE_STORAGE_SAS_TOKEN": "sig=x"})
    azure_transport = transport(azure_config)
    try:
        assert azure_transport.connection_config.verify == "/ssl.pem"
    finally:
        azure_transport.close()

    gcs_config = resolve(GCS, {"STORAGE_EMULATOR_HOST": "127.0.0.1:9",
                               "REQUESTS_CA_BUNDLE": "/req.pem"})
    client = gcs_client(gcs_config, GcsCredentials(gcs_config), (1.0, 1.0))
    try:
        assert client._http.verify == "/req.pem"
    finally:
        client.close()


def test_the_doctors_hints_name_the_same_variables() -> None:
    assert (s3.TLS.ca_variable, s3.TLS.insecure) == ("AWS_CA_BUNDLE", "MLFLOW_S3_IGNORE_TLS=true")
    assert (azure.TLS.ca_variable, azure.TLS.insecure) == ("REQUESTS_CA_BUNDLE", None)
    assert (gcs.TLS.ca_variable, gcs.TLS.insecure) == ("REQUESTS_CA_BUNDLE", None)
    assert (http.TLS.ca_variable, http.TLS.insecure) == (
        "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS=true")
