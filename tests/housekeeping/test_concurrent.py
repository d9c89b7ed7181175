"""``mlflow gc`` and ``cloudtrack check --repair`` side by side with another process logging
into the same store: the logging process loses nothing, what was deleted goes, and the store is
whole afterwards.  ``check`` runs with no grace period at all, so the writer's objects in
flight are not protected by their age: only by being reachable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from cloudtrack.cli import main
from cloudtrack.store import layout
from tests.fixtures import workers as fixture_workers
from tests.fixtures.services import Store
from tests.fixtures.stores import tracking_store
from tests.housekeeping import workers
from tests.housekeeping.scenario import gc_in_process, log_run


def test_gc_and_repair_beside_a_logging_process_lose_nothing(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**store.env, "MLFLOW_TRACKING_URI": store.uri, "CLOUDTRACK_STRICT": "true",
           "GIT_PYTHON_REFRESH": "quiet", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = tracking_store(store, strict=True)
    artifact = tmp_path / "a.txt"
    artifact.write_text("a")
    live = s.create_experiment("live")
    dead = s.create_experiment("dead")
    gone = [log_run(s, dead, f"d{i}", artifact) for i in range(3)]
    gone.append(log_run(s, live, "deleted", artifact))
    kept = log_run(s, live, "kept", artifact)
    s.delete_run(gone[-1])
    s.delete_experiment(dead)
    logging_into = [s.create_run(e, "w", 0, [], f"w{e}").info.run_id for e in (live, "0")]
    # What this process queued for the pages is written, as a process long finished would have
    # (a page of `dead` written after gc is check's to find: tested in test_gc.py).
    s._page_writer.write()

    stop = tmp_path / "stop"
    ctx = fixture_workers.context()
    with ctx.Pool(1) as pool:
        logged = pool.apply_async(workers.log_while, (env, logging_into, str(stop)))
        code, text = gc_in_process(store.uri)
        assert code == 0, text
        repairs = []
        for _ in range(2):
            result = CliRunner().invoke(main, ["check", store.uri, "--repair", "--json",
                                               "--grace", "0"])
            repairs.append(json.loads(result.stdout))
        if logged.ready():
            logged.get()  # the writer's own error, if it failed
        assert not logged.ready(), "the writer must still be logging: nothing was side by side"
        stop.touch()
        points = logged.get(timeout=300)
    assert points > 0

    reader = tracking_store(store, strict=True)
    for rid in logging_into:
        run = reader.get_run(rid)
        assert run.info.status == "FINISHED"
        assert [m.step for m in reader.get_metric_history(rid, "m")] == list(range(points))
        names = [f.path for f in get_artifact_repository(run.info.artifact_uri).list_artifacts()]
        assert names == ["notes.txt"]
    assert reader.get_run(kept).data.params == {"p": "kept"}
    assert {r.info.run_name for r in reader.search_runs([live], "", ViewType.ALL)} == \
        {"kept", f"w{live}"}
    assert sorted(e.name for e in reader.search_experiments(ViewType.ALL)) == ["Default", "live"]
    keys = [i.key for i in reader.blobs.list("")]
    assert not [k for k in keys for r in gone if r in k]
    assert not [k for k in keys if k.startswith((layout.heads(dead), f"artifacts/{dead}/"))]
    # Nothing any repair removed was reachable: every repair found only garbage or nothing,
    # and the store is whole now.  A finding it leaves alone (young: the temporary file of
    # the writer still logging, when the walk met one mid-write) removed nothing.
    for r in repairs:
        assert not [f for f in r["findings"] if not f["young"]
                    and any(rid in json.dumps(f) for rid in [*logging_into, kept])], r
        assert all(f["detail"] == "of a writer that still runs" for f in r["findings"]
                   if f["young"] and f["kind"] == "temporary_file"), r
    result = CliRunner().invoke(main, ["check", store.uri, "--json", "--grace", "0"])
    final = json.loads(result.stdout)
    final["counts"].pop("stale_page_entries", None)
    assert (result.exit_code, final["counts"]) == (0, {}), final["findings"]
    reader.close()
    s.close()
