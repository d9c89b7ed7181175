"""The tests mirror ``src/cloudtrack``; what several test modules share is the pytest plugin in
``tests/fixtures/``, registered here once."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.stores",
    "tests.fixtures.reference",
    "tests.fixtures.doctor",
    "tests.fixtures.faults",
    "tests.fixtures.credentials",
]

# The tests never read or write the logins (`cloudtrack login`) of whoever runs them: their
# own configuration folder, empty.  Tests of logins give their processes a HOME of their own.
os.environ["CLOUDTRACK_CONFIG_DIR"] = tempfile.mkdtemp(prefix="cloudtrack-test-config-")
# Nor their cache folder (the journal, the read cache): one of the session's own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cloudtrack-test-cache-")
# Each pytest process (the controller and every xdist worker) removes its two when it ends.
for _folder in (os.environ["CLOUDTRACK_CONFIG_DIR"], os.environ["XDG_CACHE_HOME"]):
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)

#: MLflow's default tracking URI (sqlite:///mlflow.db) creates this in the working directory:
#: a test (or a code path) that reaches it without meaning to leaves it in the checkout.
_STRAY_DB = Path(__file__).resolve().parent.parent / "mlflow.db"


@pytest.fixture(autouse=True)
def _no_stray_default_store(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _STRAY_DB.exists()
    yield
    if not before and _STRAY_DB.exists():
        warnings.warn(f"{_STRAY_DB} appeared during {request.node.nodeid} (or a test running "
                      "beside it): something used MLflow's default tracking URI", stacklevel=1)
