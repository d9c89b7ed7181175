"""LocalBlobs: the blob interface on a local directory.

Writes go to a temporary file in the target's folder and are renamed into place, so readers
never see half an object.  Every write then takes an exclusive ``flock`` on the folder, checks
its condition (put-if-absent: no object has the name; put-if-version: the object is still at
that version) and renames while it holds the lock, so two conditional writers of one key cannot
both win.  (The lock is advisory: only cloudtrack's writers take it.)  Versions combine the
file's inode, size and a nanosecond mtime that every write sets explicitly, so a version is
never reused for a key.

Two local stores copy between them in the kernel (``copy_file_range``: a reflink on
copy-on-write filesystems, an in-kernel copy elsewhere), into a temporary file renamed into
place like any write — never a hard link: the link would share the source's inode, so
stamping the copy's version would change the source's, and an in-place write to either (as
MLflow's local artifact repository makes) would change both.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import BinaryIO

from cloudtrack.blobs.base import CHUNK_SIZE, BlobInfo, Blobs
from cloudtrack.config import StoreConfig
from cloudtrack.credentials.local import LocalCredentials
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
)
from cloudtrack.retry import RetryPolicy

_TMP_MARK = ".cloudtrack-tmp-"


def _writer_alive(name: str) -> bool:
    """Whether the process that wrote temporary file ``name`` still runs (names without a
    pid, from older versions, count as alive: nothing is removed on a guess)."""
    pid = name[len(_TMP_MARK):].split("-", 1)[0]
    if not pid.isdigit() or "-" not in name[len(_TMP_MARK):]:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


#: The folder a mounted ext2/3/4 volume has at its root, readable by root alone.
_LOST_AND_FOUND = "lost+found/"


def _version(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_ino:x}-{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> BlobInfo:
    return BlobInfo(key, st.st_size, _version(st),
                    datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=timezone.utc))


#: copy_file_range's ways of saying "not between these two files": across filesystems (before
#: Linux 5.3, and again for some since 5.19), unsupported by the filesystem or the kernel.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                             errno.ENOTSUP, errno.EBADF, errno.EPERM})


def copy_file(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy the rest of ``src`` into ``dst``: in the kernel where it can, else in chunks."""
    copy_range = getattr(os, "copy_file_range", None)  # Linux only
    if copy_range is not None:
        dst.flush()
        src_fd, dst_fd = src.fileno(), dst.fileno()
        left = os.fstat(src_fd).st_size - os.lseek(src_fd, 0, os.SEEK_CUR)
        while left > 0:
            try:
                n = copy_range(src_fd, dst_fd, min(left, 1 << 30))
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                break
            if n == 0:
                break  # some filesystems report an early end: the chunked copy finishes
            left -= n
        # The kernel moved both offsets; the buffered objects must read and write from there.
        src.seek(os.lseek(src_fd, 0, os.SEEK_CUR))
        dst.seek(os.lseek(dst_fd, 0, os.SEEK_CUR))
    shutil.copyfileobj(src, dst, CHUNK_SIZE)


class LocalBlobs(Blobs):
    backend = "file"
    credentials: LocalCredentials

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(config, retry=retry)
        self.credentials = LocalCredentials(config)

    @property
    def root(self) -> str:
        return self.config.container

    def _path(self, key: str) -> str:
        path = os.path.normpath(os.path.join(self.root, *key.split("/")))
        # validate_key already refuses '..' and absolute keys; this is the belt to its braces.
        if os.path.commonpath([self.root, path]) != self.root:
            raise BlobError(f"key {key!r} resolves outside the store root {self.root}", self.uri)
        return path

    def _translate(self, e: OSError, key: str) -> BlobError:
        uri = self.object_uri(key)
        if e.errno == errno.ENOENT:
            if not os.path.isdir(self.root):
                return ContainerNotFound(
                    f"store directory {self.root} does not exist; create it or check the URI",
                    self.uri)
            return BlobNotFound(f"no object {uri}", uri)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(f"permission denied on {uri}: {e.strerror}; check the "
                                    f"directory's owner and mode", uri)
        if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                return self._root_not_a_folder()
            return BlobError(f"{uri}: a file and a folder of the same name clash "
                             f"({e.strerror}); the local store cannot hold both 'a' and 'a/b'",
                             uri)
        return BlobError(f"{uri}: {e.strerror or e}", uri)

    @contextlib.contextmanager
    def _locked(self, folder: str) -> Iterator[None]:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _root_not_a_folder(self) -> BlobError:
        return BlobError(f"{self.uri.rstrip('/')} is a file, not a store directory: a local "
                         "store is a directory; check the path", self.uri)

    def _check_root(self) -> None:
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise self._root_not_a_folder()
        if not os.path.isdir(self.root):
            raise ContainerNotFound(
                f"store directory {self.root} does not exist; create it or check the URI",
                self.uri)

    def _write_tmp(self, folder: str, fill: bytes | str | BinaryIO) -> str:
        """A new temporary file in ``folder`` holding ``fill``: bytes, the file at a path, or
        an open file (from its current offset)."""
        # The writer's pid in the name lets remove_leftovers() tell a killed writer's file
        # from one being written now.
        tmp = os.path.join(folder, f"{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            if isinstance(fill, bytes):
                f.write(fill)
            elif isinstance(fill, str):
                with open(fill, "rb") as src:
                    copy_file(src, f)
            else:
                copy_file(fill, f)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _write_tmp_into(self, folder: str, fill: bytes | str | BinaryIO) -> str:
        """:meth:`_write_tmp`, creating ``folder`` first — again if a concurrent delete pruned
        it in between (deletes remove the folders they empty; once the temporary file is in
        it, the folder is no longer empty and stays)."""
        for attempt in range(5):
            os.makedirs(folder, exist_ok=True)
            try:
                return self._write_tmp(folder, fill)
            except FileNotFoundError:
                # Only the folder gone (nothing of ``fill`` was read yet: the temporary file
                # is opened first) is retried; a missing source file is the caller's error.
                if attempt == 4 or os.path.isdir(folder):
                    raise
        raise AssertionError("unreachable")

    def _stamp(self, tmp: str, previous: os.stat_result | None) -> None:
        now = time.time_ns()
        if previous is not None and now <= previous.st_mtime_ns:
            now = previous.st_mtime_ns + 1
        os.utime(tmp, ns=(now, now))

    def _write(self, key: str, fill: bytes | str | BinaryIO, *, if_absent: bool,
               if_version: str | None) -> str:
        self._check_root()
        path = self._path(key)
        folder = os.path.dirname(path)
        tmp = None
        try:
            tmp = self._write_tmp_into(folder, fill)
            with self._locked(folder):
                try:
                    previous: os.stat_result | None = os.stat(path)
                except FileNotFoundError:
                    previous = None
                if previous is not None and os.path.isdir(path):
                    raise OSError(errno.EISDIR, "is a folder")
                if if_absent and previous is not None:
                    raise AlreadyExists(f"{self.object_uri(key)} already exists",
                                        self.object_uri(key))
                if if_version is not None and (previous is None or _version(previous) != if_version):
                    raise PreconditionFailed(
                        f"{self.object_uri(key)} changed since version {if_version} was read",
                        self.object_uri(key))
                self._stamp(tmp, previous)
                os.replace(tmp, path)
                tmp = None
                return _version(os.stat(path))
        except BlobError:
            raise
        except OSError as e:
            raise self._translate(e, key) from e
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # -- primitives -----------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), _version(st)
        except IsADirectoryError:
            raise BlobNotFound(f"no object {self.object_uri(key)} (it is a folder)",
                               self.object_uri(key)) from None
        except OSError as e:
            raise self._translate(e, key) from e

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str:
        return self._write(key, bytes(data), if_absent=if_absent, if_version=if_version)

    def _walk(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object under ``prefix``, unordered.  One ``scandir`` per folder and one
        ``stat`` per file (``os.walk`` then ``os.stat`` by path cost about twice as much: a
        10,000-run experiment's heads listed in 85-240 ms against 40-80 ms).  Folders that
        vanish while walked are skipped; a folder that cannot be read raises (an unreadable
        store is not an empty one), but for ``lost+found`` at the root of a store that is a
        mounted volume.  Linked folders are not walked into, as with ``os.walk``."""
        self._check_root()
        # Start at the deepest folder the prefix fully names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        todo = [(self._path(base) if base else self.root, base + "/" if base else "")]
        while todo:
            folder, rel = todo.pop()
            try:
                entries = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue  # not there, or removed while we walked
            except PermissionError:
                if rel != _LOST_AND_FOUND:
                    raise
                continue  # a mounted volume's, root's alone: no folder of the store's
            with entries:
                for entry in entries:
                    key = rel + entry.name
                    try:
                        is_folder = entry.is_dir()
                    except OSError:
                        is_folder = False
                    if is_folder:
                        folder_key = key + "/"
                        if not entry.is_symlink() and (folder_key.startswith(prefix)
                                                       or prefix.startswith(folder_key)):
                            todo.append((entry.path, folder_key))
                        continue
                    if not key.startswith(prefix) or entry.name.startswith(_TMP_MARK) \
                            or entry.name.endswith(".cloudtrack-part"):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue  # deleted while we walked (or a dangling link)
                    yield _info(key, st)

    def remove_leftovers(self, prefix: str) -> int:
        """Remove the temporary files under ``prefix`` that writers killed mid-write left
        (their process is gone); files of live writers stay.  Returns how many went.

        Listings never show them, but MLflow's local artifact repository walks the folders
        itself and would."""
        removed = 0
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        for dirpath, _dirs, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(_TMP_MARK) and not _writer_alive(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        try:
            items = sorted(self._walk(prefix), key=lambda i: i.key.encode("utf-8"))
        except BlobError:
            raise
        except OSError as e:
            raise self._translate(e, prefix) from e
        return items, None

    def _list_dir(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
        self._check_root()
        folder = self._path(prefix.rstrip("/")) if prefix else self.root
        files: list[BlobInfo] = []
        dirs: list[str] = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name.encode("utf-8"))
        except FileNotFoundError:
            return [], []
        except OSError as e:
            raise self._translate(e, prefix) from e
        for entry in entries:
            if entry.name.startswith(_TMP_MARK) or entry.name.endswith(".cloudtrack-part"):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            else:
                files.append(_info(prefix + entry.name, entry.stat()))
        return files, dirs

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        except OSError as e:
            raise self._translate(e, key) from e
        # Prune folders the delete emptied, up to the root, so listings stay cheap.
        folder = os.path.dirname(path)
        while folder != self.root and os.path.commonpath([self.root, folder]) == self.root:
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)

    def prune_empty_folders(self, prefixes: list[str]) -> None:
        """Remove each folder ``prefixes`` name, in order, that is empty; the others (and
        anything missing) stay.  For folders a program other than this class emptied: MLflow's
        local artifact repository removes a run's artifacts and their folder, not the run's
        (deletes through this class prune what they empty themselves)."""
        for prefix in prefixes:
            with contextlib.suppress(OSError):
                os.rmdir(self._path(prefix.rstrip("/")))

    def _stat(self, key: str) -> BlobInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as e:
            raise self._translate(e, key) from e
        if os.path.isdir(path):
            raise BlobNotFound(f"no object {self.object_uri(key)} (it is a folder)",
                               self.object_uri(key))
        return _info(key, st)

    def _upload_file(self, key: str, path: str) -> str:
        return self._write(key, path, if_absent=False, if_version=None)

    def _download_file(self, key: str, path: str) -> int:
        src = self._path(key)
        try:
            with open(src, "rb") as f, open(path, "wb") as out:
                # Writes replace the file whole (rename), so the open one keeps its size.
                size = os.fstat(f.fileno()).st_size
                copy_file(f, out)
        except OSError as e:
            if e.filename == path:
                raise
            raise self._translate(e, key) from e
        return size

    def _create_container(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise self._translate(e, "") from e

    # -- copies -----------------------------------------------------------------------------

    def _same_account(self, other: Blobs) -> bool:
        return True  # any two folders of this machine: the kernel copies between them

    def _copy_from(self, source: Blobs, info: BlobInfo, key: str) -> str:
        assert isinstance(source, LocalBlobs)
        # Opened here, so that a source gone since its HEAD is reported on the source.
        try:
            src = open(source._path(info.key), "rb")
        except IsADirectoryError:
            raise BlobNotFound(f"no object {source.object_uri(info.key)} (it is a folder)",
                               source.object_uri(info.key)) from None
        except OSError as e:
            raise source._translate(e, info.key) from e
        with src:
            return self._write(key, src, if_absent=False, if_version=None)
