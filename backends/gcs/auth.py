"""Credentials for the GCS emulator front: service-account keys, the key registry, access tokens.

The service (``service.py``) generates RSA service-account keys and writes their public halves
to a registry file; the front (``front.py``) reads that file to verify the JWT-bearer grants
google-auth sends to the token endpoint.  Access tokens are opaque to clients but carry their
own HMAC, so the service can mint tokens (expired ones, other projects' ones) without asking
the running front, and the front keeps no token table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

TOKEN_PREFIX = "ct-gcs."


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class KeyPair:
    key_id: str
    private_pem: str
    public_pem: str


def generate_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return KeyPair(secrets.token_hex(20), private_pem, public_pem)


def verify_rs256(public_pem: str, signing_input: bytes, signature: bytes) -> bool:
    public_key = serialization.load_pem_public_key(public_pem.encode("ascii"))
    assert isinstance(public_key, rsa.RSAPublicKey)
    try:
        public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    except Exception:  # cryptography raises InvalidSignature; anything else is as bad
        return False
    return True


def service_account_info(*, email: str, project: str, key_id: str, private_pem: str,
                         token_uri: str) -> dict[str, str]:
    """A key file in the format ``gcloud iam service-accounts keys create`` writes."""
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
        "auth_uri": token_uri.rsplit("/", 1)[0] + "/auth",
        "token_uri": token_uri,
    }


@dataclass(frozen=True)
class TokenClaims:
    email: str
    project: str
    expires_at: float

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


class TokenMinter:
    """Signs and checks the front's access tokens (HMAC-SHA256 over their claims)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mint(self, email: str, project: str, expires_at: float) -> str:
        payload = b64url(json.dumps({"sub": email, "prj": project, "exp": expires_at},
                                    separators=(",", ":")).encode())
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> TokenClaims | None:
        """The token's claims, or None if it is not one of ours (expiry is the caller's call)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        payload, _, signature = token[len(TOKEN_PREFIX):].partition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            claims = json.loads(unb64url(payload))
            return TokenClaims(str(claims["sub"]), str(claims["prj"]), float(claims["exp"]))
        except (ValueError, KeyError, TypeError):
            return None

    def _sign(self, payload: str) -> str:
        return b64url(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())


@dataclass(frozen=True)
class RegisteredKey:
    email: str
    project: str
    public_pem: str
    #: Lifetime of the access tokens this key's grants receive; <= 0 issues expired tokens.
    token_ttl: float


class Registry:
    """The file the service writes and the front reads: token secret and public keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._data: dict[str, Any] = {}

    @classmethod
    def create(cls, path: Path) -> Registry:
        registry = cls(path)
        registry._data = {"secret": secrets.token_hex(32), "keys": {}}
        registry._save()
        return registry

    @property
    def secret(self) -> bytes:
        return bytes.fromhex(self._load()["secret"])

    def add(self, key_id: str, key: RegisteredKey) -> None:
        data = self._load()
        data["keys"][key_id] = {"email": key.email, "project": key.project,
                                "public_pem": key.public_pem, "token_ttl": key.token_ttl}
        self._save()

    def find(self, key_id: str | None, email: str | None) -> RegisteredKey | None:
        keys: dict[str, dict[str, Any]] = self._load()["keys"]
        entry = keys.get(key_id) if key_id else None
        if entry is None and email and not key_id:
            entry = next((k for k in keys.values() if k["email"] == email), None)
        if entry is None:
            return None
        return RegisteredKey(entry["email"], entry["project"], entry["public_pem"],
                             float(entry["token_ttl"]))

    def _load(self) -> dict[str, Any]:
        # The service adds keys while the front runs: reread whenever the file changed.
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._data = json.loads(self.path.read_text())
            self._stamp = stamp
        return self._data

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._data, f)
        os.replace(tmp, self.path)
        self._stamp = None
