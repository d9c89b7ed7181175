"""The cheat sheet's tracking examples, unchanged, on every backend: the summary MLflow reads
back must equal the one from MLflow's own sqlite store.  Each phase runs in its own process,
as a user's scripts do (the second phase resumes the first phase's run by id)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cheatsheet.py")


def run_phases(env: dict[str, str], cwd: Path) -> dict[str, object]:
    full = {**os.environ, **env, "GIT_PYTHON_REFRESH": "quiet"}

    def phase(*args: str) -> dict[str, object]:
        out = subprocess.run([sys.executable, str(SCRIPT), *args], env=full, cwd=cwd,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    first = phase("first")
    return phase("rest", str(first["run_id"]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("sqlite")
    return run_phases({"MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"}, d)


@pytest.mark.slow
def test_cheatsheet_matches_mlflow_sqlite(store, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    got = run_phases({**store.env, "MLFLOW_TRACKING_URI": store.uri}, tmp_path)
    assert reference["history"] and reference["predictions"] and reference["search"]
    assert got == reference
