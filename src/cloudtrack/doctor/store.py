"""The authorization probes every blob backend shares, through the backend's own
:class:`~cloudtrack.blobs.Blobs`: list the prefix, write a probe object, check that a second
put-if-absent is refused, read it back, delete it (and make sure it is gone); with
``--read-only`` only list and read.  The probe object lives under ``.cloudtrack-doctor/`` in the
store and is removed afterwards, also when a step fails."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cloudtrack.blobs import Blobs
from cloudtrack.doctor import net
from cloudtrack.doctor.core import Probe, ProbeTimeout
from cloudtrack.errors import (
    BlobError,
    BlobNotFound,
    CloudtrackError,
    CorruptObject,
)
from cloudtrack.store import layout, marker

PROBE_DIR = ".cloudtrack-doctor"
PROBE_DATA = b"cloudtrack doctor probe object; safe to delete\n"


@dataclass(frozen=True)
class Finding:
    """What an error means: the layer it belongs to, its cause, and how to fix it."""

    layer: str
    cause: str
    summary: str
    fix: str | None = None
    #: The check's id when it differs from the operation's (``auth.accepted`` …).
    id: str | None = None
    #: End the chain here (everything below authz, and a missing bucket).
    stop: bool | None = None

    @property
    def stops(self) -> bool:
        return self.stop if self.stop is not None else self.layer != "authz"


#: (error, operation) -> what it means.  Operations: list, write, read, delete.
Classifier = Callable[[BaseException, str], Finding]
#: The operations that were denied -> one fix that grants all of them.
AccessFix = Callable[[Sequence[str]], str]
#: Every probe denied (these operations) -> what that says of the container itself — a
#: service that answers "denied" for a container the caller has no rights on, whether it
#: exists or not, makes a wrong name look like a missing permission — or None.
ContainerDoubt = Callable[[Sequence[str]], Finding | None]


def fallback_finding(e: BaseException, op: str, where: str) -> Finding:
    """What a probe's error means when no reading of its backend applies: a network failure
    its layer and cause, any other blob error a refusal, anything else a failing service."""
    failure = net.transport_failure(e, where)
    if failure is not None:
        return Finding(failure.layer, failure.cause, failure.summary,
                       failure.fix or "check the endpoint and the network")
    if isinstance(e, BlobError):
        return Finding("authz", "permission-denied", f"{op} failed: {e}")
    return Finding("http", "server-error", f"{op} failed: {e}")


def _timeout_finding(e: ProbeTimeout) -> Finding:
    return Finding("http", "network-timeout", f"{e}; the service accepted the request but did "
                   "not answer in time", "check the endpoint's health and the network")


class _Steps:
    """Results kept in order; denied operations are recorded once the fix for all is known."""

    def __init__(self, p: Probe, classify: Classifier, access_fix: AccessFix) -> None:
        self.p = p
        self.classify = classify
        self.access_fix = access_fix
        #: (id, operation, summary, finding or None for a pass)
        self.rows: list[tuple[str, str, str, Finding | None]] = []
        #: Whether any probe passed: then the container exists and its name is right.
        self.passed = False

    def ok(self, id: str, summary: str) -> None:
        self.passed = True
        self.rows.append((id, "", summary, None))

    def run(self, id: str, op: str, fn: Callable[[], object]) -> tuple[bool, object]:
        try:
            return True, self.p.call(fn, what=f"the {op} probe")
        except ProbeTimeout as e:
            finding = _timeout_finding(e)
        except CloudtrackError as e:
            finding = self.classify(e, op)
        if finding.stops:
            self.stop(finding.id or (id if finding.layer == "authz" else f"{finding.layer}.{op}"),
                      finding)
        self.rows.append((finding.id or id, op, finding.summary, finding))
        return False, None

    def stop(self, id: str, finding: Finding) -> None:
        self.flush()
        self.p.fail(id, finding.layer, finding.cause, finding.summary, finding.fix)

    def flush(self, doubt: ContainerDoubt | None = None) -> None:
        denied = [op for _, op, _, f in self.rows
                  if f is not None and f.cause == "permission-denied"]
        if doubt is not None and denied and not self.passed:
            # Read first: the report's root is the first failing check of its layer.
            found = doubt(denied)
            if found is not None:
                self.p.note_fail(found.id or "authz.container", found.layer, found.cause,
                                 found.summary, found.fix)
        for id, _op, summary, finding in self.rows:
            if finding is None:
                self.p.ok(id, id.split(".")[0], summary)
            else:
                fix = finding.fix
                if finding.cause == "permission-denied" and denied:
                    fix = self.access_fix(denied) or fix
                self.p.note_fail(id, finding.layer, finding.cause, summary, fix)
        self.rows.clear()


def probe_access(p: Probe, blobs: Blobs, *, classify: Classifier, access_fix: AccessFix,
                 where: str, doubt: ContainerDoubt | None = None) -> None:
    """Record the authz checks of ``blobs``; end the chain on a failure below authz.

    When every probe is denied, ``doubt`` may add a finding about the container itself (its
    name), recorded before the probes' own."""
    steps = _Steps(p, classify, access_fix)
    key = f"{PROBE_DIR}/{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    created = deleted = False
    try:
        listed, result = steps.run("authz.list", "list", lambda: blobs.list_dir(""))
        files: list[str] = []
        if listed:
            found, folders = result  # type: ignore[misc]
            files = [str(f.key) for f in found]  # type: ignore[has-type]
            steps.ok("authz.list", f"listed {where}: {len(files)} object(s) and "
                     f"{len(folders)} folder(s) at the top")  # type: ignore[has-type]
        if p.read_only:
            _read_existing(steps, blobs, files)
        else:
            created, _ = steps.run("authz.write", "write",
                                   lambda: blobs.put_if_absent(key, PROBE_DATA))
            if created:
                steps.ok("authz.write", f"wrote the probe object {key}")
                enforced = _conditional(steps, blobs, key)
                ok, data = steps.run("authz.read", "read", lambda: blobs.get(key))
                if ok:
                    if enforced and data != PROBE_DATA:
                        steps.stop("consistency.read-back", Finding(
                            "consistency", "endpoint-mismatch",
                            f"{key} read back different bytes than were written",
                            "the endpoint does not store objects faithfully; use another"))
                    steps.ok("authz.read",
                             f"read the probe object back ({len(PROBE_DATA)} bytes)")
            else:
                _read_existing(steps, blobs, files)
            # Deleting a missing object still needs the permission: test it either way.
            ok, _ = steps.run("authz.delete", "delete", lambda: blobs.delete(key))
            if ok:
                deleted = True
                try:
                    gone = not created or not p.call(lambda: blobs.exists(key),
                                                     what="checking the delete")
                except (CloudtrackError, ProbeTimeout):
                    gone = True  # cannot tell; the delete itself succeeded
                steps.ok("authz.delete", "deleted the probe object" if created
                         else "deleting (a missing probe object) is allowed")
                if not gone:
                    steps.flush()
                    p.warn("consistency.delete", "consistency", "endpoint-mismatch",
                           f"{key} still exists after a successful delete",
                           f"delete {key} by hand; the endpoint's deletes are not immediate")
        steps.flush(doubt)
    finally:
        if created and not deleted:
            try:
                p.call(lambda: blobs.delete(key), what="removing the probe object")
            except Exception:
                p.warn("authz.cleanup", "authz", "permission-denied",
                       f"the probe object {key} could not be removed", f"delete {key} by hand")


def _host() -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return name[:40] or "host"


def _conditional(steps: _Steps, blobs: Blobs, key: str) -> bool:
    """A second put-if-absent must lose; an endpoint that ignores the condition would let
    concurrent writers overwrite each other's records.  True when the condition held."""
    try:
        refused = steps.p.call(lambda: marker.second_write_refused(blobs, key),
                               what="the conditional-write probe")
    except ProbeTimeout as e:
        steps.stop("http.conditional", _timeout_finding(e))
    except CloudtrackError as e:
        f = steps.classify(e, "write")
        steps.stop("consistency.conditional-writes", Finding(
            "consistency", f.cause, f"the conditional-write probe failed: {f.summary}", f.fix))
    if refused:
        steps.ok("consistency.conditional-writes",
                 "a second put-if-absent of the probe object was refused, as it must be")
        return True
    steps.flush()
    steps.p.note_fail(
        "consistency.conditional-writes", "consistency", "endpoint-mismatch",
        "the endpoint accepted a second put-if-absent of the same object: it ignores "
        "conditional writes (If-None-Match / ifGenerationMatch), so concurrent writers would "
        "overwrite each other",
        "use a service that enforces conditional writes (AWS S3, GCS, Azure, a recent MinIO); "
        "this endpoint is not safe for cloudtrack")
    return False


def _read_existing(steps: _Steps, blobs: Blobs, files: list[str]) -> None:
    """Read the store marker — or the metadata of the first object listed, which needs the
    same permission and never downloads a large artifact — when nothing could be written."""
    if layout.MARKER in files:
        ok, data = steps.run("authz.read", "read", lambda: blobs.get(layout.MARKER))
        if ok:
            steps.ok("authz.read", f"read {layout.MARKER} ({len(data)} bytes)")  # type: ignore[arg-type]
    elif files:
        name = files[0]
        ok, _ = steps.run("authz.read", "read", lambda: blobs.stat(name))
        if ok:
            steps.ok("authz.read", f"read the metadata of {name}")


def check_marker(p: Probe, blobs: Blobs) -> None:
    """The store's format marker, if any: a newer format than this cloudtrack understands
    cannot be logged to.  (An artifact root has none.)"""
    if p.artifact_store:
        return
    try:
        raw = p.call(lambda: blobs.get(layout.MARKER), what="reading the store marker")
    except BlobNotFound:
        _no_marker(p, blobs)
        return
    except (BlobError, ProbeTimeout):
        return  # the access probes report it
    try:
        found = marker.parse(raw, blobs.object_uri(layout.MARKER))
    except marker.NewerFormatVersion as e:
        p.note_fail("consistency.format", "consistency", "dependency-missing",
                    f"the store uses cloudtrack format version {e.version}, newer than this "
                    f"cloudtrack understands ({layout.FORMAT_VERSION})",
                    "pip install -U cloudtrack")
    except marker.ForeignFormat as e:
        p.note_fail("consistency.format", "consistency", "config-invalid",
                    f"{layout.MARKER} names format {e.found!r}, not {layout.FORMAT!r}",
                    "point the URI at a cloudtrack store, or at an empty prefix")
    except CorruptObject:
        p.note_fail("consistency.format", "consistency", "config-invalid",
                    f"{layout.MARKER} is not a cloudtrack format marker (not JSON)",
                    "point the URI at a cloudtrack store, or at an empty prefix")
    else:
        p.ok("consistency.format", "consistency",
             f"cloudtrack store, format version {found.version}")


#: The first segment of every key of the storage format (store/layout.py), and what the
#: doctor and the store's own initialiser leave at the top while they work.
_FORMAT_TOP = frozenset(k.split("/")[0] for k in (
    layout.MARKER, layout.EXPERIMENTS, layout.EXPERIMENT_NAMES, layout.RUN_INDEX, layout.HEADS,
    layout.HISTORY, layout.LOGGED_MODELS, layout.LOGGED_MODEL_INDEX, layout.SNAPSHOTS,
    layout.INDEX, layout.REGISTERED_MODELS, layout.MODEL_VERSIONS, layout.ARTIFACTS, PROBE_DIR))
#: Names shown in a finding before "and N more".
_SHOWN = 5


def _no_marker(p: Probe, blobs: Blobs) -> None:
    """No ``cloudtrack.json``: a new store — unless the place already holds other things, which
    usually means a mistyped path.  Logging there still works: the first logging process
    writes the marker and its records next to what is there and touches none of it."""
    where = blobs.uri.rstrip("/")
    try:
        files, folders = p.call(lambda: blobs.list_dir(""), what="listing the store")
    except (BlobError, ProbeTimeout):
        files, folders = [], []  # the access probes report it
    names = [str(f.key) for f in files] + [f"{d.rstrip('/').rsplit('/', 1)[-1]}/" for d in folders]
    foreign = sorted(n for n in names if n.rstrip("/") not in _FORMAT_TOP
                     and not n.startswith(marker.PROBE_PREFIX))
    if not foreign:
        if names:
            p.ok("consistency.format", "consistency",
                 "no cloudtrack.json yet, but cloudtrack records (a first use that was "
                 "interrupted): the next logging process writes it")
        else:
            p.ok("consistency.format", "consistency",
                 "no cloudtrack.json yet: a new store, initialised on first use")
        return
    shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more"
                                           if len(foreign) > _SHOWN else "")
    p.warn("consistency.format", "consistency", "config-invalid",
           f"{where} is not a cloudtrack store: it has no cloudtrack.json and already holds "
           f"{len(foreign)} other file(s)/folder(s) at the top ({shown}). Logging there would "
           "create a new store in it, its records next to those files (which stay untouched), "
           "and `cloudtrack check` would list them as unknown objects",
           "if the path is a typo, point the URI at your store; to start a store, use a new, "
           "empty directory or prefix")
