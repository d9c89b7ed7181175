"""A worker of `mlflow server` on one of our stores builds its stores while it starts
(cloudtrack.mlflow_plugin), so the UI's first request does not wait for the cloud SDK's import,
the client and the store's marker.  Each case runs MLflow's own server module
(`mlflow.server.handlers`, what a uvicorn worker imports) in a new process, with the variables
`mlflow server` hands its workers, on the real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from backends._common import unique
from backends.s3.service import BUCKET_PREFIX

WORKER = textwrap.dedent("""
    import json, os, sys
    from mlflow.server import handlers  # what a server worker imports: it loads the plugin
    from cloudtrack import mlflow_plugin

    uri = os.environ["_MLFLOW_SERVER_FILE_STORE"]
    early = dict(mlflow_plugin._early)
    out = {"kinds": sorted(kind for kind, _ in early)}
    mode = sys.argv[1]
    if mode == "handover":
        built = early[("tracking", (uri, None))].result(timeout=300)
        registry = early[("registry", (uri, uri))].result(timeout=300)
        store = handlers._get_tracking_store()
        out["same"] = store is built
        out["registry_same"] = handlers._get_model_registry_store() is registry
        out["experiments"] = [e.name for e in store.search_experiments()]
        out["left"] = len(mlflow_plugin._early)
        pid = os.fork()
        if pid == 0:  # a forked child waits for no build its parent's thread was doing
            os._exit(0 if not mlflow_plugin._early else 3)
        out["child"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    elif mode == "other-arguments":
        built = early[("tracking", (uri, None))].result(timeout=300)
        store = handlers._get_tracking_store(uri, "/tmp/elsewhere")
        out["same"] = store is built
        out["unused_closed"] = built._pool._shutdown
        out["artifact_root"] = store.artifact_root_uri
    elif mode == "failed":
        try:
            handlers._get_tracking_store()
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
    elif mode == "bucket-came-back":
        failed = early[("tracking", (uri, None))].exception(timeout=300)
        out["early_error"] = type(failed).__name__
        import boto3  # the bucket is made after the early build failed, before the request
        boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"]).create_bucket(
            Bucket=uri.split("/")[2])
        store = handlers._get_tracking_store()
        out["experiments"] = [e.name for e in store.search_experiments()]
    print(json.dumps(out))
""")


def worker(mode: str, env: dict[str, str]) -> dict[str, Any]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("_MLFLOW_SERVER_")}
    proc = subprocess.run([sys.executable, "-c", WORKER, mode], env={**full, **env},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_first_request_gets_the_stores_built_while_the_worker_started(store) -> None:  # type: ignore[no-untyped-def]
    out = worker("handover", {**store.env, "_MLFLOW_SERVER_FILE_STORE": store.uri})
    assert out == {"kinds": ["registry", "tracking"], "same": True, "registry_same": True,
                   "experiments": ["Default"], "left": 0, "child": 0}


def test_a_store_asked_for_with_other_arguments_is_built_anew(store) -> None:  # type: ignore[no-untyped-def]
    out = worker("other-arguments", {**store.env, "_MLFLOW_SERVER_FILE_STORE": store.uri})
    assert out == {"kinds": ["registry", "tracking"], "same": False, "unused_closed": True,
                   "artifact_root": "/tmp/elsewhere"}


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_failed_early_build_is_done_again_by_the_request_and_says_why(store) -> None:  # type: ignore[no-untyped-def]
    missing = "s3://cloudtrack-no-such-bucket/store"
    out = worker("failed", {**store.env, "_MLFLOW_SERVER_FILE_STORE": missing})
    assert out["kinds"] == ["registry", "tracking"]
    assert out["error"].startswith("MlflowException") and "cloudtrack-no-such-bucket" in \
        out["error"], out


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_failed_early_build_is_not_what_the_request_gets_once_the_bucket_is_back(store) -> None:  # type: ignore[no-untyped-def]
    # A request that re-raised the early failure instead of building again would fail here.
    bucket = unique(f"{BUCKET_PREFIX}late")  # a name the store's credentials may create
    out = worker("bucket-came-back",
                 {**store.env, "_MLFLOW_SERVER_FILE_STORE": f"s3://{bucket}/store"})
    assert out["early_error"] == "MlflowException", out
    assert out["experiments"] == ["Default"], out


def test_a_server_on_another_store_builds_nothing_early(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = worker("none", {"_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{tmp_path}/mlflow.db"})
    assert out == {"kinds": []}
