"""Azure reads without the SDK's downloader: GETs of a blob, or of its ranges, sent through the
blob client's own pipeline (:mod:`~cloudtrack.blobs.azure.raw`), each answer checked.

azure-storage-blob's ``StorageStreamDownloader`` retries a cut download by itself — three tries
one second apart, beneath cloudtrack's own retries, each logging "Incomplete download." — and
raises a bare ``ValueError`` for an answer without ``Content-Range``.  Here one GET is one
request.  An answer that lacks its ETag or its length, whose range is not the one asked for,
or whose body is shorter than announced raises :class:`IncompleteAnswer` (a transient
failure); the ranges after the first are pinned to its ETag (``If-Match``: a rewrite in
between is a 412, read again); a stored ``Content-MD5`` is verified.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import IO, Any

from cloudtrack.blobs.azure.listing import is_folder, modified
from cloudtrack.blobs.azure.raw import send
from cloudtrack.blobs.sdk_errors import IncompleteAnswer, entity_tag

#: ``bytes <first>-<last>/<size>``; Azurite answers an empty blob's ``bytes=0-0`` with
#: ``bytes 0--1/0`` where Azure answers 416.
_RANGE = re.compile(r"^bytes (\d+)-(-1|\d+)/(\d+)$")


@dataclass(frozen=True)
class Answer:
    """What the headers of a GET said."""

    etag: str
    #: The whole blob's size.
    size: int
    #: The blob is a directory of a hierarchical namespace.
    folder: bool
    #: The MD5 stored with the whole blob, when it has one.
    md5: bytes | None
    modified: datetime


def _headers(response: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in response.headers.items()}


def _int(headers: Mapping[str, str], name: str) -> int:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        raise IncompleteAnswer(f"a GET answer without a valid {name}") from None


def _answer(headers: Mapping[str, str], size: int, md5_header: str) -> Answer:
    tag = entity_tag(headers.get("etag"), "a GET answer")
    try:
        when = parsedate_to_datetime(headers.get("last-modified", ""))
    except (TypeError, ValueError):
        raise IncompleteAnswer("a GET answer without a valid Last-Modified") from None
    md5 = headers.get(md5_header)
    metadata = {k[len("x-ms-meta-"):]: v for k, v in headers.items()
                if k.startswith("x-ms-meta-")}
    try:
        digest = base64.b64decode(md5, validate=True) if md5 else None
    except ValueError:
        raise IncompleteAnswer(f"a GET answer with a garbled {md5_header}") from None
    return Answer(tag, size, is_folder(metadata), digest, modified(when))


def _body(response: Any, length: int) -> bytes:
    data = b"".join(response.iter_raw())
    if len(data) != length:
        raise IncompleteAnswer(f"a GET answer of {len(data)} bytes that announced {length}")
    return data


def _check_md5(answer: Answer, digest: bytes) -> None:
    if answer.md5 is not None and digest != answer.md5:
        raise IncompleteAnswer("a GET answer whose bytes do not match the blob's Content-MD5")


def get_blob(blob: Any) -> tuple[bytes, Answer]:
    """The whole blob (``blob``: a BlobClient) in one GET, and what its answer said."""
    response = send(blob, stream=True)
    try:
        headers = _headers(response)
        length = _int(headers, "content-length")
        answer = _answer(headers, length, "content-md5")
        if answer.folder:
            return b"", answer
        data = _body(response, length)
    finally:
        response.close()
    _check_md5(answer, hashlib.md5(data).digest())
    return data, answer


def first_byte(blob: Any) -> Answer | None:
    """What a GET of the blob's first byte says of it; None for an empty blob, which has none.

    A HEAD cut off inside its last header reads like a whole one (``Content-Length: 1234`` as
    ``12``); an answer whose one byte of body arrived was not cut inside its head, so all it
    says can be trusted.
    """
    response = send(blob, headers={"x-ms-range": "bytes=0-0"}, stream=True, ok=(206, 416))
    try:
        if response.status_code == 416:
            return None
        headers = _headers(response)
        found = _RANGE.match(headers.get("content-range", "").strip())
        if not found or int(found[1]) != 0:
            raise IncompleteAnswer("a ranged GET answer without a valid Content-Range")
        answer = _answer(headers, int(found[3]), "x-ms-blob-content-md5")
        _range_body(response, 0, int(found[2]), answer.size)
    finally:
        response.close()
    return answer


def _range_body(response: Any, start: int, end: int, size: int) -> bytes:
    headers = _headers(response)
    found = _RANGE.match(headers.get("content-range", "").strip())
    if not found or (int(found[1]), int(found[2]), int(found[3])) != (start, end, size):
        raise IncompleteAnswer(f"a ranged GET answer without Content-Range bytes "
                               f"{start}-{end}/{size}")
    return _body(response, _int(headers, "content-length"))


def download_blob(blob: Any, out: IO[bytes], *, first: int, chunk: int,
                  concurrency: int) -> Answer:
    """Write the blob (``blob``: a BlobClient) into ``out``: its first ``first`` bytes with
    one GET, the rest in ``chunk``-sized ranges, ``concurrency`` at a time, written in order
    (memory: about ``concurrency`` ranges)."""
    response = send(blob, headers={"x-ms-range": f"bytes=0-{first - 1}"}, stream=True,
                    ok=(206, 416))
    try:
        if response.status_code == 416:  # an empty blob has no byte 0
            response.close()
            data, answer = get_blob(blob)
            out.write(data)
            return answer
        headers = _headers(response)
        found = _RANGE.match(headers.get("content-range", "").strip())
        if not found or int(found[1]) != 0:
            raise IncompleteAnswer("a ranged GET answer without a valid Content-Range")
        answer = _answer(headers, int(found[3]), "x-ms-blob-content-md5")
        if answer.folder:
            return answer
        data = _range_body(response, 0, int(found[2]), answer.size)
    finally:
        response.close()
    md5 = hashlib.md5()
    out.write(data)
    md5.update(data)
    ranges = [(start, min(start + chunk, answer.size) - 1)
              for start in range(len(data), answer.size, chunk)]
    for piece in _in_order(blob, ranges, answer, concurrency):
        out.write(piece)
        md5.update(piece)
    _check_md5(answer, md5.digest())
    return answer


def _in_order(blob: Any, ranges: list[tuple[int, int]], answer: Answer,
              concurrency: int) -> Iterator[bytes]:
    """The bytes of ``ranges``, fetched ``concurrency`` at a time, in order."""
    if not ranges:
        return

    def fetch(start: int, end: int) -> bytes:
        response = send(blob, headers={"x-ms-range": f"bytes={start}-{end}",
                                       "If-Match": f'"{answer.etag}"'}, stream=True, ok=(206,))
        try:
            return _range_body(response, start, end, answer.size)
        finally:
            response.close()

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="cloudtrack-azure-get") \
            as pool:
        pending: collections.deque[Future[bytes]] = collections.deque()
        todo = iter(ranges)
        try:
            for start, end in todo:
                pending.append(pool.submit(fetch, start, end))
                if len(pending) >= concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
