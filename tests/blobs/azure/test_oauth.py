"""AzureBlobs over HTTPS with OAuth bearer tokens, against Azurite ``--oauth basic``.

Azurite checks a token's lifetime, audience and issuer (not its signature), so the tokens
minted by ``backends.azure.service`` are accepted or refused for the same reasons Azure would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from azure.core.exceptions import HttpResponseError

from backends.azure.service import AzuriteOAuth, MintedTokenCredential
from cloudtrack.blobs.azure import AzureBlobs
from cloudtrack.config import resolve
from cloudtrack.errors import AlreadyExists, BlobError, ConfigError, TransientError, Unauthenticated
from cloudtrack.retry import RetryPolicy

pytestmark = pytest.mark.parametrize("store", ["azure-oauth"], indirect=True)

ONE_ATTEMPT = RetryPolicy(attempts=1)


def _oauth(store) -> AzuriteOAuth:  # type: ignore[no-untyped-def]
    assert isinstance(store.service, AzuriteOAuth)
    return store.service


def test_token_credential_over_https(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = resolve(store.uri, store.env)
    assert str(config.get("endpoint_url")).startswith("https://127.0.0.1:")
    assert config.get("credential") == "credential-chain"
    credential = MintedTokenCredential()
    with AzureBlobs(config, credential=credential) as blobs:
        version = blobs.put_if_absent("runs/1/meta.json", b"{}")
        with pytest.raises(AlreadyExists):
            blobs.put_if_absent("runs/1/meta.json", b"{...}")
        assert blobs.get_versioned("runs/1/meta.json") == (b"{}", version)
        assert [(i.key, i.version) for i in blobs.list("runs/")] == [("runs/1/meta.json",
                                                                      version)]
        src = tmp_path / "artifact.txt"
        src.write_bytes(b"artifact")
        blobs.upload_file("runs/1/artifacts/artifact.txt", src)
        blobs.download_file("runs/1/artifacts/artifact.txt", tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_bytes() == b"artifact"
        blobs.delete("runs/1/meta.json")
        assert not blobs.exists("runs/1/meta.json")
    assert credential.calls > 0, "the requests were signed with the given credential"


@pytest.mark.parametrize(("kind", "why"), [("expired", "expired"),
                                           ("wrong-audience", "audience"),
                                           ("wrong-issuer", "issuer")])
def test_refused_token_is_unauthenticated(store, kind: str, why: str) -> None:  # type: ignore[no-untyped-def]
    config = resolve(store.uri, store.env)
    with AzureBlobs(config, credential=MintedTokenCredential(kind), retry=ONE_ATTEMPT) as blobs:
        with pytest.raises(Unauthenticated) as e:
            blobs.put("x", b"y")
        with pytest.raises(Unauthenticated):
            list(blobs.list())
    assert isinstance(e.value.__cause__, HttpResponseError)
    message = str(e.value)
    assert why in message.lower()
    assert "wasbs://" in message and "/x" in message
    assert "credential given to AzureBlobs" in message


def test_bearer_tokens_are_never_sent_over_http(store) -> None:  # type: ignore[no-untyped-def]
    env = {"AZURE_STORAGE_CONNECTION_STRING":
           "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"}
    with pytest.raises(ConfigError, match="https"):
        AzureBlobs(resolve(store.uri, env), credential=MintedTokenCredential())


def test_untrusted_certificate_is_not_retried(store) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in store.env.items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    with AzureBlobs(resolve(store.uri, env), credential=MintedTokenCredential()) as blobs:
        with pytest.raises(BlobError) as e:
            blobs.get("x")
    assert not isinstance(e.value, TransientError)
    assert "REQUESTS_CA_BUNDLE" in str(e.value)


_CHILD = textwrap.dedent("""
    import sys
    from cloudtrack.blobs import open_blobs
    from cloudtrack.errors import Unauthenticated
    blobs = open_blobs(sys.argv[1])
    try:
        blobs.put("child/x", b"from the chain")
        print("ok", blobs.get("child/x").decode())
    except Unauthenticated as e:
        print("unauthenticated", e)
""")


@pytest.mark.parametrize(("kind", "expected"), [("valid", "ok from the chain"),
                                                ("expired", "unauthenticated")])
def test_default_credential_chain_reads_only_standard_variables(store, kind: str,  # type: ignore[no-untyped-def]
                                                                expected: str) -> None:
    """No token in cloudtrack's hands: DefaultAzureCredential (which reads os.environ, hence
    the child process) finds App Service's managed-identity variables and asks the service's
    stand-in endpoint for a token."""
    service = _oauth(store)
    before = service.tokens_issued
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_"))}
    env.update(service.token_env(kind))
    out = subprocess.run([sys.executable, "-c", _CHILD, store.uri], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith(expected), out.stdout
    assert service.tokens_issued > before
    if kind == "expired":
        assert "expired" in out.stdout
