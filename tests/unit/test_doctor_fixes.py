"""The fixes the doctor proposes where no local service can produce the failure: AWS keys of
an S3-compatible server sent to AWS itself (row 3), an Azure identity without a data role
(row 13), and the IAM policy for a prefix."""

from __future__ import annotations

import json

import botocore.exceptions as bex

from cloudtrack.config import resolve
from cloudtrack.credentials import decode_jwt
from cloudtrack.credentials.azure import parse_sas
from cloudtrack.doctor import azure, s3
from cloudtrack.errors import PermissionDenied, Unauthenticated


def _client_error(code: str, message: str, status: int) -> bex.ClientError:
    return bex.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_keys_sent_to_aws_say_where_and_why() -> None:
    """Row 3: without an endpoint variable, MinIO keys go to AWS; the finding names AWS's
    endpoint and the variable that would have sent them elsewhere."""
    config = resolve("s3://bucket/prefix", {"AWS_ACCESS_KEY_ID": "minioadmin"})
    classify = s3._classifier(config, "https://s3.us-east-1.amazonaws.com", False, None)
    error = Unauthenticated("PUT failed")
    error.__cause__ = _client_error("InvalidAccessKeyId", "The AWS Access Key Id you provided "
                                    "does not exist in our records.", 403)
    finding = classify(error, "write")
    assert (finding.layer, finding.cause) == ("auth", "credentials-invalid")
    assert "https://s3.us-east-1.amazonaws.com" in finding.summary
    assert "MLFLOW_S3_ENDPOINT_URL" in (finding.fix or "")


def test_minimal_policy_for_a_prefix() -> None:
    policy = s3.minimal_policy("bucket", "team/store")
    listing, objects = policy["Statement"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["team/store", "team/store/*"]
    assert objects["Resource"] == "arn:aws:s3:::bucket/team/store/*"
    assert set(objects["Action"]) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    role = s3.attach_command("arn:aws:sts::123456789012:assumed-role/TrainingJob/i-0abc",
                             "bucket", policy)
    assert role.startswith("aws iam put-role-policy --role-name TrainingJob ")
    assert json.loads(role.split("--policy-document '")[1].rstrip("'")) == policy


def test_identity_without_a_data_role() -> None:
    """Row 13: AuthorizationPermissionMismatch for a signed-in identity (Azurite has no RBAC):
    the fix names 'Storage Blob Data Contributor' and the az command with the scope."""
    config = resolve("wasbs://runs@acct.blob.core.windows.net/mlruns", {})
    classify = azure._classifier(config, "credential-chain", "DefaultAzureCredential", None)
    error = PermissionDenied("PUT failed")

    class HttpError(Exception):
        error_code = "AuthorizationPermissionMismatch"
        additional_info: dict[str, str] = {}

    error.__cause__ = HttpError()
    finding = classify(error, "write")
    assert (finding.layer, finding.cause) == ("authz", "permission-denied")
    assert "Storage Blob Data Contributor" in finding.summary
    fix = azure._access_fix(config, "credential-chain", None)(["write"])  # type: ignore[arg-type]
    assert "az role assignment create" in fix
    assert "storageAccounts/acct/blobServices/default/containers/runs" in fix


def test_sas_fields_and_jwt_claims() -> None:
    sas = parse_sas("?sv=2024-01-01&se=2030-01-01T00%3A00%3A00Z&sr=c&sp=rl&sig=abc%2Bdef")
    assert sas["sp"] == "rl" and sas["se"] == "2030-01-01T00:00:00Z" and sas["sig"] == "abc+def"
    from backends.azure.service import mint_token

    claims = decode_jwt(mint_token("wrong-audience"))
    assert claims["aud"] == "https://management.azure.com" and claims["tid"]
    assert decode_jwt("not-a-jwt") == {}
