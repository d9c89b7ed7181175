"""``cloudtrack migrate``: everything MLflow stores, from any store into any other — exactly
where the destination allows it, resumably, verified (docs/migrate.md).

    from cloudtrack.migrate import migrate
    report = migrate("sqlite:///mlflow.db", "s3://bucket/mlflow", verify=True)
    assert report.ok, report.failures

The pieces: :mod:`~.endpoints` (what a URI names, opened), :mod:`~.rest` (every request to an
MLflow server: bounded, an exhausted connection pool retried), :mod:`~.source` (reading a store),
:mod:`~.destination` and one writer per destination kind (:mod:`~.dest_cloudtrack`,
:mod:`~.dest_sql`, :mod:`~.dest_server`), :mod:`~.artifacts`, :mod:`~.runner` (the
migration), :mod:`~.verify`, :mod:`~.model` (what is copied and reported).
"""

from cloudtrack.migrate.endpoints import EndpointError
from cloudtrack.migrate.model import MigrationReport
from cloudtrack.migrate.runner import Progress, migrate

__all__ = ["EndpointError", "MigrationReport", "Progress", "migrate"]
