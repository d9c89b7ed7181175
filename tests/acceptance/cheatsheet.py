"""The MLflow cheat sheet our users follow (shared/seeds/), as one script.

Run as ``python cheatsheet.py <phase>`` with MLFLOW_TRACKING_URI set; it prints one JSON summary
of what MLflow reads back.  Hub models are replaced by small offline scikit-learn stand-ins;
everything else is the cheat sheet's code.  The test runs it against MLflow's sqlite store and
against every cloudtrack backend and compares the summaries.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow.tracking import MlflowClient


def small_model():  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=200).fit(X, y), X, y


def basic_tracking() -> str:
    """'Basic Experiment Tracking' with a local stand-in for the Hugging Face model."""
    mlflow.set_experiment("text-classification")
    with mlflow.start_run() as run:
        mlflow.log_param("model_name", "distilbert-base-uncased")
        mlflow.log_param("num_labels", 2)
        mlflow.log_param("max_length", 512)
        mlflow.log_param("epochs", 3)
        mlflow.log_param("batch_size", 16)
        model, X, _y = small_model()
        mlflow.log_metric("final_loss", 0.25)
        mlflow.log_metric("total_steps", 30)
        mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                 input_example=X[:2])
        mlflow.set_tag("model_type", "transformer")
        mlflow.set_tag("task", "text_classification")
        mlflow.set_tag("framework", "transformers")
        return str(run.info.run_id)


def post_run_first() -> str:
    with mlflow.start_run() as run:
        mlflow.log_param("model", "neural_network")
        mlflow.log_metric("initial_loss", 0.8)
        return str(run.info.run_id)


def post_run_resume(run_id: str) -> None:
    """'Post-Run Logging with Run ID', from another process."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("final_loss", 0.15)
        mlflow.log_metric("epochs", 100)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "predictions.npy")
            np.save(path, [0.9, 0.8, 0.95])
            mlflow.log_artifact(path)
        mlflow.set_tag("status", "completed")
        mlflow.set_tag("performance", "good")


def trainer_loop() -> str:
    """'MLflow in a Trainer Class' with a numpy stand-in for the torch model."""
    mlflow.set_experiment("mnist-classification")
    with mlflow.start_run() as run:
        mlflow.log_param("epochs", 5)
        mlflow.log_param("learning_rate", 0.001)
        mlflow.log_param("batch_size", 32)
        mlflow.log_param("optimizer", "Adam")
        for epoch in range(5):
            mlflow.log_metric("train_loss", 1.0 / (epoch + 1), step=epoch)
            mlflow.log_metric("val_loss", 1.2 / (epoch + 1), step=epoch)
            mlflow.log_metric("val_accuracy", 50 + 10 * epoch, step=epoch)
        mlflow.log_param("total_parameters", 101770)
        mlflow.set_tag("framework", "pytorch")
        return str(run.info.run_id)


def autolog() -> str:
    """'Scikit-learn Integration': autolog."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_iris(return_X_y=True)
    mlflow.set_experiment("autolog")
    mlflow.sklearn.autolog(serialization_format="cloudpickle", log_models=True)
    try:
        with mlflow.start_run() as run:
            RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
            return str(run.info.run_id)
    finally:
        mlflow.sklearn.autolog(disable=True)


def organization() -> str:
    """'Organization Tips' (nested runs) and 'Batch Logging for Performance'."""
    mlflow.set_experiment("tuning")
    with mlflow.start_run(run_name="hyperparameter_tuning") as parent:
        for lr in [0.01, 0.1, 0.001]:
            with mlflow.start_run(run_name=f"lr_{lr}", nested=True):
                mlflow.log_param("learning_rate", lr)
                losses = []
                for epoch in range(30):
                    loss = lr * (30 - epoch)
                    losses.append(loss)
                    if epoch % 10 == 0:
                        for i, loss_val in enumerate(losses):
                            mlflow.log_metric("loss", loss_val, step=epoch - len(losses) + i + 1)
                        losses = []
        return str(parent.info.run_id)


def plots() -> str:
    """'Custom Metrics and Plots' and log_artifacts of a folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlflow.set_experiment("plots")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as d:
        epochs = list(range(5))
        plt.figure(figsize=(4, 3))
        plt.plot(epochs, [1 / (e + 1) for e in epochs], label="Training Loss")
        plt.legend()
        os.makedirs(os.path.join(d, "plots", "sub"))
        plt.savefig(os.path.join(d, "loss_curves.png"))
        mlflow.log_artifact(os.path.join(d, "loss_curves.png"))
        for name in ("a.txt", "sub/b.txt"):
            with open(os.path.join(d, "plots", name), "w") as f:
                f.write(name)
        mlflow.log_artifacts(os.path.join(d, "plots"), artifact_path="plots")
        return str(run.info.run_id)


def summary(run_ids: dict[str, str]) -> dict[str, object]:
    client = MlflowClient()
    out: dict[str, object] = {}
    for label, run_id in run_ids.items():
        run = mlflow.get_run(run_id)

        def walk(path: str | None = None, run_id: str = run_id) -> list[str]:
            found = []
            for f in client.list_artifacts(run_id, path):
                found.extend(walk(f.path, run_id) if f.is_dir else [f.path])
            return sorted(found)

        out[label] = {
            "status": run.info.status,
            "params": run.data.params,
            "metrics": {k: round(v, 6) for k, v in run.data.metrics.items()},
            "tags": sorted(k for k in run.data.tags if not k.startswith("mlflow.")),
            "artifacts": [a for a in walk() if not a.startswith("model/")],
            "outputs": len(run.outputs.model_outputs) if run.outputs else 0,
        }
    trainer = run_ids["trainer"]
    out["history"] = [(m.step, m.value) for m in
                      client.get_metric_history(trainer, "val_accuracy")]
    exp = mlflow.get_experiment_by_name("mnist-classification")
    df = mlflow.search_runs(experiment_ids=[exp.experiment_id],
                            filter_string="metrics.val_accuracy > 60")
    out["search"] = sorted(df["params.optimizer"].tolist())
    nested = mlflow.search_runs(experiment_names=["tuning"],
                                filter_string="params.learning_rate = '0.1'")
    out["nested"] = [
        (row["tags.mlflow.runName"], row["tags.mlflow.parentRunId"] == run_ids["organization"])
        for _, row in nested.iterrows()
    ]
    out["loss_points"] = len(client.get_metric_history(
        nested.iloc[0]["run_id"], "loss"))
    model_uri = f"runs:/{run_ids['basic']}/model"
    model = mlflow.pyfunc.load_model(model_uri)
    _m, X, _y = small_model()
    out["predictions"] = model.predict(X[:3]).tolist()
    out["experiments"] = sorted(e.name for e in mlflow.search_experiments())
    return out


def main() -> None:
    phase = sys.argv[1]
    if phase == "first":
        print(json.dumps({"run_id": post_run_first()}))
    elif phase == "rest":
        post_run_resume(sys.argv[2])
        ids = {"post_run": sys.argv[2], "basic": basic_tracking(), "trainer": trainer_loop(),
               "autolog": autolog(), "organization": organization(), "plots": plots()}
        print(json.dumps(summary(ids), sort_keys=True))


if __name__ == "__main__":
    main()
