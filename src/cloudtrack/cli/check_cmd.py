"""``cloudtrack check URI``: say whether a store is whole, and with ``--repair`` remove what is
provably garbage (:mod:`cloudtrack.check`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import fail
from cloudtrack.errors import BlobNotFound, CloudtrackError, ConfigError


class Bar:
    """One line on stderr per phase (listing, reading, repairing), redrawn at most ten times
    a second; nothing when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label, self.done, self.drawn = "", 0, 0.0
        self.total: int | None = None

    def start(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.drawn < 0.1):
            return
        self.drawn = now
        if self.total:
            filled = int(24 * min(self.done, self.total) / self.total)
            text = f"{self.label:<18} [{'#' * filled}{'-' * (24 - filled)}] " \
                   f"{self.done}/{self.total}"
        else:
            text = f"{self.label:<18} {self.done} objects"
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


@main.command("check")
@click.argument("uri")
@click.option("--repair", is_flag=True,
              help="Remove what is provably garbage and write back what can be rebuilt.")
@click.option("--dry-run", is_flag=True, help="With --repair: only say what it would do.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--grace", default="1h", show_default=True, metavar="DURATION",
              help="Objects younger than this are never garbage (a writer may be half-way): "
                   "3600, 90s, 30m, 1h, 2d.")
def check_cmd(uri: str, repair: bool, dry_run: bool, as_json: bool, grace: str) -> None:
    """Read the whole store at URI and report what is inconsistent: records that do not
    parse, run heads without a run index or the reverse, history of runs that do not exist,
    name claims of missing experiments, registry versions of missing models, artifacts of
    hard-deleted runs, leftovers of crashed writers (pending experiment records, temporary
    files), stale page entries.

    With --repair, removes what is provably garbage — never anything still reachable, never
    anything younger than --grace — and writes back indexes and name claims that can be
    rebuilt. Data that does not parse is reported, never removed.

    Exit status: 0 the store is whole (or everything found was repaired), 1 problems remain,
    2 usage error.
    """
    from cloudtrack.blobs import open_blobs
    from cloudtrack.check import HARMLESS, check, holds_store, parse_duration
    from cloudtrack.config import resolve
    from cloudtrack.store import layout
    from cloudtrack.store.marker import ForeignFormat

    try:
        grace_seconds = parse_duration(grace)
    except ValueError as e:
        fail(str(e), 2)
    if dry_run and not repair:
        fail("--dry-run goes with --repair (a check without --repair changes nothing)", 2)
    try:
        config = resolve(uri)
    except ConfigError as e:
        fail(str(e), 2)
    if config.backend not in ("file", "s3", "gcs", "azure"):
        fail(f"{config.display_uri} is not a cloudtrack store (s3://, gs://, wasbs://, "
             "abfss:// or a directory)", 2)
    logging.getLogger("cloudtrack").addHandler(logging.NullHandler())
    try:
        with open_blobs(config) as blobs:
            try:
                found = holds_store(blobs)
            except ForeignFormat as e:
                fail(f"{config.display_uri} holds no cloudtrack store: its {layout.MARKER} "
                     f"is of format {e.found!r}; check the URI", 2)
            if not found:
                # A mistyped path to a folder of other files must not read as a whole store.
                fail(f"{config.display_uri} holds no cloudtrack store (no {layout.MARKER} "
                     "and no experiment record under it); check the URI", 2)
            report = check(blobs, repair_=repair, dry_run=dry_run, grace=grace_seconds,
                           progress=None if as_json else Bar())
    except BlobNotFound as e:
        fail(f"{config.display_uri} holds no cloudtrack store ({e})", 2)
    except CloudtrackError as e:
        # A file given as a local store is a usage error (the message says so), not a store
        # with problems.
        fail(str(e), 2 if config.backend == "file" and os.path.exists(config.container)
             and not os.path.isdir(config.container) else 1)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        sys.exit(report.exit_code)
    click.echo(f"checked {report.store}: {report.objects} objects, {_size(report.bytes)} "
               f"in {report.seconds:.1f}s")
    for f in report.findings:
        state = (" (harmless: not a problem)" if f.kind in HARMLESS else
                 " (younger than the grace period: left alone)" if f.young else "")
        action = {"delete": "remove", "write": "write back", "drop_entries": "drop entries",
                  None: "report only"}[f.action]
        size = f", {_size(f.bytes)}" if f.bytes else ""
        click.echo(f"  {f.kind:<34} {f.subject}: {f.detail} [{action}{size}]{state}")
    problems, plan = report.problems, report.planned
    removes = [f for f in plan if f.action == "delete"]
    # The numbers add up to the findings listed: problems, then the rest and why.
    others = report.not_counted()
    rest = ", ".join(f"{n} {k}" for k, n in others.items())
    if not problems:
        click.echo("the store is whole" + (f" (not problems: {rest})" if others else ""))
    else:
        click.echo(f"{len(problems)} problem(s): " + ", ".join(
            f"{n} {k}" for k, n in report.counts(problems).items())
            + (f"; not problems: {rest}" if others else ""))
    if not plan:
        pass
    elif not repair:
        click.echo(f"--repair would act on {len(plan)} finding(s), removing "
                   f"{sum(len(f.keys) for f in removes)} objects "
                   f"({_size(sum(f.bytes for f in removes))})")
    elif dry_run:
        click.echo(f"would repair {len(plan)}: remove {sum(len(f.keys) for f in removes)} "
                   f"objects ({_size(sum(f.bytes for f in removes))}); nothing was changed")
    else:
        click.echo(f"repaired {len(report.repaired)}: removed {report.objects_removed} "
                   f"objects, reclaimed {_size(report.bytes_reclaimed)}")
        for f, why in report.left:
            click.echo(f"  left {f.subject} ({f.kind}): {why}")
    sys.exit(report.exit_code)
