"""The installed entry points cover every scheme of the backend table: a backend added to the
table but not to pyproject.toml (or an install that predates it) would leave MLflow routing
its URIs to MLflow's own stores, or to nothing.  MLflow servers' schemes go to MLflow's own
REST stores and HTTP artifact repositories, built by cloudtrack.credentials.server so that a
`cloudtrack login` signs them."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from cloudtrack import mlflow_plugin
from cloudtrack.config import SCHEMES
from cloudtrack.credentials import server

GROUPS = {
    "mlflow.tracking_store": "tracking_store_builder",
    "mlflow.model_registry_store": "registry_store_builder",
    "mlflow.artifact_repository": "artifact_repository",
}
#: The server schemes of each group -> the builder in cloudtrack.credentials.server.
SERVER = {
    "mlflow.tracking_store": ({"http", "https"}, "tracking_store"),
    "mlflow.model_registry_store": ({"http", "https"}, "registry_store"),
    "mlflow.artifact_repository": ({"http", "https", "mlflow-artifacts"}, "artifact_repository"),
}


def installed(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=group)
            if ep.value.startswith("cloudtrack.")}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_scheme_of_the_backend_table_has_its_entry_point(group: str) -> None:
    # Local artifact URIs stay with MLflow's LocalArtifactRepository: nothing to add there.
    wanted = {scheme for scheme, (backend, _form) in SCHEMES.items()
              if group != "mlflow.artifact_repository" or backend != "file"}
    servers, server_builder = SERVER[group]
    got = installed(group)
    assert set(got) == wanted | servers, (
        "pyproject.toml's entry points and the backend table differ (or the installed "
        "metadata is stale: pip install -e .)")
    for scheme, value in got.items():
        assert value == (f"cloudtrack.credentials.server:{server_builder}" if scheme in servers
                         else f"cloudtrack.mlflow_plugin:{GROUPS[group]}")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_entry_points_load_the_builders(group: str) -> None:
    servers = SERVER[group][0]
    for ep in entry_points(group=group):
        if ep.value.startswith("cloudtrack."):
            builder = ep.load()
            module = server.__name__ if ep.name in servers else mlflow_plugin.__name__
            assert callable(builder) and builder.__module__ == module


def test_the_request_auth_provider_is_registered() -> None:
    found = [ep for ep in entry_points(group="mlflow.request_auth_provider")
             if ep.value.startswith("cloudtrack.")]
    assert [ep.name for ep in found] == [server.AUTH_NAME]
    assert found[0].load()().get_name() == server.AUTH_NAME
