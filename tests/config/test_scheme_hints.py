"""A misspelt scheme is answered with the scheme it most likely misspells, wherever a store URI
is resolved (:func:`cloudtrack.config.resolve`: the plugin, ``cloudtrack config``, ``flush``,
``check``; the doctor and ``migrate`` say the same); a known or unlike scheme is not."""

from __future__ import annotations

import pytest

from cloudtrack.config import closest_scheme, resolve, suggest_uri
from cloudtrack.errors import ConfigError
from cloudtrack.migrate.endpoints import classify


@pytest.mark.parametrize(("typed", "meant"), [
    ("s4", "s3"), ("S4", "s3"), ("s3a", "s3"), ("3s", "s3"), ("gcs", "gs"), ("gc", "gs"),
    ("wasb", "wasbs"), ("wsabs", "wasbs"), ("abfs", "abfss"), ("htps", "https"),
    ("htp", "http"), ("sqllite", "sqlite"), ("postgres", "postgresql"),
])
def test_a_close_misspelling_names_the_scheme(typed: str, meant: str) -> None:
    assert closest_scheme(typed) == meant


@pytest.mark.parametrize("scheme", ["s3", "gs", "file", "https", "sqlite", "databricks", "ftp",
                                    "runs", "zzz", "azure", ""])
def test_a_known_or_unlike_scheme_names_none(scheme: str) -> None:
    assert closest_scheme(scheme) is None


def test_resolve_asks_did_you_mean_without_the_password() -> None:
    with pytest.raises(ConfigError) as e:
        resolve("s4://bucket/x", {})
    assert "unknown scheme 's4' in 's4://bucket/x' (did you mean 's3://bucket/x'?)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve("htps://user:hunter2-secret@host/x", {})
    assert "did you mean 'https://user:***@host/x'?" in str(e.value)
    assert "hunter2-secret" not in str(e.value)
    assert suggest_uri("no scheme here") is None


def test_migrate_asks_too() -> None:
    with pytest.raises(ConfigError) as e:
        classify("gcs://bucket/x")
    assert "did you mean 'gs://bucket/x'?" in str(e.value)
