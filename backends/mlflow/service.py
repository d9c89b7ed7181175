"""A real ``mlflow server`` (full MLflow, uvicorn, one worker) on a free loopback port.

By default it keeps runs in a SQLite file and proxies artifacts (``mlflow-artifacts:``) into a
folder, both in a temporary directory that :meth:`MlflowServer.stop` removes.  Any backend store
URI works too (``s3://…`` served by cloudtrack's plugin), and artifacts can go to a direct root
such as ``s3://bucket/prefix`` with the storage credentials passed through ``extra_env``.

``basic_auth=True`` runs MLflow's ``basic-auth`` app with a generated admin password, so the
doctor's 401 / 403 cases can be reproduced against the real thing (:meth:`create_user`,
:meth:`grant`).

Start-up is dominated by MLflow itself: ``mlflow server`` imports the whole of MLflow and
migrates the database, then its uvicorn worker imports it again.  We avoid only the migration,
by copying a schema-only SQLite template made once per MLflow version (see :func:`_template_db`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends._common import LOOPBACK, ManagedProcess, free_port
from backends.postgres.service import PostgresService

#: Always set for the server: with job execution on, MLflow runs extra processes and (with 2
#: workers) stalls ~40 ms on every keep-alive request; telemetry would try the network.
SERVER_ENV: Mapping[str, str] = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}

# Permission names of MLflow's basic-auth app (mlflow.server.auth.permissions): any of them may
# be the default; a grant on one resource takes all but NO_PERMISSIONS.
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DENY")
GRANTS = ("READ", "USE", "EDIT", "MANAGE", "DENY")


@dataclass(frozen=True)
class Credentials:
    """A basic-auth user of the server."""

    username: str
    password: str

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    @property
    def auth(self) -> tuple[str, str]:
        """For ``requests``: ``requests.get(url, auth=creds.auth)``."""
        return (self.username, self.password)


class MlflowServerError(RuntimeError):
    """The server did not come up, or an admin call to it failed."""


class MlflowServer:
    """``mlflow server`` in its own process group; ``stop()`` kills it and removes its files.

    ``backend_store_uri``: default ``sqlite:///<tmp>/mlflow.db``; any URI ``mlflow server``
    accepts.  ``artifact_root``: a direct default artifact root (``s3://…``, ``file:…``); when
    given, the server does not proxy artifacts and clients write there themselves.  Otherwise
    artifacts are proxied (``mlflow-artifacts:/``) into ``artifacts_destination`` (default
    ``<tmp>/artifacts``; may be ``s3://…``).  ``extra_env`` goes to the server process only
    (storage credentials, endpoints).
    """

    name = "mlflow"

    def __init__(self, backend_store_uri: str | None = None, artifact_root: str | None = None,
                 *, artifacts_destination: str | None = None,
                 extra_env: Mapping[str, str] | None = None, basic_auth: bool = False,
                 default_permission: str = "READ", startup_timeout: float = 120.0) -> None:
        if default_permission not in PERMISSIONS:
            raise ValueError(f"default_permission must be one of {PERMISSIONS}, "
                             f"not {default_permission!r}")
        self._backend_store_uri = backend_store_uri
        self._artifact_root = artifact_root
        self._artifacts_destination = artifacts_destination
        self._extra_env = dict(extra_env or {})
        self.basic_auth = basic_auth
        self._default_permission = default_permission
        self._startup_timeout = startup_timeout
        self._proc: ManagedProcess | None = None
        self._root: Path | None = None
        self._port = 0
        self._backend = ""
        self._server_env: dict[str, str] = {}
        self._t0 = 0.0
        self.admin: Credentials | None = None
        #: seconds from launch to the first answer of ``/health``
        self.startup_seconds = 0.0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the server and wait until it answers."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Spawn the server without waiting: start several, then :meth:`wait_ready` each, and
        their ~10 s of start-up overlap."""
        if self._proc is not None:
            return
        self._root = Path(tempfile.mkdtemp(prefix="cloudtrack-mlflow-"))
        try:
            backend = self._backend_store_uri
            if backend is None:
                db = self._root / "mlflow.db"
                _template_db(db)
                backend = f"sqlite:///{db}"
            self._server_env = {**SERVER_ENV, **self._extra_env}
            if self.basic_auth:
                # Fail in milliseconds rather than after MLflow's import of ~9 s.
                if importlib.util.find_spec("flask_wtf") is None:
                    raise MlflowServerError("MLflow's basic-auth app needs Flask-WTF: "
                                            "pip install 'mlflow[auth]'")
                self._server_env.update(self._write_auth_config(self._root))
            self._backend = backend
            self._t0 = time.monotonic()
            self._spawn()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        assert self._root is not None
        self._port = free_port()
        argv = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK,
                "--port", str(self._port), "--workers", "1",
                "--backend-store-uri", self._backend]
        if self._artifact_root is not None:
            argv += ["--default-artifact-root", self._artifact_root, "--no-serve-artifacts"]
        else:
            argv += ["--serve-artifacts", "--artifacts-destination",
                     self._artifacts_destination or str(self._root / "artifacts")]
        if self.basic_auth:
            argv += ["--app-name", "basic-auth"]
        self._proc = ManagedProcess(argv, env=self._server_env, cwd=self._root, name="mlflow")

    def wait_ready(self) -> None:
        """Wait until ``/health`` answers 200; on failure stop everything and raise
        :class:`MlflowServerError` with the end of the server's log."""
        if self._proc is None:
            raise MlflowServerError("wait_ready() before launch()")
        if self.startup_seconds:
            return
        try:
            # A free port can be taken between free_port() and the server's bind: retry that.
            for attempt in range(3):
                try:
                    self._poll_health(self._t0 + self._startup_timeout)
                    break
                except MlflowServerError as e:
                    if "address already in use" not in str(e).lower() or attempt == 2:
                        raise
                    self._stop_process()
                    self._spawn()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self._t0
        if self._backend_store_uri is None and self._root is not None:
            _save_template(self._root / "mlflow.db")

    def _poll_health(self, deadline: float) -> None:
        assert self._proc is not None
        proc = self._proc
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise MlflowServerError(
                    f"mlflow server exited with {proc.proc.returncode} before answering "
                    f"{self.url}/health; its log ends with:\n{proc.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=2)
                try:
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            time.sleep(0.05)
        raise MlflowServerError(
            f"mlflow server did not answer {self.url}/health within {self._startup_timeout:.0f}s; "
            f"its log ends with:\n{proc.tail()}")

    def stop(self) -> None:
        """Stop the server and remove its temporary directory; safe to call twice."""
        self._stop_process()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        self.startup_seconds = 0.0

    def _stop_process(self) -> None:
        mp, self._proc = self._proc, None
        if mp is None:
            return
        if mp.proc.poll() is None:
            # `mlflow server` forwards SIGTERM to its uvicorn worker, which shuts down
            # gracefully in ~0.2 s; the parent then spends 1-6 s garbage-collecting MLflow at
            # interpreter exit.  Once the worker is gone nothing of value is left: kill the rest.
            workers = _children(mp.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mp.proc.pid, signal.SIGTERM)
            if workers:
                import psutil

                _, alive = psutil.wait_procs(workers, timeout=10)
                if not alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(mp.proc.pid, signal.SIGKILL)
        mp.stop()  # waits (SIGKILL after 10 s), closes the log, removes its directory

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def env(self) -> dict[str, str]:
        """MLFLOW_TRACKING_URI, and the admin's credentials on a basic-auth server."""
        env = {"MLFLOW_TRACKING_URI": self.url}
        if self.admin is not None:
            env.update(self.admin.env)
        return env

    @property
    def backend_store_uri(self) -> str:
        """Where the server keeps runs (set once launched)."""
        return self._backend

    @property
    def artifact_root(self) -> str:
        """Where new experiments put artifacts: the direct root, or the proxied scheme."""
        return self._artifact_root or "mlflow-artifacts:/"

    @property
    def pid(self) -> int | None:
        return self._proc.proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        """The temporary directory holding the database, artifacts and auth files."""
        return self._root

    def log_tail(self, n: int = 3000) -> str:
        return self._proc.tail(n) if self._proc is not None else ""

    # -- basic auth -------------------------------------------------------------------------

    def _write_auth_config(self, root: Path) -> dict[str, str]:
        # Random per server: MLflow refuses to bootstrap an admin without a password, and a
        # fixed one would end up in logs of every run.
        self.admin = Credentials("admin", secrets.token_urlsafe(18))
        ini = root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            f"default_permission = {self._default_permission}\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
            f"admin_username = {self.admin.username}\n"
            f"admin_password = {self.admin.password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Without the cache every request runs PBKDF2 (~0.1-0.3 s here).  Only successful
            # checks are cached and one worker sees every password change, so 401s stay exact.
            "auth_cache_ttl_seconds = 60\n")
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            # The variables win over the file; set them so an ambient value cannot.
            "MLFLOW_AUTH_ADMIN_USERNAME": self.admin.username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin.password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }

    def create_user(self, username: str | None = None,
                    password: str | None = None) -> Credentials:
        """A normal (non-admin) user; with ``default_permission`` READ it may read every
        experiment and create its own, but gets 403 writing to someone else's."""
        creds = Credentials(username or f"user-{secrets.token_hex(4)}",
                            password or secrets.token_urlsafe(18))
        self._admin_call("POST", "/api/2.0/mlflow/users/create",
                         {"username": creds.username, "password": creds.password})
        return creds

    def grant(self, username: str, experiment_id: str, permission: str) -> None:
        """Set ``username``'s permission on one experiment; ``DENY`` makes even reading it
        answer 403."""
        if permission not in GRANTS:
            raise ValueError(f"permission must be one of {GRANTS}, not {permission!r}")
        self._admin_call("POST", "/api/3.0/mlflow/users/permissions/grant",
                         {"username": username, "resource_type": "experiment",
                          "resource_id": str(experiment_id), "permission": permission})

    def _admin_call(self, method: str, path: str, body: Mapping[str, str]) -> object:
        if self.admin is None:
            raise MlflowServerError(f"{self.url} runs without basic auth: no users to manage")
        token = base64.b64encode(f"{self.admin.username}:{self.admin.password}".encode()).decode()
        conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body),
                         headers={"Authorization": f"Basic {token}",
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise MlflowServerError(f"{method} {self.url}{path} answered {resp.status}: "
                                    f"{data[:500].decode(errors='replace')}")
        return json.loads(data or b"{}")


class MlflowAuthServer(MlflowServer):
    """:class:`MlflowServer` with ``basic_auth=True``: a registry entry needs no arguments."""

    name = "mlflow-auth"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("basic_auth", True)
        super().__init__(*args, **kwargs)


class MlflowServerPostgres(MlflowServer):
    """:class:`MlflowServer` whose backend store is a fresh database on PostgreSQL, as most
    production servers are; artifacts as :class:`MlflowServer` (proxied into its temp dir by
    default).

    ``postgres``: a running :class:`~backends.postgres.PostgresService` to take the database
    from (and leave running); by default the server starts a cluster of its own and stops it
    with itself.  The server migrates its empty database itself on start, as in production.
    """

    name = "mlflow-postgres"

    def __init__(self, *args: Any, postgres: PostgresService | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._backend_store_uri is not None:
            raise ValueError("MlflowServerPostgres makes its own backend store: "
                             "use MlflowServer for a given backend_store_uri")
        self.postgres = postgres
        self._owns_postgres = postgres is None

    def launch(self) -> None:
        if self._proc is not None:
            return
        try:
            if self.postgres is None:
                self.postgres = PostgresService()
            if self._owns_postgres:
                self.postgres.start()
            self._backend_store_uri = self.postgres.new_database()
        except BaseException:
            self.stop()
            raise
        super().launch()

    def stop(self) -> None:
        super().stop()
        self._backend_store_uri = None
        if self._owns_postgres and self.postgres is not None:
            self.postgres.stop()
            self.postgres = None


def _children(pid: int) -> list[Any]:
    """The processes ``pid`` spawned (psutil is a test dependency; without it, none)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


# -- the SQLite template ------------------------------------------------------------------
#
# A fresh SQLite store spends 1-2 s of a ~10 s start in MLflow's Alembic migrations.  The first
# server of an MLflow version therefore leaves a copy of its freshly migrated, still empty
# database in the temp dir, minus the default experiment (whose artifact location depends on the
# server's flags; MLflow recreates it on start when it is missing).  Later servers copy it and
# MLflow sees the schema at head, so it skips the migrations.

def _template_path() -> Path:
    try:
        version = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"cloudtrack-mlflow-{version}-u{uid}-schema.sqlite"


def _template_db(db: Path) -> None:
    template = _template_path()
    if template.exists():
        with contextlib.suppress(OSError):
            shutil.copyfile(template, db)


def _save_template(db: Path) -> None:
    template = _template_path()
    if template.exists() or not db.exists():
        return
    tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
    try:
        # The backup API copies a consistent snapshot while the server has the file open.
        with contextlib.closing(sqlite3.connect(db)) as src, \
                contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
            # Only a database nobody has written to yet becomes the template.
            if dst.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] != 1:
                raise sqlite3.DatabaseError("not a fresh store")
            dst.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            dst.execute("DELETE FROM experiments WHERE experiment_id = 0")
            dst.commit()
        os.replace(tmp, template)
    except sqlite3.Error:
        pass  # a template is an optimisation; the next server migrates from scratch
    finally:
        tmp.unlink(missing_ok=True)
