"""``cloudtrack login`` for MLflow servers: unchanged MLflow code authenticates to the server it
actually addresses, with no variable set — two servers with two logins in one process, a
``~/.netrc`` with wrong passwords beside them — through real ``mlflow server`` processes running
MLflow's basic-auth app.  Every test asserts the secrets never appear in what was printed."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mlflow import MlflowServer
from tests.credentials.common import assert_no_secret, child_env, cli, python

PLAINTEXT = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}


@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[MlflowServer, MlflowServer]]:
    servers = (MlflowServer(basic_auth=True), MlflowServer(basic_auth=True))
    try:
        for s in servers:
            s.launch()  # their start-ups overlap
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_two_servers_two_logins_one_process_and_netrc_does_not_interfere(
        two_servers: tuple[MlflowServer, MlflowServer], tmp_path: Path) -> None:
    first, second = two_servers
    assert first.admin is not None and second.admin is not None
    env = child_env(tmp_path, PLAINTEXT)
    # A ~/.netrc with wrong passwords for both hosts: requests would send it if MLflow gave no
    # auth of its own.
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login admin password wrong-password\n")
    netrc.chmod(0o600)
    outputs = []
    for server in (first, second):
        done = cli(env, "login", server.url, "--username", server.admin.username,
                   "--insecure-storage", stdin=server.admin.password)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    code = textwrap.dedent(f"""
        from mlflow import MlflowClient
        a = MlflowClient(tracking_uri={first.url!r})
        b = MlflowClient(tracking_uri={second.url!r})
        ea = a.create_experiment("on-first")
        eb = b.create_experiment("on-second")
        ra = a.create_run(ea); a.log_param(ra.info.run_id, "server", "first")
        rb = b.create_run(eb); b.log_param(rb.info.run_id, "server", "second")
        a.log_text(ra.info.run_id, "first", "who.txt")
        print(sorted(e.name for e in a.search_experiments()),
              sorted(e.name for e in b.search_experiments()),
              a.download_artifacts(ra.info.run_id, "who.txt"), a.list_artifacts(ra.info.run_id))
    """)
    run = python(env, code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "['Default', 'on-first'] ['Default', 'on-second']" in run.stdout
    assert "who.txt" in run.stdout

    # whoami names the login as the source and the user as the identity, the password masked.
    who = cli(env, "whoami", first.url, "--json")
    row = json.loads(who.stdout)["targets"][0]
    assert row["source"].startswith("insecure-file:http://127.0.0.1:")
    assert row["identity"] == "admin" and row["check"] == "accepted"
    # The doctor authenticates with the login too, and names it as the source.
    doctor = cli(env, "doctor", first.url)
    assert doctor.returncode == 0, doctor.stdout
    assert "insecure-file:http://127.0.0.1:" in doctor.stdout
    outputs += [run.stdout, run.stderr, who.stdout, who.stderr, doctor.stdout, doctor.stderr]
    assert_no_secret([first.admin.password, second.admin.password], *outputs)

    # MLflow's own variables outrank the login (here: a wrong password, refused).
    wrong = python({**env, "MLFLOW_TRACKING_USERNAME": "admin",
                    "MLFLOW_TRACKING_PASSWORD": "not-the-password"}, code)
    assert wrong.returncode != 0 and "401" in wrong.stderr

    # Logged out of the first: it refuses, the second still works.
    out = cli(env, "logout", first.url)
    assert out.returncode == 0
    after = python(env, code)
    assert after.returncode != 0
    assert "401" in after.stderr or "Unauthorized" in after.stderr


def test_a_server_login_with_a_wrong_password_is_not_stored(
        two_servers: tuple[MlflowServer, MlflowServer], tmp_path: Path) -> None:
    server = two_servers[0]
    env = child_env(tmp_path, PLAINTEXT)
    done = cli(env, "login", server.url, "--username", "admin", "--insecure-storage",
               stdin="definitely-wrong")
    assert done.returncode == 1 and "refused" in done.stderr and "nothing stored" in done.stderr
    assert not (tmp_path / ".config" / "cloudtrack" / "logins.json").exists()
    assert_no_secret(["definitely-wrong"], done.stdout, done.stderr)


def test_multipart_upload_through_the_server_carries_the_login(
        two_servers: tuple[MlflowServer, MlflowServer], tmp_path: Path) -> None:
    """With proxied multipart upload on, MLflow first asks the server to create the upload
    (its own host credentials, from a module-level function, not the repository's): that
    request must carry the login too, or a large artifact fails with 401. The server here
    keeps artifacts on disk, so it answers that multipart is unsupported — after checking the
    login — and MLflow falls back to one PUT."""
    server = two_servers[1]
    assert server.admin is not None
    env = child_env(tmp_path, {**PLAINTEXT, "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
                               "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": "1024"})
    done = cli(env, "login", server.url, "--username", server.admin.username,
               "--insecure-storage", stdin=server.admin.password)
    assert done.returncode == 0, done.stderr
    big = tmp_path / "weights.bin"
    big.write_bytes(bytes(range(256)) * 64)  # 16 KiB: above the multipart minimum
    code = textwrap.dedent(f"""
        import filecmp, mlflow
        mlflow.set_tracking_uri({server.url!r})
        mlflow.set_experiment("multipart-with-a-login")
        with mlflow.start_run() as run:
            mlflow.log_artifact({str(big)!r}, "model")
        got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                  artifact_path="model/weights.bin")
        print("same", filecmp.cmp(got, {str(big)!r}, shallow=False))
    """)
    run = python(env, code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "same True" in run.stdout
    assert_no_secret([server.admin.password], run.stdout, run.stderr, done.stdout, done.stderr)
