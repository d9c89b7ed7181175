"""The local journal: buffered data that could not be written to the store at exit.

In the default (buffered) mode a process that exits while its store is unreachable (or its
credentials expired, or retries ran out) keeps what it could not write here instead of losing
it, under the user's cache directory::

    $XDG_CACHE_HOME/cloudtrack/journal/<store>/      (~/.cache/… by default; ~/Library/Caches/…
        store.json                                     on macOS, %LOCALAPPDATA%\\cloudtrack\\Cache\\…
        <time ns>-<pid>-<random>-<run id>.json         on Windows)
        refused/…                                      entries the store refused for good

Directories are 0700, files 0600, each entry written whole (a temporary file renamed into
place).  An entry holds one run's data and names the store (its URI without secrets — a local
store by its absolute path — and its endpoint), never a credential.  ``<store>`` is derived
from the same two, and each entry is checked against the store before it is written: a journal
is replayed only into the store it was written for.

Entries of a newer journal version are left alone (a newer cloudtrack writes them); an entry
that cannot be read, or that the store refuses for good (its run no longer exists), is set
aside in ``refused/`` with an ERROR line, so that it never blocks the others.

Replay (:meth:`Journal.replay`: the next process that logs to the store, or ``cloudtrack
flush``) writes the entries oldest first, each under an exclusive lock on its file, and removes
an entry only once its data is written.  That makes it exactly-once as readers see it: a replay
cut short after the write but before the removal writes the same points again, and points are
de-duplicated on read by (key, timestamp, step, value), params and tags are set to the same
values, the run's status likewise; two processes replaying at once never take the same entry.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import socket
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

from cloudtrack.config.redaction import redact, redact_uri
from cloudtrack.store.local import cache_root, private_dirs, store_folder, store_identity
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
def journal_root(environ: Mapping[str, str] | None = None) -> Path:
    """``<user cache directory>/cloudtrack/journal``."""
    return cache_root(environ) / "journal"


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


#: The journal folders a warning was given for in this process.
_SAID: set[str] = set()


class Journal:
    """The journal of one store.  ``write(run_id, pending)`` writes one entry's data into the
    store (held weakly when it is a bound method: the journal does not keep its store
    alive)."""

    def __init__(self, config: StoreConfig, write: Callable[[str, Pending], None],
                 root: Path | None = None, *, written_through: str | None = None) -> None:
        """``written_through``: replay the entries this store's processes kept while they
        reached it through that endpoint instead of the one ``config`` names (``cloudtrack
        flush --from-endpoint``: a person's word that both serve the same store)."""
        self.identity = store_identity(config)
        #: The identity the entries replayed here were written for.
        self.written_for = (self.identity if written_through is None else
                            {**self.identity, "endpoint": redact_uri(written_through)})
        self.root = root if root is not None else journal_root(config.environ or None)
        self.folder = self.root / store_folder(self.written_for)
        self._write: Callable[[], Callable[[str, Pending], None] | None] = (
            weakref.WeakMethod(write) if inspect.ismethod(write) else lambda: write)

    @property
    def uri(self) -> str:
        return str(self.identity["store"])

    # -- keeping -----------------------------------------------------------------------------

    def keep(self, leftover: dict[str, Pending], cause: str) -> str:
        """One entry per run of ``leftover``; returns the folder they are in."""
        private_dirs(self.folder, self.root.parent)
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
        return _entries(self.folder)

    def replay(self, stop: Callable[[], bool] | None = None) -> ReplayReport:
        """Write every entry into the store, oldest first, until ``stop()`` is true; see the
        module docstring."""
        report = ReplayReport(self.uri, str(self.folder))
        entries = self.entries()
        write = self._write()
        if not entries or write is None:
            return report
        for n, path in enumerate(entries):
            if stop is not None and stop():
                report.left += len(entries) - n
                break
            with _claimed(path) as claim:
                if claim is None:
                    continue  # another process is replaying it, or did
                entry = self._read(claim, report)
                if entry is None:
                    continue
                run_id, pending = entry
                try:
                    write(run_id, pending)
                except Exception as e:
                    if isinstance(e, MlflowException) and e.error_code in REFUSED:
                        self._set_aside(claim, f"{self.uri} refused it: {_one_line(e)}")
                        report.refused += 1
                        continue
                    report.left += 1
                    report.error = _one_line(e)
                    if isinstance(e, STORE_WIDE):
                        report.left += len(entries) - n - 1
                        break
                    continue
                with contextlib.suppress(FileNotFoundError):
                    claim.unlink()
                report.written += 1
                report.values += len(pending)
                if run_id not in report.runs:
                    report.runs.append(run_id)
        if report.written:
            log.info("cloudtrack: wrote %d values of %d run(s) kept in the journal %s to %s",
                     report.values, len(report.runs), self.folder, self.uri)
        if report.left and report.error:
            log.warning("cloudtrack: %d entries of the journal %s are not written to %s yet "
                        "(%s); they are kept for the next try", report.left, self.folder,
                        self.uri, report.error)
        return report

    def elsewhere(self) -> list[dict[str, Any]]:
        """The journals of this store kept while it was reached through another endpoint,
        with entries waiting: replay leaves them alone (the same bucket name at another
        endpoint may be another store)."""
        return [j for j in journaled_stores(self.root)
                if j["store"] == self.identity["store"] and j["entries"]
                and j["endpoint"] != self.written_for["endpoint"]]

    def say_elsewhere(self) -> None:
        """One WARNING per such journal, once a process: what waits, and how to write it."""
        for j in self.elsewhere():
            if j["folder"] in _SAID:
                continue
            _SAID.add(j["folder"])
            log.warning("cloudtrack: %d journal entries of %s wait in %s: they were kept while "
                        "the store was reached at %s, and are written only through that "
                        "endpoint; reach it there again, or if %s now serves the same store, "
                        "run: cloudtrack flush %s --from-endpoint %s", j["entries"],
                        self.uri, j["folder"], j["endpoint"], self.identity["endpoint"],
                        self.uri, j["endpoint"])


    def _read(self, path: Path, report: ReplayReport) -> tuple[str, Pending] | None:
        """The run id and data of the entry at ``path``, if it is one for this store that this
        version reads; else None, with the entry left (a newer version, another store) or set
        aside (unreadable)."""
        try:
            entry = json.loads(path.read_bytes())
            if not isinstance(entry, dict) or entry.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} entry")
            version = entry.get("version")
            if not isinstance(version, int) or version < 1:
                raise ValueError(f"no journal version ({version!r})")
        except (OSError, ValueError) as e:
            self._set_aside(path, f"unreadable: {e}", raw=True)
            report.refused += 1
            return None
        if version > VERSION:
            report.left += 1
            report.error = (f"{path.name} is of journal version {version}, written by a newer "
                            f"cloudtrack (this one reads up to {VERSION}): write it with that "
                            "version's `cloudtrack flush`")
            log.warning("cloudtrack: %s", report.error)
            return None
        written_for = {"store": entry.get("store"), "endpoint": entry.get("endpoint")}
        if written_for != self.written_for:
            report.left += 1
            report.error = (f"{path} was written for {written_for['store']} (endpoint "
                            f"{written_for['endpoint']}), not for {self.uri} (endpoint "
                            f"{self.identity['endpoint']}): left where it is")
            log.warning("cloudtrack: %s", report.error)
            return None
        try:
            return str(entry["run_id"]), Pending.from_record(entry["data"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self._set_aside(path, f"unreadable: {type(e).__name__}: {e}", raw=True)
            report.refused += 1
            return None

    def _set_aside(self, path: Path, why: str, *, raw: bool = False) -> None:
        """Move the entry to ``refused/`` (its reason inside it, or beside it when it cannot be
        read), with an ERROR line: it is never tried again, nor lost."""
        aside = self.folder / REFUSED_DIR
        try:
            private_dirs(aside, self.root.parent)
            if raw:
                _write_private(aside / (path.name + ".reason.txt"), redact(why).encode())
                os.replace(path, aside / path.name)
            else:
                entry = json.loads(path.read_bytes())
                entry["refused"] = redact(why)
                _write_private(aside / path.name, json.dumps(entry).encode())
                path.unlink()
        except OSError as e:
            log.error("cloudtrack: could not set aside the journal entry %s (%s): %s", path,
                      why, e)
            return
        log.error("cloudtrack: the journal entry %s is set aside in %s and will not be "
                  "written: %s", path.name, aside, redact(why))


def _one_line(error: BaseException) -> str:
    return " ".join(str(getattr(error, "brief", None) or error).split())


def journaled_stores(root: Path | None = None) -> list[dict[str, Any]]:
    """The stores that have a journal folder under ``root``: their identity (``store``,
    ``endpoint``), ``folder``, and how many ``entries`` wait in it and are ``refused``."""
    base = root if root is not None else journal_root()
    out: list[dict[str, Any]] = []
    try:
        folders = sorted(p for p in base.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for folder in folders:
        try:
            rec = json.loads((folder / STORE_FILE).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            continue
        out.append({"store": rec.get("store"), "endpoint": rec.get("endpoint"),
                    "folder": str(folder), "entries": len(_entries(folder)),
                    "refused": len(_entries(folder / REFUSED_DIR))})
    return out


def _entries(folder: Path) -> list[Path]:
    """The entries in ``folder``, oldest first (their names start with the time)."""
    try:
        names = [e.name for e in os.scandir(folder)
                 if e.is_file() and e.name.endswith(".json") and e.name != STORE_FILE
                 and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in sorted(names)]
