"""MLflow's abstract stores do not enforce their abstract methods: a forgotten method would
silently return None.  Every public method of the base classes must be implemented here, be an
inherited method that only calls implemented ones, or raise a clear NOT_IMPLEMENTED.

"Implemented here" means defined by a cloudtrack class anywhere in the store's class hierarchy
(the tracking store is a few mixins): the class that answers a name is the first in the MRO
that defines it, so a method a mixin forgot falls through to MLflow's base and is caught."""

from __future__ import annotations

import inspect

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryBase
from mlflow.store.tracking.abstract_store import AbstractStore as TrackingBase

from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.tracking import INHERITED, BlobTrackingStore
from cloudtrack.tracking.experiments import ExperimentsMixin
from cloudtrack.tracking.unsupported import refuse_the_rest

#: What the tracking store must implement for real: MLflow's client and UI need each of these.
REQUIRED_TRACKING = {
    "create_experiment", "get_experiment", "get_experiment_by_name", "search_experiments",
    "rename_experiment", "delete_experiment", "restore_experiment", "set_experiment_tag",
    "delete_experiment_tag", "create_run", "get_run", "update_run_info", "delete_run",
    "restore_run", "set_tag", "delete_tag", "log_param", "log_metric", "log_batch", "log_inputs",
    "log_outputs", "get_metric_history", "get_metric_history_bulk_interval_from_steps",
    "_search_runs", "create_logged_model", "get_logged_model", "search_logged_models",
    "finalize_logged_model", "delete_logged_model", "set_logged_model_tags",
    "delete_logged_model_tag", "record_logged_model", "search_traces", "query_trace_metrics",
}


def public_methods(cls: type) -> list[str]:
    return sorted(n for n, _ in inspect.getmembers(cls, predicate=callable) if not n.startswith("_"))


def implemented_here(cls: type, name: str) -> bool:
    """Is ``name`` answered by a cloudtrack class of ``cls``'s hierarchy (not MLflow's)?"""
    owner = next((k for k in cls.__mro__ if name in vars(k)), None)
    return owner is not None and owner.__module__.startswith("cloudtrack.")


def test_required_tracking_methods_are_implemented_here() -> None:
    for name in REQUIRED_TRACKING:
        assert implemented_here(BlobTrackingStore, name), name
        assert name not in BlobTrackingStore.UNSUPPORTED, name


@pytest.mark.parametrize("name", public_methods(TrackingBase))
def test_every_tracking_method_is_accounted_for(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    defined_here = implemented_here(BlobTrackingStore, name)
    assert defined_here or name in INHERITED, f"{name} is neither implemented nor unsupported"
    if name in BlobTrackingStore.UNSUPPORTED:
        store = BlobTrackingStore(str(tmp_path))
        params = [p for p in inspect.signature(getattr(TrackingBase, name)).parameters.values()
                  if p.name != "self" and p.default is inspect.Parameter.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        with pytest.raises(MlflowException) as e:
            getattr(store, name)(*[None] * len(params))
        assert e.value.error_code == "NOT_IMPLEMENTED"
        assert "cloudtrack" in e.value.message and str(tmp_path) in e.value.message


def test_inherited_methods_exist_and_are_concrete() -> None:
    for name in INHERITED:
        method = getattr(TrackingBase, name)
        assert not getattr(method, "__isabstractmethod__", False), name


def test_a_method_no_mixin_defines_is_found_missing() -> None:
    """The walk sees through the mixins: a store made of some of them lacks the others'
    methods, and refuse_the_rest refuses exactly those."""
    partial = type("Partial", (ExperimentsMixin,), {"__module__": "tests.tracking"})
    assert implemented_here(partial, "create_experiment")
    assert not implemented_here(partial, "log_batch")  # answered by MLflow's base: None
    refused = refuse_the_rest(type("Refusing", (ExperimentsMixin,), {"__module__": "tests.tracking"}))
    assert "log_batch" in refused.UNSUPPORTED and "create_experiment" not in refused.UNSUPPORTED


#: Registry base-class methods MLflow implements on top of the abstract ones (prompts,
#: copy_model_version), or refuses itself with a clear error (webhooks).
REGISTRY_INHERITED = {
    "copy_model_version", "create_prompt", "search_prompts", "delete_prompt", "set_prompt_tag",
    "delete_prompt_tag", "get_prompt", "create_prompt_version", "get_prompt_version",
    "delete_prompt_version", "get_prompt_version_by_alias", "set_prompt_alias",
    "delete_prompt_alias", "search_prompt_versions", "link_prompts_to_trace",
    "set_prompt_version_tag", "delete_prompt_version_tag", "link_prompt_version_to_model",
    "link_prompt_version_to_run", "supports_workspaces",
}
REGISTRY_REFUSED_BY_MLFLOW = {"create_webhook", "get_webhook", "update_webhook",
                              "delete_webhook", "test_webhook"}


@pytest.mark.parametrize("name", public_methods(RegistryBase))
def test_every_registry_method_is_accounted_for(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if name in REGISTRY_REFUSED_BY_MLFLOW:
        store = BlobRegistryStore(str(tmp_path))
        params = [p for p in inspect.signature(getattr(RegistryBase, name)).parameters.values()
                  if p.name != "self" and p.default is inspect.Parameter.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        with pytest.raises(NotImplementedError) as e:
            getattr(store, name)(*[None] * len(params))
        assert "does not support" in str(e.value)
        return
    assert implemented_here(BlobRegistryStore, name) or name in REGISTRY_INHERITED, (
        f"{name} would silently return None")
    assert not getattr(getattr(BlobRegistryStore, name), "__isabstractmethod__", False), name


def test_trace_queries_are_empty_because_trace_writes_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = BlobTrackingStore(str(tmp_path))
    with pytest.raises(MlflowException) as e:
        store.start_trace(None)
    assert e.value.error_code == "NOT_IMPLEMENTED"
    assert store.search_traces(["0"]) == ([], None)
    assert list(store.query_trace_metrics(["0"], None, "latency", [])) == []
    with pytest.raises(MlflowException) as e:
        store.search_traces(["12345"])
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_no_webhook_can_exist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = BlobRegistryStore(str(tmp_path))
    with pytest.raises(NotImplementedError):
        store.create_webhook("hook", "https://example.invalid/hook", [])
    assert list(store.list_webhooks()) == []
    assert list(store.list_webhooks_by_event(None)) == []
