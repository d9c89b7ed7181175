"""The installed entry points cover every scheme of the backend table: a backend added to the
table but not to pyproject.toml (or an install that predates it) would leave MLflow routing
its URIs to MLflow's own stores, or to nothing."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from cloudtrack import mlflow_plugin
from cloudtrack.config import SCHEMES

GROUPS = {
    "mlflow.tracking_store": "tracking_store_builder",
    "mlflow.model_registry_store": "registry_store_builder",
    "mlflow.artifact_repository": "artifact_repository",
}


def installed(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=group)
            if ep.value.startswith("cloudtrack.")}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_scheme_of_the_backend_table_has_its_entry_point(group: str) -> None:
    # Local artifact URIs stay with MLflow's LocalArtifactRepository: nothing to add there.
    wanted = {scheme for scheme, (backend, _form) in SCHEMES.items()
              if group != "mlflow.artifact_repository" or backend != "file"}
    got = installed(group)
    assert set(got) == wanted, ("pyproject.toml's entry points and the backend table differ "
                                "(or the installed metadata is stale: pip install -e .)")
    for value in got.values():
        assert value == f"cloudtrack.mlflow_plugin:{GROUPS[group]}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_entry_points_load_the_builders(group: str) -> None:
    for ep in entry_points(group=group):
        if ep.value.startswith("cloudtrack."):
            builder = ep.load()
            assert callable(builder) and builder.__module__ == mlflow_plugin.__name__
