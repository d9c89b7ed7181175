"""What the commands share: how they fail, and how they refuse a number out of bounds."""

from __future__ import annotations

import math
import sys
from typing import NoReturn

import click


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (2: usage, 1: failure)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Bounded(click.ParamType):
    """A whole number, or a number of seconds, from ``low`` to ``high``: refused in words
    that say what to give, not click's "is not a valid integer range"."""

    def __init__(self, low: float, high: float, *, seconds: bool = False) -> None:
        self.low, self.high, self.seconds = low, high, seconds
        self.name = "seconds" if seconds else "count"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SECONDS" if self.seconds else "N"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float | int:
        what = "a number of seconds" if self.seconds else "a whole number"
        span = f"from {self.low:g} to {self.high:g}"
        try:
            number: float | int = float(str(value)) if self.seconds else int(str(value), 10)
            if not math.isfinite(number):
                raise ValueError(value)
        except ValueError:
            self.fail(f"{value!r} is not {what}: give one {span}", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{value} is out of range: give {what} {span}", param, ctx)
        return number
