"""``cloudtrack config URI``: how a store URI resolves, and where every setting came from."""

from __future__ import annotations

import json

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import fail
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import CloudtrackError


def _config_dict(config: StoreConfig) -> dict[str, object]:
    return {
        "uri": config.display_uri,
        "backend": config.backend,
        "container": config.container,
        "prefix": config.prefix,
        "settings": [
            {"name": s.name, "value": s.shown() if s.value is not None else None,
             "source": s.source}
            for s in config.settings
        ],
    }


@main.command("config")
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def config_cmd(uri: str, as_json: bool) -> None:
    """Show how URI resolves: container, prefix, and where every setting came from."""
    try:
        config = resolve(uri)
    except CloudtrackError as e:
        fail(str(e), 2)
        return
    data = _config_dict(config)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"store      {data['uri']}")
    click.echo(f"backend    {config.backend}")
    click.echo(f"container  {config.container}")
    click.echo(f"prefix     {config.prefix or '(none)'}")
    for s in config.settings:
        click.echo(f"  {s.name:<26} {s.shown():<40} from {s.source}")


