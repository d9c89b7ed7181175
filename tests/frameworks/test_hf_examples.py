"""The cheat sheet's Hugging Face example (hf_examples.py: ``Trainer`` reporting to MLflow and
``mlflow.transformers.log_model``, then the same under ``mlflow.transformers.autolog()``), run
unchanged on every backend: what MLflow reads back must equal what the same script reads back
from MLflow's own sqlite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import Store
from tests.frameworks.common import (
    assert_reached,
    differences,
    divergence,
    run_script,
    store_env,
)

pytestmark = pytest.mark.frameworks

SCRIPT = Path(__file__).with_name("hf_examples.py")


def summary(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """What the script reads back (``reference_summary`` runs this on sqlite)."""
    return run_script(SCRIPT, env, cwd)


def test_reference_is_not_empty(reference_summary: dict[str, Any]) -> None:
    """The comparison below is only as strong as what sqlite gives: every example logged."""
    basic, auto = reference_summary["transformers"], reference_summary["transformers_autolog"]
    for run in (basic, auto):
        assert len(run["history"]["loss"]) == 4 and len(run["params"]) > 100
        assert [m["flavors"] for m in run["logged_models"]] == [["python_function",
                                                                 "transformers"]]
        # The model carries every param the run had when it was logged: the Trainer's
        # asynchronous ones had landed (hf_examples' module docstring).
        assert run["logged_models"][0]["params"] == run["params"]
    assert {"final_loss", "total_steps"} <= set(basic["history"])
    assert basic["tags"]["framework"] == "transformers"
    assert basic["logged_models"][0]["metrics"]
    loaded = reference_summary["loaded"]
    assert sorted(loaded) == ["transformers-0", "transformers_autolog-0"]
    assert loaded["transformers-0"]["scores"] != loaded["transformers_autolog-0"]["scores"]


def test_hf_examples_match_mlflow_sqlite(store: Store, reference_summary: dict[str, Any],
                                         tmp_path: Path) -> None:
    env, cwd = store_env(store)
    got = summary(env, cwd or tmp_path)
    assert_reached(store, cwd or tmp_path)
    diff = differences(reference_summary, got)
    assert not diff, divergence(store.backend, diff)
