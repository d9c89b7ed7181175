"""Bad input for the model registry: names that try to leave the store's prefix, corrupt
records, unknown stages."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from cloudtrack.store import layout
from tests.fixtures.stores import registry_store


def test_registry_names_stay_inside_and_corrupt_records_are_named(store) -> None:  # type: ignore[no-untyped-def]
    reg = registry_store(store)
    for rejected in ("../../escape", "a/b", "x:y", "", ".."):
        with pytest.raises(MlflowException) as e:
            reg.create_registered_model(rejected)
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    reg.create_registered_model("%2e%2e")
    reg.create_registered_model("fine")
    keys = [i.key for i in reg.blobs.list("registry/models/")]
    assert "registry/models/%252e%252e.json" in keys
    assert all(k.startswith("registry/models/") and "/../" not in k and not k.endswith("/...json")
               for k in keys)
    assert {m.name for m in reg.search_registered_models(max_results=10)} == {"%2e%2e", "fine"}
    reg.blobs.put(layout.registered_model("fine"), b"{broken")
    with pytest.raises(MlflowException) as e:
        reg.get_registered_model("fine")
    assert layout.registered_model("fine") in e.value.message
    assert {m.name for m in reg.search_registered_models(max_results=10)} == {"%2e%2e"}
    reg.create_model_version("%2e%2e", "s3://nowhere/model")
    for bad_stage in ("Heaven", ""):
        with pytest.raises(MlflowException) as e:
            reg.transition_model_version_stage("%2e%2e", "1", bad_stage, False)
        assert e.value.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
