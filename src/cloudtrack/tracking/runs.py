"""Runs: created with their run index (``runs/<id>.json``, run -> experiment) and their head
(``heads/<exp>/<id>.json``); read and changed through the head (docs/format.md)."""

from __future__ import annotations

import copy
import logging
import uuid

from mlflow.entities import LifecycleStage, Run, RunInfo, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, _get_run_name_from_tags
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import _validate_tag

from cloudtrack.errors import CloudtrackError
from cloudtrack.store import build, entities, layout, records
from cloudtrack.store.records import Record
from cloudtrack.tracking.core import (
    StoreCore,
    check_active,
    check_experiment_active,
    experiment_id_of,
)
from cloudtrack.tracking.flusher import STORE_WIDE, Pending
from cloudtrack.tracking.logging import apply_info

log = logging.getLogger("cloudtrack.tracking")


def _status_string(run_status: int) -> str:
    try:
        return RunStatus.to_string(run_status)
    except Exception as e:  # RunStatus raises a bare Exception; MLflow's SQL store wraps it so
        raise MlflowException(str(e), INTERNAL_ERROR) from e


class RunsMixin(StoreCore):

    def get_run(self, run_id: str) -> Run:
        self._flusher.flush(run_id)
        head, _ = self._load_head(run_id)
        return entities.run(head)

    def create_run(self, experiment_id: str, user_id: str, start_time: int,
                   tags: list[RunTag], run_name: str | None) -> Run:
        experiment_id = (layout.DEFAULT_EXPERIMENT_ID if experiment_id is None
                         else experiment_id_of(experiment_id))
        experiment = self.get_experiment(experiment_id)
        check_experiment_active(experiment_id, experiment.lifecycle_stage)
        # What RunInfo refuses, refused before anything is written (MLflow's SQL store answers
        # INTERNAL_ERROR with RunInfo's words); a head without them would break every search.
        for field, value in (("user_id", user_id), ("start_time", start_time)):
            if value is None:
                raise MlflowException(f"{field} cannot be None", INTERNAL_ERROR)
        tags = list(tags or [])
        for tag in tags:
            _validate_tag(tag.key, tag.value)
        run_name_tag = _get_run_name_from_tags(tags)
        if run_name and run_name_tag and run_name != run_name_tag:
            raise MlflowException(
                "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
                f"different values (run_name='{run_name}', mlflow.runName='{run_name_tag}').",
                INVALID_PARAMETER_VALUE)
        run_name = run_name or run_name_tag or _generate_random_name()
        if not run_name_tag:
            tags.append(RunTag(MLFLOW_RUN_NAME, run_name))
        run_id = uuid.uuid4().hex
        info = build.run_info(
            run_id=run_id, run_name=run_name, experiment_id=experiment_id, user_id=user_id,
            status=RunStatus.to_string(RunStatus.RUNNING), start_time=start_time, end_time=None,
            artifact_uri=append_to_uri_path(experiment.artifact_location, run_id, "artifacts"))
        head = build.run_head(info, tags={t.key: t.value for t in tags})
        self.blobs.put_if_absent(layout.run_index(run_id),
                                 records.dumps(build.pointer(experiment_id)))
        version = self.blobs.put_if_absent(layout.head(experiment_id, run_id), records.dumps(head))
        self._run_exp[run_id] = experiment_id
        self._heads[run_id] = (head, version)
        return entities.run(head)

    def update_run_info(self, run_id: str, run_status: int | None, end_time: int | None,
                        run_name: str | None) -> RunInfo:
        """Change what is given: a None status or end time keeps the run's, as in MLflow's
        stores (``update_run_info(run_id, None, None, "new")`` only renames).

        The run's buffered data is written first.  In buffered mode a change that fails for
        a reason that concerns the store, not the change (unreachable, credentials,
        permissions) is kept with the run's data — written later, or kept in the journal at
        exit — and, as logging calls in that mode, does not raise once this process has read
        the run (``end_run`` at the end of a job whose network went down ends quietly, with
        one WARNING line); other failures raise."""
        info = {"status": _status_string(run_status) if run_status is not None else None,
                "end_time": end_time, "run_name": run_name or None}
        terminated = run_status is not None and RunStatus.is_terminated(run_status)

        def change(head: Record) -> Record:
            check_active(head)
            if terminated:
                self._spill(run_id, head)  # finished runs keep small heads
            apply_info(head, info)
            return head

        # Whether the user heard already that writing fails (then it is not said again).
        told = self._flusher.failing is not None or self._flusher.stopped
        with self._run_locks(run_id):
            try:
                self._flusher.flush(run_id)
                head = self._update_head(run_id, change)
            except CloudtrackError as e:
                if self.strict:
                    raise
                self._flusher.keep_failed(run_id, Pending(info=info), e)
                known = self._heads.get(run_id)
                if known is None or not isinstance(e, STORE_WIDE):
                    raise
                # Said once: the flusher's line says writing fails, the journal's at exit.
                log.log(logging.DEBUG if told else logging.WARNING,
                        "cloudtrack: could not change run %s on %s (%s); the change is kept "
                        "with its buffered data", run_id, self.store_uri,
                        getattr(e, "brief", None) or e)
                head = copy.deepcopy(known[0])
                apply_info(head, info)
        return entities.run(head).info

    def _set_run_lifecycle(self, run_id: str, stage: str) -> None:
        deleted_time = get_current_time_millis() if stage == LifecycleStage.DELETED else None

        def change(head: Record) -> Record:
            head["info"]["lifecycle_stage"] = stage
            head["info"]["deleted_time"] = deleted_time
            return head

        # The run's buffered data lands before its lifecycle changes, as the calls came.
        with self._run_locks(run_id):
            self._flusher.flush(run_id)
            self._update_head(run_id, change)

    def delete_run(self, run_id: str) -> None:
        self._set_run_lifecycle(run_id, LifecycleStage.DELETED)

    def restore_run(self, run_id: str) -> None:
        self._set_run_lifecycle(run_id, LifecycleStage.ACTIVE)
