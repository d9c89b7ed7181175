"""The ``cloudtrack`` command: thin click commands over the library."""

from __future__ import annotations

import json
import sys

import click

from cloudtrack import __version__
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import CloudtrackError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cloudtrack")
def main() -> None:
    """MLflow tracking on S3, GCS, Azure Blob or a local directory — no server, no database.

    Point unchanged MLflow code at a store with MLFLOW_TRACKING_URI=s3://bucket/prefix
    (or gs://, wasbs://, abfss://, a local directory).
    """


def _config_dict(config: StoreConfig) -> dict[str, object]:
    return {
        "uri": config.display_uri,
        "backend": config.backend,
        "container": config.container,
        "prefix": config.prefix,
        "settings": [
            {"name": s.name, "value": s.shown() if s.value is not None else None,
             "source": s.source}
            for s in config.settings
        ],
    }


@main.command("config")
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def config_cmd(uri: str, as_json: bool) -> None:
    """Show how URI resolves: container, prefix, and where every setting came from."""
    try:
        config = resolve(uri)
    except CloudtrackError as e:
        _fail(str(e), 2)
        return
    data = _config_dict(config)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"store      {data['uri']}")
    click.echo(f"backend    {config.backend}")
    click.echo(f"container  {config.container}")
    click.echo(f"prefix     {config.prefix or '(none)'}")
    for s in config.settings:
        click.echo(f"  {s.name:<26} {s.shown():<40} from {s.source}")


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@main.command("doctor")
@click.argument("uri", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--read-only", is_flag=True,
              help="Only list and read: write and delete no probe object.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=5.0,
              show_default=True, help="Seconds each network step may take.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the SDKs do to stderr.")
def doctor_cmd(uri: str | None, as_json: bool, read_only: bool, timeout: float,
               verbose: bool) -> None:
    """Find why logging to URI fails, layer by layer, and how to fix it.

    URI defaults to what MLflow would use (MLFLOW_TRACKING_URI, else MLflow's default).
    Checks config, dns, tcp, tls, http, authentication, authorization (a probe object is
    written and removed under the prefix unless --read-only) and endpoint consistency.
    Exit status: 0 nothing failed, 1 something failed, 2 usage error.
    """
    import logging

    from cloudtrack.doctor import run

    secrets: set[str] = set()
    _doctor_logging(verbose, secrets)
    report = run(uri, read_only=read_only, timeout=timeout, secrets=secrets)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        sys.exit(report.exit_code)
    click.echo(f"cloudtrack doctor  {report.uri}  ({report.backend or 'unknown backend'})")
    width = max((len(c.id) for c in report.checks), default=10)
    shown_fix = None
    for check in report.checks:
        click.echo(f"  {_MARK[check.status]}  {check.id:<{width}}  {check.summary}")
        if check.status != "ok" and check.fix:
            # Denied operations of one store share one fix: print it once.
            fix = "the same as above" if check.fix == shown_fix else check.fix
            click.echo(f"        {'':<{width}}  fix: {fix}")
            shown_fix = check.fix
    root = report.root
    if root is None:
        verdict = f"{report.status} ({len(report.checks)} checks)"
    else:
        verdict = f"FAIL: {report.cause} (lowest failing layer: {root.layer}, check {root.id})"
    click.echo(f"result: {verdict} in {report.seconds:.1f}s")
    logging.shutdown()
    sys.exit(report.exit_code)


def _doctor_logging(verbose: bool, secrets: set[str]) -> None:
    """SDK warnings would otherwise reach stderr through logging's last resort; with
    --verbose they do, scrubbed of every secret the doctor knows of (``secrets`` fills up
    during the run)."""
    import logging

    from cloudtrack.doctor.core import scrub

    class _Redact(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = scrub(record.getMessage(), secrets)
            record.args = ()
            if record.exc_info:
                record.msg += "\n" + scrub(logging.Formatter().formatException(record.exc_info),
                                           secrets)
                record.exc_info = None
                record.exc_text = None
            return True

    root = logging.getLogger()
    if not verbose:
        root.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Redact())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)


@main.command("demo-blobs")
@click.argument("uri", required=False)
def demo_blobs(uri: str | None) -> None:
    """Write, list, conditionally update and read back a few objects in a store."""
    import tempfile

    from cloudtrack.blobs import open_blobs
    from cloudtrack.errors import AlreadyExists, PreconditionFailed

    target = uri or tempfile.mkdtemp(prefix="cloudtrack-demo-")
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
    except CloudtrackError as e:
        _fail(str(e))


DEMO_STORE = ".cloudtrack-demo/store"


@main.command("demo")
@click.option("--store", "store_uri", default=DEMO_STORE, show_default=True,
              help="Where to log: a directory, or s3://, gs://, wasbs://, abfss:// URI.")
def demo(store_uri: str) -> None:
    """The cheat sheet's quickstart against a store: train a small scikit-learn model and log
    its params, metrics, an artifact and the model; then show where everything went."""
    import os
    import tempfile

    try:
        import mlflow
        import mlflow.sklearn
        from sklearn.datasets import load_iris
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        _fail(f"the demo needs full mlflow and scikit-learn ({e.name} is missing): "
              "pip install mlflow scikit-learn")
        return
    try:
        config = resolve(store_uri)
    except CloudtrackError as e:
        _fail(str(e), 2)
        return
    uri = ("file://" + config.container) if config.backend == "file" else config.display_uri
    mlflow.set_tracking_uri(uri)
    click.echo(f"MLFLOW_TRACKING_URI={uri}")
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


if __name__ == "__main__":
    main()
