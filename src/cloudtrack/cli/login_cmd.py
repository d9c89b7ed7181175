"""``cloudtrack login`` / ``logout`` / ``whoami``: one login per store or MLflow server, its
secret in the OS keyring (:mod:`cloudtrack.credentials.vault`), and where every credential in
use comes from.

Secrets are never taken from the command line (other users can read a process's arguments):
they come from a hidden prompt, from stdin when it is not a terminal, or from a file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import fail
from cloudtrack.config import redact, resolve
from cloudtrack.credentials import mask_key_id, vault
from cloudtrack.credentials.vault import ENV_CREDENTIALS, KeyringUnavailable, Login, Vault
from cloudtrack.errors import (
    DOCTOR_HINT_START,
    BlobNotFound,
    CloudtrackError,
    CredentialsUnavailable,
    PermissionDenied,
    Unauthenticated,
)

_AZURE_KINDS = {"account-key": ("azure-account-key", "account_key", "Storage account key"),
                "sas": ("azure-sas", "sas_token", "SAS token"),
                "connection-string": ("azure-connection-string", "connection_string",
                                      "Connection string")}


def _read_secret(label: str, secret_file: str | None) -> str:
    """A secret from ``secret_file``, stdin (not a terminal) or a hidden prompt."""
    if secret_file is not None:
        try:
            value = Path(secret_file).read_text().strip()
        except OSError as e:
            fail(f"cannot read --secret-file {secret_file}: {e.strerror}", 2)
    elif not sys.stdin.isatty():
        value = sys.stdin.readline().strip()
    else:
        value = click.prompt(label, hide_input=True, err=True).strip()
    if not value:
        fail(f"no {label.lower()} given (prompt, stdin or --secret-file)", 2)
    return value


def _ask(value: str | None, label: str) -> str:
    if value:
        return value
    if not sys.stdin.isatty():
        fail(f"--{label.lower().replace(' ', '-')} is needed when stdin is not a terminal", 2)
    return str(click.prompt(label, err=True)).strip()


def _build(target: str, kind: str, opts: Mapping[str, Any]) -> Login:
    secret_file = opts["secret_file"]
    if kind == "s3":
        key_id = _ask(opts["access_key_id"], "Access key id")
        public = {"access_key_id": key_id}
        if opts["endpoint_url"]:
            public["endpoint_url"] = opts["endpoint_url"]
        return Login(target, "s3-keys", public,
                     {"secret_access_key": _read_secret("Secret access key", secret_file)})
    if kind == "azure":
        name, field, label = _AZURE_KINDS[opts["azure_credential"]]
        extra = {"endpoint_url": opts["endpoint_url"]} if opts["endpoint_url"] \
            and name != "azure-connection-string" else {}
        return Login(target, name, extra, {field: _read_secret(label, secret_file)})
    if kind == "gcs":
        key_file = opts["key_file"]
        if not key_file:
            fail("a gs:// login needs --key-file KEY.json (a service-account key)", 2)
        try:
            text = Path(key_file).read_text()
            info = json.loads(text)
        except (OSError, ValueError) as e:
            fail(f"--key-file {key_file} is not a readable JSON key file ({e})", 2)
        if not isinstance(info, dict) or info.get("type") != "service_account":
            fail(f"--key-file {key_file} is not a service-account key (its type is "
                 f"{info.get('type') if isinstance(info, dict) else None!r})", 2)
        return Login(target, "gcs-service-account",
                     {"client_email": str(info.get("client_email", ""))}, {"key_json": text})
    # an MLflow server
    if opts["token_command"]:
        return Login(target, "server-token-command", {},
                     {"token_command": opts["token_command"]})
    if opts["token"]:
        return Login(target, "server-token", {}, {"token": _read_secret("Token", secret_file)})
    username = _ask(opts["username"], "Username")
    return Login(target, "server-basic", {"username": username},
                 {"password": _read_secret("Password", secret_file)})


def _check_store(login: Login) -> str:
    """One live call to the store with ``login`` alone (no variable, no other login)."""
    from cloudtrack.blobs import open_blobs

    backend = vault.backend_of(login.target)
    env = {k: v for k, v in os.environ.items() if k not in ENV_CREDENTIALS[backend]}
    env.update({"CLOUDTRACK_KEYRING": "off", "CLOUDTRACK_RETRY_DEADLINE": "15",
                "CLOUDTRACK_MAX_ATTEMPTS": "2"})
    env.update(login.store_environ())
    config = resolve(login.target, env)
    blobs = open_blobs(config)
    try:
        blobs.exists("cloudtrack-login-check")
    except BlobNotFound as e:
        raise CloudtrackError(f"{config.display_uri}: {e}") from None
    finally:
        blobs.close()
    return f"{config.display_uri} answered with these credentials"


def _given(login: Login) -> str:
    """The credentials typed (or piped) to ``login``, as messages name them."""
    public = login.public
    return {
        "s3-keys": "access key "
                   f"{mask_key_id(public.get('access_key_id', ''))} with the secret access key given",
        "azure-account-key": "account key given",
        "azure-sas": "SAS token given",
        "azure-connection-string": "connection string given",
        "gcs-service-account": "service-account key given"
                               + (f" ({public['client_email']})" if public.get("client_email")
                                  else ""),
        "server-basic": f"password given for user {public.get('username', '')!r}",
        "server-token": "token given",
        "server-token-command": "token printed by --token-command",
    }.get(login.kind, "credentials given")


def _service_said(e: BaseException, login: Login) -> str | None:
    """What the service answered, from the SDK error kept as the cause: its code, status and
    message; None when no SDK error says."""
    cause: BaseException | None = e
    seen = 0
    while cause is not None and seen < 8:
        seen += 1
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):  # botocore
            error = response["Error"]
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            parts = [str(error.get("Code") or ""), f"HTTP {status}" if status else "",
                     str(error.get("Message") or "")]
            return _scrub(", ".join(x for x in parts if x), login)
        status = getattr(cause, "status_code", None) or getattr(cause, "code", None)
        code = getattr(cause, "error_code", None) or getattr(cause, "reason", None)
        if isinstance(status, int) or code:  # azure-core, google-api-core
            text = str(getattr(cause, "message", "") or "").splitlines()[:1]
            parts = [str(code or ""), f"HTTP {status}" if isinstance(status, int) else "",
                     *text]
            # azure-core's reason is often the message itself: say it once.
            return _scrub(", ".join(dict.fromkeys(x for x in parts if x)), login)[:400]
        cause = cause.__cause__ or cause.__context__
    return None


def _check_failed(login: Login, e: CloudtrackError) -> str:
    """Why the live check failed, said of the credentials given: they came from the prompt,
    stdin or --secret-file (not from the environment the store's errors name), and the doctor
    cannot see them, since nothing was stored."""
    target = redact(login.target)
    endpoint = login.public.get("endpoint_url")
    who = target + (f" (at {redact(endpoint)})" if endpoint else "")
    said = _service_said(e, login)
    text = _scrub(str(e), login).split(DOCTOR_HINT_START, 1)[0].rstrip(" .;")
    again = f"check it and run `cloudtrack login {target}` again; nothing stored"
    if isinstance(e, CredentialsUnavailable):  # refused before any request was sent
        return f"the {_given(login)} cannot be used ({said or text}); {again}"
    if isinstance(e, Unauthenticated):
        return f"{who} refused the {_given(login)} ({said or type(e).__name__}); {again}"
    if isinstance(e, PermissionDenied):
        return (f"{who} accepted the {_given(login)} but denied the check's read "
                f"({said or text}); nothing stored (`--no-check` stores the login without "
                "the check)")
    return (f"the check with these credentials failed: {text}; nothing stored (`--no-check` "
            "stores the login without the check)")


#: The options that say something of one kind of target only, and the kinds they are for.
_OPTION_KINDS = {
    "access_key_id": ("s3",), "endpoint_url": ("s3", "azure"), "azure_credential": ("azure",),
    "key_file": ("gcs",), "username": ("server",), "token": ("server",),
    "token_command": ("server",),
}
_KIND_NAMES = {"s3": "s3://", "azure": "wasbs:// or abfss://", "gcs": "gs://",
               "server": "an MLflow server (http(s)://)"}


def _refuse_options_of_other_targets(kind: str, opts: Mapping[str, Any]) -> None:
    """A usage error naming every option given that is for another kind of target (it would
    be ignored, and the login asked for what it does not need)."""
    ctx = click.get_current_context()
    wrong = [name for name, kinds in _OPTION_KINDS.items() if kind not in kinds and opts[name]
             and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if wrong:
        said = "; ".join(f"--{name.replace('_', '-')} is for " + " and ".join(
            _KIND_NAMES[k] for k in _OPTION_KINDS[name]) for name in wrong)
        them = "them" if len(wrong) > 1 else "it"
        fail(f"{said}, not for {_KIND_NAMES[kind]}: leave {them} out (`cloudtrack login "
             "--help` says what each kind of target takes)", 2)


@main.command("login")
@click.argument("target")
@click.option("--access-key-id", help="s3://: the access key id (prompted if not given).")
@click.option("--endpoint-url", help="s3://: an S3-compatible endpoint (MinIO, R2, …); "
              "wasbs:// with a key or SAS: a blob endpoint other than the URI's (Azurite, a "
              "private endpoint). Kept with the login.")
@click.option("--azure-credential", type=click.Choice(sorted(_AZURE_KINDS)),
              default="account-key", show_default=True,
              help="wasbs:// / abfss://: what the secret is.")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="gs://: a service-account key file; its content goes to the keyring.")
@click.option("--username", help="MLflow server: the user name (its password is prompted).")
@click.option("--token", is_flag=True, help="MLflow server: the secret is a bearer token.")
@click.option("--token-command", help="MLflow server: a command that prints a fresh token "
              "(run again before each token expires).")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              help="Read the secret from this file (else stdin when piped, else a prompt).")
@click.option("--insecure-storage", is_flag=True, help="No secure keyring here: keep the secret "
              "in a file of mode 0600 instead.")
@click.option("--no-check", is_flag=True, help="Store without the live check.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def login_cmd(target: str, **opts: Any) -> None:
    """Keep the credentials for TARGET (a store URI or an MLflow server URL) in the OS
    keyring; unchanged MLflow code pointed at TARGET (or anything under it) then uses them.

    Order everywhere: explicit arguments, environment variables, this login, the SDKs' chains.
    """
    try:
        kind = vault.backend_of(target)
        vault.canonical(target)
    except CloudtrackError as e:
        fail(str(e), 2)
    _refuse_options_of_other_targets(kind, opts)
    login = _build(target, kind, opts)
    checked = "not checked (--no-check)"
    if not opts["no_check"]:
        try:
            if kind == "server":
                from cloudtrack.credentials import server

                status, said = server.check(target, login)
                if status == 401:
                    fail(f"{redact(target)} refused the {_given(login)} (HTTP 401); check it "
                         f"and run `cloudtrack login {redact(target)}` again; nothing stored", 1)
                if status not in (200, 403):
                    fail(f"{redact(target)}: {said}; nothing stored", 1)
                checked = said
            else:
                checked = _check_store(login)
        except CloudtrackError as e:
            fail(_check_failed(login, e), 1)
    try:
        stored = Vault().save(login, insecure=opts["insecure_storage"])
    except KeyringUnavailable as e:
        fail(str(e), 1)
    outranking = vault.environment_outranks(kind, os.environ)
    result = {"target": stored.target, "kind": stored.kind, "storage": stored.storage,
              "keyring": stored.keyring, "check": checked,
              "outranked_by": outranking}
    if opts["as_json"]:
        click.echo(json.dumps(result, indent=2))
    else:
        where = (f"the OS keyring ({stored.keyring})" if stored.storage == "keyring"
                 else f"{Vault().insecure_path} (mode 0600)")
        click.echo(f"Logged in to {stored.target}: {vault.KINDS[stored.kind]}, kept in {where}.")
        click.echo(f"Check: {checked}.")
    if stored.storage == "file":
        click.echo("warning: the secret is in a plain file; anyone who can read it as this user "
                   "can use it", err=True)
    if outranking:
        click.echo(f"warning: {', '.join(outranking)} set in this environment outrank(s) the "
                   "login; unset to use it", err=True)


def _scrub(text: str, login: Login) -> str:
    for secret in login.secrets():
        text = text.replace(secret, "***")
    return redact(text)


@main.command("logout")
@click.argument("target")
def logout_cmd(target: str) -> None:
    """Forget the login for TARGET (its secret leaves the keyring)."""
    try:
        kind = vault.backend_of(target)
        removed = Vault().remove(target)
        parent = Vault().covering(target) if removed is None else None
    except KeyringUnavailable as e:
        fail(str(e), 1)
    except CloudtrackError as e:
        fail(str(e), 2)
    if removed is None and parent is not None:
        # A login covers everything under its target: this URI still signs with it.
        click.echo(f"No login of its own for {redact(target)}: it uses the login of "
                   f"{parent.target}, which covers everything under it; run `cloudtrack logout "
                   f"{parent.target}` to remove that one.")
    elif removed is None:
        click.echo(f"No login for {redact(target)}.")
    else:
        click.echo(f"Logged out of {removed.target}.")
    still = vault.environment_outranks(kind, os.environ)
    if still:
        click.echo(f"warning: {', '.join(still)} still set in this environment: requests to "
                   f"{redact(target)} still authenticate with it", err=True)


#: What the secret of each kind of credential is called.
_SECRET_NAMES = {"access-key": "secret access key", "account-key": "account key",
                 "sas": "SAS token", "token": "access token"}


def set_from(name: str, source: str | None) -> str:
    """That a secret is set and where it comes from: none of its characters (not even a
    tail: for a short password that is much of it)."""
    return f"{name} set" + (f" (from {source})" if source else "")


def _when(ts: datetime | float | None) -> str | None:
    if ts is None:
        return None
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _whoami_store(target: str) -> dict[str, Any]:
    from cloudtrack.credentials import credentials_for

    out: dict[str, Any] = {"target": redact(target), "kind": "store"}
    try:
        config = resolve(target)
    except CloudtrackError as e:
        out["error"] = str(e)
        return out
    provider = credentials_for(config)
    try:
        described = provider.describe()
        out.update(credential=described.kind, signer=described.signer, source=described.source)
        cred = provider.current(timeout=10)
        out.update(signer=cred.signer, source=cred.source, expires=_when(cred.expires),
                   renews=cred.renews, identity=cred.identity)
        if config.backend == "s3" and not cred.identity:
            out["identity"] = _s3_identity(config)
        login = config.setting("login")
        source = {"env": "env:AWS_SECRET_ACCESS_KEY"}.get(cred.source, cred.source)
        secret = set_from(_SECRET_NAMES.get(cred.kind, "secret"), source) if cred.secrets \
            else None
        key_id = config.get("access_key_id")
        out["secret"] = " / ".join(x for x in (mask_key_id(str(key_id)) if key_id else None,
                                               secret) if x) or None
        if login is not None:
            out["login"] = login.value
    except CloudtrackError as e:
        out["error"] = str(e)
    finally:
        provider.close()
    return out


def _s3_identity(config: Any) -> str | None:
    """Who the S3 credentials are, as STS GetCallerIdentity says (at the store's endpoint when
    it is custom: MinIO and moto answer there); None when no STS answers."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from cloudtrack.blobs import open_blobs
    from cloudtrack.blobs.s3.client import sdk_verify

    blobs: Any = open_blobs(config)
    try:
        frozen = blobs.credentials.signing().get_frozen_credentials()
        env = config.environ
        endpoint = env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL") or (
            blobs.endpoint_url if config.get("endpoint_url") else None)
        sts = blobs.credentials.session.create_client(
            "sts", region_name=blobs.region, endpoint_url=endpoint, verify=sdk_verify(config),
            aws_access_key_id=frozen.access_key, aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
            config=Config(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 1}))
        return str(sts.get_caller_identity().get("Arn")) or None
    except (BotoCoreError, ClientError, AttributeError):
        return None
    finally:
        blobs.close()


def _whoami_server(target: str) -> dict[str, Any]:
    from cloudtrack.credentials import server
    from cloudtrack.credentials.base import decode_jwt

    out: dict[str, Any] = {"target": redact(target), "kind": "server"}
    from_env = vault.environment_outranks("server", os.environ)
    if from_env:
        out.update(source=", ".join(f"env:{n}" for n in from_env),
                   credential="MLflow's variables")
        username = os.environ.get("MLFLOW_TRACKING_USERNAME")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        out["identity"] = username or (decode_jwt(token).get("sub") if token else None)
        if token:
            out["secret"] = set_from("token", "env:MLFLOW_TRACKING_TOKEN")
        elif os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            out["secret"] = set_from("password", "env:MLFLOW_TRACKING_PASSWORD")
        return out
    try:
        login = server.login_for(target)
        if login is None:
            out.update(source="none", credential="none")
            return out
        out.update(source=login.source, credential=vault.KINDS[login.kind], login=login.target)
        header, source = server.authorization(login)
        if login.kind == "server-basic":
            out["identity"] = login.public.get("username")
            out["secret"] = set_from("password", login.source)
        else:
            assert source is not None
            token = header.removeprefix("Bearer ")
            claims = decode_jwt(token)
            out["identity"] = claims.get("sub") or claims.get("email") or claims.get("upn")
            out["expires"] = _when(source.expires)
            out["renews"] = login.kind == "server-token-command"
            out["secret"] = set_from("token" if login.kind == "server-token" else
                                     "token of the token command", login.source)
        out["check"] = server.check(target, login)[1]
    except CloudtrackError as e:
        out["error"] = str(e)
    return out


@main.command("whoami")
@click.argument("target", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def whoami_cmd(target: str | None, as_json: bool) -> None:
    """For TARGET (default: every login, and MLFLOW_TRACKING_URI): the credential in use, where
    it came from, that its secret is set (never any of its characters), its expiry, and the
    identity it stands for."""
    targets = [target] if target else [login.target for login in Vault().logins()]
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    if not target and tracking and tracking not in targets and "://" in tracking:
        targets.append(tracking)
    try:
        info = vault.bounded(vault.keyring_info, vault.keyring_timeout(), "finding the keyring")
        keyring = {"backend": info.name, "secure": info.secure, "why": info.why}
    except KeyringUnavailable as e:
        keyring = {"backend": None, "secure": False, "why": str(e)}
    rows = []
    for t in targets:
        try:
            kind = vault.backend_of(t)
        except CloudtrackError as e:
            rows.append({"target": redact(t), "error": str(e)})
            continue
        rows.append(_whoami_server(t) if kind == "server" else _whoami_store(t))
    failed = any("error" in r for r in rows)
    if as_json:
        click.echo(json.dumps({"keyring": keyring, "targets": rows}, indent=2))
    else:
        click.echo(f"keyring  {keyring['backend']} "
                   f"({'secure' if keyring['secure'] else 'NOT secure'}: {keyring['why']})")
        if not rows:
            click.echo("no logins (cloudtrack login TARGET), and MLFLOW_TRACKING_URI is unset")
        for r in rows:
            click.echo(f"\n{r['target']}")
            for name in ("credential", "signer", "source", "secret", "identity", "expires",
                         "renews", "login", "check", "error"):
                if r.get(name) not in (None, ""):
                    click.echo(f"  {name:<10} {r[name]}")
    sys.exit(1 if failed else 0)
