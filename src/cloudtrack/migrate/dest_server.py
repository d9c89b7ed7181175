"""Writing a migration into an MLflow tracking server (``http(s)://``), through its REST API.

A server picks run and logged-model ids and every creation time itself; the rest is written as
the source has it: names, users, start and end times, statuses, lifecycle stages, params, every
tag, every metric point (value, timestamp, step), datasets, model inputs and outputs, logged
models, and registered-model version numbers.  MLflow's own REST client carries the requests,
so its variables (``MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN``, ``MLFLOW_TRACKING_INSECURE_TLS``,
``MLFLOW_TRACKING_SERVER_CERT_PATH``) work as they always do.

Each copy carries its source's id (:data:`~cloudtrack.migrate.model.SOURCE_RUN_TAG`,
:data:`~cloudtrack.migrate.model.SOURCE_MODEL_TAG`): that is how the next migration finds it.
A copy interrupted anywhere must read back with a fingerprint its source does not have, so that
the next migration finishes it in place, sending only what is missing.  A server creates every
run ``RUNNING`` without an end time, and the copy's last writes give it its source's status and
end time (then delete it, if its source is deleted): a copy of a run that has ended differs
from its source until then.  A copy that could not differ that way — of a run still running,
or one taken up again by a later migration — and every logged model carry
:data:`INCOMPLETE_TAG` while they are written, removed by one of the last writes.

A server numbers a model's versions itself, one past the highest it ever gave (deleted ones
included).  Versions are therefore created in order, and a deleted number is taken by a
placeholder version, deleted once every number is in place.  Deleted numbers above the last live
version are invisible through the API: where there are such, the highest is kept in the model's
tag :data:`VERSIONS_TAG`, or the next migration would take them again.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlflow.entities import (
    DatasetInput,
    Experiment,
    ExperimentTag,
    LifecycleStage,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelParameter,
    LoggedModelTag,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelTag,
)
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_BATCH_LOG_REQUEST_SIZE,
    MAX_DATASETS_PER_BATCH,
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from cloudtrack.errors import CloudtrackError
from cloudtrack.migrate.destination import CopiedModel, CopiedRun, Destination, RunTarget
from cloudtrack.migrate.endpoints import Endpoint, EndpointError
from cloudtrack.migrate.model import (
    SOURCE_MODEL_TAG,
    SOURCE_RUN_TAG,
    ModelCopy,
    RunCopy,
    model_fingerprint,
    model_status,
    point_key,
    run_fingerprint,
)
from cloudtrack.migrate.rest import ServerRequests
from cloudtrack.migrate.source import IS_PROMPT, PAGE, Source, metric_history

log = logging.getLogger("cloudtrack.migrate")

#: On a run or logged model of the server while the migration writes it.
INCOMPLETE_TAG = "cloudtrack.copy_incomplete"
#: On a registered model: every version number up to this one is taken (live or deleted).
VERSIONS_TAG = "cloudtrack.versions_through"
#: On a version that only holds a deleted number until it is deleted itself.
PLACEHOLDER_TAG = "cloudtrack.placeholder_version"
#: The source of a placeholder version: any server accepts it (absolute, no host to reach).
PLACEHOLDER_SOURCE = "cloudtrack:/deleted-model-version"
#: The source MLflow's stores give prompt versions; the server accepts no other for prompts.
PROMPT_SOURCE = "prompt-template"
RUN_NAME_TAG = "mlflow.runName"

#: Tags of a source that are cloudtrack's own bookkeeping and never copied as they are.
_OWN_RUN_TAGS = frozenset({SOURCE_RUN_TAG, INCOMPLETE_TAG})
_OWN_MODEL_TAGS = frozenset({SOURCE_MODEL_TAG, INCOMPLETE_TAG})
_OWN_REGISTRY_TAGS = frozenset({VERSIONS_TAG, PLACEHOLDER_TAG})
#: Logged models per search request (the SQL store's default page).
MODEL_PAGE = 100
#: What one log_batch body may weigh: MLflow refuses more than 1 MB; leave room for the envelope.
BATCH_BYTES = MAX_BATCH_LOG_REQUEST_SIZE * 9 // 10

T = TypeVar("T")


class VersionNumberError(CloudtrackError):
    """A registered model's version numbers cannot be kept in the destination server."""


@dataclass
class _Existing:
    """What a copy already holds on the server, so that finishing it again sends the rest only."""

    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    points: set[tuple[str, int, int, str]] = field(default_factory=set)
    datasets: set[tuple[str, str]] = field(default_factory=set)
    model_inputs: set[str] = field(default_factory=set)
    model_outputs: set[tuple[str, int]] = field(default_factory=set)


class ServerDestination(Destination):
    """An MLflow tracking server, written through MLflow's REST stores."""

    kind = "server"
    keeps_ids = False

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self.tracking = endpoint.tracking
        self.registry = endpoint.registry
        if endpoint.server is None:
            raise ValueError(f"{endpoint.shown} is not an MLflow server")
        #: The server's gate and its pool-exhaustion retries (the stores use them already);
        #: what creates something retries through :meth:`ServerRequests.retried`.
        self.requests: ServerRequests = endpoint.server
        self._reader = Source(endpoint)
        # Runs this object created: nothing to look up before writing them.
        self._fresh: set[str] = set()
        #: Runs of the server carrying INCOMPLETE_TAG until finish_run removes it.
        self._marked: set[str] = set()
        # Deleted experiments of the destination, not restored (yet): nothing was written
        # into them.
        self._deleted: set[str] = set()
        self._lock = threading.Lock()

    # -- experiments ---------------------------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        return self._reader.experiments()

    def create_experiment(self, source: Experiment, experiment_id: str | None) -> Experiment:
        # The server picks the id (``experiment_id`` cannot be kept) and the artifact location.
        tags = [ExperimentTag(k, v) for k, v in _tag_dict(source.tags).items()]

        def create(attempt: int) -> str | None:
            if attempt and self.tracking.get_experiment_by_name(source.name) is not None:
                return None  # the failed attempt created it after all
            return self.tracking.create_experiment(source.name, None, tags)  # type: ignore[no-any-return]

        try:
            new_id = self.requests.retried(f"create_experiment({source.name!r})", create)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            new_id = None
        if new_id is None:
            # Created meanwhile, deleted there, or made by an attempt answered with an error:
            # an experiment of that name is the same one.
            existing = self.tracking.get_experiment_by_name(source.name)
            if existing is None:
                raise EndpointError(f"{self.endpoint.shown} says experiment {source.name!r} "
                                    "exists, and finds none of that name; migrate again")
            self.update_experiment(existing, source)
            new_id = existing.experiment_id
        return self.tracking.get_experiment(new_id)  # type: ignore[no-any-return]

    def update_experiment(self, dest: Experiment, source: Experiment) -> None:
        if dest.lifecycle_stage == LifecycleStage.DELETED:
            with self._lock:
                self._deleted.add(dest.experiment_id)
        have = _tag_dict(dest.tags)
        for key, value in _tag_dict(source.tags).items():
            if have.get(key) != value:
                self._writable(dest.experiment_id)
                self.tracking.set_experiment_tag(dest.experiment_id, ExperimentTag(key, value))

    def _writable(self, experiment_id: str) -> None:
        """Restore ``experiment_id`` if it is deleted, before the first write into it (a
        deleted experiment takes none; finish_experiment deletes it again if need be).  A
        re-run with nothing to write leaves it as it is."""
        with self._lock:
            if experiment_id in self._deleted:
                self.tracking.restore_experiment(experiment_id)
                self._deleted.discard(experiment_id)

    def finish_experiment(self, dest: Experiment, source: Experiment) -> None:
        stage = self.tracking.get_experiment(dest.experiment_id).lifecycle_stage
        if stage == source.lifecycle_stage:
            return
        if source.lifecycle_stage == LifecycleStage.DELETED:
            self.tracking.delete_experiment(dest.experiment_id)
        else:
            self.tracking.restore_experiment(dest.experiment_id)

    # -- runs ------------------------------------------------------------------------------------

    def copied_runs(self, experiment_id: str) -> dict[str, CopiedRun]:
        copies: dict[str, list[Run]] = {}
        token = None
        while True:
            page = self.tracking.search_runs([experiment_id], _has_tag(SOURCE_RUN_TAG),
                                             ViewType.ALL, max_results=PAGE, order_by=None,
                                             page_token=token)
            for run in page:
                copies.setdefault(run.data.tags[SOURCE_RUN_TAG], []).append(run)
            token = page.token
            if not token:
                break
        found = {}
        for source_id, runs in copies.items():
            run = self._one_copy(source_id, runs)
            found[source_id] = CopiedRun(source_id, run.info.run_id, run_fingerprint(run))
        return found

    def _one_copy(self, source_id: str, runs: list[Run]) -> Run:
        """The copy of ``source_id`` to keep when there are several — a create_run retried
        after its answer was lost, or two migrations at once; the others are retired (their
        source tag removed, then deleted), so that no search shows a run twice."""
        if len(runs) == 1:
            return runs[0]
        runs = sorted(runs, key=lambda r: (INCOMPLETE_TAG in r.data.tags, r.info.run_id))
        for extra in runs[1:]:
            self._writable(extra.info.experiment_id)
            log.warning("run %s has %d copies in %s; keeping %s, retiring %s", source_id,
                        len(runs), self.endpoint.shown, runs[0].info.run_id, extra.info.run_id)
            if extra.info.lifecycle_stage == LifecycleStage.DELETED:
                self.tracking.restore_run(extra.info.run_id)
            self.tracking.delete_tag(extra.info.run_id, SOURCE_RUN_TAG)
            self.tracking.delete_run(extra.info.run_id)
        return runs[0]

    def begin_run(self, copy: RunCopy, earlier: CopiedRun | None) -> RunTarget:
        info = copy.run.info
        self._writable(copy.experiment_id)
        if earlier is not None:
            run = self.tracking.get_run(earlier.run_id)
            if run.info.lifecycle_stage == LifecycleStage.DELETED:
                self.tracking.restore_run(earlier.run_id)  # a deleted run takes no writes
            # Marked again: until finish_run ends, this copy must not pass for a finished one.
            self.tracking.set_tag(earlier.run_id, RunTag(INCOMPLETE_TAG, "true"))
            self._marked.add(earlier.run_id)
            return RunTarget(earlier.run_id, run.info.artifact_uri)
        marked = _needs_marker(info)
        tags = [RunTag(SOURCE_RUN_TAG, info.run_id)]
        if marked:
            tags.append(RunTag(INCOMPLETE_TAG, "true"))

        def create(attempt: int) -> tuple[Run, bool]:
            if attempt:  # the failed attempt may have created the copy after all
                found = self._copies(copy.experiment_id, info.run_id)
                if found:
                    return self._one_copy(info.run_id, found), False
            return self.tracking.create_run(copy.experiment_id, info.user_id or "",
                                            info.start_time, tags, info.run_name or None), True

        run, fresh = self.requests.retried(f"create_run for run {info.run_id}", create)
        if fresh:
            self._fresh.add(run.info.run_id)
        if marked or INCOMPLETE_TAG in run.data.tags:
            self._marked.add(run.info.run_id)
        return RunTarget(run.info.run_id, run.info.artifact_uri)

    def _copies(self, experiment_id: str, source_run_id: str) -> list[Run]:
        """The runs of ``experiment_id`` copied from ``source_run_id``."""
        return list(self.tracking.search_runs(
            [experiment_id], f"tags.`{SOURCE_RUN_TAG}` = {_quote(source_run_id)}",
            ViewType.ALL, max_results=PAGE, order_by=None, page_token=None))

    def finish_run(self, copy: RunCopy, target: RunTarget) -> None:
        run_id = target.run_id
        if run_id in self._fresh:
            self._fresh.discard(run_id)
            have = _Existing()
        else:
            have = self._existing(run_id)
        data, info = copy.run.data, copy.run.info
        params = [Param(k, v) for k, v in data.params.items() if have.params.get(k) != v]
        # The name's tag goes with update_run_info below, which sets it: in a log_batch it
        # costs a SQL server four nested sessions (log_batch, its tags, set_tag,
        # update_run_info), and a few such batches at once take a pool of 15 connections.
        named = info.run_name or None
        tags = [RunTag(k, v) for k, v in data.tags.items()
                if k not in _OWN_RUN_TAGS and have.tags.get(k) != v
                and not (k == RUN_NAME_TAG and v == named)]
        models = _ModelIds(copy.model_ids, run_id)
        points = [Metric(m.key, m.value, m.timestamp, m.step, model_id=models.get(m.model_id),
                         dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
                  for m in copy.history if point_key(m) not in have.points]
        for batch_params, batch_tags, batch_metrics in log_batches(params, tags, points):
            self.tracking.log_batch(run_id, batch_metrics, batch_params, batch_tags)
        for key in sorted(set(have.tags) - set(data.tags) - _OWN_RUN_TAGS - {RUN_NAME_TAG}):
            self.tracking.delete_tag(run_id, key)  # removed from the source since the last copy
        self._log_inputs_and_outputs(copy, run_id, have, models)
        # The last writes: a copy interrupted before them differs from its source in the marker,
        # the status or end time, or the lifecycle stage.
        if run_id in self._marked:
            self.tracking.delete_tag(run_id, INCOMPLETE_TAG)
            self._marked.discard(run_id)
        self.tracking.update_run_info(run_id, RunStatus.from_string(info.status), info.end_time,
                                      info.run_name or None)
        if info.lifecycle_stage == LifecycleStage.DELETED:
            self.tracking.delete_run(run_id)

    def _existing(self, run_id: str) -> _Existing:
        run = self.tracking.get_run(run_id)
        points: set[tuple[str, int, int, str]] = set()
        for key in run.data.metrics:
            points.update(point_key(m) for m in metric_history(self.tracking, run_id, key))
        inputs, outputs = run.inputs, run.outputs
        return _Existing(
            params=run.data.params, tags=run.data.tags, points=points,
            datasets={(d.dataset.name, d.dataset.digest)
                      for d in (inputs.dataset_inputs if inputs else [])},
            model_inputs={m.model_id for m in (inputs.model_inputs if inputs else [])},
            model_outputs={(m.model_id, int(m.step))
                           for m in (outputs.model_outputs if outputs else [])})

    def _log_inputs_and_outputs(self, copy: RunCopy, run_id: str, have: _Existing,
                                models: _ModelIds) -> None:
        # The server keeps every model input and output it is sent, repeats included: a retry
        # sends what the run lacks, read again.
        def send(attempt: int) -> None:
            self._send_inputs_and_outputs(
                copy, run_id, self._existing_io(run_id) if attempt else have, models)

        self.requests.retried(f"inputs and outputs of run {run_id}", send)

    def _existing_io(self, run_id: str) -> _Existing:
        run = self.tracking.get_run(run_id)
        inputs, outputs = run.inputs, run.outputs
        return _Existing(
            datasets={(d.dataset.name, d.dataset.digest)
                      for d in (inputs.dataset_inputs if inputs else [])},
            model_inputs={m.model_id for m in (inputs.model_inputs if inputs else [])},
            model_outputs={(m.model_id, int(m.step))
                           for m in (outputs.model_outputs if outputs else [])})

    def _send_inputs_and_outputs(self, copy: RunCopy, run_id: str, have: _Existing,
                                 models: _ModelIds) -> None:
        inputs, outputs = copy.run.inputs, copy.run.outputs
        datasets = [d for d in (inputs.dataset_inputs if inputs else [])
                    if (d.dataset.name, d.dataset.digest) not in have.datasets]
        for chunk in chunks(datasets, MAX_DATASETS_PER_BATCH, _dataset_bytes):
            self.tracking.log_inputs(run_id, datasets=chunk)
        # The server keeps every model input and output it is sent, repeats included.
        model_inputs = [LoggedModelInput(mid) for mid in dict.fromkeys(
            models.get(m.model_id) for m in (inputs.model_inputs if inputs else []))
            if mid is not None and mid not in have.model_inputs]
        if model_inputs:
            self.tracking.log_inputs(run_id, models=model_inputs)
        model_outputs = []
        for out in (outputs.model_outputs if outputs else []):
            mid = models.get(out.model_id)
            if mid is not None and (mid, int(out.step)) not in have.model_outputs:
                have.model_outputs.add((mid, int(out.step)))
                model_outputs.append(LoggedModelOutput(mid, int(out.step)))
        if model_outputs:
            self.tracking.log_outputs(run_id, model_outputs)

    # -- logged models ---------------------------------------------------------------------------

    def copied_models(self, experiment_ids: Sequence[str]) -> dict[str, CopiedModel]:
        found: dict[str, CopiedModel] = {}
        for model in self._logged_models(experiment_ids, _has_tag(SOURCE_MODEL_TAG)):
            if INCOMPLETE_TAG not in model.tags:
                source_id = model.tags[SOURCE_MODEL_TAG]
                found.setdefault(source_id, CopiedModel(source_id, model.model_id,
                                                        model_fingerprint(model)))
        return found

    def write_logged_model(self, copy: ModelCopy, artifacts: Callable[[str], None]) -> str:
        source = copy.model
        self._writable(copy.experiment_id)
        tags = {k: v for k, v in source.tags.items() if k not in _OWN_MODEL_TAGS}

        def find_or_create(attempt: int) -> tuple[LoggedModel, bool]:
            # Looked for first every time: a copy interrupted before, outdated, or made by an
            # attempt that was answered with an error.
            earlier = sorted(self._logged_models(
                [copy.experiment_id], f"tags.`{SOURCE_MODEL_TAG}` = {_quote(source.model_id)}"),
                key=lambda m: (INCOMPLETE_TAG in m.tags, m.model_id))
            if earlier:
                return earlier[0], self._bring_up_to_date(earlier[0], source, tags)
            tags_out = {**tags, SOURCE_MODEL_TAG: source.model_id, INCOMPLETE_TAG: "true"}
            return self.tracking.create_logged_model(
                copy.experiment_id, source.name, copy.source_run_id,
                [LoggedModelTag(k, v) for k, v in tags_out.items()],
                [LoggedModelParameter(k, v) for k, v in source.params.items()],
                source.model_type), True

        model, written = self.requests.retried(f"logged model {source.model_id}", find_or_create)
        artifacts(model.artifact_location)
        if written:
            self.tracking.finalize_logged_model(model.model_id, source.status)
            self.tracking.delete_logged_model_tag(model.model_id, INCOMPLETE_TAG)
        return model.model_id  # type: ignore[no-any-return]

    def _bring_up_to_date(self, model: LoggedModel, source: LoggedModel,
                          tags: Mapping[str, str]) -> bool:
        """Make the copy ``model`` hold ``source``'s tags and params, marked unfinished until
        the caller sets its status; False, and nothing written, when it holds them already with
        the same status."""
        changed = [LoggedModelTag(k, v) for k, v in tags.items() if model.tags.get(k) != v]
        gone = sorted(set(model.tags) - set(tags) - _OWN_MODEL_TAGS)
        # A logged model's params are written once: a server refuses a new value for one.
        missing = [LoggedModelParameter(k, v) for k, v in source.params.items()
                   if k not in model.params]
        if not (changed or gone or missing or INCOMPLETE_TAG in model.tags
                or model_status(model.status) != model_status(source.status)):
            return False
        self.tracking.set_logged_model_tags(model.model_id,
                                            [LoggedModelTag(INCOMPLETE_TAG, "true"), *changed])
        for key in gone:  # removed from the source since the last copy
            self.tracking.delete_logged_model_tag(model.model_id, key)
        if missing:
            self.tracking.log_logged_model_params(model.model_id, missing)
        return True

    def _logged_models(self, experiment_ids: Sequence[str],
                       filter_string: str) -> list[LoggedModel]:
        if not experiment_ids:
            return []
        found: list[LoggedModel] = []
        token = None
        while True:
            page = self.tracking.search_logged_models(list(experiment_ids), filter_string,
                                                      max_results=MODEL_PAGE, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    # -- registry --------------------------------------------------------------------------------

    def registered_models(self) -> dict[str, tuple[RegisteredModel, list[ModelVersion]]]:
        return {m.name: (m, self._versions(m)) for m in self._reader.registered_models()}

    def _versions(self, model: RegisteredModel) -> list[ModelVersion]:
        # A prompt's versions answer only a search that names the prompt tag.
        filter_string = f"name={_quote(model.name)}" + (
            f" AND tags.`{IS_PROMPT}` = 'true'" if _is_prompt(model) else "")
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.registry.search_model_versions(filter_string=filter_string,
                                                       max_results=PAGE, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return sorted(found, key=lambda v: int(v.version))

    def write_registered_model(self, model: RegisteredModel, versions: Sequence[ModelVersion],
                               deleted: Sequence[int]) -> int:
        name = model.name
        current = self._registered_model(model)
        live = {int(v.version): v for v in self._versions(model)}
        settled = max([_int(_model_tags(current).get(VERSIONS_TAG)), *live], default=0)
        wanted = {int(v.version): v for v in versions}
        gone = {int(n) for n in deleted}
        top = max([*wanted, *gone], default=0)
        lost = sorted(n for n in wanted if n <= settled and n not in live)
        placeholders = {n for n, v in live.items() if PLACEHOLDER_TAG in _tag_dict(v.tags)}
        written = 0
        template = versions[0] if versions else None
        for number in range(settled + 1, top + 1):
            if number in wanted:
                created = self._new_version(name, number, functools.partial(
                    self._create_version, name, wanted[number]))
                written += 1
            else:  # deleted in the source (or a gap its listing did not account for)
                created = self._new_version(name, number, functools.partial(
                    self._create_placeholder, name, _is_prompt(model), template))
                placeholders.add(int(created.version))
            live[int(created.version)] = created
            if int(created.version) != number:
                raise VersionNumberError(
                    f"{self.endpoint.shown}: registered model {name!r} numbered a new version "
                    f"{created.version} where the source has version {number}: versions were "
                    "created or deleted there outside the migration. Delete the model in the "
                    "destination and migrate again to keep the source's numbers")
        if top > max([settled, *wanted]):
            # The highest numbers are deleted ones: nothing live will show they are taken.
            self.registry.set_registered_model_tag(name, RegisteredModelTag(VERSIONS_TAG, str(top)))
        # Deleted only now: until VERSIONS_TAG is set, live versions say which numbers are taken.
        for number in sorted(placeholders | (gone & set(live))):
            if number not in wanted:
                self.registry.delete_model_version(name, str(number))
        for number, want in sorted(wanted.items()):
            if number in live:
                self._update_version(name, want, live[number])
        self._set_aliases(model)
        if lost:
            raise VersionNumberError(
                f"{self.endpoint.shown}: registered model {name!r} has no version "
                f"{', '.join(map(str, lost))} and the server will not give those numbers again "
                "(they were deleted there); delete the model in the destination and migrate "
                "again to keep the source's numbers")
        return written

    def _registered_model(self, model: RegisteredModel) -> RegisteredModel:
        """The destination's copy of ``model``, created or brought up to date (description and
        tags)."""
        tags = {k: v for k, v in _model_tags(model).items() if k not in _OWN_REGISTRY_TAGS}
        try:
            current = self.registry.get_registered_model(model.name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

            def create(attempt: int) -> RegisteredModel:
                if attempt:  # the failed attempt may have created it after all
                    found = self._registered_or_none(model.name)
                    if found is not None:
                        return found
                return self.registry.create_registered_model(  # type: ignore[no-any-return]
                    model.name, [RegisteredModelTag(k, v) for k, v in tags.items()],
                    model.description or None)

            return self.requests.retried(f"create_registered_model({model.name!r})", create)
        if (current.description or "") != (model.description or ""):
            self.registry.update_registered_model(model.name, model.description or "")
        have = _model_tags(current)
        for key, value in tags.items():
            if have.get(key) != value:
                self.registry.set_registered_model_tag(model.name, RegisteredModelTag(key, value))
        return current  # type: ignore[no-any-return]

    def _registered_or_none(self, name: str) -> RegisteredModel | None:
        try:
            return self.registry.get_registered_model(name)  # type: ignore[no-any-return]
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None

    def _new_version(self, name: str, number: int,
                     create: Callable[[], ModelVersion]) -> ModelVersion:
        """Version ``number`` of ``name``, made by ``create``; retried while the server's pool
        is exhausted, after a look for the version a failed attempt may have made."""
        def attempt(n: int) -> ModelVersion:
            if n:
                try:
                    return self.registry.get_model_version(  # type: ignore[no-any-return]
                        name, str(number))
                except MlflowException as e:
                    if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
            return create()

        return self.requests.retried(f"version {number} of registered model {name!r}", attempt)

    def _create_version(self, name: str, want: ModelVersion) -> ModelVersion:
        tags = [ModelVersionTag(k, v) for k, v in _tag_dict(want.tags).items()
                if k not in _OWN_REGISTRY_TAGS]
        return self.registry.create_model_version(  # type: ignore[no-any-return]
            name, want.source, want.run_id or None, tags, want.run_link or None,
            want.description or None, model_id=getattr(want, "model_id", None) or None)

    def _create_placeholder(self, name: str, prompt: bool,
                            template: ModelVersion | None) -> ModelVersion:
        tags = [ModelVersionTag(PLACEHOLDER_TAG, "true")]
        if prompt:
            return self.registry.create_model_version(  # type: ignore[no-any-return]
                name, PROMPT_SOURCE, tags=[*tags, ModelVersionTag(IS_PROMPT, "true")])
        try:
            return self.registry.create_model_version(  # type: ignore[no-any-return]
                name, PLACEHOLDER_SOURCE, tags=tags)
        except MlflowException as e:
            # A server that admits only some sources (MLFLOW_CREATE_MODEL_VERSION_SOURCE_
            # VALIDATION_REGEX) admits its live versions' own.
            if e.error_code != "INVALID_PARAMETER_VALUE" or template is None:
                raise
            return self.registry.create_model_version(  # type: ignore[no-any-return]
                name, template.source, template.run_id or None, tags,
                model_id=getattr(template, "model_id", None) or None)

    def _update_version(self, name: str, want: ModelVersion, have: ModelVersion) -> None:
        version = str(have.version)
        if (have.description or "") != (want.description or ""):
            self.registry.update_model_version(name, version, want.description or "")
        current = _tag_dict(have.tags)
        for key, value in _tag_dict(want.tags).items():
            if key not in _OWN_REGISTRY_TAGS and current.get(key) != value:
                self.registry.set_model_version_tag(name, version, ModelVersionTag(key, value))
        if (have.current_stage or "None") != (want.current_stage or "None"):
            self.registry.transition_model_version_stage(name, version, want.current_stage,
                                                         archive_existing_versions=False)

    def _set_aliases(self, model: RegisteredModel) -> None:
        # Read again: deleting a version took its aliases with it.
        have = _aliases(self.registry.get_registered_model(model.name))
        want = _aliases(model)
        for alias, version in sorted(want.items()):
            if have.get(alias) != version:
                self.registry.set_registered_model_alias(model.name, alias, version)
        for alias in sorted(set(have) - set(want)):
            self.registry.delete_registered_model_alias(model.name, alias)


class _ModelIds:
    """Source logged-model ids to the destination's, for one run; ids the runner already
    mapped pass as they are, and an id with no copy is dropped (logged once)."""

    def __init__(self, model_ids: Mapping[str, str], run_id: str) -> None:
        self._map = model_ids
        self._mapped = set(model_ids.values())
        self._run_id = run_id
        self._unknown: set[str] = set()

    def get(self, model_id: str | None) -> str | None:
        if not model_id:
            return None
        if model_id in self._map:
            return self._map[model_id]
        if model_id in self._mapped:
            return model_id
        if model_id not in self._unknown:
            self._unknown.add(model_id)
            log.warning("run %s refers to logged model %s, which has no copy in the destination; "
                        "its metrics stay on the run and the reference is left out",
                        self._run_id, model_id)
        return None


# -- requests within MLflow's limits ----------------------------------------------------------

def log_batches(params: Sequence[Param], tags: Sequence[RunTag], metrics: Sequence[Metric],
                ) -> Iterator[tuple[list[Param], list[RunTag], list[Metric]]]:
    """``params``, ``tags`` and ``metrics`` in as few log_batch requests as MLflow admits: at
    most 100 params, 100 tags and 1,000 metrics, 1,000 in all, and a body under 1 MB."""
    limits = (MAX_PARAMS_TAGS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH)
    batch: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    size = count = 0
    entries: Iterable[tuple[int, Any, int]] = itertools.chain(
        ((0, p, _entry_bytes(p.key, p.value)) for p in params),
        ((1, t, _entry_bytes(t.key, t.value)) for t in tags),
        ((2, m, _metric_bytes(m)) for m in metrics))
    for kind, item, cost in entries:
        if count and (len(batch[kind]) >= limits[kind] or count >= MAX_ENTITIES_PER_BATCH
                      or size + cost > BATCH_BYTES):
            yield batch
            batch, size, count = ([], [], []), 0, 0
        batch[kind].append(item)
        size += cost
        count += 1
    if count:
        yield batch


def chunks(items: Iterable[T], limit: int, weight: Callable[[T], int]) -> Iterator[list[T]]:
    """``items`` in lists of at most ``limit`` and about :data:`BATCH_BYTES` (one heavier item
    goes alone)."""
    chunk: list[T] = []
    size = 0
    for item in items:
        cost = weight(item)
        if chunk and (len(chunk) >= limit or size + cost > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk


# MLflow's client sends indented JSON with non-ASCII escaped: these are upper bounds of what
# one entry adds to the body (the test checks them against MLflow's own serialisation).

def _entry_bytes(key: str, value: str) -> int:
    return 64 + len(json.dumps(key)) + len(json.dumps(value))


def _metric_bytes(m: Metric) -> int:
    extra = sum(40 + len(json.dumps(x)) for x in (m.model_id, m.dataset_name, m.dataset_digest)
                if x)
    return 200 + len(json.dumps(m.key)) + extra


def _dataset_bytes(d: DatasetInput) -> int:
    ds = d.dataset
    texts = [ds.name, ds.digest, ds.source_type, ds.source, ds.schema, ds.profile,
             *(t.key for t in d.tags), *(t.value for t in d.tags)]
    return 200 + 40 * len(d.tags) + sum(len(json.dumps(t)) for t in texts if t)


# -- small helpers --------------------------------------------------------------------------------

def _tag_dict(tags: Any) -> dict[str, str]:
    if isinstance(tags, dict):
        return dict(tags)
    return {t.key: t.value for t in tags or []}


def _model_tags(model: RegisteredModel) -> dict[str, str]:
    # RegisteredModel.tags hides the prompt tag; the registry needs it to tell prompts apart.
    tags = getattr(model, "_tags", None)
    return dict(tags) if isinstance(tags, dict) else _tag_dict(model.tags)


def _is_prompt(model: RegisteredModel) -> bool:
    return _model_tags(model).get(IS_PROMPT, "").lower() == "true"


def _aliases(model: RegisteredModel) -> dict[str, str]:
    aliases = model.aliases
    if isinstance(aliases, dict):
        return {k: str(v) for k, v in aliases.items()}
    return {a.alias: str(a.version) for a in aliases or []}


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _needs_marker(info: Any) -> bool:
    """Whether a copy of a run with ``info`` needs :data:`INCOMPLETE_TAG` to tell it unfinished:
    only when its source's status and end time are those of a run just created (``RUNNING``, no
    end time), which the copy's last writes would not change."""
    return bool(info.status == "RUNNING" and info.end_time is None)


def _has_tag(key: str) -> str:
    return f"tags.`{key}` LIKE '%'"
