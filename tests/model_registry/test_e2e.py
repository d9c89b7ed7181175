"""The registry end to end: the cheat sheet's Model Registration section compared against
MLflow's sqlite store, concurrent registrations, deletes that keep artifacts, and
`mlflow models serve` answering /invocations for a model registered in the S3 store."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from pathlib import Path

import pytest
import requests

from backends._common import ManagedProcess, free_port, wait_for_port
from backends.s3.service import MotoS3Iam
from cloudtrack.config import resolve
from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures import workers
from tests.fixtures.reference import script_summary
from tests.fixtures.stores import registry_store

SCRIPT = Path(__file__).with_name("registration.py")


def summary(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """What registration.py reads back (``reference_summary`` runs it on sqlite)."""
    return script_summary([str(SCRIPT)], env, cwd, timeout=600)


@pytest.mark.slow
def test_registration_matches_mlflow_sqlite(store, reference_summary, tmp_path) -> None:  # type: ignore[no-untyped-def]
    got = summary({**store.env, "MLFLOW_TRACKING_URI": store.uri}, tmp_path)
    assert reference_summary["models"] and reference_summary["by_alias"] == 2
    assert got == reference_summary


def register_one(env: dict[str, str], name: str, i: int) -> str:
    os.environ.update(env)
    from mlflow.tracking import MlflowClient

    return str(MlflowClient().create_model_version(name, f"s3://nowhere/{i}").version)


@pytest.mark.slow
def test_eight_processes_get_distinct_gap_free_versions(store) -> None:  # type: ignore[no-untyped-def]
    reg = registry_store(store)
    reg.create_registered_model("crowded")
    env = {**store.env, "MLFLOW_TRACKING_URI": store.uri}
    with concurrent.futures.ProcessPoolExecutor(8, mp_context=workers.context()) as p:
        got = list(p.map(register_one, [env] * 8, ["crowded"] * 8, range(8)))
    assert sorted(int(v) for v in got) == list(range(1, 9))
    versions = reg.search_model_versions("name = 'crowded'", 100)
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))


def test_rename_keeps_versions_and_delete_keeps_artifacts(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = resolve(store.uri, {**store.env, "CLOUDTRACK_STRICT": "true"})
    tracking = BlobTrackingStore(store.uri, config=config)
    reg = BlobRegistryStore(store.uri, config=config)
    run = tracking.create_run("0", "u", 0, [], "r")
    tracking.blobs.put("artifacts/0/" + run.info.run_id + "/artifacts/model/MLmodel", b"x")
    reg.create_registered_model("keep")
    reg.create_model_version("keep", run.info.artifact_uri + "/model", run.info.run_id)
    reg.create_model_version("keep", run.info.artifact_uri + "/model", run.info.run_id)
    reg.rename_registered_model("keep", "kept")
    assert [int(v.version) for v in reg.search_model_versions("name = 'kept'", 10)] == [2, 1]
    reg.delete_registered_model("kept")
    assert not [i.key for i in reg.blobs.list("registry/")]
    assert tracking.blobs.exists("artifacts/0/" + run.info.run_id + "/artifacts/model/MLmodel")
    assert tracking.get_run(run.info.run_id).info.run_id == run.info.run_id


@pytest.mark.slow
def test_models_serve_from_the_s3_store(moto: MotoS3Iam, tmp_path: Path) -> None:
    uri = moto.new_store("serve")
    # `mlflow models serve` execs uvicorn from PATH, as in an activated environment.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, **moto.env, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    summary({**moto.env, "MLFLOW_TRACKING_URI": uri}, tmp_path)
    port = free_port()
    proc = ManagedProcess([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                           "models:/iris-classifier/Production", "--env-manager", "local",
                           "-h", "127.0.0.1", "-p", str(port)], env=env, name="serve")
    try:
        wait_for_port(port, timeout=180, proc=proc.proc, log=proc.log)
        deadline = time.monotonic() + 120
        while True:
            try:
                r = requests.post(f"http://127.0.0.1:{port}/invocations",
                                  json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [0]}
    finally:
        proc.stop()
