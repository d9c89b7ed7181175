"""A network that is down when the job ends: buffered data is kept in a local journal (0600
files, no secret), and written exactly once — by ``cloudtrack flush`` or by the next process that
logs to the same store, and only into the store it was written for.

The logging processes are real: a plain MLflow script (``mlflow.start_run()``, ``log_param``,
``log_metric``, nothing else) logs to ``s3://…`` through the fault proxy, which starts refusing
every request (a reset before anything is forwarded) once the script has logged its first
points and before it exits.  ``XDG_CACHE_HOME`` is the test's own folder: nothing touches the
real home.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from cloudtrack.cli import main
from cloudtrack.config import resolve
from cloudtrack.tracking import BlobTrackingStore
from cloudtrack.tracking.flusher import Pending
from cloudtrack.tracking.journal import VERSION, journal_root, journaled_stores
from tests.fixtures.faults import FaultyFactory, FaultyStore

ROOT = Path(__file__).resolve().parents[2]
SECRET = "zz-Distinctive-Secret-4f9c1e-do-not-journal"
#: Small waits keep the tests fast; the bounds asserted are derived from them.
QUICK = {"CLOUDTRACK_CONNECT_TIMEOUT": "1", "CLOUDTRACK_READ_TIMEOUT": "1",
         "CLOUDTRACK_RETRY_DEADLINE": "3"}
#: Seconds any exit may take beyond its one wait for the store: interpreter teardown (about 2 s
#: on a loaded 2-core machine), and a margin for a machine shared with other tests.
SLACK = 6.0

#: A plain MLflow script: logs, waits for a line on stdin (the test takes the store down
#: then), logs more, and exits without ending its run (MLflow ends it at exit).
SCRIPT = textwrap.dedent("""
    import sys
    import mlflow

    run = mlflow.start_run()
    mlflow.log_param("alpha", "0.5")
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    print(run.info.run_id, flush=True)
    sys.stdin.readline()
    for step in range(5, 10):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_param("beta", "2")
""")


@dataclass
class Finished:
    """What a logging script did: its run, exit status, stderr, and seconds from the moment
    the store went down to its exit."""

    run_id: str
    returncode: int
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def script_env(uri: str, service_env: dict[str, str], cache: Path,
               **extra: str) -> dict[str, str]:
    """The environment of a process logging to ``uri`` (reached with ``service_env``), with a
    secret key that must never reach the journal (moto without IAM takes any key), and the
    user's cache directory in ``cache``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "CLOUDTRACK_", "AWS_"))}
    env.update(service_env)
    env.update({"MLFLOW_TRACKING_URI": uri, "AWS_SECRET_ACCESS_KEY": SECRET,
                "XDG_CACHE_HOME": str(cache),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])})
    env.update(QUICK)
    env.update(extra)
    return env


def run_script(env: dict[str, str], take_down: Any, script: str = SCRIPT,
               timeout: float = 120) -> Finished:
    """Run ``script``; call ``take_down()`` once it has logged its first points."""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        run_id = proc.stdout.readline().strip()
        time.sleep(1.2)  # one background pass writes the first points
        take_down()
        t0 = time.monotonic()
        proc.stdin.write("\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=timeout)
        return Finished(run_id, proc.returncode, err, time.monotonic() - t0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cloudtrack(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cloudtrack.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def flush(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = cloudtrack(env, "flush", *args)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def refuse_everything(fs: FaultyStore) -> None:
    fs.proxy.configure(rate=1.0)


def come_back(fs: FaultyStore) -> None:
    fs.proxy.configure(rate=0.0)


@pytest.fixture
def down(faulty: FaultyFactory) -> FaultyStore:
    """A store behind a proxy that refuses every request once told to (reset before
    forwarding: the network is down)."""
    return faulty("s3-noauth", rate=0.0, kinds=["reset_before"])


@pytest.fixture
def reader(down: FaultyStore, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """A clean MlflowClient of the store, straight to the service (not through the proxy)."""
    for k, v in down.direct_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "reader-cache"))
    yield MlflowClient(tracking_uri=down.uri)


def the_journal(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "cloudtrack").rglob("*") if p.is_file())


def assert_written_once(client: MlflowClient, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.data.params == {"alpha": "0.5", "beta": "2"}
    assert RunStatus.to_string(RunStatus.FINISHED) == run.info.status
    assert run.info.end_time is not None
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(10)), "every point exactly once"
    assert run.data.metrics["loss"] == pytest.approx(0.1)


# -- kept at exit, written by `cloudtrack flush` --------------------------------------------------


def test_a_store_down_at_exit_keeps_the_data_in_the_journal_until_cloudtrack_flush(
        down: FaultyStore, reader: MlflowClient, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = script_env(down.uri, down.env, cache)
    done = run_script(env, lambda: refuse_everything(down))

    # Exit waits for the store once (one retry deadline), and says where the data is, once.
    assert done.returncode == 0, done.stderr
    assert done.seconds < float(QUICK["CLOUDTRACK_RETRY_DEADLINE"]) + SLACK, done.seconds
    assert "Traceback" not in done.stderr
    kept = [line for line in done.lines if "kept in" in line]
    folder = cache / "cloudtrack" / "journal"
    assert len(kept) == 1, done.stderr
    assert str(folder) in kept[0] and kept[0].endswith(f"cloudtrack flush {down.uri}")
    others = [line for line in done.lines if line not in kept]
    assert all(" attempt " in line and down.uri in line for line in others), done.stderr
    assert len(others) <= 4, done.stderr  # one per retry of one write: 5 attempts

    # Private, and no secret in it.
    files = the_journal(cache)
    assert len(files) >= 2, files  # store.json and the run's entry
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert SECRET.encode() not in f.read_bytes(), f
    for d in [p for p in (cache / "cloudtrack").rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d

    come_back(down)
    assert reader.get_run(done.run_id).info.status == "RUNNING", "not written yet"
    first = flush(env)
    assert first.returncode == 0, first.stderr
    assert down.uri in first.stdout and "wrote " in first.stdout, first.stdout
    assert_written_once(reader, done.run_id)
    assert [p.name for p in the_journal(cache)] == ["store.json"]

    second = CliRunner().invoke(main, ["flush", down.uri, "--json"], env=env)
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["entries_written"] == 0
    assert_written_once(reader, done.run_id)


def test_the_next_process_that_logs_to_the_store_writes_the_journal(
        down: FaultyStore, reader: MlflowClient, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = script_env(down.uri, down.env, cache)
    first = run_script(env, lambda: refuse_everything(down))
    assert first.returncode == 0 and len(the_journal(cache)) == 2, first.stderr

    come_back(down)
    second = run_script(env, lambda: None)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    assert [p.name for p in the_journal(cache)] == ["store.json"]
    assert_written_once(reader, first.run_id)
    assert_written_once(reader, second.run_id)


def test_a_strict_process_writes_the_journal_too(down: FaultyStore, reader: MlflowClient,
                                                tmp_path: Path) -> None:
    """A strict-mode process (``mlflow server`` is one) never buffers, yet it is the next
    process logging to the store: it writes what an earlier process kept, exactly once."""
    cache = tmp_path / "cache"
    env = script_env(down.uri, down.env, cache)
    first = run_script(env, lambda: refuse_everything(down))
    assert first.returncode == 0 and len(the_journal(cache)) == 2, first.stderr

    come_back(down)
    second = run_script({**env, "CLOUDTRACK_STRICT": "true"}, lambda: None)
    assert second.returncode == 0, second.stderr
    assert [p.name for p in the_journal(cache)] == ["store.json"]
    assert_written_once(reader, first.run_id)
    assert_written_once(reader, second.run_id)


# -- the journal, replayed ---------------------------------------------------------------------


def _store(fs: FaultyStore, cache: Path) -> BlobTrackingStore:
    return BlobTrackingStore(fs.uri, config=resolve(fs.uri, {**fs.direct_env,
                                                             "XDG_CACHE_HOME": str(cache)}))


def _kept(store: BlobTrackingStore, runs: int, points: int = 3) -> list[str]:
    """``runs`` new runs, and an entry in the store's journal for each (as an exit would)."""
    run_ids = []
    for _ in range(runs):
        run = store.create_run("0", "user", 1, [], None)
        run_ids.append(run.info.run_id)
    store.journal.keep({rid: Pending([["m", float(i), 1000 + i, i, None, None, None]
                                      for i in range(points)], {"p": "1"}, {},
                                     {"status": "FINISHED", "end_time": 5000})
                        for rid in run_ids}, "the store was down")
    return run_ids


def _points(store: BlobTrackingStore, run_id: str) -> int:
    """Points of ``m`` as stored, before the reader's de-duplication: the head's tail."""
    head, _ = store._load_head(run_id)
    return len([t for t in head.get("tail") or [] if t[0] == "m"])


def test_concurrent_flushes_write_each_entry_once(down: FaultyStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = _store(down, cache)
    run_ids = _kept(store, 16)
    env = {**script_env(down.uri, down.env, cache), **down.direct_env}  # where the entries were kept
    procs = [cloudtrack(env, "flush", down.uri, "--json") for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        reports.append(json.loads(out))
    assert sum(r["entries_written"] for r in reports) == 16, reports
    assert store.journal.entries() == []
    for rid in run_ids:
        assert _points(store, rid) == 3, "no point written twice"
        assert store.get_run(rid).info.status == "FINISHED"
    store.close()


def test_a_journal_is_replayed_only_into_its_own_store(faulty: FaultyFactory,
                                                        tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a, b = faulty("s3-noauth"), faulty("s3-noauth")
    store_a, store_b = _store(a, cache), _store(b, cache)
    (run_a,) = _kept(store_a, 1)
    assert store_a.journal.folder != store_b.journal.folder
    assert store_b.replay_journal().written == 0
    assert len(store_a.journal.entries()) == 1, "another bucket's journal is left alone"
    assert {j["store"] for j in journaled_stores(journal_root({"XDG_CACHE_HOME": str(cache)}))} \
        == {a.uri}

    # An entry moved by hand into another store's folder is not written there either.
    (entry,) = store_a.journal.entries()
    store_b.journal.folder.mkdir(parents=True)
    moved = store_b.journal.folder / entry.name
    entry.rename(moved)
    report = store_b.replay_journal()
    assert (report.written, report.left) == (0, 1)
    assert f"written for {a.uri}" in str(report.error)
    assert moved.exists()
    moved.rename(entry)
    assert store_a.replay_journal().written == 1
    assert _points(store_a, run_a) == 3
    store_a.close()
    store_b.close()


def test_entries_that_cannot_be_written_are_set_aside_or_left_with_a_message(
        down: FaultyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    store = _store(down, cache)
    (run_id,) = _kept(store, 1)
    folder = store.journal.folder
    gone = "0" * 32  # a run that does not exist: the store refuses its data for good
    store.journal.keep({gone: Pending(params={"p": "1"})}, "down")
    (folder / "00000000000000000001-1-aaaaaaaa-x.json").write_text("{not json")
    newer = {"format": "cloudtrack-journal", "version": VERSION + 1, **store.journal.identity,
             "run_id": run_id, "data": {"something": "new"}}
    (folder / "99999999999999999999-1-bbbbbbbb-y.json").write_text(json.dumps(newer))

    report = store.replay_journal()
    assert (report.written, report.refused, report.left) == (1, 2, 1), report
    assert "newer cloudtrack" in str(report.error)
    assert [p.name for p in store.journal.entries()] == ["99999999999999999999-1-bbbbbbbb-y.json"]
    aside = sorted(p.name for p in (folder / "refused").iterdir())
    assert len(aside) == 3 and any(n.endswith(f"-{gone}.json") for n in aside), aside
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("set aside" in e for e in errors), errors
    assert _points(store, run_id) == 3
    # Set aside once: the next replay does not try them again.
    assert store.replay_journal().refused == 0
    store.close()


def test_a_status_kept_after_a_failed_end_run_survives_a_later_change() -> None:
    """update_run_info passes None for what it does not change: a rename kept after a failed
    end_run must not wipe the FINISHED status it kept first."""
    kept = Pending(info={"status": "FINISHED", "end_time": 5, "run_name": None})
    kept.extend(Pending(info={"status": None, "end_time": None, "run_name": "renamed"}))
    assert kept.info == {"status": "FINISHED", "end_time": 5, "run_name": "renamed"}


def test_the_journal_lives_under_the_user_cache_directory(tmp_path: Path) -> None:
    cache = tmp_path / "fresh" / "cache"  # not there yet, as on a fresh machine
    store = BlobTrackingStore(str(tmp_path / "store"),
                              config=resolve(str(tmp_path / "store"),
                                             {"XDG_CACHE_HOME": str(cache)}))
    where = store.journal.keep({"r" * 32: Pending(params={"a": "1"})}, "down")
    assert Path(where).parent == cache / "cloudtrack" / "journal"
    assert store.journal.uri == "file://" + str(tmp_path / "store")
    store.close()
