"""Fixtures that start the real services from ``backends/`` once per session, on free
loopback ports, and hand each test a fresh store on them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import backends
from backends._common import StorageService
from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.config import resolve

_running: dict[str, StorageService] = {}


def service(name: str) -> StorageService:
    """Start ``name`` on first use; every service stops at the end of the session."""
    if name not in _running:
        svc = backends.load(name)()
        svc.start()
        _running[name] = svc
    return _running[name]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for svc in _running.values():
        svc.stop()
    _running.clear()


@dataclass
class Store:
    """A fresh, empty store on one backend, and the environment that reaches it."""

    backend: str
    uri: str
    env: dict[str, str]
    service: StorageService

    def open(self, **env_overrides: str) -> Blobs:
        return open_blobs(resolve(self.uri, {**self.env, **env_overrides}))


@pytest.fixture(params=backends.STORAGE_SERVICES)
def store(request: pytest.FixtureRequest) -> Store:
    svc = service(request.param)
    return Store(request.param, svc.new_store(), dict(svc.env), svc)


@pytest.fixture
def blobs(store: Store) -> Iterator[Blobs]:
    b = store.open()
    yield b
    b.close()
