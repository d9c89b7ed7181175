"""The URI the doctor diagnoses by default is the one MLflow itself would use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrack.doctor import default_uri, supported_schemes


def _mlflows_choice(cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = "import mlflow; print(mlflow.get_tracking_uri())"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("existing_mlruns", [False, True])
def test_default_matches_mlflow(tmp_path: Path, existing_mlruns: bool) -> None:
    if existing_mlruns:
        (tmp_path / "mlruns" / "0").mkdir(parents=True)
        (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    uri, origin = default_uri({}, cwd=str(tmp_path))
    assert origin == "MLflow's default"
    assert uri == _mlflows_choice(tmp_path)


def test_the_variable_wins() -> None:
    assert default_uri({"MLFLOW_TRACKING_URI": "s3://b/p"}) == ("s3://b/p",
                                                                "env:MLFLOW_TRACKING_URI")


def test_supported_schemes_come_from_the_registry() -> None:
    assert set(supported_schemes()) == {"s3", "gs", "wasbs", "abfss", "file", "http", "https",
                                        "databricks", "databricks-uc", "azureml"}
