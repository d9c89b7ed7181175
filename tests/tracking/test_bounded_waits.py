"""Bounded, visible waiting, end to end: a plain MLflow script whose store stops answering
finishes within a bound derived from ``CLOUDTRACK_RETRY_DEADLINE`` — with an error in strict
mode, with its data in the journal in the default mode — printing one line per retry (what,
which URI, attempt n of m) and never a traceback per retry; a store killed mid-run makes the
background flusher say so once, not once per pass.

(Before the retry deadline, the first case waited 60 s x 5 attempts per call — 302 s for a
plain script — and the second printed a ~120-line traceback per background retry.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.s3.service import MotoS3
from tests.fixtures.faults import FaultyFactory, FaultyStore
from tests.tracking.test_journal import QUICK, SCRIPT, SLACK, run_script, script_env

#: The longest one storage operation may wait here: a retry starts only while its timeouts
#: (connect + read, 1 s each) still fit in the deadline — three 1 s attempts fit in 5 s.
DEADLINE = 5.0
#: Past any bound asserted here; the old code, waiting minutes, fails on it.
TIMEOUT = 60.0


def _retry_line(uri: str) -> re.Pattern[str]:
    return re.compile(rf"^[A-Z-]+ {re.escape(uri)}/\S+: attempt (\d) of 5 failed \(.+\); "
                      r"retrying in \d+\.\ds$")


@pytest.fixture
def held(faulty: FaultyFactory) -> FaultyStore:
    """A store whose endpoint, once told to, accepts connections and never answers."""
    return faulty("s3-noauth", rate=0.0, kinds=["timeout_before"], hold_seconds=TIMEOUT * 2)


@pytest.mark.parametrize("mode", ["strict", "default"])
def test_a_store_that_never_answers_ends_a_plain_script_within_the_deadline(
        held: FaultyStore, tmp_path: Path, mode: str) -> None:
    env = script_env(held.uri, held.env, tmp_path / "cache",
                     CLOUDTRACK_STRICT=str(mode == "strict").lower(),
                     CLOUDTRACK_RETRY_DEADLINE=f"{DEADLINE:g}")
    done = run_script(env, lambda: held.proxy.configure(rate=1.0), timeout=TIMEOUT)

    retry = _retry_line(held.uri)
    retries = [line for line in done.lines if retry.match(line)]
    assert retries, done.stderr
    if mode == "strict":
        # The call that cannot be written fails within the deadline; exit then tries once to
        # end the run (MLflow's own exit hook), within the deadline again.
        assert done.seconds < 2 * DEADLINE + SLACK, done.seconds
        assert done.returncode == 1
        failed = [line for line in done.lines if line.startswith("mlflow.exceptions.")]
        assert len(failed) == 1, done.stderr
        assert re.search(rf"PUT-IF-VERSION {re.escape(held.uri)}/\S+ failed after \d attempts "
                         rf"in \d+\.\ds \(another attempt could end past the {DEADLINE:g}s "
                         r"retry deadline\): (?i:.*read timeout).*\. Run `cloudtrack doctor "
                         rf"{re.escape(held.uri)}` to see why\.$", failed[0]), failed[0]
        # One traceback: the uncaught error's (chained to the SDK's), after the retry lines.
        before = done.stderr.split("Traceback", 1)[0].splitlines()
        assert before and all(retry.match(line) for line in before), done.stderr
    else:
        assert done.seconds < DEADLINE + SLACK, done.seconds
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        kept = [line for line in done.lines if not retry.match(line)]
        assert len(kept) == 1 and "kept in" in kept[0], done.stderr
        assert kept[0].endswith(f"cloudtrack flush {held.uri}")
    assert len(retries) <= 2 * int(DEADLINE), "attempts bounded by the deadline"


@pytest.fixture
def own_moto() -> Iterator[MotoS3]:
    """A moto server of this test's own, to kill."""
    svc = MotoS3()
    svc.start()
    yield svc
    svc.stop()


KILLED_SCRIPT = SCRIPT.replace(
    'for step in range(5, 10):\n    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)',
    textwrap.dedent("""\
        import time
        for step in range(5, 13):  # logging goes on for 4 s with the store gone
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            time.sleep(0.5)"""))


def test_a_store_killed_mid_run_is_reported_once_not_per_background_pass(
        own_moto: MotoS3, tmp_path: Path) -> None:
    assert KILLED_SCRIPT != SCRIPT
    uri = own_moto.new_store("killed")
    env = script_env(uri, own_moto.env, tmp_path / "cache")
    done = run_script(env, own_moto.stop, script=KILLED_SCRIPT, timeout=TIMEOUT)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    # One line when writing starts failing (the background passes failed about 8 times), one
    # at exit saying where the data is kept; between them only the retries of a write under
    # way when exit began, which exit waits for (and says so), one line each.
    warning, *retries, kept = done.lines
    assert warning.startswith(f"cloudtrack: writing buffered data of run {done.run_id} to "
                              f"{uri} failed ("), done.stderr
    assert warning.endswith("it is kept and written again every 1s")
    assert all(_retry_line(uri).match(line) for line in retries), done.stderr
    assert len(retries) <= 4, "one write's retries at most (5 attempts)"
    assert "kept in" in kept and kept.endswith(f"cloudtrack flush {uri}")
    assert done.seconds < 4 + float(QUICK["CLOUDTRACK_RETRY_DEADLINE"]) + SLACK, done.seconds


WITH_SCRIPT = textwrap.dedent("""
    import sys
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_param("alpha", "0.5")
        mlflow.log_metric("loss", 1.0, step=0)
        print(run.info.run_id, flush=True)
        sys.stdin.readline()
        mlflow.log_metric("loss", 0.5, step=1)
    print("after the with block", flush=True)
""")


def test_ending_a_run_in_a_with_block_with_the_store_gone_keeps_it_quietly(
        own_moto: MotoS3, tmp_path: Path) -> None:
    """Default mode: ``end_run`` at the end of a ``with`` block, the store gone — the status
    change is kept with the run's data (journal at exit), the script goes on and exits 0
    with one WARNING line and the journal's line, no traceback.  Until this stop it raised
    one 81-line chained traceback and the script exited 1."""
    uri = own_moto.new_store("with")
    env = script_env(uri, own_moto.env, tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-c", WITH_SCRIPT], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        run_id = proc.stdout.readline().strip()
        time.sleep(1.2)
        own_moto.stop()
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "after the with block" in out and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not _retry_line(uri).match(line)]
    assert any(run_id in line and "kept" in line for line in lines), err
    assert lines[-1].endswith(f"cloudtrack flush {uri}"), err
    assert len(lines) <= 3, err
