"""The framework examples need the ``frameworks`` extra.  Without it a run that did not ask for
them (a plain ``pytest``) skips them with the install hint; a run that asked (``-m frameworks``,
as CI and ``tox -e frameworks`` do) fails, so a missing install never passes as a skip."""

from __future__ import annotations

import importlib.util

import pytest

NEEDED = ("torch", "lightning", "pytorch_lightning", "transformers", "datasets", "accelerate")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    hint = (f"the frameworks suite needs {', '.join(missing)}: "
            "pip install -e '.[frameworks]' (or tox -e frameworks)")
    if "frameworks" in config.getoption("markexpr", "").replace("not frameworks", ""):
        raise pytest.UsageError(hint)
    skip = pytest.mark.skip(reason=hint)
    for item in items:
        if item.get_closest_marker("frameworks"):
            item.add_marker(skip)
