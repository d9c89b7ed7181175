"""Reading a source store: the shortcuts a SQL source and a server take give what MLflow's own
API gives — the same fingerprints from a SQL store's tables as from its search, the same points
from a server's bulk history as from one metric of one run at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from cloudtrack.migrate import migrate
from cloudtrack.migrate.endpoints import open_endpoint
from cloudtrack.migrate.model import point_key, run_fingerprint
from cloudtrack.migrate.source import Source
from tests.migrate.population import populate


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An MLflow sqlite store filled by :func:`populate`: NaN and ±inf points, None-free tags,
    a deleted run, a run still running, a run with a logged model."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/source.db"
    populate(uri)
    return uri


def _open(uri: str) -> Source:
    return Source(open_endpoint(uri, role="source"))


def test_light_runs_of_a_sql_store_have_the_searched_runs_fingerprints(source: str) -> None:
    src = _open(source)
    try:
        for exp in src.experiments():
            searched = {r.info.run_id: r for page in src.runs(exp.experiment_id) for r in page}
            light = src.light_runs(exp.experiment_id)
            assert light is not None
            assert {r.info.run_id: run_fingerprint(r) for r in light} == {
                run_id: run_fingerprint(r) for run_id, r in searched.items()}
            for run in light:
                assert run.info.artifact_uri == searched[run.info.run_id].info.artifact_uri
    finally:
        src.close()
        src.endpoint.close()


def test_rerun_over_an_unchanged_sql_source_searches_no_run(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_uri=source)
    for run in client.search_runs(
            [e.experiment_id for e in client.search_experiments(view_type=3)], run_view_type=3):
        if run.info.status == "RUNNING":  # a running run is always looked at again
            client.set_terminated(run.info.run_id, "FINISHED", end_time=run.info.start_time + 1)
    dest = str(tmp_path / "dest")
    first = migrate(source, dest)
    assert first.ok and first.copied["runs"] == 5

    searched: list[str] = []
    plain = Source.runs

    def runs(self: Source, experiment_id: str) -> Any:
        searched.append(experiment_id)
        return plain(self, experiment_id)

    # Observed, not replaced: the search still answers if the shortcut is not taken.
    monkeypatch.setattr(Source, "runs", runs)
    again = migrate(source, dest)
    assert again.ok and not again.copied.get("runs") and again.unchanged["runs"] == 5
    vision = client.get_experiment_by_name("vision")
    assert vision is not None
    # Experiments without runs have no copies to compare with: searched, and found empty.
    assert vision.experiment_id not in searched, \
        "the re-run searched runs though every fingerprint matched"

    # A run that changed makes the re-run look at every run again, and copy that one.
    run_id = first_run(client)
    client.set_tag(run_id, "late", "tag")
    grown = migrate(source, dest)
    assert grown.ok and grown.copied["runs"] == 1 and grown.unchanged["runs"] == 4
    assert vision.experiment_id in searched, "a changed run went unnoticed"


def first_run(client: MlflowClient) -> str:
    exp = client.get_experiment_by_name("vision")
    assert exp is not None
    return str(client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])[0]
               .info.run_id)


def test_bulk_history_of_a_server_gives_every_point() -> None:
    from backends.mlflow.service import MlflowServer

    server = MlflowServer()
    server.start()
    try:
        populate(server.url)
        src = _open(server.url)
        try:
            exp = src._experiment("vision")
            runs = src.complete([r for page in src.runs(exp.experiment_id) for r in page])
            bulk = src.histories(runs)
            assert src._bulk_history, "the server refused its bulk history"
            one_by_one = {r.info.run_id: src.history(r) for r in runs}
            assert {k: sorted(map(point_key, v)) for k, v in bulk.items()} == {
                k: sorted(map(point_key, v)) for k, v in one_by_one.items()}
            assert sum(len(v) for v in bulk.values()) > 0
        finally:
            src.close()
            src.endpoint.close()
    finally:
        server.stop()


def _points(histories: dict[str, list[Any]]) -> dict[str, list[tuple[Any, ...]]]:
    return {run_id: sorted((point_key(m), m.run_id, m.model_id, m.dataset_name, m.dataset_digest)
                           for m in points) for run_id, points in histories.items()}


def test_sqlite_histories_read_by_the_reader_process_are_mlflows(source: str) -> None:
    """A sqlite source's points come from a child process (sqlite3 lets other threads take
    the interpreter at every row): the same points as the in-process read, and as MLflow's own
    ``get_metric_history``, NaN and ±inf included."""
    from cloudtrack.migrate.sqlite_reader import SqliteReader

    src, inline = _open(source), _open(source)
    inline._sqlite = False  # read in this process
    try:
        runs = [r for e in src.experiments() for page in src.runs(e.experiment_id) for r in page]
        read = src.histories(runs)
        assert isinstance(src._sqlite, SqliteReader)
        assert _points(read) == _points(inline.histories(runs))
        client = MlflowClient(tracking_uri=source)
        mlflows = {r.info.run_id: [m for key in r.data.metrics
                                   for m in client.get_metric_history(r.info.run_id, key)]
                   for r in runs}
        assert {k: sorted(point_key(m) for m in v) for k, v in read.items()} == {
            k: sorted(point_key(m) for m in v) for k, v in mlflows.items()}
        assert sum(len(p) for p in read.values()) > 50
    finally:
        for s in (src, inline):
            s.close()
            s.endpoint.close()
    assert src._sqlite._process is None  # closed: the child is gone


def test_a_sqlite_reader_that_died_or_failed_is_replaced_by_reading_in_process(
        source: str) -> None:
    from cloudtrack.migrate.sqlite_reader import ReaderError, SqliteReader

    src = _open(source)
    try:
        runs = [r for e in src.experiments() for page in src.runs(e.experiment_id) for r in page]
        first = _points(src.histories(runs))
        reader = src._sqlite
        assert isinstance(reader, SqliteReader) and reader._process is not None
        with pytest.raises(ReaderError, match="no such table"):
            reader.select("SELECT 1 FROM no_such_table", [])
        reader._process.kill()  # as if the child crashed between two reads
        reader._process.wait()
        assert _points(src.histories(runs)) == first
        assert src._sqlite is False  # and it is not tried again
    finally:
        src.close()
        src.endpoint.close()
