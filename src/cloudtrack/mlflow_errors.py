"""cloudtrack's errors as MLflow's, at the boundary of the MLflow-facing classes.

Inside cloudtrack every failure is a :class:`~cloudtrack.errors.CloudtrackError`.  MLflow's
clients and ``mlflow server`` understand only :class:`~mlflow.exceptions.MlflowException` and
its error code, which the server turns into the HTTP status: a permission error must reach a
REST client as PERMISSION_DENIED (403), not as a 500.  :func:`boundary` wraps every public
method of a store or repository class so that a CloudtrackError leaving it becomes an
MlflowException with the code of :data:`ERROR_CODES`, the same message, and the cloudtrack
error as ``__cause__``.  Calls inside cloudtrack (the flusher, one store method calling a
private one) see cloudtrack's own errors.

MLflow is imported only when an error is translated: the doctor imports this module (through
:mod:`cloudtrack.mlflow_plugin`) and must not pay seconds of MLflow import for it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    CloudtrackError,
    ConfigError,
    ContainerNotFound,
    CorruptObject,
    CredentialsUnavailable,
    MissingDependencyError,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
    UnsupportedOperation,
)
from cloudtrack.store.marker import NewerFormatVersion

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

#: cloudtrack error -> the name of MLflow's error code (``mlflow.protos.databricks_pb2``).
#: The most specific class of an error wins (looked up along its MRO).
ERROR_CODES: Mapping[type[CloudtrackError], str] = {
    BlobNotFound: "RESOURCE_DOES_NOT_EXIST",
    ContainerNotFound: "RESOURCE_DOES_NOT_EXIST",
    PermissionDenied: "PERMISSION_DENIED",
    Unauthenticated: "UNAUTHENTICATED",
    CredentialsUnavailable: "UNAUTHENTICATED",
    TransientError: "TEMPORARILY_UNAVAILABLE",
    # A name or number a user asked for that is taken is answered where it is claimed, with
    # MLflow's own message and RESOURCE_ALREADY_EXISTS.  What reaches the boundary is a write
    # that lost to another writer where the store could not absorb it: a conflict (409), which
    # the caller may retry, not a 400 telling it to change its request.
    PreconditionFailed: "RESOURCE_CONFLICT",
    AlreadyExists: "RESOURCE_CONFLICT",
    ConfigError: "INVALID_PARAMETER_VALUE",
    # A damaged or foreign record, or a store of a newer format: the store's state, not the
    # request, is at fault (INVALID_STATE is what cloudtrack answered for these before).
    CorruptObject: "INVALID_STATE",
    NewerFormatVersion: "INVALID_STATE",
    UnsupportedOperation: "NOT_IMPLEMENTED",
    MissingDependencyError: "INTERNAL_ERROR",
    BlobError: "INTERNAL_ERROR",
    CloudtrackError: "INTERNAL_ERROR",
}


def error_code(error: CloudtrackError) -> str:
    """The name of the MLflow error code for ``error``."""
    for cls in type(error).__mro__:
        if cls in ERROR_CODES:
            return ERROR_CODES[cls]  # type: ignore[index]
    return "INTERNAL_ERROR"  # unreachable: CloudtrackError is in the table


def to_mlflow(error: CloudtrackError) -> MlflowException:
    """``error`` as an MlflowException with the same message (raise it ``from error``)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    return MlflowException(str(error), ErrorCode.Value(error_code(error)))


def translate_errors(fn: F) -> F:
    """Wrap ``fn`` so that a CloudtrackError leaving it becomes an MlflowException."""
    if getattr(fn, "__cloudtrack_boundary__", False):
        return fn
    if inspect.isgeneratorfunction(fn):
        raise TypeError(f"{fn.__qualname__} is a generator: its errors would escape the "
                        "boundary when it is iterated, after the call returned")

    @functools.wraps(fn)
    def at_boundary(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CloudtrackError as e:
            raise to_mlflow(e) from e

    at_boundary.__cloudtrack_boundary__ = True  # type: ignore[attr-defined]
    return at_boundary  # type: ignore[return-value]


def boundary(*hooks: str) -> Callable[[C], C]:
    """Class decorator: translate errors in every public method the class or a cloudtrack base
    (a mixin) defines, and in ``hooks``, the private methods MLflow calls itself (``__init__``,
    ``_search_runs`` …).

    Methods inherited from MLflow's base classes are left as they are: they reach the store only
    through the methods wrapped here.
    """
    def decorate(cls: C) -> C:
        names = {n for n in dir(cls) if not n.startswith("_")} | set(hooks)
        for name in sorted(names):
            owner = next((k for k in cls.__mro__ if name in vars(k)), None)
            if owner is None or not owner.__module__.startswith("cloudtrack."):
                continue
            raw = vars(owner)[name]
            if inspect.isfunction(raw):
                setattr(cls, name, translate_errors(raw))
            elif isinstance(raw, (staticmethod, classmethod)):
                setattr(cls, name, type(raw)(translate_errors(raw.__func__)))
        return cls

    return decorate
