"""``file:`` URIs and plain paths: the absolute directory, and the settings every store has."""

from __future__ import annotations

from collections.abc import Mapping

from cloudtrack.config.common import common_settings, local_path
from cloudtrack.config.model import StoreConfig
from cloudtrack.config.redaction import redact_uri


def resolve_file(uri: str, environ: Mapping[str, str]) -> StoreConfig:
    root = local_path(uri)
    return StoreConfig("file", "file", root, "", redact_uri(uri) if uri.startswith("file:")
                       else uri, tuple(common_settings(environ)), environ)
