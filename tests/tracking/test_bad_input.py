"""Bad input for the tracking store: ids and names that try to leave the store's prefix, corrupt
or foreign objects (tests/model_registry/ and tests/artifacts/ have their own)."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, ViewType
from mlflow.exceptions import MlflowException

from cloudtrack.store import layout
from tests.fixtures.stores import tracking_store

ESCAPES = ["../x", "../../etc/passwd", "/etc/passwd", "%2e%2e", "a/../../b", "..", "x/y"]


@pytest.mark.parametrize("bad", ESCAPES)
def test_ids_that_leave_the_prefix_are_refused(tracking, bad: str) -> None:  # type: ignore[no-untyped-def]
    for call in (lambda: tracking.get_run(bad), lambda: tracking.get_experiment(bad),
                 lambda: tracking.log_batch(bad, [Metric("m", 1.0, 0, 0)], [], []),
                 lambda: tracking.get_metric_history(bad, "m"),
                 lambda: tracking.get_logged_model(bad),
                 lambda: tracking.search_runs([bad], "", ViewType.ALL)):
        with pytest.raises(MlflowException) as e:
            call()
        assert e.value.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
    keys = [i.key for i in tracking.blobs.list()]
    assert all(not k.startswith(("..", "/")) for k in keys)


def test_names_are_encoded_inside_the_prefix(tracking) -> None:  # type: ignore[no-untyped-def]
    exp_id = tracking.create_experiment("../../escape/attempt")
    assert tracking.get_experiment_by_name("../../escape/attempt").experiment_id == exp_id
    claims = [i.key for i in tracking.blobs.list(layout.EXPERIMENT_NAMES)]
    assert "experiment-names/..%2F..%2Fescape%2Fattempt" in claims


def test_corrupt_run_head_is_named_and_hides_nothing(tracking) -> None:  # type: ignore[no-untyped-def]
    exp = tracking.create_experiment("corrupt")
    good = tracking.create_run(exp, "u", 1, [], "good").info.run_id
    bad = tracking.create_run(exp, "u", 2, [], "bad").info.run_id
    tracking.blobs.put(layout.head(exp, bad), b"\x00 not json")
    tracking.blobs.put(layout.head(exp, "f" * 32), b'{"foreign": true}')  # a foreign object
    tracking._heads.clear()
    with pytest.raises(MlflowException) as e:
        tracking.get_run(bad)
    assert layout.head(exp, bad) in e.value.message
    assert e.value.error_code == "INVALID_STATE"
    found = [r.info.run_id for r in tracking.search_runs([exp], "", ViewType.ALL)]
    assert found == [good]


def test_corrupt_experiment_record_hides_nothing(tracking) -> None:  # type: ignore[no-untyped-def]
    keep = tracking.create_experiment("keep")
    broken = tracking.create_experiment("broken")
    tracking.blobs.put(layout.experiment(broken), b"[1, 2")
    names = [e.name for e in tracking.search_experiments(view_type=ViewType.ALL)]
    assert "keep" in names and "broken" not in names
    with pytest.raises(MlflowException) as e:
        tracking.get_experiment(broken)
    assert layout.experiment(broken) in e.value.message
    assert tracking.get_experiment(keep).name == "keep"


def test_newer_format_is_refused_with_advice(store) -> None:  # type: ignore[no-untyped-def]
    s = tracking_store(store)
    s.blobs.put(layout.MARKER, b'{"format": "cloudtrack", "version": 99}')
    with pytest.raises(MlflowException) as e:
        tracking_store(store)
    assert "upgrade" in e.value.message
