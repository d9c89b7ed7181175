"""The credential-provider protocol every backend implements, and what providers share.

A provider answers, for one resolved store: what signs its requests, where that came from
(a variable, a profile, a connection string, a key file, a credential chain …), when it
expires and whether it renews itself, and which secret values must never be shown.  The
blob classes build their SDK clients through it; the doctor reads it.  Providers that keep
credentials elsewhere (the OS keyring, a token command) implement the same protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol


@dataclass(frozen=True)
class Credential:
    """What signs a store's requests, described without its secret."""

    #: ``access-key``, ``account-key``, ``sas``, ``token``, ``anonymous`` or ``none``.
    kind: str
    #: How messages name it: ``AZURE_STORAGE_ACCESS_KEY``, ``the AWS credential chain`` …
    signer: str
    #: Where it came from: ``env:<NAME>``, a profile, ``connection-string``, a key file, the
    #: SDK's chain (its method), ``argument`` …
    source: str
    #: When it stops being accepted, if known.
    expires: datetime | None = None
    #: Whether it renews itself before that (a role session, a token credential) — a
    #: credential that cannot (a SAS, static session keys) ends a long job when it expires.
    renews: bool = False
    #: Whose identity it is, when the credential says (an e-mail, an app id …).
    identity: str | None = None
    #: The claims of a JWT bearer token, unverified.
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: Values to scrub wherever they could appear (tokens, keys, signatures).
    secrets: frozenset[str] = field(default_factory=frozenset, repr=False)

    def seconds_left(self, now: datetime | None = None) -> float | None:
        if self.expires is None:
            return None
        expires = self.expires if self.expires.tzinfo else self.expires.replace(tzinfo=timezone.utc)
        return (expires - (now or datetime.now(timezone.utc))).total_seconds()


class CredentialProvider(Protocol):
    """One backend's credentials for one store."""

    backend: str

    def describe(self) -> Credential:
        """What signs, as far as it is known without the network."""
        ...

    def current(self, timeout: float | None = None) -> Credential:
        """What signs now: loaded, refreshed or fetched as the SDK would (this may use the
        network, bounded by ``timeout`` where the SDK allows).  Raises
        :class:`~cloudtrack.errors.CredentialsUnavailable` when there is none to be had."""
        ...

    def close(self) -> None:
        """Release what the provider holds (token caches, HTTP sessions)."""
        ...


def mask_key_id(key_id: str) -> str:
    """An access key id shortened so it can be recognised but not reused."""
    return key_id if len(key_id) <= 8 else f"{key_id[:4]}…{key_id[-4:]}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the service verifies; we only read)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_expiry(claims: Mapping[str, Any]) -> datetime | None:
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        return None
    return datetime.fromtimestamp(float(exp), timezone.utc)


def secrets(*values: str | None) -> frozenset[str]:
    return frozenset(v for v in values if v)
