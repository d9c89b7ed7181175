"""The request budget of DESIGN.md, counted at the blob layer: every primitive call is one
round trip to the object store."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType

from cloudtrack.tracking import TAIL_MAX, BlobTrackingStore
from tests.fixtures.stores import tracking_store


class Requests:
    """Counts the store's round trips (instrumentation around the real backend)."""

    PRIMITIVES = ("_get", "_put", "_list_page", "_list_page_after", "_list_dir", "_delete",
                  "_stat")

    def __init__(self, store: BlobTrackingStore) -> None:
        self.calls: list[str] = []
        for name in self.PRIMITIVES:
            real = getattr(store.blobs, name)

            def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                self.calls.append(_name)
                return _real(*args, **kw)

            setattr(store.blobs, name, counted)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def test_strict_log_batch_costs_at_most_two_requests(store) -> None:  # type: ignore[no-untyped-def]
    s = tracking_store(store, strict=True)
    run = s.create_run("0", "u", 0, [], "budget")
    rid = run.info.run_id
    for i in range(30):  # a long history first: the budget must not depend on it
        s.log_batch(rid, [Metric("m", float(j), 0, i * 100 + j) for j in range(100)], [], [])
    counter = Requests(s)
    costs = []
    for i in range(3 * TAIL_MAX):
        s.log_metric(rid, Metric("loss", 1.0 / (i + 1), 0, i))
        costs.append(len(counter.take()))
    assert max(costs) <= 2, costs
    assert sum(costs) <= 3 * TAIL_MAX + 3 + 1, f"{sum(costs)} requests for {3 * TAIL_MAX} calls"
    s.log_batch(rid, [Metric("acc", 0.5, 0, 0)], [Param("p", "1")], [RunTag("t", "x")])
    assert len(counter.take()) <= 2


def test_get_run_costs_a_constant_number_of_requests(store) -> None:  # type: ignore[no-untyped-def]
    writer = tracking_store(store, strict=True)
    rid = writer.create_run("0", "u", 0, [], "const").info.run_id
    costs = []
    for _ in range(3):
        writer.log_batch(rid, [Metric("m", 1.0, 0, i) for i in range(1000)], [], [])
        reader = tracking_store(store, strict=True)
        counter = Requests(reader)
        reader.get_run(rid)
        costs.append(len(counter.take()))
        reader.get_run(rid)
        assert len(counter.take()) == 1, "a second get_run re-reads only the head"
    assert costs == [2, 2, 2], costs


@pytest.mark.parametrize("strict", [False, True], ids=["buffered", "strict"])
def test_trainer_loop_request_count(store, strict: bool) -> None:  # type: ignore[no-untyped-def]
    """The cheat sheet's trainer loop: 10 params, 5 tags, 100 epochs x 3 metrics."""
    s = tracking_store(store, strict)
    counter = Requests(s)
    rid = s.create_run("0", "u", 0, [], "loop").info.run_id
    for i in range(10):
        s.log_param(rid, Param(f"p{i}", str(i)))
    for i in range(5):
        s.set_tag(rid, RunTag(f"t{i}", "x"))
    for epoch in range(100):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            s.log_metric(rid, Metric(key, 1.0 / (epoch + 1), 0, epoch))
    s.update_run_info(rid, RunStatus.FINISHED, 1, None)
    n = len(counter.take())
    if strict:
        assert n <= 10 + 5 + 300 + 300 // TAIL_MAX + 6, n
    else:
        assert n <= 12, f"{n} requests: buffered logging should flush a handful of times"
    history = s.get_metric_history(rid, "val_loss")
    assert [m.step for m in history] == list(range(100))
    assert len(s.search_runs(["0"], "metrics.val_accuracy > 0", ViewType.ALL)) >= 1
