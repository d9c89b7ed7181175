"""Logging into a run: params, metrics, tags, inputs, outputs, logged-model records.

Params, metrics and tags are validated at once; by default they then wait in the
:class:`~cloudtrack.tracking.flusher.Flusher`, with ``CLOUDTRACK_STRICT=true`` they are written
before the call returns.  Either way one write is one conditional PUT of the run's head: new
points ride in the head's tail, which moves to an immutable history batch every
:data:`TAIL_MAX` points (one more PUT), whatever the run's history.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.entities import DatasetInput, LoggedModelInput, LoggedModelOutput, Metric, Param, RunTag
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
                self._write_pending(run_id, pending)
        else:
            self._flusher.add(run_id, pending)

    def _write_pending(self, run_id: str, pending: Pending) -> None:
        """Write one run's batch durably with one conditional head write (two when the tail
        fills up), then copy points that name a logged model onto it."""
        metrics, params, tags = pending.metrics, pending.params, pending.tags

        def change(head: Record) -> Record:
            check_active(head)
            stored = head.setdefault("params", {})
            for k, v in params.items():
                _check_param(run_id, k, stored.get(k), v)
                stored[k] = v
            head.setdefault("tags", {}).update(tags)
            if MLFLOW_RUN_NAME in tags:
                head["info"]["run_name"] = tags[MLFLOW_RUN_NAME]
            records.merge_latest(head.setdefault("metrics", {}), metrics)
            tail = head.setdefault("tail", [])
            tail.extend(metrics)
            if len(tail) > TAIL_MAX:
                self._spill(run_id, head)
            return head

        self._update_head(run_id, change)
        model_metrics = [t for t in metrics if t[4]]
        if model_metrics:
            self._log_model_metrics(run_id, model_metrics)

    def _change_active_run(self, run_id: str, change: Change) -> None:
        """Write the run's buffered data, then change its head (an active run's only)."""
        self._flusher.flush(run_id)

        def guarded(head: Record) -> Record | None:
            check_active(head)
            return change(head)

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
