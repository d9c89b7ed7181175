"""moto's S3 server on a free loopback port: plain (any credentials pass) and IAM-enforcing.

Both run ``backends.s3.server``, which serialises moto's requests so that conditional writes
are atomic (see that module for what plain moto gets wrong under concurrency).

:class:`MotoS3Iam` is what the conformance suite calls ``s3``: only there are wrong credentials
rejected, and users with narrower policies can be made for permission tests.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import boto3

from backends._common import (
    LOOPBACK,
    PYTHON,
    ROOT,
    ManagedProcess,
    StorageService,
    free_port,
    unique,
    wait_for_port,
)

REGION = "us-east-1"

#: Every bucket the services create starts with this; the IAM policies are scoped to it.
BUCKET_PREFIX = "ct-"

#: The prefix inside the bucket that :meth:`MotoS3.new_store` hands out.
STORE_PREFIX = "team/store"


def _bucket_name(name: str) -> str:
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "store"
    return unique(f"{BUCKET_PREFIX}{clean}"[:40])


def s3_policy(actions: list[str] | str = "s3:*", buckets: str = f"{BUCKET_PREFIX}*") -> dict[str, Any]:
    """An IAM policy document allowing ``actions`` on the buckets matching ``buckets``."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": actions,
            "Resource": [f"arn:aws:s3:::{buckets}", f"arn:aws:s3:::{buckets}/*"],
        }],
    }


class MotoS3(StorageService):
    """moto without authentication: any access key and secret are accepted."""

    name = "s3-noauth"
    access_key_id = "testing"
    secret_access_key = "testing"

    def start(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self.process = ManagedProcess(
            [PYTHON, "-m", "backends.s3.server", "--host", LOOPBACK, "--port", str(self.port)],
            # moto reads these at import; "inf" keeps IAM checks off whatever the caller's
            # environment says, MOTO_PORT is where moto's presigned URLs point.
            env={"INITIAL_NO_AUTH_ACTION_COUNT": "inf", "MOTO_PORT": str(self.port)},
            cwd=ROOT, name="moto",
        )
        try:
            wait_for_port(self.port, proc=self.process.proc, log=self.process.log)
        except BaseException:
            self.process.stop()
            raise
        self.s3 = self.client("s3")

    def stop(self) -> None:
        process = getattr(self, "process", None)
        if process is not None:
            process.stop()

    def client(self, service: str, env: dict[str, str] | None = None) -> Any:
        """A boto3 client of this moto for ``service`` with the credentials in ``env``."""
        env = env or self.env
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def new_store(self, name: str = "store") -> str:
        """A fresh bucket, and a store at ``STORE_PREFIX`` in it.

        Two decoy objects sit next to the store, outside it: one named exactly like the prefix
        and one under ``<prefix>-sibling/``.  A backend that lists ``<prefix>`` instead of
        ``<prefix>/`` would show them, and the conformance suite's exact listings would fail.
        """
        bucket = _bucket_name(name)
        self.s3.create_bucket(Bucket=bucket)
        self.s3.put_object(Bucket=bucket, Key=STORE_PREFIX, Body=b"decoy outside the store")
        self.s3.put_object(Bucket=bucket, Key=f"{STORE_PREFIX}-sibling/decoy", Body=b"decoy")
        return f"s3://{bucket}/{STORE_PREFIX}"

    def missing_store_uri(self) -> str:
        return f"s3://{_bucket_name('missing')}/{STORE_PREFIX}"

    def bad_credentials_env(self) -> dict[str, str]:
        raise NotImplementedError(
            "moto without IAM accepts any credentials; use the 's3' (MotoS3Iam) service")


class MotoS3Iam(MotoS3):
    """moto with IAM enforced: unknown keys, bad signatures and missing permissions are refused.

    moto checks nothing until its request count reaches ``INITIAL_NO_AUTH_ACTION_COUNT``.
    Counting the setup requests exactly is brittle (any retry shifts it), so the server starts
    with checks off, the IAM users are made, and moto's ``/moto-api/reset-auth`` then sets that
    count to 0: from there on every request is authenticated and authorised.

    Two users exist after :meth:`start`: an administrator (``iam:*``, ``s3:*``) that this class
    uses to make further users, and the tester whose keys :attr:`env` gives (``s3:*`` on the
    ``ct-*`` buckets every store lives in).
    """

    name = "s3"

    def start(self) -> None:
        super().start()
        try:
            self.iam = self.client("iam")
            admin = self._make_user("cloudtrack-admin", {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["iam:*", "s3:*"], "Resource": "*"}],
            })
            tester = self._make_user("cloudtrack-tester", {
                **s3_policy(),
                "Statement": [*s3_policy()["Statement"],
                              {"Effect": "Allow", "Action": "s3:ListAllMyBuckets",
                               "Resource": "*"}],
            })
            self.access_key_id = tester["AWS_ACCESS_KEY_ID"]
            self.secret_access_key = tester["AWS_SECRET_ACCESS_KEY"]
            # Not form-encoded: moto reads the raw body, which Flask empties for a form.
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0",
                                             method="POST",
                                             headers={"Content-Type": "text/plain"})
            with urllib.request.urlopen(request, timeout=30) as response:
                json.load(response)
            self.iam = self.client("iam", admin)
            self.s3 = self.client("s3")
        except BaseException:
            self.stop()
            raise

    def _make_user(self, name: str, policy: dict[str, Any] | None) -> dict[str, str]:
        self.iam.create_user(UserName=name)
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        if policy is not None:
            self.iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy",
                                     PolicyDocument=json.dumps(policy))
        return {**self.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def user_env(self, policy_document: dict[str, Any] | str | None,
                 name: str = "user") -> dict[str, str]:
        """``env`` for a new IAM user with this inline policy (None: a user with no rights)."""
        policy = json.loads(policy_document) if isinstance(policy_document, str) \
            else policy_document
        return self._make_user(unique(name), policy)

    def read_only_env(self) -> dict[str, str]:
        """``env`` for a user that may read and list the test buckets, and write nothing."""
        return self.user_env(s3_policy(["s3:GetObject", "s3:ListBucket"]), "read-only")

    def no_access_env(self) -> dict[str, str]:
        """``env`` for a user whose valid credentials are allowed nothing."""
        return self.user_env(None, "no-access")

    def bad_credentials_env(self) -> dict[str, str]:
        # An access key id of the right shape that no user owns: moto answers
        # InvalidAccessKeyId, as AWS does.
        return {**self.env, "AWS_ACCESS_KEY_ID": "AKIA" + "Z" * 16,
                "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + "x" * 25}
