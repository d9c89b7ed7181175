"""Records a search read, kept on local disk for the next process, by version.

A new process starts with an empty :class:`~cloudtrack.store.cache.VersionedCache`, so its
first search of an experiment reads every run head again (from the head pages: about one GET
per thousand runs, one round trip). The MLflow server's answer to that is its database; ours
is this cache: a SQLite file per store in the user's cache directory holding the records a
search read, each with the version it was read at. A search still lists the heads (the
listing is the truth: what exists, at which version) and takes from the file only what the
listing vouches for, exactly as the in-memory cache does, so a stale or damaged file costs
requests, never correctness; a record read at another version is simply read again.

An experiment's heads are kept as one *pack* (every head a process's first search of it
listed, decoded in one call: about half the time of as many rows) and, until a search finds
the pack more than :data:`PACK_STALE` behind what it lists, the heads read since as rows
beside it.  A local store keeps packs only (its heads are one ``open`` away, but decoding
its pages' JSON costs twice a pack's decoding), and only of experiments of at least
:data:`PACK_MIN` runs.

The file holds what the store holds (params, tags, metrics of runs) and is private to the
user (0600 in a 0700 folder, like the journal's). Every failure of the file (locked by
another process, full disk, corrupt) only turns it off for this process: it saves requests
and is never needed. ``CLOUDTRACK_READ_CACHE=off`` turns it off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from cloudtrack.config import StoreConfig
from cloudtrack.config.common import truthy
from cloudtrack.config.variables import CLOUDTRACK_READ_CACHE
from cloudtrack.environment import snapshot
from cloudtrack.store.cache import VersionedCache
from cloudtrack.store.local import cache_root, private_dirs, store_folder, store_identity
from cloudtrack.store.records import Record

log = logging.getLogger("cloudtrack.store")

#: The file is rebuilt from nothing past this size (a cache, not an archive).
MAX_BYTES = 512 * 1024 * 1024
#: Seconds a process waits for another one's write to the file before skipping its own.
BUSY_TIMEOUT = 2.0
_SCHEMA = ("CREATE TABLE IF NOT EXISTS records "
           "(key TEXT PRIMARY KEY, version TEXT NOT NULL, body BLOB NOT NULL) WITHOUT ROWID",
           "CREATE TABLE IF NOT EXISTS packs "
           "(prefix TEXT PRIMARY KEY, keys BLOB NOT NULL, body BLOB NOT NULL) WITHOUT ROWID")
#: Fewest records under a prefix that a search keeps as a pack (:meth:`ReadCache.save_pack`).
PACK_MIN = 100
#: A pack is written again when more than this share of what a search listed under its
#: prefix did not come from it (rows saved since, or records read from the store).
PACK_STALE = 0.1
_END = "\U0010ffff"


class Loaded(NamedTuple):
    """What :meth:`ReadCache.load` read of the file under a prefix."""
    #: key -> (version, record): the pack's, then the rows' over them.
    entries: dict[str, tuple[str, Record]]
    #: How many came from the pack, and from rows.
    packed: int
    rows: int


def enabled(config: StoreConfig, environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    raw = env.get(CLOUDTRACK_READ_CACHE.name)
    on = truthy(raw, CLOUDTRACK_READ_CACHE.name) if raw else True
    return on


class ReadCache:
    """One store's file of records by version (see the module's docstring)."""

    def __init__(self, path: Path | None, rows: bool = True) -> None:
        #: None: off (disabled, or turned off by a failure).
        self.path = path
        #: False: packs only (a local store: :meth:`save` keeps nothing).
        self.rows = rows
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child (cloudtrack.forks): off.  SQLite is not usable across a fork
        while another thread of the parent was inside it (a child of a parent saving to the
        file hung in ``sqlite3.connect``); workers forked for a sweep log, they rarely
        search."""
        self._lock = threading.Lock()
        self.path = None

    @classmethod
    def for_store(cls, config: StoreConfig) -> ReadCache:
        # Where the cache lives, and whether at all, is the process's (its variables), unless
        # the configuration was resolved from an environment of its own that says otherwise.
        env = {**snapshot(), **(config.environ or {})}
        if not enabled(config, env):
            return cls(None)
        return cls(cache_root(env) / "reads" / f"{store_folder(store_identity(config))}.sqlite",
                   rows=config.backend != "file")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection | None]:
        db = self._open()
        if db is None:
            yield None
            return
        try:
            yield db
        except (OSError, sqlite3.Error) as e:
            self._off(e)
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection | None:
        """The file, opened (made when missing, made again when too large or not a database:
        it is only a cache); None when it is off."""
        path = self.path
        if path is None:
            return None
        try:
            if path.exists() and path.stat().st_size > MAX_BYTES:
                path.unlink()
            for _ in range(2):
                if not path.exists():
                    private_dirs(path.parent, path.parent.parent)
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
                db = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
                try:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    return db
                except sqlite3.Error as e:
                    db.close()
                    if type(e) is not sqlite3.DatabaseError:  # locked, full: not damaged
                        raise
                    log.warning("the read cache %s is damaged (%s): starting it again", path, e)
                    path.unlink()
        except (OSError, sqlite3.Error) as e:
            self._off(e)
        return None

    def _off(self, error: BaseException) -> None:
        log.debug("the read cache %s is off for this process: %r", self.path, error)
        self.path = None

    def holds(self, prefix: str) -> bool:
        """Whether the file holds any record under ``prefix`` (then a search expects to find
        most of them there and lists nothing else up front)."""
        if self.path is None or not self.path.exists():
            return False
        with self._db() as db:
            return db is not None and (
                db.execute("SELECT 1 FROM packs WHERE prefix = ?", (prefix,)).fetchone()
                is not None or db.execute(
                    "SELECT 1 FROM records WHERE key >= ? AND key < ? LIMIT 1",
                    (prefix, prefix + _END)).fetchone() is not None)
        return False  # the file failed: _db turned the cache off and swallowed the error

    def keys(self, prefix: str) -> list[str]:
        """The keys the file holds under ``prefix``, sorted (what a search listed last time,
        from which it splits its next listing into ranges)."""
        if self.path is None or not self.path.exists():
            return []
        with self._db() as db:
            if db is None:
                return []
            found = {k for (k,) in db.execute(
                "SELECT key FROM records WHERE key >= ? AND key < ?", (prefix, prefix + _END))}
            row = db.execute("SELECT keys FROM packs WHERE prefix = ?", (prefix,)).fetchone()
            if row is not None:
                with contextlib.suppress(zlib.error, UnicodeDecodeError, TypeError):
                    found.update(zlib.decompress(row[0]).decode().split("\n"))
            found.discard("")
            return sorted(found)
        return []  # the file failed: _db turned the cache off and swallowed the error

    def load(self, prefix: str) -> Loaded:
        """Every record the file holds under ``prefix``, decoded, whatever the store holds
        now: what :meth:`fill` then takes from instead of the file.  The prefix's pack first,
        then its rows over it (a row is saved after the pack it is not in).

        A process's first search of an experiment calls this while the heads are listed (in
        a thread: SQLite gives up the interpreter lock while it reads), so decoding the
        file's records no longer waits for the listing."""
        nothing = Loaded({}, 0, 0)
        if self.path is None or not self.path.exists():
            return nothing
        found: dict[str, tuple[str, Record]] = {}
        with self._db() as db:
            if db is None:
                return nothing
            row = db.execute("SELECT body FROM packs WHERE prefix = ?", (prefix,)).fetchone()
            packed = _pack(row[0]) if row is not None else None
            if packed is not None:
                found.update(packed)
            rows = 0
            for key, version, body in db.execute(
                    "SELECT key, version, body FROM records WHERE key >= ? AND key < ?",
                    (prefix, prefix + _END)):
                rec = _record(body)
                if rec is not None:  # else read again from the store, and written over
                    found[key] = (version, rec)
                    rows += 1
            return Loaded(found, len(packed or ()), rows)
        return nothing  # the file failed: _db turned the cache off and swallowed the error

    def fill(self, cache: VersionedCache, listing: Iterable[tuple[str, str]],
             loaded: Loaded | None = None) -> int:
        """Put into ``cache`` the listed records the file holds at their listed version;
        return how many.  ``loaded``: what :meth:`load` read of the file beforehand, taken
        instead of reading the file again."""
        listing = list(listing)
        missing = set(cache.missing(listing))
        todo = {key: version for key, version in listing if key in missing}
        if not todo or self.path is None:
            return 0
        found: dict[str, tuple[str, Record]] = {}
        if loaded is not None:
            for key, version in todo.items():
                hit = loaded.entries.get(key)
                if hit is not None and hit[0] == version:
                    found[key] = hit
            cache.merge(found)
            return len(found)
        with self._db() as db:
            if db is None:
                return 0
            keys = list(todo)
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = db.execute(
                    f"SELECT key, version, body FROM records WHERE key IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, version, body in rows:
                    if todo.get(key) != version:
                        continue
                    rec = _record(body)
                    if rec is not None:  # else read again from the store, and written over
                        found[key] = (version, rec)
        cache.merge(found)
        return len(found)

    def save(self, entries: Mapping[str, tuple[str, Record]]) -> None:
        """Keep ``entries`` (key -> (version, record)) for the next process (rows: not for a
        local store, whose heads are one ``open`` away)."""
        if not entries or self.path is None or not self.rows:
            return
        rows = []
        for key, (version, rec) in entries.items():
            try:
                rows.append((key, version, _body(rec)))
            except ValueError:  # not plain data (marshal refuses it): read again next time
                continue
        with self._lock, self._db() as db:
            if db is None:
                return
            with db:  # one transaction: committed, or rolled back on any error
                db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", rows)

    def save_pack(self, prefix: str, entries: Mapping[str, tuple[str, Record]]) -> None:
        """Keep ``entries``, every record a search read under ``prefix``, as the prefix's
        pack, in place of its rows: one body, decoded in one call (2,000 run heads in about
        half the time their rows take)."""
        if self.path is None:
            return
        plain = dict(entries)
        try:
            body = _body(plain)
        except ValueError:  # a record that is not plain data: left out, read again next time
            plain = {key: hit for key, hit in plain.items() if _plain(hit[1])}
            body = _body(plain)
        keys = zlib.compress("\n".join(sorted(plain)).encode(), 1)
        with self._lock, self._db() as db:
            if db is None:
                return
            with db:  # one transaction: committed, or rolled back on any error
                db.execute("DELETE FROM records WHERE key >= ? AND key < ?",
                           (prefix, prefix + _END))
                db.execute("INSERT OR REPLACE INTO packs VALUES (?, ?, ?)", (prefix, keys, body))


#: A row's body: this tag, the CRC-32 of the rest (4 bytes, big-endian), then the record in
#: marshal's format 4, zlib-compressed.  Marshal because the read cache exists to make a search
#: cheap: decoding a 2,000-run experiment's heads took 25 ms from marshal against 54 ms from
#: JSON (and zlib 15-20 ms on top of either).  Compressed, because SQLite moves a row of a
#: WITHOUT ROWID table longer than about 1 KB to an overflow page of its own (4 KB).  The CRC
#: is checked before marshal reads anything: marshal is not meant for damaged bytes, and the
#: file, private to its user like the journal, may still be damaged on disk.
_MARSHAL = b"M4"
_MARSHAL_VERSION = 4


def _body(value: Any) -> bytes:
    """A row's (or a pack's) body for ``value``; ValueError when it is not plain data."""
    data = zlib.compress(marshal.dumps(value, _MARSHAL_VERSION), 1)
    return _MARSHAL + zlib.crc32(data).to_bytes(4, "big") + data


def _unmarshalled(body: bytes) -> object | None:
    """What a body in the marshal format holds; None when its CRC fails (raises what zlib
    or marshal raise on bytes they cannot read)."""
    data = body[6:]
    if zlib.crc32(data).to_bytes(4, "big") != body[2:6]:
        return None
    return marshal.loads(zlib.decompress(data))


def _record(body: object) -> Record | None:
    """The record a row holds; None when the row is damaged or in no format known here.

    Rows written before the marshal format hold JSON, zlib-compressed (or, before that, as it
    is); they still serve."""
    try:
        if isinstance(body, bytes) and body[:2] == _MARSHAL:
            rec = _unmarshalled(body)
        elif isinstance(body, (bytes, str)):
            rec = json.loads(_expanded(body))
        else:
            return None
    except (ValueError, TypeError, EOFError, zlib.error):
        return None
    return rec if isinstance(rec, dict) else None


def _plain(rec: Record) -> bool:
    try:
        marshal.dumps(rec, _MARSHAL_VERSION)
    except ValueError:
        return False
    return True


def _pack(body: object) -> dict[str, tuple[str, Record]] | None:
    """A pack's records (key -> (version, record)); None when the pack is damaged."""
    if not isinstance(body, bytes) or body[:2] != _MARSHAL:
        return None
    try:
        found = _unmarshalled(body)
    except (ValueError, TypeError, EOFError, zlib.error):
        return None
    if not isinstance(found, dict):
        return None
    return {key: (hit[0], hit[1]) for key, hit in found.items()
            if isinstance(key, str) and isinstance(hit, tuple) and len(hit) == 2
            and isinstance(hit[0], str) and isinstance(hit[1], dict)}


def _expanded(body: bytes | str) -> bytes | str:
    """A row's record as JSON: bodies are kept zlib-compressed (a head of about 2.5 KB takes
    about a fifth of that); a row written before that holds the JSON itself."""
    if isinstance(body, bytes) and body[:1] != b"{":
        return zlib.decompress(body)
    return body
