"""``cloudtrack doctor``: find, layer by layer, why logging to a store or an MLflow server fails,
and say how to fix it.

:func:`run` diagnoses the store a logging process would use — resolved with exactly
:func:`cloudtrack.config.resolve` and opened with the blob backend's own client — through the
layers config → dns → tcp → tls → http → auth → authz → consistency.  Each chain stops at its
first failing layer; the report's ``cause`` is that of the lowest failing layer, in the
vocabulary of the failure catalogue (:data:`CAUSES`).  One module per backend (``local``,
``s3``, ``azure``, ``gcs``, as the backend table names them; ``http`` for MLflow servers);
``net`` holds the network probes, ``answer`` the check of who answers at an endpoint,
``store`` the authorization probes the blob backends share.  The backends are diagnosed
through the public API of :mod:`cloudtrack.blobs` and :mod:`cloudtrack.credentials`, so what
is tested is what a logging process uses.

Nothing here prints; nothing recorded contains a secret (see :meth:`Probe.scrub`).
"""

from __future__ import annotations

import importlib
import logging
import os
import posixpath
import re
import shlex
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping

from cloudtrack.blobs import blobs_class
from cloudtrack.config import BACKENDS as BACKEND_TABLE
from cloudtrack.config import (
    SCHEMES,
    StoreConfig,
    backend,
    redact_uri,
    resolve,
    split_scheme,
    suggest_uri,
)
from cloudtrack.doctor.core import (
    BACKENDS,
    CAUSES,
    LAYERS,
    Check,
    DoctorReport,
    Probe,
    Stop,
    describe_settings,
)
from cloudtrack.errors import ConfigError, CredentialsUnavailable, MissingDependencyError

log = logging.getLogger("cloudtrack.doctor")

__all__ = ["BACKENDS", "CAUSES", "LAYERS", "Check", "DoctorReport", "default_uri",
           "diagnose_store", "run", "supported_schemes"]

def supported_schemes() -> list[str]:
    """URI schemes the doctor diagnoses: those of every backend in the backend table, http(s)
    for MLflow servers, and the managed platforms (Databricks, Azure ML)."""
    return [s for spec in BACKEND_TABLE for s in spec.schemes] + ["http", "https", *PLATFORMS]


def default_uri(environ: Mapping[str, str], cwd: str | None = None) -> tuple[str, str]:
    """The tracking URI MLflow would use, and where it came from.

    ``MLFLOW_TRACKING_URI``, else MLflow's default: ``./mlruns`` when it already holds
    FileStore data, else ``sqlite:///mlflow.db`` (what ``mlflow.get_tracking_uri()`` answers;
    re-stated because importing MLflow takes seconds — a unit test compares the two).
    """
    uri = environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, "env:MLFLOW_TRACKING_URI"
    base = cwd or os.getcwd()
    mlruns = os.path.join(base, "mlruns")
    try:
        with os.scandir(mlruns) as entries:
            for entry in entries:
                if entry.is_dir() and entry.name.isdigit() and \
                        os.path.lexists(os.path.join(entry.path, "meta.yaml")):
                    from pathlib import Path

                    return Path(os.path.abspath(mlruns)).as_uri(), "MLflow's default"
    except OSError:
        pass
    db = os.path.abspath(os.path.join(base, "mlflow.db"))
    return "sqlite:///" + posixpath.abspath(urllib.request.pathname2url(db)), "MLflow's default"


#: Managed platforms MLflow reaches through URIs of their own -> the doctor module for them.
PLATFORMS = {"databricks": "databricks", "databricks-uc": "databricks", "azureml": "azureml"}


def _backend_of(uri: str) -> str | None:
    # MLflow reads the bare words as Databricks, not as directories.
    if uri.strip() in ("databricks", "databricks-uc"):
        return "databricks"
    scheme = split_scheme(uri)
    if scheme in ("http", "https"):
        return "http"
    if scheme in PLATFORMS:
        return PLATFORMS[scheme]
    entry = SCHEMES.get(scheme)
    return entry[0] if entry is not None else None


def run(uri: str | None = None, environ: Mapping[str, str] | None = None, *,
        read_only: bool = False, timeout: float = 5.0, budget: float = 25.0,
        secrets: set[str] | None = None) -> DoctorReport:
    """Diagnose ``uri`` (default: the URI MLflow would use) as a process with ``environ``
    (default: this process's environment) would reach it.

    ``read_only`` skips every write; ``timeout`` bounds each network step and ``budget`` the
    whole run, whatever the network does.  ``secrets``, when given, is filled with every
    secret the run knows of (from the environment, and tokens it obtains), for callers that
    scrub other output — logs — too.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    started = time.monotonic()
    p = Probe(env, read_only=read_only, timeout=timeout, budget=budget, secrets=secrets)
    origin = "the command line"
    if not uri:
        uri, origin = default_uri(env)
    try:
        p.secret(urllib.parse.urlsplit(uri).password)
    except ValueError:
        pass
    backend = _backend_of(uri)
    try:
        _diagnose(p, uri, origin, backend)
    except Stop:
        pass
    except ConfigError as e:  # a setting read on the way (a login's, a timeout's) is wrong
        p.add("config.setting", "config", "fail", "config-invalid", str(e),
              "fix or unset the variable named above")
    except Exception as e:
        log.debug("the doctor failed unexpectedly", exc_info=True)
        p.unexpected(p.checks[-1].layer if p.checks else "config", e)
    return p.report(uri, backend, time.monotonic() - started)


def _diagnose(p: Probe, uri: str, origin: str, backend: str | None) -> None:
    if backend == "http":
        from cloudtrack.doctor import http

        http.diagnose(p, uri, origin)
        return
    if backend in ("databricks", "azureml"):
        importlib.import_module(f"cloudtrack.doctor.{backend}").diagnose(p, uri, origin)
        return
    if backend is None:
        scheme = split_scheme(uri)
        note = {
            "sqlite": " (MLflow's own SQL store: nothing for cloudtrack to diagnose)",
            "databricks": " (Databricks: MLflow's own Databricks client)",
        }.get(scheme, "")
        fix = ("set MLFLOW_TRACKING_URI (or pass the URI) to a cloudtrack store — "
               + "; ".join(form for _, (_, form) in SCHEMES.items())
               + " — or to an MLflow server's http(s):// URL")
        suggestion = suggest_uri(redact_uri(uri))
        if suggestion:
            where = f"`cloudtrack doctor {shlex.quote(suggestion)}`" \
                if origin == "the command line" else f"{suggestion} in {origin.removeprefix('env:')}"
            fix = f"if {scheme}: is a typo, use {where}; otherwise {fix}"
        p.fail("config.uri", "config", "config-invalid",
               f"{redact_uri(uri)} (from {origin}) has the scheme {scheme!r}{note}; the doctor "
               f"diagnoses {', '.join(s + ':' for s in supported_schemes())} URIs and plain paths"
               + (f". Did you mean {suggestion}?" if suggestion else ""), fix)
    try:
        config = resolve(uri, p.environ)
    except ConfigError as e:
        p.fail("config.uri", "config", "config-invalid", f"{e} (the URI came from {origin})",
               _config_fix(str(e)))
    except CredentialsUnavailable as e:
        # resolve() reads the store's `cloudtrack login`: a locked or missing keyring.
        p.fail("auth.login", "auth", "credentials-missing",
               f"the `cloudtrack login` for {redact_uri(uri)} cannot be read: {e}",
               "unlock or start the keyring (`cloudtrack whoami` shows which one is in use), "
               f"or log in again: `cloudtrack login {redact_uri(uri)}`")
    diagnose_store(p, config, origin)


def diagnose_store(p: Probe, config: StoreConfig, origin: str = "") -> None:
    """The checks of a resolved store, from its configuration on (also used for an MLflow
    server's artifact store)."""
    where = config.container if config.backend == "file" else \
        f"container {config.container!r}, prefix {config.prefix or '(none)'!r}"
    p.ok("config.uri", "config", f"{config.backend} store {config.display_uri}"
         + (f" (from {origin})" if origin else "") + f": {where}")
    try:
        spec = backend(config.backend)
    except ConfigError as e:
        p.fail("config.backend", "config", "config-invalid", str(e),
               "use one of the known backends")
    try:
        blobs_class(config.backend)
    except MissingDependencyError as e:
        p.fail("config.extra", "config", "dependency-missing", str(e),
               f"run: {spec.install_hint()}")
    p.ok("config.extra", "config", f"the {config.backend} backend is installed"
         + (f" (extra [{spec.extra}])" if spec.extra else ""))
    p.ok("config.settings", "config", describe_settings(config))
    _login_checks(p, config)
    importlib.import_module(spec.doctor).diagnose(p, config)


def _login_checks(p: Probe, config: StoreConfig) -> None:
    """Which `cloudtrack login` covers the store, where it is kept, and whether the keys it
    holds go where it was saved for."""
    from cloudtrack.credentials import vault

    login = config.setting("login")
    if login is None:
        try:
            saved = vault.Vault(p.environ).match(config.display_uri)
        except ConfigError:
            saved = None
        outranking = vault.environment_outranks(config.backend, p.environ)
        if saved is not None and outranking:
            p.ok("config.login", "config",
                 f"the `cloudtrack login` for {saved.target} is not used: "
                 f"{', '.join(outranking)} set in the environment outrank(s) it")
        return
    where = login.source.split(":", 1)[0]
    if where == "keyring":
        info = vault.keyring_info()
        p.ok("config.login", "config", f"credentials from `cloudtrack login {login.value}`, "
             f"kept in the OS keyring ({info.name})")
    else:
        p.warn("config.login", "config", "config-invalid",
               f"credentials from `cloudtrack login {login.value}`, kept in a plain file "
               f"({vault.Vault(p.environ).insecure_path}, --insecure-storage)",
               "log in again where a secure keyring runs, to keep the secret encrypted")
    saved_endpoint = config.setting("login_endpoint_url")
    used = config.get("endpoint_url")
    if saved_endpoint is not None and used and \
            str(saved_endpoint.value).rstrip("/") != str(used).rstrip("/"):
        source = config.setting("endpoint_url")
        p.fail("consistency.login-endpoint", "consistency", "endpoint-mismatch",
               f"the keys of `cloudtrack login {login.value}` were saved for "
               f"{redact_uri(str(saved_endpoint.value))}, but requests go to "
               f"{redact_uri(str(used))} (from {source.source if source else '?'}), which will "
               "refuse them or is not the store you meant",
               f"unset {source.source.removeprefix('env:') if source else 'the endpoint variable'}"
               ", or log in again with the endpoint you mean")


def _config_fix(message: str) -> str:
    m = re.search(r"endpoint '([^']*)' from env:(\w+)", message)
    if m:
        value = m.group(1)
        example = value if "://" in value else f"http://{value}"
        return (f"set {m.group(2)} to a full URL with scheme and host, e.g. "
                f"{m.group(2)}={example}")
    if "unknown scheme" in message:
        return "use one of the schemes listed above"
    return "fix the URI or the variable named above; `cloudtrack config URI` shows how it resolves"
