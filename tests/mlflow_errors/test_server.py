"""cloudtrack's errors reach MLflow's clients with MLflow's error codes, through a real
``mlflow server`` on the IAM-enforcing moto S3 (cloudtrack.mlflow_errors).

The server runs with the keys of a user the bucket policy lets read and list, nothing more: a
write it refuses must arrive as PERMISSION_DENIED (HTTP 403), a missing object or bucket as
RESOURCE_DOES_NOT_EXIST (404), never as a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from backends.mlflow.service import MlflowServer
from tests.fixtures.stores import tracking_store

STARTUP_TIMEOUT = 300.0


@pytest.fixture
def read_only_server(store: Any) -> Iterator[MlflowServer]:
    # A store initialised by a user with full rights (marker, Default experiment, a run).
    writer = tracking_store(store)
    writer.create_run("0", "writer", 0, [], "written")
    writer.close()
    server = MlflowServer(store.uri, artifacts_destination=f"{store.uri}/artifacts",
                          extra_env=store.service.read_only_env(),
                          startup_timeout=STARTUP_TIMEOUT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def answer(server: MlflowServer, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    """The HTTP status and MLflow error code of one request to the server."""
    r = requests.request(method, f"{server.url}/api/2.0/{path}", timeout=60, **kwargs)
    try:
        code = r.json().get("error_code", "")
    except ValueError:
        code = f"(not JSON: {r.text[:200]!r})"
    return r.status_code, code


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_errors_inside_the_server_reach_the_client_as_mlflow_codes(
        store: Any, read_only_server: MlflowServer) -> None:
    server = read_only_server
    client = MlflowClient(tracking_uri=server.url)
    log = f"\nserver log ends with:\n{server.log_tail(2000)}"
    assert [e.name for e in client.search_experiments()] == ["Default"], log

    # Tracking: a write the bucket policy refuses.
    with pytest.raises(MlflowException) as e:
        client.create_experiment("refused")
    assert e.value.error_code == "PERMISSION_DENIED", f"{e.value}{log}"
    assert answer(server, "POST", "mlflow/experiments/create",
                  json={"name": "refused"}) == (403, "PERMISSION_DENIED"), log

    # Artifacts, proxied by the server into the same bucket.
    assert answer(server, "PUT", "mlflow-artifacts/artifacts/0/x/refused.txt",
                  data=b"denied") == (403, "PERMISSION_DENIED"), log
    assert answer(server, "GET", "mlflow-artifacts/artifacts/0/x/missing.txt") == (
        404, "RESOURCE_DOES_NOT_EXIST"), log

    # The bucket itself goes away: listing the experiments finds no container.
    bucket = store.uri.split("/")[2]
    s3 = store.service.s3
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(MlflowException) as e:
        client.search_experiments()
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST", f"{e.value}{log}"
    assert answer(server, "GET", "mlflow/experiments/search",
                  params={"max_results": 10}) == (404, "RESOURCE_DOES_NOT_EXIST"), log
