"""Logins: the secrets ``cloudtrack login`` keeps for a store or an MLflow server, in the OS
keyring.

A login belongs to a *target*: a store URI (``s3://bucket/prefix``, ``gs://…``, ``wasbs://…``)
or a server URL.  It applies to every URI under its target; when several do, the longest wins.
The secret half (keys, passwords, tokens, a token command) lives in the keyring, under service
``cloudtrack`` and the target's canonical form; the public half (which kind, the access key id,
the endpoint, the user name) lives in ``logins.json`` in cloudtrack's configuration folder,
because a keyring cannot be listed.  With ``--insecure-storage`` the secret goes to
``credentials.json`` beside it instead (mode 0600).

Where a login stands among the other sources (the same order everywhere): explicit arguments,
then environment variables, then the login, then the SDKs' own chains.  A login is read from the
keyring once per process and kept in memory, so a training loop never waits on the keyring; every
keyring call is bounded by ``CLOUDTRACK_KEYRING_TIMEOUT`` seconds (a locked keyring may wait for
a password prompt nobody sees).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cloudtrack.errors import ConfigError, CredentialsUnavailable

log = logging.getLogger("cloudtrack.credentials")

T = TypeVar("T")

#: The keyring's service name for every cloudtrack login.
SERVICE = "cloudtrack"
#: Seconds a keyring call may take before it counts as not answering.
DEFAULT_TIMEOUT = 5.0

#: Kinds of login, by target: what each one stores.
KINDS: Mapping[str, str] = {
    "s3-keys": "an access key id and secret access key (and an endpoint)",
    "azure-account-key": "a storage account key",
    "azure-sas": "a SAS token",
    "azure-connection-string": "a storage connection string",
    "gcs-service-account": "a service-account key (the JSON file's content)",
    "server-basic": "a user name and password",
    "server-token": "a bearer token",
    "server-token-command": "a command that prints a fresh token",
}

#: The variables that, when set, make the environment outrank a login, by backend.
ENV_CREDENTIALS: Mapping[str, tuple[str, ...]] = {
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"),
    "azure": ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY",
              "AZURE_STORAGE_SAS_TOKEN"),
    "gcs": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "server": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4"),
}

#: Where a GCS login's key travels inside a resolved store's environment (not a real
#: variable: the colon keeps it from ever being one).
GCS_KEY_INFO = "cloudtrack:gcs-service-account"

#: The store URIs a login can be for, as messages show them.
TARGET_FORMS = ("s3://bucket[/prefix]", "gs://bucket[/prefix]",
                "wasbs://container@account.blob.core.windows.net[/prefix]",
                "abfss://container@account.dfs.core.windows.net[/prefix]")

_AZURE_HOST = re.compile(r"^([a-z0-9]+)\.(?:blob|dfs)\.(.+)$")


class KeyringUnavailable(CredentialsUnavailable):
    """The keyring holds (or should hold) a login but cannot be used: no secure backend,
    locked, or not answering in time."""


# -- targets ---------------------------------------------------------------------------------

def backend_of(target: str) -> str:
    """``s3``, ``gcs``, ``azure`` or ``server`` for a target; ConfigError for anything else."""
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    kind = {"s3": "s3", "gs": "gcs", "wasbs": "azure", "abfss": "azure", "http": "server",
            "https": "server"}.get(scheme)
    if kind is None:
        from cloudtrack.config import redact_uri, suggest_uri

        suggestion = suggest_uri(redact_uri(target)) if scheme not in ("", "file") else None
        raise ConfigError(
            f"cannot log in to {redact_uri(target)!r}"
            + (f" (did you mean {suggestion!r}?)" if suggestion else "")
            + ": a target is a store URI (" + ", ".join(TARGET_FORMS) + ") or an MLflow server "
            "URL (https://host[:port][/path]); a local directory needs no login")
    return kind


def canonical(target: str) -> str:
    """The form logins are stored and matched under: scheme and host in lower case, no
    trailing slash, no default port, no credentials or query; Azure's ``wasbs`` and ``abfss``
    forms of one account as one (``azure://<account>.<suffix>/<container>/<prefix>``)."""
    kind = backend_of(target)
    parsed = urllib.parse.urlsplit(target.strip())
    path = "/".join(p for p in parsed.path.split("/") if p)
    netloc = parsed.netloc.rsplit("@", 1)[-1] if kind == "server" else parsed.netloc
    if kind == "azure":
        container, _, host = netloc.rpartition("@")
        m = _AZURE_HOST.match(host.lower())
        if not m:
            raise ConfigError(f"{target!r}: expected wasbs://<container>@<account>.blob.<suffix>"
                              "[/prefix] or abfss://<container>@<account>.dfs.<suffix>[/prefix] "
                              "(or the host alone for the whole account)")
        parts = [f"{m.group(1)}.{m.group(2)}", container, path]
        return "azure://" + "/".join(p for p in parts if p)
    if kind == "server":
        host = (parsed.hostname or "").lower()
        if not host:
            raise ConfigError(f"{target!r}: no host in the server URL")
        port = parsed.port
        default = 443 if parsed.scheme.lower() == "https" else 80
        netloc = host if port in (None, default) else f"{host}:{port}"
        return f"{parsed.scheme.lower()}://{netloc}" + (f"/{path}" if path else "")
    if not netloc:
        raise ConfigError(f"{target!r}: no bucket")
    return f"{parsed.scheme.lower()}://{netloc}" + (f"/{path}" if path else "")


def covers(key: str, uri_key: str) -> bool:
    return uri_key == key or uri_key.startswith(key + "/")


# -- logins ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Login:
    """One login: its target, kind, public fields, and (once read) its secret fields."""

    target: str
    kind: str
    public: Mapping[str, str] = field(default_factory=dict)
    secret: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: ``keyring`` or ``file``.
    storage: str = "keyring"
    #: The keyring backend it was stored with, by name.
    keyring: str = ""
    created: float = 0.0

    @property
    def key(self) -> str:
        return canonical(self.target)

    @property
    def source(self) -> str:
        """How sources name it: ``keyring:<target>`` (or ``file:<target>``)."""
        return f"{'keyring' if self.storage == 'keyring' else 'insecure-file'}:{self.key}"

    def secrets(self) -> frozenset[str]:
        """Every secret value, for scrubbing."""
        out = {v for v in self.secret.values() if v}
        if self.kind == "gcs-service-account":
            with contextlib.suppress(ValueError, TypeError):
                out.add(str(json.loads(self.secret.get("key_json", "")).get("private_key", "")))
        return frozenset(v for v in out if v)

    def store_environ(self) -> dict[str, str]:
        """What a store's resolution reads from this login, as the variables it would
        otherwise come from."""
        s, p = self.secret, self.public
        if self.kind == "s3-keys":
            env = {"AWS_ACCESS_KEY_ID": p.get("access_key_id", ""),
                   "AWS_SECRET_ACCESS_KEY": s.get("secret_access_key", "")}
            if s.get("session_token"):
                env["AWS_SESSION_TOKEN"] = s["session_token"]
            if p.get("endpoint_url"):
                env["MLFLOW_S3_ENDPOINT_URL"] = p["endpoint_url"]
            return env
        if self.kind in ("azure-account-key", "azure-sas") and p.get("endpoint_url"):
            # An endpoint other than the URI's (Azurite, a private endpoint): only a
            # connection string carries one.
            account = canonical(self.target).removeprefix("azure://").split(".", 1)[0]
            signer = (f"AccountName={account};AccountKey={s.get('account_key', '')}"
                      if self.kind == "azure-account-key"
                      else f"SharedAccessSignature={s.get('sas_token', '').lstrip('?')}")
            return {"AZURE_STORAGE_CONNECTION_STRING":
                    f"{signer};BlobEndpoint={p['endpoint_url'].rstrip('/')};"}
        if self.kind == "azure-account-key":
            return {"AZURE_STORAGE_ACCESS_KEY": s.get("account_key", "")}
        if self.kind == "azure-sas":
            return {"AZURE_STORAGE_SAS_TOKEN": s.get("sas_token", "")}
        if self.kind == "azure-connection-string":
            return {"AZURE_STORAGE_CONNECTION_STRING": s.get("connection_string", "")}
        if self.kind == "gcs-service-account":
            return {GCS_KEY_INFO: s.get("key_json", "")}
        return {}

    def to_index(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "public": dict(self.public),
                "storage": self.storage, "keyring": self.keyring, "created": self.created}


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """cloudtrack's configuration folder: ``CLOUDTRACK_CONFIG_DIR``, else
    ``$XDG_CONFIG_HOME/cloudtrack``, else ``~/.config/cloudtrack`` (of ``environ``, or of the
    process for what ``environ`` does not say)."""
    env = os.environ if environ is None else environ
    # A given environment that does not name the folder still belongs to this user.
    named = env.get("CLOUDTRACK_CONFIG_DIR") or (
        os.environ.get("CLOUDTRACK_CONFIG_DIR") if "HOME" not in env else None)
    if named:
        return Path(named)
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "cloudtrack"


def keyring_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a keyring call may take: ``CLOUDTRACK_KEYRING_TIMEOUT`` (at least 0.1), else
    5.  A value that is not a finite positive number of seconds is a :class:`ConfigError`
    (a typo must not quietly mean the default, nor a wait without end)."""
    env = os.environ if environ is None else environ
    raw = (env.get("CLOUDTRACK_KEYRING_TIMEOUT") or "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"CLOUDTRACK_KEYRING_TIMEOUT={raw!r} is not a number of seconds; "
                          f"give one such as {DEFAULT_TIMEOUT:g}, or unset it")
    return max(0.1, seconds)


def keyring_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether logins are used: ``CLOUDTRACK_KEYRING`` unset or true; ``off`` (or false, no,
    0) ignores them.  Any other value is a :class:`ConfigError`, as for every boolean setting
    (a typo of ``off`` must not quietly mean on)."""
    from cloudtrack.config.common import bool_env
    from cloudtrack.config.variables import CLOUDTRACK_KEYRING

    enabled = bool_env(os.environ if environ is None else environ, CLOUDTRACK_KEYRING)
    return True if enabled is None else enabled


#: A keyring call that outlived its timeout and is still waiting: while it waits, the keyring
#: is taken for not answering, and later calls fail at once instead of each waiting its own
#: timeout (``cloudtrack whoami`` waited one timeout per login).
_waiting: threading.Thread | None = None


def bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` in a thread of its own, given ``timeout`` seconds: a keyring that waits on a
    prompt (or a D-Bus service that never answers) must not hang the caller.  The keyring's
    own errors (locked, no backend, D-Bus failures) come back as :class:`KeyringUnavailable`.
    While an earlier call that timed out still waits, this one is not tried."""
    global _waiting
    earlier = _waiting
    if earlier is not None and earlier.is_alive():
        raise KeyringUnavailable(
            f"the keyring did not answer within {timeout:g} s (an earlier call, still "
            f"waiting), so it was not asked again while {what} (a locked keyring waits for a "
            "password prompt; unlock it, or raise CLOUDTRACK_KEYRING_TIMEOUT)", reason="keyring")
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=call, name="cloudtrack-keyring", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        _waiting = thread
        raise KeyringUnavailable(
            f"the keyring did not answer within {timeout:g} s while {what} (a locked keyring "
            "waits for a password prompt; unlock it, or raise CLOUDTRACK_KEYRING_TIMEOUT)",
            reason="keyring")
    if "error" in box:
        error = box["error"]
        if _is_keyring_error(error):
            locked = type(error).__name__ == "KeyringLocked"
            raise KeyringUnavailable(
                f"the keyring {'is locked' if locked else 'failed'} while {what} "
                f"({type(error).__name__}: {error}); "
                + ("unlock it (log in to the desktop session, or `gnome-keyring-daemon "
                   "--unlock`) and try again" if locked else
                   "check that its service is running (`cloudtrack whoami` shows which)"),
                reason="keyring") from None
        raise error
    return box["value"]  # type: ignore[no-any-return]


def _is_keyring_error(error: BaseException) -> bool:
    """The keyring's errors, and the D-Bus ones its backends let through."""
    import keyring.errors

    if isinstance(error, keyring.errors.KeyringError):
        return True
    module = type(error).__module__ or ""
    return module.startswith(("secretstorage", "jeepney", "dbus"))


@dataclass(frozen=True)
class KeyringInfo:
    """The keyring backend in use, and whether it keeps secrets safe."""

    name: str
    secure: bool
    why: str


#: Backends that keep secrets encrypted by the OS (class names, by module).
_SECURE = ("keyring.backends.SecretService", "keyring.backends.libsecret",
           "keyring.backends.macOS", "keyring.backends.Windows", "keyring.backends.kwallet")


def keyring_info() -> KeyringInfo:
    """Which keyring backend ``keyring`` chose, and whether cloudtrack trusts it."""
    import keyring

    backend = keyring.get_keyring()
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    inner = getattr(backend, "backends", None)
    if inner:  # a chainer writes to its first backend
        backend = inner[0]
        name = f"{type(backend).__module__}.{type(backend).__name__}"
    if name.startswith("keyring.backends.fail") or name.startswith("keyring.backends.null"):
        return KeyringInfo(name, False, "no keyring backend is available (on Linux: a Secret "
                           "Service such as gnome-keyring or KWallet, running and unlocked)")
    if name.startswith("keyrings.alt") or "Plaintext" in name:
        return KeyringInfo(name, False, "this backend keeps secrets in a plain file")
    if name.startswith(_SECURE):
        return KeyringInfo(name, True, "the OS keeps the secrets encrypted")
    return KeyringInfo(name, False, "cloudtrack does not know this backend to be secure")


# -- the vault -------------------------------------------------------------------------------

_cache_lock = threading.Lock()
#: (config folder, canonical target) -> the login read, for the life of the process.
_cache: dict[tuple[str, str], Login] = {}
#: index file -> ((mtime, size, inode), its content).
_indexes: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def forget_cache() -> None:
    """Drop what this process read from the keyring (``login``/``logout`` and tests)."""
    with _cache_lock:
        _cache.clear()
        _indexes.clear()


class Vault:
    """The logins of one configuration folder."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.folder = config_dir(self.environ)
        self.timeout = keyring_timeout(self.environ)

    @property
    def index_path(self) -> Path:
        return self.folder / "logins.json"

    @property
    def insecure_path(self) -> Path:
        return self.folder / "credentials.json"

    # -- reading --

    def index(self) -> dict[str, dict[str, Any]]:
        """canonical target -> public half, as saved; empty when there are none.  Kept in
        memory while the file is unchanged (MLflow asks for every request)."""
        path = self.index_path
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with _cache_lock:
            hit = _indexes.get(str(path))
        if hit is not None and hit[0] == stamp:
            return dict(hit[1])
        data = _read_json(path)
        with _cache_lock:
            _indexes[str(path)] = (stamp, data)
        return dict(data)

    def logins(self) -> list[Login]:
        """Every login, public half only."""
        return [_public_login(v) for _, v in sorted(self.index().items())]

    def match(self, uri: str) -> Login | None:
        """The public half of the login for ``uri`` (the longest target covering it); None
        when none does or ``CLOUDTRACK_KEYRING`` is off (ConfigError when it is no boolean)."""
        if not keyring_enabled(self.environ):
            return None
        return self.covering(uri)

    def covering(self, uri: str) -> Login | None:
        """The public half of the login saved for ``uri`` or the longest target above it,
        whether or not ``CLOUDTRACK_KEYRING`` lets it be used."""
        try:
            uri_key = canonical(uri)
        except ConfigError:
            return None
        best = None
        for key, entry in self.index().items():
            if covers(key, uri_key) and (best is None or len(key) > len(best[0])):
                best = (key, entry)
        return None if best is None else _public_login(best[1])

    def find(self, uri: str) -> Login | None:
        """The login for ``uri`` with its secret, read once per process; None when no login
        covers it.  Raises :class:`KeyringUnavailable` when one does but cannot be read."""
        public = self.match(uri)
        if public is None:
            return None
        cache_key = (str(self.folder), public.key)
        with _cache_lock:
            hit = _cache.get(cache_key)
        if hit is not None:
            return hit
        secret = self._read_secret(public)
        login = Login(public.target, public.kind, public.public, secret, public.storage,
                      public.keyring, public.created)
        with _cache_lock:
            _cache[cache_key] = login
        return login

    def _read_secret(self, login: Login) -> dict[str, str]:
        if login.storage == "file":
            entry = _read_json(self.insecure_path).get(login.key)
            if not isinstance(entry, dict):
                raise CredentialsUnavailable(
                    f"the login for {login.target} names {self.insecure_path}, which no longer "
                    f"holds it; run `cloudtrack login {login.target}` again",
                    login.target, reason="missing")
            return {str(k): str(v) for k, v in entry.items()}
        import keyring

        info = bounded(keyring_info, self.timeout, "finding the keyring")
        if not info.secure:
            raise KeyringUnavailable(
                f"the login for {login.target} is kept in the OS keyring, but the keyring in "
                f"use now is {info.name}: {info.why}; start and unlock the keyring, or log in "
                "again with --insecure-storage", login.target, reason="keyring")
        t0 = time.monotonic()
        raw = bounded(lambda: keyring.get_password(SERVICE, login.key), self.timeout,
                      f"reading the login for {login.target}")
        log.debug("read the login for %s from %s in %.3f s", login.target, info.name,
                  time.monotonic() - t0)
        if raw is None:
            raise KeyringUnavailable(
                f"the keyring ({info.name}) holds no secret for {login.target}, though "
                f"{self.index_path} lists a login; run `cloudtrack login {login.target}` again "
                "(or `cloudtrack logout` it)", login.target, reason="missing")
        try:
            secret = json.loads(raw)
        except ValueError:
            raise KeyringUnavailable(
                f"the keyring's entry for {login.target} is not cloudtrack's; run "
                f"`cloudtrack login {login.target}` again", login.target, reason="invalid"
            ) from None
        return {str(k): str(v) for k, v in secret.items()}

    # -- writing --

    def save(self, login: Login, *, insecure: bool = False) -> Login:
        """Store ``login``: its secret in the keyring (refused unless the keyring is secure)
        or, with ``insecure``, in a 0600 file; its public half in the index."""
        key = login.key
        if insecure:
            stored = _replace(login, storage="file", keyring="", created=time.time())
            secrets = _read_json(self.insecure_path)
            secrets[key] = dict(login.secret)
            _write_json(self.insecure_path, secrets, private=True)
        else:
            import keyring

            info = bounded(keyring_info, self.timeout, "finding the keyring")
            if not info.secure:
                raise KeyringUnavailable(
                    f"refusing to store the secret for {login.target}: the keyring in use is "
                    f"{info.name} ({info.why}). Start an unlocked Secret Service (gnome-keyring, "
                    "KWallet) or use the OS keychain; or pass --insecure-storage to keep it in "
                    f"{self.insecure_path} (mode 0600, readable by anyone with this account)",
                    login.target, reason="keyring")
            payload = json.dumps(dict(login.secret), sort_keys=True)
            bounded(lambda: keyring.set_password(SERVICE, key, payload), self.timeout,
                    f"storing the login for {login.target}")
            stored = _replace(login, storage="keyring", keyring=info.name, created=time.time())
            self._drop_insecure(key)
        index = self.index()
        index[key] = stored.to_index()
        _write_json(self.index_path, index, private=False)
        forget_cache()
        return stored

    def remove(self, target: str) -> Login | None:
        """Forget the login saved for exactly ``target``; the public half of what was removed
        (None if there was none)."""
        key = canonical(target)
        index = self.index()
        entry = index.pop(key, None)
        if entry is None:
            return None
        login = _public_login(entry)
        if login.storage == "keyring":
            import keyring
            import keyring.errors

            with contextlib.suppress(keyring.errors.PasswordDeleteError):
                bounded(lambda: keyring.delete_password(SERVICE, key), self.timeout,
                        f"removing the login for {target}")
        self._drop_insecure(key)
        _write_json(self.index_path, index, private=False)
        forget_cache()
        return login

    def _drop_insecure(self, key: str) -> None:
        secrets = _read_json(self.insecure_path)
        if key in secrets:
            del secrets[key]
            _write_json(self.insecure_path, secrets, private=True)


def _replace(login: Login, **changes: Any) -> Login:
    import dataclasses

    return dataclasses.replace(login, **changes)


def _public_login(entry: Mapping[str, Any]) -> Login:
    return Login(str(entry.get("target", "")), str(entry.get("kind", "")),
                 {str(k): str(v) for k, v in (entry.get("public") or {}).items()}, {},
                 str(entry.get("storage", "keyring")), str(entry.get("keyring", "")),
                 float(entry.get("created") or 0.0))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}; fix or remove it") from None
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any], *, private: bool) -> None:
    """Write ``path`` whole (a new file renamed over the old), 0600 when ``private``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def environment_outranks(backend: str, environ: Mapping[str, str]) -> list[str]:
    """The credential variables set in ``environ`` that outrank a login for ``backend``."""
    return [name for name in ENV_CREDENTIALS.get(backend, ()) if environ.get(name)]
