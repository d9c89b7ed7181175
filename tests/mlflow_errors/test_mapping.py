"""The error table of cloudtrack.mlflow_errors, and that every MLflow-facing method applies it.

The end-to-end check (a real ``mlflow server`` answering 403 and 404) is test_server.py
beside this file; here the table itself and the mechanism."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from cloudtrack import errors
from cloudtrack.artifacts import BlobArtifactRepository
from cloudtrack.mlflow_errors import ERROR_CODES, error_code, to_mlflow, translate_errors
from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.store.marker import ForeignFormat, NewerFormatVersion
from cloudtrack.tracking import BlobTrackingStore

#: error -> (MLflow error code, the HTTP status mlflow server answers with it)
EXPECTED = [
    (errors.BlobNotFound("no such object", "s3://b/k"), "RESOURCE_DOES_NOT_EXIST", 404),
    (errors.ContainerNotFound("no such bucket", "s3://b"), "RESOURCE_DOES_NOT_EXIST", 404),
    (errors.PermissionDenied("AccessDenied", "s3://b/k"), "PERMISSION_DENIED", 403),
    (errors.Unauthenticated("expired token", "s3://b/k"), "UNAUTHENTICATED", 401),
    (errors.CredentialsUnavailable("no credentials", "s3://b", reason="missing"),
     "UNAUTHENTICATED", 401),
    (errors.TransientError("503 SlowDown", "s3://b/k"), "TEMPORARILY_UNAVAILABLE", 503),
    (errors.PreconditionFailed("etag changed", "s3://b/k"), "RESOURCE_CONFLICT", 409),
    (errors.AlreadyExists("exists", "s3://b/k"), "RESOURCE_CONFLICT", 409),
    (errors.ConfigError("bad URI"), "INVALID_PARAMETER_VALUE", 400),
    (errors.CorruptObject("s3://b/k", "not JSON"), "INVALID_STATE", 500),
    (ForeignFormat("s3://b/cloudtrack.json", "other"), "INVALID_STATE", 500),
    (NewerFormatVersion("s3://b", 99), "INVALID_STATE", 500),
    (errors.UnsupportedOperation("start_trace is not supported"), "NOT_IMPLEMENTED", 501),
    (errors.MissingDependencyError("pip install cloudtrack[s3]"), "INTERNAL_ERROR", 500),
    (errors.BlobError("something else", "s3://b/k"), "INTERNAL_ERROR", 500),
    (errors.CloudtrackError("anything"), "INTERNAL_ERROR", 500),
]


@pytest.mark.parametrize(("error", "code", "status"), EXPECTED,
                         ids=[type(e).__name__ for e, _, _ in EXPECTED])
def test_each_error_maps_to_its_mlflow_code(error: errors.CloudtrackError, code: str,
                                            status: int) -> None:
    mlflow_error = to_mlflow(error)
    assert mlflow_error.error_code == code
    assert mlflow_error.get_http_status_code() == status
    assert mlflow_error.message == str(error)


def test_the_table_names_real_mlflow_codes_and_every_cloudtrack_error() -> None:
    for name in ERROR_CODES.values():
        databricks_pb2.ErrorCode.Value(name)  # raises for an unknown name
    declared = {cls for cls in vars(errors).values()
                if inspect.isclass(cls) and issubclass(cls, errors.CloudtrackError)}
    # A new error class gets a deliberate code, not whatever its base class has.
    assert declared <= set(ERROR_CODES), declared - set(ERROR_CODES)


def test_translation_keeps_the_message_and_the_cause() -> None:
    denied = errors.PermissionDenied("AccessDenied on s3://b/k", "s3://b/k")

    @translate_errors
    def failing() -> None:
        raise denied

    with pytest.raises(MlflowException) as e:
        failing()
    assert e.value.error_code == "PERMISSION_DENIED"
    assert e.value.__cause__ is denied and "AccessDenied on s3://b/k" in e.value.message
    assert error_code(denied) == "PERMISSION_DENIED"


def test_other_exceptions_pass_unchanged() -> None:
    original = MlflowException("as MLflow raised it", databricks_pb2.INVALID_PARAMETER_VALUE)

    @translate_errors
    def failing(error: Exception) -> None:
        raise error

    for error in (original, ValueError("not ours"), KeyboardInterrupt()):
        with pytest.raises(type(error)) as e:
            failing(error)
        assert e.value is error


def _cloudtrack_methods(cls: type) -> list[str]:
    names = []
    for name in dir(cls):
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if (owner is not None and owner.__module__.startswith("cloudtrack.")
                and inspect.isfunction(vars(owner)[name]) and not name.startswith("_")):
            names.append(name)
    return names


@pytest.mark.parametrize(("cls", "hooks"), [
    (BlobTrackingStore, ["__init__", "_search_runs", "_search_datasets"]),
    (BlobRegistryStore, ["__init__"]),
    (BlobArtifactRepository, ["__init__", "_is_directory", "_download_file"]),
], ids=["tracking", "registry", "artifacts"])
def test_every_public_method_is_at_the_boundary(cls: type, hooks: list[str]) -> None:
    names = _cloudtrack_methods(cls)
    assert len(names) >= 4
    for name in [*names, *hooks]:
        assert getattr(getattr(cls, name), "__cloudtrack_boundary__", False), name


def test_a_store_answers_mlflow_errors_and_keeps_its_buffer(tmp_path: Path) -> None:
    """The flusher still sees cloudtrack's own errors.  A write into a bucket that is gone is a
    BlobNotFound inside and RESOURCE_DOES_NOT_EXIST at the boundary, yet no verdict on the
    buffered data (which the flusher drops only for MLflow's RESOURCE_DOES_NOT_EXIST of a
    missing run): the data is kept and written once the store is back.  The store's blobs are
    wrapped to fail on purpose: no real service loses a bucket and gets it back on cue."""
    store = BlobTrackingStore(str(tmp_path))
    run_id = store.create_run("0", "u", 0, [], "kept").info.run_id
    store.log_metric(run_id, Metric("loss", 0.5, 0, 0))
    real = store.blobs._put

    def gone(key: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise errors.ContainerNotFound(f"the directory of {key} is gone", str(tmp_path))

    store.blobs._put = gone  # type: ignore[method-assign]
    with pytest.raises(MlflowException) as e:
        store.flush()
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert isinstance(e.value.__cause__, errors.ContainerNotFound)
    store.blobs._put = real  # type: ignore[method-assign]
    assert [m.value for m in store.get_metric_history(run_id, "loss")] == [0.5]
    store.close()
