"""What every doctor module shares: the checks, the report, and the :class:`Probe` that collects
checks, keeps every step inside the time budget and scrubs secrets from what it records."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NoReturn, TypeVar

from cloudtrack.config import BACKENDS as BACKEND_TABLE
from cloudtrack.config import Setting, StoreConfig, parse_connection_string, redact, redact_uri
from cloudtrack.credentials import Credential, mask_key_id
from cloudtrack.errors import ConfigError, CredentialsUnavailable

T = TypeVar("T")

Status = Literal["ok", "warn", "fail"]

#: The layers bottom up; the report's cause is that of the lowest failing one.
LAYERS: tuple[str, ...] = ("config", "dns", "tcp", "tls", "http", "auth", "authz", "consistency")

#: The ``cause`` vocabulary (docs/doctor.md, "Layers").
CAUSES: tuple[str, ...] = (
    "ok", "config-invalid", "dependency-missing", "dns-failure", "connection-refused",
    "network-timeout", "tls-untrusted", "tls-mismatch", "credentials-missing",
    "credentials-invalid", "token-expired", "permission-denied", "container-not-found",
    "endpoint-mismatch", "not-mlflow-server", "clock-skew", "server-error",
)

#: What the doctor diagnoses: every backend of the table, and MLflow servers.
BACKENDS: tuple[str, ...] = (*(b.name for b in BACKEND_TABLE), "http")

#: A credential that cannot renew itself and ends sooner than this is a warning.
EXPIRY_WARNING = 3600.0
#: Clock skew: above WARN it is reported, above FAIL signed requests are refused (S3, Azure).
SKEW_WARN = 60.0
SKEW_FAIL = 15 * 60.0

#: What a step of a layer reports when it fails in a way nothing more specific explains.
_LAYER_FALLBACK = {
    "config": "config-invalid", "dns": "dns-failure", "tcp": "connection-refused",
    "tls": "tls-untrusted", "http": "server-error", "auth": "credentials-invalid",
    "authz": "permission-denied", "consistency": "endpoint-mismatch",
}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    id: str
    layer: str
    status: Status
    #: ``ok`` for a passing check; otherwise the catalogue cause of the problem.
    cause: str
    summary: str
    #: What to do, for a warning or a failure.
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}")
        if self.cause not in CAUSES:
            raise ValueError(f"unknown cause {self.cause!r}")
        if self.status == "ok" and self.cause != "ok":
            raise ValueError("a passing check has cause 'ok'")

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "layer": self.layer, "status": self.status, "cause": self.cause,
                "summary": self.summary, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    """What ``cloudtrack doctor`` found for one store or server."""

    uri: str
    #: file, s3, gcs, azure or http; None when the URI names nothing cloudtrack can diagnose.
    backend: str | None
    checks: tuple[Check, ...]
    #: Wall-clock seconds the run took (not part of the JSON object).
    seconds: float = 0.0

    @property
    def status(self) -> Status:
        if any(c.status == "fail" for c in self.checks):
            return "fail"
        if any(c.status == "warn" for c in self.checks):
            return "warn"
        return "ok"

    @property
    def root(self) -> Check | None:
        """The failing check of the lowest layer (the first of them when several failed)."""
        failing = [c for c in self.checks if c.status == "fail"]
        if not failing:
            return None
        return min(failing, key=lambda c: LAYERS.index(c.layer))

    @property
    def cause(self) -> str:
        root = self.root
        return root.cause if root is not None else "ok"

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "fail" else 0

    def to_dict(self) -> dict[str, object]:
        return {"uri": self.uri, "backend": self.backend, "status": self.status,
                "cause": self.cause, "checks": [c.to_dict() for c in self.checks]}


class Stop(Exception):
    """Raised by :meth:`Probe.fail`: the chain ends at its first failing layer."""


class ProbeTimeout(TimeoutError):
    """A step did not finish within its time."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not finish within {seconds:.1f}s")
        self.what = what
        self.seconds = seconds


#: Environment variables whose values are secrets whatever their content.
_SECRET_NAMES = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|ACCOUNTKEY|_SAS|CONNECTION_STRING|IDENTITY_HEADER)",
    re.IGNORECASE)
_NOT_SECRET = re.compile(r"(_FILE|_PATH|_ID|_URL|_URI|_HOST|_ENDPOINT|_TYPE)$", re.IGNORECASE)
#: Values shorter than this are not scrubbed by value (``true``, ``1``): redact() still applies.
_MIN_SECRET = 6


def secrets_in_environment(environ: Mapping[str, str]) -> set[str]:
    """Every value in ``environ`` that must never be printed, and the secret parts inside
    connection strings, SAS tokens and URIs."""
    found: set[str] = set()
    for name, value in environ.items():
        if not value:
            continue
        if _SECRET_NAMES.search(name) and not _NOT_SECRET.search(name):
            found.add(value)
            found |= _secret_parts(value)
        elif "://" in value and "@" in value:
            found |= _secret_parts(value)
    return {s for s in found if len(s) >= _MIN_SECRET}


def _secret_parts(value: str) -> set[str]:
    parts: set[str] = set()
    try:
        pairs = parse_connection_string(value) if "=" in value and ";" in value else {}
    except ConfigError:
        pairs = {}
    for k, v in pairs.items():
        if k.lower() in ("accountkey", "sharedaccesssignature", "sharedaccesskey"):
            parts.add(v)
            parts |= _secret_parts(v)
    for k, v in urllib.parse.parse_qsl(value.lstrip("?"), keep_blank_values=True):
        if k.lower() in ("sig", "signature", "token", "x-amz-signature", "x-amz-security-token"):
            parts.add(v)
            parts.add(urllib.parse.quote(v, safe=""))
    try:
        split = urllib.parse.urlsplit(value)
        if split.password:
            parts.add(split.password)
            parts.add(urllib.parse.quote(split.password, safe=""))
    except ValueError:
        pass
    return parts


_JSON_SECRET = re.compile(
    r'(?i)("(?:access_token|id_token|refresh_token|token|client_secret|password|private_key)"'
    r'\s*:\s*")[^"]*(")')
_SIGNATURE = re.compile(r"(?i)\b(Signature=)[0-9a-f]{16,}")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without secrets: :func:`~cloudtrack.config.redact`'s patterns, secret JSON
    fields, SigV4 signatures, and every one of ``secrets`` wherever it appears."""
    text = redact(text)
    text = _JSON_SECRET.sub(r"\1***\2", text)
    text = _SIGNATURE.sub(r"\1***", text)
    for value in sorted(secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "***")
    return text


def run_bounded(fn: Callable[[], T], seconds: float, what: str) -> T:
    """``fn()`` in a daemon thread; :class:`ProbeTimeout` if it is still running after
    ``seconds``.  The thread is abandoned, never joined, so it cannot hold up the exit."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"cloudtrack-doctor: {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ProbeTimeout(what, seconds)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class Probe:
    """Collects the checks of one run, keeps each step within the time left, scrubs secrets.

    ``timeout`` bounds each network step; ``budget`` the whole run.  :meth:`call` runs a step
    in a daemon thread and gives up on it when its time is over: SDKs that ignore timeouts
    (metadata probes, credential chains) then cannot hold the run, and a thread left behind
    does not keep the process from exiting.
    """

    def __init__(self, environ: Mapping[str, str], *, read_only: bool = False,
                 timeout: float = 5.0, budget: float = 25.0, prefix: str = "",
                 layer: str | None = None, parent: Probe | None = None,
                 secrets: set[str] | None = None) -> None:
        self.environ = environ
        self.read_only = read_only
        self.timeout = timeout
        #: Seconds the whole run may take (a child shares its parent's deadline).
        self.budget: float = parent.budget if parent is not None else budget
        self.checks: list[Check] = []
        self._parent = parent
        #: Probing an artifact root rather than a tracking store (no format marker there).
        self.artifact_store = False
        #: Nested probes (a server's artifact store) prefix their ids and pin their layer.
        self._prefix = prefix
        self._layer = layer
        self._deadline: float = parent._deadline if parent is not None \
            else time.monotonic() + budget
        if parent is not None:
            self._secrets: set[str] = parent._secrets
        else:
            # A caller's set is filled in place, so it sees the secrets learnt on the way
            # (tokens obtained from credential chains) — the CLI's log filter uses it.
            self._secrets = secrets if secrets is not None else set()
            self._secrets |= secrets_in_environment(environ)

    # -- time -------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def step_timeout(self, want: float | None = None) -> float:
        """Seconds the next step may take: its own limit, capped by what the run has left."""
        return max(0.05, min(want if want is not None else self.timeout, self.remaining()))

    def cut_short(self, allowed: float) -> str:
        """A note for a step that timed out after ``allowed`` seconds when the run's budget,
        not ``--timeout``, set that limit (so raising --timeout would not help); else ''."""
        if allowed >= self.timeout - 0.05:
            return ""
        return (f"; --timeout {self.timeout:g} allowed longer, but the doctor's whole run is "
                f"capped at {self.budget:g}s and only {allowed:.1f}s of it were left")

    def call(self, fn: Callable[[], T], *, what: str, seconds: float | None = None) -> T:
        """``fn()``, or :class:`ProbeTimeout` once ``seconds`` (default: the step timeout)
        have passed; exceptions of ``fn`` are raised here."""
        if self.remaining() <= 0:
            raise ProbeTimeout(what + " (the doctor's time budget is spent)", 0.0)
        return run_bounded(fn, self.step_timeout(seconds), what)

    # -- secrets ----------------------------------------------------------------------------

    def secret(self, *values: str | None) -> None:
        """Never print these (tokens obtained during the run, passwords found in files)."""
        for value in values:
            if value and len(value) >= _MIN_SECRET:
                self._secrets.add(value)

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    # -- recording --------------------------------------------------------------------------

    def add(self, id: str, layer: str, status: Status, cause: str, summary: str,
            fix: str | None = None) -> Check:
        check = Check(self._prefix + id, self._layer or layer, status, cause,
                      self.scrub(summary), self.scrub(fix) if fix else None)
        self.checks.append(check)
        return check

    def ok(self, id: str, layer: str, summary: str) -> Check:
        return self.add(id, layer, "ok", "ok", summary)

    def warn(self, id: str, layer: str, cause: str, summary: str, fix: str | None = None) -> Check:
        return self.add(id, layer, "warn", cause, summary, fix)

    def fail(self, id: str, layer: str, cause: str, summary: str,
             fix: str | None = None) -> NoReturn:
        """Record a failure and end the chain."""
        self.add(id, layer, "fail", cause, summary, fix)
        raise Stop(id)

    def note_fail(self, id: str, layer: str, cause: str, summary: str,
                  fix: str | None = None) -> Check:
        """Record a failure and go on (the other operations of the same layer still run)."""
        return self.add(id, layer, "fail", cause, summary, fix)

    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def unexpected(self, layer: str, error: BaseException) -> None:
        """A step raised something no classification expected: report it, do not crash."""
        self.add(f"{layer}.error", layer, "fail", _LAYER_FALLBACK[layer],
                 f"unexpected {type(error).__name__}: {error}",
                 "run with --verbose for details and report this to cloudtrack's issue tracker")

    def child(self, prefix: str, layer: str, *, artifact_store: bool = False) -> Probe:
        """A probe whose checks land in this one with ``prefix`` and ``layer``."""
        child = Probe(self.environ, read_only=self.read_only, timeout=self.timeout,
                      prefix=self._prefix + prefix, layer=layer, parent=self)
        child.artifact_store = artifact_store
        return child

    def adopt(self, child: Probe) -> None:
        self.checks.extend(child.checks)

    def report(self, uri: str, backend: str | None, seconds: float) -> DoctorReport:
        return DoctorReport(self.scrub(redact(uri)), backend, tuple(self.checks), seconds)


# -- small shared helpers -------------------------------------------------------------------


def with_timeouts(config: StoreConfig, seconds: float) -> StoreConfig:
    """``config`` with the doctor's own timeouts and a single attempt; everything else, the
    environment included, exactly as resolved (the SDK still builds its own chain from it)."""
    overrides = {"connect_timeout": float(seconds), "read_timeout": float(seconds),
                 "max_attempts": 1}
    settings = tuple(
        dataclasses.replace(s, value=overrides[s.name], source="doctor")
        if s.name in overrides else s for s in config.settings)
    return dataclasses.replace(config, settings=settings)


def shown(setting: Setting) -> str:
    """A setting's value as cloudtrack shows it (the doctor, ``cloudtrack config``): secrets as
    ``***``, an access key id masked (``AKIA…PIK6``), passwords and signatures out of URLs."""
    value = setting.shown()
    if setting.name == "access_key_id" and setting.value and not setting.secret:
        return mask_key_id(str(setting.value))
    if isinstance(setting.value, str) and "://" in setting.value and not setting.secret:
        return redact_uri(setting.value)
    return value


def describe_settings(config: StoreConfig, skip: Iterable[str] = ()) -> str:
    """``name=value (source)`` for each resolved setting, secrets hidden."""
    return "; ".join(f"{s.name}={shown(s)} ({s.source})" for s in config.settings
                     if s.name not in skip)


def duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


#: The catalogue cause of each reason a credential could not be had.
_UNAVAILABLE = {"missing": "credentials-missing", "expired": "token-expired",
                "invalid": "credentials-invalid"}


def unavailable_cause(e: CredentialsUnavailable) -> str:
    return _UNAVAILABLE.get(e.reason, "credentials-invalid")


def check_expiry(p: Probe, id: str, credential: Credential, *, what: str, fix: str,
                 skew: float = 0.0, renewer: str | None = None) -> None:
    """Record how long ``credential`` has left (by the server's clock, ``skew`` seconds ahead
    of ours): expired is a failure; a credential that cannot renew itself and ends within
    :data:`EXPIRY_WARNING` a warning, since a longer job fails mid-run; nothing without an
    expiry.  ``renewer`` names what renews it (default: where it came from)."""
    left = credential.seconds_left()
    if left is None or credential.expires is None:
        return
    left -= skew
    when = f"{credential.expires:%Y-%m-%d %H:%M:%S} UTC"
    if left <= 0:
        p.fail(id, "auth", "token-expired", f"{what} expired {duration(left)} ago ({when})", fix)
    if credential.renews:
        p.ok(id, "auth", f"{what}: valid for {duration(left)} (until {when}); "
             f"{renewer or credential.source} renews it")
    elif left < EXPIRY_WARNING:
        p.warn(id, "auth", "token-expired",
               f"{what} expires in {duration(left)} ({when}) and cannot renew itself: a "
               "longer job will fail mid-run", fix)
    else:
        p.ok(id, "auth", f"{what}: valid for {duration(left)} (until {when})")
