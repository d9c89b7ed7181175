"""The local journal: buffered data that could not be written to the store at exit.

In the default (buffered) mode a process that exits while its store is unreachable (or its
credentials expired, or retries ran out) keeps what it could not write here instead of losing
it, under the user's cache directory::

    $XDG_CACHE_HOME/cloudtrack/journal/<store>/      (~/.cache/… by default; ~/Library/Caches/…
        store.json                                     on macOS, %LOCALAPPDATA%\\cloudtrack\\Cache\\…
        <time ns>-<pid>-<random>-<run id>.json         on Windows)
        refused/…                                      entries the store refused for good

Directories are 0700, files 0600, each entry written whole (a temporary file renamed into
place).  An entry holds one run's data and names the store (its URI without secrets, and its
endpoint) — never a credential.  ``<store>`` is derived from the same two, so a journal is
replayed only into the store it was written for.

Replay (:meth:`Journal.replay`: the next process that logs to the store, or ``cloudtrack
flush``) writes the entries oldest first, each under an exclusive lock on its file, and removes
an entry only once its data is written.  That makes it exactly-once as readers see it: a replay
cut short after the write but before the removal writes the same points again, and points are
de-duplicated on read by (key, timestamp, step, value), params and tags are set to the same
values, the run's status likewise; two processes replaying at once never take the same entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

from cloudtrack.config.redaction import redact, redact_uri
from cloudtrack.tracking.flusher import REFUSED, STORE_WIDE, Pending

if TYPE_CHECKING:
    from cloudtrack.config import StoreConfig

try:
    import fcntl
except ImportError:  # Windows: entries are claimed by renaming them instead
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("cloudtrack.tracking")

FORMAT = "cloudtrack-journal"
VERSION = 1
STORE_FILE = "store.json"
REFUSED_DIR = "refused"
#: Settings that say which endpoint a URI reached (with the URI, a store's identity).
ENDPOINT_SETTINGS = ("endpoint_url", "emulator_host", "api_endpoint")


def journal_root(environ: Mapping[str, str] | None = None) -> Path:
    """``<user cache directory>/cloudtrack/journal``, as platformdirs would place it."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg) / "cloudtrack"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "cloudtrack"
    elif os.name == "nt":
        local = env.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        base = Path(local) / "cloudtrack" / "Cache"
    else:
        base = Path.home() / ".cache" / "cloudtrack"
    return base / "journal"


def store_identity(config: StoreConfig) -> dict[str, str | None]:
    """What names a store for the journal: its URI and endpoint, secrets removed."""
    endpoint = next((str(config.get(name)) for name in ENDPOINT_SETTINGS
                     if config.get(name) is not None), None)
    return {"store": config.display_uri.rstrip("/"),
            "endpoint": redact_uri(endpoint) if endpoint else None}


def store_folder(identity: Mapping[str, str | None]) -> str:
    """A folder name for the store: readable, and unique for its identity."""
    digest = hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", str(identity["store"])).strip("-.")[:60]
    return f"{readable}-{digest[:12]}"


def _private_dirs(path: Path, top: Path) -> None:
    """Create ``path`` and the folders between ``top``'s parent and it, each 0700."""
    todo = []
    p = path
    while True:
        todo.append(p)
        if p == top or p.parent == p:
            break
        p = p.parent
    for d in reversed(todo):
        d.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(OSError):  # not ours to change: leave it
            if d.stat().st_uid == os.getuid() and d.stat().st_mode & 0o077:
                d.chmod(0o700)


def _write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (0600), whole or not at all."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename durable too (POSIX)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[Path | None]:
    """The entry at ``path``, exclusively ours while the block runs; None when another
    process has it, or it is gone (replayed meanwhile)."""
    if fcntl is None:
        claim = path.with_name(path.name + f".claimed-{os.getpid()}")
        try:
            os.rename(path, claim)
        except OSError:
            yield None
            return
        try:
            yield claim
        finally:
            with contextlib.suppress(OSError):
                if claim.exists():
                    os.rename(claim, path)
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield None
            return
        try:
            current = os.stat(path)
        except FileNotFoundError:
            yield None
            return
        if current.st_ino != os.fstat(fd).st_ino:
            yield None
            return
        yield path
    finally:
        os.close(fd)


@dataclass
class ReplayReport:
    """What one replay of a store's journal did."""

    store: str
    folder: str
    written: int = 0
    values: int = 0
    runs: list[str] = field(default_factory=list)
    refused: int = 0
    left: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "journal": self.folder, "entries_written": self.written,
                "values_written": self.values, "runs": self.runs,
                "entries_refused": self.refused, "entries_left": self.left,
                "error": self.error}


class Journal:
    """The journal of one store.  ``write(run_id, pending)`` writes one entry's data into the
    store (held weakly when it is a bound method: the journal does not keep its store
    alive)."""

    def __init__(self, config: StoreConfig, write: Callable[[str, Pending], None],
                 root: Path | None = None) -> None:
        self.identity = store_identity(config)
        self.root = root if root is not None else journal_root(config.environ or None)
        self.folder = self.root / store_folder(self.identity)
        self._write: Callable[[], Callable[[str, Pending], None] | None] = (
            weakref.WeakMethod(write) if inspect.ismethod(write) else lambda: write)

    @property
    def uri(self) -> str:
        return str(self.identity["store"])

    # -- keeping -----------------------------------------------------------------------------

    def keep(self, leftover: dict[str, Pending], cause: str) -> str:
        """One entry per run of ``leftover``; returns the folder they are in."""
        _private_dirs(self.folder, self.root.parent)
        store_file = self.folder / STORE_FILE
        if not store_file.exists():
            _write_private(store_file, json.dumps(
                {"format": FORMAT, "version": VERSION, **self.identity}).encode())
        host = socket.gethostname()
        for run_id, pending in leftover.items():
            entry = {"format": FORMAT, "version": VERSION, **self.identity, "run_id": run_id,
                     "written": int(time.time() * 1000), "host": host, "pid": os.getpid(),
                     "cause": redact(cause), "data": pending.to_record()}
            name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{run_id}.json"
            _write_private(self.folder / name, json.dumps(entry).encode())
        return str(self.folder)

    # -- replaying ---------------------------------------------------------------------------

    def entries(self) -> list[Path]:
        """The entries waiting, oldest first."""
        try:
            names = [e.name for e in os.scandir(self.folder)
                     if e.is_file() and e.name.endswith(".json") and e.name != STORE_FILE
                     and not e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self.folder / n for n in sorted(names)]

    def replay(self) -> ReplayReport:
        """Write every entry into the store, oldest first; see the module docstring."""
        report = ReplayReport(self.uri, str(self.folder))
        entries = self.entries()
        write = self._write()
        if not entries or write is None:
            return report
        for path in entries:
            with _claimed(path) as claim:
                if claim is None:
                    continue  # another process is replaying it, or did
                try:
                    entry = json.loads(claim.read_bytes())
                    run_id = str(entry["run_id"])
                    pending = Pending.from_record(entry["data"])
                except (OSError, ValueError, KeyError, TypeError) as e:
                    report.left += 1
                    report.error = f"unreadable journal entry {claim}: {e}"
                    log.warning("cloudtrack: %s", report.error)
                    continue
                try:
                    write(run_id, pending)
                except Exception as e:
                    if isinstance(e, MlflowException) and e.error_code in REFUSED:
                        self._set_aside(claim, str(e))
                        report.refused += 1
                        continue
                    report.left += 1
                    report.error = " ".join(str(getattr(e, "brief", None) or e).split())
                    if isinstance(e, STORE_WIDE):
                        report.left += len(entries) - entries.index(path) - 1
                        break
                    continue
                claim.unlink()
                report.written += 1
                report.values += len(pending)
                if run_id not in report.runs:
                    report.runs.append(run_id)
        if report.written:
            log.info("cloudtrack: wrote %d values of %d run(s) kept in the journal %s to %s",
                     report.values, len(report.runs), self.folder, self.uri)
        if report.refused:
            log.error("cloudtrack: %s refused %d journal entries for good (their runs are "
                      "gone); they are kept in %s", self.uri, report.refused,
                      self.folder / REFUSED_DIR)
        return report

    def _set_aside(self, path: Path, why: str) -> None:
        aside = self.folder / REFUSED_DIR
        _private_dirs(aside, self.root.parent)
        entry = json.loads(path.read_bytes())
        entry["refused"] = redact(why)
        _write_private(aside / path.name, json.dumps(entry).encode())
        path.unlink()


def journaled_stores(root: Path | None = None) -> list[dict[str, str | None]]:
    """The identities of the stores that have a journal folder under ``root``."""
    base = root if root is not None else journal_root()
    out = []
    try:
        folders = sorted(p for p in base.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    for folder in folders:
        try:
            rec = json.loads((folder / STORE_FILE).read_bytes())
        except (OSError, ValueError):
            continue
        if rec.get("format") == FORMAT:
            out.append({"store": rec.get("store"), "endpoint": rec.get("endpoint")})
    return out
