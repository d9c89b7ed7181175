"""Claiming what must be unique with put-if-absent (rule 2 of docs/format.md): experiment ids,
allocated in order, and experiment names.

The tracking store's ``create_experiment`` and ``cloudtrack migrate`` (which keeps the
source's ids where they are free) create experiments through :func:`create_experiment`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudtrack.errors import AlreadyExists
from cloudtrack.store import build, layout, records
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs


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


def create_experiment(blobs: Blobs, name: str, record_for: Callable[[str], Record], *,
                      wanted: str | None = None) -> str:
    """Write the experiment record ``record_for(id)`` under a free id and claim ``name`` for
    it; return the id.

    The id is ``wanted`` when it is free, else the next free one: each candidate is claimed
    with put-if-absent on its record, so concurrent creators get distinct ids.  The name is
    claimed last; a creator that loses the name withdraws its record and raises
    :class:`NameTaken` (as it does when the name is taken to begin with).
    """
    name_key = layout.experiment_name(name)
    if blobs.exists(name_key):
        raise NameTaken(name, blobs.object_uri(name_key))
    first = int(wanted) if wanted is not None and wanted.isdigit() else None
    exp_id = first if first is not None else next_experiment_id(blobs)
    while True:
        try:
            blobs.put_if_absent(layout.experiment(str(exp_id)),
                                records.dumps(record_for(str(exp_id))))
            break
        except AlreadyExists:
            # Taken by another experiment (or a concurrent creator): the next free one is ours.
            exp_id = next_experiment_id(blobs) if exp_id == first else exp_id + 1
    try:
        blobs.put_if_absent(name_key, records.dumps(build.pointer(str(exp_id))))
    except AlreadyExists:
        # Another process claimed the name between our check and our claim: withdraw.
        blobs.delete(layout.experiment(str(exp_id)))
        raise NameTaken(name, blobs.object_uri(name_key)) from None
    return str(exp_id)
