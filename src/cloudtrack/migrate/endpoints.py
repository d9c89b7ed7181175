"""The two ends of a migration: what a URI names, and the MLflow stores that reach it.

| kind | URIs | source | destination |
|---|---|---|---|
| ``cloudtrack`` | every URI of the backend table (``s3://``, ``gs://``, ``wasbs://``, ``abfss://``, ``file:``, a directory) | yes | yes |
| ``sql`` | ``sqlite:///…``, ``postgresql://…``, ``mysql://…``, ``mssql://…`` (SQLAlchemy URLs) | yes | yes |
| ``filestore`` | a directory holding MLflow's FileStore (``<id>/meta.yaml``) | yes | no |
| ``server`` | ``http(s)://…``, an MLflow tracking server | yes | yes |

Opening an end checks it can be reached, so a wrong URI, a store that is down or credentials
that are refused fail in seconds, with the doctor's diagnosis where there is one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cloudtrack.config import backend_for_scheme, local_path, redact_uri, split_scheme, suggest_uri
from cloudtrack.environment import snapshot
from cloudtrack.errors import CloudtrackError, ConfigError, without_doctor_hint

if TYPE_CHECKING:
    from cloudtrack.migrate.rest import ServerRequests

log = logging.getLogger("cloudtrack.migrate")

Kind = Literal["cloudtrack", "sql", "filestore", "server"]

#: SQLAlchemy dialects MLflow's SQL store accepts (``mlflow.store.db.db_types``).
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class EndpointError(CloudtrackError):
    """A SOURCE or DEST that cannot be reached or read: the message says why and what to do.
    (A URI that cannot name a store at all is a :class:`~cloudtrack.errors.ConfigError`.)"""


@dataclass
class Endpoint:
    """One end of a migration, opened."""

    uri: str
    kind: Kind
    #: MLflow's tracking store for the URI (cloudtrack's, SqlAlchemyStore, FileStore, RestStore).
    tracking: Any
    #: MLflow's model-registry store for the URI, or None when it has none.
    registry: Any
    #: The URI to hand MLflow's artifact repositories as tracking URI (``mlflow-artifacts:``
    #: URIs of a server resolve against it).
    tracking_uri: str
    #: Where new experiments' artifacts go, for destinations that choose it.
    artifact_root: str | None = None
    #: An MLflow server's requests: the slots they wait for, the retries of its exhausted
    #: connection pool (the stores above go through it already).  None for other kinds.
    server: ServerRequests | None = None

    @property
    def shown(self) -> str:
        return redact_uri(self.uri)

    def close(self) -> None:
        for store in (self.tracking, self.registry):
            close = getattr(store, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing is best effort; the work is done or failed
                    log.debug("closing %s", self.shown, exc_info=True)


def classify(uri: str) -> Kind:
    """What kind of store ``uri`` names; :class:`~cloudtrack.errors.ConfigError` when none."""
    scheme = split_scheme(uri)
    if scheme in ("http", "https"):
        return "server"
    base = scheme.split("+", 1)[0]
    if base in SQL_SCHEMES:
        return "sql"
    if scheme == "file":
        from cloudtrack.mlflow_plugin import is_mlflow_file_store

        return "filestore" if is_mlflow_file_store(local_path(uri)) else "cloudtrack"
    if backend_for_scheme(scheme) is not None:
        return "cloudtrack"
    suggestion = suggest_uri(redact_uri(uri))
    raise ConfigError(
        f"{redact_uri(uri)!r} is not a store cloudtrack migrate knows (scheme {scheme!r}"
        + (f"; did you mean {suggestion!r}?" if suggestion else "") + "); "
        "use a cloudtrack store (s3://, gs://, wasbs://, abfss://, file: or a directory), an "
        "MLflow SQL store (sqlite:///path.db, postgresql://…), an MLflow FileStore directory, "
        "or an MLflow server (http(s)://…)")


def open_endpoint(uri: str, *, role: Literal["source", "dest"],
                  artifact_root: str | None = None, server_requests: int | None = None,
                  create: bool = True) -> Endpoint:
    """Open ``uri`` as the migration's ``role``; fail fast when it cannot serve as one.
    ``server_requests``: the requests in flight an MLflow server gets at most
    (:data:`cloudtrack.migrate.rest.SERVER_REQUESTS` by default).  ``create=False`` (a dry
    run): a destination where no store is yet is not created but opened empty, with no
    stores (``tracking`` None)."""
    kind = classify(uri)
    if role == "dest" and kind == "filestore":
        raise ConfigError(
            f"{redact_uri(uri)} holds MLflow's FileStore, which is read-only for cloudtrack "
            "migrate (MLflow refuses FileStore by default since 3.13); migrate into a new "
            "directory (a cloudtrack store), a SQL store or a bucket instead")
    if role == "source" and kind in ("cloudtrack", "filestore") and split_scheme(uri) == "file":
        path = local_path(uri)
        if not os.path.isdir(path):
            raise ConfigError(f"source {redact_uri(uri)}: {_not_a_folder(path)}")
    if role == "dest" and kind == "cloudtrack" and split_scheme(uri) == "file":
        path = local_path(uri)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"destination {redact_uri(uri)}: {_not_a_folder(path)}")
    opener = {"cloudtrack": _open_cloudtrack, "sql": _open_sql, "filestore": _open_filestore,
              "server": _open_server}[kind]
    if role == "dest" and not create and kind in ("cloudtrack", "sql"):
        try:
            exists = _store_exists(uri, kind)
        except (EndpointError, ConfigError):
            raise
        except Exception as e:
            raise EndpointError(_explain(uri, role, e)) from e
        if not exists:
            return Endpoint(uri, kind, None, None, uri)
    try:
        endpoint = (_open_server(uri, role, artifact_root, server_requests)
                    if kind == "server" else opener(uri, role, artifact_root))
    except (EndpointError, ConfigError):
        raise
    except Exception as e:
        raise EndpointError(_explain(uri, role, e)) from e
    try:
        # One cheap read proves the store answers and the credentials are accepted.
        if kind == "server":
            _probe_server(endpoint)
        else:
            endpoint.tracking.search_experiments(max_results=1)
    except Exception as e:
        endpoint.close()
        raise EndpointError(_explain(uri, role, e)) from e
    return endpoint


def _not_a_folder(path: str) -> str:
    """Why ``path``, given as a store directory, is not one, and what to write instead."""
    if not os.path.exists(path):
        return f"{path} does not exist; check the path"
    try:
        with open(path, "rb") as f:
            sqlite = f.read(16) == b"SQLite format 3\0"
    except OSError:
        sqlite = False
    if sqlite:
        return (f"{path} is a SQLite database, not a store directory; name it as MLflow does: "
                f"sqlite:///{os.path.abspath(path)}")
    return f"{path} is a file, not a store directory; check the path"


#: Seconds the first request to an MLflow server may take to connect and to answer.
SERVER_PROBE_TIMEOUT = 15.0


def _probe_server(endpoint: Endpoint) -> None:
    """The first request to an MLflow server, with a short timeout and two quick retries.
    MLflow's client retries a refused connection or a 5xx answer with backoff for about four
    minutes (and waits up to 120 s for each answer): a server that is down, or a wrong port,
    must fail in seconds."""
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    path = "/api/2.0/mlflow/experiments/search"
    response = http_request(endpoint.tracking.get_host_creds(), path, "POST", max_retries=2,
                            backoff_factor=0.5, timeout=SERVER_PROBE_TIMEOUT,
                            raise_on_status=False, json={"max_results": 1})
    verify_rest_response(response, path)


def _explain(uri: str, role: str, error: BaseException) -> str:
    """What went wrong opening ``uri``, with the doctor's cause and fix where it has one."""
    end = "destination" if role == "dest" else role
    message = f"cannot open {end} {redact_uri(uri)}: {_scrubbed(str(error), uri)}"
    kind = classify(uri)
    if kind == "sql" and not uri.startswith("sqlite:"):
        where = urllib.parse.urlsplit(uri)
        message += (f"\n  fix: check that the database server runs and accepts connections at "
                    f"{where.hostname or 'localhost'}"
                    + (f":{where.port}" if where.port else "")
                    + ", and that the database, user and password in the URL are right")
    if kind in ("cloudtrack", "server"):
        try:
            from cloudtrack.doctor import run as doctor

            # A destination must take writes: its doctor writes (and removes) a probe object.
            report = doctor(uri, read_only=role == "source", timeout=5.0, budget=20.0)
        except Exception:  # the diagnosis is a courtesy; the error above stands
            log.debug("the doctor could not diagnose %s", redact_uri(uri), exc_info=True)
            return message
        # The doctor's diagnosis follows, and the command: the error's own hint would repeat it.
        message = (f"cannot open {end} {redact_uri(uri)}: "
                   f"{_scrubbed(without_doctor_hint(str(error)), uri)}")
        root = report.root
        if root is not None:
            message += f"\n  cause: {report.cause}: {root.summary}"
            if root.fix:
                message += f"\n  fix: {root.fix}"
        message += f"\n  (`cloudtrack doctor {redact_uri(uri)}` shows every check)"
    return message


def _scrubbed(text: str, uri: str) -> str:
    """``text`` without secrets (:func:`cloudtrack.doctor.core.scrub`), the password of
    ``uri`` included, should a driver's message quote it."""
    from cloudtrack.doctor.core import scrub

    try:
        password = urllib.parse.urlsplit(uri).password
    except ValueError:
        password = None
    return scrub(text, [password] if password else [])


def check_apart(source: str, dest: str) -> None:
    """:class:`ConfigError` unless SOURCE and DEST are different stores, neither inside the
    other: a migration into its own source would copy the store into itself (into a server,
    every run again beside itself), and a folder or prefix inside the other mixes one
    store's objects into the other's."""
    a, b = _place(source), _place(dest)
    if a is None or b is None or a[0] != b[0]:
        return
    (_, where_a, path_a), (_, where_b, path_b) = a, b
    if where_a != where_b:
        return
    if path_a == path_b:
        raise ConfigError(f"SOURCE {redact_uri(source)} and DEST {redact_uri(dest)} are the "
                          "same store; give a different destination")
    if _within(path_b, path_a) or _within(path_a, path_b):
        inner, outer = ("DEST", "SOURCE") if _within(path_b, path_a) else ("SOURCE", "DEST")
        raise ConfigError(f"{inner} {redact_uri(dest if inner == 'DEST' else source)} is inside "
                          f"{outer} {redact_uri(source if outer == 'SOURCE' else dest)}: one "
                          "store's objects would mix with the other's; give a destination "
                          "outside the source (another folder, prefix or bucket)")


def _within(inner: str, outer: str) -> bool:
    return outer == "" or inner.startswith(outer.rstrip("/") + "/")


def _place(uri: str) -> tuple[str, str, str] | None:
    """Where ``uri``'s store lives, as (medium, place, path): a local folder or file by its
    real path, a bucket by backend and container with its prefix, a server or database by
    address.  None when the URI cannot be read (opening it says why)."""
    try:
        kind = classify(uri)
        scheme = split_scheme(uri)
        if kind in ("cloudtrack", "filestore") and scheme == "file":
            path = os.path.realpath(local_path(uri))
            if os.path.isfile(path):
                return None  # no store folder: opening it says what the file is
            return "local", "", path
        if kind == "cloudtrack":
            from cloudtrack.config import resolve

            config = resolve(uri)
            # One container name in two accounts or at two endpoints is two stores.
            where = "|".join(str(config.get(name) or "") for name in
                             ("account", "endpoint_url", "api_endpoint"))
            return str(config.backend), f"{where}|{config.container}", config.prefix
        parsed = urllib.parse.urlsplit(uri)
        if kind == "sql" and uri.startswith("sqlite:"):
            path = _sqlite_file(uri)
            if not path or path == ":memory:":
                return None
            return "local", "", os.path.realpath(path)
        host = (parsed.hostname or "").lower()
        where = f"{scheme}://{host}:{parsed.port or ''}"
        return kind, where, parsed.path.rstrip("/")
    except Exception:
        return None


def _store_exists(uri: str, kind: Kind) -> bool:
    """Whether a store is at ``uri`` already — read only, for a dry run."""
    if kind == "cloudtrack":
        from cloudtrack.blobs import open_blobs
        from cloudtrack.config import resolve
        from cloudtrack.store import marker

        with open_blobs(resolve(uri)) as blobs:
            return marker.read(blobs) is not None
    if uri.startswith("sqlite:"):
        path = _sqlite_file(uri)
        if not path or path == ":memory:" or not os.path.exists(path):
            return False
    else:
        _probe_database(uri)
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        return bool(sqlalchemy.inspect(engine).has_table("experiments"))
    finally:
        engine.dispose()


def _open_cloudtrack(uri: str, role: str, artifact_root: str | None) -> Endpoint:
    from cloudtrack.config import resolve
    from cloudtrack.model_registry import BlobRegistryStore
    from cloudtrack.tracking import BlobTrackingStore

    config = resolve(uri)
    if role == "source":
        # Reading must not create a store where there is none.
        from cloudtrack.blobs import open_blobs
        from cloudtrack.store import marker

        with open_blobs(config) as blobs:
            if marker.read(blobs) is None:
                raise EndpointError(f"source {config.display_uri} is not a cloudtrack store "
                                    "(no cloudtrack.json under it); check the bucket and prefix")
    # Strict: a migration's writes go through records, but anything it logs through the
    # store's own API must be durable when the call returns.
    strict = resolve(uri, {**snapshot(), "CLOUDTRACK_STRICT": "true"})
    tracking = BlobTrackingStore(uri, artifact_root, config=strict)  # type: ignore[abstract]
    registry = BlobRegistryStore(uri, uri, config=strict)  # type: ignore[abstract]
    shown = ("file://" + config.container) if config.backend == "file" else config.display_uri
    return Endpoint(uri, "cloudtrack", tracking, registry, shown, tracking.artifact_root_uri)


def _open_sql(uri: str, role: str, artifact_root: str | None) -> Endpoint:
    from mlflow.store.model_registry.sqlalchemy_store import (
        SqlAlchemyStore as SqlRegistryStore,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if uri.startswith("sqlite:"):
        path = _sqlite_file(uri)
        if role == "source" and path and path != ":memory:" and not os.path.exists(path):
            raise ConfigError(f"source {redact_uri(uri)}: the database file {path} does not "
                              "exist; check the path (sqlite:////absolute/path.db)")
    else:
        _probe_database(uri)
    root = artifact_root or _default_sql_artifact_root(uri)
    tracking = SqlAlchemyStore(uri, root)
    registry = SqlRegistryStore(uri)
    return Endpoint(uri, "sql", tracking, registry, uri, root)


#: Seconds a database server may take to accept the first connection.
DATABASE_CONNECT_TIMEOUT = 10


def _probe_database(uri: str) -> None:
    """One connection, with a connect timeout, before MLflow's SQL store opens the database:
    MLflow tries a failed connection ten times with backoff (about two minutes, a warning
    each time), so a database that is down or refuses the credentials must fail here first."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    dialect = split_scheme(uri).split("+", 1)[0]
    args = {"connect_timeout": DATABASE_CONNECT_TIMEOUT} \
        if dialect in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _sqlite_file(uri: str) -> str:
    """The database file a ``sqlite:///path`` URI names ('' for none, ``:memory:`` as is)."""
    return uri.split(":///", 1)[1] if ":///" in uri else ""


def _default_sql_artifact_root(uri: str) -> str:
    """Where a SQL destination keeps new artifacts unless told: ``mlartifacts`` beside a
    sqlite file, else in the working directory (as ``mlflow server`` does)."""
    from pathlib import Path

    if uri.startswith("sqlite:"):
        path = _sqlite_file(uri)
        if path and path != ":memory:":
            return Path(os.path.abspath(path)).parent.joinpath("mlartifacts").as_uri()
    return Path(os.path.abspath("mlartifacts")).as_uri()


def _open_filestore(uri: str, role: str, artifact_root: str | None) -> Endpoint:
    import mlflow.store.model_registry.file_store as registry_module
    import mlflow.store.tracking.file_store as tracking_module

    path = local_path(uri)
    # MLflow 3.13+ refuses to open a FileStore unless MLFLOW_ALLOW_FILE_STORE is set; reading
    # one to move it elsewhere is exactly what that refusal asks users to do, so the check is
    # answered for these two constructions only (the process environment stays untouched).
    with _file_store_allowed(tracking_module, registry_module):
        tracking = tracking_module.FileStore(path)
        registry = registry_module.FileStore(path)
    return Endpoint(uri, "filestore", tracking, registry, "file://" + path, None)


class _Allowed:
    @staticmethod
    def get() -> bool:
        return True


@contextlib.contextmanager
def _file_store_allowed(*modules: Any) -> Iterator[None]:
    saved = [(m, getattr(m, "MLFLOW_ALLOW_FILE_STORE", None)) for m in modules]
    with _FILE_STORE_LOCK:
        try:
            for m, _ in saved:
                m.MLFLOW_ALLOW_FILE_STORE = _Allowed
            yield
        finally:
            for m, value in saved:
                m.MLFLOW_ALLOW_FILE_STORE = value


_FILE_STORE_LOCK = threading.Lock()


def _open_server(uri: str, role: str, artifact_root: str | None,
                 server_requests: int | None = None) -> Endpoint:
    from mlflow.tracking._model_registry.utils import _get_store as registry_store
    from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

    from cloudtrack.migrate.rest import GatedStore, ServerRequests

    if artifact_root:
        raise ConfigError("--artifact-root does not apply to an MLflow server: the server "
                          "decides where artifacts go")
    # Every request through one gate per server (see cloudtrack.migrate.rest).
    requests = ServerRequests(uri, redact_uri(uri), server_requests)
    return Endpoint(uri, "server", GatedStore(tracking_store(uri), requests),
                    GatedStore(registry_store(uri, uri), requests), uri, None, server=requests)
