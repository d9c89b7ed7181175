"""cloudtrack.store.copy: a store copied object by object into every backend is the same store
there, its records pointing at the target's artifacts, its artifact bytes untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, Param, ViewType

from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.store import copy, layout
from cloudtrack.store.copy import copy_store, relocate_artifacts
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.stores import tracking_store


def test_a_copied_store_is_the_same_store_on_the_target(  # type: ignore[no-untyped-def]
        store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small threshold sends the artifact through the streaming path (download, upload).
    monkeypatch.setattr(copy, "MULTIPART_THRESHOLD", 1024)
    source_uri = (tmp_path / "source").as_uri()
    source = BlobTrackingStore(source_uri,
                               config=resolve(source_uri, {"CLOUDTRACK_STRICT": "true"}))
    exp = source.create_experiment("copied")
    run = source.create_run(exp, "u", 0, [], "r")
    rid = run.info.run_id
    source.log_batch(rid, [Metric("loss", 0.5, 0, 0)], [Param("lr", "0.1")], [])
    assert run.info.artifact_uri.startswith(source_uri)
    # An artifact that happens to contain the source's artifact root: user data, not rewritten.
    artifact = f"{layout.ARTIFACTS}/{exp}/{rid}/artifacts/notes.txt"
    body = (f'"{source_uri}/artifacts/" ' * 100).encode()
    source.blobs.put(artifact, body)
    source.blobs.put(layout.head_snapshot(exp), b"a cache of the source's versions")

    target = open_blobs(resolve(store.uri, store.env))
    result = copy_store(source.blobs, target, rewrite=relocate_artifacts(source_uri, store.uri),
                        threads=4)
    keys = {i.key for i in target.list("")}
    assert result.objects == len(keys) and layout.MARKER in keys
    assert not any(k.startswith(layout.SNAPSHOTS) for k in keys)
    assert target.get(artifact) == body

    copied = tracking_store(store)
    got = copied.get_run(rid)
    assert got.data.params == {"lr": "0.1"} and got.data.metrics == {"loss": 0.5}
    assert got.info.artifact_uri == f"{store.uri}/artifacts/{exp}/{rid}/artifacts"
    assert copied.get_experiment(exp).artifact_location == f"{store.uri}/artifacts/{exp}"
    assert [r.info.run_id for r in copied.search_runs([exp], "", ViewType.ALL)] == [rid]
    copied.close()
    source.close()


def test_within_one_account_the_service_copies_what_is_not_rewritten(store) -> None:  # type: ignore[no-untyped-def]
    """Two stores of one service: the artifacts never pass through this process; the records,
    which name the source's artifact root, are read and rewritten."""
    source = tracking_store(store, strict=True)
    exp = source.create_experiment("copied")
    rid = source.create_run(exp, "u", 0, [], "r").info.run_id
    artifact = f"{layout.ARTIFACTS}/{exp}/{rid}/artifacts/model.bin"
    body = b"\x00weights" * 1000
    source.blobs.put(artifact, body)
    target_uri = store.service.new_store("target")
    target = open_blobs(resolve(target_uri, store.env))
    assert target.same_account(source.blobs)
    read: list[str] = []
    for name in ("_get", "_download_file"):
        real = getattr(source.blobs, name)

        def counted(key: str, *args: Any, _real: Any = real) -> Any:
            read.append(key)
            return _real(key, *args)

        setattr(source.blobs, name, counted)
    copy_store(source.blobs, target, rewrite=relocate_artifacts(store.uri, target_uri), threads=4)
    assert artifact not in read
    assert any(k.startswith(layout.HEADS) for k in read), "the records are read to be rewritten"
    assert target.get(artifact) == body
    copied = BlobTrackingStore(target_uri, config=resolve(target_uri, store.env))
    assert copied.get_run(rid).info.artifact_uri == f"{target_uri}/artifacts/{exp}/{rid}/artifacts"
    copied.close()
    source.close()
