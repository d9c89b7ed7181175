"""Who signs a store's requests: one credential provider per backend.

:func:`credentials_for` gives the provider the backend table names for a resolved store; the
blob classes build their clients through it and the doctor reads it (see
:class:`~cloudtrack.credentials.base.CredentialProvider`).
"""

from __future__ import annotations

from cloudtrack.config import StoreConfig, backend
from cloudtrack.credentials.base import (
    Credential,
    CredentialProvider,
    decode_jwt,
    jwt_expiry,
    mask_key_id,
)

__all__ = ["Credential", "CredentialProvider", "credentials_for", "decode_jwt", "jwt_expiry",
           "mask_key_id"]


def credentials_for(config: StoreConfig) -> CredentialProvider:
    """The credential provider of ``config``'s backend (its SDK imported now)."""
    provider: CredentialProvider = backend(config.backend).load("credentials")(config)
    return provider
