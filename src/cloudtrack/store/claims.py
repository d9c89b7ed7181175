"""Claiming what must be unique with put-if-absent (rule 2 of docs/format.md): experiment ids,
allocated in order, and experiment names.

The tracking store's ``create_experiment`` and ``cloudtrack migrate`` (which keeps the
source's ids where they are free) create experiments through :func:`create_experiment`.

Creating an experiment writes two objects, its record and its name claim, and no store offers
a transaction over both.  The name claim is the commit point: the record is written first
marked ``pending``, the name is claimed, then the mark is removed.  A pending record counts
only when its name claim points at it (:func:`visible`), so a creator that fails or is killed
at any point leaves either no experiment or exactly one of its name — never two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cloudtrack.errors import AlreadyExists, BlobNotFound, CloudtrackError, PreconditionFailed
from cloudtrack.store import build, layout, records
from cloudtrack.store.cas import versioned_update
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.store")

#: The field of an experiment record whose name claim may not have landed (docs/format.md).
PENDING = "pending"
#: The field of an experiment record naming the name it had before its latest rename: once
#: the record carries it, the old name's claim is a leftover the rename meant to delete.
RENAMED_FROM = "renamed_from"
#: A name claim pointing at an experiment of another name that was not renamed from it is a
#: rename under way — or the first write of a renamer killed before its second.  Once the
#: claim is this old (a rename's writes take seconds, each bounded by the retry deadline) it
#: is the latter, and the name may be claimed again.
STALE_RENAME_SECONDS = 600.0


class NameTaken(AlreadyExists):
    """Another experiment holds the name."""

    def __init__(self, name: str, uri: str) -> None:
        super().__init__(f"an experiment named {name!r} already exists", uri)
        self.name = name


def next_experiment_id(blobs: Blobs) -> int:
    """One past the largest experiment id in the store (one delimiter LIST)."""
    files, _ = blobs.list_dir(layout.EXPERIMENTS)
    ids = [int(layout.id_from_key(f.key)) for f in files if layout.id_from_key(f.key).isdigit()]
    return max(ids, default=0) + 1


def visible(blobs: Blobs, rec: Record) -> bool:
    """Whether the experiment record ``rec`` is an experiment of the store.

    A settled record is (no request).  A pending one is only when its name claim points at
    it: its creator claimed the name, then failed or died before it settled the record
    (one GET, on that rare path only).  Otherwise its creator lost the name, failed before
    claiming it, or is claiming it right now — and until the claim lands, the experiment
    does not exist."""
    if not rec.get(PENDING):
        return True
    try:
        claim = records.read(blobs, layout.experiment_name(str(rec["name"])))
    except BlobNotFound:
        return False
    return str(claim.get("experiment_id")) == str(rec["experiment_id"])


def stale_claim(blobs: Blobs, name: str) -> str | None:
    """The version of the claim of ``name`` when it is the leftover of an unfinished rename
    (and may be replaced with a conditional write), else None: the name is free, or taken.

    Read only on the rare path where a creator or renamer finds the name claimed."""
    key = layout.experiment_name(name)
    try:
        claim, version = records.read_versioned(blobs, key)
        rec: Record | None = records.read(blobs, layout.experiment(str(claim["experiment_id"])))
    except BlobNotFound:
        rec = None
        try:
            version = blobs.stat(key).version
        except BlobNotFound:
            return None
    if rec is not None and rec.get("name") == name:
        return None  # taken (a pending creation too: its claim makes it whole)
    if rec is not None and rec.get(RENAMED_FROM) == name:
        return version  # renamed away: deleting this claim was the rename's last step
    try:
        modified = blobs.stat(key).modified
    except BlobNotFound:
        return None
    age = (datetime.now(timezone.utc) - modified).total_seconds()
    return version if age > STALE_RENAME_SECONDS else None


def claim_name(blobs: Blobs, name: str, experiment_id: str) -> None:
    """Claim ``name`` for ``experiment_id``, taking over the leftover claim of an unfinished
    rename (:func:`stale_claim`); :class:`NameTaken` when another experiment holds it."""
    key = layout.experiment_name(name)
    pointer = records.dumps(build.pointer(experiment_id))
    try:
        blobs.put_if_absent(key, pointer)
        return
    except AlreadyExists:
        stale = stale_claim(blobs, name)
    if stale is None:
        raise NameTaken(name, blobs.object_uri(key))
    try:
        blobs.put_if_version(key, pointer, stale)
    except (PreconditionFailed, BlobNotFound):
        raise NameTaken(name, blobs.object_uri(key)) from None
    log.info("experiment name %r: took over the claim an unfinished rename left", name)


def settle(rec: Record) -> Record:
    """``rec`` without its pending mark (a visible record, about to be rewritten)."""
    rec.pop(PENDING, None)
    return rec


def create_experiment(blobs: Blobs, name: str, record_for: Callable[[str], Record], *,
                      wanted: str | None = None) -> str:
    """Write the experiment record ``record_for(id)`` under a free id and claim ``name`` for
    it; return the id.

    The id is ``wanted`` when it is free, else the next free one: each candidate is claimed
    with put-if-absent on its record, so concurrent creators get distinct ids.  The record is
    written pending and the name claimed last: a creator that loses the name withdraws its
    record and raises :class:`NameTaken` (as it does when the name is taken to begin with);
    one that fails otherwise leaves a pending record nobody sees, or — when its claim
    landed — the experiment, whole.  Once the name is ours the pending mark goes; should that
    write fail, readers still see the experiment through its claim.
    """
    name_key = layout.experiment_name(name)
    if blobs.exists(name_key) and stale_claim(blobs, name) is None:
        raise NameTaken(name, blobs.object_uri(name_key))
    first = int(wanted) if wanted is not None and wanted.isdigit() else None
    exp_id = first if first is not None else next_experiment_id(blobs)
    while True:
        pending = {**record_for(str(exp_id)), PENDING: True}
        try:
            version = blobs.put_if_absent(layout.experiment(str(exp_id)),
                                          records.dumps(pending))
            break
        except AlreadyExists:
            # Taken by another experiment (or a concurrent creator): the next free one is ours.
            exp_id = next_experiment_id(blobs) if exp_id == first else exp_id + 1
    record_key = layout.experiment(str(exp_id))
    try:
        claim_name(blobs, name, str(exp_id))
    except NameTaken:
        # Another process claimed the name between our check and our claim: withdraw (a
        # record left behind is pending, and its name points elsewhere: nobody sees it).
        blobs.delete(record_key)
        raise NameTaken(name, blobs.object_uri(name_key)) from None
    try:
        # Another writer may have changed (and settled) the record since: re-read then.
        versioned_update(blobs, record_key,
                         lambda rec: settle(rec) if PENDING in rec else None,
                         known=(pending, version))
    except CloudtrackError as e:
        log.warning("experiment %s (%s) is created; marking its record settled failed (%s): "
                    "readers find it through its name claim", exp_id, name, e)
    return str(exp_id)
