"""``cloudtrack migrate`` end to end, on the real services: what a team runs to move its history,
compared through MLflow's own client (ids, times and every point included); re-runs, an
interrupted migration, ``--verify``, ``--dry-run`` and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

from backends._common import free_port
from backends.proxy.latency import LatencyProxy
from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.migrate import migrate
from cloudtrack.migrate.model import SOURCE_MODEL_TAG, SOURCE_RUN_TAG, point_key, run_fingerprint
from tests.fixtures.services import Store, service
from tests.migrate.population import populate, snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An MLflow sqlite store filled by :func:`populate` (artifacts in a folder beside it)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/source.db"
    populate(uri)
    return uri


def use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def objects(uri: str) -> dict[str, str]:
    """Every object of a cloudtrack store with its version."""
    with open_blobs(resolve(uri)) as blobs:
        return {i.key: i.version for i in blobs.list("")}


def test_sqlite_into_each_backend_exactly(source: str, store: Store,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, store.env)
    report = migrate(source, store.uri, verify=True)
    assert report.ok, (report.failures, report.differences)
    assert report.copied["runs"] == 5 and report.copied["metric_points"] > 0
    assert snapshot(store.uri) == snapshot(source)

    before = objects(store.uri)
    again = migrate(source, store.uri)
    assert again.ok and not again.copied.get("runs") and again.unchanged["runs"] == 5
    assert objects(store.uri) == before, "a re-run over a migrated store wrote something"


def _migrate_counted(source: str, uri: str, env: dict[str, str],
                     monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """``migrate(source, uri)`` with moto behind a latency proxy; (its report, the proxy's
    counts).  The store's endpoint is moto's again afterwards."""
    endpoint = env["MLFLOW_S3_ENDPOINT_URL"]
    host, port = endpoint.rsplit("/", 1)[-1].rsplit(":", 1)
    with LatencyProxy(host, int(port)) as proxy:
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
        try:
            with proxy.counting() as cost:
                report = migrate(source, uri)
        finally:
            monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    return report, cost


def test_rerun_over_a_migrated_bucket_costs_a_few_requests(source: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = service("s3-noauth")
    uri = s3.new_store()
    use(monkeypatch, s3.env)
    assert migrate(source, uri).ok
    report, cost = _migrate_counted(source, uri, s3.env, monkeypatch)
    assert report.ok and not report.copied.get("runs")
    # Open the store (marker), list experiments, and per experiment the heads, the head pages
    # (a LIST, a GET per page holding one of its runs: at most 16), the logged models; then
    # the registry: a few requests, whatever the number of runs.
    assert cost.requests <= 40, cost


def test_rerun_reads_logged_models_from_their_pages(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run reads the migrated logged models from their pages (a migration pages what it
    writes): a few requests for 60 models.  It used to GET every model's record, so a sweep
    that logged a model per run paid a GET per run again."""
    monkeypatch.chdir(tmp_path)
    source = f"sqlite:///{tmp_path}/models.db"
    client = MlflowClient(source)
    exp = client.create_experiment("many-models")
    run = client.create_run(exp).info.run_id
    for i in range(60):
        model = client.create_logged_model(exp, name=f"model-{i}", source_run_id=run)
        client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(run)
    s3 = service("s3-noauth")
    uri = s3.new_store()
    use(monkeypatch, s3.env)
    first = migrate(source, uri)
    assert first.ok and first.copied["logged_models"] == 60, first.failures
    before = objects(uri)
    again, cost = _migrate_counted(source, uri, s3.env, monkeypatch)
    assert again.ok and not again.copied.get("logged_models")
    assert again.unchanged["logged_models"] == 60
    assert objects(uri) == before, "a re-run over a migrated store wrote something"
    # As in the test above: the marker, the experiments, the heads and their pages, the
    # models' listing and their pages' listing, a GET per page (at most 16 below 9,600
    # models), the registry: 32 here, where a GET per model made it 74.
    assert cost.requests <= 40, cost


def test_verify_catches_a_point_deleted_behind_its_back(source: str, tmp_path: Path) -> None:
    dest = str(tmp_path / "dest")
    assert migrate(source, dest).ok
    with open_blobs(resolve(dest)) as blobs:
        batch = next(i.key for i in blobs.list("history/"))
        blobs.delete(batch)
    report = migrate(source, dest, verify=True)
    assert not report.ok and report.exit_code == 1
    assert any("metric points differ" in d for d in report.differences or [])


@pytest.mark.parametrize("kind", ["local", "sqlite", "s3"])
def test_dry_run_writes_nothing(kind: str, source: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Not even the store itself: a dry run into a destination that is not there yet (a typo
    in a path or prefix, say) leaves nothing behind, and over a migrated one writes nothing."""
    if kind == "s3":
        s3 = service("s3-noauth")
        use(monkeypatch, s3.env)
        dest = s3.new_store()
        present = lambda: objects(dest)  # noqa: E731
    else:
        path = tmp_path / ("dest" if kind == "local" else "dest.db")
        dest = str(path) if kind == "local" else f"sqlite:///{path}"
        present = lambda: sorted(str(p) for p in tmp_path.rglob("dest*"))  # noqa: E731
    before = present()
    report = migrate(source, dest, dry_run=True)
    assert report.ok and report.copied["runs"] == 5 and report.copied["experiments"] == 2
    assert report.copied["model_versions"] == 4  # the model's 1 and 3, the prompt's 1 and 2
    assert report.copied["artifacts"] == 6 and report.bytes == 3 * (2048 + 6) + 0 + 1 + 2
    assert present() == before, "a dry run created its destination"

    assert migrate(source, dest).ok
    before = present() if kind != "sqlite" else (tmp_path / "dest.db").read_bytes()
    again = migrate(source, dest, dry_run=True)
    assert again.ok and not again.copied.get("runs") and again.unchanged["runs"] == 5
    after = present() if kind != "sqlite" else (tmp_path / "dest.db").read_bytes()
    assert after == before, "a dry run over a migrated store wrote something"


def test_one_experiment_named_twice_moves_once(source: str, tmp_path: Path) -> None:
    client = MlflowClient(source)
    exp = client.search_experiments(filter_string="name != 'Default'")[0]
    report = migrate(source, str(tmp_path / "dest"), registry=False,
                     experiments=[exp.name, exp.experiment_id, exp.name])
    runs = len(client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL))
    assert report.ok and report.copied["experiments"] == 1
    assert report.copied["runs"] == runs and not report.unchanged.get("runs")


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudtrack.cli", "migrate", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
                          env={**os.environ, **(env or {})})


def test_cli_json_report_and_exit_codes(source: str, tmp_path: Path) -> None:
    run = cli(source, str(tmp_path / "dest"), "--json", "--verify")
    assert run.returncode == 0, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["ok"] and report["copied"]["runs"] == 5 and report["verified"]
    assert report["differences"] == []

    unknown = cli("foo://bar", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "is not a store" in unknown.stderr
    missing = cli(f"sqlite:///{tmp_path}/nope.db", str(tmp_path / "y"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "y").exists(), "a failed migration created its destination"
    wrong = cli(source, str(tmp_path / "z"), "--experiment", "no-such-experiment")
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "no experiment named or numbered 'no-such-experiment'" in wrong.stderr
    assert not (tmp_path / "z").exists(), "a wrong --experiment created the destination"
    # --json: one object on stdout whatever happens, the error among its failures.
    wrong_json = cli(source, str(tmp_path / "z"), "--experiment", "no-such-experiment",
                     "--json")
    assert wrong_json.returncode == 2
    failed = json.loads(wrong_json.stdout)
    assert not failed["ok"] and failed["copied"] == {}
    assert "no-such-experiment" in failed["failures"][0]["error"]
    gone = cli(source, f"http://127.0.0.1:{free_port()}", "--json", timeout=240)
    assert gone.returncode == 1 and not json.loads(gone.stdout)["ok"]


def test_a_store_is_not_migrated_into_itself_or_into_itself_nested(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "dest"
    assert cli(source, str(dest)).returncode == 0
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    spelled = source.replace(f"sqlite:///{tmp_path}/", "sqlite:///")  # relative to cwd
    s3 = service("s3-noauth")
    bucket = s3.new_store()
    for src, dst, says in [
            (source, spelled, "are the same store"),
            (str(dest), dest.as_uri() + "/", "are the same store"),
            (str(dest), str(dest / "inner"), "is inside SOURCE"),
            (str(dest / "inner"), str(dest), "is inside DEST"),
            (bucket, bucket.rstrip("/") + "/inner", "is inside SOURCE")]:
        run = subprocess.run([sys.executable, "-m", "cloudtrack.cli", "migrate", src, dst],
                             capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                             env={**os.environ, **s3.env})
        assert run.returncode == 2 and says in run.stderr, (src, dst, run.stderr)
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert after == before
    use(monkeypatch, s3.env)
    assert objects(bucket) == {}


def test_interrupted_with_ctrl_c_says_how_to_go_on(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = f"sqlite:///{tmp_path}/many.db"
    client = MlflowClient(source)
    exp = client.create_experiment("many")
    for i in range(300):
        run = client.create_run(exp).info.run_id
        client.log_batch(run, metrics=[Metric("m", float(i), 1, s) for s in range(50)])
    dest = tmp_path / "dest"
    proc = subprocess.Popen([sys.executable, "-m", "cloudtrack.cli", "migrate", source,
                             str(dest), "--workers", "1"], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(dest.glob("heads/*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "run the same command again" in err and "Traceback" not in err, err
    again = migrate(source, str(dest), verify=True)
    assert again.ok and again.copied["runs"] + again.unchanged["runs"] == 300


def test_destination_without_permission_fails_fast_with_the_cause(source: str) -> None:
    moto = service("s3")
    uri = moto.new_store()
    started = time.monotonic()
    run = cli(source, uri, env={**moto.env, **moto.read_only_env()})  # type: ignore[attr-defined]
    assert run.returncode == 1, run.stdout + run.stderr
    assert time.monotonic() - started < 60
    assert "cloudtrack doctor" in run.stderr and "permission" in run.stderr.lower(), run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("end", ["source", "dest"])
def test_a_server_nothing_answers_at_fails_in_seconds(end: str, source: str,
                                                      tmp_path: Path) -> None:
    """MLflow's REST client retries a refused connection with backoff for about four minutes
    (this took 4 min 10 s before the first request got a short timeout of its own)."""
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    local = tmp_path / "store"
    started = time.monotonic()
    run = cli(*((gone, str(local)) if end == "source" else (source, gone)), timeout=240)
    took = time.monotonic() - started
    assert run.returncode == 1, run.stdout + run.stderr
    assert took < 60, f"{took:.0f} s to give up on {gone}"
    shown = "source" if end == "source" else "destination"
    assert f"cannot open {shown} {gone}" in run.stderr, run.stderr
    assert "connection-refused" in run.stderr and "cloudtrack doctor" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not local.exists(), "a migration that could not start created its destination"


def test_a_sqlite_file_given_as_a_directory_is_named_back_as_a_sqlite_uri(
        tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("e")
    for args, end in (((str(db), str(tmp_path / "dest")), "source"),
                      ((f"sqlite:///{db}", str(db)), "destination")):
        before = db.read_bytes()
        run = cli(*args)
        assert run.returncode == 2, run.stdout + run.stderr
        assert f"{end} {db}: {db} is a SQLite database" in run.stderr, run.stderr
        assert f"sqlite:///{db}" in run.stderr
        assert db.read_bytes() == before
    other = tmp_path / "notes.txt"
    other.write_text("x")
    run = cli(str(other), str(tmp_path / "dest"))
    assert run.returncode == 2 and f"{other} is a file, not a store directory" in run.stderr
    assert not (tmp_path / "dest").exists()


class _StopAfter:
    """A progress that takes a callable down once ``runs`` runs are done."""

    def __init__(self, runs: int, stop: Any) -> None:
        self.runs, self.stop, self.done = runs, stop, 0
        self.lock = threading.Lock()
        self.stopped_at: float | None = None

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            if self.done >= self.runs and self.stopped_at is None:
                self.stopped_at = time.monotonic()
                threading.Thread(target=self.stop, daemon=True).start()

    def finish(self) -> None:
        pass


def test_a_destination_that_stops_answering_stops_the_migration_which_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket goes away mid-migration (its endpoint refuses connections): the migration
    stops after STOP_AFTER runs failed in a row for want of an answer and says how to go on,
    instead of spending a retry budget on every run left; the same command then finishes
    exactly."""
    from cloudtrack.migrate.runner import STOP_AFTER

    monkeypatch.chdir(tmp_path)
    source = f"sqlite:///{tmp_path}/many.db"
    populate(source, runs=90, points=5)
    client = MlflowClient(source)
    total = len(client.search_runs([e.experiment_id for e in client.search_experiments(
        view_type=ViewType.ALL)], run_view_type=ViewType.ALL))
    s3 = service("s3-noauth")
    uri = s3.new_store()
    use(monkeypatch, s3.env)
    endpoint = s3.env["MLFLOW_S3_ENDPOINT_URL"]
    host, port = endpoint.rsplit("/", 1)[-1].rsplit(":", 1)
    with LatencyProxy(host, int(port), 5.0) as proxy:
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
        progress = _StopAfter(10, proxy.stop)
        from cloudtrack.migrate.runner import migrate as run_migration

        report = run_migration(source, uri, workers=2, progress=progress)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    assert progress.stopped_at is not None
    assert time.monotonic() - progress.stopped_at < 90
    assert not report.ok and report.exit_code == 1
    stops = [f for f in report.failures if f.kind == "migration"]
    assert len(stops) == 1, report.failures
    assert "stopped" in stops[0].error and "run the same command" in stops[0].error, stops
    failed_runs = [f for f in report.failures if f.kind == "run"]
    assert STOP_AFTER <= len(failed_runs) <= STOP_AFTER + 2, len(failed_runs)
    assert f"{total - report.copied['runs'] - len(failed_runs)} run(s)" in stops[0].error
    assert report.copied["runs"] < total - STOP_AFTER
    again = migrate(source, uri, verify=True)
    assert again.ok, (again.failures, again.differences)
    assert again.copied["runs"] + again.unchanged["runs"] == total
    assert snapshot(uri) == snapshot(source)


def test_what_says_a_store_did_not_answer() -> None:
    """The errors that count towards stopping a migration, and those that do not (a store that
    answered, whatever it said)."""
    import requests
    from mlflow.exceptions import MlflowException

    from cloudtrack.errors import PermissionDenied, TransientError
    from cloudtrack.migrate.runner import unanswered

    def wrapped(inner: BaseException) -> MlflowException:
        """As mlflow.utils.rest_utils.http_request raises it: in the except, with no cause."""
        try:
            try:
                raise inner
            except Exception as e:
                raise MlflowException(f"API request failed with exception {e}")  # noqa: B904
        except MlflowException as outer:
            return outer

    assert unanswered(TransientError("GET x failed after 5 attempts", "s3://b/x"))
    assert unanswered(wrapped(requests.exceptions.ConnectionError("refused")))
    assert unanswered(wrapped(requests.exceptions.RetryError("too many 503 error responses")))
    assert not unanswered(MlflowException("Run 'x' not found"))
    assert not unanswered(PermissionDenied("PUT x: access denied", "s3://b/x"))
    assert not unanswered(ValueError("bad value"))


def test_killed_mid_migration_then_rerun_finishes_exactly(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = f"sqlite:///{tmp_path}/big.db"
    populate(source, runs=40, points=200)
    dest = str(tmp_path / "dest")
    proc = subprocess.Popen([sys.executable, "-m", "cloudtrack.cli", "migrate", source, dest,
                             "--workers", "2"], cwd=str(ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    heads = Path(dest) / "heads"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if heads.exists() and sum(1 for _ in heads.rglob("*.json")) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the migration finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report = migrate(source, dest, verify=True)
    assert report.ok, (report.failures, report.differences)
    assert report.unchanged["runs"] >= 1 and report.copied["runs"] >= 1
    assert snapshot(dest) == snapshot(source)


@pytest.mark.parametrize("pair", ["local->sqlite", "local->s3", "s3->gcs", "gcs->azure"])
def test_cloudtrack_to_cloudtrack_and_sql(pair: str, source: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """cloudtrack stores as source, into another backend or a sqlite file."""
    names = {"s3": "s3-noauth", "gcs": "gcs", "azure": "azure"}

    def make(name: str) -> str:
        if name == "local":
            return str(tmp_path / f"store-{len(list(tmp_path.iterdir()))}")
        if name == "sqlite":
            return f"sqlite:///{tmp_path}/dest.db"
        svc = service(names[name])
        use(monkeypatch, svc.env)
        return svc.new_store()

    first, second = pair.split("->")
    middle, target = make(first), make(second)
    assert migrate(source, middle).ok
    report = migrate(middle, target, verify=True)
    assert report.ok, (report.failures, report.differences)
    assert snapshot(target) == snapshot(source)


def test_cloudtrack_to_cloudtrack_on_one_s3_endpoint_copies_artifacts_server_side(
        source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two buckets behind one endpoint, one set of keys: S3 copies every artifact itself, so
    what crosses the wire is the records, not the artifacts' bytes."""
    s3 = service("s3-noauth")
    use(monkeypatch, s3.env)
    middle, target = s3.new_store("middle"), s3.new_store("target")
    first = migrate(source, middle)
    assert first.ok
    big = os.urandom(4 * 1024 * 1024)
    with open_blobs(resolve(middle)) as blobs:
        # artifacts/<experiment>/<run>/artifacts/<path>: a run's artifact folder.
        folder = next(i.key.rsplit("/", 1)[0] for i in blobs.list("artifacts/")
                      if i.key.split("/")[3:4] == ["artifacts"])
        blobs.put(f"{folder}/weights.bin", big)
    host, port = s3.env["MLFLOW_S3_ENDPOINT_URL"].rsplit("/", 1)[-1].rsplit(":", 1)
    with LatencyProxy(host, int(port)) as proxy:
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
        with proxy.counting() as cost:
            report = migrate(middle, target, verify=True)
    use(monkeypatch, s3.env)
    assert report.ok, (report.failures, report.differences)
    assert report.copied["artifacts"] == first.copied["artifacts"] + 1
    assert report.bytes == first.bytes + len(big)
    assert cost.bytes_down < len(big) // 4 and cost.bytes_up < len(big) // 4, cost
    with open_blobs(resolve(target)) as blobs:
        assert blobs.get(f"{folder}/weights.bin") == big
    with open_blobs(resolve(middle)) as blobs:
        blobs.delete(f"{folder}/weights.bin")
    assert snapshot(target) != snapshot(source)  # the extra artifact
    with open_blobs(resolve(target)) as blobs:
        blobs.delete(f"{folder}/weights.bin")
    assert snapshot(target) == snapshot(source)


def test_filestore_into_cloudtrack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to write it, as MLflow < 3.13 did
    from mlflow.store.tracking.file_store import FileStore

    mlruns = tmp_path / "mlruns"
    FileStore(str(mlruns))  # MLflow's own FileStore, as `./mlruns` from MLflow < 3.13
    client = MlflowClient(tracking_uri=str(mlruns))
    exp = client.create_experiment("legacy")
    run = client.create_run(exp, start_time=1_500_000_000_000, run_name="old")
    client.log_metric(run.info.run_id, "loss", 0.25, timestamp=1_500_000_000_001, step=3)
    client.log_param(run.info.run_id, "lr", "0.1")
    client.set_terminated(run.info.run_id, end_time=1_500_000_000_002)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # migrate reads it without the opt-out
    dest = str(tmp_path / "bucket-like")
    report = migrate(str(mlruns), dest, verify=True, registry=False)
    assert report.ok, (report.failures, report.differences)
    copy = MlflowClient(tracking_uri=dest).get_run(run.info.run_id)
    assert (copy.info.start_time, copy.info.end_time) == (1_500_000_000_000, 1_500_000_000_002)
    history = MlflowClient(tracking_uri=dest).get_metric_history(run.info.run_id, "loss")
    assert [(m.value, m.timestamp, m.step) for m in history] == [(0.25, 1_500_000_000_001, 3)]


@pytest.fixture
def mlflow_server() -> Any:
    """A fresh MLflow server on sqlite (its own, so experiment names do not collide)."""
    from backends.mlflow.service import MlflowServer

    server = MlflowServer()
    server.start()
    yield server
    server.stop()


def test_server_on_postgres_into_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where most teams start: an MLflow server on PostgreSQL, its artifacts proxied."""
    from backends.mlflow.service import MlflowServerPostgres
    from backends.postgres.service import PostgresService

    pg = service("postgres")
    assert isinstance(pg, PostgresService)
    server = MlflowServerPostgres(postgres=pg)
    server.start()
    try:
        populate(server.url)
        s3 = service("s3-noauth")
        dest = s3.new_store()
        use(monkeypatch, s3.env)
        report = migrate(server.url, dest, verify=True)
        assert report.ok, (report.failures, report.differences)
        assert snapshot(dest) == snapshot(server.url)
    finally:
        server.stop()


def test_postgresql_directly_into_gcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.postgres.service import PostgresService

    pg = service("postgres")
    assert isinstance(pg, PostgresService)
    monkeypatch.chdir(tmp_path)
    uri = pg.new_mlflow_database()
    populate(uri)
    gcs = service("gcs")
    dest = gcs.new_store()
    use(monkeypatch, gcs.env)
    report = migrate(uri, dest, verify=True)
    assert report.ok, (report.failures, report.differences)
    assert snapshot(dest) == snapshot(uri)


def test_a_database_that_cannot_be_reached_or_is_missing_fails_in_seconds(
        source: str, tmp_path: Path) -> None:
    """MLflow's SQL store tries a failed connection ten times with backoff (1 min 48 s here
    before the first connection got a timeout of its own); the password never shows."""
    from backends.postgres.service import PostgresService

    pg = service("postgres")
    assert isinstance(pg, PostgresService)
    real = pg.new_database()
    missing = real.rsplit("/", 1)[0] + "/no_such_database"
    closed = f"postgresql://someone:s3cret-pw@127.0.0.1:{free_port()}/mlflow"
    for uri, says in ((missing, '"no_such_database" does not exist'),
                      (closed, "Connection refused")):
        for args, end in (((uri, str(tmp_path / "dest")), "source"),
                          ((source, uri), "destination")):
            started = time.monotonic()
            run = cli(*args)
            took = time.monotonic() - started
            out = run.stdout + run.stderr
            assert run.returncode == 1, out
            assert took < 45, f"{took:.0f} s to give up on {uri}"
            assert f"cannot open {end} " in run.stderr and says in run.stderr, run.stderr
            assert "fix: check that the database server runs" in run.stderr
            assert "s3cret-pw" not in out and "Traceback" not in out
            assert "will be retried" not in out
    assert not (tmp_path / "dest").exists()


def test_cloudtrack_into_a_server_keeps_what_a_server_can(
        source: str, tmp_path: Path, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # where the id map goes
    store = str(tmp_path / "store")
    assert migrate(source, store).ok
    report = migrate(store, mlflow_server.url, verify=True)
    assert report.ok, (report.failures, report.differences)
    # A server chooses run and model ids: the copies are matched by name, and every id that
    # changed is in the id map.
    assert snapshot(mlflow_server.url, with_ids=False) == snapshot(source, with_ids=False)
    assert report.id_map and Path(report.id_map).is_relative_to(tmp_path / "state")
    ids = json.loads(Path(report.id_map).read_text())
    assert len(ids["runs"]) == 5
    writes = _writes(monkeypatch)
    again = migrate(store, mlflow_server.url)
    assert again.ok and not again.copied.get("runs") and again.unchanged["runs"] == 5
    assert again.unchanged["logged_models"] == 1 and not again.copied.get("logged_models")
    # Reads only: not even the deleted experiment is restored and deleted again.
    assert writes == []


# -- MLflow servers under many workers ----------------------------------------------------------

#: A pool of 9 connections (MLflow's default is 5 + 10): room for the migration's 8 requests in
#: flight per server, each holding at most one connection while it waits for another.
SMALL_POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "4", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "5"}


def test_server_to_server_with_many_workers_and_small_pools_copies_each_run_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's handlers hold one pool connection while they open another (``create_run``
    reads its experiment inside its session; a ``log_batch`` carrying the run name nests four
    sessions), so requests at once can take every connection while each waits for one more,
    and after the pool's 30 s the server answers ``QueuePool limit … reached`` (6 of 300 runs
    failed so in the server -> server benchmark, with 8 workers and the default pool).  With
    32 workers here, the migration still keeps 8 requests in flight per server, none nesting
    deeper than two sessions: every run arrives, once, exactly."""
    from backends.mlflow.service import MlflowServer

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # where the id map goes
    servers = [MlflowServer(extra_env=SMALL_POOL) for _ in range(2)]
    try:
        for srv in servers:
            srv.launch()
        for srv in servers:
            srv.wait_ready()
        src, dst = (srv.url for srv in servers)
        client = MlflowClient(tracking_uri=src)
        exp = client.create_experiment("busy", tags={"team": "x"})
        runs = 48
        for i in range(runs):
            run_id = client.create_run(exp, start_time=1_600_000_000_000 + i,
                                       run_name=f"run-{i}", tags={"kind": "sweep"}).info.run_id
            client.log_batch(run_id, params=[Param(f"p{j}", str(i * j)) for j in range(5)],
                             tags=[RunTag("seed", str(i))],
                             metrics=[Metric(f"m{j}", (i + s) / (j + 1), 1_600_000_000_000 + s, s)
                                      for j in range(5) for s in range(20)])
            client.set_terminated(run_id, "FINISHED", end_time=1_600_000_001_000 + i)

        report = migrate(src, dst, workers=32, registry=False)
        assert report.ok, f"{len(report.failures)} failed: {report.failures[:3]}"
        assert report.copied["runs"] == runs and report.copied["metric_points"] == runs * 100

        theirs = {r.info.run_id: r for r in client.search_runs([exp], max_results=1000)}
        ours = MlflowClient(tracking_uri=dst)
        copy_exp = ours.get_experiment_by_name("busy")
        assert copy_exp is not None
        # Every lifecycle stage: a duplicate retired by a later look would still be there.
        copies = ours.search_runs([copy_exp.experiment_id], run_view_type=ViewType.ALL,
                                  max_results=1000)
        assert len(copies) == runs
        by_source = {c.data.tags[SOURCE_RUN_TAG]: c for c in copies}
        assert by_source.keys() == theirs.keys()
        for run_id, copy in by_source.items():
            assert run_fingerprint(copy) == run_fingerprint(theirs[run_id])
            for key in ("m0", "m4"):
                assert sorted(point_key(m) for m in ours.get_metric_history(
                    copy.info.run_id, key)) == sorted(point_key(m) for m in
                                                      client.get_metric_history(run_id, key))
    finally:
        for srv in servers:
            srv.stop()


def test_server_requests_bounds_the_requests_in_flight(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``server_requests`` (``--server-requests``) is the most requests a server gets at once,
    whatever the workers: a server with a pool of 1 + 1 connections takes a migration of 16
    workers at 1 in flight, and never sees 2."""
    import threading

    import mlflow.utils.rest_utils as rest_utils

    from backends.mlflow.service import MlflowServer

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    in_flight, peak, lock = 0, 0, threading.Lock()
    real = rest_utils.http_request

    def observed(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            time.sleep(0.01)  # room for a second request to overlap, were it let through
            return real(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(rest_utils, "http_request", observed)
    # MLflow's artifact repositories hold a name of their own for it: their requests (the
    # proxied artifacts of the runs) count too.
    import mlflow.store.artifact.http_artifact_repo as http_artifact_repo

    monkeypatch.setattr(http_artifact_repo, "http_request", observed)
    server = MlflowServer(extra_env={"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "1",
                                     "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "1"})
    try:
        server.launch()
        server.wait_ready()
        report = migrate(source, server.url, workers=16, server_requests=1)
        assert report.ok, report.failures[:3]
        assert report.copied["runs"] == 5 and report.copied["artifacts"] > 0
        assert peak == 1, f"{peak} requests in flight at once"
    finally:
        server.stop()
    bad = cli(source, str(tmp_path / "never"), "--server-requests", "0")
    assert bad.returncode == 2 and "--server-requests" in bad.stderr


# -- logged models that change after a migration ------------------------------------------------

def _writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request to an MLflow server that may write, as ``METHOD endpoint``, from now on.
    Observed, not replaced: each request still goes to the server."""
    import mlflow.store.artifact.http_artifact_repo as artifact_repo
    import mlflow.utils.rest_utils as rest_utils

    seen: list[str] = []
    real = rest_utils.http_request

    def observed(host_creds: Any, endpoint: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if method != "GET" and not endpoint.endswith("/search"):  # searches are POSTs
            seen.append(f"{method} {endpoint}")
        return real(host_creds, endpoint, method, *args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", observed)
    monkeypatch.setattr(artifact_repo, "http_request", observed)
    return seen


def _state(dest: str) -> Any:
    """What a re-run that writes nothing leaves as it was: a cloudtrack store's objects with
    their versions, a sqlite file's every row."""
    if dest.startswith("sqlite:///"):
        import sqlite3

        connection = sqlite3.connect(dest.removeprefix("sqlite:///"))
        try:
            return list(connection.iterdump())
        finally:
            connection.close()
    return objects(dest)


def _model_view(model: Any, *, exact: bool) -> dict[str, Any]:
    """A logged model as MlflowClient reads it; ``exact`` adds what a server sets itself."""
    view = {
        # A server answers "" for no type.
        "name": model.name, "model_type": model.model_type or None, "status": str(model.status),
        "tags": {k: v for k, v in model.tags.items() if k != SOURCE_MODEL_TAG},
        "params": model.params,
        "metrics": sorted((m.key, m.value, m.step, m.timestamp) for m in model.metrics or []),
    }
    if exact:
        view.update(model_id=model.model_id, creation=model.creation_timestamp,
                    updated=model.last_updated_timestamp, message=model.status_message,
                    run=model.source_run_id)
    return view


@pytest.mark.parametrize("kind", ["cloudtrack", "sqlite", "server"])
def test_changed_logged_models_follow_the_source_and_unchanged_ones_cost_no_write(
        kind: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    """After a migration a logged model gets new and changed tags, loses one, gets a param and
    a metric and goes from PENDING to READY; another gets a changed tag.  The next migration
    carries all of it over, into the same copies (ids kept), and the one after writes
    nothing."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    dest = {"cloudtrack": str(tmp_path / "store"), "sqlite": f"sqlite:///{tmp_path}/dest.db",
            "server": ""}[kind]
    if kind == "server":
        dest = request.getfixturevalue("mlflow_server").url
    exact = kind != "server"
    client = MlflowClient(tracking_uri=source)
    exp = client.get_experiment_by_name("vision")
    assert exp is not None
    first_run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])[0]
    late = client.create_logged_model(exp.experiment_id, name="late",
                                      source_run_id=first_run.info.run_id,
                                      tags={"a": "1", "b": "2"}, params={"p": "1"})
    assert str(late.status) == "PENDING"
    assert migrate(source, dest).ok
    ours = MlflowClient(tracking_uri=dest)

    def copies() -> dict[str, Any]:
        """Source model id -> its copy, read back through MlflowClient."""
        [copy_exp] = [e for e in ours.search_experiments() if e.name == "vision"]
        found = ours.search_logged_models([copy_exp.experiment_id])
        return {m.tags.get(SOURCE_MODEL_TAG, m.model_id): m for m in found}

    before = {k: m.model_id for k, m in copies().items()}
    assert str(copies()[late.model_id].status) == "PENDING"

    client.set_logged_model_tags(late.model_id, {"a": "changed", "c": "new"})
    client.delete_logged_model_tag(late.model_id, "b")
    client.log_model_params(late.model_id, {"q": "2"})
    client.log_metric(first_run.info.run_id, "late_acc", 0.75, timestamp=first_run.info.start_time
                      + 50, step=4, model_id=late.model_id)
    client.finalize_logged_model(late.model_id, "READY")
    other = next(m for m in client.search_logged_models([exp.experiment_id])
                 if m.model_id != late.model_id)
    client.set_logged_model_tags(other.model_id, {"stage": "prod"})

    report = migrate(source, dest)
    assert report.ok, report.failures
    assert report.copied["logged_models"] == 2 and not report.unchanged.get("logged_models")
    theirs = {m.model_id: m for m in client.search_logged_models([exp.experiment_id])}
    got = copies()
    assert {k: m.model_id for k, m in got.items()} == before  # the same copies
    assert {k: _model_view(m, exact=exact) for k, m in got.items()} == {
        k: _model_view(m, exact=exact) for k, m in theirs.items()}
    for source_id, copy in got.items():  # get_logged_model agrees with the search
        assert _model_view(ours.get_logged_model(copy.model_id), exact=exact) == \
            _model_view(theirs[source_id], exact=exact)
    assert str(got[late.model_id].status) == "READY"
    assert got[late.model_id].tags.get("b") is None and got[other.model_id].tags["stage"] == "prod"

    # Unchanged since: nothing is written.
    state = _state(dest) if kind != "server" else None
    writes = _writes(monkeypatch)
    again = migrate(source, dest)
    assert again.ok, again.failures
    assert not again.copied.get("logged_models") and again.unchanged["logged_models"] == 2
    assert not again.copied.get("runs")
    if kind == "server":
        assert writes == []
    else:
        assert _state(dest) == state, "a re-run over an unchanged source wrote something"

    # A point for a model, logged through a run whose latest values stay what they were (an
    # older step): the run's fingerprint is unchanged, the model's is not.  The copy gets the
    # point, on the model and in the run's history, as the source holds it.
    key = sorted(first_run.data.metrics)[0]
    client.log_metric(first_run.info.run_id, key, 0.125, timestamp=first_run.info.start_time + 1,
                      step=-5, model_id=other.model_id)
    report = migrate(source, dest)
    assert report.ok, report.failures
    # The run the point came through is compared point by point (and brought up to date).
    assert report.copied["logged_models"] == 1 and report.copied.get("runs") == 1
    theirs = {m.model_id: m for m in client.search_logged_models([exp.experiment_id])}
    assert {k: _model_view(m, exact=exact) for k, m in copies().items()} == {
        k: _model_view(m, exact=exact) for k, m in theirs.items()}
    [copy_run] = [r for r in ours.search_runs(
        [e.experiment_id for e in ours.search_experiments() if e.name == "vision"],
        run_view_type=ViewType.ALL, max_results=1000)
        if r.data.tags.get(SOURCE_RUN_TAG, r.info.run_id) == first_run.info.run_id]
    assert sorted(point_key(m) for m in ours.get_metric_history(copy_run.info.run_id, key)) == \
        sorted(point_key(m) for m in client.get_metric_history(first_run.info.run_id, key))


@pytest.mark.parametrize(("source", "dest", "apart"), [
    ("wasbs://cont@acct1.blob.core.windows.net/p", "wasbs://cont@acct2.blob.core.windows.net/p",
     True),
    ("wasbs://cont@acct1.blob.core.windows.net/p", "abfss://cont@acct1.dfs.core.windows.net/p",
     False),
    ("wasbs://cont@acct1.blob.core.windows.net", "wasbs://cont@acct1.blob.core.windows.net/a",
     False),
    ("gs://bkt/team", "gs://bkt/team-b", True),
    ("gs://bkt/team", "gs://bkt/team/b", False),
    ("s3://bkt/p", "s3://other/p", True),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5001", True),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/", False),
])
def test_which_ends_are_one_store(source: str, dest: str, apart: bool) -> None:
    """Only the URIs are compared (nothing is opened): one container name in two accounts,
    or a prefix that merely starts like another, is two stores."""
    from cloudtrack.errors import ConfigError
    from cloudtrack.migrate.endpoints import check_apart

    if apart:
        check_apart(source, dest)
    else:
        with pytest.raises(ConfigError):
            check_apart(source, dest)
