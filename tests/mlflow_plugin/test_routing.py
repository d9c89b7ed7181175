"""Which store serves which URI once cloudtrack is installed, as MLflow itself resolves it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def store_class(uri: str, cwd: Path, **env: str) -> str:
    code = ("from mlflow.tracking._tracking_service.utils import _get_store as t\n"
            "from mlflow.tracking._model_registry.utils import _get_store as r\n"
            f"print(type(t({uri!r})).__name__, type(r({uri!r})).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("form", ["plain-absolute", "plain-relative", "file-uri"])
def test_local_paths_become_cloudtrack_stores(form: str, tmp_path: Path) -> None:
    uri = {"plain-absolute": str(tmp_path / "store"), "plain-relative": "store",
           "file-uri": f"file://{tmp_path}/store"}[form]
    assert store_class(uri, tmp_path) == "BlobTrackingStore BlobRegistryStore"
    assert (tmp_path / "store" / "cloudtrack.json").exists()


def test_existing_mlflow_file_store_stays_with_mlflow(tmp_path: Path) -> None:
    from mlflow.store.tracking.file_store import FileStore

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        FileStore(str(tmp_path / "mlruns"))
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    assert (tmp_path / "mlruns" / "0" / "meta.yaml").exists()
    got = store_class(str(tmp_path / "mlruns"), tmp_path, MLFLOW_ALLOW_FILE_STORE="true")
    assert got == "FileStore FileStore"
    assert not (tmp_path / "mlruns" / "cloudtrack.json").exists()


def test_cloud_schemes_and_http(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    code = ("from mlflow.tracking._tracking_service.utils import _tracking_store_registry as t\n"
            "from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository as a\n"
            "print(t.get_store_builder('s3://b').__module__, t.get_store_builder('gs://b').__module__,"
            " t.get_store_builder('http://h').__module__, type(a('s3://bkt/x')).__name__,"
            " type(t.get_store_builder('http://h')('http://h')).__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    s3, gs, http, repo, rest = out.stdout.split()
    assert s3 == gs == "cloudtrack.mlflow_plugin"
    # http(s) is built by cloudtrack (so a `cloudtrack login` can sign it), as MLflow's RestStore.
    assert http == "cloudtrack.credentials.server" and rest.startswith("mlflow.store.")
    assert repo == "BlobArtifactRepository"
