"""Reading everything out of a source store, through MLflow's public store API, in pages.

Any MLflow tracking store works (cloudtrack's, SQL, FileStore, a server's REST store); two
have a faster way to the one thing that costs the most, metric histories: a SQL store answers
the points of many runs in one query, a cloudtrack store lists a run's history batches once
for all its metrics instead of once per metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

from mlflow.entities import Experiment, LoggedModel, Metric, Run, ViewType
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from cloudtrack.migrate.endpoints import Endpoint, EndpointError

log = logging.getLogger("cloudtrack.migrate")

#: Runs per search page: one request of a server, one LIST page of a cloudtrack store.
PAGE = 1000
#: Runs whose histories a SQL source answers in one query.
SQL_HISTORY_BATCH = 200
IS_PROMPT = "mlflow.prompt.is_prompt"


class Source:
    """Everything in one source store, read in pages."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.tracking = endpoint.tracking
        self.registry = endpoint.registry

    @property
    def reads_in_bulk(self) -> bool:
        """Whether :meth:`complete`, :meth:`histories` and :meth:`deleted_times` answer many
        runs at once (one query each, SQL); elsewhere they read one run after the other, and a
        caller reads runs in parallel instead."""
        return self.endpoint.kind == "sql"

    # -- experiments and runs ----------------------------------------------------------------

    def experiments(self, selectors: Sequence[str] = ()) -> list[Experiment]:
        """Every experiment (deleted ones too), or those ``selectors`` name (by id or name)."""
        if selectors:
            return [self._experiment(s) for s in dict.fromkeys(selectors)]
        found: list[Experiment] = []
        token = None
        while True:
            page = self.tracking.search_experiments(view_type=ViewType.ALL, max_results=PAGE,
                                                    page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        return sorted(found, key=_id_order)

    def _experiment(self, selector: str) -> Experiment:
        exp = self.tracking.get_experiment_by_name(selector)
        if exp is not None:
            return exp
        try:
            return self.tracking.get_experiment(selector)
        except MlflowException as e:
            raise EndpointError(
                f"no experiment named or numbered {selector!r} in {self.endpoint.shown} "
                f"({e.error_code}); `--experiment` takes a name or an id") from None

    def runs(self, experiment_id: str) -> Iterator[list[Run]]:
        """The experiment's runs (every lifecycle stage), a page at a time."""
        token = None
        while True:
            page = self.tracking.search_runs([experiment_id], None, ViewType.ALL,
                                             max_results=PAGE, order_by=None, page_token=token)
            if page:
                yield list(page)
            token = page.token
            if not token:
                return

    def count_runs(self, experiment_id: str) -> int:
        """How many runs the experiment has, as cheaply as the store allows (for progress)."""
        if self.endpoint.kind == "cloudtrack":
            from cloudtrack.store import layout

            return sum(1 for _ in self.tracking.blobs.list(layout.heads(experiment_id)))
        if self.endpoint.kind == "sql":
            from mlflow.store.tracking.dbmodels.models import SqlRun

            with self.tracking.ManagedSessionMaker() as session:
                return int(session.query(SqlRun).filter(
                    SqlRun.experiment_id == int(experiment_id)).count())
        return sum(len(page) for page in self.runs(experiment_id))

    def complete(self, runs: Sequence[Run]) -> list[Run]:
        """``runs`` with what a search leaves out: MLflow's SQL search (and so a server's)
        answers no model inputs, which only ``get_run`` adds.  A SQL source reads them for all
        the runs in one query; a server answers one ``get_run`` per run."""
        if self.endpoint.kind == "server":
            return [self.tracking.get_run(r.info.run_id) for r in runs]
        if self.endpoint.kind != "sql" or not runs:
            return list(runs)
        from mlflow.entities import LoggedModelInput, RunInputs
        from mlflow.store.tracking.dbmodels.models import SqlInput

        found: dict[str, list[LoggedModelInput]] = {}
        with self.tracking.ManagedSessionMaker() as session:
            rows = session.query(SqlInput).filter(
                SqlInput.source_type == "RUN_INPUT",
                SqlInput.source_id.in_([r.info.run_id for r in runs]),
                SqlInput.destination_type == "MODEL_INPUT").all()
            for row in rows:
                found.setdefault(row.source_id, []).append(
                    LoggedModelInput(model_id=row.destination_id))
        out = []
        for run in runs:
            inputs = found.get(run.info.run_id)
            if inputs:
                datasets = run.inputs.dataset_inputs if run.inputs else []
                run = Run(run.info, run.data, RunInputs(datasets, inputs), run.outputs)
            out.append(run)
        return out

    def deleted_times(self, runs: Sequence[Run]) -> dict[str, int]:
        """When each deleted run of ``runs`` was deleted, where the store keeps it (SQL and
        cloudtrack stores; MLflow's API has no field for it)."""
        from mlflow.entities import LifecycleStage

        deleted = [r.info.run_id for r in runs if r.info.lifecycle_stage == LifecycleStage.DELETED]
        if not deleted:
            return {}
        if self.endpoint.kind == "sql":
            from mlflow.store.tracking.dbmodels.models import SqlRun

            with self.tracking.ManagedSessionMaker() as session:
                rows = session.query(SqlRun.run_uuid, SqlRun.deleted_time).filter(
                    SqlRun.run_uuid.in_(deleted)).all()
            return {r[0]: int(r[1]) for r in rows if r[1] is not None}
        if self.endpoint.kind == "cloudtrack":
            out = {}
            for run_id in deleted:
                head, _ = self.tracking._load_head(run_id)
                when = head["info"].get("deleted_time")
                if when is not None:
                    out[run_id] = int(when)
            return out
        return {}

    def histories(self, runs: Sequence[Run]) -> dict[str, list[Metric]]:
        """Every point of every metric of each run, by run id."""
        if not runs:
            return {}
        if self.endpoint.kind == "sql":
            return self._sql_histories(runs)
        out: dict[str, list[Metric]] = {}
        for run in runs:
            out[run.info.run_id] = self.history(run)
        return out

    def history(self, run: Run) -> list[Metric]:
        """Every point of every metric of one run."""
        run_id = run.info.run_id
        keys = list(run.data.metrics)
        if not keys:
            return []
        if self.endpoint.kind == "cloudtrack":
            from cloudtrack.store import entities

            return [entities.metric(t, run_id) for t in self.tracking._history_points(run_id)]
        points: list[Metric] = []
        for key in keys:
            points.extend(metric_history(self.tracking, run_id, key))
        return points

    def _sql_histories(self, runs: Sequence[Run]) -> dict[str, list[Metric]]:
        # Plain rows, not ORM objects: building, then expiring at commit, one SqlMetric per
        # point cost ~0.1 ms a point (27 of 40 s of copying 500 runs of 500 points locally).
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from sqlalchemy import select

        table = SqlMetric.__table__
        # Where this MLflow's table links a point to a logged model and dataset.
        linked = [c for c in ("model_id", "dataset_name", "dataset_digest") if c in table.c]
        query = select(table.c.key, table.c.value, table.c.timestamp, table.c.step,
                       table.c.is_nan, table.c.run_uuid, *(table.c[c] for c in linked))
        out: dict[str, list[Metric]] = {r.info.run_id: [] for r in runs}
        ids = list(out)
        for start in range(0, len(ids), SQL_HISTORY_BATCH):
            chunk = ids[start:start + SQL_HISTORY_BATCH]
            with self.tracking.ManagedSessionMaker() as session:
                rows = session.execute(query.where(table.c.run_uuid.in_(chunk))).all()
            for key, value, timestamp, step, is_nan, run_id, *link in rows:
                out[run_id].append(Metric(key, math.nan if is_nan else value, timestamp, step,
                                          run_id=run_id, **dict(zip(linked, link, strict=True))))
        return out

    # -- logged models -------------------------------------------------------------------------

    def logged_models(self, experiment_ids: Sequence[str]) -> list[LoggedModel]:
        """The logged models of these experiments (MLflow 3); [] where the store has none."""
        if not experiment_ids:
            return []
        found: list[LoggedModel] = []
        token = None
        while True:
            try:
                page = self.tracking.search_logged_models(list(experiment_ids), max_results=100,
                                                          page_token=token)
            except MlflowException as e:
                if e.error_code in ("NOT_IMPLEMENTED", "ENDPOINT_NOT_FOUND"):
                    return found
                raise
            except NotImplementedError:
                return found
            found.extend(page)
            token = page.token
            if not token:
                return found

    # -- what a destination may not hold --------------------------------------------------------

    def trace_count(self, experiment_ids: Sequence[str]) -> int:
        """How many traces these experiments hold (0 where the store cannot hold any)."""
        if self.endpoint.kind in ("cloudtrack", "filestore") or not experiment_ids:
            return 0
        total, token = 0, None
        try:
            while True:
                traces, token = self.tracking.search_traces(
                    locations=list(experiment_ids), max_results=500, page_token=token) \
                    if _takes_locations(self.tracking) else self.tracking.search_traces(
                        list(experiment_ids), max_results=500, page_token=token)
                total += len(traces)
                if not token:
                    return total
        except Exception:
            log.debug("counting traces in %s", self.endpoint.shown, exc_info=True)
            return total

    # -- registry ------------------------------------------------------------------------------

    def registered_models(self) -> list[RegisteredModel]:
        """Every registered model and every prompt (prompts are registered models with the
        ``mlflow.prompt.is_prompt`` tag)."""
        if self.registry is None:
            return []
        found: dict[str, RegisteredModel] = {}
        for filter_string in (None, f"tags.`{IS_PROMPT}` = 'true'"):
            token = None
            while True:
                page = self.registry.search_registered_models(
                    filter_string=filter_string, max_results=PAGE, page_token=token)
                for model in page:
                    found.setdefault(model.name, model)
                token = page.token
                if not token:
                    break
        return sorted(found.values(), key=lambda m: m.name)

    def model_versions(self, model: RegisteredModel) -> list[ModelVersion]:
        """Every live version of ``model`` (deleted ones are gone from every store's API; their
        numbers show as gaps)."""
        name = model.name.replace("'", "\\'")
        prompt = is_prompt(model)
        filter_string = f"name='{name}'" + (f" AND tags.`{IS_PROMPT}` = 'true'" if prompt else "")
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.registry.search_model_versions(filter_string=filter_string,
                                                       max_results=PAGE, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        # A version search answers no aliases on SQL and cloudtrack stores; the model has them.
        aliases: dict[int, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(int(number), []).append(alias)
        for v in found:
            if not v.aliases and int(v.version) in aliases:
                v.aliases = sorted(aliases[int(v.version)])
        return sorted(found, key=lambda v: int(v.version))

    def deleted_versions(self, model: RegisteredModel) -> list[int]:
        """The numbers of ``model``'s deleted versions, where the store still knows them (SQL
        and cloudtrack stores keep a row or tombstone so a number is never reused; a server's
        API and the FileStore say nothing, and only gaps below the highest live number show)."""
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL

        if self.endpoint.kind == "sql":
            from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

            with self.registry.ManagedSessionMaker() as session:
                rows = session.query(SqlModelVersion.version).filter(
                    SqlModelVersion.name == model.name,
                    SqlModelVersion.current_stage == STAGE_DELETED_INTERNAL).all()
            return sorted(int(r[0]) for r in rows)
        if self.endpoint.kind == "cloudtrack":
            record = self.registry._model_record(model.name)
            return sorted(int(r["version"]) for r in self.registry._version_records(record)
                          if r.get("current_stage") == STAGE_DELETED_INTERNAL)
        return []


def metric_history(store: Any, run_id: str, key: str) -> list[Metric]:
    """Every point of one metric of a run, from any MLflow tracking store."""
    # Without max_results every store answers the whole history; follow a page token should
    # one come back anyway.
    out: list[Metric] = []
    token = None
    while True:
        page = store.get_metric_history(run_id, key, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def is_prompt(model: RegisteredModel) -> bool:
    # ``RegisteredModel.tags`` hides the prompt tag; the entity still knows it.
    return bool(model._is_prompt())


def _id_order(exp: Experiment) -> tuple[int, Any]:
    return (0, int(exp.experiment_id)) if str(exp.experiment_id).isdigit() \
        else (1, exp.experiment_id)


def _takes_locations(store: Any) -> bool:
    import inspect

    try:
        return "locations" in inspect.signature(store.search_traces).parameters
    except (TypeError, ValueError):
        return False
