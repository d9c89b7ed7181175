"""Races of several writers on one key, with the conditional writes as the only arbiter: the
conformance suite runs them on every backend, and tests/blobs/gcs/test_preconditions.py shows
that they catch an emulator that ignores preconditions."""

from __future__ import annotations

import concurrent.futures
import multiprocessing

from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.errors import AlreadyExists, PreconditionFailed


def _race_put_if_absent(uri: str, env: dict[str, str], key: str, me: int) -> bool:
    b = open_blobs(resolve(uri, env))
    try:
        b.put_if_absent(key, f"writer-{me}".encode())
        return True
    except AlreadyExists:
        return False
    finally:
        b.close()


def _race_increment(uri: str, env: dict[str, str], key: str, rounds: int) -> int:
    """Read-modify-write with put-if-version; return how many increments this worker won."""
    b = open_blobs(resolve(uri, env))
    won = 0
    try:
        for _ in range(rounds):
            while True:
                data, version = b.get_versioned(key)
                try:
                    b.put_if_version(key, str(int(data) + 1).encode(), version)
                    won += 1
                    break
                except PreconditionFailed:
                    continue
    finally:
        b.close()
    return won


def run_put_if_absent_race(uri: str, env: dict[str, str], writers: int = 8) -> int:
    """Several processes claim one key at once; return how many believed they won."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(writers, mp_context=ctx) as pool:
        results = list(pool.map(_race_put_if_absent, [uri] * writers, [env] * writers,
                                ["race/claim"] * writers, range(writers)))
    return sum(results)


def run_increment_race(uri: str, env: dict[str, str], workers: int = 4, rounds: int = 10) -> int:
    """Workers increment one counter with put-if-version; return the final counter value
    minus the increments the workers were told succeeded (0 when no update was lost)."""
    open_blobs(resolve(uri, env)).put("race/counter", b"0")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        won = sum(pool.map(lambda _: _race_increment(uri, env, "race/counter", rounds),
                           range(workers)))
    final = int(open_blobs(resolve(uri, env)).get("race/counter"))
    return won - final
