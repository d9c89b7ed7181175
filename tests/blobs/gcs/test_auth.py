"""The GCS emulator's auth layer rejects what real GCS rejects, and GcsBlobs reports each case
as the right cloudtrack error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import requests

from backends.gcs.service import GcsEmulator
from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.errors import PermissionDenied, Unauthenticated


@pytest.fixture(scope="module")
def uri(gcs: GcsEmulator) -> str:
    uri = gcs.new_store()
    open_blobs(resolve(uri, gcs.env)).put("seen", b"x")
    return uri


def _objects_url(gcs: GcsEmulator, uri: str) -> str:
    bucket = uri.removeprefix("gs://").split("/", 1)[0]
    return f"{gcs.url}/storage/v1/b/{bucket}/o"


def test_valid_key_works(gcs: GcsEmulator, uri: str) -> None:
    assert [i.key for i in open_blobs(resolve(uri, gcs.env)).list()] == ["seen"]


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic Zm9vOmJhcg=="])
def test_requests_without_a_valid_token_get_401(gcs: GcsEmulator, uri: str,
                                                authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    resp = requests.get(_objects_url(gcs, uri), headers=headers, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == 401


def test_expired_token_gets_401_and_fresh_one_200(gcs: GcsEmulator, uri: str) -> None:
    url = _objects_url(gcs, uri)
    expired = gcs.mint_access_token(expires_in=-1)
    assert requests.get(url, headers={"Authorization": f"Bearer {expired}"},
                        timeout=10).status_code == 401
    fresh = gcs.mint_access_token()
    assert requests.get(url, headers={"Authorization": f"Bearer {fresh}"},
                        timeout=10).status_code == 200


def test_anonymous_client_is_unauthenticated(gcs: GcsEmulator, uri: str) -> None:
    # STORAGE_EMULATOR_HOST without credentials: the SDK's anonymous mode, refused here.
    anonymous = open_blobs(resolve(uri, {"STORAGE_EMULATOR_HOST": gcs.url}))
    with pytest.raises(Unauthenticated) as e:
        anonymous.get("seen")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(e.value)


def test_key_whose_tokens_are_expired_is_unauthenticated(gcs: GcsEmulator, uri: str) -> None:
    stale = open_blobs(resolve(uri, gcs.credentials_env(token_ttl=-60)))
    with pytest.raises(Unauthenticated):
        stale.get("seen")


def test_bad_signature_is_unauthenticated_with_the_refresh_error_kept(
        gcs: GcsEmulator, uri: str) -> None:
    bad = open_blobs(resolve(uri, gcs.bad_credentials_env()))
    with pytest.raises(Unauthenticated) as e:
        bad.get("seen")
    assert "Invalid JWT Signature" in str(e.value)
    assert type(e.value.__cause__).__name__ == "RefreshError"


def test_other_project_is_denied_naming_the_permission(gcs: GcsEmulator, uri: str) -> None:
    outsider = open_blobs(resolve(uri, gcs.credentials_env(project="someone-else")))
    with pytest.raises(PermissionDenied) as e:
        outsider.put("x", b"y")
    assert "storage.objects.create" in str(e.value)
    with pytest.raises(PermissionDenied) as e:
        list(outsider.list())
    assert "storage.objects.list" in str(e.value)


def _sdk_defaults(env: dict[str, str], uri: str) -> subprocess.CompletedProcess[str]:
    """Plain ``storage.Client()`` as MLflow's or a user's own code builds it."""
    bucket = uri.removeprefix("gs://").split("/", 1)[0]
    script = textwrap.dedent(f"""
        from google.cloud import storage
        print([b.name for b in storage.Client().list_blobs({bucket!r})])
    """)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE",
                          "GOOGLE_APPLICATION_CREDENTIALS")}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**clean, **env})


def test_sdk_defaults_authenticate_with_the_service_env(gcs: GcsEmulator, uri: str) -> None:
    """Why ``env`` uses API_ENDPOINT_OVERRIDE: the SDK then builds credentials from
    GOOGLE_APPLICATION_CREDENTIALS; with STORAGE_EMULATOR_HOST it goes anonymous."""
    out = _sdk_defaults(gcs.env, uri)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "seen" in out.stdout
    env = dict(gcs.env)
    env["STORAGE_EMULATOR_HOST"] = env.pop("API_ENDPOINT_OVERRIDE")
    out = _sdk_defaults(env, uri)
    assert out.returncode != 0
    # The front answers 401; the SDK then tries to refresh its anonymous credentials.
    assert "Anonymous credentials cannot be refreshed" in out.stderr
