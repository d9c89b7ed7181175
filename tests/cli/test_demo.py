"""``cloudtrack demo`` — the first command a new user runs — on a store it cannot write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.services import service

ROOT = Path(__file__).resolve().parents[2]


def test_a_store_that_refuses_the_demo_gets_one_line_not_a_traceback(tmp_path: Path) -> None:
    moto = service("s3")
    uri = moto.new_store()
    reader = moto.read_only_env()  # type: ignore[attr-defined]
    env = {**os.environ, **moto.env, **reader}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([sys.executable, "-m", "cloudtrack.cli", "demo", "--store", uri],
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr
    assert uri.split("://", 1)[1].split("/", 1)[0] in errors[0]
    assert "cloudtrack doctor" in errors[0]
    assert reader["AWS_SECRET_ACCESS_KEY"] not in run.stdout + run.stderr


def test_demo_blobs_leaves_nothing_behind(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = subprocess.run([sys.executable, "-m", "cloudtrack.cli", "demo-blobs", str(store)],
                         capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "a put-if-version with the stale version lost, as it must" in run.stdout
    assert [p for p in store.rglob("*") if p.is_file()] == []
