"""What a migration copies and what it reports: the run copy handed to a destination, the
fingerprints that tell a finished copy (of a run, of a logged model) from a missing or outdated
one, and the report.

Nothing here talks to a store.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import LoggedModel, LoggedModelStatus, Metric, Run

#: The tag a copy in an MLflow server carries: the id of the run it was copied from (a server
#: chooses its own run ids).  Never part of a fingerprint.
SOURCE_RUN_TAG = "cloudtrack.source_run_id"
#: The same for a logged model copied into a server.
SOURCE_MODEL_TAG = "cloudtrack.source_model_id"
#: Tags cloudtrack writes on copies; a fingerprint leaves them out.
MIGRATION_TAGS = frozenset({SOURCE_RUN_TAG, SOURCE_MODEL_TAG})

#: What MLflow's SQL stores and cloudtrack store for ±inf (the largest finite double).
_MAX = sys.float_info.max


def stored_value(value: float) -> float:
    """A metric value as a SQL or cloudtrack store keeps it: ±inf clamped, NaN as NaN."""
    value = float(value)
    if math.isinf(value):
        return math.copysign(_MAX, value)
    return value


def _value_key(value: float) -> str:
    value = stored_value(value)
    return "nan" if math.isnan(value) else repr(value)


def point_key(m: Metric) -> tuple[str, int, int, str]:
    """A metric point's identity, as MLflow's SQL stores key it: (key, timestamp, step, value)."""
    return (m.key, int(m.timestamp), int(m.step), _value_key(m.value))


def run_fingerprint(run: Run) -> str:
    """A digest of what a search returns for a run, whatever its id.

    Two stores hold the same run when their fingerprints agree: status, times, lifecycle
    stage, name, user, params, tags (but cloudtrack's migration tags) and the latest value of
    each metric.  A run that grew (new points, tags, a new status) has a new fingerprint.
    """
    info, data = run.info, run.data
    payload = {
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "lifecycle_stage": info.lifecycle_stage,
        "run_name": info.run_name,
        "user_id": info.user_id or "",
        "params": sorted(data.params.items()),
        "tags": sorted((k, v) for k, v in data.tags.items() if k not in MIGRATION_TAGS),
        "metrics": sorted([k, _value_key(m.value), int(m.timestamp), int(m.step)]
                          for k, m in _latest(data).items()),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def model_fingerprint(model: LoggedModel) -> str:
    """A digest of what a logged model holds, whatever its id.

    Name, type, status, params, tags (but cloudtrack's migration tags) and metrics (key, value,
    step, timestamp, dataset; not the run, whose id a server chooses).  A model whose tags,
    status, params or metrics changed has a new fingerprint.  Times and the artifact location
    are left out (a server sets its own), and so is the status message (its API writes none).
    """
    payload = {
        "name": model.name,
        "model_type": model.model_type or "",
        "status": model_status(model.status),
        "params": sorted((model.params or {}).items()),
        "tags": sorted((k, v) for k, v in (model.tags or {}).items() if k not in MIGRATION_TAGS),
        "metrics": sorted({(m.key, _value_key(m.value), int(m.step), int(m.timestamp),
                            m.dataset_name or "", m.dataset_digest or "")
                           for m in model.metrics or []}),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def model_status(status: Any) -> str:
    """A logged model's status as text (``READY`` …), whichever form a store gives it in."""
    if isinstance(status, int) and not isinstance(status, LoggedModelStatus):
        return LoggedModelStatus.from_int(status).value
    return str(status.value if isinstance(status, LoggedModelStatus) else status)


def _latest(data: Any) -> Mapping[str, Metric]:
    # RunData keeps Metric objects in ``_metric_objs``; ``metrics`` maps keys to values only.
    objs = getattr(data, "_metric_objs", None)
    if objs is not None:
        return {m.key: m for m in objs}
    return {k: Metric(k, v, 0, 0) for k, v in data.metrics.items()}


def history_digest(points: Iterable[Metric]) -> str:
    """A digest of every metric point of a run (duplicates counted once, order ignored)."""
    keys = sorted({point_key(m) for m in points})
    return hashlib.sha256(json.dumps(keys, separators=(",", ":")).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunCopy:
    """One source run, ready to be written into the destination.

    ``history`` is every point of every metric of the run; ``experiment_id`` the destination
    experiment it goes into; ``model_ids`` maps source logged-model ids to destination ids
    (identical where the destination keeps ids); ``deleted_time`` is when a deleted run was
    deleted, where the source says.
    """

    run: Run
    history: list[Metric]
    experiment_id: str
    model_ids: Mapping[str, str] = field(default_factory=dict)
    #: When a deleted run was deleted, where the source knows it (MLflow's RunInfo does not
    #: carry it; ``mlflow gc --older-than`` counts from it).
    deleted_time: int | None = None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


@dataclass(frozen=True)
class ModelCopy:
    """One source logged model, ready to be written: ``experiment_id`` and ``source_run_id``
    are the destination's."""

    model: LoggedModel
    experiment_id: str
    source_run_id: str | None


@dataclass(frozen=True)
class Skipped:
    """Something not moved, on purpose: what, how many, and why."""

    kind: str
    count: int
    reason: str


@dataclass(frozen=True)
class Failure:
    """Something that could not be moved or verified."""

    kind: str
    what: str
    error: str


@dataclass
class MigrationReport:
    """What a migration did."""

    source: str
    dest: str
    dry_run: bool = False
    #: kind -> how many were copied (``runs``, ``metric_points``, ``artifacts`` …).
    copied: Counter[str] = field(default_factory=Counter)
    #: kind -> how many were already there and left alone.
    unchanged: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: source experiment id -> destination experiment id, where they differ.
    experiment_ids: dict[str, str] = field(default_factory=dict)
    #: Where the full id map (runs, logged models) was written, when ids changed.
    id_map: str | None = None
    #: Differences ``--verify`` found; None when it did not run.
    differences: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and not self.differences

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "dest": self.dest, "dry_run": self.dry_run,
            "ok": self.ok, "copied": dict(self.copied), "unchanged": dict(self.unchanged),
            "bytes": self.bytes, "seconds": round(self.seconds, 3),
            "skipped": [vars(s) for s in self.skipped],
            "failures": [vars(f) for f in self.failures],
            "experiment_ids": self.experiment_ids, "id_map": self.id_map,
            "verified": self.differences is not None,
            "differences": self.differences or [],
        }
