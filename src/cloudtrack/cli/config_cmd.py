"""``cloudtrack config [URI]``: how a store URI resolves, and where every setting came from."""

from __future__ import annotations

import json
import os

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import fail
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.config.model import EnvVar, Setting
from cloudtrack.doctor.core import shown
from cloudtrack.errors import CloudtrackError


def _process_settings(config: StoreConfig) -> list[Setting]:
    """The settings read apart from the store's (for logins, the read cache, a server's
    read-ahead), as this process would use them with this store; a wrong value raises."""
    from cloudtrack import warmup
    from cloudtrack.config.variables import (
        CLOUDTRACK_KEYRING,
        CLOUDTRACK_KEYRING_TIMEOUT,
        CLOUDTRACK_READ_CACHE,
        CLOUDTRACK_SERVER_WARMUP,
    )
    from cloudtrack.credentials.vault import keyring_enabled, keyring_timeout
    from cloudtrack.store import readcache

    def source(var: EnvVar) -> str:
        return f"env:{var.name}" if os.environ.get(var.name, "").strip() else "default"

    runs = warmup.budget()
    cache = readcache.enabled(config)
    return [
        Setting("keyring", "on" if keyring_enabled() else "off", source(CLOUDTRACK_KEYRING)),
        Setting("keyring_timeout", keyring_timeout(), source(CLOUDTRACK_KEYRING_TIMEOUT)),
        Setting("read_cache", "on" if cache else "off", source(CLOUDTRACK_READ_CACHE)),
        Setting("server_warmup", f"{runs} runs" if runs else "off",
                source(CLOUDTRACK_SERVER_WARMUP)),
    ]


def _config_dict(config: StoreConfig, origin: str) -> dict[str, object]:
    return {
        "uri": config.display_uri,
        "origin": origin,
        "backend": config.backend,
        "container": config.container,
        "prefix": config.prefix,
        "settings": [
            {"name": s.name, "value": shown(s) if s.value is not None else None,
             "source": s.source}
            for s in [*config.settings, *_process_settings(config)]
        ],
    }


@main.command("config")
@click.argument("uri", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def config_cmd(uri: str | None, as_json: bool) -> None:
    """Show how URI resolves: container, prefix, and where every setting came from.

    URI defaults to MLFLOW_TRACKING_URI. Secrets are never shown; access key ids are masked
    as the doctor masks them. Exit status: 0 resolved, 2 usage error or a URI that does not
    resolve.
    """
    origin = "the command line"
    if not uri:
        # Like the doctor, but without MLflow's own default: that is never a cloudtrack store.
        uri, origin = os.environ.get("MLFLOW_TRACKING_URI", ""), "env:MLFLOW_TRACKING_URI"
        if not uri:
            raise click.UsageError(
                "no store URI: pass one (e.g. `cloudtrack config s3://bucket/prefix`) or set "
                "MLFLOW_TRACKING_URI")
    try:
        config = resolve(uri)
    except CloudtrackError as e:
        fail(str(e) + ("" if origin == "the command line" else f" (the URI came from {origin})"),
             2)
    try:
        data = _config_dict(config, origin)
    except CloudtrackError as e:  # a variable read apart from the store's
        fail(str(e), 2)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"store      {data['uri']}" + (f"  (from {origin})" if origin != "the command line"
                                               else ""))
    click.echo(f"backend    {config.backend}")
    click.echo(f"container  {config.container}")
    click.echo(f"prefix     {config.prefix or '(none)'}")
    for s in [*config.settings, *_process_settings(config)]:  # checked above
        click.echo(f"  {s.name:<26} {shown(s):<40} from {s.source}")
