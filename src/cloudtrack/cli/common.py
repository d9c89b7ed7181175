"""What the commands share: how they fail."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (2: usage, 1: failure)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
