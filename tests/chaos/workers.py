"""The processes of the chaos tests: each one a separate job logging through the fault proxy,
writing down as it goes what it tried and what it was told.

Every worker appends JSON lines to its own file, one ``os.write`` each (so a SIGKILL never
leaves half a line, and nothing waits in a Python buffer when the process dies):

* ``{"try": kind, ...}`` before a call — the point, param or tag may now exist in the store;
* ``{"ack": kind, ...}`` once the store said it is written: the call returned (strict mode),
  or a later flush of the run returned (default mode, where a logging call only buffers);
* ``{"error": operation, "type": ..., "message": ...}`` for each call that raised.

Values are a function of (key, step) (:func:`value`), so a reader can tell a point that was
logged from one that never was.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How many times a worker repeats a setup call (set_experiment, create_run …) that raised, as a
#: user rerunning a failed step would.
SETUP_TRIES = 4


def value(key: str, step: int) -> float:
    """The value every worker logs for ``key`` at ``step``: distinct per key and step."""
    return float(sum(map(ord, key)) * 1_000_000 + step)


class Record:
    """One worker's file of attempts, acknowledgements and errors."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def line(self, **fields: Any) -> None:
        os.write(self.fd, (json.dumps(fields) + "\n").encode())

    def error(self, operation: str, e: BaseException) -> None:
        self.line(error=operation, type=type(e).__name__, message=str(e)[:2000],
                  trace=traceback.format_exc(limit=30)[-4000:])

    def call(self, operation: str, fn: Callable[[], T], tries: int = 1) -> tuple[bool, T | None]:
        """``fn()`` up to ``tries`` times; whether it returned, and what."""
        for _ in range(tries):
            try:
                return True, fn()
            except Exception as e:
                self.error(operation, e)
        return False, None


def _setup(env: dict[str, str]) -> None:
    os.environ.update(env)


def writer(env: dict[str, str], spec: dict[str, Any], path: str) -> None:
    """Log ``spec["n"]`` points of ``spec["key"]`` (steps from ``spec["start"]``; ``n`` None:
    until killed), a param and a tag every ``spec["every"]`` points, into ``spec["run_id"]``
    or, without one, a new run in the experiment ``spec["experiment"]`` (raced with
    ``mlflow.set_experiment``); then end the run unless ``spec["end"]`` is False.

    In strict mode a returned call is acknowledged; in default mode the points since the last
    flush are acknowledged when ``mlflow.flush_async_logging()`` (every ``spec["flush"]``
    points) or ``set_terminated`` returns.
    """
    _setup(env)
    import mlflow
    from mlflow.tracking import MlflowClient

    rec = Record(path)
    strict = env.get("CLOUDTRACK_STRICT") == "true"
    # Making the client opens the store, which reads its format marker: that can fail too.
    ok, client = rec.call("open_store", MlflowClient, SETUP_TRIES)
    if not ok or client is None:
        return
    run_id = spec.get("run_id")
    if run_id is None:
        ok, exp = rec.call("set_experiment", lambda: mlflow.set_experiment(spec["experiment"]),
                           SETUP_TRIES)
        if not ok or exp is None:
            return
        rec.line(ack="experiment", experiment_id=exp.experiment_id)
        ok, run = rec.call("create_run", lambda: client.create_run(exp.experiment_id),
                           SETUP_TRIES)
        if not ok or run is None:
            return
        run_id = run.info.run_id
    rec.line(ack="run", run_id=run_id)
    key, start, every = spec["key"], spec.get("start", 0), spec.get("every", 10)
    flush_every = spec.get("flush", 10)
    unacked: list[dict[str, Any]] = []

    def done(**fields: Any) -> None:
        if strict:
            rec.line(**fields)
        else:
            unacked.append(fields)

    def flushed() -> None:
        for fields in unacked:
            rec.line(**fields)
        unacked.clear()

    i = 0
    while spec.get("n") is None or i < spec["n"]:
        step = start + i
        rec.line(**{"try": "metric", "key": key, "step": step})
        try:
            client.log_metric(run_id, key, value(key, step), step=step)
        except Exception as e:
            rec.error("log_metric", e)
        else:
            done(ack="metric", key=key, step=step)
        if step % every == 0:
            pkey, tkey = f"{key}.p{step}", f"{key}.t{step}"
            rec.line(**{"try": "param", "key": pkey})
            if rec.call("log_param",
                        lambda k=pkey, v=str(step): client.log_param(run_id, k, v))[0]:
                done(ack="param", key=pkey, value=str(step))
            rec.line(**{"try": "tag", "key": tkey})
            if rec.call("set_tag", lambda k=tkey, v=f"v{step}": client.set_tag(run_id, k, v))[0]:
                done(ack="tag", key=tkey, value=f"v{step}")
        i += 1
        if not strict and i % flush_every == 0 and \
                rec.call("flush", mlflow.flush_async_logging)[0]:
            flushed()
        if spec.get("pause"):
            time.sleep(spec["pause"])
    if spec.get("end", True):
        if rec.call("set_terminated", lambda: client.set_terminated(run_id))[0]:
            flushed()
            rec.line(ack="end", run_id=run_id)
    elif not strict and rec.call("flush", mlflow.flush_async_logging)[0]:
        flushed()


def registrar(env: dict[str, str], spec: dict[str, Any], path: str) -> None:
    """Register ``spec["n"]`` versions of the model ``spec["model"]`` (creating it if no other
    process has), each with a source of its own."""
    _setup(env)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rec = Record(path)
    ok, client = rec.call("open_store", MlflowClient, SETUP_TRIES)
    if not ok or client is None:
        return
    name = spec["model"]
    for _ in range(SETUP_TRIES):
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_ALREADY_EXISTS":
                break
            rec.error("create_registered_model", e)
        except Exception as e:
            rec.error("create_registered_model", e)
        else:
            break
    for i in range(spec["n"]):
        source = f"{spec['source']}/v{i}"
        rec.line(**{"try": "version", "source": source})
        ok, mv = rec.call("create_model_version",
                          lambda s=source: client.create_model_version(name, s))  # type: ignore[misc]
        if ok and mv is not None:
            rec.line(ack="version", source=source, version=int(mv.version))


def read(path: str) -> list[dict[str, Any]]:
    """A worker's lines (a line cut by a kill mid-write is impossible: one write each)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
