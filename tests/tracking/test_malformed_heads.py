"""A run head that is not what a head must be (written by a foreign tool, a bug, a hand edit)
costs the search that run, with a warning naming the object, never the other runs' answer:
a search skips it whether the filter reads the run's info or not (the info is read lazily,
yet what it must hold is checked as the head is taken).  Every backend, real services."""

from __future__ import annotations

import logging

import pytest
from mlflow.entities import Metric, Param, RunStatus, ViewType

from cloudtrack.store import layout, records
from tests.fixtures.services import Store
from tests.fixtures.stores import tracking_store


@pytest.mark.parametrize("filter_string", [None, "metrics.m > 0", "attributes.status = 'FINISHED'"])
def test_a_malformed_head_is_skipped_and_named(
        store: Store, caplog: pytest.LogCaptureFixture, filter_string: str | None) -> None:
    writer = tracking_store(store, strict=True)
    try:
        exp = writer.create_experiment("malformed")
        ids = []
        for i in range(4):
            rid = writer.create_run(exp, "u", 1000 + i, [], f"r{i}").info.run_id
            writer.log_batch(rid, metrics=[Metric("m", float(i + 1), 0, 0)],
                             params=[Param("p", str(i))], tags=[])
            writer.update_run_info(rid, RunStatus.FINISHED, 2000 + i, None)
            ids.append(rid)
        no_status, info_not_a_record = ids[1], ids[2]
        head = records.read(writer.blobs, layout.head(exp, no_status))
        del head["info"]["status"]
        writer.blobs.put(layout.head(exp, no_status), records.dumps(head))
        head = records.read(writer.blobs, layout.head(exp, info_not_a_record))
        head["info"] = ["not", "a", "record"]
        writer.blobs.put(layout.head(exp, info_not_a_record), records.dumps(head))
    finally:
        writer.close()

    reader = tracking_store(store, strict=True)  # a new process: nothing of the runs in memory
    try:
        with caplog.at_level(logging.WARNING, logger="cloudtrack"):
            found = reader.search_runs([exp], filter_string, ViewType.ALL, 100, None, None)
    finally:
        reader.close()
    assert sorted(r.info.run_id for r in found) == sorted([ids[0], ids[3]])
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for rid in (no_status, info_not_a_record):
        assert "malformed run head" in warned and rid in warned, warned
