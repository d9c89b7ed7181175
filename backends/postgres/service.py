"""A throwaway PostgreSQL cluster on a free loopback port, for MLflow's SQL store.

:class:`PostgresService` runs Debian's PostgreSQL (the newest ``/usr/lib/postgresql/<ver>/bin``
present, else ``initdb``/``postgres`` from ``PATH``): ``initdb`` into a temporary directory,
then ``postgres`` listening on ``127.0.0.1`` only, with its socket in that directory and
durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``), since the cluster dies
with the test session.  :meth:`PostgresService.new_database` hands out fresh databases as the
SQLAlchemy URLs MLflow takes (``postgresql://postgres@127.0.0.1:<port>/<db>``).

Which driver that URL loads is SQLAlchemy's choice: psycopg (3) since SQLAlchemy 2.1, psycopg2
before.  The test extra installs both, as MLflow's ``db`` extra does; this module itself uses
whichever is importable.

Authentication is ``trust`` on loopback and the socket: no password exists, so none can leak
into a log or a printed URL.  Anyone on this machine may connect while it runs, which is fine
for a cluster that holds nothing but test data.

PostgreSQL refuses to run as root.  As root, the cluster's directory is given to the ``postgres``
system user (Debian's package creates it) and ``initdb`` and ``postgres`` run as that user; as
anyone else they run as the caller.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from backends._common import LOOPBACK, ManagedProcess, free_port

#: The cluster's superuser (``initdb -U``), whoever runs it.
SUPERUSER = "postgres"

#: The system user a root caller runs PostgreSQL as.
SYSTEM_USER = "postgres"

DEBIAN_ROOT = Path("/usr/lib/postgresql")

#: Settings for a cluster nobody needs after the session: durability off, loopback only.
SETTINGS = {
    "listen_addresses": LOOPBACK,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Many stores side by side (one SQLAlchemy pool each, up to 15 connections).
    "max_connections": "200",
    "shared_buffers": "32MB",
}

#: The database :meth:`PostgresService.new_mlflow_database` copies.
MLFLOW_TEMPLATE = "mlflow_schema_template"

_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    """The cluster could not be made or started, or a database could not be created."""


def find_binaries() -> Path:
    """The ``bin`` directory of the newest PostgreSQL installed: Debian's
    ``/usr/lib/postgresql/<version>/bin``, else the one holding ``initdb`` on ``PATH``."""
    versions = []
    if DEBIAN_ROOT.is_dir():
        for entry in DEBIAN_ROOT.iterdir():
            bindir = entry / "bin"
            if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
                key = tuple(int(p) for p in re.findall(r"\d+", entry.name))
                versions.append((key, bindir))
    if versions:
        return max(versions)[1]
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if (bindir / "postgres").is_file():
            return bindir
    raise PostgresError(
        f"no PostgreSQL server found (neither {DEBIAN_ROOT}/<version>/bin/initdb nor initdb "
        "on PATH): apt-get install postgresql (.ci/run does)")


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root, and there is no {SYSTEM_USER!r} user to run it "
            "as: apt-get install postgresql creates it (.ci/run does), or run as another user"
        ) from None


class PostgresService:
    """A PostgreSQL cluster of its own; ``stop()`` kills it and removes its files.

    ``python -m backends up postgres`` prints :attr:`url` and a fresh database's URL.
    """

    name = "postgres"

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self._startup_timeout = startup_timeout
        self._root: Path | None = None
        self._proc: ManagedProcess | None = None
        self._port = 0
        self._uid: int | None = None
        self._gid: int | None = None
        self._template_lock = threading.Lock()
        self._mlflow_template = False
        #: seconds from start() to the first accepted connection (initdb included)
        self.startup_seconds = 0.0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Make the cluster, start the server and wait until it accepts connections."""
        if self._proc is not None:
            return
        t0 = time.monotonic()
        bindir = find_binaries()
        if os.geteuid() == 0:
            user = _system_user()
            self._uid, self._gid = user.pw_uid, user.pw_gid
        self._root = Path(tempfile.mkdtemp(prefix="cloudtrack-pgcluster-"))
        try:
            if self._uid is not None:
                os.chown(self._root, self._uid, self._gid if self._gid is not None else -1)
            self._initdb(bindir)
            # A free port can be taken between free_port() and the server's bind: retry that.
            for attempt in range(3):
                self._spawn(bindir)
                try:
                    self._wait_ready(t0 + self._startup_timeout)
                    break
                except PostgresError as e:
                    if "already in use" not in str(e) or attempt == 2:
                        raise
                    self._stop_process()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _initdb(self, bindir: Path) -> None:
        assert self._root is not None
        argv = [str(bindir / "initdb"), "-D", str(self._root / "data"), "-U", SUPERUSER,
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(argv, cwd=self._root, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=self._startup_timeout,
                                check=False, user=self._uid, group=self._gid,
                                extra_groups=[] if self._uid is not None else None)
        if result.returncode != 0:
            hint = (f" (as user {SYSTEM_USER!r}, who must be able to reach that directory: "
                    "check TMPDIR)" if self._uid is not None else "")
            raise PostgresError(f"initdb failed with {result.returncode} in {self._root}{hint}:\n"
                                f"{(result.stdout + result.stderr)[-3000:]}")

    def _spawn(self, bindir: Path) -> None:
        assert self._root is not None
        self._port = free_port()
        # The socket goes next to the data; a path too long for a Unix socket (a deep TMPDIR)
        # gets none: clients use TCP anyway.
        socket_dir = str(self._root) if len(str(self._root)) < 80 else ""
        argv = [str(bindir / "postgres"), "-D", str(self._root / "data"), "-p", str(self._port),
                "-k", socket_dir]
        for key, value in SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        self._proc = ManagedProcess(argv, cwd=self._root, name="postgres",
                                    user=self._uid, group=self._gid)

    def _wait_ready(self, deadline: float) -> None:
        """Until a real client connection succeeds: the port opens before recovery ends."""
        driver = _driver()
        assert self._proc is not None
        proc = self._proc
        error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise PostgresError(f"postgres exited with {proc.proc.returncode} before "
                                    f"accepting connections on {LOOPBACK}:{self._port}; its log "
                                    f"ends with:\n{proc.tail()}")
            try:
                driver.connect(**self._connect_args("postgres"), connect_timeout=2).close()
                return
            except driver.OperationalError as e:
                error = e
            time.sleep(0.05)
        raise PostgresError(f"postgres did not accept connections on {LOOPBACK}:{self._port} "
                            f"within {self._startup_timeout:.0f}s ({error}); its log ends "
                            f"with:\n{proc.tail()}")

    def stop(self) -> None:
        """Stop the server and remove the cluster; safe to call twice."""
        self._stop_process()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        self._mlflow_template = False
        self.startup_seconds = 0.0

    def _stop_process(self) -> None:
        mp, self._proc = self._proc, None
        if mp is None:
            return
        if mp.proc.poll() is None:
            # Immediate shutdown: the data is about to be deleted, so no checkpoint, and open
            # client connections (a test's SQLAlchemy pool) do not hold it up as SIGTERM's
            # "smart" shutdown would.
            with contextlib.suppress(ProcessLookupError):
                os.kill(mp.proc.pid, signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                mp.proc.wait(timeout=10)
        # Still running: mp.stop() signals the whole process group, backends included.
        mp.stop()

    def __enter__(self) -> PostgresService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------

    def _connect_args(self, dbname: str) -> dict[str, object]:
        return {"host": LOOPBACK, "port": self._port, "user": SUPERUSER, "dbname": dbname}

    def new_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create a fresh, empty database and return its SQLAlchemy URL.

        ``name``: lowercase letters, digits and ``_`` (default: a unique ``ct_…``).
        ``template``: copy this database instead of the empty ``template1`` (nobody may be
        connected to it).
        """
        name = name or f"ct_{uuid.uuid4().hex[:12]}"
        for ident in (name, template):
            if ident is not None and not _DB_NAME.fullmatch(ident):
                raise ValueError(f"database name must match {_DB_NAME.pattern}, not {ident!r}")
        sql = _driver().sql
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._admin(query, f"creating database {name!r}")
        return self.database_url(name)

    def new_mlflow_database(self, name: str | None = None) -> str:
        """:meth:`new_database` already holding MLflow's schema at head, and no experiment yet
        (a store or server creates the default one when it first opens it).

        MLflow's migrations take 4-5 s on PostgreSQL; they run once per cluster, into a
        template database, and every call copies that in ~0.1 s.  Imports MLflow.
        """
        with self._template_lock:
            if not self._mlflow_template:
                url = self.new_database(MLFLOW_TEMPLATE)
                try:
                    _migrate_mlflow(url)
                except BaseException:
                    sql = _driver().sql
                    self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                                .format(sql.Identifier(MLFLOW_TEMPLATE)),
                                "dropping a half-migrated template")
                    raise
                self._mlflow_template = True
        return self.new_database(name, template=MLFLOW_TEMPLATE)

    def _admin(self, query: Any, what: str) -> None:
        """Run one statement outside a transaction in the maintenance database."""
        if self._proc is None:
            raise PostgresError(f"{what}: the cluster is not running (start() first)")
        driver = _driver()
        try:
            conn = driver.connect(**self._connect_args("postgres"), connect_timeout=10)
        except driver.Error as e:
            raise PostgresError(f"{what}: cannot connect to {self.url}: {str(e).strip()}") from e
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(query)
        except driver.Error as e:
            raise PostgresError(f"{what} on {self.url} failed: {str(e).strip()}") from e
        finally:
            conn.close()

    def database_url(self, name: str) -> str:
        """The SQLAlchemy URL of database ``name`` (MLflow's ``--backend-store-uri``)."""
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self._port}/{name}"

    @property
    def url(self) -> str:
        """The URL of the maintenance database ``postgres``; tests want :meth:`new_database`."""
        return self.database_url("postgres")

    @property
    def port(self) -> int:
        return self._port

    @property
    def env(self) -> dict[str, str]:
        """libpq's variables: ``psql``, ``pg_dump`` and psycopg2 reach the cluster with them."""
        return {"PGHOST": LOOPBACK, "PGPORT": str(self._port), "PGUSER": SUPERUSER}

    @property
    def pid(self) -> int | None:
        return self._proc.proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        """The temporary directory holding the cluster (``data/``) and its socket."""
        return self._root

    @property
    def log_dir(self) -> Path | None:
        """The temporary directory holding the server's log."""
        return self._proc.workdir if self._proc is not None else None

    def log_tail(self, n: int = 3000) -> str:
        return self._proc.tail(n) if self._proc is not None else ""


def _migrate_mlflow(url: str) -> None:
    """Create MLflow's tables at ``url`` and migrate them to head, as ``mlflow server`` and
    ``SqlAlchemyStore`` do on an empty database, then close every connection (a template
    must have none)."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(url)
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def _driver() -> Any:
    """psycopg (3) or psycopg2: the calls made here (``connect``, ``sql``, ``Error``,
    ``OperationalError``, ``autocommit``) are the same in both."""
    try:
        import psycopg
        import psycopg.sql
        return psycopg
    except ImportError:
        pass
    try:
        import psycopg2
        import psycopg2.sql
        return psycopg2
    except ImportError as e:
        raise ImportError("the PostgreSQL service needs a driver: pip install 'psycopg[binary]' "
                          "psycopg2-binary (both in cloudtrack's test extra)") from e
