"""The credential helpers the doctor reports from: a SAS token's fields, a JWT's claims."""

from __future__ import annotations

from cloudtrack.credentials import decode_jwt
from cloudtrack.credentials.azure import parse_sas


def test_sas_fields_and_jwt_claims() -> None:
    sas = parse_sas("?sv=2024-01-01&se=2030-01-01T00%3A00%3A00Z&sr=c&sp=rl&sig=abc%2Bdef")
    assert sas["sp"] == "rl" and sas["se"] == "2030-01-01T00:00:00Z" and sas["sig"] == "abc+def"
    from backends.azure.service import mint_token

    claims = decode_jwt(mint_token("wrong-audience"))
    assert claims["aud"] == "https://management.azure.com" and claims["tid"]
    assert decode_jwt("not-a-jwt") == {}
