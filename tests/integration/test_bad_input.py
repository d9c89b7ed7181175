"""Bad input: ids and names that try to leave the store's prefix, corrupt or foreign objects."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, ViewType
from mlflow.exceptions import MlflowException

from cloudtrack.artifacts import BlobArtifactRepository
from cloudtrack.config import resolve
from cloudtrack.store import layout
from cloudtrack.tracking import BlobTrackingStore

ESCAPES = ["../x", "../../etc/passwd", "/etc/passwd", "%2e%2e", "a/../../b", "..", "x/y"]


@pytest.fixture
def tracking(store):  # type: ignore[no-untyped-def]
    s = BlobTrackingStore(store.uri, config=resolve(store.uri, {**store.env,
                                                                "CLOUDTRACK_STRICT": "true"}))
    yield s
    s.close()


@pytest.mark.parametrize("bad", ESCAPES)
def test_ids_that_leave_the_prefix_are_refused(tracking, bad: str) -> None:  # type: ignore[no-untyped-def]
    for call in (lambda: tracking.get_run(bad), lambda: tracking.get_experiment(bad),
                 lambda: tracking.log_batch(bad, [Metric("m", 1.0, 0, 0)], [], []),
                 lambda: tracking.get_metric_history(bad, "m"),
                 lambda: tracking.get_logged_model(bad),
                 lambda: tracking.search_runs([bad], "", ViewType.ALL)):
        with pytest.raises(MlflowException) as e:
            call()
        assert e.value.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
    keys = [i.key for i in tracking.blobs.list()]
    assert all(not k.startswith(("..", "/")) for k in keys)


def test_names_are_encoded_inside_the_prefix(tracking) -> None:  # type: ignore[no-untyped-def]
    exp_id = tracking.create_experiment("../../escape/attempt")
    assert tracking.get_experiment_by_name("../../escape/attempt").experiment_id == exp_id
    claims = [i.key for i in tracking.blobs.list(layout.EXPERIMENT_NAMES)]
    assert "experiment-names/..%2F..%2Fescape%2Fattempt" in claims


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


def test_corrupt_run_head_is_named_and_hides_nothing(tracking) -> None:  # type: ignore[no-untyped-def]
    exp = tracking.create_experiment("corrupt")
    good = tracking.create_run(exp, "u", 1, [], "good").info.run_id
    bad = tracking.create_run(exp, "u", 2, [], "bad").info.run_id
    tracking.blobs.put(layout.head(exp, bad), b"\x00 not json")
    tracking.blobs.put(layout.head(exp, "f" * 32), b'{"foreign": true}')  # a foreign object
    tracking._heads.clear()
    with pytest.raises(MlflowException) as e:
        tracking.get_run(bad)
    assert layout.head(exp, bad) in e.value.message
    assert e.value.error_code == "INVALID_STATE"
    found = [r.info.run_id for r in tracking.search_runs([exp], "", ViewType.ALL)]
    assert found == [good]


def test_corrupt_experiment_record_hides_nothing(tracking) -> None:  # type: ignore[no-untyped-def]
    keep = tracking.create_experiment("keep")
    broken = tracking.create_experiment("broken")
    tracking.blobs.put(layout.experiment(broken), b"[1, 2")
    names = [e.name for e in tracking.search_experiments(view_type=ViewType.ALL)]
    assert "keep" in names and "broken" not in names
    with pytest.raises(MlflowException) as e:
        tracking.get_experiment(broken)
    assert layout.experiment(broken) in e.value.message
    assert tracking.get_experiment(keep).name == "keep"


def test_newer_format_is_refused_with_advice(store) -> None:  # type: ignore[no-untyped-def]
    s = BlobTrackingStore(store.uri, config=resolve(store.uri, store.env))
    s.blobs.put(layout.MARKER, b'{"format": "cloudtrack", "version": 99}')
    with pytest.raises(MlflowException) as e:
        BlobTrackingStore(store.uri, config=resolve(store.uri, store.env))
    assert "upgrade" in e.value.message


def test_registry_names_stay_inside_and_corrupt_records_are_named(store) -> None:  # type: ignore[no-untyped-def]
    from cloudtrack.model_registry import BlobRegistryStore

    reg = BlobRegistryStore(store.uri, config=resolve(store.uri, store.env))
    for rejected in ("../../escape", "a/b", "x:y", "", ".."):
        with pytest.raises(MlflowException) as e:
            reg.create_registered_model(rejected)
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    reg.create_registered_model("%2e%2e")
    reg.create_registered_model("fine")
    keys = [i.key for i in reg.blobs.list("registry/models/")]
    assert "registry/models/%252e%252e.json" in keys
    assert all(k.startswith("registry/models/") and "/../" not in k and not k.endswith("/...json")
               for k in keys)
    assert {m.name for m in reg.search_registered_models(max_results=10)} == {"%2e%2e", "fine"}
    reg.blobs.put(layout.registered_model("fine"), b"{broken")
    with pytest.raises(MlflowException) as e:
        reg.get_registered_model("fine")
    assert layout.registered_model("fine") in e.value.message
    assert {m.name for m in reg.search_registered_models(max_results=10)} == {"%2e%2e"}
    reg.create_model_version("%2e%2e", "s3://nowhere/model")
    for bad_stage in ("Heaven", ""):
        with pytest.raises(MlflowException) as e:
            reg.transition_model_version_stage("%2e%2e", "1", bad_stage, False)
        assert e.value.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
