"""What ``mlflow gc`` calls on a tracking store: the deleted runs and logged models (with how
long they have been deleted), and hard deletion of a run, a logged model, an experiment.

MLflow's gc command checks that each thing is in the deleted stage, deletes its artifacts
through the artifact repository, then calls ``_hard_delete_run`` / ``_hard_delete_logged_model``
/ ``_hard_delete_experiment`` here.  Other processes may be logging meanwhile and there is no
transaction, so each method reads the record again right before it removes anything and
refuses what is no longer deleted; the removal order is :mod:`cloudtrack.store.purge`'s.

A hard-deleted experiment takes everything it holds with it, as MLflow's SQL store's cascade
does (runs whatever their stage, logged models, the pages), and its name becomes free: the
record is marked pending before its name claim goes, so from that moment on it is no
experiment (docs/format.md, "Hard deletion").  Unlike the SQL store, it also removes the
artifacts under its default location in the store (``<root>/artifacts/<id>/``), which would
otherwise be nobody's once its id is used again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path

from cloudtrack.errors import AlreadyExists, BlobNotFound, PreconditionFailed
from cloudtrack.mlflow_errors import translate_errors
from cloudtrack.store import build, claims, layout, purge, records
from cloudtrack.store.records import Record
from cloudtrack.tracking.core import experiment_id_of, not_found, run_not_found
from cloudtrack.tracking.experiments import ExperimentsMixin
from cloudtrack.tracking.logged_models import LoggedModelsMixin

if TYPE_CHECKING:
    from cloudtrack.blobs import Blobs

log = logging.getLogger("cloudtrack.tracking")


def _no_deleted_experiment(experiment_id: str) -> MlflowException:
    # MLflow's SQL store's words for an experiment that is not in the deleted stage.
    return not_found(f"No Experiment with id={experiment_id} exists")


def _older_than(stamp: Any, older_than: int, now: int) -> bool:
    """MLflow's SQL store's rule: deleted at or before ``now - older_than`` (no stamp: never)."""
    return isinstance(stamp, int) and stamp <= now - int(older_than or 0)


class HousekeepingMixin(ExperimentsMixin, LoggedModelsMixin):
    """The private methods ``mlflow gc`` looks for (``hasattr(store, "_hard_delete_run")``)."""

    # -- what is deleted -------------------------------------------------------------------

    def _heads_of(self, exp_id: str) -> dict[str, Record]:
        """head key -> head of every run of the experiment (pages used where they help)."""
        listing = [(i.key, i.version) for i in self.blobs.list_spread(layout.heads(exp_id),
                                                                      self._pool.map)]
        found, _, _ = self._read_paged(listing, layout.head_pages(exp_id))
        return {k: r for k, r in found.items() if not isinstance(r, Exception)}

    def _models_of(self, exp_id: str) -> dict[str, Record]:
        listing = [(i.key, i.version) for i in self.blobs.list(layout.logged_models(exp_id))]
        found, _, _ = self._read_paged(listing, layout.logged_model_pages(exp_id))
        return {k: r for k, r in found.items() if not isinstance(r, Exception)}

    def _experiment_ids(self) -> list[str]:
        return sorted((e.experiment_id for e in self._all_experiments()), key=int)

    @translate_errors
    def _get_deleted_runs(self, older_than: int = 0) -> list[str]:
        """Ids of the runs in the deleted stage, deleted ``older_than`` ms ago or earlier."""
        self._flusher.flush()
        now = get_current_time_millis()
        out: list[str] = []
        for exp_id in self._experiment_ids():
            for head in self._heads_of(exp_id).values():
                info = head.get("info") or {}
                if info.get("lifecycle_stage") == LifecycleStage.DELETED and \
                        _older_than(info.get("deleted_time"), older_than, now):
                    out.append(str(info["run_id"]))
        return out

    @translate_errors
    def _get_deleted_logged_models(self, older_than: int = 0) -> list[str]:
        """Ids of the logged models in the deleted stage, last changed ``older_than`` ms ago
        or earlier (MLflow's SQL store stamps a model's deletion as its last update)."""
        now = get_current_time_millis()
        out: list[str] = []
        for exp_id in self._experiment_ids():
            for rec in self._models_of(exp_id).values():
                if rec.get("lifecycle_stage") == LifecycleStage.DELETED and \
                        _older_than(rec.get("last_updated_timestamp"), older_than, now):
                    out.append(str(rec["model_id"]))
        return out

    # -- hard deletion ---------------------------------------------------------------------

    def _forget_run(self, run_id: str) -> None:
        self._run_exp.pop(run_id, None)
        self._heads.pop(run_id, None)

    @translate_errors
    def _hard_delete_run(self, run_id: str) -> None:
        """Remove a deleted run for good: its head, page entry, history and run index (its
        artifacts are gc's, through the artifact repository).  A run that is not in the
        deleted stage when its head is read again here is refused."""
        exp = self._experiment_of(run_id)
        self._flusher.flush(run_id)
        try:
            head = records.read(self.blobs, layout.head(exp, run_id))
        except BlobNotFound:
            raise run_not_found(run_id) from None
        if head["info"]["lifecycle_stage"] != LifecycleStage.DELETED:
            raise MlflowException(
                f"Run {run_id} is not in the deleted lifecycle stage (it was restored?); only "
                "deleted runs are permanently deleted", INVALID_PARAMETER_VALUE)
        self._page_writer.write()  # an entry of the run this process queued goes in first
        purge.purge_run(self.blobs, exp, run_id)
        self._forget_run(run_id)
        # The run's artifact folders, which gc emptied through MLflow's artifact repository
        # (on a local store MLflow's own: it leaves the run's folder behind).
        run_folder = f"{layout.ARTIFACTS}/{exp}/{run_id}"
        self.blobs.prune_empty_folders([f"{run_folder}/artifacts", run_folder])

    @translate_errors
    def _hard_delete_logged_model(self, model_id: str) -> None:
        """Remove a deleted logged model for good: its record, page entry and model index."""
        exp = self._model_experiment(model_id)
        try:
            rec = records.read(self.blobs, layout.logged_model(exp, model_id))
        except BlobNotFound:
            raise not_found(f"Logged model with ID '{model_id}' not found.") from None
        if rec.get("lifecycle_stage") != LifecycleStage.DELETED:
            raise MlflowException(
                f"Logged model {model_id} is not in the deleted lifecycle stage; only deleted "
                "logged models are permanently deleted", INVALID_PARAMETER_VALUE)
        self._page_writer.write()
        purge.purge_logged_model(self.blobs, exp, model_id)

    @translate_errors
    def _hard_delete_experiment(self, experiment_id: str) -> None:
        """Remove a deleted experiment and everything in it, then free its name."""
        exp_id = experiment_id_of(experiment_id)
        key = layout.experiment(exp_id)
        try:
            rec, _ = self._get_experiment_record(exp_id)
        except MlflowException:
            raise _no_deleted_experiment(exp_id) from None
        if rec.get("lifecycle_stage") != LifecycleStage.DELETED:
            raise _no_deleted_experiment(exp_id)
        self._flusher.flush_runs(rid for rid in self._flusher.pending_runs()
                                 if self._run_exp.get(rid) == exp_id)
        self._page_writer.write()  # entries this process queued land before the pages go
        purge_experiment_contents(self.blobs, exp_id, self._owned_artifacts(rec))
        for run_id in [r for r, e in self._run_exp.items() if e == exp_id]:
            self._forget_run(run_id)
        withdraw_experiment(self.blobs, exp_id, key)
        # Writing the pending mark queued the record for the experiment pages: write the
        # queue now, then take the record out of them.
        self._page_writer.write()
        purge.drop_page_entries(self.blobs, layout.experiment_pages(), [key])

    def _owned_artifacts(self, rec: Record) -> str | None:
        """The store's own folder of the experiment's artifacts (``artifacts/<id>/``) when its
        artifact location is the default one inside this store, else None."""
        default_root = append_to_uri_path(self._root_uri(), layout.ARTIFACTS).rstrip("/")
        exp_id = str(rec["experiment_id"])
        location = append_to_uri_path(default_root, exp_id)
        if self.artifact_root_uri != default_root or rec.get("artifact_location") != location:
            return None
        # Another experiment may have been given this folder (or one inside it) explicitly.
        for other in self._all_experiments():
            where = (other.artifact_location or "").rstrip("/")
            if other.experiment_id != exp_id and (where == location or
                                                  where.startswith(location + "/")):
                return None
        return f"{layout.ARTIFACTS}/{exp_id}/"


def purge_experiment_contents(blobs: Blobs, exp_id: str, artifacts: str | None) -> None:
    """Everything an experiment holds: runs (whatever their stage, as MLflow's SQL store's
    cascade), logged models, pages, the old snapshot, and ``artifacts`` (a folder) if given."""
    for info in list(blobs.list(layout.heads(exp_id))):
        purge.purge_run(blobs, exp_id, layout.id_from_key(info.key), pages_too=False)
    for info in list(blobs.list(layout.logged_models(exp_id))):
        purge.purge_logged_model(blobs, exp_id, layout.id_from_key(info.key), pages_too=False)
    purge.delete_all(blobs, layout.head_pages(exp_id))
    purge.delete_all(blobs, layout.logged_model_pages(exp_id))
    blobs.delete(layout.head_snapshot(exp_id))
    if artifacts:
        purge.delete_all(blobs, artifacts)


def withdraw_experiment(blobs: Blobs, exp_id: str, key: str) -> None:
    """The last steps of a hard deletion: mark the record pending (still visible: its claim
    points at it), delete the claim (from then on no reader sees it), delete the record.

    A restore that lands between the mark and the claim's delete settles the record; it is
    then seen again here, the claim is put back, and the deletion stops there."""
    try:
        rec, version = records.read_versioned(blobs, key)
    except BlobNotFound:
        return
    name = str(rec.get("name"))
    if rec.get("lifecycle_stage") != LifecycleStage.DELETED:
        raise _no_deleted_experiment(exp_id)
    marked = {**rec, claims.PENDING: True}
    try:
        version = blobs.put_if_version(key, records.dumps(marked), version)
    except (PreconditionFailed, BlobNotFound):
        raise MlflowException(
            f"Experiment {exp_id} changed while it was being permanently deleted (restored?); "
            "run the command again", INVALID_PARAMETER_VALUE) from None
    claim_key = layout.experiment_name(name)
    try:
        claim = records.read(blobs, claim_key)
    except BlobNotFound:
        claim = None
    ours = claim is not None and str(claim.get("experiment_id")) == exp_id
    if ours:
        blobs.delete(claim_key)
    try:
        _, now = records.read_versioned(blobs, key)
    except BlobNotFound:
        return
    if now != version:
        if ours:
            try:
                blobs.put_if_absent(claim_key, records.dumps(build.pointer(exp_id)))
            except AlreadyExists:
                log.warning("experiment %s was changed while it was being deleted, and its "
                            "name %r was claimed meanwhile", exp_id, name)
        raise MlflowException(
            f"Experiment {exp_id} changed while it was being permanently deleted (restored?); "
            "run the command again", INVALID_PARAMETER_VALUE)
    blobs.delete(key)
