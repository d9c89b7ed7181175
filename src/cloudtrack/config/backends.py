"""The one backend table: every backend once, with what each layer needs to find its part.

A new backend is one row here, one module in each layer that has backends (``config/``,
``credentials/``, ``blobs/``, ``doctor/``) and one extra in ``pyproject.toml``.  Backend
selection (:func:`cloudtrack.config.resolve`, :func:`cloudtrack.blobs.open_blobs`), the
install hints, the doctor's list of supported schemes, the "did you mean" of a misspelt scheme
(:func:`closest_scheme`) and the README's configuration reference all read :data:`BACKENDS`.  The parts that need an SDK are named as ``module:Name``
and imported on first use, so importing cloudtrack imports no SDK.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from cloudtrack.config import tls
from cloudtrack.config.azure import resolve_azure
from cloudtrack.config.gcs import resolve_gcs
from cloudtrack.config.local import resolve_file
from cloudtrack.config.model import StoreConfig
from cloudtrack.config.s3 import resolve_s3
from cloudtrack.errors import ConfigError, MissingDependencyError

#: ``resolver(uri, environ)``: the store a URI of the backend names.
Resolver = Callable[[str, Mapping[str, str]], StoreConfig]


@dataclass(frozen=True)
class UriForm:
    scheme: str
    #: How a URI of this scheme is written: shown when one is malformed, and in the README.
    form: str


@dataclass(frozen=True)
class BackendSpec:
    """One backend: its URIs and, for each layer, where its part lives."""

    name: str
    uris: tuple[UriForm, ...]
    resolve: Resolver
    #: ``module:Class`` of its :class:`~cloudtrack.blobs.Blobs`.
    blobs: str
    #: ``module:Class`` of its credential provider (:mod:`cloudtrack.credentials`).
    credentials: str
    #: The module of ``cloudtrack doctor`` that diagnoses it.
    doctor: str
    #: The pip extra that installs its SDK, or None when it needs nothing.
    extra: str | None
    #: How its clients verify TLS.
    trust: tls.Trust

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(u.scheme for u in self.uris)

    def install_hint(self) -> str:
        return f"pip install 'cloudtrack[{self.extra}]'" if self.extra else "pip install cloudtrack"

    def load(self, part: Literal["blobs", "credentials"]) -> Any:
        """Import this backend's ``part``; a missing SDK names the extra to install."""
        module_name, name = getattr(self, part).split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise MissingDependencyError(
                f"the {self.name} backend needs a package that is not installed "
                f"({e.name or e}); run: {self.install_hint()}") from e
        return getattr(module, name)


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        "s3", (UriForm("s3", "s3://<bucket>[/<prefix>]"),), resolve_s3,
        blobs="cloudtrack.blobs.s3:S3Blobs", credentials="cloudtrack.credentials.s3:S3Credentials",
        doctor="cloudtrack.doctor.s3", extra="s3", trust=tls.S3),
    BackendSpec(
        "gcs", (UriForm("gs", "gs://<bucket>[/<prefix>]"),), resolve_gcs,
        blobs="cloudtrack.blobs.gcs:GcsBlobs", credentials="cloudtrack.credentials.gcs:GcsCredentials",
        doctor="cloudtrack.doctor.gcs", extra="gcs", trust=tls.GCS),
    BackendSpec(
        "azure", (UriForm("wasbs", "wasbs://<container>@<account>.blob.core.windows.net[/<prefix>]"),
                  UriForm("abfss", "abfss://<container>@<account>.dfs.core.windows.net[/<prefix>]")),
        resolve_azure,
        blobs="cloudtrack.blobs.azure:AzureBlobs",
        credentials="cloudtrack.credentials.azure:AzureCredentials",
        doctor="cloudtrack.doctor.azure", extra="azure", trust=tls.AZURE),
    BackendSpec(
        "file", (UriForm("file", "file:///<absolute path>, file:<relative path>, or a plain path"),),
        resolve_file,
        blobs="cloudtrack.blobs.local:LocalBlobs",
        credentials="cloudtrack.credentials.local:LocalCredentials",
        doctor="cloudtrack.doctor.local", extra=None, trust=tls.NONE),
)

_BY_NAME: Mapping[str, BackendSpec] = MappingProxyType({b.name: b for b in BACKENDS})
_BY_SCHEME: Mapping[str, BackendSpec] = MappingProxyType(
    {u.scheme: b for b in BACKENDS for u in b.uris})

#: scheme -> (backend, the URI form shown when one is malformed)
SCHEMES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {u.scheme: (b.name, u.form) for b in BACKENDS for u in b.uris})


def backend(name: str) -> BackendSpec:
    """The row of backend ``name`` (``StoreConfig.backend``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(_BY_NAME)}") from None


def backend_for_scheme(scheme: str) -> BackendSpec | None:
    return _BY_SCHEME.get(scheme)


def uri_form(scheme: str) -> str:
    return SCHEMES[scheme][1]


#: The schemes MLflow itself takes for tracking, registry and artifact URIs: a URI with one of
#: them is not a misspelling, and a misspelling of one is pointed at it.
MLFLOW_SCHEMES: tuple[str, ...] = (
    "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
    "uc", "mlflow-artifacts", "runs", "models", "dbfs", "hdfs", "ftp", "sftp")

#: How alike (difflib's ratio) a scheme must be to a known one to be taken for its misspelling:
#: low enough that a two-letter scheme one keystroke off (``s4``, ``gc``) qualifies.
CLOSE_ENOUGH = 0.5


def closest_scheme(scheme: str) -> str | None:
    """The known scheme ``scheme`` most likely misspells (``s4`` -> ``s3``, ``gcs`` -> ``gs``,
    ``wasb`` -> ``wasbs``, ``htps`` -> ``https``), or None when it is known or like none.

    Among equally alike ones, the one sharing the longest beginning wins, then cloudtrack's own
    schemes (``s4`` is as alike to ``s3`` as to ``gs``, and means ``s3``)."""
    scheme = scheme.lower()
    known = [*SCHEMES, *(s for s in MLFLOW_SCHEMES if s not in SCHEMES)]
    if not scheme or scheme in known:
        return None
    scored = [(difflib.SequenceMatcher(None, scheme, k).ratio(), _shared_start(scheme, k), -i, k)
              for i, k in enumerate(known)]
    ratio, _, _, best = max(scored)
    return best if ratio >= CLOSE_ENOUGH else None


def _shared_start(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def suggest_uri(uri: str) -> str | None:
    """``uri`` (as given, secrets and all: the caller redacts) with its scheme replaced by the
    one it most likely misspells, or None (:func:`closest_scheme`)."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return None
    best = closest_scheme(scheme)
    return f"{best}:{rest}" if best is not None else None
