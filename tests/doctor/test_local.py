"""``cloudtrack doctor`` on local directories: a healthy store, MLflow's default URI, a
read-only run, a store of a newer format.

The doctor runs as the real command in a child process (tests/fixtures/doctor.py), exactly as
a user would run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.doctor import doctor, expect, healthy

pytestmark = pytest.mark.timeout(300)


def test_local_store_healthy(home: Path, tmp_path: Path) -> None:
    run = doctor(home, {}, str(tmp_path))
    healthy(run, "local")
    assert run.report["backend"] == "file"
    assert run.check("authz.write")["status"] == "ok"
    assert not any(tmp_path.iterdir()), "the probe object was not removed"


def test_local_default_uri_is_mlflows(home: Path, tmp_path: Path) -> None:
    """No URI and no MLFLOW_TRACKING_URI: MLflow would use sqlite:///mlflow.db, a store the
    doctor does not diagnose; it says so and which URI it looked at."""
    run = doctor(home, {}, wrap=["env", "-C", str(tmp_path)])
    expect(run, "config-invalid")
    assert run.report["backend"] is None
    assert run.report["uri"].startswith("sqlite:///") and "mlflow.db" in run.report["uri"]
    assert "MLflow's default" in run.check("config.uri")["summary"]


def test_local_read_only_writes_nothing(home: Path, tmp_path: Path) -> None:
    (tmp_path / "cloudtrack.json").write_text('{"format": "cloudtrack", "version": 1}')
    before = sorted(p.name for p in tmp_path.iterdir())
    run = doctor(home, {"MLFLOW_TRACKING_URI": f"file:{tmp_path}"}, "--read-only")
    expect(run, "ok", backend="file")
    assert run.check("authz.read")["status"] == "ok"
    assert not any(c["id"] == "authz.write" for c in run.report["checks"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_local_store_of_a_newer_format(home: Path, tmp_path: Path) -> None:
    (tmp_path / "cloudtrack.json").write_text('{"format": "cloudtrack", "version": 99}')
    run = doctor(home, {}, str(tmp_path))
    expect(run, "dependency-missing")
    assert "pip install -U cloudtrack" in run.check("consistency.format")["fix"]
