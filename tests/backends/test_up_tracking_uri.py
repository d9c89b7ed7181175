"""``python -m backends up``: sourcing its env file never sends MLflow's logging somewhere the
user did not choose.  An MLflow server started beside a store used to export its own
``MLFLOW_TRACKING_URI``, so ``up local mlflow`` pointed logging at the server, not the store.
Real services (a local directory, a real MLflow server), the real command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def backends_up(tmp_path: Path, *args: str) -> Iterator[Path]:
    """``python -m backends up ARGS --env-file F``, up until the block ends; yields F."""
    env_file = tmp_path / "env.sh"
    proc = subprocess.Popen([sys.executable, "-m", "backends", "up", *args,
                             "--env-file", str(env_file)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert env_file.exists(), proc.stderr.read() if proc.stderr else ""
        yield env_file
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def exported(env_file: Path) -> dict[str, str]:
    """The variables a shell has after ``source``-ing the file (nothing else inherited)."""
    out = subprocess.run(["bash", "-c", f"source {env_file} && env -0"], env={"PATH": os.defpath},
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line)


def tracking_uri_seen_by_mlflow(env_file: Path) -> str:
    """What a user's ``import mlflow`` logs to after ``source``-ing the file."""
    code = "import mlflow; print(mlflow.get_tracking_uri())"
    out = subprocess.run(["bash", "-c", f"source {env_file} && {sys.executable} -c '{code}'"],
                         env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
                         capture_output=True, text=True, check=True, cwd=env_file.parent)
    return out.stdout.strip().splitlines()[-1]


def test_a_store_beside_an_mlflow_server_is_not_overridden(tmp_path: Path) -> None:
    with backends_up(tmp_path, "local", "mlflow") as env_file:
        env = exported(env_file)
        text = env_file.read_text()
    # Two places to log to and none chosen: sourcing the file must not pick one silently.
    assert "MLFLOW_TRACKING_URI" not in env, text
    assert env["BACKENDS_TRACKING_URI_LOCAL"].startswith("file://")
    assert env["BACKENDS_TRACKING_URI_MLFLOW"].startswith("http://127.0.0.1:")
    assert "choose with --tracking NAME" in text


def test_tracking_chooses_what_mlflow_logs_to(tmp_path: Path) -> None:
    with backends_up(tmp_path, "local", "mlflow", "--tracking", "local") as env_file:
        env = exported(env_file)
        seen = tracking_uri_seen_by_mlflow(env_file)
    assert env["MLFLOW_TRACKING_URI"] == env["BACKENDS_TRACKING_URI_LOCAL"] == seen


def test_a_store_alone_is_where_mlflow_logs(tmp_path: Path) -> None:
    with backends_up(tmp_path, "local") as env_file:
        env = exported(env_file)
    assert env["MLFLOW_TRACKING_URI"] == env["BACKENDS_TRACKING_URI_LOCAL"]
    assert env["MLFLOW_TRACKING_URI"].startswith("file://")


def test_tracking_must_name_a_service_to_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "backends", "up", "local", "--tracking", "s3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--tracking s3: not among the services to start" in out.stderr


def test_choice_rules() -> None:
    from backends.__main__ import _tracking_lines

    targets = {"s3": "s3://b/p", "mlflow": "http://127.0.0.1:5000"}
    assert _tracking_lines({"mlflow": targets["mlflow"]}, None)[-1] == \
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000"
    assert _tracking_lines(targets, "s3")[-1] == "export MLFLOW_TRACKING_URI=s3://b/p"
    assert not any(line.startswith("export") for line in _tracking_lines(targets, None))
    assert _tracking_lines(targets, "gcs") == ["# MLFLOW_TRACKING_URI not set: gcs did not start"]
    assert _tracking_lines({}, None) == []
