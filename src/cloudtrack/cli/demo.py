"""``cloudtrack demo`` (the cheat sheet's quickstart against a store) and ``cloudtrack
demo-blobs`` (the blob layer's conditional writes, shown on a store)."""

from __future__ import annotations

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import fail
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import CloudtrackError


@main.command("demo-blobs")
@click.argument("uri", required=False)
def demo_blobs(uri: str | None) -> None:
    """Write, list, conditionally update and read back a few objects in a store (a
    temporary folder without URI), then remove them again."""
    import shutil
    import tempfile

    from cloudtrack.blobs import open_blobs
    from cloudtrack.errors import AlreadyExists, PreconditionFailed

    scratch = None if uri else tempfile.mkdtemp(prefix="cloudtrack-demo-")
    target = uri or scratch or ""
    try:
        with open_blobs(target) as blobs:
            if blobs.backend == "file":
                blobs.create_container()
            click.echo(f"store: {blobs.uri}")
            v1 = blobs.put_if_absent("demo/claim.json", b'{"owner": "me"}')
            click.echo(f"put-if-absent demo/claim.json -> version {v1}")
            try:
                blobs.put_if_absent("demo/claim.json", b'{"owner": "someone else"}')
            except AlreadyExists:
                click.echo("a second put-if-absent lost, as it must")
            v2 = blobs.put_if_version("demo/claim.json", b'{"owner": "me", "n": 2}', v1)
            try:
                blobs.put_if_version("demo/claim.json", b"stale", v1)
            except PreconditionFailed:
                click.echo("a put-if-version with the stale version lost, as it must")
            click.echo(f"put-if-version -> version {v2}")
            for info in blobs.list("demo/"):
                click.echo(f"  {info.key}  {info.size} bytes  version {info.version}")
            click.echo(f"read back: {blobs.get('demo/claim.json').decode()}")
            blobs.delete("demo/claim.json")
            click.echo("removed demo/claim.json")
    except CloudtrackError as e:
        fail(str(e))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


DEMO_STORE = ".cloudtrack-demo/store"


@main.command("demo")
@click.option("--store", "store_uri", default=DEMO_STORE, show_default=True,
              help="Where to log: a directory, or s3://, gs://, wasbs://, abfss:// URI.")
def demo(store_uri: str) -> None:
    """The cheat sheet's quickstart against a store: train a small scikit-learn model and log
    its params, metrics, an artifact and the model; then show where everything went."""
    try:
        import mlflow
        import mlflow.sklearn
        import sklearn  # noqa: F401
    except ImportError as e:
        fail(f"the demo needs full mlflow and scikit-learn ({e.name} is missing): "
              "pip install mlflow scikit-learn")
        return
    try:
        config = resolve(store_uri)
    except CloudtrackError as e:
        fail(str(e), 2)
        return
    uri = ("file://" + config.container) if config.backend == "file" else config.display_uri
    mlflow.set_tracking_uri(uri)
    click.echo(f"MLFLOW_TRACKING_URI={uri}")
    from mlflow.exceptions import MlflowException

    try:
        _quickstart(config, uri)
    except (MlflowException, CloudtrackError) as e:
        # The store's error names the operation, the URI and the doctor's command: one line,
        # as every other command says it, not the traceback through MLflow and the SDK.
        fail(getattr(e, "message", None) or str(e))


def _quickstart(config: StoreConfig, uri: str) -> None:
    import os
    import tempfile

    import mlflow
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    mlflow.set_experiment("iris-quickstart")
    with mlflow.start_run() as run:
        params = {"n_estimators": 50, "max_depth": 4, "random_state": 0}
        mlflow.log_params(params)
        model = RandomForestClassifier(**params).fit(X_train, y_train)
        for step, n in enumerate(range(10, 51, 10)):
            partial = RandomForestClassifier(**{**params, "n_estimators": n}).fit(X_train, y_train)
            mlflow.log_metric("test_accuracy", partial.score(X_test, y_test), step=step)
        mlflow.set_tag("model_type", "random_forest")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "feature_importances.txt")
            with open(path, "w") as f:
                f.write("\n".join(f"{i}: {v:.4f}" for i, v in enumerate(model.feature_importances_)))
            mlflow.log_artifact(path)
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                        input_example=X_test[:2])
    run_data = mlflow.get_run(run.info.run_id)
    click.echo(f"run {run.info.run_id} in experiment 'iris-quickstart'")
    click.echo(f"  params   {run_data.data.params}")
    click.echo(f"  metrics  {run_data.data.metrics}")
    click.echo(f"  model    {info.model_uri}")
    click.echo(f"  artifacts {run_data.info.artifact_uri}")
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    click.echo(f"  reloaded model predicts {loaded.predict(X_test[:3]).tolist()}")
    if config.backend == "file":
        click.echo(f"\nthe store is the folder {config.container}:")
        for top in sorted(os.listdir(config.container)):
            click.echo(f"  {top}")
    click.echo(f"\nopen the UI on it:  mlflow ui --backend-store-uri {uri}")


