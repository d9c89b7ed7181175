"""The SQL destination: a migration written into an MLflow SQL store as rows of MLflow's own ORM
models, every id and timestamp as the source has it.

MLflow's ``create_run`` and ``log_batch`` choose ids and times, so :class:`SqlDestination`
writes the rows itself, through the store's ``ManagedSessionMaker``, the way
``SqlAlchemyStore`` would have written them: NaN as ``is_nan`` with value 0, ±inf clamped,
``latest_metrics`` beside the history, datasets shared per experiment and linked by ``inputs``
rows, logged models with their params, tags and metrics, deleted model versions as
``Deleted_Internal`` rows so their numbers are never handed out again.  The schema is whatever
MLflow's migrations made of the database.

URLs: ``sqlite:///…`` and ``postgresql://…`` are tested; ``mysql://…`` and ``mssql://…`` are
written for (explicit experiment ids need their session settings) but untested, and work only
where their SQLAlchemy driver is installed.

One module although it is a little over 600 lines: every part of it is the same mapping, from
MLflow's entities to MLflow's tables, and reads best in one place.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy
from mlflow.entities import Experiment, LifecycleStage, LoggedModelStatus, Metric, ViewType
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS
from mlflow.store.model_registry.dbmodels.models import (
    SqlModelVersion,
    SqlModelVersionTag,
    SqlRegisteredModel,
    SqlRegisteredModelAlias,
    SqlRegisteredModelTag,
)
from mlflow.store.tracking.dbmodels.models import (
    SqlDataset,
    SqlExperiment,
    SqlExperimentTag,
    SqlInput,
    SqlInputTag,
    SqlLatestMetric,
    SqlLoggedModel,
    SqlLoggedModelMetric,
    SqlLoggedModelParam,
    SqlLoggedModelTag,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy import delete, insert, or_, select, text, update
from sqlalchemy.orm import Session

from cloudtrack.migrate.destination import CopiedModel, CopiedRun, Destination, RunTarget
from cloudtrack.migrate.endpoints import Endpoint
from cloudtrack.migrate.model import (
    ModelCopy,
    RunCopy,
    model_fingerprint,
    run_fingerprint,
    stored_value,
)

log = logging.getLogger("cloudtrack.migrate")

#: Runs per search page of :meth:`SqlDestination.copied_runs`.
PAGE = 1000
#: Rows per INSERT batch (metric histories can hold millions of points).
INSERT_BATCH = 10_000
#: Attempts of a transaction that lost a race on a shared row (two runs creating one dataset).
ATTEMPTS = 3
#: What ``delete_model_version`` leaves in a deleted version's row (times aside).
DELETED_VERSION: dict[str, Any] = {
    "current_stage": STAGE_DELETED_INTERNAL, "source": "REDACTED-SOURCE-PATH",
    "run_id": "REDACTED-RUN-ID", "run_link": "REDACTED-RUN-LINK", "status": "READY",
    "description": None, "user_id": None, "status_message": None, "storage_location": None}

#: dialect -> the statements around an INSERT that names an experiment id.
_EXPLICIT_IDS = {
    "mssql": ("SET IDENTITY_INSERT experiments ON", "SET IDENTITY_INSERT experiments OFF"),
    "mysql": ("SET @@SESSION.sql_mode='NO_AUTO_VALUE_ON_ZERO'", "SET @@SESSION.sql_mode=''"),
}

T = TypeVar("T")
Row = dict[str, Any]


class SqlDestination(Destination):
    """An MLflow SQL store (``Endpoint.tracking`` is its ``SqlAlchemyStore``)."""

    kind = "sql"
    keeps_ids = True
    cannot_hold = (("traces", "cloudtrack migrate does not copy traces into a SQL store yet"),)

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self.tracking = endpoint.tracking
        self.registry = endpoint.registry
        self.dialect: str = self.tracking.engine.dialect.name
        self._locations: dict[str, str] = {}
        # Logged-model metric rows whose run is not in the destination yet (the foreign key
        # wants it), by run id: that run's finish_run writes them.
        self._pending: dict[str, list[Row]] = {}
        self._lock = threading.Lock()

    # -- sessions ------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Session], T], registry: bool = False,
                     attempts: int = 1) -> T:
        """Run ``work`` in one write transaction; up to ``attempts`` times when it lost a race
        on a unique row (two runs creating the same dataset)."""
        store = self.registry if registry else self.tracking
        for attempt in range(attempts):
            try:
                with store.ManagedSessionMaker(read_only=False) as session:
                    return work(session)
            except MlflowException as e:
                if not _conflict(e) or attempt == attempts - 1:
                    raise
                log.debug("retrying a transaction on %s after %s", self.endpoint.shown, e)
        raise AssertionError("unreachable")

    # -- experiments ---------------------------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        return list(_pages(lambda token: self.tracking.search_experiments(
            view_type=ViewType.ALL, max_results=PAGE, page_token=token)))

    def create_experiment(self, source: Experiment, experiment_id: str | None) -> Experiment:
        now = get_current_time_millis()

        def work(session: Session) -> str:
            row: Any = SqlExperiment(name=source.name, lifecycle_stage=LifecycleStage.ACTIVE,
                                     creation_time=source.creation_time or now,
                                     last_update_time=source.last_update_time or now)
            if experiment_id is not None:
                row.experiment_id = int(experiment_id)
                row.artifact_location = self._default_location(experiment_id)
            # Dialects that need telling before an INSERT names the id (as MLflow's own
            # _create_default_experiment does).
            on, off = _EXPLICIT_IDS.get(self.dialect, ("", "")) \
                if experiment_id is not None else ("", "")
            if on:
                session.execute(text(on))
            session.add(row)
            session.flush()
            if off:
                session.execute(text(off))
            if experiment_id is None:
                # As MLflow does: the id is the database's, the location follows from it.
                row.artifact_location = self._default_location(str(row.experiment_id))
            session.add_all(SqlExperimentTag(experiment_id=row.experiment_id, key=k, value=v)
                            for k, v in _tags(source).items())
            session.flush()
            if experiment_id is not None:
                self._bump_experiment_ids(session)
            return str(row.experiment_id)

        try:
            new_id = self._transaction(work)
        except MlflowException as e:
            if not _conflict(e):
                raise
            taken = f"id {experiment_id} or " if experiment_id is not None else ""
            raise MlflowException(
                f"cannot create experiment {source.name!r} in {self.endpoint.shown}: its "
                f"{taken}name is taken there already ({e.__cause__})",
                error_code=RESOURCE_ALREADY_EXISTS) from e
        return self.tracking.get_experiment(new_id)  # type: ignore[no-any-return]

    def _default_location(self, experiment_id: str) -> str:
        return append_to_uri_path(self.tracking.artifact_root_uri, str(experiment_id))

    def _bump_experiment_ids(self, session: Session) -> None:
        """PostgreSQL's serial does not see explicit ids: move it past the largest, so the
        next ``create_experiment`` through MLflow cannot collide.  (sqlite, MySQL and SQL
        Server move on by themselves.)"""
        if self.dialect != "postgresql":
            return
        seq = session.execute(
            text("SELECT pg_get_serial_sequence('experiments', 'experiment_id')")).scalar()
        if not seq:
            return
        top = session.execute(select(sqlalchemy.func.max(SqlExperiment.experiment_id))).scalar()
        last = session.execute(text("SELECT pg_sequence_last_value(CAST(:seq AS regclass))"),
                               {"seq": seq}).scalar()
        if top and (last is None or top > last):
            session.execute(text("SELECT setval(CAST(:seq AS regclass), :top, true)"),
                            {"seq": seq, "top": int(top)})

    def update_experiment(self, dest: Experiment, source: Experiment) -> None:
        tags = _tags(source)
        if not tags or tags.items() <= _tags(dest).items():
            return

        exp_id = int(dest.experiment_id)
        self._transaction(lambda session: [session.merge(SqlExperimentTag(
            experiment_id=exp_id, key=k, value=v)) for k, v in tags.items()])

    def finish_experiment(self, dest: Experiment, source: Experiment) -> None:
        values: Row = {"lifecycle_stage": source.lifecycle_stage}
        if source.last_update_time:
            values["last_update_time"] = source.last_update_time
        self._transaction(lambda session: session.execute(
            update(SqlExperiment).where(SqlExperiment.experiment_id == int(dest.experiment_id))
            .values(**values)))

    def _location(self, experiment_id: str) -> str:
        location = self._locations.get(experiment_id)
        if location is None:
            location = self.tracking.get_experiment(experiment_id).artifact_location
            self._locations[experiment_id] = location
        return location

    # -- runs ------------------------------------------------------------------------------------

    def copied_runs(self, experiment_id: str) -> dict[str, CopiedRun]:
        runs = _pages(lambda token: self.tracking.search_runs(
            [experiment_id], None, ViewType.ALL, max_results=PAGE, order_by=None,
            page_token=token))
        return {r.info.run_id: CopiedRun(r.info.run_id, r.info.run_id, run_fingerprint(r))
                for r in runs}

    def begin_run(self, copy: RunCopy, earlier: CopiedRun | None) -> RunTarget:
        # As SqlAlchemyStore.create_run: <experiment's artifact location>/<run id>/artifacts.
        uri = append_to_uri_path(self._location(copy.experiment_id), copy.run_id, "artifacts")
        return RunTarget(copy.run_id, uri)

    def finish_run(self, copy: RunCopy, target: RunTarget) -> None:
        run_id, exp_id = target.run_id, int(copy.experiment_id)
        metrics = _metric_rows(copy.history, run_id)
        latest = _latest_rows(metrics, copy.run, run_id)
        with self._lock:
            waiting = self._pending.pop(copy.run_id, [])
        # Only what the source's logged models hold: a cloudtrack source keeps the model id on
        # history points too, but the model's own metrics are what a reader of it sees.
        model_metrics = [{**r, "run_id": run_id, "experiment_id": exp_id} for r in waiting]
        try:
            self._transaction(lambda session: self._write_run(
                session, copy, target, metrics, latest, model_metrics), attempts=ATTEMPTS)
        except BaseException:
            if waiting:
                with self._lock:
                    self._pending.setdefault(copy.run_id, []).extend(waiting)
            raise
        with self._lock:  # parked while the run was being written (runs in parallel)
            late = [{**r, "experiment_id": exp_id} for r in self._pending.pop(run_id, [])]
        if late:
            self._transaction(lambda session: self._write_model_metrics(session, late))

    def _write_run(self, session: Session, copy: RunCopy, target: RunTarget,
                   metrics: list[Row], latest: list[Row], model_metrics: list[Row]) -> None:
        info, data, run_id = copy.run.info, copy.run.data, target.run_id
        deleted_before = session.execute(select(SqlRun.deleted_time)
                                         .where(SqlRun.run_uuid == run_id)).scalar()
        # Writing a run again replaces everything it owns: nothing is duplicated.
        for model in (SqlMetric, SqlLatestMetric, SqlParam, SqlTag):
            session.execute(delete(model).where(model.run_uuid == run_id))  # type: ignore[attr-defined]
        dataset_inputs: Any = select(SqlInput.input_uuid).where(
            SqlInput.destination_type == "RUN", SqlInput.destination_id == run_id)
        session.execute(delete(SqlInputTag).where(SqlInputTag.input_uuid.in_(dataset_inputs)))
        session.execute(delete(SqlInput).where(or_(
            (SqlInput.destination_type == "RUN") & (SqlInput.destination_id == run_id),
            SqlInput.source_type.in_(("RUN_INPUT", "RUN_OUTPUT")) & (SqlInput.source_id == run_id),
        )))

        deleted = info.lifecycle_stage == LifecycleStage.DELETED
        _upsert(session, SqlRun, SqlRun.run_uuid == run_id, {
            "run_uuid": run_id, "source_type": "UNKNOWN", "source_name": "",
            "entry_point_name": "", "source_version": ""}, {
            "name": info.run_name, "user_id": info.user_id, "status": info.status,
            "start_time": info.start_time, "end_time": info.end_time,
            "lifecycle_stage": info.lifecycle_stage, "artifact_uri": target.artifact_uri,
            "experiment_id": int(copy.experiment_id),
            # As the source says; where it cannot, the time of an earlier copy, else now, so
            # `mlflow gc --older-than` counts from the migration, never earlier.
            "deleted_time": (copy.deleted_time or deleted_before or get_current_time_millis())
            if deleted else None})

        _insert(session, SqlTag, [{"run_uuid": run_id, "key": k, "value": v}
                                  for k, v in data.tags.items()])
        _insert(session, SqlParam, [{"run_uuid": run_id, "key": k, "value": v}
                                    for k, v in data.params.items()])
        _insert(session, SqlMetric, metrics)
        _insert(session, SqlLatestMetric, latest)
        self._write_inputs(session, copy, run_id)
        self._write_model_metrics(session, model_metrics)
        log.debug("wrote run %s (%d points) into %s", run_id, len(metrics), self.endpoint.shown)

    def _write_inputs(self, session: Session, copy: RunCopy, run_id: str) -> None:
        """Datasets (shared by the runs of an experiment, as ``log_inputs`` shares them), the
        run's dataset inputs with their tags, its model inputs and outputs."""
        exp_id = int(copy.experiment_id)
        inputs = copy.run.inputs
        datasets = {(d.dataset.name, d.dataset.digest): d
                    for d in reversed(getattr(inputs, "dataset_inputs", None) or [])}
        if datasets:
            names = {name for name, _ in datasets}
            rows: Any = session.execute(
                select(SqlDataset.name, SqlDataset.digest, SqlDataset.dataset_uuid).where(
                    SqlDataset.experiment_id == exp_id, SqlDataset.name.in_(names)))
            known = {(r.name, r.digest): r.dataset_uuid for r in rows}
            links: list[Row] = []
            tags: list[Row] = []
            for key, item in datasets.items():
                ds = item.dataset
                if key not in known:
                    known[key] = uuid.uuid4().hex
                    _insert(session, SqlDataset, [{
                        "dataset_uuid": known[key], "experiment_id": exp_id, "name": ds.name,
                        "digest": ds.digest, "dataset_source_type": ds.source_type,
                        "dataset_source": ds.source, "dataset_schema": ds.schema,
                        "dataset_profile": ds.profile}])
                input_uuid = uuid.uuid4().hex
                links.append({"input_uuid": input_uuid, "source_type": "DATASET",
                              "source_id": known[key], "destination_type": "RUN",
                              "destination_id": run_id})
                tags.extend({"input_uuid": input_uuid, "name": t.key, "value": t.value}
                            for t in {t.key: t for t in item.tags or []}.values())
            _insert(session, SqlInput, links)
            _insert(session, SqlInputTag, tags)
        # Model inputs and outputs: RUN_INPUT -> MODEL_INPUT, RUN_OUTPUT -> MODEL_OUTPUT (step).
        ids = copy.model_ids
        models = {("INPUT", ids.get(m.model_id, m.model_id)): 0
                  for m in getattr(inputs, "model_inputs", None) or []}
        models.update({("OUTPUT", ids.get(m.model_id, m.model_id)): int(m.step or 0)
                       for m in getattr(copy.run.outputs, "model_outputs", None) or []})
        _insert(session, SqlInput, [
            {"input_uuid": uuid.uuid4().hex, "source_type": f"RUN_{kind}", "source_id": run_id,
             "destination_type": f"MODEL_{kind}", "destination_id": model_id, "step": step}
            for (kind, model_id), step in models.items()])

    # -- logged models ---------------------------------------------------------------------------

    def copied_models(self, experiment_ids: Sequence[str]) -> dict[str, CopiedModel]:
        """The logged models of these experiments, but those whose source run is not in the
        destination yet: their metrics may still wait for it (see :meth:`write_logged_model`),
        so they are written again with it.  A deleted one has no fingerprint: written again, it
        is live again, as in the source."""
        if not experiment_ids:
            return {}
        fingerprints: dict[str, str] = {}
        token = None
        while True:
            page = self.tracking.search_logged_models([str(e) for e in experiment_ids],
                                                      max_results=100, page_token=token)
            fingerprints.update((m.model_id, model_fingerprint(m)) for m in page)
            token = page.token
            if not token:
                break
        with self.tracking.ManagedSessionMaker() as session:
            rows: Any = session.execute(
                select(SqlLoggedModel.model_id, SqlLoggedModel.source_run_id).where(
                    SqlLoggedModel.experiment_id.in_([int(e) for e in experiment_ids]))).all()
            present = _existing_runs(session, {r.source_run_id for r in rows if r.source_run_id})
        with self._lock:
            waiting = {r["model_id"] for rows_ in self._pending.values() for r in rows_}
        return {r.model_id: CopiedModel(r.model_id, r.model_id, fingerprints.get(r.model_id, ""))
                for r in rows
                if (r.source_run_id is None or r.source_run_id in present)
                and r.model_id not in waiting}

    def write_logged_model(self, copy: ModelCopy, artifacts: Callable[[str], None]) -> str:
        """Write the model in one transaction, after its artifacts.  Its metric rows name runs
        (a foreign key): those of runs not written yet wait for that run's :meth:`finish_run`."""
        model, model_id = copy.model, copy.model.model_id
        exp_id = int(copy.experiment_id)
        # As SqlAlchemyStore.create_logged_model: <experiment location>/models/<id>/artifacts.
        location = append_to_uri_path(self._location(copy.experiment_id), "models", model_id,
                                      "artifacts")
        artifacts(location)
        status = model.status if isinstance(model.status, LoggedModelStatus) \
            else LoggedModelStatus(str(model.status))
        metrics = [_model_metric_row(m, model_id) for m in model.metrics or []]
        row: Row = {
            "experiment_id": exp_id, "name": model.name, "artifact_location": location,
            "creation_timestamp_ms": model.creation_timestamp,
            "last_updated_timestamp_ms": model.last_updated_timestamp,
            "status": status.to_int(), "lifecycle_stage": LifecycleStage.ACTIVE,
            "model_type": model.model_type, "source_run_id": copy.source_run_id,
            "status_message": model.status_message,
        }

        def work(session: Session) -> list[Row]:
            for table in (SqlLoggedModelParam, SqlLoggedModelTag):
                session.execute(delete(table).where(table.model_id == model_id))  # type: ignore[attr-defined]
            _upsert(session, SqlLoggedModel, SqlLoggedModel.model_id == model_id,
                    {"model_id": model_id}, row)
            _insert(session, SqlLoggedModelParam, [
                {"model_id": model_id, "experiment_id": exp_id, "param_key": k,
                 "param_value": v} for k, v in (model.params or {}).items()])
            _insert(session, SqlLoggedModelTag, [
                {"model_id": model_id, "experiment_id": exp_id, "tag_key": k, "tag_value": v}
                for k, v in (model.tags or {}).items()])
            runs = _existing_runs(session, {m["run_id"] for m in metrics})
            ready = [{**m, "experiment_id": runs[m["run_id"]]} for m in metrics
                     if m["run_id"] in runs]
            self._write_model_metrics(session, ready)
            return [m for m in metrics if m["run_id"] not in runs]

        waiting = self._transaction(work)
        if waiting:
            # Under the lock, so a run's finish_run either sees them or wrote its run before
            # this look: then they go in now.
            with self._lock, self.tracking.ManagedSessionMaker() as session:
                runs = _existing_runs(session, {m["run_id"] for m in waiting})
                for m in waiting:
                    if m["run_id"] not in runs:
                        self._pending.setdefault(m["run_id"], []).append(m)
            late = [{**m, "experiment_id": runs[m["run_id"]]} for m in waiting
                    if m["run_id"] in runs]
            if late:
                self._transaction(lambda session: self._write_model_metrics(session, late))
        return model_id

    @staticmethod
    def _write_model_metrics(session: Session, rows: list[Row]) -> None:
        """Replace the logged-model metric rows of these (model, run) pairs — one model's
        runs, or one run's models — with ``rows``; rows of models not in the destination are
        left out (the foreign key wants the model, whose own copy brings them)."""
        unique = {(r["model_id"], r["metric_name"], r["metric_timestamp_ms"],
                   r["metric_step"], r["run_id"]): r for r in rows}
        if not unique:
            return
        models = {r["model_id"] for r in unique.values()}
        present: set[str] = set(session.execute(
            select(SqlLoggedModel.model_id).where(SqlLoggedModel.model_id.in_(models))).scalars())
        session.execute(delete(SqlLoggedModelMetric).where(
            SqlLoggedModelMetric.model_id.in_(present),
            SqlLoggedModelMetric.run_id.in_({r["run_id"] for r in unique.values()})))
        _insert(session, SqlLoggedModelMetric,
                [r for r in unique.values() if r["model_id"] in present])

    def close(self) -> None:
        with self._lock:
            parked = {run: len(rows) for run, rows in self._pending.items()}
        if parked:
            log.warning("%d logged-model metric rows not written into %s: their runs (%s) "
                        "were not copied", sum(parked.values()), self.endpoint.shown,
                        ", ".join(sorted(parked)[:5]))
        super().close()

    # -- registry --------------------------------------------------------------------------------

    def registered_models(self) -> dict[str, tuple[RegisteredModel, list[ModelVersion]]]:
        found: dict[str, tuple[RegisteredModel, list[ModelVersion]]] = {}
        with self.registry.ManagedSessionMaker() as session:
            for row in session.execute(select(SqlRegisteredModel)).scalars():
                found[row.name] = (row.to_mlflow_entity(preloaded_latest_versions=[]), [])
            for row in session.execute(select(SqlModelVersion).where(
                    SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL)
                    .order_by(SqlModelVersion.name, SqlModelVersion.version)).scalars():
                if row.name in found:
                    model, live = found[row.name]
                    version = row.to_mlflow_entity()
                    version.aliases = [a for a, n in model.aliases.items() if int(n) == row.version]
                    live.append(version)
        return found

    def write_registered_model(self, model: RegisteredModel, versions: Sequence[ModelVersion],
                               deleted: Sequence[int]) -> int:
        name, now = model.name, get_current_time_millis()
        # A deleted version's time is gone with it; the model's update time stands in.
        when = model.last_updated_timestamp or now

        def work(session: Session) -> int:
            _upsert(session, SqlRegisteredModel, SqlRegisteredModel.name == name, {
                "name": name, "creation_time": model.creation_timestamp or now}, {
                "description": model.description, "last_updated_time": when})
            _replace(session, SqlRegisteredModelTag, [SqlRegisteredModelTag.name == name],
                     [{"name": name, "key": k, "value": v} for k, v in _tags(model).items()])
            stages: dict[int, str] = dict(session.execute(
                select(SqlModelVersion.version, SqlModelVersion.current_stage)
                .where(SqlModelVersion.name == name)).all())
            written = 0
            for v in sorted(versions, key=lambda v: int(v.version)):
                number = int(v.version)
                self._write_version(session, v, number)
                written += stages.get(number, STAGE_DELETED_INTERNAL) == STAGE_DELETED_INTERNAL
            live = {int(v.version) for v in versions}
            # Deleted numbers stay taken: a row as delete_model_version leaves one.
            _insert(session, SqlModelVersion, [
                {**DELETED_VERSION, "name": name, "version": n, "creation_time": when,
                 "last_updated_time": when} for n in sorted({int(n) for n in deleted})
                if n not in stages and n not in live])
            _replace(session, SqlRegisteredModelAlias, [SqlRegisteredModelAlias.name == name],
                     [{"name": name, "alias": alias, "version": int(number)}
                      for alias, number in model.aliases.items()])
            return written

        return self._transaction(work, registry=True)

    def _write_version(self, session: Session, v: ModelVersion, number: int) -> None:
        """Write version ``number`` as given (over a deleted row of that number, or syncing a
        live copy's stage, description and tags)."""
        name = v.name
        _upsert(session, SqlModelVersion,
                (SqlModelVersion.name == name) & (SqlModelVersion.version == number),
                {"name": name, "version": number}, {
                    "creation_time": v.creation_timestamp,
                    "last_updated_time": v.last_updated_timestamp,
                    "description": v.description, "user_id": v.user_id,
                    "current_stage": v.current_stage, "source": v.source,
                    "storage_location": self._storage_location(session, v.source),
                    "run_id": v.run_id, "run_link": v.run_link, "status": v.status or "READY",
                    "status_message": v.status_message})
        _replace(session, SqlModelVersionTag, [SqlModelVersionTag.name == name,
                                               SqlModelVersionTag.version == number],
                 [{"name": name, "version": number, "key": k, "value": val}
                  for k, val in _tags(v).items()])

    def _storage_location(self, session: Session, source: str | None) -> str | None:
        """Where the version's files are, as create_model_version resolves it: a
        ``models:/<model id>`` source is the logged model's artifact location, a
        ``models:/<name>/<version>`` source that version's location; anything else itself."""
        if not source or not source.startswith("models:"):
            return source
        from mlflow.store.artifact.utils.models import _parse_model_uri

        try:
            parsed = _parse_model_uri(source)
        except MlflowException:
            return source
        if parsed.model_id is not None:
            # The registry and the tracking tables share the database (one URI).
            found = session.execute(select(SqlLoggedModel.artifact_location).where(
                SqlLoggedModel.model_id == parsed.model_id)).scalar()
        elif parsed.version is not None:
            found = session.execute(select(SqlModelVersion.storage_location).where(
                SqlModelVersion.name == parsed.name,
                SqlModelVersion.version == int(parsed.version))).scalar()
        else:
            found = None
        return found or source


# -- rows ----------------------------------------------------------------------------------------

def _pages(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search; ``fetch(token)`` answers one page."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _insert(session: Session, model: Any, rows: list[Row]) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        session.execute(insert(model), rows[start:start + INSERT_BATCH])


def _replace(session: Session, model: Any, where: list[Any], rows: list[Row]) -> None:
    session.execute(delete(model).where(*where))
    _insert(session, model, rows)


def _upsert(session: Session, model: Any, where: Any, keys: Row, row: Row) -> None:
    """Update the row ``where`` selects with ``row``, else insert ``keys`` and ``row``."""
    if session.execute(select(sqlalchemy.literal(1)).select_from(model).where(where)).first():
        session.execute(update(model).where(where).values(**row))
    else:
        session.execute(insert(model).values(**keys, **row))


def _sanitized(value: float) -> tuple[bool, float]:
    """As SqlAlchemyStore.sanitize_metric_value: (is NaN, the value stored: 0 for NaN, ±inf
    clamped to the largest double)."""
    value = stored_value(value)
    return (True, 0.0) if math.isnan(value) else (False, value)


def _metric_rows(history: Iterable[Metric], run_id: str) -> list[Row]:
    """Every point once, keyed as the ``metrics`` table's primary key keys it."""
    rows: dict[tuple[Any, ...], Row] = {}
    for m in history:
        is_nan, value = _sanitized(m.value)
        key = (m.key, int(m.timestamp), int(m.step), value, is_nan)
        rows.setdefault(key, {"run_uuid": run_id, "key": m.key, "value": value,
                              "timestamp": int(m.timestamp), "step": int(m.step),
                              "is_nan": is_nan})
    return list(rows.values())


def _latest_rows(metrics: list[Row], run: Any, run_id: str) -> list[Row]:
    """``latest_metrics``: per key the point MLflow's SQL store keeps (the max of step,
    timestamp, stored value; the first logged on a tie) — but where the source run names its
    latest value, that one, since a fingerprint is taken of it and another store may break
    ties differently (cloudtrack counts NaN as the smallest value)."""
    latest: dict[str, Row] = {}
    for row in metrics:
        cur = latest.get(row["key"])
        if cur is None or (row["step"], row["timestamp"], row["value"]) \
                > (cur["step"], cur["timestamp"], cur["value"]):
            latest[row["key"]] = row
    for m in getattr(run.data, "_metric_objs", None) or []:
        is_nan, value = _sanitized(m.value)
        latest[m.key] = {"run_uuid": run_id, "key": m.key, "value": value, "is_nan": is_nan,
                         "timestamp": int(m.timestamp), "step": int(m.step)}
    return list(latest.values())


def _model_metric_row(m: Metric, model_id: str | None) -> Row:
    # _log_model_metrics stores the sanitized value without is_nan: NaN becomes 0.
    return {"model_id": model_id, "metric_name": m.key, "metric_timestamp_ms": int(m.timestamp),
            "metric_step": int(m.step), "metric_value": _sanitized(m.value)[1],
            "run_id": m.run_id, "dataset_uuid": None, "dataset_name": m.dataset_name,
            "dataset_digest": m.dataset_digest}


def _conflict(error: MlflowException) -> bool:
    """Did the database refuse a row as a duplicate (the store wraps SQLAlchemy's error)?"""
    return isinstance(error.__cause__, sqlalchemy.exc.IntegrityError)


def _existing_runs(session: Session, run_ids: set[str]) -> dict[str, int]:
    """Which of these runs the destination holds, with their experiment ids."""
    if not run_ids:
        return {}
    rows: Any = session.execute(select(SqlRun.run_uuid, SqlRun.experiment_id)
                                .where(SqlRun.run_uuid.in_(run_ids))).all()
    return {r.run_uuid: r.experiment_id for r in rows}


def _tags(entity: Any) -> dict[str, str]:
    """Every tag of an entity: RegisteredModel.tags hides ``mlflow.prompt.is_prompt``, which
    is what makes a prompt a prompt."""
    tags = getattr(entity, "_tags", None)
    if not isinstance(tags, dict):
        tags = entity.tags
    if isinstance(tags, dict):
        return {str(k): v for k, v in tags.items()}
    return {t.key: t.value for t in tags or []}

