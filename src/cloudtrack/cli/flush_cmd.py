"""``cloudtrack flush [URI]``: write what processes kept in the local journal because their
store could not be reached when they exited."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import click

from cloudtrack.cli import main


@main.command("flush")
@click.argument("uri", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--from-endpoint", metavar="URL", default=None,
              help="Write the journal kept while URI was reached through this endpoint (one "
                   "that is gone for good) through the endpoint of this environment: only "
                   "when both serve the same store.")
def flush_cmd(uri: str | None, as_json: bool, from_endpoint: str | None) -> None:
    """Write the data kept in the local journal into its store, exactly once.

    A process that exits while its store cannot be written (unreachable, credentials expired)
    keeps the buffered data in a journal under the user's cache directory; the next process
    that logs to that store writes it, or this command does now. Without URI, the journal of
    every store that has one. Run it as often as you like: what is written leaves the journal.

    Exit status: 0 everything written (or nothing to write), 1 something is left or was
    refused, 2 usage error.
    """
    from cloudtrack.tracking.journal import journal_root, journaled_stores

    root = journal_root()
    journals = [j for j in journaled_stores(root) if j["entries"]]
    if from_endpoint is not None and uri is None:
        click.echo("error: --from-endpoint needs the store's URI: cloudtrack flush URI "
                   "--from-endpoint URL", err=True)
        sys.exit(2)
    if uri is None:
        targets: list[tuple[str, dict[str, Any] | None]] = [(str(j["store"]), j)
                                                           for j in journals]
    else:
        targets = [(uri, None)]
    with _quiet_logging():
        results = [_flush_one(target, journal, journals, from_endpoint)
                   for target, journal in targets]
    code = max((r["exit_code"] for r in results), default=0)
    if as_json:
        click.echo(json.dumps({
            "journal": str(root), "stores": results,
            "entries_written": sum(r["entries_written"] for r in results),
            "values_written": sum(r["values_written"] for r in results),
            "entries_left": sum(r["entries_left"] for r in results),
            "entries_refused": sum(r["entries_refused"] for r in results),
            "exit_code": code}, indent=2))
        sys.exit(code)
    if not results:
        click.echo(f"nothing to flush: no journal in {root}")
        sys.exit(0)
    if uri is None:
        click.echo(f"journals of {len(results)} store(s) in {root}: "
                   + ", ".join(r["store"] for r in results))
    for r in results:
        _show(r)
    sys.exit(code)


def _flush_one(uri: str, journal: dict[str, Any] | None, journals: list[dict[str, Any]],
               from_endpoint: str | None = None) -> dict[str, Any]:
    """Replay the journal of ``uri`` (``journal``: the folder it was found in, when known;
    ``from_endpoint``: the one kept while ``uri`` was reached there)."""
    from mlflow.exceptions import MlflowException

    from cloudtrack.config import resolve
    from cloudtrack.config.redaction import redact, redact_uri
    from cloudtrack.errors import CloudtrackError, ConfigError, doctor_hint, with_advice
    from cloudtrack.tracking.journal import Journal, store_identity

    shown = redact_uri(uri)
    result: dict[str, Any] = {"store": shown, "journal": None, "entries_written": 0,
                              "values_written": 0, "runs": [], "entries_refused": 0,
                              "entries_left": journal["entries"] if journal else 0,
                              "error": None, "exit_code": 0}

    def failed(message: str, code: int = 1) -> dict[str, Any]:
        result.update(error=redact(message), exit_code=code)
        return result

    try:
        config = resolve(uri)
    except ConfigError as e:
        return failed(str(e), 2)
    if config.backend not in ("file", "s3", "gcs", "azure"):
        return failed(f"{shown} is not a cloudtrack store: cloudtrack keeps no journal for it",
                      2)
    identity = store_identity(config)
    result["store"] = identity["store"]
    if journal is not None and (journal["store"], journal["endpoint"]) != (
            identity["store"], identity["endpoint"]):
        result["journal"] = journal["folder"]
        return failed(f"the journal {journal['folder']} was written for {journal['store']} at "
                      f"{journal['endpoint']}, but this environment reaches "
                      f"{identity['endpoint']}: set the endpoint it was written with and run "
                      f"`cloudtrack flush {journal['store']}` again; or, if that endpoint is "
                      f"gone for good and {identity['endpoint']} serves the same store, "
                      f"`cloudtrack flush {journal['store']} --from-endpoint "
                      f"{journal['endpoint']}`")
    probe = Journal(config, lambda run_id, pending: None, written_through=from_endpoint)
    result["journal"] = str(probe.folder)
    waiting = len(probe.entries())
    result["entries_left"] = waiting
    if not waiting:
        if from_endpoint is not None:
            return failed(f"no journal for {identity['store']} kept at endpoint "
                          f"{probe.written_for['endpoint']} ({probe.folder} holds no entry)")
        others = probe.elsewhere()
        if others:
            where = ", ".join(f"{j['folder']} (endpoint {j['endpoint']})" for j in others)
            endpoint = others[0]["endpoint"]
            return failed(f"no journal for {identity['store']} at endpoint "
                          f"{identity['endpoint']}, but {len(others)} for it at another "
                          f"endpoint: {where}; set that endpoint and run `cloudtrack flush "
                          f"{identity['store']}` again, or, if it is gone for good and "
                          f"{identity['endpoint']} serves the same store, `cloudtrack flush "
                          f"{identity['store']} --from-endpoint {endpoint}`")
        return result
    from cloudtrack.tracking import BlobTrackingStore

    doctor = doctor_hint(str(identity["store"]))
    try:
        store = BlobTrackingStore(uri, config=config)  # type: ignore[abstract]
    except (CloudtrackError, MlflowException) as e:
        message = " ".join(str(getattr(e, "message", None) or e).split())
        return failed(with_advice(f"could not open {identity['store']} to write its journal: "
                                  f"{message}", doctor))
    try:
        report = store.replay_journal(from_endpoint)
    finally:
        store.close()
    result.update(entries_written=report.written, values_written=report.values,
                  runs=report.runs, entries_refused=report.refused,
                  entries_left=report.left)
    if report.error and report.left:
        message = report.error
        return failed(with_advice(message, doctor))
    if report.refused:
        result["exit_code"] = 1
        result["error"] = (f"{report.refused} entries could not be written and are set aside "
                           f"in {probe.folder / 'refused'}")
    return result


def _show(r: dict[str, Any]) -> None:
    if r["entries_written"]:
        click.echo(f"{r['store']}: wrote {r['values_written']} values of {len(r['runs'])} "
                   f"run(s) ({r['entries_written']} journal entries from {r['journal']})")
    elif r["exit_code"] == 0:
        click.echo(f"{r['store']}: nothing to flush (no journal entries in {r['journal']})")
    if r["error"]:
        n = r["entries_left"]
        left = f" ({n} {'entry' if n == 1 else 'entries'} left in the journal)" if n else ""
        click.echo(f"error: {r['store']}: {r['error']}{left}", err=True)


class _Echo(logging.Handler):
    """Retry lines to the command's stderr, whichever it is when they come."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """The command prints what the journal did; the library's own lines would repeat it.  The
    retry lines stay: they say what the command waits for."""
    root = logging.getLogger()
    retry = logging.getLogger("cloudtrack.retry")
    quiet, echo = logging.NullHandler(), _Echo(logging.WARNING)
    root.addHandler(quiet)
    retry.addHandler(echo)
    try:
        yield
    finally:
        retry.removeHandler(echo)
        root.removeHandler(quiet)
