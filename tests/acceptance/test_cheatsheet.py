"""The cheat sheet's tracking examples, unchanged, on every backend: the summary MLflow reads
back must equal the one from MLflow's own sqlite store.  Each phase runs in its own process,
as a user's scripts do (the second phase resumes the first phase's run by id)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.reference import script_summary

SCRIPT = Path(__file__).with_name("cheatsheet.py")


def summary(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """What MLflow reads back after both phases (``reference_summary`` runs this on sqlite)."""
    env = {**env, "GIT_PYTHON_REFRESH": "quiet"}
    first = script_summary([str(SCRIPT), "first"], env, cwd, timeout=600)
    return script_summary([str(SCRIPT), "rest", str(first["run_id"])], env, cwd, timeout=600)


@pytest.mark.slow
def test_cheatsheet_matches_mlflow_sqlite(store, reference_summary, tmp_path) -> None:  # type: ignore[no-untyped-def]
    got = summary({**store.env, "MLFLOW_TRACKING_URI": store.uri}, tmp_path)
    assert (reference_summary["history"] and reference_summary["predictions"]
            and reference_summary["search"])
    assert got == reference_summary
