"""Azurite's blob service on a free loopback port: :class:`Azurite` over plain HTTP with the
emulator's published account key, :class:`AzuriteOAuth` over HTTPS with OAuth bearer tokens.

Azurite ``--oauth basic`` checks a token's ``exp``/``nbf``, audience and issuer but not its
signature, so tokens minted here (:func:`mint_token`) are accepted — and expired, wrong-audience
or wrong-issuer ones are refused the way Azure refuses them.  Clients obtain tokens two ways:

* in-process, through the documented ``AzureBlobs(config, credential=...)`` keyword, with
  :class:`MintedTokenCredential`;
* in a child process, through ``DefaultAzureCredential``'s own unmodified chain: the service
  runs a small stand-in for Azure App Service's managed-identity endpoint, announced with the
  variables App Service itself sets (``IDENTITY_ENDPOINT``, ``IDENTITY_HEADER``).  No variable
  is invented; ``DefaultAzureCredential`` reads ``os.environ`` itself, hence the child process.

The HTTPS certificate is generated at start, signed by a throw-away CA whose certificate
clients trust through ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` (see :attr:`AzuriteOAuth.env`).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from backends._common import (
    LOOPBACK,
    ManagedProcess,
    StorageService,
    free_port,
    jwt,
    jwt_claims,
    unique,
    wait_for_port,
)

HERE = Path(__file__).resolve().parent
log = logging.getLogger("backends.azure")
AZURITE_BLOB = HERE / "node_modules" / ".bin" / "azurite-blob"
#: Starts Azurite's blob service with its periodic extent garbage collection off.  That
#: collection runs 10 minutes after the start and then every 10 minutes after it ends; its
#: mark phase lists every blob of the emulator in pages of 5,000, each page a scan and a sort
#: of the whole in-memory blob table, and the emulator answers nothing meanwhile.  Late in a
#: test session (a few hundred MB of blobs) Azurite then answered no request for 75 s and
#: for 160 s at 90 % CPU, measured twice about 10 minutes into a session with a probe every
#: 2 s: the cause of the doctor test timing out after 5 s and of the SIGKILL test's buffered
#: writer finding no store (CI, 2026-11-30).  Off, the extents of deleted blobs stay in memory
#: for the session (Azurite caps in-memory extents at half the machine's memory).
LAUNCHER = HERE / "azurite-blob.js"
INSTALL_HINT = "npm ci --prefix backends/azure  (needs node >= 20)"

#: Azurite's built-in development account and its published key (documented by Microsoft for
#: the emulator; it opens nothing but a local emulator).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
#: A well-formed key that is not the account's: Azurite verifies SharedKey signatures.
WRONG_KEY = base64.b64encode(b"cloudtrack-wrong-key".ljust(64, b"!")).decode()

#: The audience Azure Storage tokens carry, and an issuer prefix Azurite accepts.
STORAGE_AUDIENCE = "https://storage.azure.com"
TENANT_ID = "c10d7ac4-0000-4000-8000-000000000001"
ISSUER = f"https://sts.windows.net/{TENANT_ID}/"

#: What the token endpoint and :class:`MintedTokenCredential` can hand out.
TOKEN_KINDS = ("valid", "expired", "wrong-audience", "wrong-issuer")


def mint_token(kind: str = "valid", *, lifetime: int = 3600, now: float | None = None) -> str:
    """An unsigned-in-spirit JWT shaped like an Entra ID access token for Azure Storage.

    ``kind`` is one of :data:`TOKEN_KINDS`.  The signature is random bytes: Azurite does not
    verify it, and a real Azure would reject every token minted here.
    """
    if kind not in TOKEN_KINDS:
        raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}")
    t = int(now if now is not None else time.time())
    iat = t - 2 * lifetime if kind == "expired" else t - 60
    claims: dict[str, Any] = {
        "aud": "https://management.azure.com" if kind == "wrong-audience" else STORAGE_AUDIENCE,
        "iss": "https://login.example.com/not-entra/" if kind == "wrong-issuer" else ISSUER,
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime,
        "oid": "c10d7ac4-0000-4000-8000-0000000000aa",
        "sub": "cloudtrack-test-identity",
        "tid": TENANT_ID,
        "appid": "c10d7ac4-0000-4000-8000-0000000000bb",
        "ver": "1.0",
    }
    return jwt({"alg": "RS256", "typ": "JWT", "kid": "cloudtrack-test"}, claims)


def token_expiry(token: str) -> int:
    """The ``exp`` claim of a JWT (no verification)."""
    return int(jwt_claims(token)["exp"])


class MintedTokenCredential:
    """An azure-core ``TokenCredential`` that mints a fresh token of one kind per request.

    Pass it as ``AzureBlobs(config, credential=MintedTokenCredential())``.
    """

    def __init__(self, kind: str = "valid") -> None:
        if kind not in TOKEN_KINDS:
            raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}")
        self.kind = kind
        self.calls = 0

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        token = mint_token(self.kind)
        return AccessToken(token, token_expiry(token))

    def close(self) -> None:
        pass


# -- TLS -----------------------------------------------------------------------------------


class TlsFiles(NamedTuple):
    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path, names: tuple[str, ...] = ("localhost",),
                   common_name: str = "127.0.0.1") -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 and the DNS ``names`` signed by
    it (``common_name`` its subject).

    A separate CA (rather than one self-signed leaf) keeps strict verifiers happy: the trust
    anchor is a proper CA, the leaf a proper server certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudtrack test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address(LOOPBACK)), *(x509.DNSName(n) for n in names)]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


# -- a stand-in for App Service's managed-identity endpoint ---------------------------------


class _TokenHandler(BaseHTTPRequestHandler):
    server: _TokenServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = dict(urllib.parse.parse_qsl(url.query))
        if self.headers.get("X-IDENTITY-HEADER") != self.server.secret:
            # App Service answers a request without the right header with 401.
            return self._reply(401, {"error": "unauthorized", "error_description":
                                     "X-IDENTITY-HEADER missing or wrong"})
        if len(parts) != 3 or parts[1:] != ["msi", "token"] or parts[0] not in TOKEN_KINDS:
            return self._reply(404, {"error": "not_found"})
        if "resource" not in query:
            return self._reply(400, {"error": "invalid_request",
                                     "error_description": "resource is required"})
        token = mint_token(parts[0])
        self.server.issued += 1
        self._reply(200, {"access_token": token, "expires_on": str(token_expiry(token)),
                          "resource": query["resource"], "token_type": "Bearer",
                          "client_id": "c10d7ac4-0000-4000-8000-0000000000bb"})

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are counted, not logged: the test output stays readable


class _TokenServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _TokenHandler)
        self.secret = secrets.token_hex(16)
        self.issued = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])


# -- the services --------------------------------------------------------------------------


class Azurite(StorageService):
    """Azurite's blob service over HTTP, signed with the development account's key."""

    name = "azure"
    protocol = "http"

    def __init__(self) -> None:
        self.port = 0
        self._proc: ManagedProcess | None = None
        self._tmp: Path | None = None

    def _extra_args(self) -> list[str]:
        return []

    def start(self) -> None:
        if not AZURITE_BLOB.exists():
            raise RuntimeError(f"Azurite is not installed in {HERE}; run: {INSTALL_HINT}")
        self._tmp = Path(tempfile.mkdtemp(prefix=f"cloudtrack-{self.name}-"))
        self.port = free_port()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError(f"node is not on PATH; Azurite needs it: {INSTALL_HINT}")
        argv = [node, str(LAUNCHER), "--blobHost", LOOPBACK, "--blobPort", str(self.port),
                "--inMemoryPersistence", "--disableTelemetry", "--silent",
                # The SDK may speak a newer REST version than this Azurite knows.
                "--skipApiVersionCheck",
                *self._extra_args()]
        # cwd is a scratch folder so nothing Azurite writes lands in the repository.
        self._proc = ManagedProcess(argv, cwd=self._tmp, name=self.name)
        try:
            wait_for_port(self.port, timeout=60, proc=self._proc.proc, log=self._proc.log)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def blob_endpoint(self) -> str:
        return f"{self.protocol}://{LOOPBACK}:{self.port}/{ACCOUNT}"

    def key_connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (f"DefaultEndpointsProtocol={self.protocol};AccountName={ACCOUNT};"
                f"AccountKey={key};BlobEndpoint={self.blob_endpoint};")

    def _tls_env(self) -> dict[str, str]:
        return {}

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.key_connection_string()}

    def key_env(self) -> dict[str, str]:
        """Environment signing with the account key (works on both services)."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.key_connection_string(),
                **self._tls_env()}

    def _admin_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        verify: str | bool = self._tls_env().get("REQUESTS_CA_BUNDLE", True)
        return BlobServiceClient.from_connection_string(
            self.key_connection_string(), connection_verify=verify)

    def create_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._admin_client() as client:
            try:
                client.create_container(container)
            except ResourceExistsError:
                # The SDK retried a create whose first answer was lost (a loaded Azurite):
                # names are unique, so the container is the one this call made.
                pass

    def store_uri(self, container: str, prefix: str = "") -> str:
        uri = f"wasbs://{container}@{ACCOUNT}.blob.core.windows.net"
        return f"{uri}/{prefix}" if prefix else uri

    def new_store(self, name: str = "store") -> str:
        container = unique(name.lower().replace("_", "-"))
        self.create_container(container)
        return self.store_uri(container, "mlruns")

    def drop_store(self, uri: str) -> None:
        """Delete the store's container. Azurite keeps every blob of every container in one
        in-memory table and its writes slow down as that table grows (3,000 PUTs from 32
        threads: 325/s on an empty Azurite, 85/s once it held 12,000 blobs, 300-390/s when
        each container was deleted after use): a session that kept every test's blobs ended
        with requests queued past the client's 10 s read timeout."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        container = uri.split("://", 1)[1].split("@", 1)[0]
        with self._admin_client() as client:
            try:
                client.delete_container(container)
            except ResourceNotFoundError:
                pass
            except AzureError as e:  # only a cleanup: the test itself has passed or failed
                log.warning("could not delete the container %s: %r", container, e)

    def missing_store_uri(self) -> str:
        return self.store_uri(unique("missing"), "mlruns")

    def bad_credentials_env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.key_connection_string(WRONG_KEY),
                **self._tls_env()}


class AzuriteOAuth(Azurite):
    """Azurite over HTTPS with ``--oauth basic``; :attr:`env` signs with bearer tokens that
    ``DefaultAzureCredential`` fetches from a stand-in managed-identity endpoint."""

    name = "azure-oauth"
    protocol = "https"

    def __init__(self) -> None:
        super().__init__()
        self.tls: TlsFiles | None = None
        self._tokens: _TokenServer | None = None
        self._token_thread: threading.Thread | None = None

    def _extra_args(self) -> list[str]:
        assert self._tmp is not None
        self.tls = make_tls_files(self._tmp)
        return ["--cert", str(self.tls.cert), "--key", str(self.tls.key), "--oauth", "basic"]

    def start(self) -> None:
        super().start()
        self._tokens = _TokenServer()
        self._token_thread = threading.Thread(target=self._tokens.serve_forever, args=(0.1,),
                                              name="azurite-token-endpoint", daemon=True)
        self._token_thread.start()

    def stop(self) -> None:
        if self._tokens is not None:
            self._tokens.shutdown()
            self._tokens.server_close()
            self._tokens = None
        super().stop()

    @property
    def ca_file(self) -> str:
        assert self.tls is not None, "the service is not started"
        return str(self.tls.ca)

    def _tls_env(self) -> dict[str, str]:
        # requests reads REQUESTS_CA_BUNDLE; OpenSSL-based clients read SSL_CERT_FILE.
        return {"REQUESTS_CA_BUNDLE": self.ca_file, "SSL_CERT_FILE": self.ca_file}

    @property
    def tokens_issued(self) -> int:
        """How many tokens the managed-identity stand-in has handed out."""
        return self._tokens.issued if self._tokens is not None else 0

    def token_env(self, kind: str = "valid") -> dict[str, str]:
        """Environment for a client whose ``DefaultAzureCredential`` obtains ``kind`` tokens.

        The connection string names only the endpoint, so cloudtrack signs with the credential
        chain; the chain finds App Service's managed-identity variables and asks our endpoint.
        """
        if kind not in TOKEN_KINDS:
            raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}")
        assert self._tokens is not None, "the service is not started"
        return {
            "AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={self.blob_endpoint};",
            "IDENTITY_ENDPOINT": f"http://{LOOPBACK}:{self._tokens.port}/{kind}/msi/token",
            "IDENTITY_HEADER": self._tokens.secret,
            **self._tls_env(),
        }

    @property
    def env(self) -> dict[str, str]:
        return self.token_env("valid")

    def bad_credentials_env(self) -> dict[str, str]:
        return self.token_env("expired")


__all__ = ["ACCOUNT", "ACCOUNT_KEY", "ISSUER", "STORAGE_AUDIENCE", "TOKEN_KINDS", "Azurite",
           "AzuriteOAuth", "MintedTokenCredential", "make_tls_files", "mint_token",
           "token_expiry"]
