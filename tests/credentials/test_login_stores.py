"""``cloudtrack login`` for stores: the secret goes to the keyring (or, asked for, a 0600 file),
and unchanged MLflow code with ``MLFLOW_TRACKING_URI`` set to the store then logs with it — on
S3 (moto with IAM), Azure (Azurite) and GCS (the emulator's service-account keys).  Real
services, a real keyring; every test asserts the secrets never appear in what was printed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType

from cloudtrack.config import parse_connection_string
from tests.credentials.common import LOGGING, assert_no_secret, child_env, cli, python
from tests.fixtures.services import Store
from tests.fixtures.stores import tracking_store

PLAINTEXT = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}


def login_args(store: Store) -> tuple[list[str], str, dict[str, str], list[str]]:
    """(login arguments, the secret for stdin, what the child keeps of the store's environment,
    the secrets to look for in output) for the store's backend."""
    env = store.env
    if store.backend == "s3":
        return (["--access-key-id", env["AWS_ACCESS_KEY_ID"], "--endpoint-url",
                 env["MLFLOW_S3_ENDPOINT_URL"]], env["AWS_SECRET_ACCESS_KEY"], {},
                [env["AWS_SECRET_ACCESS_KEY"]])
    if store.backend == "azure":
        conn = env["AZURE_STORAGE_CONNECTION_STRING"]
        key = {k.lower(): v for k, v in parse_connection_string(conn).items()}["accountkey"]
        return (["--azure-credential", "connection-string"], conn,
                {k: v for k, v in env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"},
                [key])
    if store.backend == "gcs":
        key_file = env["GOOGLE_APPLICATION_CREDENTIALS"]
        private = json.loads(Path(key_file).read_text())["private_key"]
        body = private.split("-----")[2].strip().splitlines()[3]  # a line of the key itself
        return (["--key-file", key_file], "",
                {k: v for k, v in env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"},
                [body])
    raise AssertionError(store.backend)


def logged(store: Store, run_id: str) -> Any:
    run = tracking_store(store).get_run(run_id)
    return run.data.params, run.data.metrics


def test_a_plaintext_keyring_is_refused_and_insecure_storage_is_a_0600_file(
        cloud: Store, tmp_path: Path) -> None:
    args, secret, keep, secrets = login_args(cloud)
    env = child_env(tmp_path, {**keep, **PLAINTEXT})
    refused = cli(env, "login", cloud.uri, *args, stdin=secret)
    assert refused.returncode == 1, refused.stderr
    assert "PlaintextKeyring" in refused.stderr and "--insecure-storage" in refused.stderr
    assert not (tmp_path / ".config" / "cloudtrack" / "logins.json").exists()

    stored = cli(env, "login", cloud.uri, *args, "--insecure-storage", "--json", stdin=secret)
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["storage"] == "file"
    assert "plain file" in stored.stderr
    secret_file = tmp_path / ".config" / "cloudtrack" / "credentials.json"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600

    # Unchanged MLflow code, the store's URI, no credential variable: the login signs.
    run = python({**env, "MLFLOW_TRACKING_URI": cloud.uri}, LOGGING)
    assert run.returncode == 0, run.stderr[-3000:]
    params, metrics = logged(cloud, run.stdout.split()[-1])
    assert params == {"lr": "0.01"} and metrics == {"loss": pytest.approx(1 / 3)}
    assert_no_secret([*secrets, secret], refused.stdout, refused.stderr, stored.stdout,
                     stored.stderr, run.stdout, run.stderr)

    gone = cli(env, "logout", cloud.uri)
    assert gone.returncode == 0 and "Logged out" in gone.stdout
    assert json.loads(secret_file.read_text()) == {}
    again = python({**env, "MLFLOW_TRACKING_URI": cloud.uri}, LOGGING)
    assert again.returncode != 0


def test_a_login_that_does_not_work_is_not_stored(cloud: Store, tmp_path: Path) -> None:
    args, secret, keep, _ = login_args(cloud)
    if cloud.backend == "gcs":
        wrong = cloud.service.bad_credentials_env()["GOOGLE_APPLICATION_CREDENTIALS"]
        args = ["--key-file", wrong]
    elif cloud.backend == "azure":
        secret = cloud.service.bad_credentials_env()["AZURE_STORAGE_CONNECTION_STRING"]
    else:
        secret = "x" * 40
    env = child_env(tmp_path, {**keep, **PLAINTEXT})
    refused = cli(env, "login", cloud.uri, *args, "--insecure-storage", stdin=secret)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "nothing stored" in refused.stderr
    assert not (tmp_path / ".config" / "cloudtrack" / "logins.json").exists()
    assert_no_secret([secret], refused.stdout, refused.stderr)
    # The refusal is said of what was given, by the store it was checked against: no
    # credential variable is set here, and the doctor cannot see a secret that was not kept.
    said = refused.stderr
    assert cloud.uri in said and "given" in said, said
    assert "refused" in said or "cannot be used" in said, said
    for unset in ("AWS_ACCESS_KEY_ID", "AZURE_STORAGE_", "GOOGLE_APPLICATION_CREDENTIALS",
                  "cloudtrack doctor", "plain file"):
        assert unset not in said, said


def test_the_environment_outranks_a_login_and_config_says_where_values_came_from(
        tmp_path: Path, s3_store: Store) -> None:
    """The order is the same code for every backend; S3 (moto) has two IAM users."""
    store = s3_store
    args, secret, _, _ = login_args(store)
    env = child_env(tmp_path, PLAINTEXT)
    assert cli(env, "login", store.uri, *args, "--insecure-storage", stdin=secret).returncode == 0
    shown = cli(env, "config", store.uri, "--json")
    sources = {s["name"]: s["source"] for s in json.loads(shown.stdout)["settings"]}
    assert sources["access_key_id"].startswith("insecure-file:s3://")
    assert sources["endpoint_url"].startswith("insecure-file:s3://")
    # Variables outrank the login (all of it: its endpoint belongs to its keys): the
    # no-access user's keys are used, and refused.
    no_access = store.service.no_access_env()  # type: ignore[attr-defined]
    outranked = python({**env, "MLFLOW_TRACKING_URI": store.uri,
                        "MLFLOW_S3_ENDPOINT_URL": store.env["MLFLOW_S3_ENDPOINT_URL"],
                        "AWS_ACCESS_KEY_ID": no_access["AWS_ACCESS_KEY_ID"],
                        "AWS_SECRET_ACCESS_KEY": no_access["AWS_SECRET_ACCESS_KEY"]}, LOGGING)
    assert outranked.returncode != 0
    assert "AccessDenied" in outranked.stderr or "denied" in outranked.stderr.lower()
    # Logging out while a variable still authenticates says so.
    out = cli({**env, "AWS_ACCESS_KEY_ID": no_access["AWS_ACCESS_KEY_ID"]}, "logout", store.uri)
    assert out.returncode == 0 and "AWS_ACCESS_KEY_ID still set" in out.stderr
    assert_no_secret([secret, no_access["AWS_SECRET_ACCESS_KEY"]], outranked.stdout,
                     outranked.stderr, shown.stdout)


def test_the_longest_matching_login_wins(s3_store: Store, tmp_path: Path) -> None:
    """Matching is the same code for every backend."""
    store = s3_store
    args, secret, _, _ = login_args(store)
    bucket = store.uri.split("/")[2]
    env = child_env(tmp_path, PLAINTEXT)
    no_access = store.service.no_access_env()  # type: ignore[attr-defined]
    bad = ["--access-key-id", no_access["AWS_ACCESS_KEY_ID"], "--endpoint-url",
           store.env["MLFLOW_S3_ENDPOINT_URL"], "--no-check"]
    assert cli(env, "login", f"s3://{bucket}", *bad, "--insecure-storage",
               stdin=no_access["AWS_SECRET_ACCESS_KEY"]).returncode == 0
    assert cli(env, "login", store.uri, *args, "--insecure-storage", stdin=secret).returncode == 0
    run = python({**env, "MLFLOW_TRACKING_URI": store.uri}, LOGGING)
    assert run.returncode == 0, run.stderr[-2000:]
    who = cli(env, "whoami", store.uri, "--json")
    row = json.loads(who.stdout)["targets"][0]
    assert row["login"] == store.uri and row["source"] == f"insecure-file:{store.uri}"
    assert row["secret"] == (f"{store.env['AWS_ACCESS_KEY_ID'][:4]}…"
                             f"{store.env['AWS_ACCESS_KEY_ID'][-4:]} / secret access key set "
                             f"(from insecure-file:{store.uri})")
    assert row["identity"].startswith("arn:aws:iam::") and row["identity"].endswith("tester")
    # The bucket-wide login still covers the rest of the bucket.
    sibling = python({**env, "MLFLOW_TRACKING_URI": f"s3://{bucket}/elsewhere"}, LOGGING)
    assert sibling.returncode != 0
    assert_no_secret([secret, no_access["AWS_SECRET_ACCESS_KEY"]], who.stdout, who.stderr,
                     run.stderr, sibling.stderr)
    runs = tracking_store(store).search_runs(
        [e.experiment_id for e in tracking_store(store).search_experiments()], "",
        ViewType.ALL)
    assert len(runs) == 1
    # Logging out of a URI under a login names the login that covers it and leaves it be.
    under = cli(env, "logout", f"{store.uri}/deeper")
    assert under.returncode == 0, under.stderr
    assert f"uses the login of {store.uri}" in under.stdout
    assert f"`cloudtrack logout {store.uri}`" in under.stdout
    assert cli(env, "whoami", f"{store.uri}/deeper", "--json").returncode == 0
    assert "No login" in cli(env, "logout", "s3://another-bucket-entirely/x").stdout


def test_the_doctor_names_the_login_and_a_login_whose_keys_go_elsewhere(
        s3_store: Store, tmp_path: Path) -> None:
    """The endpoint a login was saved for: an S3-compatible setting."""
    store = s3_store
    args, secret, _, _ = login_args(store)
    env = child_env(tmp_path, PLAINTEXT)
    assert cli(env, "login", store.uri, *args, "--insecure-storage", stdin=secret).returncode == 0
    ok = cli(env, "doctor", store.uri, "--json")
    report = json.loads(ok.stdout)
    checks = {c["id"]: c for c in report["checks"]}
    assert ok.returncode == 0, ok.stdout
    assert checks["config.login"]["status"] == "warn" and "plain file" in \
        checks["config.login"]["summary"]
    # A variable names another endpoint: the login's keys would be sent there.
    elsewhere = cli({**env, "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "doctor",
                    store.uri, "--json")
    assert elsewhere.returncode == 1, elsewhere.stdout
    failed = {c["id"]: c for c in json.loads(elsewhere.stdout)["checks"]}
    check = failed["consistency.login-endpoint"]
    assert check["status"] == "fail" and check["cause"] == "endpoint-mismatch"
    assert "MLFLOW_S3_ENDPOINT_URL" in check["fix"]
    assert_no_secret([secret], ok.stdout, ok.stderr, elsewhere.stdout, elsewhere.stderr)


@pytest.mark.parametrize("kind", ["account-key", "sas"])
def test_an_azure_account_key_or_sas_login_with_its_endpoint(
        azure_store: Store, tmp_path: Path, kind: str) -> None:
    from tests.fixtures.doctor import ALL, sas_env

    store = azure_store

    azurite = store.service
    conn = store.env["AZURE_STORAGE_CONNECTION_STRING"]
    pairs = {k.lower(): v for k, v in parse_connection_string(conn).items()}
    secret = pairs["accountkey"] if kind == "account-key" else parse_connection_string(
        sas_env(azurite, store.uri, 1, **ALL)["AZURE_STORAGE_CONNECTION_STRING"]
    )["SharedAccessSignature"]
    env = child_env(tmp_path, PLAINTEXT)
    done = cli(env, "login", store.uri, "--azure-credential", kind, "--endpoint-url",
               pairs["blobendpoint"], "--insecure-storage", stdin=secret)
    assert done.returncode == 0, done.stderr
    run = python({**env, "MLFLOW_TRACKING_URI": store.uri}, LOGGING)
    assert run.returncode == 0, run.stderr[-3000:]
    params, _ = logged(store, run.stdout.split()[-1])
    assert params == {"lr": "0.01"}
    who = cli(env, "whoami", store.uri, "--json")
    row = json.loads(who.stdout)["targets"][0]
    assert row["login"] == store.uri and row["source"].startswith("insecure-file:azure://")
    assert_no_secret([secret], done.stdout, done.stderr, run.stdout, run.stderr, who.stdout)
