"""``cloudtrack check``: read a whole store, say what in it is inconsistent, and (on request)
repair what is provably garbage (docs/format.md, "Checking a store").

A check is a plan first (:func:`plan`): one listing of the store, every record read and
parsed, then each rule of the format tested — a run head has its run index and the reverse,
history belongs to a run, a name claim to an experiment, a version to a registered model,
artifacts under the store's ``artifacts/`` to a run or logged model that exists … Each
:class:`Finding` says what is wrong, which objects, how many bytes, and what a repair does:
remove garbage, write back an index or name claim that can be rebuilt from what points at it,
drop stale page entries — or nothing (a record that does not parse is data; a person decides).

Many processes may be writing while a check runs, and a writer half-way through looks like
garbage: the objects of a run being created before its head lands, a batch flushed into a run
being deleted.  So nothing younger than the grace period (an hour by default) is garbage, and
:func:`repair` tests each finding again right before it acts (listing the folder again,
reading the record again); what changed since the plan is left alone.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cloudtrack.errors import AlreadyExists, BlobNotFound, CloudtrackError, CorruptObject
from cloudtrack.progress import Progress, Silent
from cloudtrack.store import build, claims, layout, marker, pages, purge, records
from cloudtrack.store.records import Record

if TYPE_CHECKING:
    from cloudtrack.blobs import BlobInfo, Blobs

log = logging.getLogger("cloudtrack.check")

#: Objects younger than this (seconds) are never garbage: their writer may be half-way.
GRACE_SECONDS = 3600.0
#: Records read at once.
READ_CONCURRENCY = 16

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_EXPERIMENT_KEY = re.compile(r"^experiments/[0-9]+\.json$")
_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")

#: kind -> what it means (the report's words).
KINDS: dict[str, str] = {
    "unreadable_record": "a record that does not parse, or lacks what readers need (kept: "
                         "a person decides)",
    "unknown_object": "an object the format does not know (kept; not a problem)",
    "unreadable_page": "a page that does not parse (a cache: removed)",
    "pending_experiment": "an experiment record its creator or a hard delete left pending, "
                          "that no name claim points at (no reader sees it)",
    "experiment_without_name": "an experiment whose name claim is missing (written back)",
    "name_without_experiment": "a name claim pointing at no experiment of that name",
    "run_of_missing_experiment": "a run head of an experiment that does not exist",
    "head_without_run_index": "a run head without its run index (written back)",
    "run_index_mismatch": "a run index naming another experiment than its head's (kept)",
    "run_index_without_head": "a run index of a run that has no head",
    "history_without_run": "history batches of a run that does not exist",
    "logged_model_of_missing_experiment": "a logged model of an experiment that does not "
                                          "exist",
    "logged_model_without_index": "a logged model without its model index (written back)",
    "model_index_without_model": "a logged-model index of a model that does not exist",
    "pages_of_missing_experiment": "head or logged-model pages of an experiment that does "
                                   "not exist",
    "stale_page_entries": "page entries of records that no longer exist",
    "snapshot_of_missing_experiment": "a head snapshot of an experiment that does not exist",
    "versions_of_missing_model": "registry versions of a registered model that does not exist",
    "unfinished_rename": "the old record of a registered model a killed rename left behind "
                         "(readers already see only the new one)",
    "artifacts_of_missing_run": "artifacts of a run that does not exist",
    "artifacts_of_missing_model": "artifacts of a logged model that does not exist",
    "temporary_file": "a temporary file a killed writer left (local stores)",
}

#: Kinds that are reported, yet a store with them is whole: stale page entries cost a few
#: bytes and nothing else (readers ignore them; a registry delete leaves its own, for one;
#: a repair drops them), and objects the format does not know may be anybody's (artifacts of
#: a server whose artifact root is elsewhere in the bucket; a repair keeps them).
HARMLESS = frozenset({"stale_page_entries", "unknown_object"})

#: The order repairs run in: what is written back first, then what hangs off a thing, the
#: things themselves, and experiment records last (a record removed before its contents
#: would free its id for a new experiment that then sees them).
_ORDER = ["head_without_run_index", "logged_model_without_index", "experiment_without_name",
          "stale_page_entries", "unreadable_page", "temporary_file", "artifacts_of_missing_run",
          "artifacts_of_missing_model", "history_without_run", "run_of_missing_experiment",
          "run_index_without_head", "logged_model_of_missing_experiment",
          "model_index_without_model", "unfinished_rename", "versions_of_missing_model",
          "pages_of_missing_experiment", "snapshot_of_missing_experiment",
          "name_without_experiment", "pending_experiment"]


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the store."""

    kind: str
    #: The object or folder concerned.
    subject: str
    detail: str
    #: The objects a repair removes (or, for a write-back, the object it writes).
    keys: tuple[str, ...] = ()
    bytes: int = 0
    #: What a repair does: ``delete``, ``drop_entries``, ``write``; None: nothing (reported).
    action: str | None = None
    #: Younger than the grace period: perhaps a writer half-way, so not garbage (yet).
    young: bool = False
    #: Tests the finding again right before a repair; False: things changed, leave it.
    recheck: Callable[[], bool] | None = field(default=None, compare=False, repr=False)
    #: The repair itself, for a write-back or entries to drop (a delete removes ``keys``).
    fix: Callable[[], int] | None = field(default=None, compare=False, repr=False)

    @property
    def repairable(self) -> bool:
        return self.action is not None and not self.young

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail,
                "objects": len(self.keys), "bytes": self.bytes, "action": self.action,
                "young": self.young, "keys": list(self.keys)}


@dataclass
class CheckReport:
    """What a check found and what its repair did."""

    store: str
    objects: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    grace_seconds: float = GRACE_SECONDS
    repair: bool = False
    dry_run: bool = False
    repaired: list[Finding] = field(default_factory=list)
    #: (finding, why it was left): changed since the plan, or the repair failed.
    left: list[tuple[Finding, str]] = field(default_factory=list)
    objects_removed: int = 0
    bytes_reclaimed: int = 0
    seconds: float = 0.0
    #: record key -> the pages (folder, bits) holding an entry of it (a repair drops the
    #: entries of the records it removes).
    entries_in: dict[str, set[tuple[str, str]]] = field(default_factory=dict, repr=False)
    removed: set[str] = field(default_factory=set, repr=False)

    @property
    def problems(self) -> list[Finding]:
        """Findings that are neither a writer possibly half-way nor harmless."""
        return [f for f in self.findings if not f.young and f.kind not in HARMLESS]

    @property
    def planned(self) -> list[Finding]:
        """What a repair acts on."""
        return [f for f in self.findings if f.repairable]

    @property
    def exit_code(self) -> int:
        """0 whole (or everything found repaired), 1 problems remain."""
        if not self.problems:
            return 0
        if self.repair and not self.dry_run:
            done = {id(f) for f in self.repaired}
            return 0 if all(id(f) in done for f in self.problems) else 1
        return 1

    def counts(self, findings: Iterable[Finding] | None = None) -> dict[str, int]:
        """Findings by kind (of ``findings``; of every finding by default)."""
        out: dict[str, int] = {}
        for f in (self.findings if findings is None else findings):
            out[f.kind] = out.get(f.kind, 0) + 1
        return dict(sorted(out.items()))

    def not_counted(self) -> dict[str, int]:
        """The findings that are no problems, by kind and why: ``"<kind> (harmless)"``,
        ``"<kind> (younger than the grace period)"``."""
        out: dict[str, int] = {}
        for f in self.findings:
            if f.kind in HARMLESS:
                why = f"{f.kind} (harmless)"
            elif f.young:
                why = f"{f.kind} (younger than the grace period)"
            else:
                continue
            out[why] = out.get(why, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        plan = self.planned
        return {
            "store": self.store, "objects": self.objects, "bytes": self.bytes,
            "grace_seconds": self.grace_seconds, "whole": not self.problems,
            "counts": self.counts(), "problems": self.counts(self.problems),
            "findings": [f.to_dict() for f in self.findings],
            "plan": {"findings": len(plan), "objects": sum(len(f.keys) for f in plan
                                                           if f.action == "delete"),
                     "bytes": sum(f.bytes for f in plan if f.action == "delete")},
            "repair": self.repair, "dry_run": self.dry_run,
            "repaired": len(self.repaired),
            "left": [{"subject": f.subject, "kind": f.kind, "why": why} for f, why in self.left],
            "objects_removed": self.objects_removed, "bytes_reclaimed": self.bytes_reclaimed,
            "seconds": round(self.seconds, 3), "exit_code": self.exit_code,
        }


def holds_store(blobs: Blobs) -> bool:
    """Whether ``blobs`` holds a cloudtrack store: its marker, ``cloudtrack.json``
    (docs/format.md), or else an experiment record — a store's first writer writes the
    Default experiment's before the marker, and may have been killed in between.  A folder of
    other files is no store, however many.  Raises
    :class:`~cloudtrack.store.marker.ForeignFormat` for the marker of another format."""
    if marker.read(blobs) is not None:
        return True
    files, _ = blobs.list_dir(layout.EXPERIMENTS)
    return any(_EXPERIMENT_KEY.match(f.key) for f in files)


# -- the plan --------------------------------------------------------------------------------


class _Store:
    """One listing of the store and its records, read once."""

    def __init__(self, blobs: Blobs, grace: float, progress: Progress) -> None:
        self.blobs = blobs
        self.grace = grace
        self.now = datetime.now(timezone.utc)
        progress.start("listing", None)
        self.infos: dict[str, BlobInfo] = {}
        for info in blobs.list(""):
            self.infos[info.key] = info
            progress.advance()
        progress.finish()
        self.records: dict[str, Record] = {}
        self.unreadable: dict[str, str] = {}
        #: record key -> the pages (folder, bits) holding an entry of it.
        self.entries_in: dict[str, set[tuple[str, str]]] = {}

    def young(self, keys: Iterable[str]) -> bool:
        return any((self.now - self.infos[k].modified).total_seconds() < self.grace
                   for k in keys if k in self.infos)

    def size(self, keys: Iterable[str]) -> int:
        return sum(self.infos[k].size for k in keys if k in self.infos)

    def under(self, prefix: str) -> list[str]:
        return [k for k in self.infos if k.startswith(prefix)]

    def read_all(self, keys: list[str], progress: Progress) -> None:
        progress.start("reading records", len(keys))

        def one(key: str) -> tuple[str, Record | None, str | None]:
            try:
                return key, records.read(self.blobs, key), None
            except BlobNotFound:
                return key, None, None  # gone since the listing
            except CorruptObject as e:
                # Its own words, not the reader's advice (which names the whole URI again).
                return key, None, f"{e.why}; kept: restore it from a backup or fix it by " \
                    "hand, or remove it if it is not wanted"
            except CloudtrackError as e:
                return key, None, str(e)

        with concurrent.futures.ThreadPoolExecutor(READ_CONCURRENCY) as pool:
            for key, rec, error in pool.map(one, keys):
                if rec is not None:
                    self.records[key] = rec
                elif error is not None:
                    self.unreadable[key] = error
                progress.advance()
        progress.finish()


def _group(keys: Iterable[str], depth: int) -> dict[str, list[str]]:
    """Keys by their first ``depth`` segments (a folder, '/'-terminated)."""
    out: dict[str, list[str]] = {}
    for k in keys:
        parts = k.split("/")
        if len(parts) > depth:
            out.setdefault("/".join(parts[:depth]) + "/", []).append(k)
    return out


def plan(blobs: Blobs, *, grace: float = GRACE_SECONDS,
         progress: Progress | None = None) -> CheckReport:
    """Read the whole store and find what is inconsistent (nothing is changed)."""
    started = time.monotonic()
    progress = progress or Silent()
    st = _Store(blobs, grace, progress)
    keys = list(st.infos)
    report = CheckReport(store=blobs.uri, objects=len(keys), grace_seconds=grace,
                         bytes=sum(i.size for i in st.infos.values()))
    report.entries_in = st.entries_in
    is_record = (layout.EXPERIMENTS, layout.EXPERIMENT_NAMES, layout.RUN_INDEX, layout.HEADS,
                 layout.HISTORY, layout.LOGGED_MODELS, layout.LOGGED_MODEL_INDEX,
                 layout.REGISTERED_MODELS, layout.MODEL_VERSIONS)
    st.read_all([k for k in keys if k.startswith(is_record)], progress)
    out = report.findings
    for key, error in sorted(st.unreadable.items()):
        out.append(Finding("unreadable_record", key, error, (key,), st.size([key])))
    known = (*is_record, layout.MARKER, layout.INDEX, layout.SNAPSHOTS, layout.ARTIFACTS + "/")
    for key in keys:
        if not key.startswith(known):
            out.append(Finding("unknown_object", key, "not part of the storage format",
                               (key,), st.size([key])))

    visible = _experiments(st, out)
    runs = _runs(st, out, visible)
    models = _logged_models(st, out, visible)
    _pages(st, out, visible)
    _registry(st, out)
    _artifacts(st, out, runs, models)
    _temporary_files(st, out)
    report.seconds = time.monotonic() - started
    return report


#: What a reader needs of an experiment record (store.entities.experiment): one without them
#: is skipped by search_experiments, as a record that does not parse is.
_EXPERIMENT_FIELDS = ("experiment_id", "name", "artifact_location", "lifecycle_stage")


def _malformed_experiment(rec: Record) -> str | None:
    """Why the experiment record ``rec``, which parses, is no experiment a name claim can be
    rebuilt from; None when it is one."""
    missing = [f for f in _EXPERIMENT_FIELDS if f not in rec]
    if missing:
        return f"malformed experiment record: no {', '.join(missing)} (readers skip it)"
    if not isinstance(rec["name"], str) or not rec["name"]:
        return f"malformed experiment record: its name is {rec['name']!r}, not a name"
    if not isinstance(rec.get("tags", {}), dict):
        return "malformed experiment record: its tags are not an object (readers skip it)"
    return None


def _experiments(st: _Store, out: list[Finding]) -> set[str]:
    """Experiment records and name claims; returns the ids of the experiments that exist, and
    of those whose record does not parse or is malformed: what hangs off them may be wanted
    once a person restores the record, so none of it is provably garbage."""
    blobs = st.blobs
    recs = {layout.id_from_key(k): (k, r) for k, r in st.records.items()
            if k.startswith(layout.EXPERIMENTS) and k.endswith(".json")}
    claims_of = {k: r for k, r in st.records.items() if k.startswith(layout.EXPERIMENT_NAMES)}
    visible: set[str] = {layout.id_from_key(k) for k in st.unreadable
                         if k.startswith(layout.EXPERIMENTS) and k.endswith(".json")}
    unsure = set(visible)
    for exp_id, (key, rec) in sorted(recs.items()):
        why = _malformed_experiment(rec)
        if why is not None:
            # Data, as a record that does not parse: no claim is written from it (a name
            # claim for "None" would squat that name), nothing is removed.
            unsure.add(exp_id)
            visible.add(exp_id)
            out.append(Finding("unreadable_record", key, f"{why}; kept: restore it from a "
                               "backup or fix it by hand, or remove it if experiment "
                               f"{exp_id} is not wanted (a later repair then removes what "
                               "it held)", (key,), st.size([key])))
            continue
        name_key = layout.experiment_name(str(rec.get("name")))
        claim = claims_of.get(name_key)
        points = claim is not None and str(claim.get("experiment_id")) == exp_id
        if rec.get(claims.PENDING) and not points:
            def still(key: str = key) -> bool:
                try:
                    now = records.read(blobs, key)
                except BlobNotFound:
                    return False
                return bool(now.get(claims.PENDING)) and not claims.visible(blobs, now)
            out.append(Finding(
                "pending_experiment", key,
                f"experiment {exp_id} ({rec.get('name')!r}) was never committed or was being "
                "hard-deleted", (key,), st.size([key]), "delete", st.young([key]), still))
            continue
        visible.add(exp_id)
        if claim is None and name_key not in st.unreadable:
            def write_claim(name_key: str = name_key, exp_id: str = exp_id) -> int:
                try:
                    blobs.put_if_absent(name_key, records.dumps(build.pointer(exp_id)))
                except AlreadyExists:
                    return 0
                return 1

            def unclaimed(name_key: str = name_key) -> bool:
                return not blobs.exists(name_key)
            out.append(Finding(
                "experiment_without_name", key,
                f"experiment {exp_id} is named {rec.get('name')!r} but no claim holds that name",
                (name_key,), 0, "write", False, unclaimed, write_claim))
    for name_key, claim in claims_of.items():
        exp_id = str(claim.get("experiment_id"))
        if exp_id in unsure:
            continue  # perhaps its own claim: nothing is provable until the record is fixed
        target = recs.get(exp_id)
        if target is not None and layout.experiment_name(str(target[1].get("name"))) == name_key:
            continue
        if target is not None and target[1].get(claims.RENAMED_FROM) is None and \
                (st.now - st.infos[name_key].modified).total_seconds() < \
                max(st.grace, claims.STALE_RENAME_SECONDS):
            young = True  # perhaps a rename under way
        else:
            young = st.young([name_key])
        detail = (f"points at experiment {exp_id}, which does not exist" if target is None else
                  f"points at experiment {exp_id}, which is named {target[1].get('name')!r}")

        def still_dangling(name_key: str = name_key, version: str = st.infos[name_key].version,
                           ) -> bool:
            try:
                return blobs.stat(name_key).version == version
            except BlobNotFound:
                return False
        out.append(Finding("name_without_experiment", name_key, detail, (name_key,),
                           st.size([name_key]), "delete", young, still_dangling))
    return visible


def _runs(st: _Store, out: list[Finding], visible: set[str]) -> set[str]:
    """Heads, run indexes and history; returns the ids of the runs that exist."""
    blobs = st.blobs
    heads: dict[str, str] = {}  # run id -> experiment of its head
    for key in st.infos:
        if key.startswith(layout.HEADS) and key.endswith(".json") and key.count("/") == 2:
            heads[layout.id_from_key(key)] = key.split("/")[1]
    index: dict[str, str] = {}
    for key in st.infos:
        if key.startswith(layout.RUN_INDEX) and key.endswith(".json"):
            rec = st.records.get(key)
            index[layout.id_from_key(key)] = str(rec.get("experiment_id")) if rec else ""
    exist = {r for r, e in heads.items() if e in visible}

    def run_gone(run_id: str, exp: str) -> Callable[[], bool]:
        def check() -> bool:
            if blobs.exists(layout.experiment(exp)):
                try:
                    if claims.visible(blobs, records.read(blobs, layout.experiment(exp))):
                        return False
                except BlobNotFound:
                    pass
            return True
        return check

    for run_id, exp in sorted(heads.items()):
        head_key = layout.head(exp, run_id)
        if head_key in st.unreadable:
            continue  # reported as such; nothing in it is provable
        if exp not in visible:
            objs = [head_key, *st.under(layout.history(run_id))]
            if index.get(run_id) == exp:
                objs.append(layout.run_index(run_id))
            out.append(Finding("run_of_missing_experiment", head_key,
                               f"run {run_id} of experiment {exp}, which does not exist",
                               tuple(objs), st.size(objs), "delete", st.young(objs),
                               run_gone(run_id, exp)))
            continue
        if run_id not in index:
            def write_index(run_id: str = run_id, exp: str = exp) -> int:
                try:
                    blobs.put_if_absent(layout.run_index(run_id),
                                        records.dumps(build.pointer(exp)))
                except AlreadyExists:
                    return 0
                return 1

            def no_index(run_id: str = run_id) -> bool:
                return not blobs.exists(layout.run_index(run_id))
            out.append(Finding("head_without_run_index", head_key,
                               f"run {run_id} has a head but get_run cannot find it",
                               (layout.run_index(run_id),), 0, "write", False, no_index,
                               write_index))
        elif index[run_id] and index[run_id] != exp:
            out.append(Finding("run_index_mismatch", layout.run_index(run_id),
                               f"names experiment {index[run_id]}, the head is in {exp}"))
    for run_id, exp in sorted(index.items()):
        if run_id in heads:
            continue
        key = layout.run_index(run_id)
        if key in st.unreadable:
            continue
        objs = [*st.under(layout.history(run_id)), key]
        out.append(Finding("run_index_without_head", key,
                           f"run {run_id} has no head (a creator or a hard delete stopped "
                           "half-way)", tuple(objs), st.size(objs), "delete", st.young(objs),
                           _no_head(blobs, run_id, exp)))
    for folder, batch_keys in _group(st.under(layout.HISTORY), 2).items():
        run_id = folder.split("/")[1]
        if run_id in heads or run_id in index:
            continue  # reported with its head or index
        out.append(Finding("history_without_run", folder,
                           f"{len(batch_keys)} batch(es) of run {run_id}, which does not exist",
                           tuple(batch_keys), st.size(batch_keys), "delete",
                           st.young(batch_keys), _no_head(blobs, run_id, None)))
    return exist


def _no_head(blobs: Blobs, run_id: str, exp: str | None) -> Callable[[], bool]:
    """Still no run: no run index (or one whose experiment has no head of it)."""
    def check() -> bool:
        try:
            rec = records.read(blobs, layout.run_index(run_id))
        except BlobNotFound:
            return True
        return not blobs.exists(layout.head(str(rec.get("experiment_id") or exp), run_id))
    return check


def _logged_models(st: _Store, out: list[Finding], visible: set[str]) -> set[str]:
    blobs = st.blobs
    found: dict[str, str] = {}
    for key in st.infos:
        if key.startswith(layout.LOGGED_MODELS) and key.endswith(".json") and \
                key.count("/") == 2:
            found[layout.id_from_key(key)] = key.split("/")[1]
    index = {layout.id_from_key(k) for k in st.infos
             if k.startswith(layout.LOGGED_MODEL_INDEX) and k.endswith(".json")}
    for model_id, exp in sorted(found.items()):
        key = layout.logged_model(exp, model_id)
        if exp not in visible:
            objs = [key] + ([layout.logged_model_index(model_id)] if model_id in index else [])
            out.append(Finding("logged_model_of_missing_experiment", key,
                               f"logged model {model_id} of experiment {exp}, which does not "
                               "exist", tuple(objs), st.size(objs), "delete", st.young(objs),
                               _experiment_gone(blobs, exp)))
        elif model_id not in index:
            def write_index(model_id: str = model_id, exp: str = exp) -> int:
                try:
                    blobs.put_if_absent(layout.logged_model_index(model_id),
                                        records.dumps(build.pointer(exp)))
                except AlreadyExists:
                    return 0
                return 1

            def no_index(model_id: str = model_id) -> bool:
                return not blobs.exists(layout.logged_model_index(model_id))
            out.append(Finding("logged_model_without_index", key,
                               f"logged model {model_id} cannot be found from its id",
                               (layout.logged_model_index(model_id),), 0, "write", False,
                               no_index, write_index))
    for model_id in sorted(index - set(found)):
        key = layout.logged_model_index(model_id)

        def no_model(model_id: str = model_id) -> bool:
            try:
                rec = records.read(blobs, layout.logged_model_index(model_id))
            except BlobNotFound:
                return False
            return not blobs.exists(layout.logged_model(str(rec.get("experiment_id")),
                                                        model_id))
        if key not in st.unreadable:
            out.append(Finding("model_index_without_model", key,
                               f"logged model {model_id} has no record", (key,),
                               st.size([key]), "delete", st.young([key]), no_model))
    return {m for m, e in found.items() if e in visible}


def _experiment_gone(blobs: Blobs, exp: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return not claims.visible(blobs, records.read(blobs, layout.experiment(exp)))
        except BlobNotFound:
            return True
    return check


def _pages(st: _Store, out: list[Finding], visible: set[str]) -> None:
    blobs = st.blobs
    page_keys = [k for k in st.infos if k.startswith(layout.INDEX)]
    folders: dict[str, list[str]] = {}
    for key in page_keys:
        folders.setdefault(key.rsplit("/", 1)[0] + "/", []).append(key)
    for folder, keys in sorted(folders.items()):
        parts = folder.split("/")
        exp = parts[2] if parts[1] in ("heads", "logged-models") and len(parts) > 3 else None
        if exp is not None and exp not in visible:
            out.append(Finding("pages_of_missing_experiment", folder,
                               f"{len(keys)} page(s) of experiment {exp}, which does not exist",
                               tuple(keys), st.size(keys), "delete", st.young(keys),
                               _experiment_gone(blobs, exp)))
            continue
        stale_in: dict[str, set[str]] = {}  # page bits -> entries of records not listed
        for key in keys:
            try:
                _, entries = pages.unpack(blobs.get(key))
            except BlobNotFound:
                continue
            except ValueError as e:
                out.append(Finding("unreadable_page", key, str(e), (key,), st.size([key]),
                                   "delete", st.young([key])))
                continue
            bits = pages.bits_of(key)
            if bits is None:
                continue
            stale_in[bits] = {k for k in entries if k not in st.infos}
            for k in entries:
                st.entries_in.setdefault(k, set()).add((folder, bits))
        stale = set().union(*stale_in.values())
        if stale:
            # From the page each entry is in, which need not be the deepest on its path.
            def drop(folder: str = folder, stale_in: dict[str, set[str]] = stale_in) -> int:
                gone = {k for k in set().union(*stale_in.values()) if not blobs.exists(k)}
                return purge.drop_entries_in_pages(
                    blobs, folder, {bits: found & gone for bits, found in stale_in.items()})
            out.append(Finding("stale_page_entries", folder,
                               f"{len(stale)} entries of records that no longer exist",
                               tuple(sorted(stale)), 0, "drop_entries", False, None, drop))
    for key in st.under(f"{layout.SNAPSHOTS}heads/"):
        exp = key.rsplit("/", 1)[-1].removesuffix(".json.gz")
        if exp not in visible:
            out.append(Finding("snapshot_of_missing_experiment", key,
                               f"snapshot of experiment {exp}, which does not exist", (key,),
                               st.size([key]), "delete", st.young([key]),
                               _experiment_gone(blobs, exp)))


def _registry(st: _Store, out: list[Finding]) -> None:
    blobs = st.blobs
    ids = {str(r.get("id")) for k, r in st.records.items()
           if k.startswith(layout.REGISTERED_MODELS)}
    unreadable_models = any(k.startswith(layout.REGISTERED_MODELS) for k in st.unreadable)
    for folder, keys in sorted(_group(st.under(layout.MODEL_VERSIONS), 3).items()):
        model_id = folder.split("/")[2]
        if model_id in ids or unreadable_models:
            continue  # (an unreadable model record may be theirs: nothing is provable)

        def orphaned(model_id: str = model_id) -> bool:
            for info in blobs.list(layout.REGISTERED_MODELS):
                try:
                    if str(records.read(blobs, info.key).get("id")) == model_id:
                        return False
                except BlobNotFound:
                    continue
                except CloudtrackError:
                    return False
            return True
        out.append(Finding("versions_of_missing_model", folder,
                           f"{len(keys)} version(s) of registered model id {model_id}, "
                           "which does not exist", tuple(keys), st.size(keys), "delete",
                           st.young(keys), orphaned))


    # A rename marks the old record with the new name, writes the new record, then deletes
    # the old one: killed in between, the old record stays, marked, while the new one holds
    # its id (readers leave the old one out: model_registry.current_models).
    for key, rec in sorted(st.records.items()):
        new_name = rec.get(build.RENAMED_TO) if key.startswith(layout.REGISTERED_MODELS) \
            else None
        if not new_name:
            continue
        new_key = layout.registered_model(str(new_name))
        held_id = rec.get("id")
        if new_key == key or st.records.get(new_key, {}).get("id") != held_id:
            continue

        def left_over(key: str = key, new_key: str = new_key, name: str = str(new_name),
                      model_id: Any = held_id) -> bool:
            try:
                old, new = records.read(blobs, key), records.read(blobs, new_key)
            except CloudtrackError:
                return False
            return old.get(build.RENAMED_TO) == name and \
                old.get("id") == model_id == new.get("id")
        out.append(Finding("unfinished_rename", key,
                           f"registered model {rec.get('name')!r}, renamed to {new_name!r} by a "
                           "rename that did not finish", (key,), st.size([key]), "delete",
                           st.young([key]), left_over))


def _referenced(st: _Store) -> str:
    """Every source and storage location registry versions name, in one string to search:
    artifacts a model version points at stay, whatever became of their run."""
    parts = []
    for key, rec in st.records.items():
        if key.startswith(layout.MODEL_VERSIONS):
            parts += [str(rec.get("source")), str(rec.get("storage_location")),
                      str(rec.get("run_id")), str(rec.get("model_id"))]
    return "\n".join(parts)


def _artifacts(st: _Store, out: list[Finding], runs: set[str], models: set[str]) -> None:
    """Artifacts under the store's own ``artifacts/``: ``<exp>/<run id>/…`` and
    ``<exp>/models/<model id>/…`` of runs and models that do not exist.  Anything else under
    ``artifacts/`` (a custom layout) is never judged."""
    blobs = st.blobs
    referenced = _referenced(st)
    root = layout.ARTIFACTS + "/"
    groups: dict[str, list[str]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for key in st.under(root):
        parts = key.split("/")
        if len(parts) >= 4 and _RUN_ID.match(parts[2]) and parts[2] not in runs:
            folder = "/".join(parts[:3]) + "/"
            kinds[folder] = ("artifacts_of_missing_run", parts[2])
        elif len(parts) >= 5 and parts[2] == "models" and _MODEL_ID.match(parts[3]) and \
                parts[3] not in models:
            folder = "/".join(parts[:4]) + "/"
            kinds[folder] = ("artifacts_of_missing_model", parts[3])
        else:
            continue
        groups.setdefault(folder, []).append(key)
    for folder, keys in sorted(groups.items()):
        kind, ident = kinds[folder]
        if ident in referenced:
            continue  # a registered model version points at them

        def gone(kind: str = kind, ident: str = ident) -> bool:
            index = (layout.run_index(ident) if kind == "artifacts_of_missing_run"
                     else layout.logged_model_index(ident))
            return not blobs.exists(index)
        what = "run" if kind == "artifacts_of_missing_run" else "logged model"
        out.append(Finding(kind, folder,
                           f"{len(keys)} file(s) of {what} {ident}, which does not exist",
                           tuple(keys), st.size(keys), "delete", st.young(keys), gone))


def _temporary_files(st: _Store, out: list[Finding]) -> None:
    """A local store writes through temporary files renamed into place; listings never show
    them, so they are found by walking the folder."""
    from cloudtrack.blobs.local import _TMP_MARK, LocalBlobs, _writer_alive

    blobs = st.blobs
    if not isinstance(blobs, LocalBlobs):
        return
    root = blobs.root
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if not name.startswith(_TMP_MARK):
                continue
            path = os.path.join(dirpath, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            age = st.now.timestamp() - stat.st_mtime
            rel = os.path.relpath(path, root).replace(os.sep, "/")

            def remove(path: str = path) -> int:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    return 0
                return 1
            alive = _writer_alive(name)
            # A live writer's file is never garbage, however old (it may be a long upload);
            # a dead writer's is, past the grace period (its pid may be another host's, on a
            # shared filesystem).
            out.append(Finding("temporary_file", rel, "of a writer that still runs" if alive
                               else "left by a writer that is gone", (rel,), stat.st_size,
                               "delete", alive or age < st.grace, None, remove))


# -- the repair ------------------------------------------------------------------------------


def repair(blobs: Blobs, report: CheckReport, *, progress: Progress | None = None) -> None:
    """Repair what ``report`` planned, in :data:`_ORDER`: each finding is tested again first
    (and a folder listed again: anything in it younger than the grace period, and it is
    left)."""
    progress = progress or Silent()
    report.repair = True
    todo = sorted(report.planned,
                  key=lambda f: _ORDER.index(f.kind) if f.kind in _ORDER else len(_ORDER))
    progress.start("repairing", len(todo))
    for f in todo:
        try:
            why = _repair_one(blobs, f, report)
        except CloudtrackError as e:
            why = f"failed: {e}"
        if why is None:
            report.repaired.append(f)
        else:
            report.left.append((f, why))
            log.info("left %s (%s): %s", f.subject, f.kind, why)
        progress.advance()
    # The pages of what was removed lose its entries too (readers ignore them; the bytes go).
    folders: dict[str, dict[str, set[str]]] = {}
    for key in report.removed:
        for folder, bits in report.entries_in.get(key, ()):
            folders.setdefault(folder, {}).setdefault(bits, set()).add(key)
    for folder, found in folders.items():
        try:
            purge.drop_entries_in_pages(blobs, folder, found)
        except CloudtrackError as e:
            log.info("could not drop %d entries from %s: %s",
                     sum(map(len, found.values())), folder, e)
    progress.finish()


def _repair_one(blobs: Blobs, f: Finding, report: CheckReport) -> str | None:
    if f.recheck is not None and not f.recheck():
        return "changed since the check: no longer provably garbage"
    if f.fix is not None:
        done = f.fix()
        if f.action == "delete" and done:
            report.objects_removed += done
            report.bytes_reclaimed += f.bytes
        return None
    keys = list(f.keys)
    if f.subject.endswith("/"):
        # A folder: what is in it now, and none of it young.
        infos = list(blobs.list(f.subject))
        cutoff = datetime.now(timezone.utc).timestamp() - report.grace_seconds
        if any(i.modified.timestamp() > cutoff for i in infos):
            return "something in it was written within the grace period"
        keys = [i.key for i in infos] + [k for k in keys if not k.startswith(f.subject)]
        sizes = {i.key: i.size for i in infos}
    else:
        sizes = {}
    # Deleted in the order the plan lists them: the head before the run index.
    for key in keys:
        blobs.delete(key)
        report.removed.add(key)
        report.objects_removed += 1
    report.bytes_reclaimed += sum(sizes.values()) if sizes else f.bytes
    return None


def check(blobs: Blobs, *, repair_: bool = False, dry_run: bool = False,
          grace: float = GRACE_SECONDS, progress: Progress | None = None) -> CheckReport:
    """Plan, and with ``repair_`` (unless ``dry_run``) repair."""
    started = time.monotonic()
    report = plan(blobs, grace=grace, progress=progress)
    report.repair, report.dry_run = repair_, dry_run
    if repair_ and not dry_run:
        repair(blobs, report, progress=progress)
    report.seconds = time.monotonic() - started
    return report


def parse_duration(text: str) -> float:
    """``3600``, ``90s``, ``30m``, ``1h``, ``2d``, ``1h30m`` -> seconds; ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (examples: 3600, 90s, 30m, 1h, 1h30m)")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


def dumps(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
