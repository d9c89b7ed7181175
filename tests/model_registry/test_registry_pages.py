"""The registry's pages (src/cloudtrack/store/pages.py): every registry record a process
writes goes into them, so the first search of a new process reads a few pages and one listing
of all versions, not a GET per model and a LIST per model; never trusted blindly.  Every
backend, compared with MLflow's sqlite registry."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from mlflow.entities.model_registry import RegisteredModelTag

from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.store import layout, records
from tests.fixtures.reference import MlflowReference
from tests.fixtures.stores import registry_store
from tests.tracking.test_request_budget import Requests

MODELS = 48


def populate(s: Any, first: int, count: int) -> None:
    for i in range(first, first + count):
        name = f"model-{i:03d}"
        s.create_registered_model(name, [RegisteredModelTag("team", f"t{i % 3}")], f"d{i}")
        for v in range(1 + i % 3):
            s.create_model_version(name, f"s3://bucket/{i}/{v}", f"run{i}{v}")
        if i % 4 == 0:
            s.transition_model_version_stage(name, "1", "Production", False)
        if i % 5 == 0:
            s.set_registered_model_alias(name, "champion", "1")


def models_view(s: Any) -> list[Any]:
    found = s.search_registered_models(max_results=1000, order_by=["name ASC"])
    return [(m.name, m.description, m.tags, m.aliases,
             sorted((v.version, v.current_stage) for v in m.latest_versions or []))
            for m in found]


def versions_view(s: Any) -> list[Any]:
    found = s.search_model_versions("name LIKE 'model-0%'", max_results=10000,
                                    order_by=["name ASC", "version_number DESC"])
    return [(v.name, v.version, v.current_stage, v.source, v.run_id) for v in found]


def written_by_processes(store: Any) -> None:
    def write(w: int) -> None:
        s = registry_store(store)
        populate(s, w * MODELS // 4, MODELS // 4)
        s.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))


def test_first_registry_search_reads_pages(
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:  # type: ignore[no-untyped-def]
    sqlite = mlflow_reference().registry_store()
    populate(sqlite, 0, MODELS)
    written_by_processes(store)

    reader = registry_store(store)
    counter = Requests(reader)
    assert models_view(reader) == models_view(sqlite)
    calls = collections.Counter(counter.take())
    # 2 listings of records, 2 of pages; at most 16 pages of each kind.
    assert calls["_get"] <= 32 and calls["_list_page"] <= 6, calls
    assert versions_view(registry_store(store)) == versions_view(sqlite)


def test_changed_deleted_and_damaged_registry_pages(
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:  # type: ignore[no-untyped-def]
    sqlite = mlflow_reference().registry_store()
    populate(sqlite, 0, MODELS)
    written_by_processes(store)
    setup: BlobRegistryStore = registry_store(store)

    # A record rewritten behind the writers' backs (no page entry follows it).
    key = layout.registered_model("model-007")
    rec, version = records.read_versioned(setup.blobs, key)
    rec["description"] = "changed"
    setup.blobs.put_if_version(key, records.dumps(rec), version)
    sqlite.update_registered_model("model-007", "changed")
    # A model deleted (its page entries stay behind, no longer listed).
    setup.delete_registered_model("model-011")
    sqlite.delete_registered_model("model-011")
    assert models_view(registry_store(store)) == models_view(sqlite)

    for kind in ("models", "versions"):
        for info in setup.blobs.list(layout.registry_pages(kind)):
            setup.blobs.put(info.key, b"damaged")
    assert models_view(registry_store(store)) == models_view(sqlite)
    setup.blobs.delete_prefix("index/")
    fresh = registry_store(store)
    assert models_view(fresh) == models_view(sqlite)
    fresh.close()  # a registry without pages gets them from its first search
    again = registry_store(store)
    counter = Requests(again)
    assert versions_view(again) == versions_view(sqlite)
    # About the pages (16 of each kind); readers above may still be writing theirs.
    assert collections.Counter(counter.take())["_get"] <= 40


def test_a_first_registry_search_reads_the_pages_while_the_records_are_listed(
        store, mlflow_reference: Callable[[], MlflowReference]) -> None:  # type: ignore[no-untyped-def]
    """A process's first search reads the registry's pages as soon as they are listed, while
    the records are still being listed (one round trip less); a later search reads no page.
    Here the records' LIST answers are held back until a page GET of their kind has begun (at
    most 20 s: the code before, which read the pages after the listing, fails)."""
    sqlite = mlflow_reference().registry_store()
    populate(sqlite, 0, MODELS)
    written_by_processes(store)
    reader: BlobRegistryStore = registry_store(store)
    kinds = {layout.REGISTERED_MODELS: layout.registry_pages("models"),
             layout.MODEL_VERSIONS: layout.registry_pages("versions")}
    page_read = {folder: threading.Event() for folder in kinds.values()}
    early: list[bool] = []
    gets: list[str] = []
    real_list, real_get = reader.blobs._list_page, reader.blobs._get

    def held_list(prefix: str, token: str | None) -> Any:
        answer = real_list(prefix, token)
        for records_prefix, folder in kinds.items():
            if prefix.startswith(records_prefix):
                early.append(page_read[folder].wait(20))
        return answer

    def get(key: str) -> Any:
        gets.append(key)
        for folder, event in page_read.items():
            if key.startswith(folder):
                event.set()
        return real_get(key)

    reader.blobs._list_page, reader.blobs._get = held_list, get  # type: ignore[method-assign]
    assert models_view(reader) == models_view(sqlite)
    assert early and all(early), early
    gets.clear()
    assert models_view(reader) == models_view(sqlite)
    assert not [k for k in gets if k.startswith(layout.INDEX)], gets
