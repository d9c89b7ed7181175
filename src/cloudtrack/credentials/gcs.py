"""Who signs for a ``gs://`` store: the key file of ``GOOGLE_APPLICATION_CREDENTIALS``, nobody
for a bare ``STORAGE_EMULATOR_HOST`` (an emulator must not receive real tokens), else
Application Default Credentials (gcloud's login file, the metadata server).

Credentials come from the resolved config, never from a fallback the caller did not ask for:
a missing ADC is an error, not an anonymous client (MLflow's own ``gs://`` artifact store
silently goes anonymous, and every request then fails as "anonymous caller").  They are loaded on first use, so opening a store costs no
ADC lookup.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

import google.auth
import google.auth.exceptions
from google.auth.credentials import AnonymousCredentials

from cloudtrack.config import StoreConfig, redact
from cloudtrack.credentials.base import Credential, secrets
from cloudtrack.credentials.vault import GCS_KEY_INFO
from cloudtrack.errors import CredentialsUnavailable, TransientError

SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",)
LOGIN_HINT = ("run `gcloud auth application-default login`, or set "
              "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file")
#: The ``type`` of a file google-auth loads as credentials.
KEY_FILE_TYPES = frozenset({"service_account", "authorized_user", "external_account",
                            "impersonated_service_account", "external_account_authorized_user"})


@dataclass(frozen=True)
class KeyFileProblem:
    """Why a key file cannot sign: ``missing`` or ``invalid``, in words, and the fix."""

    reason: str
    summary: str
    fix: str


class GcsCredentials:
    """The Google credentials of one ``gs://`` store."""

    backend = "gcs"

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        path = config.get("credentials_file")
        #: The key file named by GOOGLE_APPLICATION_CREDENTIALS, if any.
        self.key_file = str(path) if path else None
        #: The service-account key of the store's ``cloudtrack login``, if any.
        self.key_info = config.environ.get(GCS_KEY_INFO) or None
        #: No credentials are sent: a bare STORAGE_EMULATOR_HOST, as the SDK does it.
        self.anonymous = (self.key_file is None and self.key_info is None
                          and bool(config.get("emulator_host")))
        self._lock = threading.Lock()
        self._loaded: tuple[Any, str | None] | None = None

    @property
    def adc_file(self) -> str:
        """Where ``gcloud auth application-default login`` leaves its credentials."""
        environ = self.config.environ
        base = environ.get("CLOUDSDK_CONFIG") or os.path.join(
            environ.get("HOME") or os.path.expanduser("~"), ".config", "gcloud")
        return os.path.join(base, "application_default_credentials.json")

    def load(self) -> tuple[Any, str | None]:
        """The google-auth credentials and their project, loaded once (ADC may ask the
        metadata server).  Raises :class:`CredentialsUnavailable` when there are none."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> tuple[Any, str | None]:
        try:
            if self.key_file:
                creds, project = google.auth.load_credentials_from_file(self.key_file,
                                                                        scopes=SCOPES)
                return creds, project
            if self.key_info:
                return self._load_login()
            if self.anonymous:
                return AnonymousCredentials(), None
            creds, project = google.auth.default(scopes=SCOPES)
            return creds, project
        except google.auth.exceptions.DefaultCredentialsError as e:
            uri = self.config.display_uri
            if self.key_file:
                message = (f"cannot load the credentials in GOOGLE_APPLICATION_CREDENTIALS="
                           f"{self.key_file} for {uri}: {e}; point it at a valid "
                           "service-account or external-account key file")
                reason = "missing" if not os.path.exists(self.key_file) else "invalid"
            else:
                message = (f"no Google credentials found for {uri} (Application Default "
                           f"Credentials are not set up); {LOGIN_HINT}")
                reason = "missing"
            raise CredentialsUnavailable(redact(message), uri, reason=reason,
                                         tried=self.places()) from e

    def _load_login(self) -> tuple[Any, str | None]:
        from google.oauth2 import service_account

        login = self.config.setting("login")
        target = login.value if login is not None else self.config.display_uri
        try:
            info = json.loads(self.key_info or "")
            creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        except (ValueError, TypeError, KeyError) as e:
            raise CredentialsUnavailable(
                f"the service-account key of `cloudtrack login {target}` cannot be loaded "
                f"({type(e).__name__}); run `cloudtrack login {target} --key-file KEY.json` "
                "again", self.config.display_uri, reason="invalid") from None
        return creds, info.get("project_id")

    def key_file_problem(self) -> KeyFileProblem | None:
        """What is wrong with the file GOOGLE_APPLICATION_CREDENTIALS names, found without the
        network; None when it looks like credentials (or none is named)."""
        path = self.key_file
        if path is None:
            return None
        if not os.path.exists(path):
            return KeyFileProblem(
                "missing", f"GOOGLE_APPLICATION_CREDENTIALS names {path}, which does not exist",
                "point GOOGLE_APPLICATION_CREDENTIALS at the key file, or unset it to use "
                "gcloud's Application Default Credentials")
        try:
            with open(path) as f:
                info = json.load(f)
        except OSError as e:
            return KeyFileProblem(
                "missing", f"GOOGLE_APPLICATION_CREDENTIALS={path} cannot be read ({e.strerror})",
                f"make {path} readable by this user")
        except ValueError:
            return KeyFileProblem(
                "invalid", f"GOOGLE_APPLICATION_CREDENTIALS={path} is not a JSON key file",
                "download the key again (IAM → Service accounts → Keys), or run "
                "`gcloud auth application-default login`")
        kind = info.get("type") if isinstance(info, dict) else None
        if kind not in KEY_FILE_TYPES:
            return KeyFileProblem(
                "invalid", f"GOOGLE_APPLICATION_CREDENTIALS={path} is not a credentials file "
                f"(type {kind!r})", "use a service-account key or an ADC file")
        return None

    def places(self) -> tuple[str, ...]:
        """Where Application Default Credentials are looked for, and what each holds."""
        return ("GOOGLE_APPLICATION_CREDENTIALS: " + (self.key_file or "unset"),
                f"gcloud ADC file {self.adc_file}: "
                + ("exists" if os.path.exists(self.adc_file) else "missing"))

    def describe(self) -> Credential:
        source = self.config.setting("credentials_file")
        if self.anonymous:
            return Credential("anonymous", "no credentials (STORAGE_EMULATOR_HOST)", "emulator")
        login = self.config.setting("login")
        where = (f"the key file from {source.source}" if source is not None and source.value
                 else f"the service-account key of `cloudtrack login {login.value}` "
                      f"({login.source.split(':')[0]})" if self.key_info and login is not None
                 else "Application Default Credentials")
        if self._loaded is None:
            return Credential("token", where, where)
        creds = self._loaded[0]
        return Credential("token", where, where, expires=getattr(creds, "expiry", None),
                          renews=True, identity=self._identity(creds),
                          secrets=secrets(getattr(creds, "token", None)))

    @staticmethod
    def _identity(creds: Any) -> str | None:
        """``serviceAccount:<email>`` or ``user:<account>``, as IAM bindings name members."""
        kind = type(creds).__module__ + "." + type(creds).__name__
        email = getattr(creds, "service_account_email", None)
        if "service_account" in kind and email:
            return f"serviceAccount:{email}"
        if "oauth2.credentials" in kind and getattr(creds, "account", None):
            return f"user:{creds.account}"
        return None

    def who(self) -> str:
        """Whose credentials these are, in words (loads them)."""
        creds, _ = self.load()
        kind = type(creds).__module__ + "." + type(creds).__name__
        email = getattr(creds, "service_account_email", None) or getattr(creds, "signer_email", None)
        if "service_account" in kind and email:
            return f"service account {email}"
        if "oauth2.credentials" in kind:
            account = getattr(creds, "account", None)
            return "the user login of `gcloud auth application-default login`" + (
                f" ({account})" if account else "")
        if "external_account" in kind or "identity_pool" in kind or "aws" in kind:
            return "workload identity federation" + (f" as {email}" if email else "")
        if "compute_engine" in kind:
            return "the VM's service account" + (f" {email}" if email and email != "default"
                                                 else "")
        if "impersonated" in kind:
            return f"impersonating {getattr(creds, '_target_principal', '?')}"
        return type(creds).__name__

    def project(self) -> str | None:
        creds, project = self.load()
        return getattr(creds, "project_id", None) or getattr(creds, "quota_project_id", None) \
            or project

    def current(self, timeout: float | None = None) -> Credential:
        """A fresh access token (``timeout`` bounds the token request); anonymous credentials
        as described."""
        creds, _ = self.load()
        if self.anonymous:
            return self.describe()
        import google.auth.transport.requests as gtr

        class _Bounded(gtr.Request):
            def __call__(self, url: str, method: str = "GET", body: Any = None,
                         headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
                return super().__call__(url, method=method, body=body, headers=headers,
                                        timeout=limit, **kwargs)

        limit = timeout
        try:
            creds.refresh(_Bounded())
        except google.auth.exceptions.RefreshError as e:
            said = " ".join(str(e.args[0] if e.args else e).split())
            raise CredentialsUnavailable(
                f"the token endpoint refused the credentials ({said})", self.config.display_uri,
                reason="expired" if "expired" in said.lower() else "invalid") from e
        except google.auth.exceptions.TransportError as e:
            raise TransientError(f"the token endpoint could not be reached ({e})",
                                 self.config.display_uri) from e
        return self.describe()

    def close(self) -> None:
        pass
