"""The credential helpers the doctor reports from (a SAS token's fields, a JWT's claims), and what
the vault accepts: login targets, the CLOUDTRACK_KEYRING setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtrack.credentials import decode_jwt
from cloudtrack.credentials.azure import parse_sas
from cloudtrack.credentials.vault import (
    DEFAULT_TIMEOUT,
    backend_of,
    canonical,
    keyring_enabled,
    keyring_timeout,
)
from cloudtrack.errors import ConfigError
from tests.credentials.common import child_env, cli


def test_sas_fields_and_jwt_claims() -> None:
    sas = parse_sas("?sv=2024-01-01&se=2030-01-01T00%3A00%3A00Z&sr=c&sp=rl&sig=abc%2Bdef")
    assert sas["sp"] == "rl" and sas["se"] == "2030-01-01T00:00:00Z" and sas["sig"] == "abc+def"
    from backends.azure.service import mint_token

    claims = decode_jwt(mint_token("wrong-audience"))
    assert claims["aud"] == "https://management.azure.com" and claims["tid"]
    assert decode_jwt("not-a-jwt") == {}


def test_login_targets_in_messages_include_abfss_and_a_misspelt_scheme_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        backend_of("s4://bucket/x")
    assert "abfss://container@account.dfs.core.windows.net" in str(e.value)
    assert "did you mean 's3://bucket/x'" in str(e.value)
    assert backend_of("abfss://c@acct.dfs.core.windows.net/p") == "azure"
    with pytest.raises(ConfigError) as e:
        canonical("abfss://c@nowhere/p")
    assert "abfss://<container>@<account>.dfs.<suffix>" in str(e.value)


def test_the_keyring_setting_is_a_boolean() -> None:
    assert keyring_enabled({}) is True
    assert keyring_enabled({"CLOUDTRACK_KEYRING": "on"}) is True
    assert keyring_enabled({"CLOUDTRACK_KEYRING": "OFF"}) is False
    with pytest.raises(ConfigError, match="CLOUDTRACK_KEYRING='of' is not a boolean"):
        keyring_enabled({"CLOUDTRACK_KEYRING": "of"})


def test_the_keyring_timeout_is_a_positive_number_of_seconds() -> None:
    """A wrong value is refused, naming the variable: before, it quietly meant 5 s (and
    ``inf`` a wait without end)."""
    assert keyring_timeout({}) == DEFAULT_TIMEOUT
    assert keyring_timeout({"CLOUDTRACK_KEYRING_TIMEOUT": " 2.5 "}) == 2.5
    assert keyring_timeout({"CLOUDTRACK_KEYRING_TIMEOUT": "0.01"}) == 0.1
    for wrong in ("abc", "0", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"CLOUDTRACK_KEYRING_TIMEOUT={wrong!r} is not a "):
            keyring_timeout({"CLOUDTRACK_KEYRING_TIMEOUT": wrong})


def test_while_a_keyring_call_still_waits_the_next_ones_fail_at_once() -> None:
    """A keyring that does not answer costs one timeout, not one per call (``whoami`` waited
    one per login).  The keyring here is a call that waits on an event, standing in for a
    stopped Secret Service (the real one, stopped, is in test_login_keyring.py)."""
    import threading
    import time

    from cloudtrack.credentials.vault import KeyringUnavailable, bounded

    answer = threading.Event()
    with pytest.raises(KeyringUnavailable, match=r"did not answer within 0\.2 s while reading"):
        bounded(answer.wait, 0.2, "reading a login")
    t0 = time.monotonic()
    for _ in range(5):
        with pytest.raises(KeyringUnavailable, match="an earlier call, still waiting"):
            bounded(lambda: 1, 0.2, "reading another login")
    assert time.monotonic() - t0 < 0.2
    answer.set()  # it answers at last: the next call is tried again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert bounded(lambda: 42, 0.2, "reading a login") == 42
            break
        except KeyringUnavailable:
            time.sleep(0.05)
    else:
        raise AssertionError("the keyring was never asked again")


def test_a_login_refuses_the_options_of_another_kind_of_target(tmp_path: Path) -> None:
    """``login s3://… --username x`` used to ignore ``--username`` and ask for the access key
    id; an option for another kind of target is a usage error naming it and what it is for.
    A default left alone (``--azure-credential``) is not counted."""
    env = child_env(tmp_path)
    for args, said in (
            (["s3://bucket", "--username", "x"],
             "--username is for an MLflow server (http(s)://), not for s3://: leave it out"),
            (["http://127.0.0.1:1", "--access-key-id", "k", "--key-file", "f.json"],
             "--access-key-id is for s3://; --key-file is for gs://, not for an MLflow server"),
            (["gs://bucket", "--azure-credential", "sas"],
             "--azure-credential is for wasbs:// or abfss://, not for gs://"),
            (["wasbs://c@acct.blob.core.windows.net", "--token"],
             "--token is for an MLflow server (http(s)://), not for wasbs:// or abfss://")):
        done = cli(env, "login", *args, "--no-check")
        assert done.returncode == 2, done
        assert said in done.stderr, done.stderr
        assert not (tmp_path / ".config" / "cloudtrack").exists()
    # An option for the target's own kind goes on to what else it needs.
    done = cli(env, "login", "gs://bucket")
    assert done.returncode == 2 and "needs --key-file" in done.stderr, done
