"""MLflow's tracking ``AbstractStore`` over the blob layer: no server, no database.

The layout is in :mod:`cloudtrack.layout` and docs/format.md.  The rules that make it safe with
many writers and no server:

* every record that changes (experiment, run head, logged model) is rewritten only with a
  version precondition (read-modify-write with put-if-version, retried on conflict);
* names and numbers that must be unique are claimed with put-if-absent;
* metric points are appended as new immutable batch objects, never rewritten.

Logging calls are buffered by default and flushed in the background about once a second per
run, on ``end_run`` and at interpreter exit; with ``CLOUDTRACK_STRICT=true`` every logging call
is durable when it returns (one history batch PUT plus one conditional head PUT).
Reads made by this process see its own buffered writes: a read flushes that run first.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import gc
import gzip
import json
import logging
import math
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mlflow.entities import (
    Dataset,
    DatasetInput,
    Experiment,
    ExperimentTag,
    InputTag,
    LifecycleStage,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    NOT_IMPLEMENTED,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import (
    SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT,
    SEARCH_MAX_RESULTS_DEFAULT,
    SEARCH_MAX_RESULTS_THRESHOLD,
)
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS, MLFLOW_RUN_NAME, _get_run_name_from_tags
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.search_utils import (
    SearchExperimentsUtils,
    SearchLoggedModelsUtils,
    SearchUtils,
)
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_dataset_inputs,
    _validate_experiment_artifact_location_length,
    _validate_experiment_id,
    _validate_experiment_name,
    _validate_experiment_tag,
    _validate_logged_model_name,
    _validate_metric,
    _validate_param,
    _validate_param_keys_unique,
    _validate_run_id,
    _validate_tag,
    _validate_tag_name,
)

from cloudtrack import layout
from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.config import StoreConfig, resolve
from cloudtrack.errors import AlreadyExists, BlobNotFound, PreconditionFailed

log = logging.getLogger("cloudtrack.tracking")

#: Parallel GETs when a search or a history read must fetch many objects.
READ_CONCURRENCY = 32
FLUSH_INTERVAL = 1.0
#: Points a run head keeps before they move to an immutable history batch.
TAIL_MAX = 100
#: A search missing this many heads in its cache first reads the experiment's snapshot.
SNAPSHOT_MIN_MISSES = 64
#: A search that had to fetch this many heads rewrites the snapshot (in the background).
SNAPSHOT_REFRESH_MISSES = 256


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a search builds thousands of objects.

    A 10,000-run search allocates millions of small objects (the decoded snapshot, the Run
    entities); each allocation burst triggers full collections that scan them all again: a
    cold 10,000-run search of a local store took 2.9-3.5 s with them, 1.2-1.9 s without.  Nothing built here forms cycles worth collecting early.
    Re-entrant and thread-safe: the collector resumes when the last pause ends.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _dumps(obj: object) -> bytes:
    # NaN and ±inf stay as Python's json writes them (NaN, Infinity): MLflow keeps them.
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _not_found(message: str) -> MlflowException:
    return MlflowException(message, RESOURCE_DOES_NOT_EXIST)


class CorruptObject(MlflowException):
    """An object in the store is not what cloudtrack wrote there."""

    def __init__(self, uri: str, why: str) -> None:
        super().__init__(
            f"corrupt or foreign object {uri}: {why}. Other records are unaffected; remove or "
            "restore this object (or run `cloudtrack doctor`) to read it again.",
            INVALID_STATE,
        )


def _versioned_update(blobs: Blobs, key: str, change: Callable[[dict[str, Any]], dict[str, Any] | None],
                      *, known: tuple[dict[str, Any], str] | None = None,
                      missing: Callable[[], MlflowException] | None = None) -> tuple[dict[str, Any], str]:
    """Read-modify-write of one JSON record under a version precondition, retried on conflict.

    ``change`` gets a copy of the record and returns the new record (or None for "no change").
    ``known`` is a cached (record, version) to try first, saving the GET when nobody else wrote.
    """
    attempt = 0
    while True:
        if known is None:
            try:
                data, version = blobs.get_versioned(key)
            except BlobNotFound:
                if missing is not None:
                    raise missing() from None
                raise
            record = _parse(blobs, key, data)
        else:
            record, version = json.loads(json.dumps(known[0])), known[1]
            known = None
        new = change(record)
        if new is None:
            return record, version
        try:
            return new, blobs.put_if_version(key, _dumps(new), version)
        except PreconditionFailed:
            attempt += 1
            # Somebody else wrote between our read and write: back off a little and re-read.
            time.sleep(min(0.5, 0.005 * (2 ** min(attempt, 7))) * (0.5 + 0.5 * (attempt % 3)))
            continue


def _parse(blobs: Blobs, key: str, data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError as e:
        raise CorruptObject(blobs.object_uri(key), f"not JSON ({e})") from None
    if not isinstance(record, dict):
        raise CorruptObject(blobs.object_uri(key), "not a JSON object")
    return record


# -- records <-> MLflow entities -------------------------------------------------------------

def _experiment_entity(rec: Mapping[str, Any]) -> Experiment:
    return Experiment(
        experiment_id=str(rec["experiment_id"]),
        name=rec["name"],
        artifact_location=rec["artifact_location"],
        lifecycle_stage=rec["lifecycle_stage"],
        tags=[ExperimentTag(k, v) for k, v in rec.get("tags", {}).items()],
        creation_time=rec.get("creation_time"),
        last_update_time=rec.get("last_update_time"),
    )


def _metric_tuple(m: Metric) -> list[Any]:
    value = float(m.value)
    # MLflow's SQL stores (the reference) clamp ±inf to the largest finite double; NaN stays.
    if math.isinf(value):
        value = math.copysign(sys.float_info.max, value)
    return [m.key, value, int(m.timestamp), int(m.step), m.model_id, m.dataset_name,
            m.dataset_digest]


def _metric_from(t: list[Any], run_id: str | None) -> Metric:
    key, value, timestamp, step, model_id, dname, ddigest = t
    return Metric(key=key, value=float(value), timestamp=int(timestamp), step=int(step),
                  model_id=model_id, dataset_name=dname, dataset_digest=ddigest, run_id=run_id)


def _newer(a: list[Any], b: list[Any]) -> bool:
    """Is metric tuple ``a`` the latest value rather than ``b``?  MLflow's rule: the max of
    (step, timestamp, value), NaN counting as the smallest value."""
    def rank(t: list[Any]) -> tuple[int, int, float]:
        v = float(t[1])
        return int(t[3]), int(t[2]), -math.inf if math.isnan(v) else v
    return rank(a) >= rank(b)


def _dataset_input_from(d: Mapping[str, Any]) -> DatasetInput:
    ds = d["dataset"]
    return DatasetInput(
        dataset=Dataset(name=ds["name"], digest=ds["digest"], source_type=ds["source_type"],
                        source=ds["source"], schema=ds.get("schema"), profile=ds.get("profile")),
        tags=[InputTag(k, v) for k, v in d.get("tags", {}).items()],
    )


def _run_entity(head: Mapping[str, Any]) -> Run:
    info = head["info"]
    run_id = info["run_id"]
    run_info = RunInfo(
        run_id=run_id,
        experiment_id=str(info["experiment_id"]),
        user_id=info.get("user_id") or "",
        status=info["status"],
        start_time=info.get("start_time"),
        end_time=info.get("end_time"),
        lifecycle_stage=info["lifecycle_stage"],
        artifact_uri=info.get("artifact_uri"),
        run_name=info.get("run_name"),
    )
    metrics = [_metric_from(t, run_id) for t in head.get("metrics", {}).values()]
    params = [Param(k, v) for k, v in head.get("params", {}).items()]
    tags = [RunTag(k, v) for k, v in head.get("tags", {}).items()]
    inputs = RunInputs(
        dataset_inputs=[_dataset_input_from(d) for d in head.get("datasets", [])],
        model_inputs=[LoggedModelInput(model_id=m) for m in head.get("model_inputs", [])],
    )
    outputs = RunOutputs(model_outputs=[LoggedModelOutput(model_id=o["model_id"], step=o["step"])
                                        for o in head.get("model_outputs", [])])
    return Run(run_info, RunData(metrics=metrics, params=params, tags=tags), inputs, outputs)


def _check_active(head: Mapping[str, Any]) -> None:
    if head["info"]["lifecycle_stage"] != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The run {head['info']['run_id']} must be in 'active' lifecycle_stage.",
            INVALID_PARAMETER_VALUE,
        )


# -- buffered logging ------------------------------------------------------------------------

class _Pending:
    __slots__ = ("metrics", "params", "tags")

    def __init__(self) -> None:
        self.metrics: list[list[Any]] = []
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags)


class _Flusher:
    """Holds logged data per run and writes it in the background, once per interval."""

    def __init__(self, store: BlobTrackingStore, interval: float) -> None:
        self._store = weakref.ref(store)
        self.interval = interval
        self.lock = threading.Lock()
        self.pending: dict[str, _Pending] = {}
        self.wake = threading.Event()
        self.stopped = False
        self.thread: threading.Thread | None = None
        # One flush of a run at a time, so batches of one writer land in order.
        self.run_locks: dict[str, threading.Lock] = {}

    def add(self, run_id: str, metrics: list[list[Any]], params: dict[str, str],
            tags: dict[str, str]) -> None:
        with self.lock:
            p = self.pending.setdefault(run_id, _Pending())
            p.metrics.extend(metrics)
            p.params.update(params)
            p.tags.update(tags)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="cloudtrack-flush",
                                               daemon=True)
                self.thread.start()

    def peek(self, run_id: str) -> _Pending | None:
        with self.lock:
            return self.pending.get(run_id)

    def _take(self, run_id: str) -> _Pending | None:
        with self.lock:
            return self.pending.pop(run_id, None)

    def _put_back(self, run_id: str, p: _Pending) -> None:
        with self.lock:
            newer = self.pending.get(run_id)
            if newer is not None:
                p.metrics.extend(newer.metrics)
                p.params.update(newer.params)
                p.tags.update(newer.tags)
            self.pending[run_id] = p

    def _run_lock(self, run_id: str) -> threading.Lock:
        with self.lock:
            return self.run_locks.setdefault(run_id, threading.Lock())

    def flush(self, run_id: str | None = None, *, raise_errors: bool = True) -> None:
        store = self._store()
        if store is None:
            return
        with self.lock:
            run_ids = [run_id] if run_id is not None else list(self.pending)
        for rid in run_ids:
            with self._run_lock(rid):
                p = self._take(rid)
                if not p:
                    continue
                try:
                    store._apply(rid, p.metrics, p.params, p.tags)
                except MlflowException as e:
                    if e.error_code not in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
                        # Not a verdict on the data (a damaged head, say): keep it and retry.
                        self._put_back(rid, p)
                        if raise_errors:
                            raise
                        log.warning("flushing run %s failed; will retry", rid, exc_info=True)
                        continue
                    # The stored state refuses the data (a param changed, the run was deleted):
                    # it can never be written, so do not retry it forever.
                    if raise_errors:
                        raise
                    log.exception("dropping buffered data for run %s", rid)
                except Exception:
                    self._put_back(rid, p)
                    if raise_errors:
                        raise
                    log.warning("flushing run %s failed; will retry", rid, exc_info=True)

    def _loop(self) -> None:
        while not self.stopped:
            self.wake.wait(self.interval)
            self.wake.clear()
            self.flush(raise_errors=False)

    def close(self) -> None:
        self.stopped = True
        self.wake.set()
        self.flush(raise_errors=False)
        with self.lock:
            lost = sum(len(p.metrics) + len(p.params) + len(p.tags) for p in self.pending.values())
        if lost:
            log.error("cloudtrack could not write %d buffered values at exit", lost)


_FLUSHERS: weakref.WeakSet[_Flusher] = weakref.WeakSet()


@atexit.register
def _flush_all_at_exit() -> None:
    for f in list(_FLUSHERS):
        f.close()


# -- the store -------------------------------------------------------------------------------

class BlobTrackingStore(AbstractStore):
    """MLflow tracking store on a cloudtrack blob store (``s3://``, ``gs://``, ``wasbs://``,
    ``abfss://``, ``file:``)."""

    #: AbstractStore methods deliberately not supported, and why (see UNSUPPORTED_REASON).
    UNSUPPORTED: frozenset[str] = frozenset()  # filled in at the end of this module

    def __init__(self, store_uri: str, artifact_uri: str | None = None, *,
                 config: StoreConfig | None = None) -> None:
        super().__init__()
        self.config = config or resolve(store_uri)
        self.store_uri = self.config.display_uri.rstrip("/")
        self.blobs = open_blobs(self.config)
        root = artifact_uri or append_to_uri_path(self._root_uri(), layout.ARTIFACTS)
        self.artifact_root_uri = root.rstrip("/")
        self.strict = bool(self.config.get("strict", False))
        self._pool = concurrent.futures.ThreadPoolExecutor(READ_CONCURRENCY,
                                                           thread_name_prefix="cloudtrack-read")
        self._cache: dict[str, tuple[str, dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()
        self._run_exp: dict[str, str] = {}
        self._entities: dict[str, tuple[str, Run]] = {}
        self._snapshots_in_flight: set[str] = set()
        self._heads: dict[str, tuple[dict[str, Any], str]] = {}
        self._flusher = _Flusher(self, FLUSH_INTERVAL)
        _FLUSHERS.add(self._flusher)
        self._initialize()

    def _root_uri(self) -> str:
        if self.config.backend == "file":
            return "file://" + self.config.container
        return self.store_uri

    # -- store initialisation ------------------------------------------------------------

    def _initialize(self) -> None:
        if self.config.backend == "file":
            self.blobs.create_container()
        try:
            marker = _parse(self.blobs, layout.MARKER, self.blobs.get(layout.MARKER))
        except BlobNotFound:
            marker = {"format": layout.FORMAT, "version": layout.FORMAT_VERSION,
                      "created": get_current_time_millis()}
            self._create_default_experiment()
            try:
                self.blobs.put_if_absent(layout.MARKER, _dumps(marker))
            except AlreadyExists:
                pass
        if marker.get("format") != layout.FORMAT:
            raise CorruptObject(self.blobs.object_uri(layout.MARKER), "not a cloudtrack marker")
        if int(marker.get("version", 0)) > layout.FORMAT_VERSION:
            raise MlflowException(
                f"store {self.store_uri} uses cloudtrack format version {marker['version']}, "
                f"newer than this cloudtrack understands ({layout.FORMAT_VERSION}); upgrade "
                "cloudtrack (pip install -U cloudtrack)", INVALID_STATE)

    def _create_default_experiment(self) -> None:
        now = get_current_time_millis()
        rec = {
            "experiment_id": layout.DEFAULT_EXPERIMENT_ID,
            "name": Experiment.DEFAULT_EXPERIMENT_NAME,
            "artifact_location": append_to_uri_path(self.artifact_root_uri,
                                                    layout.DEFAULT_EXPERIMENT_ID),
            "lifecycle_stage": LifecycleStage.ACTIVE,
            "creation_time": now,
            "last_update_time": now,
            "tags": {},
        }
        try:
            self.blobs.put_if_absent(layout.experiment(layout.DEFAULT_EXPERIMENT_ID), _dumps(rec))
        except AlreadyExists:
            return
        try:
            self.blobs.put_if_absent(
                layout.experiment_name(Experiment.DEFAULT_EXPERIMENT_NAME),
                _dumps({"experiment_id": layout.DEFAULT_EXPERIMENT_ID}))
        except AlreadyExists:
            pass

    # -- cached reads --------------------------------------------------------------------

    def _read_many(self, infos: Iterable[tuple[str, str]]) -> dict[str, dict[str, Any] | Exception]:
        """GET every (key, version) not already cached at that version, in parallel."""
        out: dict[str, dict[str, Any] | Exception] = {}
        todo: list[str] = []
        with self._cache_lock:
            for key, version in infos:
                hit = self._cache.get(key)
                if hit is not None and hit[0] == version:
                    out[key] = hit[1]
                else:
                    todo.append(key)

        def fetch(key: str) -> tuple[str, str, dict[str, Any] | Exception]:
            try:
                data, version = self.blobs.get_versioned(key)
                return key, version, _parse(self.blobs, key, data)
            except Exception as e:  # reported per object: one bad object hides nothing else
                return key, "", e

        for key, version, rec in self._pool.map(fetch, todo):
            out[key] = rec
            if not isinstance(rec, Exception):
                with self._cache_lock:
                    self._cache[key] = (version, rec)
        return out

    # -- experiments ---------------------------------------------------------------------

    def _get_experiment_record(self, experiment_id: str) -> tuple[dict[str, Any], str]:
        _validate_experiment_id(experiment_id)
        key = layout.experiment(experiment_id)
        try:
            data, version = self.blobs.get_versioned(key)
        except BlobNotFound:
            raise _not_found(f"No Experiment with id={experiment_id} exists") from None
        return _parse(self.blobs, key, data), version

    def _next_experiment_id(self) -> int:
        files, _ = self.blobs.list_dir(layout.EXPERIMENTS)
        ids = [int(layout.id_from_key(f.key)) for f in files
               if layout.id_from_key(f.key).isdigit()]
        return max(ids, default=0) + 1

    def create_experiment(self, name: str, artifact_location: str | None = None,
                          tags: list[ExperimentTag] | None = None) -> str:
        _validate_experiment_name(name)
        if artifact_location:
            _validate_experiment_artifact_location_length(artifact_location)
        for tag in tags or []:
            _validate_experiment_tag(tag.key, tag.value)
        name_key = layout.experiment_name(name)
        if self.blobs.exists(name_key):
            raise MlflowException(f"Experiment(name={name}) already exists.",
                                  RESOURCE_ALREADY_EXISTS)
        now = get_current_time_millis()
        exp_id = self._next_experiment_id()
        while True:
            rec = {
                "experiment_id": str(exp_id),
                "name": name,
                "artifact_location": artifact_location
                or append_to_uri_path(self.artifact_root_uri, str(exp_id)),
                "lifecycle_stage": LifecycleStage.ACTIVE,
                "creation_time": now,
                "last_update_time": now,
                "tags": {t.key: t.value for t in tags or []},
            }
            try:
                self.blobs.put_if_absent(layout.experiment(str(exp_id)), _dumps(rec))
                break
            except AlreadyExists:
                exp_id += 1
        try:
            self.blobs.put_if_absent(name_key, _dumps({"experiment_id": str(exp_id)}))
        except AlreadyExists:
            # Another process claimed the name between our check and our claim: withdraw.
            self.blobs.delete(layout.experiment(str(exp_id)))
            raise MlflowException(f"Experiment(name={name}) already exists.",
                                  RESOURCE_ALREADY_EXISTS) from None
        return str(exp_id)

    def get_experiment(self, experiment_id: str) -> Experiment:
        experiment_id = layout.DEFAULT_EXPERIMENT_ID if experiment_id is None else str(experiment_id)
        return _experiment_entity(self._get_experiment_record(experiment_id)[0])

    def get_experiment_by_name(self, experiment_name: str) -> Experiment | None:
        try:
            claim = _parse(self.blobs, layout.experiment_name(experiment_name),
                           self.blobs.get(layout.experiment_name(experiment_name)))
        except BlobNotFound:
            return None
        try:
            exp = self.get_experiment(str(claim["experiment_id"]))
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return exp if exp.name == experiment_name else None

    def _all_experiments(self) -> list[Experiment]:
        files, _ = self.blobs.list_dir(layout.EXPERIMENTS)
        records = self._read_many((f.key, f.version) for f in files if f.key.endswith(".json"))
        out = []
        for key, rec in records.items():
            if isinstance(rec, Exception):
                if isinstance(rec, BlobNotFound):
                    continue  # withdrawn while we listed
                log.warning("skipping experiment record %s: %s", self.blobs.object_uri(key), rec)
                continue
            try:
                out.append(_experiment_entity(rec))
            except (KeyError, TypeError) as e:
                log.warning("skipping malformed experiment record %s: %r",
                            self.blobs.object_uri(key), e)
        return out

    def search_experiments(self, view_type: int = ViewType.ACTIVE_ONLY,
                           max_results: int = SEARCH_MAX_RESULTS_DEFAULT,
                           filter_string: str | None = None, order_by: list[str] | None = None,
                           page_token: str | None = None) -> PagedList[Experiment]:
        if not isinstance(max_results, int) or max_results < 1:
            raise MlflowException(
                f"Invalid value {max_results} for parameter 'max_results' supplied. It must be "
                "a positive integer", INVALID_PARAMETER_VALUE)
        if max_results > SEARCH_MAX_RESULTS_THRESHOLD:
            raise MlflowException(
                f"Invalid value {max_results} for parameter 'max_results' supplied. It must be at "
                f"most {SEARCH_MAX_RESULTS_THRESHOLD}", INVALID_PARAMETER_VALUE)
        experiments = [e for e in self._all_experiments()
                       if LifecycleStage.matches_view_type(view_type, e.lifecycle_stage)]
        filtered = SearchExperimentsUtils.filter(experiments, filter_string)
        ordered = SearchExperimentsUtils.sort(filtered,
                                              order_by or ["creation_time DESC", "experiment_id ASC"])
        page, token = SearchUtils.paginate(ordered, page_token, max_results)
        return PagedList(page, token)

    def _update_experiment(self, experiment_id: str,
                           change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        _validate_experiment_id(experiment_id)
        rec, _ = _versioned_update(
            self.blobs, layout.experiment(experiment_id), change,
            missing=lambda: _not_found(f"No Experiment with id={experiment_id} exists"))
        return rec

    def delete_experiment(self, experiment_id: str) -> None:
        experiment_id = str(experiment_id)
        if experiment_id == layout.DEFAULT_EXPERIMENT_ID:
            raise MlflowException(
                "Cannot delete the default experiment "
                f"'{layout.DEFAULT_EXPERIMENT_ID}'. This is an internally reserved experiment.",
                INVALID_PARAMETER_VALUE)

        def change(rec: dict[str, Any]) -> dict[str, Any]:
            if rec["lifecycle_stage"] != LifecycleStage.ACTIVE:
                raise _not_found(f"No Experiment with id={experiment_id} exists")
            rec["lifecycle_stage"] = LifecycleStage.DELETED
            rec["last_update_time"] = get_current_time_millis()
            return rec

        self._update_experiment(experiment_id, change)
        self._set_runs_lifecycle(experiment_id, LifecycleStage.ACTIVE, LifecycleStage.DELETED)

    def restore_experiment(self, experiment_id: str) -> None:
        experiment_id = str(experiment_id)

        def change(rec: dict[str, Any]) -> dict[str, Any]:
            if rec["lifecycle_stage"] != LifecycleStage.DELETED:
                raise _not_found(f"No Experiment with id={experiment_id} exists")
            rec["lifecycle_stage"] = LifecycleStage.ACTIVE
            rec["last_update_time"] = get_current_time_millis()
            return rec

        self._update_experiment(experiment_id, change)
        self._set_runs_lifecycle(experiment_id, LifecycleStage.DELETED, LifecycleStage.ACTIVE)

    def _set_runs_lifecycle(self, experiment_id: str, old: str, new: str) -> None:
        deleted_time = get_current_time_millis() if new == LifecycleStage.DELETED else None

        def one(key: str) -> None:
            def change(head: dict[str, Any]) -> dict[str, Any] | None:
                if head["info"]["lifecycle_stage"] != old:
                    return None
                head["info"]["lifecycle_stage"] = new
                head["info"]["deleted_time"] = deleted_time
                return head
            self._update_head_key(key, change)

        keys = [i.key for i in self.blobs.list(layout.heads(experiment_id))]
        list(self._pool.map(one, keys))

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        experiment_id = str(experiment_id)
        _validate_experiment_name(new_name)
        rec, _ = self._get_experiment_record(experiment_id)
        if rec["lifecycle_stage"] != LifecycleStage.ACTIVE:
            raise MlflowException("Cannot rename a non-active experiment.", INVALID_STATE)
        old_name = rec["name"]
        if old_name == new_name:
            return
        try:
            self.blobs.put_if_absent(layout.experiment_name(new_name),
                                     _dumps({"experiment_id": experiment_id}))
        except AlreadyExists:
            raise MlflowException(f"Experiment(name={new_name}) already exists.",
                                  BAD_REQUEST) from None

        def change(r: dict[str, Any]) -> dict[str, Any]:
            r["name"] = new_name
            r["last_update_time"] = get_current_time_millis()
            return r

        try:
            self._update_experiment(experiment_id, change)
        except Exception:
            self.blobs.delete(layout.experiment_name(new_name))
            raise
        self.blobs.delete(layout.experiment_name(old_name))

    def set_experiment_tag(self, experiment_id: str, tag: ExperimentTag) -> None:
        _validate_experiment_tag(tag.key, tag.value)

        def change(rec: dict[str, Any]) -> dict[str, Any]:
            if rec["lifecycle_stage"] != LifecycleStage.ACTIVE:
                raise MlflowException(
                    f"The experiment {experiment_id} must be in the 'active' state.\n"
                    f"Current state is {rec['lifecycle_stage']}.", INVALID_PARAMETER_VALUE)
            rec.setdefault("tags", {})[tag.key] = "" if tag.value is None else str(tag.value)
            return rec

        self._update_experiment(str(experiment_id), change)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        def change(rec: dict[str, Any]) -> dict[str, Any]:
            if rec["lifecycle_stage"] != LifecycleStage.ACTIVE:
                raise MlflowException(
                    f"The experiment {experiment_id} must be in the 'active' state.\n"
                    f"Current state is {rec['lifecycle_stage']}.", INVALID_PARAMETER_VALUE)
            if key not in rec.get("tags", {}):
                raise _not_found(f"No tag with name: {key} in experiment with id {experiment_id}")
            del rec["tags"][key]
            return rec

        self._update_experiment(str(experiment_id), change)

    # -- runs: locating and reading --------------------------------------------------------

    def _experiment_of(self, run_id: str) -> str:
        _validate_run_id(run_id)
        exp = self._run_exp.get(run_id)
        if exp is None:
            key = layout.run_index(run_id)
            try:
                rec = _parse(self.blobs, key, self.blobs.get(key))
            except BlobNotFound:
                raise _not_found(f"Run with id={run_id} not found") from None
            exp = str(rec["experiment_id"])
            self._run_exp[run_id] = exp  # the index never changes: cache it for good
        return exp

    def _load_head(self, run_id: str) -> tuple[dict[str, Any], str]:
        exp = self._experiment_of(run_id)
        key = layout.head(exp, run_id)
        try:
            data, version = self.blobs.get_versioned(key)
        except BlobNotFound:
            raise _not_found(f"Run with id={run_id} not found") from None
        head = _parse(self.blobs, key, data)
        self._heads[run_id] = (head, version)
        return head, version

    def _cached_head(self, run_id: str) -> tuple[dict[str, Any], str]:
        hit = self._heads.get(run_id)
        return hit if hit is not None else self._load_head(run_id)

    def _update_head_key(self, key: str, change: Callable[[dict[str, Any]], dict[str, Any] | None],
                         known: tuple[dict[str, Any], str] | None = None) -> dict[str, Any]:
        run_id = layout.id_from_key(key)
        try:
            head, version = _versioned_update(
                self.blobs, key, change, known=known,
                missing=lambda: _not_found(f"Run with id={run_id} not found"))
        except PreconditionFailed:
            raise
        self._heads[run_id] = (head, version)
        return head

    def _update_head(self, run_id: str,
                     change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        exp = self._experiment_of(run_id)
        return self._update_head_key(layout.head(exp, run_id), change,
                                     known=self._heads.get(run_id))

    def get_run(self, run_id: str) -> Run:
        _validate_run_id(run_id)
        self._flusher.flush(run_id)
        head, _ = self._load_head(run_id)
        return _run_entity(head)

    # -- runs: lifecycle ---------------------------------------------------------------------

    def create_run(self, experiment_id: str, user_id: str, start_time: int,
                   tags: list[RunTag], run_name: str | None) -> Run:
        experiment_id = layout.DEFAULT_EXPERIMENT_ID if experiment_id is None else str(experiment_id)
        experiment = self.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(
                f"The experiment {experiment_id} must be in the 'active' state.\n"
                f"Current state is {experiment.lifecycle_stage}.", INVALID_PARAMETER_VALUE)
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
        head = {
            "info": {
                "run_id": run_id,
                "run_name": run_name,
                "experiment_id": experiment_id,
                "user_id": user_id,
                "status": RunStatus.to_string(RunStatus.RUNNING),
                "start_time": start_time,
                "end_time": None,
                "lifecycle_stage": LifecycleStage.ACTIVE,
                "deleted_time": None,
                "artifact_uri": append_to_uri_path(experiment.artifact_location, run_id,
                                                   "artifacts"),
            },
            "params": {},
            "tags": {t.key: "" if t.value is None else str(t.value) for t in tags},
            "metrics": {},
        }
        self.blobs.put_if_absent(layout.run_index(run_id),
                                 _dumps({"experiment_id": experiment_id}))
        version = self.blobs.put_if_absent(layout.head(experiment_id, run_id), _dumps(head))
        self._run_exp[run_id] = experiment_id
        self._heads[run_id] = (head, version)
        return _run_entity(head)

    def update_run_info(self, run_id: str, run_status: int, end_time: int | None,
                        run_name: str | None) -> RunInfo:
        _validate_run_id(run_id)
        self._flusher.flush(run_id)

        def change(head: dict[str, Any]) -> dict[str, Any]:
            _check_active(head)
            info = head["info"]
            info["status"] = RunStatus.to_string(run_status)
            info["end_time"] = end_time
            if RunStatus.is_terminated(run_status):
                self._spill(run_id, head)  # finished runs keep small heads
            if run_name:
                info["run_name"] = run_name
                head["tags"][MLFLOW_RUN_NAME] = run_name
            return head

        return _run_entity(self._update_head(run_id, change)).info

    def delete_run(self, run_id: str) -> None:
        self._flusher.flush(run_id)

        def change(head: dict[str, Any]) -> dict[str, Any]:
            head["info"]["lifecycle_stage"] = LifecycleStage.DELETED
            head["info"]["deleted_time"] = get_current_time_millis()
            return head

        self._update_head(run_id, change)

    def restore_run(self, run_id: str) -> None:
        def change(head: dict[str, Any]) -> dict[str, Any]:
            head["info"]["lifecycle_stage"] = LifecycleStage.ACTIVE
            head["info"]["deleted_time"] = None
            return head

        self._update_head(run_id, change)

    # -- runs: logging ----------------------------------------------------------------------

    def log_metric(self, run_id: str, metric: Metric) -> None:
        _validate_metric(metric.key, metric.value, metric.timestamp, metric.step)
        self.log_batch(run_id, [metric], [], [])

    def log_param(self, run_id: str, param: Param) -> None:
        self.log_batch(run_id, [], [param], [])

    def set_tag(self, run_id: str, tag: RunTag) -> None:
        self.log_batch(run_id, [], [], [tag])

    def log_batch(self, run_id: str, metrics: list[Metric], params: list[Param],
                  tags: list[RunTag]) -> None:
        _validate_run_id(run_id)
        metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        head, _ = self._cached_head(run_id)
        _check_active(head)
        known = dict(head.get("params", {}))
        pending = self._flusher.peek(run_id)
        if pending is not None:
            known.update(pending.params)
        new_params: dict[str, str] = {}
        for p in params:
            value = "" if p.value is None else str(p.value)
            self._check_param(run_id, p.key, known.get(p.key), value)
            new_params[p.key] = value
        m_tuples = [_metric_tuple(m) for m in metrics]
        t_values = {t.key: "" if t.value is None else str(t.value) for t in tags}
        if self.strict:
            with self._flusher._run_lock(run_id):
                self._apply(run_id, m_tuples, new_params, t_values)
        else:
            self._flusher.add(run_id, m_tuples, new_params, t_values)

    @staticmethod
    def _check_param(run_id: str, key: str, old: str | None, new: str) -> None:
        if old is not None and old != new:
            raise MlflowException(
                f"Changing param values is not allowed. Param with key='{key}' was already "
                f"logged with value='{old}' for run ID='{run_id}'. Attempted logging new value "
                f"'{new}'.", INVALID_PARAMETER_VALUE)

    def _spill(self, run_id: str, head: dict[str, Any]) -> None:
        """Move the head's tail of recent points into an immutable history batch.

        Called inside a head update: the batch is written before the head that no longer
        holds those points, so a reader that reads the head first and lists history second
        sees every point at least once (duplicates are merged on read).
        """
        tail = head.get("tail") or []
        if tail:
            batch = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
            self.blobs.put(layout.history_batch(run_id, batch), _dumps({"metrics": tail}))
            head["tail"] = []

    def _apply(self, run_id: str, metrics: list[list[Any]], params: dict[str, str],
               tags: dict[str, str]) -> None:
        """Write one batch durably with one conditional head write.

        New points go to the head's tail with the latest values; every TAIL_MAX points the
        tail moves to a history batch.  So a strict logging call costs one request, and two
        when it fills the tail, whatever the run's history.
        """

        def change(head: dict[str, Any]) -> dict[str, Any]:
            _check_active(head)
            stored = head.setdefault("params", {})
            for k, v in params.items():
                self._check_param(run_id, k, stored.get(k), v)
                stored[k] = v
            head.setdefault("tags", {}).update(tags)
            if MLFLOW_RUN_NAME in tags:
                head["info"]["run_name"] = tags[MLFLOW_RUN_NAME]
            latest = head.setdefault("metrics", {})
            for t in metrics:
                cur = latest.get(t[0])
                if cur is None or _newer(t, cur):
                    latest[t[0]] = t
            tail = head.setdefault("tail", [])
            tail.extend(metrics)
            if len(tail) > TAIL_MAX:
                self._spill(run_id, head)
            return head

        self._update_head(run_id, change)
        model_metrics = [t for t in metrics if t[4]]
        if model_metrics:
            self._log_model_metrics(run_id, model_metrics)

    def delete_tag(self, run_id: str, key: str) -> None:
        self._flusher.flush(run_id)

        def change(head: dict[str, Any]) -> dict[str, Any]:
            _check_active(head)
            if key not in head.get("tags", {}):
                raise _not_found(f"No tag with name: {key} in run with id {run_id}")
            del head["tags"][key]
            return head

        self._update_head(run_id, change)

    def record_logged_model(self, run_id: str, mlflow_model: Any) -> None:
        from mlflow.models import Model

        if not isinstance(mlflow_model, Model):
            raise TypeError(
                f"Argument 'mlflow_model' should be mlflow.models.Model, got '{type(mlflow_model)}'")
        model_dict = mlflow_model.get_tags_dict()
        self._flusher.flush(run_id)

        def change(head: dict[str, Any]) -> dict[str, Any]:
            _check_active(head)
            previous = head["tags"].get(MLFLOW_LOGGED_MODELS)
            value = json.dumps((json.loads(previous) if previous else []) + [model_dict])
            _validate_tag(MLFLOW_LOGGED_MODELS, value)
            head["tags"][MLFLOW_LOGGED_MODELS] = value
            return head

        self._update_head(run_id, change)

    def log_inputs(self, run_id: str, datasets: list[DatasetInput] | None = None,
                   models: list[LoggedModelInput] | None = None) -> None:
        _validate_run_id(run_id)
        if datasets is not None:
            if not isinstance(datasets, list):
                raise TypeError(f"Argument 'datasets' should be a list, got '{type(datasets)}'")
            _validate_dataset_inputs(datasets)
        if not datasets and not models:
            self._cached_head(run_id)  # still an error for a missing run
            return
        self._flusher.flush(run_id)

        def change(head: dict[str, Any]) -> dict[str, Any]:
            _check_active(head)
            current = head.setdefault("datasets", [])
            for d in datasets or []:
                entry = {"dataset": dict(d.dataset), "tags": {t.key: t.value for t in d.tags}}
                same = [i for i, c in enumerate(current)
                        if (c["dataset"]["name"], c["dataset"]["digest"])
                        == (d.dataset.name, d.dataset.digest)]
                if same:
                    current[same[0]]["tags"].update(entry["tags"])
                else:
                    current.append(entry)
            model_inputs = head.setdefault("model_inputs", [])
            for m in models or []:
                if m.model_id not in model_inputs:
                    model_inputs.append(m.model_id)
            return head

        self._update_head(run_id, change)

    def log_outputs(self, run_id: str, models: list[LoggedModelOutput]) -> None:
        _validate_run_id(run_id)
        self._flusher.flush(run_id)

        def change(head: dict[str, Any]) -> dict[str, Any]:
            _check_active(head)
            outs = head.setdefault("model_outputs", [])
            for m in models or []:
                if not any(o["model_id"] == m.model_id for o in outs):
                    outs.append({"model_id": m.model_id, "step": m.step})
            return head

        self._update_head(run_id, change)

    # -- metric history -------------------------------------------------------------------

    def _history_points(self, run_id: str) -> list[list[Any]]:
        self._flusher.flush(run_id)
        # The head before the listing: a tail spilled in between is then in the listing.
        head, _ = self._load_head(run_id)
        infos = [(i.key, i.version) for i in self.blobs.list(layout.history(run_id))]
        batches = self._read_many(infos)
        points: list[list[Any]] = list(head.get("tail") or [])
        for key, _ in infos:
            rec = batches[key]
            if isinstance(rec, BlobNotFound):
                # History batches are immutable and never deleted: a listed batch that
                # answers 404 is an anomaly of the store, so look once more, then fail loudly
                # rather than return a history with a hole in it.
                rec = _parse(self.blobs, key, self.blobs.get(key))
            if isinstance(rec, Exception):
                raise rec
            metrics = rec.get("metrics")
            if not isinstance(metrics, list):
                raise CorruptObject(self.blobs.object_uri(key), "no 'metrics' list")
            points.extend(metrics)
        return points

    @staticmethod
    def _sorted_unique(points: Iterable[list[Any]]) -> list[list[Any]]:
        seen: set[tuple[Any, ...]] = set()
        out = []
        for t in points:
            # MLflow's SQL store keys a run's metric points by (key, timestamp, step, value):
            # the same point copied onto a logged model is still one point of the run.
            ident = (t[0], t[2], t[3], repr(float(t[1])))
            if ident not in seen:
                seen.add(ident)
                out.append(t)

        def order(t: list[Any]) -> tuple[int, int, float]:
            v = float(t[1])
            return int(t[2]), int(t[3]), math.inf if math.isnan(v) else v

        out.sort(key=order)
        return out

    def get_metric_history(self, run_id: str, metric_key: str, max_results: int | None = None,
                           page_token: str | None = None) -> PagedList[Metric]:
        _validate_run_id(run_id)
        points = [t for t in self._history_points(run_id) if t[0] == metric_key]
        metrics = [_metric_from(t, run_id) for t in self._sorted_unique(points)]
        if max_results is None:
            offset = SearchUtils.parse_start_offset_from_page_token(page_token)
            return PagedList(metrics[offset:], None)
        page, token = SearchUtils.paginate(metrics, page_token, max_results)
        return PagedList(page, token)

    def get_metric_history_bulk_interval_from_steps(self, run_id: str, metric_key: str,
                                                    steps: list[int], max_results: int) -> list[Any]:
        from mlflow.entities.metric import MetricWithRunId

        wanted = set(steps)
        points = [t for t in self._history_points(run_id)
                  if t[0] == metric_key and int(t[3]) in wanted]
        ordered = sorted(self._sorted_unique(points), key=lambda t: (int(t[3]), int(t[2])))
        return [MetricWithRunId(run_id=run_id, metric=_metric_from(t, run_id))
                for t in ordered[:max_results]]

    # -- search -------------------------------------------------------------------------

    def _uncached(self, infos: list[tuple[str, str]]) -> int:
        with self._cache_lock:
            return sum(1 for key, version in infos
                       if (hit := self._cache.get(key)) is None or hit[0] != version)

    def _load_snapshot(self, experiment_id: str) -> None:
        """Seed the cache from the experiment's head snapshot: one GET instead of thousands.

        Entries are only ever used when their version equals the one a fresh LIST reports, so
        a stale snapshot costs GETs, never correctness.
        """
        key = layout.head_snapshot(experiment_id)
        try:
            data = self.blobs.get(key)
            snap = json.loads(gzip.decompress(data))
            entries = snap["heads"]
        except BlobNotFound:
            return
        except Exception as e:  # a damaged snapshot is only a slower search
            log.warning("ignoring unreadable snapshot %s: %r", self.blobs.object_uri(key), e)
            return
        with self._cache_lock:
            for head_key, (version, rec) in entries.items():
                hit = self._cache.get(head_key)
                if hit is None or hit[0] != version:
                    self._cache[head_key] = (version, rec)

    def _write_snapshot(self, experiment_id: str, infos: list[tuple[str, str]]) -> None:
        with self._cache_lock:
            entries = {key: [version, hit[1]] for key, version in infos
                       if (hit := self._cache.get(key)) is not None and hit[0] == version}
        body = gzip.compress(_dumps({"heads": entries, "written": get_current_time_millis()}),
                             compresslevel=5)
        self.blobs.put(layout.head_snapshot(experiment_id), body)

    def _refresh_snapshot_later(self, experiment_id: str, infos: list[tuple[str, str]]) -> None:
        if experiment_id in self._snapshots_in_flight:
            return
        self._snapshots_in_flight.add(experiment_id)

        def work() -> None:
            try:
                self._write_snapshot(experiment_id, infos)
            except Exception:
                log.warning("could not refresh the head snapshot of experiment %s",
                            experiment_id, exc_info=True)
            finally:
                self._snapshots_in_flight.discard(experiment_id)

        threading.Thread(target=work, name="cloudtrack-snapshot", daemon=True).start()

    def _runs_of(self, experiment_id: str) -> list[Run]:
        infos = [(i.key, i.version) for i in self.blobs.list(layout.heads(experiment_id))]
        misses = self._uncached(infos)
        if misses >= SNAPSHOT_MIN_MISSES:
            self._load_snapshot(experiment_id)
            misses = self._uncached(infos)
        records = self._read_many(infos)
        if misses >= SNAPSHOT_REFRESH_MISSES:
            self._refresh_snapshot_later(experiment_id, infos)
        runs = []
        for key, version in infos:
            rec = records[key]
            if isinstance(rec, BlobNotFound):
                continue
            if isinstance(rec, Exception):
                log.warning("skipping run head %s: %s", self.blobs.object_uri(key), rec)
                continue
            hit = self._entities.get(key)
            if hit is not None and hit[0] == version:
                runs.append(hit[1])
                continue
            try:
                run = _run_entity(rec)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("skipping malformed run head %s: %r", self.blobs.object_uri(key), e)
                continue
            self._entities[key] = (version, run)
            runs.append(run)
        return runs

    def _search_runs(self, experiment_ids: list[str], filter_string: str | None,
                     run_view_type: int, max_results: int, order_by: list[str] | None,
                     page_token: str | None) -> tuple[list[Run], str | None]:
        if max_results > SEARCH_MAX_RESULTS_THRESHOLD:
            raise MlflowException(
                "Invalid value for request parameter max_results. It must be at "
                f"most {SEARCH_MAX_RESULTS_THRESHOLD}, but got value {max_results}",
                INVALID_PARAMETER_VALUE)
        self._flusher.flush()
        runs: list[Run] = []
        with _gc_paused():
            for exp_id in dict.fromkeys(str(e) for e in experiment_ids):
                _validate_experiment_id(exp_id)
                runs.extend(r for r in self._runs_of(exp_id) if LifecycleStage.matches_view_type(
                    run_view_type, r.info.lifecycle_stage))
            filtered = SearchUtils.filter(runs, filter_string)
            ordered = SearchUtils.sort(filtered, order_by)
            return SearchUtils.paginate(ordered, page_token, max_results)

    def _search_datasets(self, experiment_ids: list[str]) -> list[Any]:
        """The distinct (experiment, dataset name, digest, context) of the experiments' runs.

        Private in MLflow, yet ``mlflow server`` calls it for the UI's dataset filter
        (``experiments/search-datasets``); without it that request answers 500.  Like MLflow's
        SQL store: runs of every lifecycle stage, at most 1000 summaries.
        """
        from mlflow.entities.dataset_summary import _DatasetSummary
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        self._flusher.flush()
        found: dict[tuple[str, str, str, str | None], None] = {}
        for exp_id in dict.fromkeys(str(e) for e in experiment_ids):
            _validate_experiment_id(exp_id)
            for run in self._runs_of(exp_id):
                for d in (run.inputs.dataset_inputs if run.inputs else []):
                    context = next((t.value for t in d.tags if t.key == MLFLOW_DATASET_CONTEXT),
                                   None)
                    found.setdefault((exp_id, d.dataset.name, d.dataset.digest, context), None)
        return [_DatasetSummary(experiment_id=e, name=n, digest=d, context=c)
                for e, n, d, c in list(found)[:1000]]

    # -- traces: refused on write, so every query is truthfully empty ----------------------

    def search_traces(self, experiment_ids: list[str] | None = None, *args: Any,
                      **kwargs: Any) -> tuple[list[Any], str | None]:
        """No trace can be written to this store (start_trace and log_spans are refused), so
        there are none to find.  Answering empty keeps the UI's trace views quiet instead of
        retrying an error forever."""
        for exp_id in experiment_ids or []:
            self.get_experiment(str(exp_id))
        return [], None

    def query_trace_metrics(self, experiment_ids: list[str], *args: Any,
                            **kwargs: Any) -> PagedList[Any]:
        """Metrics over traces: empty, as there are no traces (see search_traces)."""
        for exp_id in experiment_ids or []:
            self.get_experiment(str(exp_id))
        return PagedList([], None)

    # -- logged models (MLflow 3) ---------------------------------------------------------

    def _model_experiment(self, model_id: str) -> str:
        key = layout.logged_model_index(model_id)
        if "/" in model_id or model_id in (".", ".."):
            raise _not_found(f"Logged model with ID '{model_id}' not found.")
        try:
            return str(_parse(self.blobs, key, self.blobs.get(key))["experiment_id"])
        except BlobNotFound:
            raise _not_found(f"Logged model with ID '{model_id}' not found.") from None

    def _model_entity(self, rec: Mapping[str, Any]) -> LoggedModel:
        return LoggedModel(
            experiment_id=str(rec["experiment_id"]),
            model_id=rec["model_id"],
            name=rec["name"],
            artifact_location=rec["artifact_location"],
            creation_timestamp=rec["creation_timestamp"],
            last_updated_timestamp=rec["last_updated_timestamp"],
            model_type=rec.get("model_type"),
            source_run_id=rec.get("source_run_id"),
            status=LoggedModelStatus(rec["status"]),
            status_message=rec.get("status_message"),
            tags=rec.get("tags", {}),
            params=rec.get("params", {}),
            metrics=[_metric_from(t[:7], t[7] if len(t) > 7 else None)
                     for t in rec.get("metrics", [])],
        )

    def create_logged_model(self, experiment_id: str = layout.DEFAULT_EXPERIMENT_ID,
                            name: str | None = None, source_run_id: str | None = None,
                            tags: list[LoggedModelTag] | None = None,
                            params: list[LoggedModelParameter] | None = None,
                            model_type: str | None = None) -> LoggedModel:
        _validate_logged_model_name(name)
        experiment = self.get_experiment(str(experiment_id))
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(
                f"The experiment {experiment_id} must be in the 'active' state.\n"
                f"Current state is {experiment.lifecycle_stage}.", INVALID_PARAMETER_VALUE)
        for p in params or []:
            _validate_param(p.key, p.value)
        for t in tags or []:
            _validate_tag_name(t.key)
        model_id = f"m-{uuid.uuid4().hex}"
        now = get_current_time_millis()
        rec = {
            "experiment_id": str(experiment_id),
            "model_id": model_id,
            "name": name or _generate_random_name(),
            "artifact_location": append_to_uri_path(experiment.artifact_location, "models",
                                                    model_id, "artifacts"),
            "creation_timestamp": now,
            "last_updated_timestamp": now,
            "model_type": model_type,
            "source_run_id": source_run_id,
            "status": LoggedModelStatus.PENDING.value,
            "status_message": None,
            "lifecycle_stage": LifecycleStage.ACTIVE,
            "tags": {t.key: str(t.value) for t in tags or []},
            "params": {p.key: str(p.value) for p in params or []},
            "metrics": [],
        }
        self.blobs.put_if_absent(layout.logged_model_index(model_id),
                                 _dumps({"experiment_id": str(experiment_id)}))
        self.blobs.put_if_absent(layout.logged_model(str(experiment_id), model_id), _dumps(rec))
        return self._model_entity(rec)

    def _update_model(self, model_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        exp = self._model_experiment(model_id)

        def guarded(rec: dict[str, Any]) -> dict[str, Any] | None:
            if rec.get("lifecycle_stage") == LifecycleStage.DELETED:
                raise _not_found(f"Logged model with ID '{model_id}' not found.")
            return change(rec)

        rec, _ = _versioned_update(
            self.blobs, layout.logged_model(exp, model_id), guarded,
            missing=lambda: _not_found(f"Logged model with ID '{model_id}' not found."))
        return rec

    def get_logged_model(self, model_id: str, allow_deleted: bool = False) -> LoggedModel:
        self._flusher.flush()  # buffered metrics may name this model
        exp = self._model_experiment(model_id)
        key = layout.logged_model(exp, model_id)
        try:
            rec = _parse(self.blobs, key, self.blobs.get(key))
        except BlobNotFound:
            raise _not_found(f"Logged model with ID '{model_id}' not found.") from None
        if rec.get("lifecycle_stage") == LifecycleStage.DELETED and not allow_deleted:
            raise _not_found(f"Logged model with ID '{model_id}' not found.")
        return self._model_entity(rec)

    def finalize_logged_model(self, model_id: str, status: LoggedModelStatus) -> LoggedModel:
        def change(rec: dict[str, Any]) -> dict[str, Any]:
            rec["status"] = (LoggedModelStatus.from_int(status) if isinstance(status, int)
                             else LoggedModelStatus(status)).value
            rec["last_updated_timestamp"] = get_current_time_millis()
            return rec

        return self._model_entity(self._update_model(model_id, change))

    def set_logged_model_tags(self, model_id: str, tags: list[LoggedModelTag]) -> None:
        for t in tags:
            _validate_tag_name(t.key)

        def change(rec: dict[str, Any]) -> dict[str, Any]:
            rec.setdefault("tags", {}).update({t.key: str(t.value) for t in tags})
            return rec

        self._update_model(model_id, change)

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        _validate_tag_name(key)

        def change(rec: dict[str, Any]) -> dict[str, Any]:
            if key not in rec.get("tags", {}):
                raise _not_found(f"No tag with key {key!r} found for model with ID {model_id!r}.")
            del rec["tags"][key]
            return rec

        self._update_model(model_id, change)

    def log_logged_model_params(self, model_id: str, params: list[LoggedModelParameter]) -> None:
        for p in params or []:
            _validate_param(p.key, p.value)

        def change(rec: dict[str, Any]) -> dict[str, Any]:
            rec.setdefault("params", {}).update({p.key: str(p.value) for p in params})
            return rec

        self._update_model(model_id, change)

    def delete_logged_model(self, model_id: str) -> None:
        def change(rec: dict[str, Any]) -> dict[str, Any]:
            rec["lifecycle_stage"] = LifecycleStage.DELETED
            rec["last_updated_timestamp"] = get_current_time_millis()
            return rec

        self._update_model(model_id, change)

    def _log_model_metrics(self, run_id: str, metrics: list[list[Any]]) -> None:
        by_model: dict[str, list[list[Any]]] = {}
        for t in metrics:
            by_model.setdefault(t[4], []).append([*t, run_id])
        for model_id, points in by_model.items():
            def change(rec: dict[str, Any], points: list[list[Any]] = points) -> dict[str, Any]:
                latest = {(m[0], m[5], m[6]): m for m in rec.get("metrics", [])}
                for p in points:
                    cur = latest.get((p[0], p[5], p[6]))
                    if cur is None or _newer(p, cur):
                        latest[(p[0], p[5], p[6])] = p
                rec["metrics"] = list(latest.values())
                return rec
            try:
                self._update_model(model_id, change)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("metric for unknown logged model %s of run %s kept on the run only",
                            model_id, run_id)

    def search_logged_models(self, experiment_ids: list[str], filter_string: str | None = None,
                             datasets: list[dict[str, Any]] | None = None,
                             max_results: int | None = None,
                             order_by: list[dict[str, Any]] | None = None,
                             page_token: str | None = None) -> PagedList[LoggedModel]:
        if datasets and not all(d.get("dataset_name") for d in datasets):
            raise MlflowException("`dataset_name` in the `datasets` clause must be specified.",
                                  INVALID_PARAMETER_VALUE)
        max_results = max_results or SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT
        self._flusher.flush()
        models: list[LoggedModel] = []
        for exp_id in dict.fromkeys(str(e) for e in experiment_ids):
            _validate_experiment_id(exp_id)
            infos = [(i.key, i.version) for i in self.blobs.list(layout.logged_models(exp_id))]
            for key, rec in self._read_many(infos).items():
                if isinstance(rec, Exception):
                    if not isinstance(rec, BlobNotFound):
                        log.warning("skipping logged model %s: %s", self.blobs.object_uri(key), rec)
                    continue
                if rec.get("lifecycle_stage") == LifecycleStage.DELETED:
                    continue
                models.append(self._model_entity(rec))
        filtered = SearchLoggedModelsUtils.filter_logged_models(models, filter_string, datasets)
        ordered = SearchLoggedModelsUtils.sort(filtered, order_by)
        page, token = SearchLoggedModelsUtils.paginate(ordered, page_token, max_results)
        return PagedList(page, token)

    # -- housekeeping -----------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered value now."""
        self._flusher.flush()

    def flush_async_logging(self) -> None:
        super().flush_async_logging()
        self._flusher.flush()

    def close(self) -> None:
        self._flusher.close()
        self._pool.shutdown(wait=False)
        self.blobs.close()


#: Methods of MLflow's AbstractStore this store deliberately does not implement.  Each raises
#: an MlflowException with NOT_IMPLEMENTED that names the store and what to use instead.
UNSUPPORTED_REASON = (
    "is not supported by cloudtrack's object-store tracking store ({uri}). cloudtrack stores "
    "experiments, runs, metrics, params, tags, datasets, logged models and artifacts; for "
    "traces, assessments, evaluation datasets, scorers, gateway and other server features use "
    "an MLflow server with a database backend."
)


def _make_unsupported(name: str) -> Callable[..., Any]:
    def method(self: BlobTrackingStore, *args: Any, **kwargs: Any) -> Any:
        raise MlflowException(f"{name} " + UNSUPPORTED_REASON.format(uri=self.store_uri),
                              NOT_IMPLEMENTED)
    method.__name__ = name
    method.__qualname__ = f"BlobTrackingStore.{name}"
    method.__doc__ = "Not supported: raises MlflowException(NOT_IMPLEMENTED)."
    return method


#: Base-class methods whose inherited implementation is correct here because it only calls
#: methods this store implements.
INHERITED = frozenset({
    "search_runs", "log_batch_async", "log_metric_async", "log_param_async", "set_tag_async",
    "end_async_logging", "shut_down_async_logging", "get_metric_history_bulk_interval",
    "filter_active_experiment_ids", "set_model_versions_tags",
})


def _install_unsupported() -> frozenset[str]:
    import inspect

    names = set()
    for name, _ in inspect.getmembers(AbstractStore, predicate=callable):
        if name.startswith("_") or name in INHERITED:
            continue
        if name in BlobTrackingStore.__dict__:
            continue
        setattr(BlobTrackingStore, name, _make_unsupported(name))
        names.add(name)
    return frozenset(names)


BlobTrackingStore.UNSUPPORTED = _install_unsupported()

_ = (INTERNAL_ERROR, Dataset)
