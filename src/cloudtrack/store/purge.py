"""Removing things for good: a run, a logged model, an experiment's contents, and their page
entries (docs/format.md, "Hard deletion").  Used by ``mlflow gc`` (the tracking store's
:mod:`~cloudtrack.tracking.housekeeping`) and by ``cloudtrack check --repair``.

The callers decide *whether* something may go (its record says it is deleted, it is no longer
reachable); this module only removes, in the order that keeps a store readable if it stops
half-way: what makes a thing visible first (a run's head, a model's record), its other objects
after, the object that finds it from its id (run index, model index) last.  A stop at any
point leaves objects no reader reaches, which ``cloudtrack check`` reports and removes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cloudtrack.errors import AlreadyExists, BlobNotFound, PreconditionFailed
from cloudtrack.store import layout, pages

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.store")


def drop_page_entries(blobs: Blobs, folder: str, keys: Iterable[str],
                      page_map: pages.PageMap | None = None) -> int:
    """Remove the entries of ``keys`` from the pages in ``folder``; return how many went.

    Readers never use an entry whose record is not listed, so this is not what hides a
    deleted record: it keeps a hard-deleted run's params and tags from living on in a page.
    Each page is rewritten with put-if-version (entries other writers add meanwhile stay); a
    page that keeps losing races keeps its entries, which ``cloudtrack check`` finds later.
    """
    wanted = set(keys)
    if not wanted:
        return 0
    page_map = page_map or pages.list_pages(blobs, folder)
    groups: dict[str, set[str]] = {}
    for key in wanted:
        bits = page_map.page_of(key)
        if bits is not None:
            groups.setdefault(bits, set()).add(key)
    return sum(_drop_from_page(blobs, folder, bits, group) for bits, group in groups.items())


def drop_entries_in_pages(blobs: Blobs, folder: str, found: dict[str, set[str]]) -> int:
    """Remove entries from the pages they were found in (page bits -> record keys); return
    how many went.  For a caller that read every page: a record's entry may sit in a page
    other than the deepest on its path (a split half-done, a page put there by hand), where
    :func:`drop_page_entries` would not look."""
    return sum(_drop_from_page(blobs, folder, bits, keys) for bits, keys in found.items() if keys)


def _drop_from_page(blobs: Blobs, folder: str, bits: str, keys: set[str]) -> int:
    key = pages.page_key(folder, bits)
    for attempt in range(pages.ATTEMPTS):
        try:
            data, version = blobs.get_versioned(key)
        except BlobNotFound:
            return 0
        try:
            split, entries = pages.unpack(data)
        except ValueError:
            return 0  # unreadable: readers ignore it, the next writer rewrites it
        if split:
            # Its entries moved to the halves (which a listing made before the split missed).
            return sum(_drop_from_page(blobs, folder, bits + half, {
                k for k in keys if pages.key_bits(k, len(bits) + 1)[-1] == half})
                for half in "01")
        gone = keys & entries.keys()
        if not gone:
            return 0
        try:
            blobs.put_if_version(key, pages.pack({k: v for k, v in entries.items()
                                                  if k not in gone}), version)
            return len(gone)
        except (PreconditionFailed, AlreadyExists, BlobNotFound):
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    log.debug("left %d entries in page %s after %d lost races", len(keys),
              blobs.object_uri(key), pages.ATTEMPTS)
    return 0


def delete_all(blobs: Blobs, prefix: str) -> tuple[int, int]:
    """Delete every object under the folder ``prefix``; return (objects, bytes)."""
    infos = list(blobs.list(prefix))
    for info in infos:
        blobs.delete(info.key)
    return len(infos), sum(i.size for i in infos)


def purge_run(blobs: Blobs, exp_id: str, run_id: str, *, pages_too: bool = True) -> None:
    """Remove a run's head, its history and its run index, in that order, and (with
    ``pages_too``) its page entry.  Artifacts are the caller's: they may live anywhere."""
    head = layout.head(exp_id, run_id)
    blobs.delete(head)
    if pages_too:
        drop_page_entries(blobs, layout.head_pages(exp_id), [head])
    delete_all(blobs, layout.history(run_id))
    blobs.delete(layout.run_index(run_id))
    # A writer flushing into the run may have moved its tail into a batch meanwhile (its head
    # write then fails: the head is gone); a batch written after this sweep is left to
    # ``cloudtrack check``, which finds history without a run.
    delete_all(blobs, layout.history(run_id))


def purge_logged_model(blobs: Blobs, exp_id: str, model_id: str, *,
                       pages_too: bool = True) -> None:
    """Remove a logged model's record, its page entry and its model index."""
    key = layout.logged_model(exp_id, model_id)
    blobs.delete(key)
    if pages_too:
        drop_page_entries(blobs, layout.logged_model_pages(exp_id), [key])
    blobs.delete(layout.logged_model_index(model_id))
