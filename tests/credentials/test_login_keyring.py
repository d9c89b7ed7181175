"""``cloudtrack login`` with a real Secret Service (gnome-keyring on a private D-Bus,
backends/keyring): the secret lives in the keyring and nowhere else, unchanged MLflow code logs
with it on every cloud backend and through a token server whose tokens live five seconds, and a
locked keyring fails fast with a message.  Every test asserts its secrets never appear in what
was printed."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backends.keyring import SecretService
from cloudtrack.credentials.vault import canonical
from tests.credentials.common import LOGGING, assert_no_secret, child_env, cli, python
from tests.credentials.test_login_stores import logged, login_args
from tests.fixtures.services import Store


def _logged_in(store: Store, secret_service: SecretService, tmp_path: Path,
               **extra: str) -> tuple[dict[str, str], str, list[str]]:
    """A child environment with the keyring, and ``store``'s login made in it; its secret
    and the login's arguments."""
    args, secret, keep, _ = login_args(store)
    env = child_env(tmp_path, {**keep, **secret_service.env, **extra})
    assert cli(env, "login", store.uri, *args, stdin=secret).returncode == 0
    return env, secret, list(args)

def test_the_secret_lives_in_the_keyring_and_unchanged_code_logs_with_it(
        cloud: Store, secret_service: SecretService, tmp_path: Path) -> None:
    store = cloud
    args, secret, keep, secrets = login_args(store)
    env = child_env(tmp_path, {**keep, **secret_service.env})
    done = cli(env, "login", store.uri, *args, "--json", stdin=secret)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["storage"] == "keyring" and "SecretService" in result["keyring"]
    folder = tmp_path / ".config" / "cloudtrack"
    assert not (folder / "credentials.json").exists()
    index = (folder / "logins.json").read_text()
    kept = secret_service.get_secret("cloudtrack", canonical(store.uri))
    assert kept is not None
    for s in [*secrets, secret]:
        if s:
            assert s not in index
            assert s in kept or s in json.loads(kept).get("key_json", "")

    run = python({**env, "MLFLOW_TRACKING_URI": store.uri}, LOGGING)
    assert run.returncode == 0, run.stderr[-3000:]
    params, metrics = logged(store, run.stdout.split()[-1])
    assert params == {"lr": "0.01"} and metrics == {"loss": pytest.approx(1 / 3)}

    who = cli(env, "whoami", "--json")
    assert who.returncode == 0, who.stdout + who.stderr
    report = json.loads(who.stdout)
    assert report["keyring"]["secure"] is True
    row = report["targets"][0]
    assert row["login"] == store.uri and "error" not in row
    assert_no_secret([*secrets, secret], done.stdout, done.stderr, run.stdout, run.stderr,
                     who.stdout, who.stderr)

    assert cli(env, "logout", store.uri).returncode == 0
    assert secret_service.get_secret("cloudtrack", canonical(store.uri)) is None


def test_a_locked_keyring_fails_fast_and_says_so(
        s3_store: Store, secret_service: SecretService, tmp_path: Path) -> None:
    """The keyring is the same for every backend."""
    store = s3_store
    env, secret, args = _logged_in(store, secret_service, tmp_path)
    secret_service.lock()
    try:
        t0 = time.monotonic()
        run = python({**env, "MLFLOW_TRACKING_URI": store.uri}, LOGGING)
        took = time.monotonic() - t0
        assert run.returncode != 0
        assert "keyring is locked" in run.stderr and "unlock" in run.stderr
        assert took < 60
        again = cli(env, "login", store.uri, *args, stdin=secret)
        assert again.returncode == 1 and "locked" in again.stderr
        who = cli(env, "whoami", store.uri, "--json")
        assert who.returncode == 1 and "locked" in json.loads(who.stdout)["targets"][0]["error"]
        doctor = cli(env, "doctor", store.uri, "--json")
        assert doctor.returncode == 1
        check = {c["id"]: c for c in json.loads(doctor.stdout)["checks"]}["auth.login"]
        assert check["cause"] == "credentials-missing" and "locked" in check["summary"]
        assert_no_secret([secret], run.stdout, run.stderr, again.stdout, again.stderr,
                         who.stdout, doctor.stdout, doctor.stderr)
    finally:
        secret_service.unlock()


#: Logs one metric point about every 50 ms for ``seconds`` through MlflowClient, then reads the
#: history back; prints the count logged and the count read.
_LONG_JOB = textwrap.dedent("""
    import sys, time
    from mlflow import MlflowClient
    seconds = float(sys.argv[1])
    client = MlflowClient()
    exp = client.create_experiment("long-job")
    run = client.create_run(exp)
    rid, n, t0 = run.info.run_id, 0, time.time()
    while time.time() - t0 < seconds:
        client.log_metric(rid, "loss", 1.0 / (n + 1), step=n)
        n += 1
        time.sleep(0.05)
    client.set_terminated(rid)
    print(n, len(client.get_metric_history(rid, "loss")))
""")


def test_a_minute_long_job_outlives_10_second_tokens_and_a_revoked_one(
        secret_service: SecretService, token_gate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gate = token_gate(lifetime=10.0)
    env = child_env(tmp_path, secret_service.env)
    done = cli(env, "login", gate.url, "--token-command", gate.token_command_line())
    assert done.returncode == 0, done.stderr
    gate.reset_stats()
    script = tmp_path / "job.py"
    script.write_text(_LONG_JOB)
    # Well into the job, the server revokes every token (a new signing key): the next request
    # is refused with 401, a new token is fetched and the request sent again.
    stop = threading.Event()

    def revoke_once_busy() -> None:
        # Just after a token was issued, so that no fetch is under way (a token fetched while
        # the key changes is already a new-key token, and nothing would be refused).
        issued = None
        while not stop.wait(0.05):
            stats = gate.stats()
            if stats.forwarded < 100:
                continue
            if issued is None:
                issued = stats.issued
            elif stats.issued > issued:
                time.sleep(0.5)
                gate.revoke()
                return

    revoker = threading.Thread(target=revoke_once_busy, daemon=True)
    revoker.start()
    try:
        import subprocess
        import sys

        job = subprocess.run([sys.executable, str(script), "60"],
                             env={**env, "MLFLOW_TRACKING_URI": gate.url}, capture_output=True,
                             text=True, timeout=240, check=False)
    finally:
        stop.set()
    assert job.returncode == 0, job.stderr[-3000:]
    counts = [line for line in job.stdout.splitlines() if line.replace(" ", "").isdigit()]
    sent, read = map(int, counts[-1].split())
    assert sent == read and sent > 400
    stats = gate.stats()
    assert stats.issued >= 6, stats  # a minute of 10-second tokens, fetched ahead of expiry
    assert stats.unauthorized["expired"] == 0, stats
    assert stats.unauthorized["invalid"] >= 1, stats  # the revocation, answered once
    assert stats.unauthorized["invalid"] <= 3, stats
    who = cli(env, "whoami", gate.url, "--json")
    row = json.loads(who.stdout)["targets"][0]
    assert row["identity"] == gate.subject and row["renews"] is True and row["expires"]
    assert_no_secret([gate.client_secret], done.stdout, done.stderr, job.stdout, job.stderr,
                     who.stdout)
    assert "eyJ" not in job.stderr + who.stdout  # no token printed


def test_a_keyring_that_does_not_answer_costs_its_timeout_not_a_hang(
        s3_store: Store, secret_service: SecretService, tmp_path: Path) -> None:
    """The Secret Service stopped (SIGSTOP: it holds its D-Bus name and answers nothing, as a
    wedged daemon does): every keyring call gives up after CLOUDTRACK_KEYRING_TIMEOUT."""
    store = s3_store
    env, secret, args = _logged_in(store, secret_service, tmp_path,
                                   CLOUDTRACK_KEYRING_TIMEOUT="3")
    daemon = secret_service.keyring_pid
    os.kill(daemon, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        run = python({**env, "MLFLOW_TRACKING_URI": store.uri}, LOGGING, timeout=120)
        took = time.monotonic() - t0
        assert run.returncode != 0
        assert "did not answer within 3 s" in run.stderr
        assert took < 60, took
        t0 = time.monotonic()
        again = cli(env, "login", store.uri, *args, stdin=secret, timeout=120)
        assert again.returncode == 1 and "did not answer within 3 s" in again.stderr
        assert time.monotonic() - t0 < 60
        assert_no_secret([secret], run.stdout, run.stderr, again.stdout, again.stderr)
    finally:
        os.kill(daemon, signal.SIGCONT)


def test_whoami_says_a_secret_is_set_and_where_from_never_any_of_it(
        s3_store: Store, secret_service: SecretService, tmp_path: Path) -> None:
    """A keyring login is labelled as one, and neither whoami's text nor its JSON shows a
    character of the secret (the last four used to be shown: much of a short password)."""
    store = s3_store
    env, secret, _ = _logged_in(store, secret_service, tmp_path)
    text = cli(env, "whoami", store.uri)
    as_json = cli(env, "whoami", store.uri, "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stdout + text.stderr
    row = json.loads(as_json.stdout)["targets"][0]
    assert row["source"] == f"keyring:{store.uri}"
    assert row["secret"].endswith(f"secret access key set (from keyring:{store.uri})")
    assert f"source     keyring:{store.uri}" in text.stdout
    # The same credentials from the environment: named as such.
    from_env = cli({**env, **{k: store.env[k] for k in ("AWS_ACCESS_KEY_ID",
                                                        "AWS_SECRET_ACCESS_KEY")}},
                   "whoami", store.uri, "--json")
    env_row = json.loads(from_env.stdout)["targets"][0]
    assert env_row["secret"].endswith("secret access key set (from env:AWS_SECRET_ACCESS_KEY)")
    # An MLflow server's password from the environment (whoami reads no server for it).
    server = cli({**env, "MLFLOW_TRACKING_USERNAME": "bob",
                  "MLFLOW_TRACKING_PASSWORD": "hunter2-short"}, "whoami",
                 "http://127.0.0.1:9", "--json")
    server_row = json.loads(server.stdout)["targets"][0]
    assert server_row["secret"] == "password set (from env:MLFLOW_TRACKING_PASSWORD)"
    for out in (text.stdout, as_json.stdout, from_env.stdout):
        assert secret[-4:] not in out and secret[:4] not in out
    assert "hort" not in server.stdout and "hunter2" not in server.stdout


def test_a_keyring_setting_that_is_no_boolean_is_refused_not_taken_for_on(
        s3_store: Store, secret_service: SecretService, tmp_path: Path) -> None:
    store = s3_store
    env, secret, _ = _logged_in(store, secret_service, tmp_path)
    typo = python({**env, "MLFLOW_TRACKING_URI": store.uri, "CLOUDTRACK_KEYRING": "of"},
                  LOGGING)
    assert typo.returncode != 0
    assert "CLOUDTRACK_KEYRING='of' is not a boolean" in typo.stderr, typo.stderr[-2000:]
    who = cli({**env, "CLOUDTRACK_KEYRING": "of"}, "whoami", store.uri, "--json")
    assert who.returncode == 1
    assert "CLOUDTRACK_KEYRING='of'" in json.loads(who.stdout)["targets"][0]["error"]
    # `off` still means off: the login is ignored, and nothing else signs.
    off = python({**env, "MLFLOW_TRACKING_URI": store.uri, "CLOUDTRACK_KEYRING": "off"},
                 LOGGING)
    assert off.returncode != 0 and "Unable to locate credentials" in off.stderr, off.stderr[-2000:]
    assert_no_secret([secret], typo.stdout, typo.stderr, who.stdout, off.stderr)
