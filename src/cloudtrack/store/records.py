"""The record codec: records are compact JSON objects with sorted keys (docs/format.md).

Also the metric tuple, the one shape a metric point has in every record (run heads, history
batches, logged models): ``[key, value, timestamp, step, model_id, dataset_name,
dataset_digest]``.  Nothing here imports MLflow (see :mod:`cloudtrack.store.entities`).
"""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

from cloudtrack.errors import CorruptObject

if TYPE_CHECKING:
    from mlflow.entities import Metric

    from cloudtrack.blobs import Blobs

#: A record as read from the store.
Record = dict[str, Any]


def dumps(record: object) -> bytes:
    """A record's bytes: compact, keys sorted; NaN and ±inf stay as Python's json writes them
    (MLflow keeps NaN; ±inf never gets here, see :func:`metric_tuple`)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")


def parse(data: bytes, uri: str) -> Record:
    """A record from its bytes; :class:`~cloudtrack.errors.CorruptObject` names ``uri`` when
    the bytes are not a JSON object."""
    try:
        record = json.loads(data)
    except ValueError as e:
        raise CorruptObject(uri, f"not JSON ({e})") from None
    if not isinstance(record, dict):
        raise CorruptObject(uri, "not a JSON object")
    return record


def read(blobs: Blobs, key: str) -> Record:
    """GET and parse one record.  Raises BlobNotFound, CorruptObject."""
    return parse(blobs.get(key), blobs.object_uri(key))


def read_versioned(blobs: Blobs, key: str) -> tuple[Record, str]:
    """GET and parse one record, with the version it was read at."""
    data, version = blobs.get_versioned(key)
    return parse(data, blobs.object_uri(key)), version


def set_entry(record: Record, field: str, key: str, value: Any) -> Record:
    """Set ``record[field][key]`` (tags, aliases …); returns the record."""
    record.setdefault(field, {})[key] = value
    return record


def remove_entry(record: Record, field: str, key: str) -> bool:
    """Delete ``record[field][key]``; False when it was not there."""
    entries = record.get(field, {})
    if key not in entries:
        return False
    del entries[key]
    return True


# -- metric points ---------------------------------------------------------------------------

def metric_tuple(m: Metric) -> list[Any]:
    """A logged metric as stored.  MLflow's SQL stores (the reference) clamp ±inf to the
    largest finite double; NaN stays."""
    value = float(m.value)
    if math.isinf(value):
        value = math.copysign(sys.float_info.max, value)
    return [m.key, value, int(m.timestamp), int(m.step), m.model_id, m.dataset_name,
            m.dataset_digest]


def newer(a: list[Any], b: list[Any]) -> bool:
    """Is metric tuple ``a`` the latest value rather than ``b``?  MLflow's rule: the max of
    (step, timestamp, value), NaN counting as the smallest value."""
    def rank(t: list[Any]) -> tuple[int, int, float]:
        v = float(t[1])
        return int(t[3]), int(t[2]), -math.inf if math.isnan(v) else v
    return rank(a) >= rank(b)


def merge_latest(latest: dict[Any, list[Any]], points: list[list[Any]],
                 key: Any = lambda t: t[0]) -> None:
    """Fold ``points`` into ``latest`` (``key(point)`` -> its latest point), by :func:`newer`."""
    for t in points:
        k = key(t)
        cur = latest.get(k)
        if cur is None or newer(t, cur):
            latest[k] = t
