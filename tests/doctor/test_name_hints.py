"""``cloudtrack doctor`` says when a name is likely wrong, not only what is missing: a bucket
the credentials have no rights on (S3 answers AccessDenied, not NoSuchBucket, then: catalogue
row 28), another project's GCS bucket, a container SAS used on another container, a role
scoped to other Azure containers, and a misspelt scheme (``s4://`` → ``s3://``).

The doctor runs as the real command against moto with IAM, fake-gcs-server behind its OAuth
front and Azurite (tests/fixtures/doctor.py).  Azurite has no RBAC: for the role scoped to
other containers a loopback stand-in answers Azure's bytes, and the doctor's reading of them
is checked directly.
"""

from __future__ import annotations

import random
import urllib.parse
from pathlib import Path

import pytest

from backends.azure.service import ACCOUNT, ACCOUNT_KEY, Azurite
from backends.gcs.service import GcsEmulator
from backends.s3.service import STORE_PREFIX, MotoS3Iam, s3_policy
from cloudtrack.blobs import open_blobs
from cloudtrack.config import resolve
from cloudtrack.doctor import azure, s3
from cloudtrack.errors import PermissionDenied
from tests.doctor import standins
from tests.fixtures.doctor import ALL, Run, doctor, expect, sas_env

pytestmark = pytest.mark.timeout(300)


def _root(run: Run) -> str:
    return str(next(c["id"] for c in run.report["checks"] if c["status"] == "fail"))


# -- S3: AccessDenied for a bucket outside the policy --------------------------------------------


def test_s3_unknown_bucket_is_likely_a_wrong_name(home: Path, moto: MotoS3Iam) -> None:
    """The issue's case: the credentials work, may list the account's buckets, and the bucket
    is not one of them — the name, not the policy, is what is likely wrong."""
    run = doctor(home, moto.env, "s3://no-such-bucket-xyz/team/store")
    expect(run, "permission-denied")
    assert _root(run) == "authz.container", "the name comes first"
    container = run.check("authz.container")
    assert "'no-such-bucket-xyz' is likely wrong" in container["summary"]
    assert "not NoSuchBucket" in container["summary"]
    assert "arn:aws:iam::" in container["summary"], "the identity that works is named"
    assert "check the bucket name 'no-such-bucket-xyz'" in container["fix"]
    # The permission is still said, with its policy: the bucket may be another account's.
    listing = run.check("authz.list")
    assert "s3:ListBucket" in listing["summary"] and "put-user-policy" in listing["fix"]


def test_s3_mistyped_bucket_names_the_one_meant(home: Path, moto: MotoS3Iam,
                                                s3_uri: str) -> None:
    bucket = urllib.parse.urlsplit(s3_uri).netloc
    typo = bucket.replace("ct-", "c-", 1)  # outside the ct-* buckets the policy allows
    run = doctor(home, moto.env, f"s3://{typo}/{STORE_PREFIX}")
    expect(run, "permission-denied")
    container = run.check("authz.container")
    assert f"Did you mean s3://{bucket}/{STORE_PREFIX}?" in container["summary"]
    assert container["fix"].startswith(f"use s3://{bucket}/{STORE_PREFIX} if that is the bucket")


def test_s3_hint_offers_only_the_nearest_of_many_alike_names() -> None:
    """CI's moto held 90 buckets named ``ct-<kind>-<random hex>``: a likeness ratio offered one
    that only shared the pattern beside the one a keystroke away. Only the fewest-edits names
    are offered, and none when even the nearest is far."""
    rng = random.Random(7)
    names = [f"ct-{kind}-{rng.randbytes(5).hex()}" for kind in ("store", "doctor", "login")
             for _ in range(30)]
    meant = names[40]
    typo = meant.replace("ct-", "c-", 1)
    assert s3._nearest(typo, names) == [meant]
    assert s3._nearest(meant[:-2] + "zz", names) == [meant]
    assert s3._nearest("my-team-bucket", names) == []
    assert s3._nearest("ab", ["ab1", "ab2", "xy"]) == ["ab1", "ab2"], "ties are all offered"


def test_s3_without_list_all_my_buckets_says_both(home: Path, moto: MotoS3Iam) -> None:
    """A user who may not list buckets: the doctor cannot tell a wrong name from a missing
    grant, and says so."""
    env = moto.user_env(s3_policy(), "no-listing")
    run = doctor(home, env, "s3://no-such-bucket-xyz/team/store")
    expect(run, "permission-denied")
    container = run.check("authz.container")
    assert "may be wrong" in container["summary"]
    assert "as likely as a missing permission" in container["summary"]
    assert "s3:ListAllMyBuckets" in container["summary"]
    assert "if it is right, grant the access below" in container["fix"]


def test_s3_bucket_of_the_account_is_a_permission_only(home: Path, moto: MotoS3Iam,
                                                       s3_uri: str) -> None:
    """ListBuckets shows the bucket: the name is right, only the policy is missing."""
    env = moto.user_env({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]}, "lister")
    run = doctor(home, env, s3_uri)
    expect(run, "permission-denied")
    assert _root(run) == "authz.list"
    assert not [c for c in run.report["checks"] if c["id"] == "authz.container"]


def test_s3_a_probe_that_passes_proves_the_name(home: Path, moto: MotoS3Iam,
                                                s3_uri: str) -> None:
    """Objects may be written but not listed: the bucket-level HEAD is denied too, yet the
    write proves the bucket exists — no word about its name."""
    env = moto.user_env(s3_policy(["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]),
                        "no-list")
    run = doctor(home, env, s3_uri)
    expect(run, "permission-denied")
    assert "HEAD bucket: HTTP 403" in run.check("http.answer")["summary"]
    assert run.check("authz.write")["status"] == "ok"
    assert not [c for c in run.report["checks"] if c["id"] == "authz.container"]


# -- GCS: 404 for a missing bucket, so a 403 is someone's bucket ---------------------------------


def test_gcs_bucket_of_another_project(home: Path, gcs: GcsEmulator, gs_uri: str) -> None:
    run = doctor(home, gcs.credentials_env(project="elsewhere"), gs_uri)
    expect(run, "permission-denied")
    assert _root(run) == "authz.container"
    container = run.check("authz.container")
    assert "exists (GCS answers 404, not 403" in container["summary"]
    assert "another project" in container["summary"]
    assert "the buckets of project elsewhere" in container["fix"]
    assert "roles/storage.objectUser" in run.check("authz.write")["fix"]


# -- Azure: what a container SAS and a scoped role answer for another container -------------------


def test_azure_container_sas_on_another_container(home: Path, azurite: Azurite,
                                                  az_uri: str) -> None:
    env = sas_env(azurite, az_uri, 5, **ALL)
    container = urllib.parse.urlsplit(az_uri).netloc.split("@")[0]
    typo = az_uri.replace(f"{container}@", f"{container}x@", 1)
    run = doctor(home, env, typo)
    expect(run, "credentials-invalid")
    accepted = run.check("auth.accepted")
    assert f"the container name '{container}x' in the URI may be wrong" in accepted["summary"]
    assert "signed for one container" in accepted["summary"]
    assert accepted["fix"].startswith(f"check that '{container}x', the URI's container, is")
    # The same SAS on its own container is fine: it was the name.
    assert doctor(home, env, az_uri).report["status"] != "fail"


def _azure_refusing(code: str, message: str) -> standins.Handler:
    """Azure Storage answering every request with 403 ``code``."""
    body = ('\ufeff<?xml version="1.0" encoding="utf-8"?><Error><Code>' + code + "</Code>"
            f"<Message>{message}\nRequestId:0f1b6c2e-601e-0042-5a3c-3f1c4e000000\n"
            "Time:2024-01-01T00:00:00.0000000Z</Message></Error>").encode()

    def handler(req: object) -> standins.Reply:
        return 403, {"Content-Type": "application/xml", "x-ms-error-code": code,
                     "x-ms-request-id": "0f1b6c2e-601e-0042", "x-ms-version": "2025-01-05"}, body
    return handler


def _refusals(code: str, message: str, uri: str) -> list[tuple[str, PermissionDenied]]:
    """What the Azure backend raises for each probe against a service refusing with ``code``
    (signed with a key here: the refusal is what matters, not how the request was signed)."""
    found = []
    with standins.StandIn(_azure_refusing(code, message)) as server:
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={server.url}/{ACCOUNT};")
        with open_blobs(resolve(uri, {"AZURE_STORAGE_CONNECTION_STRING": conn,
                                      "CLOUDTRACK_MAX_ATTEMPTS": "1"})) as blobs:
            for op, call in (("list", lambda: blobs.list_dir("")),
                             ("write", lambda: blobs.put_if_absent("probe", b"x")),
                             ("delete", lambda: blobs.delete("probe"))):
                with pytest.raises(PermissionDenied) as e:
                    call()
                found.append((op, e.value))
    return found


def test_azure_role_scoped_to_other_containers() -> None:
    """An identity whose data role covers other containers gets AuthorizationPermissionMismatch,
    not ContainerNotFound, for any other name.  Azurite has no RBAC: a loopback stand-in
    answers Azure's bytes, read by the Azure backend as from Azure itself."""
    uri = f"wasbs://runz@{ACCOUNT}.blob.core.windows.net/mlruns"
    config = resolve(uri, {})
    denials: set[str] = set()
    classify = azure._classifier(config, "token", "DefaultAzureCredential", None, "", denials)
    mismatch = _refusals("AuthorizationPermissionMismatch", "This request is not authorized "
                         "to perform this operation using this permission.", uri)
    for op, error in mismatch:
        assert classify(error, op).cause == "permission-denied"
    finding = azure._container_doubt(config, "token", denials)([op for op, _ in mismatch])
    assert finding is not None and finding.id == "authz.container"
    assert "container name is wrong" in finding.summary and "'runz'" in finding.summary
    assert f"az storage container list --account-name {ACCOUNT}" in (finding.fix or "")
    # With a key or a SAS a missing container is a 404: no doubt about the name.
    assert azure._container_doubt(config, "account-key", denials)(["list"]) is None

    # A firewall refuses every request too, but that says nothing about the name.
    firewalled: set[str] = set()
    classify = azure._classifier(config, "token", "DefaultAzureCredential", None, "", firewalled)
    for op, error in _refusals("AuthorizationFailure", "This request is not authorized to "
                               "perform this operation.", uri):
        classify(error, op)
    assert azure._container_doubt(config, "token", firewalled)(["list", "write"]) is None


# -- schemes ---------------------------------------------------------------------------------------


def test_misspelt_scheme_on_the_command_line(home: Path) -> None:
    run = doctor(home, {}, "s4://bucket/x")
    expect(run, "config-invalid")
    check = run.check("config.uri")
    assert check["summary"].endswith("Did you mean s3://bucket/x?")
    assert check["fix"].startswith("if s4: is a typo, use `cloudtrack doctor s3://bucket/x`")
    text = doctor(home, {}, "gcs://bucket/x", json_out=False)
    assert "Did you mean gs://bucket/x?" in text.out and text.code == 1


def test_misspelt_scheme_in_the_environment_keeps_the_password_hidden(home: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "htps://admin:s3cret-password-9@mlflow.example:5000"}
    run = doctor(home, env)  # the fixture checks the password is nowhere in the output
    expect(run, "config-invalid")
    check = run.check("config.uri")
    assert "Did you mean https://admin:***@mlflow.example:5000?" in check["summary"]
    assert "use https://admin:***@mlflow.example:5000 in MLFLOW_TRACKING_URI" in check["fix"]


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "ftp://host/x", "zzz://bucket/x"])
def test_no_suggestion_for_a_known_or_unlike_scheme(home: Path, uri: str) -> None:
    run = doctor(home, {}, uri)
    expect(run, "config-invalid")
    assert "Did you mean" not in run.check("config.uri")["summary"]
    assert "typo" not in (run.check("config.uri")["fix"] or "")
