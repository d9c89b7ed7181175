"""The migration itself: experiments, then their logged models and runs, then the registry;
what is already in the destination is left alone.

Per experiment the runner finds (or creates) the copy, asks the destination which runs and
logged models are copies already and with which fingerprint, and copies those missing or
outdated: a run's history in bulk, its artifacts and logged models, then the run.  Runs move
in parallel (``workers``), a page of at most 1,000 at a time, so memory stays flat however
large the source is.  A failure is recorded with the object it concerns and the migration goes on;
the report's exit code says whether anything failed.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlflow.entities import Experiment, LoggedModel, Metric, Run, RunStatus
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from cloudtrack.migrate import artifacts
from cloudtrack.migrate.destination import CopiedRun, Destination, open_destination
from cloudtrack.migrate.endpoints import Endpoint, check_apart, open_endpoint
from cloudtrack.migrate.model import (
    Failure,
    MigrationReport,
    ModelCopy,
    RunCopy,
    Skipped,
    model_fingerprint,
    point_key,
    run_fingerprint,
)
from cloudtrack.migrate.source import Source
from cloudtrack.progress import Progress, Silent

log = logging.getLogger("cloudtrack.migrate")

#: Runs whose histories are read together (one SQL query; bounded memory).
HISTORY_CHUNK = 50
#: Allocations between collections of the youngest generation during a migration
#: (:func:`_batch_collection`; Python's default is 700).
BATCH_GC_THRESHOLD = 20_000

#: Runs in a row (at least; twice the workers when more) that failed because a store stopped
#: answering — its retries ran out on refused connections, timeouts or 5xx — before the
#: migration stops instead of failing every run left the same way, one retry budget each.
STOP_AFTER = 16

#: A run read from the source: the run, its earlier copy, its history, when it was deleted.
_Read = tuple[Run, CopiedRun | None, list[Metric], int | None]


@dataclass(frozen=True)
class Options:
    experiments: Sequence[str] = ()
    registry: bool = True
    verify: bool = False
    dry_run: bool = False
    workers: int = 8
    #: Where a SQL or cloudtrack destination puts the artifacts of new experiments.
    artifact_root: str | None = None
    #: Where the id map goes when ids change (default: the user's state directory).
    id_map: str | None = None


def migrate(source: str, dest: str, *, experiments: Sequence[str] = (), registry: bool = True,
            verify: bool = False, dry_run: bool = False, workers: int = 8,
            artifact_root: str | None = None, id_map: str | None = None,
            progress: Progress | None = None,
            server_requests: int | None = None) -> MigrationReport:
    """Copy everything from tracking URI ``source`` into ``dest``; see docs/migrate.md.
    ``server_requests``: requests in flight per MLflow server, source and destination
    together (default :data:`cloudtrack.migrate.rest.SERVER_REQUESTS`, 8)."""
    options = Options(tuple(experiments), registry, verify, dry_run, max(1, workers),
                      artifact_root, id_map)
    started = time.monotonic()
    check_apart(source, dest)
    src = open_endpoint(source, role="source", server_requests=server_requests)
    try:
        if options.experiments:  # a wrong --experiment fails before the destination is touched
            Source(src).experiments(options.experiments)
        dst = open_endpoint(dest, role="dest", artifact_root=artifact_root,
                            server_requests=server_requests, create=not dry_run)
    except BaseException:
        src.close()
        raise
    try:
        migration = Migration(src, dst, options, progress or Silent())
        try:
            with _batch_collection():
                report = migration.run()
        finally:
            migration.close()
    finally:
        src.close()
        dst.close()
    report.seconds = time.monotonic() - started
    return report


class Migration:
    """One migration from an opened source into an opened destination."""

    def __init__(self, src: Endpoint, dst: Endpoint, options: Options,
                 progress: Progress) -> None:
        self.src = src
        self.source = Source(src)
        self.dest: Destination = open_destination(dst)
        self.options = options
        self.progress = progress
        self.report = MigrationReport(src.shown, dst.shown, dry_run=options.dry_run)
        self._lock = threading.Lock()
        #: source id -> destination id, where they differ (or, for runs, always).
        self.run_ids: dict[str, str] = {}
        self.model_ids: dict[str, str] = {}
        #: source artifact URI -> destination artifact URI of copied runs and logged models.
        self.locations: dict[str, str] = {}
        #: source run id -> source artifact URI, for rewriting model-version sources.
        self.run_artifacts: dict[str, str] = {}
        #: (run id, key, timestamp, step) -> the logged model a point was logged for.
        self.links: dict[tuple[str, str, int, int], Metric] = {}
        #: Source runs to compare point by point, whatever their fingerprints (_experiment).
        self.recheck: set[str] = set()
        # An MLflow server's artifact requests (mlflow-artifacts:, http(s)) wait for the same
        # slots as its store requests: --server-requests bounds them all.
        self.repositories = artifacts.Repositories({
            e.tracking_uri: e.server.slot for e in (src, dst) if e.server is not None})
        #: Destination experiments this migration created: no earlier copy left anything in
        #: their artifact locations.
        self.new_experiments: set[str] = set()
        #: Threads copying artifact files, shared by every run's copy (up to 4 files of a run
        #: at once, as many runs as workers).
        self.artifact_pool = ThreadPoolExecutor(4 * options.workers,
                                                thread_name_prefix="cloudtrack-artifacts")
        #: Runs that failed in a row because a store did not answer, and the last such error.
        self._unanswered = 0
        self._last_unanswered: BaseException | None = None
        #: Why the migration stopped early (None while it goes on); runs left not attempted.
        self.stopped: str | None = None
        self.not_attempted = 0

    def close(self) -> None:
        self.artifact_pool.shutdown(wait=True)
        self.source.close()

    # -- the whole ---------------------------------------------------------------------------

    def run(self) -> MigrationReport:
        experiments = self.source.experiments(self.options.experiments)
        existing = self.dest.experiments()
        left = len(experiments)
        for exp in experiments:
            if self.stopped:
                break
            left -= 1
            try:
                self._experiment(exp, existing)
            except Exception as e:
                log.debug("experiment %s failed", exp.experiment_id, exc_info=True)
                self._fail("experiment", f"experiment {exp.name!r} ({exp.experiment_id})", e)
        if self.stopped:
            self._stop_report(left)
            if not self.options.dry_run:
                self._write_id_map()
            return self.report
        self._cannot_hold([e.experiment_id for e in experiments])
        if self.options.registry:
            self._registry()
        if not self.options.dry_run:
            self._write_id_map()
        if self.options.verify and not self.options.dry_run:
            from cloudtrack.migrate.verify import verify

            self.report.differences = verify(self, experiments)
        return self.report

    def _fail(self, kind: str, what: str, error: BaseException) -> None:
        with self._lock:
            self.report.failures.append(Failure(kind, what, f"{type(error).__name__}: {error}"))

    def _run_done(self, error: BaseException | None) -> None:
        """After each run: count the runs that failed in a row for want of an answer, and
        stop the migration when they are too many (:data:`STOP_AFTER`)."""
        with self._lock:
            if error is None or not unanswered(error):
                self._unanswered = 0
                return
            self._unanswered += 1
            self._last_unanswered = error
            if self._unanswered >= max(STOP_AFTER, 2 * self.options.workers) \
                    and not self.stopped:
                self.stopped = f"{self._unanswered} runs in a row failed for want of an answer"
                log.warning("stopping the migration: %s (last: %s)", self.stopped, error)

    def _stop_report(self, experiments_left: int) -> None:
        """The failure that says the migration stopped, what it did not try, and how to go on."""
        last = self._last_unanswered
        untried = [f"{self.not_attempted} run(s) of the experiments under way"]
        if experiments_left:
            untried.append(f"{experiments_left} experiment(s) not started")
        if self.options.registry:
            untried.append("the model registry")
        self.report.failures.append(Failure(
            "migration", f"{self.report.source} -> {self.report.dest}",
            f"stopped: {self.stopped}; the last: {type(last).__name__}: {last}. Not attempted: "
            f"{', '.join(untried)}. What was copied stays; once the store answers again, run "
            "the same command to go on from there."))

    def _count(self, kind: str, n: int = 1, *, unchanged: bool = False) -> None:
        with self._lock:
            (self.report.unchanged if unchanged else self.report.copied)[kind] += n

    # -- experiments -----------------------------------------------------------------------------

    def _experiment(self, exp: Experiment, existing: list[Experiment]) -> None:
        dest_exp = self._dest_experiment(exp, existing)
        if dest_exp is None:  # a dry run of an experiment the destination does not have
            copied: dict[str, CopiedRun] = {}
            dest_id = None
        else:
            dest_id = dest_exp.experiment_id
            copied = self.dest.copied_runs(dest_id)
            if dest_id != exp.experiment_id:
                self.report.experiment_ids[exp.experiment_id] = dest_id
        models = self.source.logged_models([exp.experiment_id])
        done_models = self.dest.copied_models([dest_id]) if dest_id is not None else {}
        self.model_ids.update((k, c.model_id) for k, c in done_models.items())
        # A logged model is written with the run that made it (a server needs the run's new
        # id for it, and the model before the run's metrics that name it); models without a
        # run, or whose run is not in this experiment, are written at the end.  A copy whose
        # fingerprint is its source's is left alone; one that differs (tags, status, params or
        # metrics changed since) is written again, over itself.
        self.links = _model_links(models)
        by_run: dict[str, list[LoggedModel]] = {}
        # Runs compared point by point whatever their fingerprints: a changed model's metric
        # points were logged through them, maybe at an older step, which leaves a run's latest
        # values (its fingerprint) as they were.
        self.recheck = set()
        for m in models:
            earlier = done_models.get(m.model_id)
            if earlier is not None and earlier.fingerprint == model_fingerprint(m):
                self._count("logged_models", unchanged=True)
            else:
                by_run.setdefault(str(m.source_run_id or ""), []).append(m)
                if earlier is not None:
                    self.recheck.update(p.run_id for p in m.metrics or [] if p.run_id)
        self.progress.start(f"{exp.name} ({exp.experiment_id})",
                            self.source.count_runs(exp.experiment_id))
        try:
            if not (copied and self._all_unchanged(exp.experiment_id, copied)):
                for page in self.source.runs(exp.experiment_id):
                    self._runs(page, copied, dest_id, by_run)
        finally:
            self.progress.finish()
        if self.stopped:  # the models and the experiment's last word wait for the re-run
            return
        for run_id, rest in by_run.items():
            for m in rest:
                if dest_id is None:
                    self._count("logged_models")
                else:
                    self._copy_model(m, dest_id, self.run_ids.get(run_id))
        if dest_exp is not None and not self.options.dry_run:
            self.dest.finish_experiment(dest_exp, exp)

    def _dest_experiment(self, exp: Experiment, existing: list[Experiment]) -> Experiment | None:
        """The destination's copy of ``exp``: the experiment of the same name, else a new one
        with the same id where that id is free (destinations that keep ids)."""
        by_name = {e.name: e for e in existing}
        found = by_name.get(exp.name)
        if found is not None:
            if not self.options.dry_run:
                self.dest.update_experiment(found, exp)
            self._count("experiments", unchanged=True)
            return found
        if self.options.dry_run:
            self._count("experiments")
            return None
        taken = {e.experiment_id for e in existing}
        wanted = exp.experiment_id if self.dest.keeps_ids and exp.experiment_id not in taken \
            else None
        created = self.dest.create_experiment(exp, wanted)
        self.new_experiments.add(created.experiment_id)
        existing.append(created)
        self._count("experiments")
        return created

    # -- runs ----------------------------------------------------------------------------------

    def _all_unchanged(self, experiment_id: str, copied: dict[str, CopiedRun]) -> bool:
        """A re-run's shortcut: when the source reads its runs' fingerprints cheaply (SQL) and
        every run has a finished copy with that fingerprint, none still running, they are all
        counted unchanged without a search.  False (nothing counted) otherwise: the runs are
        searched and compared one by one."""
        runs = self.source.light_runs(experiment_id)
        if runs is None or len(runs) > len(copied):
            return False
        running = RunStatus.to_string(RunStatus.RUNNING)
        for run in runs:
            earlier = copied.get(run.info.run_id)
            if earlier is None or run.info.status == running \
                    or earlier.fingerprint != run_fingerprint(run) \
                    or run.info.run_id in self.recheck:
                return False
        for run in runs:
            run_id = run.info.run_id
            self.run_artifacts[run_id] = run.info.artifact_uri
            self.run_ids[run_id] = copied[run_id].run_id
        self._count("runs", len(runs), unchanged=True)
        self.progress.advance(len(runs))
        return True

    def _runs(self, page: list[Run], copied: dict[str, CopiedRun], dest_id: str | None,
              models: dict[str, list[LoggedModel]]) -> None:
        todo: list[tuple[Run, CopiedRun | None]] = []
        for run in page:
            run_id = run.info.run_id
            self.run_artifacts[run_id] = run.info.artifact_uri
            earlier = copied.get(run_id)
            if earlier is not None:
                self.run_ids[run_id] = earlier.run_id
                if earlier.fingerprint == run_fingerprint(run) and run_id not in self.recheck:
                    self._count("runs", unchanged=True)
                    if run.info.status == RunStatus.to_string(RunStatus.RUNNING) \
                            and not self.options.dry_run:
                        # A run still going may have new artifacts and nothing else new.
                        self._catch_up_artifacts(run, earlier)
                    self.progress.advance()
                    continue
            todo.append((run, earlier))
        if self.options.dry_run or dest_id is None:
            self._plan(todo)
            return

        def one(chunk: list[tuple[Run, CopiedRun | None]], read: list[_Read] | None) -> None:
            for n, (run, _) in enumerate(chunk):
                if self.stopped:
                    with self._lock:
                        self.not_attempted += 1
                    self.progress.advance()
                    continue
                try:
                    if read is None:
                        read = self._read(chunk)
                    run, earlier, history, deleted_time = read[n]
                    self._copy_run(run, earlier, history, str(dest_id),
                                   models.pop(run.info.run_id, []), deleted_time)
                except Exception as e:
                    log.debug("run %s failed", run.info.run_id, exc_info=True)
                    self._fail("run", f"run {run.info.run_id} ({run.info.run_name})", e)
                    self._run_done(e)
                else:
                    self._run_done(None)
                finally:
                    self.progress.advance()

        # A SQL source reads a chunk's histories in one query, here, while the workers write
        # the chunks before it; any other source reads each run in the worker that writes it
        # (a server answers one run at a time: read in parallel).  Two chunks wait at most, so
        # memory stays flat.
        bulk = self.source.reads_in_bulk
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="cloudtrack-migrate") \
                as pool:
            waiting: deque[Future[None]] = deque()
            for chunk in _chunks(todo, HISTORY_CHUNK if bulk else 1):
                if self.stopped:
                    with self._lock:
                        self.not_attempted += len(chunk)
                    for _ in chunk:
                        self.progress.advance()
                    continue
                if not bulk:
                    waiting.append(pool.submit(one, chunk, None))
                else:
                    try:
                        read = self._read(chunk)
                    except Exception as e:
                        for run, _ in chunk:
                            self._fail("run", f"run {run.info.run_id} ({run.info.run_name})", e)
                            self._run_done(e)
                            self.progress.advance()
                        continue
                    waiting.extend(pool.submit(one, [item], [r]) for item, r in zip(
                        chunk, read, strict=True))
                while len(waiting) > 2 * HISTORY_CHUNK:
                    waiting.popleft().result()
            for job in waiting:
                job.result()

    def _read(self, chunk: list[tuple[Run, CopiedRun | None]]) -> list[_Read]:
        """Each run of ``chunk`` completed, with its whole history and when it was deleted."""
        runs = self.source.complete([r for r, _ in chunk])
        histories = self.source.histories(runs)
        deleted_times = self.source.deleted_times(runs)
        return [(run, earlier, histories.get(run.info.run_id, []),
                 deleted_times.get(run.info.run_id))
                for run, (_, earlier) in zip(runs, chunk, strict=True)]

    def _plan(self, todo: list[tuple[Run, CopiedRun | None]]) -> None:
        """A dry run: count what would move — runs, their metrics, their artifacts and bytes
        (one listing of each run's artifacts, read in parallel)."""
        def sizes(run: Run) -> dict[str, int]:
            try:
                repo, base = self.repositories.at(run.info.artifact_uri, self.src.tracking_uri)
                return artifacts.list_tree(repo, base or None)
            except Exception as e:
                self._fail("artifacts", f"artifacts of run {run.info.run_id}", e)
                return {}

        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="cloudtrack-plan") \
                as pool:
            for (run, _), files in zip(todo, pool.map(sizes, [r for r, _ in todo]), strict=True):
                self._count("runs")
                self._count("metric_keys", len(run.data.metrics))
                self._count("artifacts", len(files))
                with self._lock:
                    self.report.bytes += sum(max(0, n) for n in files.values())
                self.progress.advance()

    def _copy_run(self, run: Run, earlier: CopiedRun | None, history: list[Metric],
                  dest_id: str, models: list[LoggedModel], deleted_time: int | None) -> None:
        history = _linked(_unique(history), run.info.run_id, self.links)
        copy = RunCopy(run, history, dest_id, self.model_ids, deleted_time)
        target = self.dest.begin_run(copy, earlier)
        with self._lock:
            self.run_ids[run.info.run_id] = target.run_id
            self.locations[run.info.artifact_uri] = target.artifact_uri
        # A run new in the destination has no artifacts there: one listing less per run.
        empty = earlier is None and (dest_id in self.new_experiments or not self.dest.keeps_ids)
        self._copy_artifacts(run.info.artifact_uri, target.artifact_uri, dest_empty=empty)
        for model in models:
            self._copy_model(model, dest_id, target.run_id)
        self.dest.finish_run(replace(copy, model_ids=dict(self.model_ids)), target)
        self._count("runs")
        self._count("metric_points", len(history))

    def _catch_up_artifacts(self, run: Run, earlier: CopiedRun) -> None:
        try:
            target_uri = self._dest_run_artifacts(earlier.run_id)
            self._copy_artifacts(run.info.artifact_uri, target_uri)
        except Exception as e:
            self._fail("artifacts", f"artifacts of run {run.info.run_id}", e)

    def _copy_artifacts(self, source_uri: str, dest_uri: str, *,
                        dest_empty: bool = False) -> None:
        if not source_uri:
            return
        result = artifacts.copy_tree(source_uri, self.src.tracking_uri, dest_uri,
                                     self.dest.endpoint.tracking_uri,
                                     workers=min(4, self.options.workers),
                                     repositories=self.repositories, dest_empty=dest_empty,
                                     pool=self.artifact_pool)
        self._count("artifacts", result.files)
        if result.unchanged:
            self._count("artifacts", result.unchanged, unchanged=True)
        with self._lock:
            self.report.bytes += result.bytes

    def _dest_run_artifacts(self, dest_run_id: str) -> str:
        return str(self.dest.endpoint.tracking.get_run(dest_run_id).info.artifact_uri)

    # -- logged models ---------------------------------------------------------------------------

    def _copy_model(self, model: LoggedModel, dest_exp: str, dest_run: str | None) -> None:
        if self.options.dry_run:
            self._count("logged_models")
            return
        try:
            def copy_files(location: str) -> None:
                with self._lock:
                    self.locations[model.artifact_location] = location
                self._copy_artifacts(model.artifact_location, location)

            new_id = self.dest.write_logged_model(ModelCopy(model, dest_exp, dest_run),
                                                  copy_files)
        except Exception as e:
            log.debug("logged model %s failed", model.model_id, exc_info=True)
            self._fail("logged_model", f"logged model {model.model_id} ({model.name})", e)
            return
        with self._lock:
            self.model_ids[model.model_id] = new_id
        self._count("logged_models")

    # -- what the destination cannot hold --------------------------------------------------------

    def _cannot_hold(self, experiment_ids: list[str]) -> None:
        for kind, reason in self.dest.cannot_hold:
            if kind == "traces":
                count = self.source.trace_count(experiment_ids)
                if count:
                    self.report.skipped.append(Skipped("traces", count, reason))

    # -- registry --------------------------------------------------------------------------------

    def _registry(self) -> None:
        try:
            models = self.source.registered_models()
        except Exception as e:
            self._fail("registry", f"the registry of {self.src.shown}", e)
            return
        existing = self.dest.registered_models() if models else {}
        for model in models:
            try:
                versions = self.source.model_versions(model)
                live = {int(v.version) for v in versions}
                deleted = sorted((set(range(1, max(live, default=0) + 1)) - live)
                                 | set(self.source.deleted_versions(model)))
                have = existing.get(model.name)
                have_numbers = {int(v.version) for v in have[1]} if have else set()
                if have is not None and live <= have_numbers:
                    self._count("registered_models", unchanged=True)
                    self._count("model_versions", len(live), unchanged=True)
                    if self.options.dry_run:
                        continue
                elif self.options.dry_run:
                    self._count("registered_models")
                    self._count("model_versions", len(live - have_numbers))
                    continue
                rewritten = [self._rewrite_version(v) for v in versions]
                written = self.dest.write_registered_model(model, rewritten, deleted)
                if have is None or written:
                    self._count("registered_models", unchanged=have is not None)
                    self._count("model_versions", written)
            except Exception as e:
                log.debug("registered model %s failed", model.name, exc_info=True)
                self._fail("registered_model", f"registered model {model.name!r}", e)

    def _rewrite_version(self, v: ModelVersion) -> ModelVersion:
        """``v`` as it must read in the destination: its run, logged model and source
        pointing at the copies."""
        run_id = self.run_ids.get(v.run_id or "", v.run_id) if v.run_id else v.run_id
        model_id = self.model_ids.get(v.model_id or "", v.model_id) if v.model_id else v.model_id
        source = self._rewrite_source(v.source or "", v.run_id)
        copy = ModelVersion(
            name=v.name, version=v.version, creation_timestamp=v.creation_timestamp,
            last_updated_timestamp=v.last_updated_timestamp, description=v.description,
            user_id=v.user_id, current_stage=v.current_stage, source=source, run_id=run_id,
            status=v.status, status_message=v.status_message,
            # ``tags`` hides a prompt version's own tag; ``_tags`` has them all.
            tags=[ModelVersionTag(k, val) for k, val in (v._tags or {}).items()],
            run_link=v.run_link, aliases=v.aliases, model_id=model_id)
        return copy

    def _rewrite_source(self, source: str, run_id: str | None) -> str:
        m = re.match(r"^runs:/([^/]+)(/.*)?$", source)
        if m:
            return f"runs:/{self.run_ids.get(m.group(1), m.group(1))}{m.group(2) or ''}"
        m = re.match(r"^models:/(m-[0-9a-f]+)(/.*)?$", source)
        if m:
            return f"models:/{self.model_ids.get(m.group(1), m.group(1))}{m.group(2) or ''}"
        # A path inside a copied run's or logged model's artifacts: the same path in the copy.
        candidates = dict(self.locations)
        if run_id and run_id in self.run_ids and run_id in self.run_artifacts:
            src_uri = self.run_artifacts[run_id]
            if src_uri not in candidates and source.startswith(src_uri.rstrip("/") + "/"):
                candidates[src_uri] = self._dest_run_artifacts(self.run_ids[run_id])
        for old, new in sorted(candidates.items(), key=lambda kv: -len(kv[0])):
            old = old.rstrip("/")
            if source == old or source.startswith(old + "/"):
                return new.rstrip("/") + source[len(old):]
        return source

    # -- the id map ------------------------------------------------------------------------------

    def _write_id_map(self) -> None:
        changed_runs = {s: d for s, d in self.run_ids.items() if s != d}
        changed_models = {s: d for s, d in self.model_ids.items() if s != d}
        if not (changed_runs or changed_models or self.report.experiment_ids):
            return
        path = Path(self.options.id_map) if self.options.id_map else _state_file(self.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {"source": self.report.source, "dest": self.report.dest,
                               "experiments": {}, "runs": {}, "logged_models": {}}
        if path.exists():
            try:
                doc.update(json.loads(path.read_text()))
            except ValueError:
                pass
        doc["experiments"].update(self.report.experiment_ids)
        doc["runs"].update(changed_runs)
        doc["logged_models"].update(changed_models)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)
        self.report.id_map = str(path)


#: Modules MLflow's REST client tries to import before every request, to tell whether it runs
#: on Databricks (``DatabricksRequestHeaderProvider.in_context``).
PROBED_EACH_REQUEST = ("dbruntime", "pyspark", "IPython")

#: Migrations running in this process, and the collector's settings from before the first.
_batches: list[tuple[int, ...]] = []
_batches_lock = threading.Lock()
#: The modules of PROBED_EACH_REQUEST the first migration found not installed.
_absent: list[str] = []


@contextlib.contextmanager
def _batch_collection() -> Iterator[None]:
    """The process tuned for one long batch, as it was after.

    A migration allocates millions of short-lived objects (points, rows, requests) beside the
    hundreds of thousands MLflow and the SDKs leave alive once imported; every full collection
    walked all of those, and collections took 3.5 s of a 21.5 s migration of 1,000 runs into
    s3.  Objects alive at the start are set aside (``gc.freeze``: never walked until the end)
    and the youngest generation is collected every 20,000 allocations instead of 700.

    MLflow's REST client tries to import ``dbruntime`` and ``pyspark`` before each request to
    a server; where they are not installed, every try searches the whole module path again
    under the interpreter's import lock: 0.47 ms a request, 0.62 ms with 8 threads asking at
    once.  For the migration those not installed are marked missing in ``sys.modules``
    (``None``: an import fails at once, as it would have after the search).

    Several migrations at once in one process: the first sets this up, the last puts back what
    was there before the first."""
    with _batches_lock:
        if not _batches:
            threshold = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(threshold[0], BATCH_GC_THRESHOLD), *threshold[1:])
            _batches.append(threshold)
            _absent[:] = [name for name in PROBED_EACH_REQUEST if _not_installed(name)]
            for name in _absent:
                sys.modules[name] = None  # type: ignore[assignment]
        else:
            _batches.append(_batches[0])
    try:
        yield
    finally:
        with _batches_lock:
            before = _batches.pop()
            if not _batches:
                gc.set_threshold(*before)
                gc.unfreeze()
                for name in _absent:
                    if name in sys.modules and sys.modules[name] is None:
                        del sys.modules[name]
                _absent.clear()


def _not_installed(name: str) -> bool:
    if name in sys.modules:
        return False
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return False


def _state_file(report: MigrationReport) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                               "state")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{report.source}--{report.dest}")[:150]
    return Path(base) / "cloudtrack" / "migrate" / f"{slug}.json"


def _model_links(models: list[LoggedModel]) -> dict[tuple[str, str, int, int], Metric]:
    """Which run points were logged for which logged model.  Some stores (SQL) keep that link
    only on the model's side; a destination that rebuilds it from the run's points (a server)
    needs it on the point."""
    links = {}
    for model in models:
        for m in model.metrics or []:
            if m.run_id:
                links[(m.run_id, m.key, int(m.timestamp), int(m.step))] = Metric(
                    m.key, m.value, m.timestamp, m.step, model_id=model.model_id,
                    dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
    return links


def _linked(points: list[Metric], run_id: str,
            links: dict[tuple[str, str, int, int], Metric]) -> list[Metric]:
    if not links:
        return points
    out = []
    for m in points:
        link = links.get((run_id, m.key, int(m.timestamp), int(m.step)))
        if link is not None and not m.model_id:
            m = Metric(m.key, m.value, m.timestamp, m.step, run_id=run_id,
                       model_id=link.model_id, dataset_name=link.dataset_name,
                       dataset_digest=link.dataset_digest)
        out.append(m)
    return out


def _unique(points: list[Metric]) -> list[Metric]:
    """``points`` without repeats of one point (:func:`~cloudtrack.migrate.model.point_key`)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for m in points:
        # point_key's identity, spelled inline for plain values: this runs for every point of
        # every run.  NaN, ±inf and ±0.0 (equal as floats, not as point_key's text) take the
        # long way.
        value = m.value
        if value != value or value in _INFINITIES or not value:
            k: tuple[Any, ...] = point_key(m)
        else:
            k = (m.key, int(m.timestamp), int(m.step), float(value))
        if k not in seen:
            seen.add(k)
            out.append(m)
    return out


_INFINITIES = (math.inf, -math.inf)


def unanswered(error: BaseException) -> bool:
    """Whether ``error`` (or what raised it) says a store did not answer — its retries ran out
    on refused or reset connections, timeouts or 5xx answers — rather than that it refused
    something: cloudtrack's own :class:`~cloudtrack.errors.TransientError`, or the requests and
    urllib3 errors MLflow's REST client wraps (it keeps them as the exception's context)."""
    import requests
    import urllib3

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        # TransientError is a ConnectionError; urllib3's NewConnectionError ends in a
        # MaxRetryError, which requests wraps in its own ConnectionError.
        if isinstance(cause, ConnectionError | TimeoutError
                      | requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | requests.exceptions.RetryError | urllib3.exceptions.MaxRetryError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

