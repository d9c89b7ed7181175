"""A sqlite source's metric rows, fetched by a process of its own.

Python's ``sqlite3`` gives up the interpreter lock around every row it steps through.  A
migration reads a run's 500 points while its writer threads (dozens, waiting on the network)
take the lock in between, so each row waited for it: reading the histories of 1,000 runs took
2.4 s alone and 26 s inside a migration into s3, the whole migration's critical path.  This
child process does the stepping; the migration receives each answer as one pickled list,
which it loads holding the lock once.

The child runs this file as a script (``python -I sqlite_reader.py DATABASE``): only the
standard library, no MLflow to import, ready in a few tens of milliseconds.  Requests and
answers are length-prefixed pickles on its stdin and stdout; it ends at the end of its
stdin, so it never outlives the migration.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

_LENGTH = struct.Struct("<Q")


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the sqlite reader's stream ended")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the sqlite reader's answer was cut short")
    return pickle.loads(data)


class ReaderError(Exception):
    """The reader process failed or answered an error; the caller reads in-process instead."""


class SqliteReader:
    """Runs SELECTs on one sqlite file in a child process, one at a time."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", __file__, database],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (qmark placeholders) with ``params``."""
        with self._lock:
            process = self._process
            if process is None:
                raise ReaderError("the sqlite reader is closed")
            try:
                assert process.stdin is not None and process.stdout is not None
                _send(process.stdin, (sql, list(params)))
                status, answer = _receive(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                self._stop()
                raise ReaderError(f"the sqlite reader of {self.database} stopped: {e}") from e
        if status != "ok":
            raise ReaderError(f"the sqlite reader of {self.database}: {answer}")
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _serve(database: str) -> None:
    import sqlite3

    connection = sqlite3.connect(database, timeout=60, check_same_thread=False)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            sql, params = _receive(stdin)
        except EOFError:
            return
        try:
            answer: tuple[str, Any] = ("ok", connection.execute(sql, params).fetchall())
            connection.commit()  # end the read transaction: the next query sees new rows
        except Exception as e:  # sent back: the caller reads in-process
            answer = ("error", f"{type(e).__name__}: {e}")
        _send(stdout, answer)


if __name__ == "__main__":
    _serve(sys.argv[1])
