"""What the login tests share: the cloudtrack CLI and unchanged MLflow code, each in a process
of its own with exactly the environment a test gives (no credential variable of the test
process leaks in), and the check that no secret ever appears in what they print."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Variables a child keeps from the test process: what Python and the services need, nothing
#: that signs.
_KEEP = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE",
         "REQUESTS_CA_BUNDLE", "TMPDIR")

#: Unchanged MLflow code from the cheat sheet: a run with a param, a metric and an artifact.
LOGGING = textwrap.dedent("""
    import sys, mlflow
    mlflow.set_experiment("with-a-login")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", "0.01")
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_text("hello", "notes/hello.txt")
    print(run.info.run_id)
""")


def child_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a child: its own HOME and configuration folder, AWS's chain
    kept off the network, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(home / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
                "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "CLOUDTRACK_RETRY_DEADLINE": "20", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def cli(env: Mapping[str, str], *args: str, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudtrack.cli", *args], env=dict(env),
                          input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=timeout, check=False)


def python(env: Mapping[str, str], code: str,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=dict(env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_no_secret(secrets: Iterable[str], *outputs: str) -> None:
    for secret in secrets:
        if not secret:
            continue
        for out in outputs:
            assert secret not in out, "a secret appeared in the output"
