"""Who signs for a ``wasbs://``/``abfss://`` store, the way MLflow's own Azure artifact
repository decides it, from the same variables (read from ``config.environ``):

1. ``AZURE_STORAGE_CONNECTION_STRING`` — its key or SAS signs; when it carries neither (only
   endpoints), a token credential signs (``DefaultAzureCredential``);
2. ``AZURE_STORAGE_ACCESS_KEY`` or ``AZURE_STORAGE_SAS_TOKEN`` with the URI's account;
3. otherwise ``DefaultAzureCredential``.

Which one applies was decided by :func:`cloudtrack.config.resolve` (setting ``credential`` and
its source).  A caller holding an azure-core token credential may pass it instead.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import urllib.parse
from datetime import datetime, timezone
from typing import Any

from cloudtrack.config import StoreConfig, parse_connection_string
from cloudtrack.credentials.base import Credential, decode_jwt, jwt_expiry, secrets
from cloudtrack.errors import ConfigError, CredentialsUnavailable

#: The scope of a token for Azure Storage.
SCOPE = "https://storage.azure.com/.default"

_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
_KINDS = {"account-key": "accountkey", "sas": "sharedaccesssignature"}
_VARIABLES = {"account-key": "AZURE_STORAGE_ACCESS_KEY", "sas": "AZURE_STORAGE_SAS_TOKEN"}


def parse_sas(token: str) -> dict[str, str]:
    """The fields of a SAS token (``sv``, ``se``, ``sp``, ``sig`` …)."""
    return dict(urllib.parse.parse_qsl(token.lstrip("?"), keep_blank_values=True))


def sas_time(value: str) -> datetime | None:
    """A SAS start or expiry (``st``, ``se``), in any of the forms Azure accepts."""
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def chain_error(credential: Any, e: BaseException, what: str,
                uri: str | None = None) -> CredentialsUnavailable:
    """Why a credential chain (``DefaultAzureCredential``) got no token for ``what``: every
    credential it tried and why each was skipped, and whether that means none is set up
    (``missing``), one expired, or one was refused."""
    message = str(getattr(e, "message", "") or e)
    lines = [line.strip() for line in message.splitlines()]
    tried = tuple(line for line in lines if re.match(r"^[A-Za-z]+Credential:", line))
    # The chain goes on past a credential that is merely unavailable and stops at the first
    # that tried and failed: all of them listed means none could even try.
    total = len(getattr(credential, "credentials", ()) or ())
    last = tried[-1].lower() if tried else message.lower()
    if tried and len(tried) >= total:
        reason = "missing"
    elif "expired" in last or "aadsts700082" in last or "aadsts50173" in last:
        reason = "expired"
    else:
        reason = "invalid"
    said = " | ".join(tried) if tried else " ".join(message.split())[:600]
    return CredentialsUnavailable(
        f"{type(credential).__name__} got no token for {what}; it tried: {said}", uri,
        reason=reason, tried=tried)


class AzureCredentials:
    """What signs one Azure store's requests: an account key, a SAS, or a token credential."""

    backend = "azure"

    def __init__(self, config: StoreConfig, explicit: Any = None) -> None:
        self.config = config
        setting = config.setting("credential")
        chosen = str(setting.value) if setting is not None else "credential-chain"
        #: The credential comes from AZURE_STORAGE_CONNECTION_STRING (which the client reads).
        self.from_connection_string = (setting is not None
                                       and bool(config.environ.get(_CONNECTION_STRING)))
        self._explicit = explicit
        self._owned: Any = None
        self._lock = threading.Lock()
        #: ``token``, ``account-key`` or ``sas``.
        self.kind = "token" if explicit is not None or chosen == "credential-chain" else chosen
        #: What signs, as messages name it (never the secret itself).
        self.signer = self._signer_name(chosen)

    def _signer_name(self, chosen: str) -> str:
        login = self.config.setting("login")
        if login is not None and self._explicit is None and chosen != "credential-chain":
            what = {"account-key": "the account key", "sas": "the SAS token"}.get(chosen, chosen)
            if self.from_connection_string:
                what = "the connection string"
            return f"{what} of `cloudtrack login {login.value}` ({login.source.split(':')[0]})"
        if self._explicit is not None:
            return "the token credential given to AzureBlobs"
        if chosen == "credential-chain":
            return "DefaultAzureCredential" + (f" ({_CONNECTION_STRING} names only the endpoint)"
                                               if self.from_connection_string else "")
        if self.from_connection_string:
            return ("the AccountKey" if chosen == "account-key" else
                    "the SharedAccessSignature") + f" in {_CONNECTION_STRING}"
        return _VARIABLES[chosen]

    @property
    def connection_string(self) -> str | None:
        return self.config.environ[_CONNECTION_STRING] if self.from_connection_string else None

    def secret(self) -> str | None:
        """The account key or SAS token that signs (for checks that need it), or None."""
        if self.kind == "token":
            return None
        if self.from_connection_string:
            try:
                pairs = {k.lower(): v for k, v in
                         parse_connection_string(self.connection_string or "").items()}
            except ConfigError:
                return None
            return pairs.get(_KINDS[self.kind])
        return self.config.environ.get(_VARIABLES[self.kind])

    def sdk_credential(self) -> Any:
        """What the SDK client is given: a token credential, a key or SAS credential, or None
        when the connection string's own key or SAS signs."""
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

        if self.kind == "token":
            return self.token_credential()
        if self.from_connection_string:
            return None
        if self.kind == "account-key":
            return AzureNamedKeyCredential(str(self.config.get("account")), self.secret() or "")
        return AzureSasCredential((self.secret() or "").lstrip("?"))

    def token_credential(self) -> Any:
        """The token credential that signs (the one given, or a ``DefaultAzureCredential``
        this provider owns, created on first use), or None for a key or SAS."""
        if self.kind != "token":
            return None
        if self._explicit is not None:
            return self._explicit
        with self._lock:
            if self._owned is None:
                from azure.identity import DefaultAzureCredential

                self._owned = DefaultAzureCredential()
            return self._owned

    def sas_fields(self) -> dict[str, str]:
        return parse_sas(self.secret() or "") if self.kind == "sas" else {}

    def describe(self) -> Credential:
        setting = self.config.setting("credential")
        source = ("argument" if self._explicit is not None
                  else setting.source if setting is not None and self.kind != "token"
                  else "chain")
        if self.kind == "sas":
            fields = self.sas_fields()
            return Credential("sas", self.signer, source, expires=sas_time(fields.get("se", "")),
                              secrets=secrets(self.secret(), fields.get("sig")))
        if self.kind == "account-key":
            return Credential("account-key", self.signer, source, secrets=secrets(self.secret()))
        return Credential("token", self.signer, source, renews=True)

    def current(self, timeout: float | None = None) -> Credential:
        """A key or SAS as described (an account key that is not base64 cannot sign); for a
        token credential, a token for Azure Storage — with its claims and expiry."""
        if self.kind == "account-key":
            try:
                base64.b64decode(self.secret() or "", validate=True)
            except (binascii.Error, ValueError):
                raise CredentialsUnavailable(
                    f"the account key from {self.describe().source} is not valid base64, so "
                    "nothing can be signed", self.config.display_uri) from None
        if self.kind != "token":
            return self.describe()
        from azure.core.exceptions import ClientAuthenticationError

        credential = self.token_credential()
        try:
            token = credential.get_token(SCOPE)
        except ClientAuthenticationError as e:
            raise self._chain_error(credential, e) from e
        claims = decode_jwt(token.token)
        used = self._used_credential(credential)
        expires = jwt_expiry(claims) or (datetime.fromtimestamp(token.expires_on, timezone.utc)
                                         if token.expires_on else None)
        who = ", ".join(f"{label} {claims[key]}" for key, label in (
            ("tid", "tenant"), ("appid", "app"), ("azp", "app"), ("oid", "object id"),
            ("upn", "user"), ("unique_name", "user")) if claims.get(key))
        return Credential("token", type(credential).__name__, used, expires=expires, renews=True,
                          identity=who or None, claims=claims, secrets=secrets(token.token))

    @staticmethod
    def _used_credential(credential: Any) -> str:
        # azure-identity's chains remember which of their credentials answered, privately.
        used = getattr(credential, "_successful_credential", None)
        if used is None:
            return type(credential).__name__ if not hasattr(credential, "credentials") \
                else "a credential of the chain"
        name = type(used).__name__
        inner = getattr(used, "_credential", None)
        if inner is not None and type(inner).__name__ != name:
            name += f" ({type(inner).__name__})"
        return name

    def _chain_error(self, credential: Any, e: Exception) -> CredentialsUnavailable:
        return chain_error(credential, e, "Azure Storage", self.config.display_uri)

    def close(self) -> None:
        with self._lock:
            if self._owned is not None:
                self._owned.close()
                self._owned = None

