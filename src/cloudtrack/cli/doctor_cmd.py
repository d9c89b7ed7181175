"""``cloudtrack doctor [URI]``: why logging to a store or an MLflow server fails, layer by
layer, with the fix."""

from __future__ import annotations

import json
import sys

import click

from cloudtrack.cli import main
from cloudtrack.cli.common import Bounded

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@main.command("doctor")
@click.argument("uri", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--read-only", is_flag=True,
              help="Only list and read: write and delete no probe object.")
@click.option("--timeout", type=Bounded(0.1, 60, seconds=True), default=5.0,
              show_default=True, help="Seconds each network step may take, 0.1 to 60.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the SDKs do to stderr.")
def doctor_cmd(uri: str | None, as_json: bool, read_only: bool, timeout: float,
               verbose: bool) -> None:
    """Find why logging to URI fails, layer by layer, and how to fix it.

    URI defaults to what MLflow would use (MLFLOW_TRACKING_URI, else MLflow's default).
    Checks config, dns, tcp, tls, http, authentication, authorization (a probe object is
    written and removed under the prefix unless --read-only) and endpoint consistency.
    Exit status: 0 nothing failed, 1 something failed, 2 usage error.
    """
    import logging

    from cloudtrack.doctor import run

    secrets: set[str] = set()
    _doctor_logging(verbose, secrets)
    report = run(uri, read_only=read_only, timeout=timeout, secrets=secrets)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        sys.exit(report.exit_code)
    click.echo(f"cloudtrack doctor  {report.uri}  ({report.backend or 'unknown backend'})")
    width = max((len(c.id) for c in report.checks), default=10)
    shown_fix = None
    for check in report.checks:
        click.echo(f"  {_MARK[check.status]}  {check.id:<{width}}  {check.summary}")
        if check.status != "ok" and check.fix:
            # Denied operations of one store share one fix: print it once.
            fix = "the same as above" if check.fix == shown_fix else check.fix
            click.echo(f"        {'':<{width}}  fix: {fix}")
            shown_fix = check.fix
    root = report.root
    if root is None:
        verdict = f"{report.status} ({len(report.checks)} checks)"
    else:
        verdict = f"FAIL: {report.cause} (lowest failing layer: {root.layer}, check {root.id})"
    click.echo(f"result: {verdict} in {report.seconds:.1f}s")
    logging.shutdown()
    sys.exit(report.exit_code)


def _doctor_logging(verbose: bool, secrets: set[str]) -> None:
    """SDK warnings would otherwise reach stderr through logging's last resort; with
    --verbose they do, scrubbed of every secret the doctor knows of (``secrets`` fills up
    during the run)."""
    import logging

    from cloudtrack.doctor.core import scrub

    class _Redact(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = scrub(record.getMessage(), secrets)
            record.args = ()
            if record.exc_info:
                record.msg += "\n" + scrub(logging.Formatter().formatException(record.exc_info),
                                           secrets)
                record.exc_info = None
                record.exc_text = None
            return True

    root = logging.getLogger()
    if not verbose:
        root.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Redact())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)


