"""Copying every object of one store into another, between any two backends.

The format is the same everywhere, so a copy of the objects is a copy of the store: the fast
path for moving a store between cloudtrack stores (and for the benchmark, which populates one
store and copies it into the others).  Objects are copied in parallel.  Between two stores of
one account (:meth:`~cloudtrack.blobs.Blobs.same_account`) the service copies every object
that is not rewritten: artifacts, and records when there is no rewrite; otherwise large
objects stream through a temporary file and never sit in memory whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudtrack.blobs.base import MULTIPART_THRESHOLD, BlobInfo
from cloudtrack.store import layout

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

#: (key, bytes) -> the bytes to write into the target; applied to records (objects outside
#: ``artifacts/``, which are the user's bytes) up to MULTIPART_THRESHOLD: records are far
#: smaller.
Rewrite = Callable[[str, bytes], bytes]

#: Not copied by default: snapshot entries are keyed by the source's object versions, which
#: mean nothing in the target.  The first search there writes a fresh one.
SKIP = (layout.SNAPSHOTS,)


@dataclass(frozen=True)
class CopyResult:
    objects: int
    bytes: int


def relocate_artifacts(source_uri: str, target_uri: str) -> Rewrite:
    """A :data:`Rewrite` for records that name the default artifact location of the source
    store (``<source>/artifacts/…``, docs/format.md): point them at the target's.  Artifact
    objects themselves are copied unchanged."""
    def quoted_prefix(uri: str) -> bytes:
        # The JSON string's opening quote anchors the match at the start of a value.
        return json.dumps(f"{uri.rstrip('/')}/{layout.ARTIFACTS}/").encode("utf-8")[:-1]

    old, new = quoted_prefix(source_uri), quoted_prefix(target_uri)

    def rewrite(key: str, data: bytes) -> bytes:
        if key.startswith(f"{layout.ARTIFACTS}/"):
            return data
        return data.replace(old, new)

    return rewrite


def copy_store(source: Blobs, target: Blobs, *, rewrite: Rewrite | None = None,
               threads: int = 16, skip: Sequence[str] = SKIP) -> CopyResult:
    """Copy every object of ``source`` (except keys under ``skip``) into ``target``,
    overwriting what is there.  The format marker is written last, so an interrupted copy does
    not look like a complete store."""
    infos = [i for i in source.list("") if not i.key.startswith(tuple(skip))]
    marker = [i for i in infos if i.key == layout.MARKER]
    server_side = target.same_account(source)

    def one(info: BlobInfo) -> None:
        rewritten = rewrite is not None and not info.key.startswith(f"{layout.ARTIFACTS}/")
        if info.size > MULTIPART_THRESHOLD or (server_side and not rewritten):
            # Server-side, or streamed through a temporary file (Blobs.copy_from decides).
            target.copy_from(source, info.key, info.key)
            return
        data = source.get(info.key)
        target.put(info.key, rewrite(info.key, data) if rewrite is not None and rewritten
                   else data)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="cloudtrack-copy") as pool:
        for _ in pool.map(one, [i for i in infos if i.key != layout.MARKER]):
            pass
    for info in marker:
        one(info)
    return CopyResult(objects=len(infos), bytes=sum(i.size for i in infos))
