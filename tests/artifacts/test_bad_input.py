"""Bad input for the artifact repository: artifact paths that try to leave the run's folder."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from cloudtrack.artifacts import BlobArtifactRepository


def test_artifact_paths_that_escape_are_refused(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if store.backend == "local":
        pytest.skip("local artifact locations are served by MLflow's own LocalArtifactRepository")
    f = tmp_path / "a.txt"
    f.write_text("x")
    import os

    old = dict(os.environ)
    os.environ.update(store.env)  # the repository resolves like MLflow does: from the environment
    try:
        repo = BlobArtifactRepository(store.uri + "/artifacts/1/run/artifacts")
        for bad in ("../escape", "a/../../b", "./x"):
            with pytest.raises(MlflowException):
                repo.log_artifact(str(f), bad)
        repo.log_artifact(str(f), "ok/dir")
        assert [i.path for i in repo.list_artifacts("ok/dir")] == ["ok/dir/a.txt"]
    finally:
        os.environ.clear()
        os.environ.update(old)
