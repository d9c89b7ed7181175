"""Who signs for an ``s3://`` store: the AWS credential chain, as botocore runs it.

When the store was resolved from the process environment, botocore's whole chain applies
(environment, profiles, SSO, web identity, container and instance roles) exactly as for any
AWS tool.  When it was resolved from another environment, that environment's
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or its ``AWS_PROFILE``) are used explicitly.
The chain runs once per store — when its client is created — and the provider and the client
share its result.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import botocore.credentials
import botocore.exceptions as bex
import botocore.session

from cloudtrack.config import StoreConfig
from cloudtrack.credentials.base import Credential, mask_key_id, secrets
from cloudtrack.errors import ConfigError, CredentialsUnavailable

#: botocore's name for where credentials came from -> how the doctor says it.
METHODS: Mapping[str, str] = {
    "env": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment",
    "explicit": "the keys of the resolved environment",
    "shared-credentials-file": "a profile of the shared credentials file",
    "config-file": "a profile of the AWS config file",
    "assume-role": "a role assumed through the profile",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE: EKS IRSA, CI)",
    "sso": "IAM Identity Center (SSO) login of the profile",
    "custom-process": "the profile's credential_process",
    "container-role": "the container's role (ECS/EKS credentials endpoint)",
    "iam-role": "the instance's role (EC2 instance metadata)",
}
#: Methods whose credentials renew themselves: a short remaining life is no cause for alarm.
RENEWING = frozenset({"assume-role", "assume-role-with-web-identity", "container-role",
                      "iam-role", "sso", "custom-process"})
#: Methods that name a profile.
_PROFILED = frozenset({"shared-credentials-file", "config-file", "sso", "assume-role",
                       "custom-process"})

_loader_lock = threading.Lock()
_shared_loader: Any = None


def new_session() -> botocore.session.Session:
    """A fresh botocore session (its own credentials and profile) sharing one model loader.

    Loading S3's service model costs about 0.4 s in every new session, and MLflow opens
    artifact repositories per call; the loader is a cache of read-only JSON, so all sessions
    share the first one's.  (boto3.Session cannot share it: each one appends to the loader's
    search path.)
    """
    global _shared_loader
    session = botocore.session.Session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _shared_loader)
    return session


class _ChainOnce(botocore.credentials.CredentialResolver):
    """botocore's chain, run at most once: a session asks its resolver again whenever it holds
    no credentials, and every pass may wait on instance metadata."""

    def __init__(self, inner: botocore.credentials.CredentialResolver) -> None:
        super().__init__(inner.providers)
        self._inner = inner
        self._ran = False
        self._found: Any = None
        self._lock = threading.Lock()

    def load_credentials(self) -> Any:
        with self._lock:
            if not self._ran:
                self._found = self._inner.load_credentials()
                self._ran = True
            return self._found


class S3Credentials:
    """The AWS credentials of one ``s3://`` store."""

    backend = "s3"
    #: The botocore session the store's clients are created from.
    session: botocore.session.Session

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        #: The profile named by the resolved environment, when it is not the process's.
        self.profile: str | None = None
        self._keys: dict[str, Any] = {}
        try:
            self._set_up()
        except bex.ProfileNotFound as e:
            raise self.profile_error(e) from e
        self._explicit = botocore.credentials.Credentials(
            self._keys["aws_access_key_id"], self._keys["aws_secret_access_key"],
            self._keys["aws_session_token"], method="explicit") if self._keys else None

    def _set_up(self) -> None:
        config = self.config
        self.session = new_session()
        env = config.environ
        if env is not os.environ:
            key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
            if bool(key) != bool(secret):
                raise ConfigError(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together; only "
                    f"{'AWS_ACCESS_KEY_ID' if key else 'AWS_SECRET_ACCESS_KEY'} is set for "
                    f"{config.display_uri}")
            if key:
                # Explicit keys outrank a profile, as AWS_* variables do in botocore's chain.
                self._keys = {"aws_access_key_id": key, "aws_secret_access_key": secret,
                              "aws_session_token": env.get("AWS_SESSION_TOKEN") or None}
            elif env.get("AWS_PROFILE"):
                self.profile = env["AWS_PROFILE"]
                self.session.set_config_variable("profile", self.profile)
        if not self._keys:
            self.session.register_component(
                "credential_provider", _ChainOnce(self.session.get_component("credential_provider")))

    def client_arguments(self) -> dict[str, Any]:
        """The credential arguments of ``session.create_client``: the explicit keys, if any."""
        return dict(self._keys)

    def profile_error(self, e: bex.ProfileNotFound) -> ConfigError:
        profile = self.profile or self.config.environ.get("AWS_PROFILE") or e.kwargs.get("profile")
        return ConfigError(f"AWS profile {profile!r} for {self.config.display_uri} is not in "
                           "~/.aws/config or ~/.aws/credentials; fix AWS_PROFILE")

    def signing(self) -> Any:
        """The botocore credentials the store's client signs with (None: the chain found
        none).  The chain runs once per store, when first needed — creating the client does
        that — and its answer is kept."""
        if self._explicit is not None:
            return self._explicit
        try:
            return self.session.get_credentials()
        except bex.ProfileNotFound as e:
            raise self.profile_error(e) from e

    def describe(self) -> Credential:
        access = self.config.setting("access_key_id")
        login = self.config.setting("login")
        if access is not None and access.value:
            signer = ("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" if login is None
                      else f"the keys of `cloudtrack login {login.value}`")
            return Credential("access-key", signer, access.source)
        profile = self.profile or self.config.get("profile")
        if profile:
            return Credential("access-key", f"profile {profile}", f"profile:{profile}")
        return Credential("access-key", "the AWS credential chain", "chain")

    def current(self, timeout: float | None = None) -> Credential:
        """The keys that sign now (refreshed when their method renews them); raises
        :class:`CredentialsUnavailable` when the chain found none or they cannot be had."""
        creds = self.signing()
        if creds is None:
            raise CredentialsUnavailable(
                "no AWS credentials found; the chain looked at: " + "; ".join(self.places()),
                self.config.display_uri, reason="missing", tried=self.places())
        try:
            frozen = creds.get_frozen_credentials()
        except RuntimeError as e:
            # botocore's refreshable credentials, expired and not refreshable.
            expiry = self.expiry(creds)
            raise CredentialsUnavailable(
                f"the {creds.method} credentials expired"
                + (f" at {expiry:%Y-%m-%d %H:%M:%S %Z}" if expiry else "") + f" ({e})",
                self.config.display_uri, reason="expired") from e
        except (bex.BotoCoreError, bex.ClientError) as e:
            text = str(e)
            raise CredentialsUnavailable(
                f"the {creds.method} credential provider failed: {text}", self.config.display_uri,
                reason="expired" if "expired" in text.lower() else "invalid") from e
        what = METHODS.get(creds.method, creds.method)
        source = creds.method
        login = self.config.setting("login")
        if creds.method == "explicit" and login is not None:
            what = f"`cloudtrack login {login.value}` ({login.source.split(':')[0]})"
            # botocore calls any keys handed to the client "explicit"; these are the login's.
            source = login.source
        if creds.method in _PROFILED:
            what += f" (profile {self.config.environ.get('AWS_PROFILE') or 'default'!r})"
        session = " with a session token" if frozen.token else ""
        return Credential("access-key", f"access key {mask_key_id(frozen.access_key)}{session} "
                          f"from {what}", source, expires=self.expiry(creds),
                          renews=creds.method in RENEWING,
                          secrets=secrets(frozen.secret_key, frozen.token))

    @staticmethod
    def expiry(creds: Any) -> datetime | None:
        # botocore keeps it on RefreshableCredentials only, and names it privately.
        expiry = getattr(creds, "_expiry_time", None)
        return expiry if isinstance(expiry, datetime) else None

    def places(self) -> tuple[str, ...]:
        """What the AWS chain looks at, and what each place holds, without the network."""
        environ = self.config.environ
        home = environ.get("HOME") or os.path.expanduser("~")
        profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE") or "default"
        shared = environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws",
                                                                            "credentials")
        conf = environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
        metadata_off = (environ.get("AWS_EC2_METADATA_DISABLED") or "").lower() == "true"
        return (
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: "
            + ("only one is set" if bool(environ.get("AWS_ACCESS_KEY_ID"))
               != bool(environ.get("AWS_SECRET_ACCESS_KEY")) else "unset"),
            f"profile {profile!r}: " + ", ".join(
                f"{path} {'exists' if os.path.exists(path) else 'missing'}"
                for path in (shared, conf)),
            "AWS_WEB_IDENTITY_TOKEN_FILE: "
            + ("set" if environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") else "unset"),
            "container credentials (AWS_CONTAINER_CREDENTIALS_*): "
            + ("set" if environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
               or environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") else "unset"),
            "instance metadata: " + ("disabled (AWS_EC2_METADATA_DISABLED)" if metadata_off
                                     else "no answer (not on EC2, or blocked)"),
        )

    def close(self) -> None:
        pass
