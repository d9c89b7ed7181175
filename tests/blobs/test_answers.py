"""Answers cut off before they said what every answer of their operation says: a result that is
right, or a TransientError that a retry turns into one — never a raw SDK error, never a result
made of nothing (an empty version, size 0, an empty listing, an empty file).

The fault proxy (``faulty``) cuts the answers of the real services: where the headers begin
(``truncated_head``, and the body cases in tests/backends/test_faults.py) and inside a header
line (``truncated_in_head``: halfway through the value of a named header, which the SDKs read
as a garbled value or a missing one, and the headers after it never arrive).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cloudtrack.blobs import Blobs
from cloudtrack.errors import TransientError
from tests.fixtures.faults import FaultyFactory, FaultyStore, objects_only

CLOUDS = ["s3", "azure", "gcs"]
OPS = ("put", "put_if_absent", "upload_file", "get_versioned", "stat", "list", "download_file")
KEY = "runs/h.json"
BEFORE = b'{"before": 1}'
AFTER = b'{"after": 2}'

#: Headers to cut inside, per backend: what each SDK reads from its answers.
CUTS: dict[str, tuple[str | None, ...]] = {
    "s3": ("etag", "content-length", "last-modified", None),
    "azure": ("etag", "content-length", "last-modified", "content-md5",
              "x-ms-request-server-encrypted", None),
    "gcs": ("x-goog-generation", "x-goog-hash", "content-length", "etag", None),
}


def _do(blobs: Blobs, op: str, tmp: Path) -> Any:
    """Run ``op`` on ``KEY``; what it returned (a download: the file's bytes)."""
    if op == "put":
        return blobs.put(KEY, AFTER)
    if op == "put_if_absent":
        return blobs.put_if_absent(KEY, AFTER)
    if op == "upload_file":
        src = tmp / "up.json"
        src.write_bytes(AFTER)
        return blobs.upload_file(KEY, src)
    if op == "list":
        return [(i.key, i.size, i.version) for i in blobs.list("runs/")]
    if op == "download_file":
        blobs.download_file(KEY, tmp / "down.json")
        return (tmp / "down.json").read_bytes()
    if op == "stat":
        info = blobs.stat(KEY)
        return info.key, info.size, info.version
    return getattr(blobs, op)(KEY)


def _right(fs: FaultyStore, op: str, got: Any) -> Any:
    """What ``op`` must have returned, read without the proxy."""
    with fs.open_direct() as blobs:
        if op in ("put", "put_if_absent", "upload_file"):
            assert blobs.get(KEY) == AFTER
            return blobs.stat(KEY).version
        if op == "list":
            return [(i.key, i.size, i.version) for i in blobs.list("runs/")]
        if op == "download_file":
            return blobs.get(KEY)
        if op == "stat":
            info = blobs.stat(KEY)
            return info.key, info.size, info.version
        return blobs.get_versioned(KEY)


def _fresh(faulty: FaultyFactory, backend: str, op: str, **options: Any) -> FaultyStore:
    fs = faulty(backend, rate=0.0, path_regex=objects_only(backend), **options)
    if op != "put_if_absent":
        with fs.open_direct() as blobs:
            blobs.put(KEY, BEFORE)
    return fs


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("backend", "cut"), [(b, c) for b in CLOUDS for c in CUTS[b]])
def test_an_answer_cut_inside_a_header_line_is_right_or_transient(
        faulty: FaultyFactory, backend: str, cut: str | None, op: str, tmp_path: Path) -> None:
    fs = _fresh(faulty, backend, op, kinds=["truncated_in_head"], cut_header=cut)
    fs.proxy.configure(rate=1.0)
    try:
        with fs.open(CLOUDTRACK_MAX_ATTEMPTS="1") as blobs:
            got = _do(blobs, op, tmp_path)
    except TransientError:
        pass  # the answer could not be trusted: retried by a caller with attempts left
    else:
        # The headers that every answer carries survived the cut: the result must be right.
        fs.proxy.configure(rate=0.0)
        assert got == _right(fs, op, got)
    assert fs.proxy.stats()["faults"]["truncated_in_head"] >= 1
    if op == "download_file":
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], \
            "no partial file is left behind"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", CLOUDS)
def test_a_cut_answer_is_retried_into_the_right_result_with_one_line_logged(
        faulty: FaultyFactory, backend: str, op: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The first answer is cut where its headers begin (the write behind it landed); the retry
    gets a whole one.  A put-if-absent's retry meets its own earlier write."""
    fs = _fresh(faulty, backend, op, kinds=["truncated_head"])
    fs.proxy.configure(rate=1.0, max_faults=1)
    caplog.set_level(logging.WARNING)
    with fs.open(CLOUDTRACK_MAX_ATTEMPTS="3") as blobs:
        got = _do(blobs, op, tmp_path)
        uri = blobs.object_uri("runs/" if op == "list" else KEY)
    assert got == _right(fs, op, got)
    assert fs.proxy.stats()["faults"]["truncated_head"] == 1
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    assert line.name == "cloudtrack.retry" and line.exc_info is None
    text = line.getMessage()
    assert uri in text and "attempt 1 of 3 failed (answer cut off: " in text, text
    assert "\n" not in text and "Traceback" not in text
