"""The real local services cloudtrack's tests, demos and benchmarks run against.

Each sub-package starts one service on a free loopback port and cleans it up:
``python -m backends up s3 azure gcs mlflow postgres`` for a person, the pytest fixtures in
``tests/fixtures/services.py`` for tests.  A storage service offers :class:`StorageService`.

``backends.proxy`` holds what goes between a client and a service: a latency proxy for
benchmarks, and a fault-injecting HTTP proxy for chaos tests (``backends/proxy/faults.py``,
``python -m backends.proxy.faults HOST:PORT --rate 0.05 --seed 1``; in tests the ``faulty``
fixture puts one in front of ``s3``, ``azure``, ``azure-oauth`` or ``gcs``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

#: service name -> ``module:Class``
SERVICES: Mapping[str, str] = {
    "local": "backends.local.service:LocalDirectory",
    # The conformance suite's "s3" enforces IAM: plain moto accepts any credentials.
    "s3": "backends.s3.service:MotoS3Iam",
    "s3-iam": "backends.s3.service:MotoS3Iam",
    "s3-noauth": "backends.s3.service:MotoS3",
    "azure": "backends.azure.service:Azurite",
    "azure-oauth": "backends.azure.service:AzuriteOAuth",
    "gcs": "backends.gcs.service:GcsEmulator",
    "mlflow": "backends.mlflow.service:MlflowServer",
    "mlflow-auth": "backends.mlflow.service:MlflowAuthServer",
    "mlflow-postgres": "backends.mlflow.service:MlflowServerPostgres",
    "postgres": "backends.postgres.service:PostgresService",
}

#: The blob backends the conformance suite runs against.
STORAGE_SERVICES = ("local", "s3", "azure", "gcs")


def load(name: str) -> type:
    module, cls = SERVICES[name].split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
