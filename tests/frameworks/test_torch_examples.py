"""The cheat sheet's PyTorch examples (torch_examples.py: the trainer class with
``mlflow.pytorch.log_model``, Lightning's ``MLFlowLogger`` with and without checkpoints, and
``mlflow.pytorch.autolog()`` with Lightning), run unchanged on every backend: what MLflow reads
back must equal what the same script reads back from MLflow's own sqlite store."""

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

SCRIPT = Path(__file__).with_name("torch_examples.py")


def summary(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """What the script reads back (``reference_summary`` runs this on sqlite)."""
    return run_script(SCRIPT, env, cwd)


def test_reference_is_not_empty(reference_summary: dict[str, Any]) -> None:
    """The comparison below is only as strong as what sqlite gives: every example logged."""
    ref = reference_summary
    assert [len(ref[k]["history"]) for k in ("trainer_class", "lightning",
                                             "lightning_checkpoints", "lightning_autolog")] \
        == [3, 4, 4, 3]
    assert all(len(points) >= 2 for points in ref["trainer_class"]["history"].values())
    assert [len(ref[k]["logged_models"]) for k in ("trainer_class", "lightning_autolog")] == [1, 1]
    assert ref["trainer_class"]["logged_models"][0]["metrics"]
    assert sorted(ref["loaded"]) == ["lightning_autolog-0", "trainer_class-0"]
    assert len(ref["checkpoints"]) == 2
    predictions = [v["predictions"] for v in ref["loaded"].values()]
    assert len(predictions[0]) == 30 and predictions[0] != predictions[1]


def test_torch_examples_match_mlflow_sqlite(store: Store, reference_summary: dict[str, Any],
                                            tmp_path: Path) -> None:
    env, cwd = store_env(store)
    got = summary(env, cwd or tmp_path)
    assert_reached(store, cwd or tmp_path)
    diff = differences(reference_summary, got)
    assert not diff, divergence(store.backend, diff)
