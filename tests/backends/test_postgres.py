"""The service of ``backends/postgres`` itself: a throwaway PostgreSQL cluster on loopback, the
databases it hands out, MLflow's SQL store and a real MLflow server on them, and its cleanup."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

import backends
from backends._common import LOOPBACK
from backends.mlflow import MlflowServerPostgres
from backends.postgres import PostgresError, PostgresService


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((LOOPBACK, port)) != 0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_cleaned_up(pid: int, port: int, dirs: list[Path]) -> None:
    assert _gone(pid), f"postmaster {pid} still running"
    assert _refused(port), f"something still listens on {port}"
    for d in dirs:
        assert not d.exists(), f"{d} left behind"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresService]:
    svc = backends.load("postgres")()
    svc.start()
    assert svc.pid is not None and svc.workdir is not None and svc.log_dir is not None
    pid, port, dirs = svc.pid, svc.port, [svc.workdir, svc.log_dir]
    try:
        yield svc
    finally:
        svc.stop()
    _assert_cleaned_up(pid, port, dirs)


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


# -- the cluster ----------------------------------------------------------------------------

def test_listens_on_loopback_only(pg: PostgresService) -> None:
    listening = {c.laddr.ip for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == pg.port}
    assert listening == {LOOPBACK}


def test_never_runs_as_root(pg: PostgresService) -> None:
    assert pg.pid is not None
    postmaster = psutil.Process(pg.pid)
    uids = {postmaster.uids().real, postmaster.uids().effective}
    uids |= {c.uids().effective for c in postmaster.children()}
    assert 0 not in uids
    if os.geteuid() == 0:
        assert postmaster.username() == "postgres"


def test_url_is_passwordless_and_works(pg: PostgresService) -> None:
    assert pg.url == f"postgresql://postgres@{LOOPBACK}:{pg.port}/postgres"
    with _connect(pg.url) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


# -- databases ------------------------------------------------------------------------------

def test_new_databases_are_fresh_and_separate(pg: PostgresService) -> None:
    first, second = pg.new_database(), pg.new_database("named_db")
    assert first != second and second.endswith("/named_db")
    with _connect(first) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    with _connect(second) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables "
                              "WHERE schemaname = 'public'").fetchall()
    assert tables == []


def test_bad_or_taken_names_are_refused(pg: PostgresService) -> None:
    with pytest.raises(ValueError, match="database name"):
        pg.new_database('x"; DROP DATABASE postgres; --')
    pg.new_database("taken")
    with pytest.raises(PostgresError, match=r"'taken'.*already exists"):
        pg.new_database("taken")


# -- MLflow on it ---------------------------------------------------------------------------

def test_mlflow_sql_store_round_trip(pg: PostgresService, tmp_path: Path) -> None:
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(pg.new_database(), tmp_path.as_uri())
    try:
        exp = store.create_experiment("on-postgres")
        run = store.create_run(exp, "tester", 1_700_000_000_000, [], "r1")
        points = [Metric("loss", float("nan"), 1_700_000_000_123, 3),
                  Metric("loss", 0.25, 1_700_000_000_124, 4)]
        for m in points:
            store.log_metric(run.info.run_id, m)
        history = store.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.timestamp) for m in history] == [(3, 1_700_000_000_123),
                                                           (4, 1_700_000_000_124)]
        assert math.isnan(history[0].value) and history[1].value == 0.25
        assert store.get_run(run.info.run_id).info.start_time == 1_700_000_000_000
    finally:
        store.engine.dispose()


def test_mlflow_template_copies_are_migrated_and_independent(pg: PostgresService,
                                                             tmp_path: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    first, second = pg.new_mlflow_database(), pg.new_mlflow_database()
    # Already at MLflow's head revision before any store opens it, and with no experiment:
    # the store adds the default one with its own artifact root.
    with _connect(first) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    a = SqlAlchemyStore(first, (tmp_path / "a").as_uri())
    b = SqlAlchemyStore(second, (tmp_path / "b").as_uri())
    try:
        a.create_experiment("only-in-a")
        assert [e.name for e in a.search_experiments()] == ["only-in-a", "Default"]
        assert [e.name for e in b.search_experiments()] == ["Default"]
        assert b.get_experiment("0").artifact_location.startswith((tmp_path / "b").as_uri())
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_mlflow_server_on_postgres(pg: PostgresService) -> None:
    from mlflow.tracking import MlflowClient

    server = MlflowServerPostgres(postgres=pg)
    try:
        server.start()
        assert server.backend_store_uri.startswith(f"postgresql://postgres@{LOOPBACK}:{pg.port}/")
        client = MlflowClient(server.url)
        exp = client.create_experiment("via-server")
        run = client.create_run(exp, start_time=1_700_000_000_000)
        client.log_metric(run.info.run_id, "acc", 0.9, timestamp=1_700_000_000_001, step=7)
        client.log_text(run.info.run_id, "hello", "notes/hi.txt")
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics == {"acc": 0.9}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == \
            ["notes/hi.txt"]
        # The run really is in PostgreSQL.
        with _connect(server.backend_store_uri) as conn:
            rows = conn.execute("SELECT run_uuid, start_time FROM runs").fetchall()
        assert rows == [(run.info.run_id, 1_700_000_000_000)]
    finally:
        server.stop()
    assert pg.pid is not None and not _refused(pg.port), "a given cluster must stay up"


# -- life cycle -----------------------------------------------------------------------------

def test_stop_with_a_client_connected_shuts_down_and_cleans_up() -> None:
    svc = PostgresService()
    svc.start()
    assert svc.pid is not None and svc.workdir is not None and svc.log_dir is not None
    pid, port, dirs = svc.pid, svc.port, [svc.workdir, svc.log_dir]
    backends_pids = [c.pid for c in psutil.Process(pid).children()]
    held = _connect(svc.new_database())  # a "smart" shutdown would wait for it forever
    try:
        svc.stop()
    finally:
        held.close()
    svc.stop()  # twice is fine
    _assert_cleaned_up(pid, port, dirs)
    assert all(_gone(p) for p in backends_pids)
    with pytest.raises(PostgresError, match="not running"):
        svc.new_database()
