"""``cloudtrack migrate SOURCE DEST``: everything MLflow stores, from one store into another."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import Bounded, fail
from cloudtrack.errors import CloudtrackError, ConfigError


class TerminalProgress:
    """One line per experiment on stderr, redrawn at most ten times a second: done/total,
    runs per second and the time left.  Draws nothing when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = ""
        self.total: int | None = None
        self.done = 0
        self.started = 0.0
        self.drawn = 0.0

    def start(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = self.drawn = time.monotonic()
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
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        if self.total:
            width = 24
            filled = int(width * min(self.done, self.total) / self.total)
            bar = "#" * filled + "-" * (width - filled)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            eta = f"ETA {_clock(left)}" if self.done < self.total else f"in {_clock(elapsed)}"
            text = f"{self.label[:40]:<40} [{bar}] {self.done}/{self.total} runs  " \
                   f"{rate:6.1f} runs/s  {eta}"
        else:
            text = f"{self.label[:40]:<40} {self.done} runs  {rate:6.1f} runs/s"
        self.stream.write("\r" + text[:160] + "\x1b[K")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@main.command("migrate")
@click.argument("source")
@click.argument("dest")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME_OR_ID",
              help="Only this experiment (by name or id); repeat for more. Default: all.")
@click.option("--no-registry", is_flag=True, help="Leave registered models and prompts alone.")
@click.option("--verify", is_flag=True,
              help="Compare every run, point, artifact and model version afterwards.")
@click.option("--dry-run", is_flag=True, help="Only say what would move; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report object.")
@click.option("--workers", type=Bounded(1, 64), default=8, show_default=True,
              help="Runs copied in parallel, 1 to 64.")
@click.option("--server-requests", type=Bounded(1, 256), default=8, show_default=True,
              help="Requests in flight per MLflow server (source or destination), 1 to "
                   "256, whatever --workers: keep it below the server's database pool "
                   "(MLflow's default: 5 + 10 overflow connections).")
@click.option("--artifact-root", default=None, metavar="URI",
              help="Where a SQL or cloudtrack destination keeps the artifacts of experiments it "
                   "creates (default: the store's own: <store>/artifacts for cloudtrack, "
                   "mlartifacts beside a sqlite file, else ./mlartifacts).")
@click.option("--id-map", default=None, metavar="PATH",
              help="Where to write the map of ids that changed (default: under "
                   "~/.local/state/cloudtrack/migrate/).")
def migrate_cmd(source: str, dest: str, experiments: tuple[str, ...], no_registry: bool,
                verify: bool, dry_run: bool, as_json: bool, workers: int,
                server_requests: int, artifact_root: str | None, id_map: str | None) -> None:
    """Copy everything MLflow stores from SOURCE into DEST: experiments, runs with every
    metric point, artifacts, logged models, registered models and prompts — ids and times
    kept where DEST allows it. Run it again to resume or to bring DEST up to date: what is
    already there is left alone.

    SOURCE and DEST are tracking URIs: a cloudtrack store (s3://, gs://, wasbs://, abfss://,
    a directory), an MLflow SQL store (sqlite:///path.db, postgresql://…), an MLflow server
    (http(s)://…); SOURCE may also be an MLflow FileStore directory (./mlruns).

    Exit status: 0 everything moved (and verified), 1 something could not be moved or
    verified, 2 usage error.
    """
    from cloudtrack.migrate import migrate

    progress = None if as_json else TerminalProgress()
    try:
        report = migrate(source, dest, experiments=experiments, registry=not no_registry,
                         verify=verify, dry_run=dry_run, workers=workers,
                         artifact_root=artifact_root, id_map=id_map, progress=progress,
                         server_requests=server_requests)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: what was copied stays; run the same command again to go "
                   "on from there (nothing is copied twice)", err=True)
        sys.exit(130)
    except CloudtrackError as e:
        code = 2 if isinstance(e, ConfigError) else 1
        if as_json:  # a script reading --json gets its one object, failures and all
            from cloudtrack.config import redact_uri
            from cloudtrack.migrate.model import Failure, MigrationReport

            failed = MigrationReport(redact_uri(source), redact_uri(dest), dry_run=dry_run)
            failed.failures.append(Failure("migration", f"{failed.source} -> {failed.dest}",
                                           str(e)))
            click.echo(json.dumps(failed.to_dict(), indent=2))
        fail(str(e), code)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        sys.exit(report.exit_code)
    verb = "would migrate" if report.dry_run else "migrated"
    click.echo(f"{verb} {report.source} -> {report.dest} in {report.seconds:.1f}s")
    kinds = ("experiments", "runs", "metric_points", "artifacts", "logged_models",
             "registered_models", "model_versions")
    for kind in kinds:
        copied, same = report.copied.get(kind, 0), report.unchanged.get(kind, 0)
        if copied or same:
            extra = f" ({report.bytes / 1e6:.1f} MB)" if kind == "artifacts" and report.bytes \
                else ""
            label = "to copy" if report.dry_run else "copied"
            click.echo(f"  {kind.replace('_', ' '):<18} {copied:>8} {label}{extra}, "
                       f"{same} already there")
    for s in report.skipped:
        click.echo(f"  skipped: {s.count} {s.kind} ({s.reason})")
    for old, new in sorted(report.experiment_ids.items()):
        click.echo(f"  experiment {old} is {new} in the destination")
    if report.id_map:
        click.echo(f"  id map: {report.id_map}")
    for f in report.failures:
        click.echo(f"FAILED {f.kind}: {f.what}: {f.error}", err=True)
    if report.differences is not None:
        for d in report.differences:
            click.echo(f"DIFFERENT {d}", err=True)
        click.echo(f"verify: {len(report.differences)} difference(s)")
    sys.exit(report.exit_code)
