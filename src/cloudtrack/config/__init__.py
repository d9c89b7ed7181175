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

import collections
import dataclasses
import os
from collections.abc import Mapping

from cloudtrack.config.backends import (
    BACKENDS,
    SCHEMES,
    BackendSpec,
    backend,
    backend_for_scheme,
    closest_scheme,
    suggest_uri,
)
from cloudtrack.config.common import local_path, parse_connection_string, split_scheme
from cloudtrack.config.model import Backend, EnvVar, Setting, StoreConfig
from cloudtrack.config.redaction import redact, redact_uri
from cloudtrack.config.reference import reference_markdown
from cloudtrack.config.variables import VARIABLES
from cloudtrack.errors import ConfigError

__all__ = ["BACKENDS", "SCHEMES", "VARIABLES", "Backend", "BackendSpec", "EnvVar", "Setting",
           "StoreConfig", "backend", "closest_scheme", "known_schemes", "local_path",
           "parse_connection_string", "redact", "redact_uri", "reference_markdown", "resolve",
           "split_scheme", "suggest_uri"]


def known_schemes() -> list[str]:
    return sorted(SCHEMES)


def resolve(uri: str, environ: Mapping[str, str] | None = None) -> StoreConfig:
    """Resolve a store URI with ``environ`` (default: the process environment).

    Raises :class:`ConfigError` for a malformed URI (showing the expected form) or an unknown
    scheme (listing the known ones, and asking whether it misspells one: ``s4://`` -> ``s3://``).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("empty store URI; expected one of: "
                          + "; ".join(form for _, form in SCHEMES.values()))
    uri = uri.strip()
    env: Mapping[str, str] = os.environ if environ is None else environ
    scheme = split_scheme(uri)
    spec = backend_for_scheme(scheme)
    if spec is None:
        suggestion = suggest_uri(redact_uri(uri))
        raise ConfigError(
            f"unknown scheme {scheme!r} in {redact_uri(uri)!r}"
            + (f" (did you mean {suggestion!r}?)" if suggestion else "")
            + "; cloudtrack stores take "
            + ", ".join(f"{s}://" if s != "file" else "file: or a plain path"
                        for s in known_schemes())
            + " (http(s):// is MLflow's own REST client)"
        )
    config = spec.resolve(uri, env)
    config, env = _with_login(spec, uri, env, config)
    return dataclasses.replace(config, tls_verify=spec.trust.verify(env))


#: Endpoint variables: set, they outrank the endpoint a login saved.
_ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def _with_login(spec: BackendSpec, uri: str, env: Mapping[str, str],
                config: StoreConfig) -> tuple[StoreConfig, Mapping[str, str]]:
    """``config`` resolved again with the store's ``cloudtrack login`` (the keyring), when no
    credential variable outranks it: environment variables come before a login, a login before
    the SDKs' own chains.  Every value it gives is recorded with the login as its source."""
    if spec.name not in ("s3", "gcs", "azure"):
        return config, env
    from cloudtrack.credentials import vault

    if not vault.keyring_enabled(env):
        return config, env
    if vault.environment_outranks(spec.name, env):
        return config, env
    login = vault.Vault(env).find(uri)
    if login is None or vault.backend_of(login.target) != spec.name:
        return config, env
    given = {k: v for k, v in login.store_environ().items()
             if not (k in _ENDPOINT_VARIABLES and any(env.get(e) for e in _ENDPOINT_VARIABLES))}
    merged: Mapping[str, str] = collections.ChainMap(given, env)  # type: ignore[arg-type]
    again = spec.resolve(uri, merged)
    sources = {f"env:{name}" for name in given}
    settings = tuple(dataclasses.replace(s, source=login.source) if s.source in sources else s
                     for s in again.settings)
    settings += (Setting("login", login.target, login.source),)
    saved = login.public.get("endpoint_url")
    if saved and "MLFLOW_S3_ENDPOINT_URL" not in given:
        # A variable names the endpoint: the login's keys go there, not where it was saved
        # for (the doctor calls that an endpoint mismatch).
        settings += (Setting("login_endpoint_url", saved, login.source),)
    return dataclasses.replace(again, settings=settings), merged
