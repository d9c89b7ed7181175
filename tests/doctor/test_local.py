"""``cloudtrack doctor`` on local directories: a healthy store, MLflow's default URI, a
read-only run, a store of a newer format, an MLflow FileStore (which logging refuses), a folder
of other files.

The doctor runs as the real command in a child process (tests/fixtures/doctor.py), exactly as
a user would run it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.doctor import base_env, doctor, expect, healthy

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


def _log_a_run(home: Path, uri: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """What the doctor speaks for: a real process logging one run to ``uri`` through MLflow."""
    code = ("import mlflow\n"
            "with mlflow.start_run():\n"
            "    mlflow.log_param('p', 1)\n"
            "print('logged')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**base_env(home), "MLFLOW_TRACKING_URI": uri,
                                            **(env or {})})


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A legacy MLflow FileStore (``0/meta.yaml``), written by MLflow's own FileStore."""
    from mlflow.store.tracking.file_store import FileStore

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    root = tmp_path / "mlruns"
    FileStore(str(root)).create_experiment("old-experiment")
    assert (root / "0" / "meta.yaml").exists()
    return root


def test_local_mlflow_file_store_is_refused(home: Path, file_store: Path) -> None:
    """F17: MLflow's FileStore data in ./mlruns: cloudtrack hands the folder to MLflow's
    FileStore, which refuses to open ("maintenance mode"), so the doctor must fail too and
    point at `cloudtrack migrate`; it writes nothing into the folder."""
    logged = _log_a_run(home, str(file_store))
    assert logged.returncode != 0 and "maintenance mode" in logged.stderr, logged.stderr[-2000:]

    before = sorted(str(p.relative_to(file_store)) for p in file_store.rglob("*"))
    for uri in (str(file_store), file_store.as_uri()):
        run = doctor(home, {}, uri)
        expect(run, "config-invalid", backend="file")
        check = run.check("config.store")
        assert check["status"] == "fail"
        assert "MLflow FileStore" in check["summary"] and "0/meta.yaml" in check["summary"]
        assert "maintenance mode" in check["summary"]
        assert f"cloudtrack migrate {uri} " in check["fix"]
        assert "new, empty directory" in check["fix"]
        assert not any(c["id"] == "consistency.format" for c in run.report["checks"])
    assert sorted(str(p.relative_to(file_store)) for p in file_store.rglob("*")) == before


def test_local_mlflow_file_store_when_allowed(home: Path, file_store: Path) -> None:
    """With MLFLOW_ALLOW_FILE_STORE=true MLflow's FileStore opens and logging works: a warning
    (exit 0) that names the FileStore, never "a new store, initialised on first use"."""
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}
    logged = _log_a_run(home, str(file_store), env)
    assert logged.returncode == 0 and "logged" in logged.stdout, logged.stderr[-2000:]
    run = doctor(home, env, str(file_store))
    assert run.code == 0 and run.report["status"] == "warn"
    check = run.check("config.store")
    assert check["status"] == "warn" and "MLFLOW_ALLOW_FILE_STORE=true" in check["summary"]
    assert "cloudtrack migrate" in check["fix"]
    assert "a new store" not in run.text()
    assert run.check("authz.write")["status"] == "ok"


def test_local_folder_of_other_files(home: Path, tmp_path: Path) -> None:
    """F18: a non-empty folder without cloudtrack.json (a mistyped path to some data folder)
    is not "a new store": a warning naming what is there and what logging would do — which
    the test then checks by logging there."""
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    run = doctor(home, {}, str(folder))
    assert run.code == 0 and run.report["status"] == "warn"
    check = run.check("consistency.format")
    assert check["status"] == "warn" and check["cause"] == "config-invalid"
    assert "not a cloudtrack store" in check["summary"]
    assert "a.txt" in check["summary"] and "sub/" in check["summary"]
    assert "a new store, initialised on first use" not in run.text()
    assert "typo" in check["fix"]

    logged = _log_a_run(home, str(folder))
    assert logged.returncode == 0, logged.stderr[-2000:]
    assert (folder / "cloudtrack.json").exists()
    assert (folder / "a.txt").read_text() == "a" and (folder / "sub" / "b.txt").read_text() == "b"


def test_local_empty_folder_is_a_new_store(home: Path, tmp_path: Path) -> None:
    run = doctor(home, {}, str(tmp_path))
    assert run.check("consistency.format")["summary"] == \
        "no cloudtrack.json yet: a new store, initialised on first use"
