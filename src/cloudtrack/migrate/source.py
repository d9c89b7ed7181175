"""Reading everything out of a source store, through MLflow's public store API, in pages.

Any MLflow tracking store works (cloudtrack's, SQL, FileStore, a server's REST store); two
have a faster way to the one thing that costs the most, metric histories: a SQL store answers
the points of many runs in one query, a cloudtrack store lists a run's history batches once
for all its metrics instead of once per metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlflow.entities import Experiment, LoggedModel, Metric, Run, ViewType
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from cloudtrack.errors import ConfigError
from cloudtrack.migrate.endpoints import Endpoint
from cloudtrack.migrate.sqlite_reader import ReaderError, SqliteReader

log = logging.getLogger("cloudtrack.migrate")

#: Runs per search page: one request of a server, one LIST page of a cloudtrack store.
PAGE = 1000
#: Runs whose histories a SQL source answers in one query.
SQL_HISTORY_BATCH = 200
#: A server's bulk history: one metric of up to 100 runs, 25,000 points at most per answer
#: (``mlflow.server.handlers.get_metric_history_bulk_handler``).
SERVER_HISTORY_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
SERVER_HISTORY_RUNS = 100
SERVER_HISTORY_POINTS = 25_000
#: Threads reading a server source; its requests wait for a slot of the server's gate
#: (:data:`cloudtrack.migrate.rest.SERVER_REQUESTS`), shared with every other user of it.
SERVER_READERS = 8
IS_PROMPT = "mlflow.prompt.is_prompt"

T = TypeVar("T")


class Source:
    """Everything in one source store, read in pages."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.tracking = endpoint.tracking
        self.registry = endpoint.registry
        #: False once a server refused its bulk history (an older or a proxied MLflow).
        self._bulk_history = True
        self._readers: ThreadPoolExecutor | None = None
        #: A sqlite source's history reader (:mod:`cloudtrack.migrate.sqlite_reader`), started
        #: at the first history read; False once it failed (then read in-process).
        self._sqlite: SqliteReader | bool | None = None

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        if isinstance(self._sqlite, SqliteReader):
            self._sqlite.close()

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items``, a server's requests in parallel."""
        if len(items) < 2:
            return [fn(i) for i in items]
        if self._readers is None:
            self._readers = ThreadPoolExecutor(SERVER_READERS,
                                               thread_name_prefix="cloudtrack-source")
        return list(self._readers.map(fn, items))

    @property
    def reads_in_bulk(self) -> bool:
        """Whether :meth:`complete`, :meth:`histories` and :meth:`deleted_times` answer many
        runs at once (SQL: one query each; a server: its requests in parallel, histories a
        metric of 100 runs at a time); elsewhere they read one run after the other, and a
        caller reads runs in parallel instead."""
        return self.endpoint.kind in ("sql", "server")

    # -- experiments and runs ----------------------------------------------------------------

    def experiments(self, selectors: Sequence[str] = ()) -> list[Experiment]:
        """Every experiment (deleted ones too), or those ``selectors`` name (by id or name)."""
        if selectors:  # one experiment named twice (by name and by id, say) is one
            found_by_id: dict[str, Experiment] = {}
            for selector in dict.fromkeys(selectors):
                exp = self._experiment(selector)
                found_by_id.setdefault(exp.experiment_id, exp)
            return list(found_by_id.values())
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
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise ConfigError(
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

    def light_runs(self, experiment_id: str) -> list[Run] | None:
        """The experiment's runs as a search returns them but for their inputs and outputs —
        enough for their fingerprints —, read straight from a SQL store's tables (a few plain
        queries instead of MLflow's ORM search, whose objects cost ~5 ms a run: most of a
        re-run over an unchanged source).  None where the store is not SQL."""
        if self.endpoint.kind != "sql":
            return None
        from mlflow.entities import Param, RunData, RunInfo, RunTag

        with self.tracking.ManagedSessionMaker() as session:
            rows = _select_in(session, "runs", ["run_uuid", "name", "experiment_id", "user_id",
                                                "status", "start_time", "end_time",
                                                "lifecycle_stage", "artifact_uri"],
                              "experiment_id", [int(experiment_id)])
            ids = [r[0] for r in rows]
            tags: dict[str, list[RunTag]] = {i: [] for i in ids}
            params: dict[str, list[Param]] = {i: [] for i in ids}
            latest: dict[str, list[Metric]] = {i: [] for i in ids}
            nan = math.nan
            for start in range(0, len(ids), SQL_HISTORY_BATCH):
                chunk = ids[start:start + SQL_HISTORY_BATCH]
                for key, value, run_id in _select_in(session, "tags", ["key", "value", "run_uuid"],
                                                     "run_uuid", chunk):
                    tags[run_id].append(RunTag(key, value))
                for key, value, run_id in _select_in(session, "params",
                                                     ["key", "value", "run_uuid"],
                                                     "run_uuid", chunk):
                    params[run_id].append(Param(key, value))
                for key, value, timestamp, step, is_nan, run_id in _select_in(
                        session, "latest_metrics",
                        ["key", "value", "timestamp", "step", "is_nan", "run_uuid"],
                        "run_uuid", chunk):
                    latest[run_id].append(Metric(key, nan if is_nan else value, timestamp,
                                                 step))
        runs = []
        for run_id, name, exp_id, user, status, start_time, end_time, stage, uri in rows:
            # As MLflow's SqlRun.to_mlflow_entity builds it.
            info = RunInfo(run_id=run_id, run_name=name, experiment_id=str(exp_id),
                           user_id=user, status=status, start_time=start_time,
                           end_time=end_time, lifecycle_stage=stage, artifact_uri=uri)
            run_tags = tags[run_id]
            if not name:
                tagged = next((t.value for t in run_tags if t.key == "mlflow.runName"), None)
                if tagged:
                    info._set_run_name(tagged)
            runs.append(Run(info, RunData(metrics=latest[run_id], params=params[run_id],
                                          tags=run_tags)))
        return runs

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
            return self._map(lambda r: self.tracking.get_run(r.info.run_id), runs)
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
        if self.endpoint.kind == "server" and self._bulk_history:
            return self._server_histories(runs)
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
        # Plain DBAPI rows: ORM objects cost ~0.1 ms a point, and SQLAlchemy's result rows
        # with their type processing still several times the query itself (of ~60 ms of CPU
        # per run of 500 points, 25 were here).
        from mlflow.store.tracking.dbmodels.models import SqlMetric

        table = SqlMetric.__table__
        # Where this MLflow's table links a point to a logged model and dataset.
        linked = [c for c in ("model_id", "dataset_name", "dataset_digest") if c in table.c]
        out: dict[str, list[Metric]] = {r.info.run_id: [] for r in runs}
        ids = list(out)
        nan = math.nan
        columns = ["key", "value", "timestamp", "step", "is_nan", "run_uuid", *linked]
        for start in range(0, len(ids), SQL_HISTORY_BATCH):
            chunk = ids[start:start + SQL_HISTORY_BATCH]
            rows = self._sqlite_select(table.name, columns, "run_uuid", chunk)
            if rows is None:
                with self.tracking.ManagedSessionMaker() as session:
                    rows = _select_in(session, table.name, columns, "run_uuid", chunk)
            if linked == ["model_id", "dataset_name", "dataset_digest"]:  # MLflow 3's table
                # Metric's own argument order: no keywords to build for each point.
                for key, value, timestamp, step, is_nan, run_id, model, d_name, d_digest in rows:
                    out[run_id].append(Metric(key, nan if is_nan else value, timestamp, step,
                                              model, d_name, d_digest, run_id))
            elif linked:
                for key, value, timestamp, step, is_nan, run_id, *link in rows:
                    out[run_id].append(Metric(key, nan if is_nan else value, timestamp, step,
                                              run_id=run_id, **dict(zip(linked, link,
                                                                        strict=True))))
            else:
                for key, value, timestamp, step, is_nan, run_id in rows:
                    out[run_id].append(Metric(key, nan if is_nan else value, timestamp, step,
                                              run_id=run_id))
        return out

    def _sqlite_select(self, table: str, columns: Sequence[str], column: str,
                       values: Sequence[Any]) -> list[tuple[Any, ...]] | None:
        """The rows from a sqlite source's reader process; None where there is none (another
        database, an in-memory one) or it failed: the caller reads in-process."""
        if self._sqlite is None:
            self._sqlite = False
            url = self.tracking.engine.url
            if url.get_backend_name() == "sqlite" and url.database \
                    and url.database != ":memory:" and not url.database.startswith("file:"):
                try:
                    self._sqlite = SqliteReader(url.database)
                except OSError as e:
                    log.debug("no sqlite reader for %s: %s", self.endpoint.shown, e)
        if not isinstance(self._sqlite, SqliteReader):
            return None
        sql, params = _select_sql(self.tracking.engine.dialect, table, columns, column, values)
        try:
            return self._sqlite.select(sql, params)
        except ReaderError as e:
            log.info("%s; reading in this process", e)
            self._sqlite.close()
            self._sqlite = False
            return None

    def _server_histories(self, runs: Sequence[Run]) -> dict[str, list[Metric]]:
        """A server's histories one metric of up to 100 runs per request (the bulk history the
        MLflow UI charts from) instead of one request per metric of each run.  A run whose
        answer may have been cut at the server's limit is read one metric at a time, and so is
        everything once a server refuses the bulk request."""
        out: dict[str, list[Metric]] = {r.info.run_id: [] for r in runs}
        by_key: dict[str, list[str]] = {}
        for run in runs:
            for key in run.data.metrics:
                by_key.setdefault(key, []).append(run.info.run_id)
        jobs = [(key, ids[i:i + SERVER_HISTORY_RUNS]) for key, ids in by_key.items()
                for i in range(0, len(ids), SERVER_HISTORY_RUNS)]
        try:
            answers = self._map(self._bulk_history_page, jobs)
        except MlflowException as e:
            log.info("%s answers no bulk metric history (%s); reading one metric of one run "
                     "at a time", self.endpoint.shown, e.message)
            self._bulk_history = False
            return self.histories(runs)
        retry: list[tuple[str, str]] = []
        for (key, ids), points in zip(jobs, answers, strict=True):
            if points is None:
                retry.extend((run_id, key) for run_id in ids)
                continue
            for m in points:
                out[str(m.run_id)].append(m)
            # A run that has the metric has a point of it: any answered without is read alone.
            answered = {m.run_id for m in points}
            retry.extend((run_id, key) for run_id in ids if run_id not in answered)
        for (run_id, _), points in zip(retry, self._map(
                lambda job: metric_history(self.tracking, *job), retry), strict=True):
            out[run_id].extend(points)
        return out

    def _bulk_history_page(self, job: tuple[str, list[str]]) -> list[Metric] | None:
        """One metric of some runs from a server's bulk history; None when the answer may be
        cut at the server's limit."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        key, run_ids = job

        def ask() -> Any:
            response = http_request(self.tracking.get_host_creds(), SERVER_HISTORY_PATH, "GET",
                                    params={"run_id": run_ids, "metric_key": key,
                                            "max_results": SERVER_HISTORY_POINTS})
            verify_rest_response(response, SERVER_HISTORY_PATH)
            return response.json()

        server = self.endpoint.server
        answer = server.one(f"metric {key!r} of {len(run_ids)} runs", ask) if server else ask()
        found = answer.get("metrics") or []
        if len(found) >= SERVER_HISTORY_POINTS:
            return None
        wanted = set(run_ids)
        return [Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m.get("step") or 0),
                       run_id=m["run_id"]) for m in found if m.get("run_id") in wanted]

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


def _select_in(session: Any, table: str, columns: Sequence[str], column: str,
               values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """``SELECT columns FROM table WHERE column IN values`` on the session's DBAPI connection
    (plain tuples: SQLAlchemy's result rows cost several times the query)."""
    connection = session.connection()
    sql, params = _select_sql(connection.dialect, table, columns, column, values)
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _select_sql(dialect: Any, table: str, columns: Sequence[str], column: str,
                values: Sequence[Any]) -> tuple[str, Any]:
    """``SELECT columns FROM table WHERE column IN values`` for ``dialect``: names quoted and
    placeholders written as it wants them (``key`` is a reserved word in MySQL)."""
    quote = dialect.identifier_preparer.quote
    style = dialect.paramstyle
    if style == "qmark":
        marks, params = ["?"] * len(values), list(values)
    elif style in ("format", "pyformat"):
        marks, params = ["%s"] * len(values), list(values)
    elif style == "numeric":
        marks, params = [f":{i + 1}" for i in range(len(values))], list(values)
    elif style == "numeric_dollar":
        marks, params = [f"${i + 1}" for i in range(len(values))], list(values)
    else:  # named
        marks = [f":p{i}" for i in range(len(values))]
        params = {f"p{i}": v for i, v in enumerate(values)}  # type: ignore[assignment]
    sql = (f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} "
           f"WHERE {quote(column)} IN ({', '.join(marks)})")
    return sql, params


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
