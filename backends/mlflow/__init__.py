"""A real MLflow tracking server: plain, with MLflow's basic-auth app, or on PostgreSQL."""

from backends.mlflow.service import (
    Credentials,
    MlflowAuthServer,
    MlflowServer,
    MlflowServerError,
    MlflowServerPostgres,
)

__all__ = ["Credentials", "MlflowAuthServer", "MlflowServer", "MlflowServerError",
           "MlflowServerPostgres"]
