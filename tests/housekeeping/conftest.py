"""What the housekeeping tests share: the tracking store on each backend, with the environment
that reaches it set (MLflow's artifact repositories, and gc's, resolve their URIs from it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.services import Store
from tests.fixtures.stores import tracking_store


@pytest.fixture
def cloud(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlobTrackingStore]:
    for k, v in store.env.items():
        monkeypatch.setenv(k, v)
    s = tracking_store(store, strict=True)
    yield s
    s.close()
