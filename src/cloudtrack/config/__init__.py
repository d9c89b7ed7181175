"""Parse a store URI and resolve it, with the environment, into one frozen :class:`StoreConfig`.

This is the single place where cloudtrack decides which bucket, prefix, endpoint, region,
account, credential source and TLS trust a store uses, and it records where each value came
from.  The blob layer, the credential providers, the doctor and the migration all call
:func:`resolve`, so the doctor tests exactly what a logging process would use.

The package: :mod:`~cloudtrack.config.model` (the dataclasses), :mod:`~.variables` (every
variable read, declared once), :mod:`~.redaction`, :mod:`~.common` (what the resolvers share),
one resolver per backend (:mod:`~.s3`, :mod:`~.gcs`, :mod:`~.azure`, :mod:`~.local`),
:mod:`~.tls` (how clients verify TLS) and :mod:`~.backends`, the one backend table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from cloudtrack.config.backends import BACKENDS, SCHEMES, BackendSpec, backend, backend_for_scheme
from cloudtrack.config.common import local_path, parse_connection_string, split_scheme
from cloudtrack.config.model import Backend, EnvVar, Setting, StoreConfig
from cloudtrack.config.redaction import redact, redact_uri
from cloudtrack.config.reference import reference_markdown
from cloudtrack.config.variables import VARIABLES
from cloudtrack.errors import ConfigError

__all__ = ["BACKENDS", "SCHEMES", "VARIABLES", "Backend", "BackendSpec", "EnvVar", "Setting",
           "StoreConfig", "backend", "known_schemes", "local_path", "parse_connection_string",
           "redact", "redact_uri", "reference_markdown", "resolve", "split_scheme"]


def known_schemes() -> list[str]:
    return sorted(SCHEMES)


def resolve(uri: str, environ: Mapping[str, str] | None = None) -> StoreConfig:
    """Resolve a store URI with ``environ`` (default: the process environment).

    Raises :class:`ConfigError` for a malformed URI (showing the expected form) or an unknown
    scheme (listing the known ones).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("empty store URI; expected one of: "
                          + "; ".join(form for _, form in SCHEMES.values()))
    uri = uri.strip()
    env: Mapping[str, str] = os.environ if environ is None else environ
    scheme = split_scheme(uri)
    spec = backend_for_scheme(scheme)
    if spec is None:
        raise ConfigError(
            f"unknown scheme {scheme!r} in {redact_uri(uri)!r}; cloudtrack stores take "
            + ", ".join(f"{s}://" if s != "file" else "file: or a plain path"
                        for s in known_schemes())
            + " (http(s):// is MLflow's own REST client)"
        )
    config = spec.resolve(uri, env)
    return dataclasses.replace(config, tls_verify=spec.trust.verify(env))
