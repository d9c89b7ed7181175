"""What every backend's resolver shares: URI checks, reading variables with their sources,
and the settings every store has (timeouts, attempts, strict mode)."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping

from cloudtrack.config.model import EnvVar, Setting
from cloudtrack.config.redaction import redact_uri
from cloudtrack.config.variables import (
    CLOUDTRACK_CONNECT_TIMEOUT,
    CLOUDTRACK_MAX_ATTEMPTS,
    CLOUDTRACK_READ_TIMEOUT,
    CLOUDTRACK_RETRY_DEADLINE,
    CLOUDTRACK_STRICT,
)
from cloudtrack.errors import ConfigError

#: S3 and GCS bucket names.
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")


def malformed(uri: str, scheme: str, why: str) -> ConfigError:
    """The error for a malformed store URI: what is wrong, and the form the scheme takes."""
    from cloudtrack.config.backends import uri_form  # the table imports the resolvers

    return ConfigError(f"malformed store URI {redact_uri(uri)!r}: {why}; expected "
                       f"{uri_form(scheme)}")


def split_scheme(uri: str) -> str:
    """The URI's scheme, or ``file`` for a plain path."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return uri.split(":", 1)[0].lower()
    return "file"


def split_store_uri(uri: str, scheme: str) -> urllib.parse.SplitResult:
    """The parts of a cloud store URI, which takes no query and no fragment."""
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError as e:
        raise malformed(uri, scheme, str(e)) from None
    if parsed.query or parsed.fragment:
        raise malformed(uri, scheme, "a query or fragment is not part of a store URI "
                        "(quote '?' and '#' in the prefix as %3F and %23)")
    return parsed


def clean_prefix(uri: str, scheme: str, path: str) -> str:
    """The key prefix of a URI path, refusing segments that could climb out of it."""
    prefix = path.strip("/")
    if prefix:
        for part in prefix.split("/"):
            if part in ("", ".", ".."):
                raise malformed(uri, scheme, "the prefix has an empty, '.' or '..' segment")
            if "%2e" in part.lower() and urllib.parse.unquote(part) in (".", ".."):
                raise malformed(uri, scheme, "the prefix has an encoded '.' or '..' segment")
    return prefix


def local_path(uri: str) -> str:
    """The absolute directory a ``file:`` URI or plain path names."""
    if uri.startswith("file:"):
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc not in ("", "localhost"):
            raise malformed(uri, "file", f"host {parsed.netloc!r} is not supported")
        path = urllib.parse.unquote(parsed.path)
        if not path:
            raise malformed(uri, "file", "no path")
    else:
        path = uri
    return os.path.abspath(os.path.expanduser(path))


def read(environ: Mapping[str, str], var: EnvVar) -> str | None:
    """The variable's value; unset and empty are the same."""
    value = environ.get(var.name)
    return value if value not in (None, "") else None


def first(environ: Mapping[str, str], name: str, *candidates: EnvVar,
          secret: bool = False) -> Setting | None:
    """The setting ``name`` from the first of ``candidates`` that is set, with its source."""
    for var in candidates:
        value = read(environ, var)
        if value is not None:
            return Setting(name, value, f"env:{var.name}", secret or var.secret)
    return None


def or_default(setting: Setting | None, name: str, source: str = "sdk-default") -> Setting:
    """``setting``, or an unset one saying who decides instead."""
    return setting if setting is not None else Setting(name, None, source)


def endpoint(uri: str, s: Setting | None) -> Setting | None:
    """``s`` when it holds an http(s) URL with a host; a ConfigError naming its source if not."""
    if s is None or s.value is None:
        return s
    value = str(s.value)
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"endpoint {redact_uri(value)!r} from {s.source} for {redact_uri(uri)!r} has no "
            "http:// or https:// scheme or no host; set it like https://host:port"
        )
    return s


def truthy(value: str, name: str) -> bool:
    """A boolean variable's value; anything but the usual spellings is an error."""
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false (or on/off, "
                      "yes/no, 1/0)")


def bool_env(environ: Mapping[str, str], var: EnvVar) -> bool | None:
    value = read(environ, var)
    return None if value is None else truthy(value, var.name)


def _number(environ: Mapping[str, str], var: EnvVar, kind: type) -> Setting:
    raw = read(environ, var)
    name = var.name.removeprefix("CLOUDTRACK_").lower()
    if raw is None:
        return Setting(name, kind(var.default), "default")
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{var.name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{var.name}={raw!r} must be positive")
    return Setting(name, value, f"env:{var.name}")


def common_settings(environ: Mapping[str, str]) -> list[Setting]:
    """The settings every store has, whatever its backend."""
    strict = bool_env(environ, CLOUDTRACK_STRICT)
    return [
        Setting("strict", bool(strict), "env:CLOUDTRACK_STRICT" if strict is not None else "default"),
        _number(environ, CLOUDTRACK_CONNECT_TIMEOUT, float),
        _number(environ, CLOUDTRACK_READ_TIMEOUT, float),
        _number(environ, CLOUDTRACK_MAX_ATTEMPTS, int),
        _number(environ, CLOUDTRACK_RETRY_DEADLINE, float),
    ]


def parse_connection_string(value: str) -> dict[str, str]:
    """``Key=Value;…`` pairs of an Azure connection string, keys as written."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError("AZURE_STORAGE_CONNECTION_STRING is malformed: expected Key=Value;… pairs")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out
