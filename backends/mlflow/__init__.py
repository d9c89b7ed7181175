"""A real MLflow tracking server, plain or with MLflow's basic-auth app."""

from backends.mlflow.service import Credentials, MlflowAuthServer, MlflowServer, MlflowServerError

__all__ = ["Credentials", "MlflowAuthServer", "MlflowServer", "MlflowServerError"]
