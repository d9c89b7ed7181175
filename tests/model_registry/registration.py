"""The cheat sheet's "Model Registration" section as one script (run with MLFLOW_TRACKING_URI
set); prints a JSON summary.  `client.list_registered_models()` in the cheat sheet no longer
exists in MLflow 3 on any store; `search_registered_models()` is its replacement."""

from __future__ import annotations

import json

import mlflow
import mlflow.sklearn
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def train_model() -> LogisticRegression:
    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=200).fit(X, y)


def main() -> None:
    X, _ = load_iris(return_X_y=True)
    # Method 1: register during logging
    with mlflow.start_run() as run:
        model = train_model()
        mlflow.sklearn.log_model(model, name="model", registered_model_name="iris-classifier",
                                 serialization_format="cloudpickle")
        run_id = run.info.run_id
    client = MlflowClient()
    # Method 2: register an existing model
    model_uri = f"runs:/{run_id}/model"
    mv = mlflow.register_model(model_uri=model_uri, name="iris-classifier")
    # Method 3: programmatic management
    client.create_registered_model(name="production-model",
                                   description="Production model for iris classification")
    client.transition_model_version_stage(name="iris-classifier", version=1, stage="Production")
    client.set_registered_model_alias("iris-classifier", "champion", 2)
    out: dict[str, object] = {"registered": [mv.name, mv.version]}
    out["models"] = [
        (m.name, m.description, sorted((v.version, v.current_stage) for v in m.latest_versions))
        for m in client.search_registered_models(order_by=["name ASC"])
    ]
    for uri in ("models:/iris-classifier/1", "models:/iris-classifier@champion",
                "models:/iris-classifier/Production", "models:/iris-classifier/latest"):
        out[uri] = mlflow.pyfunc.load_model(uri).predict(X[:3]).tolist()
    out["by_alias"] = client.get_model_version_by_alias("iris-classifier", "champion").version
    out["latest_prod"] = [v.version for v in client.get_latest_versions("iris-classifier", ["Production"])]
    print(json.dumps(out, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
