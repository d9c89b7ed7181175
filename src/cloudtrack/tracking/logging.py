"""Logging into a run: params, metrics, tags, inputs, outputs, logged-model records.

Params, metrics and tags are validated at once; by default they then wait in the
:class:`~cloudtrack.tracking.flusher.Flusher`, with ``CLOUDTRACK_STRICT=true`` they are written
before the call returns.  Either way one write is one conditional PUT of the run's head: new
points ride in the head's tail, which moves to an immutable history batch every
:data:`TAIL_MAX` points (one more PUT), whatever the run's history.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlflow.entities import (
    DatasetInput,
    LifecycleStage,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS, MLFLOW_RUN_NAME
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_dataset_inputs,
    _validate_metric,
    _validate_param,
    _validate_param_keys_unique,
    _validate_run_id,
    _validate_tag,
)

from cloudtrack.store import build, records
from cloudtrack.store.cas import Change
from cloudtrack.store.records import Record
from cloudtrack.tracking.core import StoreCore, check_active, not_found
from cloudtrack.tracking.flusher import Pending

#: Points a run head keeps before they move to an immutable history batch.
TAIL_MAX = 100
#: One write may bring more points than TAIL_MAX (a log_batch, a buffered second of a fast
#: loop): they ride in the head, and beyond this many a second write moves them out at once.
TAIL_LIMIT = 10 * TAIL_MAX

log = logging.getLogger("cloudtrack.tracking")


def apply_info(head: Record, info: dict[str, Any]) -> None:
    """A run's status, end time and name as ``update_run_info`` changes them (``info`` holds
    only what is given: None keeps the run's, as in MLflow's stores)."""
    run_info = head["info"]
    if info.get("status") is not None:
        run_info["status"] = info["status"]
    if info.get("end_time") is not None:
        run_info["end_time"] = info["end_time"]
    if info.get("run_name"):
        run_info["run_name"] = info["run_name"]
        head.setdefault("tags", {})[MLFLOW_RUN_NAME] = info["run_name"]


def _check_param(run_id: str, key: str, old: str | None, new: str) -> None:
    """MLflow's rule: a param's value never changes."""
    if old is not None and old != new:
        raise MlflowException(
            f"Changing param values is not allowed. Param with key='{key}' was already "
            f"logged with value='{old}' for run ID='{run_id}'. Attempted logging new value "
            f"'{new}'.", INVALID_PARAMETER_VALUE)


class LoggingMixin(StoreCore):

    # The single-value calls validate as MLflow's stores do (their errors name ``key``, not
    # ``params[0].key``) and, unlike log_batch, answer RESOURCE_DOES_NOT_EXIST for a run id
    # that names no run.

    def log_metric(self, run_id: str, metric: Metric) -> None:
        _validate_metric(metric.key, metric.value, metric.timestamp, metric.step)
        self._log(run_id, [metric], [], [])

    def log_param(self, run_id: str, param: Param) -> None:
        _validate_param(param.key, param.value)
        self._log(run_id, [], [param], [])

    def set_tag(self, run_id: str, tag: RunTag) -> None:
        _validate_tag(tag.key, tag.value)
        self._log(run_id, [], [], [tag])

    def log_batch(self, run_id: str, metrics: list[Metric], params: list[Param],
                  tags: list[RunTag]) -> None:
        _validate_run_id(run_id)
        self._log(run_id, metrics, params, tags)

    def _log(self, run_id: str, metrics: list[Metric], params: list[Param],
             tags: list[RunTag]) -> None:
        metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        head, _ = self._cached_head(run_id)
        check_active(head)
        known = {**head.get("params", {}), **self._flusher.pending_params(run_id)}
        new_params: dict[str, str] = {}
        for p in params:
            value = build.text(p.value)
            _check_param(run_id, p.key, known.get(p.key), value)
            new_params[p.key] = value
        # A run name cannot be unset: MLflow's SQL store ignores an empty mlflow.runName.
        new_tags = {t.key: build.tag(t.value) for t in tags
                    if t.value or t.key != MLFLOW_RUN_NAME}
        pending = Pending([records.metric_tuple(m) for m in metrics], new_params, new_tags)
        if self.strict:
            with self._run_locks(run_id):
                self._write_pending(run_id, pending, strict=True)
        else:
            self._flusher.add(run_id, pending)

    def _write_pending(self, run_id: str, pending: Pending, strict: bool = False) -> None:
        """Write one run's batch durably with one conditional head write (two when the tail
        fills up), then copy points that name a logged model onto it.

        ``strict``: the caller waits for the answer, which is MLflow's (a deleted run or a
        changed param raise).  Otherwise the data was accepted earlier and is never dropped
        for what another process did since: it goes into a run deleted meanwhile (where
        ``restore_run`` finds it, as a store that wrote it at once would have), and a param
        another writer set to another value first is the only thing left out (an ERROR line
        names it; MLflow never changes a param).
        """
        metrics, params, tags, info = pending.metrics, pending.params, pending.tags, pending.info
        left_out: dict[str, tuple[str, str]] = {}
        deleted: list[bool] = []

        def change(head: Record) -> Record:
            if strict:
                check_active(head)
            left_out.clear()
            deleted[:] = [head["info"]["lifecycle_stage"] != LifecycleStage.ACTIVE]
            stored = head.setdefault("params", {})
            for k, v in params.items():
                old = stored.get(k)
                if old is not None and old != v and not strict:
                    left_out[k] = (old, v)
                    continue
                _check_param(run_id, k, old, v)
                stored[k] = v
            head.setdefault("tags", {}).update(tags)
            if MLFLOW_RUN_NAME in tags:
                head["info"]["run_name"] = tags[MLFLOW_RUN_NAME]
            if metrics:
                tail = head.setdefault("tail", [])
                if tail and len(tail) + len(metrics) > TAIL_MAX:
                    # The stored tail moves out first: its latest values are in the head
                    # already, so whatever a crash leaves behind, history is never ahead.
                    self._spill(run_id, head)
                head["tail"].extend(metrics)
                records.merge_latest(head.setdefault("metrics", {}), metrics)
            apply_info(head, info)
            return head

        head = self._update_head(run_id, change)
        if len(head.get("tail") or []) > TAIL_LIMIT:
            # One write brought more points than a head should carry: move them out now.
            self._update_head(run_id, self._spill_tail(run_id))
        for k, (old, new) in left_out.items():
            log.error("cloudtrack did not write param %s=%r of run %s: another writer set it "
                      "to %r first, and a param never changes", k, new, run_id, old)
        if deleted and deleted[0] and (metrics or params or tags):
            log.warning("cloudtrack wrote %d buffered values into run %s, which another "
                        "process deleted meanwhile (restore_run brings them back)",
                        len(pending), run_id)
        model_metrics = [t for t in metrics if t[4]]
        if model_metrics:
            self._log_model_metrics(run_id, model_metrics)

    def _spill_tail(self, run_id: str) -> Change:
        def change(head: Record) -> Record | None:
            if len(head.get("tail") or []) <= TAIL_MAX:
                return None
            self._spill(run_id, head)
            return head
        return change

    def _change_active_run(self, run_id: str, change: Change) -> None:
        """Write the run's buffered data, then change its head (an active run's only)."""
        def guarded(head: Record) -> Record | None:
            check_active(head)
            return change(head)

        with self._run_locks(run_id):
            self._flusher.flush(run_id)
            self._update_head(run_id, guarded)

    def delete_tag(self, run_id: str, key: str) -> None:
        def change(head: Record) -> Record:
            if not records.remove_entry(head, "tags", key):
                raise not_found(f"No tag with name: {key} in run with id {run_id}")
            return head

        self._change_active_run(run_id, change)

    def record_logged_model(self, run_id: str, mlflow_model: Any) -> None:
        from mlflow.models import Model

        if not isinstance(mlflow_model, Model):
            raise TypeError(
                f"Argument 'mlflow_model' should be mlflow.models.Model, got '{type(mlflow_model)}'")
        model_dict = mlflow_model.get_tags_dict()

        def change(head: Record) -> Record:
            previous = head["tags"].get(MLFLOW_LOGGED_MODELS)
            value = json.dumps((json.loads(previous) if previous else []) + [model_dict])
            _validate_tag(MLFLOW_LOGGED_MODELS, value)
            head["tags"][MLFLOW_LOGGED_MODELS] = value
            return head

        self._change_active_run(run_id, change)

    def log_inputs(self, run_id: str, datasets: list[DatasetInput] | None = None,
                   models: list[LoggedModelInput] | None = None) -> None:
        """Add inputs to the run.  A dataset is one input per (name, digest): the first time it
        is logged its tags are kept, later ones (in this call or another) are not, as in MLflow's
        SQL store."""
        _validate_run_id(run_id)
        if datasets is not None:
            if not isinstance(datasets, list):
                raise TypeError(f"Argument 'datasets' should be a list, got '{type(datasets)}'")
            _validate_dataset_inputs(datasets)
        if not datasets and not models:
            head, _ = self._cached_head(run_id)  # still an error for a missing or deleted run
            check_active(head)
            return

        def change(head: Record) -> Record:
            current = head.setdefault("datasets", [])
            logged = {(c["dataset"]["name"], c["dataset"]["digest"]) for c in current}
            for d in datasets or []:
                ident = (d.dataset.name, d.dataset.digest)
                if ident not in logged:
                    logged.add(ident)
                    current.append(build.dataset_input(dict(d.dataset),
                                                       {t.key: t.value for t in d.tags}))
            model_inputs = head.setdefault("model_inputs", [])
            for m in models or []:
                if m.model_id not in model_inputs:
                    model_inputs.append(m.model_id)
            return head

        self._change_active_run(run_id, change)

    def log_outputs(self, run_id: str, models: list[LoggedModelOutput]) -> None:
        def change(head: Record) -> Record:
            outs = head.setdefault("model_outputs", [])
            for m in models or []:
                if not any(o["model_id"] == m.model_id for o in outs):
                    outs.append(build.model_output(m.model_id, m.step))
            return head

        self._change_active_run(run_id, change)
