"""The stores the login tests log into: each cloud backend (a local directory needs no login),
or one backend where the behaviour under test is the same code for all."""

from __future__ import annotations

import pytest

from tests.fixtures.services import Store, service


def new_store(name: str) -> Store:
    svc = service(name)
    return Store(name, svc.new_store(), dict(svc.env), svc)


@pytest.fixture(params=["s3", "azure", "gcs"])
def cloud(request: pytest.FixtureRequest) -> Store:
    """A fresh store on each cloud backend."""
    return new_store(request.param)


@pytest.fixture
def s3_store() -> Store:
    """A fresh store on moto with IAM (two users: what several tests need)."""
    return new_store("s3")


@pytest.fixture
def azure_store() -> Store:
    return new_store("azure")
