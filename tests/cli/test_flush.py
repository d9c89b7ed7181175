"""``cloudtrack flush [URI] [--json]``: writes the local journal into its store, says what it did
(or that there was nothing to do), and fails clearly — naming the store and the doctor command —
when the store cannot be written.  Exit status 0 / 1 / 2 as the other commands.

The journals are made the way a process exiting with its store down makes them
(:meth:`Journal.keep`); ``tests/tracking/test_journal.py`` makes them with real processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cloudtrack.cli import main
from cloudtrack.config import resolve
from cloudtrack.tracking import BlobTrackingStore
from tests.fixtures.faults import FaultyFactory, FaultyStore
from tests.tracking.test_journal import QUICK, _kept, _points


def _flush(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["flush", *args], env=env)


def _env(fs: FaultyStore, cache: Path, *, direct: bool = False) -> dict[str, str]:
    return {**(fs.direct_env if direct else fs.env), **QUICK, "XDG_CACHE_HOME": str(cache)}


def _journaled(fs: FaultyStore, cache: Path, runs: int = 2) -> tuple[BlobTrackingStore,
                                                                     list[str]]:
    """A store reached through the proxy, with a journal entry for each of ``runs`` runs."""
    store = BlobTrackingStore(fs.uri, config=resolve(fs.uri, _env(fs, cache)))
    return store, _kept(store, runs)


@pytest.fixture
def proxied(faulty: FaultyFactory) -> FaultyStore:
    return faulty("s3-noauth", rate=0.0, kinds=["reset_before"])


def test_nothing_to_flush_says_so(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    result = _flush(env)
    assert result.exit_code == 0
    assert result.stdout == f"nothing to flush: no journal in {tmp_path}/cloudtrack/journal\n"
    result = _flush(env, str(tmp_path / "store"), "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert (report["entries_written"], report["exit_code"]) == (0, 0)
    assert report["stores"][0]["store"] == f"file://{tmp_path}/store"


def test_flush_with_a_uri_writes_that_store_and_without_one_every_store_named(
        proxied: FaultyStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = _env(proxied, cache)
    other_uri = proxied.service.new_store("other")  # another bucket, same endpoint
    stores = {}
    for uri in (proxied.uri, other_uri):
        store = BlobTrackingStore(uri, config=resolve(uri, env))
        stores[uri] = (store, _kept(store, 2))
    result = _flush(env, proxied.uri)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{proxied.uri}: wrote 10 values of 2 run(s) (2 journal "
                                    "entries from ")
    assert len(stores[other_uri][0].journal.entries()) == 2, "only the store named"

    _kept(stores[proxied.uri][0], 1)
    result = _flush(env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (f"journals of 2 store(s) in {cache}/cloudtrack/journal: "
                        f"{', '.join(sorted([proxied.uri, other_uri]))}")
    assert sorted(line.split(": wrote ")[0] for line in lines[1:]) == sorted(stores)
    for store, runs in stores.values():
        assert store.journal.entries() == []
        assert all(_points(store, r) == 3 for r in runs)
        store.close()


def test_an_unreachable_store_fails_naming_it_and_the_doctor_and_keeps_the_journal(
        proxied: FaultyStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store, runs = _journaled(proxied, cache)
    proxied.proxy.configure(rate=1.0)
    result = _flush(_env(proxied, cache), proxied.uri)
    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, result.stderr
    assert error[0].startswith(f"error: {proxied.uri}: could not open {proxied.uri}")
    assert error[0].endswith(f". Run `cloudtrack doctor {proxied.uri}` to see why. "
                             "(2 entries left in the journal)")
    assert "Traceback" not in result.output
    assert len(store.journal.entries()) == 2

    result = _flush(_env(proxied, cache), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["entries_left"], report["stores"][0]["store"]) == (2, proxied.uri)

    proxied.proxy.configure(rate=0.0)
    result = _flush(_env(proxied, cache), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries_written"] == 2
    assert all(_points(store, r) == 3 for r in runs)
    store.close()


def test_a_journal_for_another_endpoint_is_named_not_written(proxied: FaultyStore,
                                                             tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store, _ = _journaled(proxied, cache)
    for args in ([], [proxied.uri]):
        result = _flush(_env(proxied, cache, direct=True), *args)
        assert result.exit_code == 1, result.output
        assert proxied.proxy.url in result.stderr
        assert proxied.service.env["MLFLOW_S3_ENDPOINT_URL"] in result.stderr
    assert len(store.journal.entries()) == 2
    store.close()


def test_a_journal_kept_at_an_endpoint_gone_for_good_is_written_when_asked(
        proxied: FaultyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The journal was kept while the store was reached through a proxy that is gone for
    good: a process logging through the store's own endpoint says once what waits and how to
    write it, and ``--from-endpoint`` writes it there."""
    cache = tmp_path / "cache"
    store, runs = _journaled(proxied, cache)
    store.close()
    direct = _env(proxied, cache, direct=True)
    gone = proxied.proxy.url
    result = _flush(direct, proxied.uri)
    assert result.exit_code == 1
    assert f"--from-endpoint {gone}" in result.stderr, result.stderr
    assert "(2 entries left in the journal)" not in result.stderr  # none at this endpoint

    here = BlobTrackingStore(proxied.uri, config=resolve(proxied.uri, direct))
    caplog.set_level(logging.WARNING, logger="cloudtrack")
    here.journal.say_elsewhere()
    here.journal.say_elsewhere()
    said = [r.getMessage() for r in caplog.records if "--from-endpoint" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"cloudtrack: 2 journal entries of {proxied.uri} wait in ")
    assert said[0].endswith(f"cloudtrack flush {proxied.uri} --from-endpoint {gone}")

    result = _flush(direct, proxied.uri, "--from-endpoint", gone)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{proxied.uri}: wrote 10 values of 2 run(s)")
    assert all(_points(here, r) == 3 for r in runs)
    assert here.journal.elsewhere() == []
    result = _flush(direct, proxied.uri, "--from-endpoint", gone)
    assert result.exit_code == 1 and "holds no entry" in result.stderr
    assert _flush(direct, "--from-endpoint", gone).exit_code == 2
    here.close()


def test_entries_the_store_refuses_fail_once_and_are_set_aside(proxied: FaultyStore,
                                                              tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store, _ = _journaled(proxied, cache, runs=1)
    from cloudtrack.tracking.flusher import Pending

    store.journal.keep({"f" * 32: Pending(params={"a": "1"})}, "down")
    result = _flush(_env(proxied, cache), proxied.uri)
    assert result.exit_code == 1
    assert "wrote 5 values of 1 run(s)" in result.stdout  # 3 points, a param, the status
    assert f"1 entries could not be written and are set aside in {store.journal.folder}" \
        f"/refused" in result.stderr
    assert _flush(_env(proxied, cache), proxied.uri).exit_code == 0
    store.close()


@pytest.mark.parametrize("uri", ["s3://b/p", "http://127.0.0.1:1"])
def test_a_uri_that_is_no_cloudtrack_store_is_a_usage_error(uri: str, tmp_path: Path) -> None:
    result = _flush({"XDG_CACHE_HOME": str(tmp_path)}, uri)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and uri in result.stderr
