"""A real freedesktop Secret Service (gnome-keyring) on a private D-Bus, for keyring tests.

:class:`SecretService` starts two processes, each in its own process group, under one temporary
directory that :meth:`SecretService.stop` removes:

* ``dbus-daemon --nofork`` with a bus configuration of our own, listening on
  ``unix:path=<tmp>/run/bus``;
* ``gnome-keyring-daemon --foreground --components=secrets --unlock`` with ``HOME`` and
  ``XDG_*`` in the temporary directory and a random password on stdin, so it creates a "login"
  collection (the ``default`` alias) and unlocks it.  The user's real keyring is never read or
  written: the daemon's files live in ``<tmp>/data/keyrings``.

Why not ``dbus-daemon --session``: the session configuration activates services on demand from
``/usr/share/dbus-1/services``.  A client asking before our daemon owns
``org.freedesktop.secrets`` would get a second gnome-keyring started behind our back, and a
locked collection would make gnome-keyring activate ``gcr-prompter``, which on a desktop
(``DISPLAY`` set) opens a password window and the test waits for a person.  Our bus has no
service directory: nothing is activated, and unlocking through a prompt fails at once.

What a client needs is :attr:`SecretService.env`.  Against a locked collection (:meth:`lock`),
``keyring.get_password`` / ``set_password`` / ``delete_password`` raise
``keyring.errors.KeyringLocked("Failed to unlock the collection!")`` at once (measured
0.006-0.07 s a call with :attr:`~SecretService.env`, 0.3-0.4 s for a process's first call when
keyring also detects its backend): the SecretService backend asks to unlock, gnome-keyring
cannot create its system prompt (``org.gnome.keyring.SystemPrompter`` is not provided by any
.service file), reports the prompt dismissed, and the collection stays locked.
:meth:`unlock` uses gnome-keyring's own ``UnlockWithMasterPassword`` call, which needs no
prompt.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from backends._common import ManagedProcess

#: The bus name of the Secret Service API, and the object that implements it.
BUS_NAME = "org.freedesktop.secrets"
SERVICE_PATH = "/org/freedesktop/secrets"

#: gnome-keyring's private interface, with the one unlock that needs no prompt.
_GNOME_INTERFACE = "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface"

#: keyring's SecretService backend, as ``PYTHON_KEYRING_BACKEND`` names it.
KEYRING_BACKEND = "keyring.backends.SecretService.Keyring"

INSTALL_HINT = "apt-get install gnome-keyring dbus"

# Everything may be sent and owned (as in the session bus), but no <servicedir>: nothing is
# ever activated on demand (see the module docstring).
_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# Ambient variables that would point the daemon at another keyring or display.
_DAEMON_ENV_DROP = ("GNOME_KEYRING_CONTROL", "GNOME_KEYRING_PID", "DISPLAY", "WAYLAND_DISPLAY")


class SecretServiceError(RuntimeError):
    """The Secret Service could not be started, or a call to it failed."""


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SecretServiceError(f"{binary} not found on PATH: the Secret Service for the "
                                 f"keyring tests needs it ({INSTALL_HINT})")
    return path


def _jeepney() -> Any:
    try:
        import jeepney.io.blocking
    except ImportError as e:
        # keyring depends on SecretStorage (and so jeepney) on Linux.
        raise SecretServiceError("talking to the Secret Service needs jeepney: "
                                 "pip install secretstorage") from e
    return jeepney


class SecretService:
    """gnome-keyring's Secret Service on a private D-Bus; ``stop()`` ends both and removes
    their files.

    ``password``: the login collection's password (random by default; :meth:`unlock` uses it).
    ``startup_timeout``: seconds for the bus and the daemon to come up together.
    """

    name = "secret-service"

    def __init__(self, *, password: str | None = None, startup_timeout: float = 30.0) -> None:
        self.password = password or secrets.token_urlsafe(18)
        self._startup_timeout = startup_timeout
        self._root: Path | None = None
        self._bus: ManagedProcess | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._daemon_log: Path | None = None
        self._collection = ""
        #: seconds from launch until the default collection was there, unlocked
        self.startup_seconds = 0.0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bus and the daemon; return once the default collection is unlocked."""
        if self._root is not None:
            return
        dbus_daemon = _require("dbus-daemon")
        keyring_daemon = _require("gnome-keyring-daemon")
        _jeepney()
        t0 = time.monotonic()
        self._root = Path(tempfile.mkdtemp(prefix="cloudtrack-keyring-"))
        try:
            for sub in ("home", "run", "data", "config", "cache"):
                (self._root / sub).mkdir(mode=0o700)
            conf = self._root / "bus.conf"
            conf.write_text(_BUS_CONFIG.format(socket=self._root / "run" / "bus"))
            self._bus = ManagedProcess([dbus_daemon, "--nofork", f"--config-file={conf}",
                                        "--print-address"], name="dbus")
            self._wait(self._bus_up, t0, "the D-Bus daemon to listen")
            self._daemon_log = self._root / "gnome-keyring.log"
            env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ENV_DROP}
            env.update(self._daemon_env)
            with open(self._daemon_log, "wb") as log:
                self._daemon = subprocess.Popen(
                    [keyring_daemon, "--foreground", "--components=secrets", "--unlock"],
                    env=env, cwd=self._root, stdin=subprocess.PIPE, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            assert self._daemon.stdin is not None
            # --unlock reads the password up to EOF, then creates/unlocks "login" with it.
            self._daemon.stdin.write(self.password.encode())
            self._daemon.stdin.close()
            self._wait(self._collection_ready, t0,
                       f"gnome-keyring-daemon to own {BUS_NAME} with an unlocked collection")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the daemon and the bus, remove the temporary directory; safe to call twice."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            _stop_group(daemon)
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.stop()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        self._collection = ""
        self.startup_seconds = 0.0

    def __enter__(self) -> SecretService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, ready: Any, t0: float, what: str) -> None:
        deadline = t0 + self._startup_timeout
        while time.monotonic() < deadline:
            for label, proc, tail in self._processes():
                if proc.poll() is not None:
                    raise SecretServiceError(f"{label} exited with {proc.returncode} while "
                                             f"waiting for {what}; its log ends with:\n{tail}")
            if ready():
                return
            time.sleep(0.05)
        raise SecretServiceError(f"timed out after {self._startup_timeout:.0f}s waiting for "
                                 f"{what}; logs:\n{self.log_tail()}")

    def _processes(self) -> list[tuple[str, subprocess.Popen[bytes], str]]:
        out = []
        if self._bus is not None:
            out.append(("dbus-daemon", self._bus.proc, self._bus.tail()))
        if self._daemon is not None:
            out.append(("gnome-keyring-daemon", self._daemon, self._daemon_tail()))
        return out

    def _bus_up(self) -> bool:
        try:
            with self._connect():
                return True
        except (OSError, SecretServiceError):
            return False

    def _collection_ready(self) -> bool:
        jeepney = _jeepney()
        import secretstorage
        from jeepney.bus_messages import message_bus

        try:
            with self._connect() as conn:
                if not conn.send_and_get_reply(message_bus.NameHasOwner(BUS_NAME)).body[0]:
                    return False
                path = self._call(conn, "ReadAlias", "s", ("default",))[0]
                if path == "/":  # the login collection is made once the password has arrived
                    return False
                if secretstorage.Collection(conn, path).is_locked():
                    return False
        except (OSError, jeepney.wrappers.DBusErrorResponse,
                secretstorage.exceptions.SecretStorageException):
            return False
        self._collection = path
        return True

    # -- what clients need ------------------------------------------------------------------

    @property
    def bus_address(self) -> str:
        """``unix:path=<tmp>/run/bus``, the private bus (``DBUS_SESSION_BUS_ADDRESS``)."""
        if self._root is None:
            raise SecretServiceError("the Secret Service is not running: start() it first")
        return f"unix:path={self._root / 'run' / 'bus'}"

    @property
    def workdir(self) -> Path | None:
        """The temporary directory: ``home``, ``run`` (bus socket), ``data`` (the keyrings)."""
        return self._root

    @property
    def collection_path(self) -> str:
        """The D-Bus path of the default collection (``…/collection/login``)."""
        return self._collection

    @property
    def keyring_pid(self) -> int:
        """The gnome-keyring daemon's process id (a test stops it to wedge the service)."""
        if self._daemon is None:
            raise SecretServiceError("the Secret Service is not running: start() it first")
        return self._daemon.pid

    @property
    def pids(self) -> list[int]:
        """The bus's and the daemon's process ids (for cleanup checks)."""
        return [proc.pid for _, proc, _ in self._processes()]

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this Secret Service through python ``keyring``.

        ``DBUS_SESSION_BUS_ADDRESS`` is where SecretStorage (jeepney) connects;
        ``XDG_RUNTIME_DIR`` holds the same socket as ``bus``, jeepney's fallback, and
        gnome-keyring's control socket.  ``PYTHON_KEYRING_BACKEND`` pins keyring to its
        SecretService backend: without it keyring picks the backend itself, and with
        keyrings.alt installed (a test dependency) that is a ``ChainerBackend`` trying
        SecretService first, then a plaintext file — a secret must not land there silently.
        It also wins over a ``keyringrc.cfg`` the user may have.  See :attr:`detect_env` for
        keyring's own choice.  ``HOME`` and the other ``XDG_*`` are left alone: where the
        caller's own configuration lives is the caller's business.
        """
        root = self._running_root()
        return {"DBUS_SESSION_BUS_ADDRESS": self.bus_address,
                "XDG_RUNTIME_DIR": str(root / "run"),
                "PYTHON_KEYRING_BACKEND": KEYRING_BACKEND}

    @property
    def detect_env(self) -> dict[str, str]:
        """:attr:`env` without the pin, for keyring to choose a backend as it does for users:
        ``XDG_CONFIG_HOME`` and ``XDG_DATA_HOME`` point into the temporary directory, so no
        ``keyringrc.cfg`` of the user's is read and keyrings.alt's plaintext file (the chain's
        fallback) is written there.  An ambient ``PYTHON_KEYRING_BACKEND`` still wins: remove
        it from the child's environment."""
        root = self._running_root()
        env = self.env
        del env["PYTHON_KEYRING_BACKEND"]
        env.update({"XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data")})
        return env

    @property
    def _daemon_env(self) -> dict[str, str]:
        root = self._running_root()
        return {"DBUS_SESSION_BUS_ADDRESS": self.bus_address, "HOME": str(root / "home"),
                "XDG_RUNTIME_DIR": str(root / "run"), "XDG_DATA_HOME": str(root / "data"),
                "XDG_CONFIG_HOME": str(root / "config"), "XDG_CACHE_HOME": str(root / "cache")}

    def _running_root(self) -> Path:
        if self._root is None:
            raise SecretServiceError("the Secret Service is not running: start() it first")
        return self._root

    def log_tail(self, n: int = 3000) -> str:
        bus = self._bus.tail(n) if self._bus is not None else ""
        return f"-- dbus-daemon --\n{bus}\n-- gnome-keyring-daemon --\n{self._daemon_tail(n)}"

    def _daemon_tail(self, n: int = 3000) -> str:
        log = self._daemon_log
        return log.read_text(errors="replace")[-n:] if log is not None and log.exists() else ""

    # -- the default collection -------------------------------------------------------------

    def lock(self) -> None:
        """Lock the default collection: keyring then raises ``KeyringLocked`` (no prompt)."""
        import secretstorage

        with self._connect() as conn:
            secretstorage.Collection(conn, self._require_collection()).lock()

    def unlock(self, password: str | None = None) -> None:
        """Unlock the default collection with ``password`` (default: the right one), without a
        prompt; a wrong password raises :class:`SecretServiceError`."""
        jeepney = _jeepney()
        path = self._require_collection()
        with self._connect() as conn:
            session = self._call(conn, "OpenSession", "sv", ("plain", ("s", "")))[1]
            # gnome-keyring's private interface (used by seahorse to change passwords): the
            # standard Unlock would need a prompt.  A "plain" session sends the password as is,
            # over our own socket.
            secret = (session, b"", (password or self.password).encode(), "text/plain")
            msg = jeepney.new_method_call(
                jeepney.DBusAddress(SERVICE_PATH, bus_name=BUS_NAME, interface=_GNOME_INTERFACE),
                "UnlockWithMasterPassword", "o(oayays)", (path, secret))
            try:
                jeepney.wrappers.unwrap_msg(conn.send_and_get_reply(msg, timeout=10))
            except jeepney.wrappers.DBusErrorResponse as e:
                raise SecretServiceError(f"could not unlock {path}: {e.name}: "
                                         f"{' '.join(map(str, e.data))}") from e

    def is_locked(self) -> bool:
        import secretstorage

        with self._connect() as conn:
            return bool(secretstorage.Collection(conn, self._require_collection()).is_locked())

    def items(self) -> list[dict[str, str]]:
        """The attributes of every item of the default collection (keyring stores
        ``service``, ``username`` and ``application``); no secrets."""
        import secretstorage

        with self._connect() as conn:
            collection = secretstorage.Collection(conn, self._require_collection())
            return [dict(item.get_attributes()) for item in collection.get_all_items()]

    def get_secret(self, service: str, username: str) -> str | None:
        """The secret keyring stored for ``service`` / ``username``, read straight from the
        collection (not through keyring); None when there is none.  Needs it unlocked."""
        import secretstorage

        with self._connect() as conn:
            collection = secretstorage.Collection(conn, self._require_collection())
            for item in collection.search_items({"service": service, "username": username}):
                return bytes(item.get_secret()).decode()
        return None

    def clear(self) -> None:
        """Delete every item of the default collection (unlocking it first)."""
        import secretstorage

        if self.is_locked():
            self.unlock()
        with self._connect() as conn:
            collection = secretstorage.Collection(conn, self._require_collection())
            for item in list(collection.get_all_items()):
                item.delete()

    # -- D-Bus plumbing ---------------------------------------------------------------------

    def _require_collection(self) -> str:
        if not self._collection:
            raise SecretServiceError("the Secret Service is not running: start() it first")
        return self._collection

    @contextlib.contextmanager
    def _connect(self) -> Any:
        jeepney = _jeepney()
        conn = jeepney.io.blocking.open_dbus_connection(self.bus_address)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _call(conn: Any, method: str, signature: str, body: tuple[Any, ...]) -> Any:
        jeepney = _jeepney()
        msg = jeepney.new_method_call(
            jeepney.DBusAddress(SERVICE_PATH, bus_name=BUS_NAME,
                                interface="org.freedesktop.Secret.Service"),
            method, signature, body)
        return jeepney.wrappers.unwrap_msg(conn.send_and_get_reply(msg, timeout=10))


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL after 10 s (as ManagedProcess.stop does)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
