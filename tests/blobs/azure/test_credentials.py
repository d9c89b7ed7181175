"""AzureBlobs' credential paths and error table against Azurite over HTTP: SAS tokens with too
few permissions or expired, a malformed key, ADLS Gen2 URIs, versions that agree everywhere."""

from __future__ import annotations

import datetime as dt
import urllib.parse

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from backends.azure.service import ACCOUNT, ACCOUNT_KEY, Azurite
from cloudtrack.blobs import open_blobs
from cloudtrack.blobs.azure import DATA_ROLE, AzureBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import ConfigError, PermissionDenied, Unauthenticated
from cloudtrack.retry import RetryPolicy

pytestmark = pytest.mark.parametrize("store", ["azure"], indirect=True)

ONE_ATTEMPT = RetryPolicy(attempts=1)


def _container(uri: str) -> str:
    return urllib.parse.urlsplit(uri).netloc.split("@")[0]


def _sas_env(store, permission: ContainerSasPermissions, expiry: dt.datetime) -> dict[str, str]:  # type: ignore[no-untyped-def]
    service = store.service
    assert isinstance(service, Azurite)
    sas = generate_container_sas(ACCOUNT, _container(store.uri), account_key=ACCOUNT_KEY,
                                 permission=permission, expiry=expiry)
    conn = f"BlobEndpoint={service.blob_endpoint};SharedAccessSignature={sas}"
    return {"AZURE_STORAGE_CONNECTION_STRING": conn}


def _signature(env: dict[str, str]) -> str:
    sas = env["AZURE_STORAGE_CONNECTION_STRING"].split("SharedAccessSignature=", 1)[1]
    return dict(urllib.parse.parse_qsl(sas))["sig"]


def _later(hours: int = 1) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)


def test_sas_signs_requests(store) -> None:  # type: ignore[no-untyped-def]
    env = _sas_env(store, ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                  delete=True, list=True), _later())
    config = resolve(store.uri, env)
    assert config.get("credential") == "sas"
    with open_blobs(config) as blobs:
        version = blobs.put("k", b"v")
        assert [(i.key, i.version) for i in blobs.list()] == [("k", version)]
        blobs.delete("k")


def test_sas_without_write_permission_is_permission_denied(store) -> None:  # type: ignore[no-untyped-def]
    store.open().put("existing", b"v")
    env = _sas_env(store, ContainerSasPermissions(read=True, list=True), _later())
    with AzureBlobs(resolve(store.uri, env), retry=ONE_ATTEMPT) as blobs:
        assert blobs.get("existing") == b"v"
        with pytest.raises(PermissionDenied) as e:
            blobs.put("new", b"x")
    assert isinstance(e.value.__cause__, HttpResponseError)
    message = str(e.value)
    assert "AuthorizationPermissionMismatch" in message
    assert DATA_ROLE in message and "sp=racwdl" in message
    assert _signature(env) not in message
    assert "/mlruns/new" in message


def test_expired_sas_is_unauthenticated(store) -> None:  # type: ignore[no-untyped-def]
    env = _sas_env(store, ContainerSasPermissions(read=True, list=True), _later(-1))
    with AzureBlobs(resolve(store.uri, env), retry=ONE_ATTEMPT) as blobs:
        with pytest.raises(Unauthenticated) as e:
            blobs.get("anything")
    assert "SharedAccessSignature in AZURE_STORAGE_CONNECTION_STRING" in str(e.value)
    assert _signature(env) not in str(e.value)


def test_key_that_is_not_base64_is_unauthenticated(store) -> None:  # type: ignore[no-untyped-def]
    service = store.service
    env = {"AZURE_STORAGE_CONNECTION_STRING": service.key_connection_string("not base64!")}
    with AzureBlobs(resolve(store.uri, env), retry=ONE_ATTEMPT) as blobs:
        with pytest.raises(Unauthenticated, match="base64") as e:
            blobs.put("x", b"y")
    assert "not base64!" not in str(e.value)


def test_wrong_key_message_names_the_source_and_hides_the_key(store) -> None:  # type: ignore[no-untyped-def]
    env = store.service.bad_credentials_env()
    with AzureBlobs(resolve(store.uri, env), retry=ONE_ATTEMPT) as blobs:
        with pytest.raises(Unauthenticated) as e:
            blobs.get("x")
    message = str(e.value)
    assert "AccountKey in AZURE_STORAGE_CONNECTION_STRING" in message
    key = env["AZURE_STORAGE_CONNECTION_STRING"].split("AccountKey=")[1].split(";")[0]
    assert key not in message


def test_endpoint_only_connection_string_over_http_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    # Without a key or SAS the credential chain signs, and tokens need https.
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={store.service.blob_endpoint}"}
    with pytest.raises(ConfigError, match="https"):
        open_blobs(resolve(store.uri, env))


def test_abfss_uri_uses_the_blob_endpoint(store) -> None:  # type: ignore[no-untyped-def]
    container = _container(store.uri)
    abfss = f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/mlruns"
    with open_blobs(resolve(abfss, store.env)) as adls:
        adls.put("from/abfss", b"1")
    with store.open() as blobs:
        assert blobs.get("from/abfss") == b"1"


def test_versions_agree_across_put_get_stat_and_list(store) -> None:  # type: ignore[no-untyped-def]
    with store.open() as blobs:
        version = blobs.put("v/a", b"1")
        assert not version.startswith('"'), "ETags are kept without quotes"
        assert blobs.get_versioned("v/a")[1] == version
        assert blobs.stat("v/a").version == version
        assert [i.version for i in blobs.list("v/")] == [version]
        assert [f.version for f in blobs.list_dir("v/")[0]] == [version]
        newer = blobs.put_if_version("v/a", b"2", version)
        assert newer != version and blobs.stat("v/a").version == newer


def test_create_container_is_idempotent(store) -> None:  # type: ignore[no-untyped-def]
    uri = store.service.missing_store_uri()
    with open_blobs(resolve(uri, store.env)) as blobs:
        blobs.create_container()
        blobs.create_container()
        blobs.put("k", b"v")
        assert blobs.get("k") == b"v"


def test_account_mismatch_is_logged(store, caplog) -> None:  # type: ignore[no-untyped-def]
    other = store.uri.replace(f"@{ACCOUNT}.", "@otheraccount.")
    with caplog.at_level("WARNING", logger="cloudtrack.blobs.azure"):
        open_blobs(resolve(other, store.env)).close()
    assert "otheraccount" in caplog.text and ACCOUNT in caplog.text
