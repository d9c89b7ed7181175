"""cloudtrack against a real MLflow server, side by side in one run, behind the same latency.

    .venv/bin/python scripts/benchmark.py [--latency-ms 20] [--backends s3,azure,gcs,local]
        [--workloads L,S,H,A,F] [--runs 10000] [--points 100000] [--reads-runs 2000]
        [--json out.json]

Every networked service (moto for s3, Azurite for azure, the GCS emulator for gcs, and an
``mlflow server --workers 1`` on sqlite as the baseline) sits behind its own
:class:`backends.proxy.LatencyProxy` adding ``--latency-ms`` per round trip; the local directory
store has no network and is reported for reference only.  Each measurement runs in a fresh
child process whose environment points at the proxies, and the child reads the proxies'
request counters around exactly the code it times.  Every time is printed with its ratio to
the MLflow baseline measured in the same run.

Workloads (docs/benchmarks.md has the targets and the last measured table):

* **L** the cheat sheet's trainer loop: 10 params, 5 tags, ``--epochs`` x 3 ``log_metric``
  calls and one small ``log_artifact``, timed from ``start_run`` until ``end_run`` returned;
  cloudtrack default and strict (``CLOUDTRACK_STRICT=true``) against the MLflow server, sync
  and with ``MLFLOW_ENABLE_ASYNC_LOGGING=true``.
* **S** ``search_runs`` over ``--runs`` runs (10 params, 10 metrics, 5 tags each), filtered on
  a param and a metric and ordered by a metric: cold (a new process) and warm (the second call
  in that process).  The first process that ever searches is reported as well.
* **H** ``get_metric_history`` of one metric of ``--points`` points (logged 1000 per batch).
* **A** ``log_artifacts`` of ``--artifact-files`` files of 1 KiB plus one file of
  ``--artifact-big-mb`` MB: cloudtrack's repository against MLflow's built-in
  ``S3ArtifactRepository`` on the same moto, through the same proxy.
* **F** the first reads after a sweep, for each ``--reads-runs`` size: runs written by
  ``--reads-writers`` processes through MLflow's API, then, each in a new process, the first
  ``mlflow.search_runs`` ever, a second one, the UI's ``runs/search`` to an ``mlflow server``
  just started on the store, and ``search_registered_models`` over ``--reads-models`` models
  (scripts/benchmark_reads.py).

S and H data are written beforehand without the proxy: into one cloudtrack store (the local
one) through ``BlobTrackingStore`` from many threads, then copied object by object into the
other stores (the format is the same everywhere; only the artifact location, which names the
store, is rewritten); into the MLflow server's sqlite database with MLflow's own
``SqlAlchemyStore`` (its ORM models in bulk for the runs, ``log_batch`` for the history).  Both get the same deterministic data, so the searches must return the same runs in
the same order; a difference is reported and makes the script exit with status 1.

The working tree's ``src/cloudtrack`` is copied when the benchmark starts and every child
imports that copy, so one run measures one version even while someone edits ``src/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `backends` lives at the repository root
if __name__ == "__main__":
    # scripts/benchmark_reads.py imports this module as `benchmark`: one module, not a second
    # copy whose BenchmarkError run_lab would not catch.
    sys.modules.setdefault("benchmark", sys.modules[__name__])

BACKENDS = ("s3", "azure", "gcs", "local")
WORKLOADS = ("L", "S", "H", "A", "F")
#: Our backend name -> the service in backends.SERVICES.  Plain moto: IAM checks would only add
#: moto CPU time to both sides of the artifact comparison.
SERVICE_OF = {"s3": "s3-noauth", "azure": "azure", "gcs": "gcs", "local": "local"}

#: Upper bound of each ratio: the targets docs/benchmarks.md states.
TARGETS = {
    ("L", "cloudtrack default"): 0.1,
    ("L", "cloudtrack strict"): 1.1,
    ("S", "cold"): 1.5,
    ("S", "warm"): 0.5,
    ("H", "cloudtrack"): 1.0,
    ("A", "cloudtrack"): 0.5,
}

# The search every store answers (S): about runs/20 matches, fewer than max_results, so the
# count comparison means something.
SEARCH_FILTER = "params.p0 = 'v1' and metrics.m0 > 0.8"
SEARCH_ORDER = ["metrics.m1 DESC"]
SEARCH_MAX_RESULTS = 1000
HISTORY_KEY = "loss"
HISTORY_BATCH = 1000

#: Seconds any one child may take; each is generous for full sizes on a busy 2-core machine.
TIMEOUTS = {"populate": 5400, "populate-mlflow": 3600, "copy": 3600, "loop": 900, "search": 3600,
            "history": 1200, "artifacts": 1800,
            # F (scripts/benchmark_reads.py); a writer's share of 100,000 runs takes long.
            "reads-setup": 600, "reads-write": 14400, "reads-models": 3600,
            "reads-search": 7200, "reads-ui": 3600, "reads-registry": 300}
RESULT_MARK = "BENCHMARK-RESULT "
_ENDPOINT = re.compile(r"\b(127\.0\.0\.1|localhost):(\d{2,5})\b")
#: Variables of the caller's environment that could steer a child somewhere else.
_FOREIGN_ENV = re.compile(r"^(MLFLOW_|CLOUDTRACK_|AWS_|AZURE_|GOOGLE_|GCE_|API_ENDPOINT_OVERRIDE$"
                          r"|STORAGE_EMULATOR_HOST$|HTTPS?_PROXY$|https?_proxy$|PYTHONPATH$)")


class BenchmarkError(RuntimeError):
    """A child failed, a service did not start, or two stores disagreed."""


class ChildTimeout(BenchmarkError):
    """A child did not finish within its TIMEOUTS bound and was killed."""


# -- the data both sides get ------------------------------------------------------------------

def run_data(i: int) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """Params, metrics and tags of the i-th search run, identical for every store."""
    rnd = random.Random(i)
    params = {f"p{j}": f"value-{rnd.randrange(100)}" for j in range(10)}
    params["p0"] = f"v{i % 4}"
    metrics = {f"m{j}": rnd.random() for j in range(10)}
    tags = {f"t{j}": f"tag-{(i + j) % 7}" for j in range(5)}
    return params, metrics, tags


def run_name(i: int) -> str:
    return f"run-{i:06d}"


def history_value(step: int) -> float:
    return 1.0 / (1.0 + step) + (step % 7) * 1e-3


# -- child processes ----------------------------------------------------------------------------

def _counters(controls: Sequence[str]) -> dict[str, int]:
    """The proxies' counters (requests, round_trips, connections, bytes), summed."""
    from backends.proxy import remote_stats

    total: dict[str, int] = {}
    for url in controls:
        for name, value in remote_stats(url).items():
            total[name] = total.get(name, 0) + value
    return total


@contextlib.contextmanager
def _timed(out: dict[str, Any]) -> Iterator[None]:
    """Time the block and count the proxies' requests made meanwhile (BENCH_PROXY_CONTROL).

    ``requests`` is what the table shows; ``round_trips`` and ``connections`` (in --json)
    explain a time that requests alone do not (a 100-continue, a new connection)."""
    controls = os.environ.get("BENCH_PROXY_CONTROL", "").split()
    before = _counters(controls) if controls else {}
    t0 = time.perf_counter()
    yield
    out["seconds"] = time.perf_counter() - t0
    after = _counters(controls) if controls else {}
    out["requests"] = after["requests"] - before["requests"] if controls else None
    out["network"] = {k: v - before.get(k, 0) for k, v in after.items()}
    out["load1"] = os.getloadavg()[0]


def work_loop(spec: Mapping[str, Any]) -> dict[str, Any]:
    """L: the cheat sheet's trainer loop."""
    import mlflow
    from mlflow.tracking import MlflowClient

    epochs = int(spec["epochs"])
    mlflow.set_experiment(spec["experiment"])
    folder = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    artifact = folder / "summary.json"
    artifact.write_text(json.dumps({"epochs": epochs, "note": "a small artifact"}))
    out: dict[str, Any] = {}
    with _timed(out):
        with mlflow.start_run() as run:
            for j in range(10):
                mlflow.log_param(f"param_{j}", j * 10)
            for j in range(5):
                mlflow.set_tag(f"tag_{j}", f"value-{j}")
            for epoch in range(epochs):
                mlflow.log_metric("train_loss", 1.0 / (epoch + 1), step=epoch)
                mlflow.log_metric("val_loss", 1.2 / (epoch + 1), step=epoch)
                mlflow.log_metric("val_accuracy", 50 + epoch * 0.4, step=epoch)
            mlflow.log_artifact(str(artifact))
    # Outside the clock: everything arrived.
    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    history = client.get_metric_history(run.info.run_id, "val_loss")
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    if (len(data.params) != 10 or len(history) != epochs or "summary.json" not in artifacts
            or not {"train_loss", "val_loss", "val_accuracy"} <= set(data.metrics)):
        raise BenchmarkError(f"the trainer loop's run is incomplete: {len(data.params)} params, "
                             f"{len(history)} val_loss points, artifacts {artifacts}")
    shutil.rmtree(folder, ignore_errors=True)
    return out


def work_search(spec: Mapping[str, Any]) -> dict[str, Any]:
    """S: the same search twice in one new process: cold, then warm."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    # Outside the clock, like any script would first: builds the store, opens a connection.
    experiment = client.get_experiment_by_name(spec["experiment"])
    if experiment is None:
        raise BenchmarkError(f"no experiment {spec['experiment']!r} at {client.tracking_uri}")
    out: dict[str, Any] = {}
    for call in ("cold", "warm"):
        out[call] = {}
        with _timed(out[call]):
            runs = client.search_runs([experiment.experiment_id], SEARCH_FILTER,
                                      max_results=SEARCH_MAX_RESULTS, order_by=SEARCH_ORDER)
        out[call]["names"] = [r.info.run_name for r in runs]
    return out


def work_history(spec: Mapping[str, Any]) -> dict[str, Any]:
    """H: one metric's whole history."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.get_experiment_by_name("Default")  # builds the store outside the clock
    out: dict[str, Any] = {}
    with _timed(out):
        history = client.get_metric_history(spec["run_id"], HISTORY_KEY)
    out["points"] = len(history)
    steps = sorted(m.step for m in history)
    if steps != list(range(int(spec["points"]))):
        raise BenchmarkError(f"history of {spec['run_id']} has {len(history)} points, "
                             f"expected steps 0..{int(spec['points']) - 1}")
    return out


def work_artifacts(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A: one ``log_artifacts`` of a folder, with MLflow's S3 repository or the one MLflow
    resolves for the URI (cloudtrack's for s3/gs/wasbs; MLflow's own for file:)."""
    if spec["repo"] == "mlflow-s3":
        from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

        repo: Any = S3ArtifactRepository(spec["uri"])
    else:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(spec["uri"])
    out: dict[str, Any] = {"repository": f"{type(repo).__module__}.{type(repo).__name__}"}
    with _timed(out):
        repo.log_artifacts(spec["folder"], "data")
    listed = _count_files(repo, "data")
    if listed != int(spec["files"]):
        raise BenchmarkError(f"{spec['uri']}/data lists {listed} files, "
                             f"expected {spec['files']}")
    return out


def _count_files(repo: Any, path: str, depth: int = 0) -> int:
    if depth > 8:
        raise BenchmarkError(f"artifact folder {path} is nested deeper than the one uploaded")
    return sum(_count_files(repo, i.path, depth + 1) if i.is_dir else 1
               for i in repo.list_artifacts(path))


def work_populate(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Write the S and H data into a cloudtrack store, directly (no proxy), strict mode."""
    from mlflow.entities import Metric, Param, RunTag

    from cloudtrack.tracking import BlobTrackingStore

    store = BlobTrackingStore(spec["uri"])  # type: ignore[abstract]
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if int(spec["runs"]):
        exp = store.create_experiment(spec["search_experiment"])
        now = int(time.time() * 1000)

        def one(i: int) -> None:
            params, metrics, tags = run_data(i)
            run = store.create_run(exp, "bench", now + i,
                                   [RunTag(k, v) for k, v in tags.items()], run_name(i))
            store.log_batch(run.info.run_id,
                            [Metric(k, v, now + i, 0) for k, v in metrics.items()],
                            [Param(k, v) for k, v in params.items()], [])

        with ThreadPoolExecutor(int(spec["threads"])) as pool:
            for _ in pool.map(one, range(int(spec["runs"]))):
                pass
    if int(spec["points"]):
        out["history_run_id"] = _history_run(store, spec, Metric)
    out["seconds"] = time.perf_counter() - t0
    store.close()
    return out


def work_copy(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a populated cloudtrack store object by object into another (no proxy).

    The format is the same on every backend, so a store written once through
    ``BlobTrackingStore`` and copied (:func:`cloudtrack.store.copy.copy_store`) is what that
    code would have written there, except for the location of each run's artifacts, which
    names the store: that prefix is rewritten.  Search snapshots are left behind (their
    versions are the source's); the first search builds one, as it would after any bulk
    logging.
    """
    from cloudtrack.blobs import open_blobs
    from cloudtrack.config import resolve
    from cloudtrack.store.copy import copy_store, relocate_artifacts

    source = open_blobs(resolve(spec["source"], os.environ))
    target = open_blobs(resolve(spec["uri"], os.environ))
    t0 = time.perf_counter()
    result = copy_store(source, target, rewrite=relocate_artifacts(spec["source"], spec["uri"]),
                        threads=int(spec["threads"]))
    return {"seconds": time.perf_counter() - t0, "objects": result.objects}


def _history_run(store: Any, spec: Mapping[str, Any], metric_cls: type) -> str:
    exp = store.create_experiment(spec["history_experiment"])
    run = store.create_run(exp, "bench", int(time.time() * 1000), [], "history")
    t = int(time.time() * 1000)
    points = int(spec["points"])
    for start in range(0, points, HISTORY_BATCH):
        store.log_batch(run.info.run_id,
                        [metric_cls(HISTORY_KEY, history_value(s), t + s, s)
                         for s in range(start, min(points, start + HISTORY_BATCH))], [], [])
    return str(run.info.run_id)


def work_populate_mlflow(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Write the S and H data into the MLflow server's sqlite database (no proxy): the runs in
    bulk through SqlAlchemyStore's session and ORM models (one create_run + log_batch per run
    takes ~0.1 s here), the history with SqlAlchemyStore.log_batch."""
    import uuid

    from mlflow.entities import Metric
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    client = MlflowClient(spec["server"])  # the server, directly
    store = SqlAlchemyStore(spec["db"], "mlflow-artifacts:/")
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    runs = int(spec["runs"])
    if runs:
        exp = client.create_experiment(spec["search_experiment"])
        now = int(time.time() * 1000)
        for first in range(0, runs, 1000):
            with store.ManagedSessionMaker(read_only=False) as session:
                for i in range(first, min(runs, first + 1000)):
                    params, metrics, tags = run_data(i)
                    run_id = uuid.uuid4().hex
                    session.add(SqlRun(
                        run_uuid=run_id, name=run_name(i), experiment_id=int(exp),
                        user_id="bench", status="RUNNING", start_time=now + i, end_time=None,
                        lifecycle_stage="active", source_type="UNKNOWN", source_name="",
                        entry_point_name="", source_version="",
                        artifact_uri=f"mlflow-artifacts:/{exp}/{run_id}/artifacts"))
                    session.add_all([SqlTag(key=k, value=v, run_uuid=run_id)
                                     for k, v in {**tags, MLFLOW_RUN_NAME: run_name(i)}.items()])
                    session.add_all([SqlParam(key=k, value=v, run_uuid=run_id)
                                     for k, v in params.items()])
                    for cls in (SqlMetric, SqlLatestMetric):
                        session.add_all([cls(key=k, value=v, timestamp=now + i, step=0,
                                             is_nan=False, run_uuid=run_id)
                                         for k, v in metrics.items()])
        found = client.search_runs([exp], max_results=1, order_by=["attributes.start_time"])
        if not found or found[0].info.run_name != run_name(0):
            raise BenchmarkError("the MLflow server does not see the runs written to its database")
    if int(spec["points"]):
        out["history_run_id"] = _history_run(store, spec, Metric)
    out["seconds"] = time.perf_counter() - t0
    return out


WORKERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "loop": work_loop,
    "search": work_search,
    "history": work_history,
    "artifacts": work_artifacts,
    "populate": work_populate,
    "populate-mlflow": work_populate_mlflow,
    "copy": work_copy,
}


def worker_main(kind: str, spec_json: str,
                workers: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = WORKERS
                ) -> int:
    """A child's whole life: run ``workers[kind]`` and print its result after RESULT_MARK."""
    result = workers[kind](json.loads(spec_json))
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# -- services, proxies and targets ------------------------------------------------------------

@dataclass
class Target:
    """Where a child process logs: a cloudtrack store, or the MLflow server."""

    name: str                 # s3, azure, gcs, local, mlflow
    uri: str                  # MLFLOW_TRACKING_URI through the proxy
    env: dict[str, str]       # the service's environment rewritten to the proxies
    direct_env: dict[str, str]
    direct_uri: str
    controls: list[str] = field(default_factory=list)


class Lab:
    """The running services, their proxies and a scratch folder; ``close()`` stops them all.

    Children run ``script`` (default: this file) as ``script _worker KIND SPEC``, each bounded
    by ``timeouts[KIND]`` seconds; scripts/benchmark_migrate.py brings its own of both."""

    def __init__(self, latency_ms: float, *, script: Path | None = None,
                 timeouts: Mapping[str, int] | None = None,
                 src_commit: str | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        self.latency_ms = latency_ms
        self.settings = dict(settings or {})
        self.src_commit = src_commit
        self.script = script or Path(__file__).resolve()
        self.timeouts = dict(timeouts or TIMEOUTS)
        self.workdir = Path(tempfile.mkdtemp(prefix="cloudtrack-benchmark-"))
        self.services: dict[str, Any] = {}
        self.proxies: list[Any] = []
        self.targets: dict[str, Target] = {}
        self.src = self.workdir / "src"
        self.children: set[subprocess.Popen[str]] = set()

    def freeze_src(self) -> str:
        """Copy src/cloudtrack for the children (the working tree's, or ``src_commit``'s from
        git, which leaves the working tree alone); returns a digest of the copied tree."""
        if self.src_commit:
            archive = subprocess.run(["git", "archive", self.src_commit, "src/cloudtrack"],
                                     cwd=ROOT, capture_output=True, timeout=120, check=False)
            if archive.returncode != 0:
                raise BenchmarkError(f"git archive {self.src_commit} src/cloudtrack failed: "
                                     f"{archive.stderr.decode(errors='replace')[-2000:]}")
            subprocess.run(["tar", "-x", "-C", str(self.workdir)], input=archive.stdout,
                           timeout=120, check=True)
        else:
            shutil.copytree(ROOT / "src" / "cloudtrack", self.src / "cloudtrack",
                            ignore=shutil.ignore_patterns("__pycache__"))
        digest = hashlib.sha256()
        for path in sorted((self.src / "cloudtrack").rglob("*.py")):
            digest.update(path.relative_to(self.src).as_posix().encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:12]

    def start(self, names: Sequence[str] | Mapping[str, str]) -> None:
        """Start ``names`` (registry names of backends.SERVICES) side by side; a mapping
        starts each of its values under its key (two MLflow servers: ``{"mlflow": "mlflow",
        "mlflow-dest": "mlflow"}``)."""
        import backends

        services = dict(names) if isinstance(names, Mapping) else {n: n for n in names}

        def start_one(name: str) -> Any:
            svc = backends.load(services[name])()
            if services[name] == "mlflow":
                svc.launch()
                self.services[name] = svc  # stop() is safe from here on
                svc.wait_ready()
            else:
                svc.start()  # cleans up after itself when it fails
                self.services[name] = svc
            return svc

        with ThreadPoolExecutor(len(services)) as pool:
            futures: list[Future[Any]] = [pool.submit(start_one, n) for n in services]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise BenchmarkError(f"a service did not start: {errors[0]}") from errors[0]

    def proxied(self, name: str, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """``env`` with each loopback endpoint behind a latency proxy, as ``python -m backends
        up --latency-ms`` does, plus files the environment names that hold an endpoint (GCS's
        service-account key names its token endpoint)."""
        from backends._common import LOOPBACK
        from backends.proxy import LatencyProxy

        by_port: dict[int, Any] = {}

        def swap(m: re.Match[str]) -> str:
            port = int(m.group(2))
            if port not in by_port:
                proxy = LatencyProxy(LOOPBACK, port, self.latency_ms, name=f"{name}:{port}")
                proxy.start()
                self.proxies.append(proxy)
                by_port[port] = proxy
            return f"{LOOPBACK}:{by_port[port].port}"

        out = {}
        for key, value in env.items():
            new = _ENDPOINT.sub(swap, value)
            path = Path(value)
            if new == value and value.startswith("/") and path.is_file() \
                    and path.stat().st_size < 1 << 16:
                text = path.read_text()
                if _ENDPOINT.search(text):
                    copy = self.workdir / f"{name}-{path.name}"
                    copy.write_text(_ENDPOINT.sub(swap, text))
                    copy.chmod(0o600)
                    new = str(copy)
            out[key] = new
        return out, [p.control_url for p in by_port.values()]

    def add_store(self, backend: str) -> Target:
        """The backend's store for the populated data (S, H), and its proxies."""
        svc = self.services[SERVICE_OF[backend]]
        uri = svc.new_store("bench")
        env, controls = self.proxied(backend, svc.env)
        self.targets[backend] = Target(backend, uri, env, dict(svc.env), uri, controls)
        return self.targets[backend]

    def fresh(self, backend: str, name: str) -> Target:
        """A new, empty store (bucket/container) on the backend, behind the same proxies.

        L and A write into their own buckets: fake-gcs-server's memory backend keeps a
        bucket's objects in a list and scans it on every request, so a bucket holding the
        ~30,000 objects of S and H makes each GCS request ~100 ms slower; a real bucket does
        not slow down with its size.
        """
        base = self.targets.get(backend) or self.add_store(backend)
        uri = self.services[SERVICE_OF[backend]].new_store(name)
        return Target(backend, uri, base.env, base.direct_env, uri, base.controls)

    def add_mlflow(self, name: str = "mlflow") -> Target:
        svc = self.services[name]
        env, controls = self.proxied(name, svc.env)
        self.targets[name] = Target(name, env["MLFLOW_TRACKING_URI"], env, dict(svc.env),
                                    svc.url, controls)
        return self.targets[name]

    def child_env(self, target: Target, *, direct: bool = False,
                  extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _FOREIGN_ENV.match(k)}
        env.update(target.direct_env if direct else target.env)
        env.update({
            "MLFLOW_TRACKING_URI": target.direct_uri if direct else target.uri,
            "BENCH_PROXY_CONTROL": "" if direct else " ".join(target.controls),
            "PYTHONPATH": os.pathsep.join([str(self.src), str(ROOT)]),
            "NO_PROXY": "127.0.0.1,localhost",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",
            # The read cache of every child in the benchmark's own folder, not the user's.
            "XDG_CACHE_HOME": str(self.workdir / "cache"),
        })
        env.update(self.settings)  # after the filter above, which drops the caller's own
        env.update(extra or {})
        return env

    def run(self, kind: str, spec: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        """Run one child to completion (bounded by TIMEOUTS) and return its result; close()
        kills the children still running."""
        argv = [sys.executable, str(self.script), "_worker", kind, json.dumps(spec)]
        timeout = self.timeouts[kind]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(argv, env=dict(env), cwd=self.workdir, text=True,
                                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
            self.children.add(proc)
            try:
                stdout, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise ChildTimeout(f"{kind} child did not finish within {timeout} s "
                                     f"({spec})") from e
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                self.children.discard(proc)
            err.seek(0)
            stderr = err.read()
        for line in reversed(stdout.splitlines()):
            if line.startswith(RESULT_MARK) and proc.returncode == 0:
                return json.loads(line[len(RESULT_MARK):])  # type: ignore[no-any-return]
        raise BenchmarkError(f"{kind} child exited with {proc.returncode} ({spec}); "
                             f"its output ends with:\n{(stdout + stderr)[-4000:]}")

    def check_src(self) -> None:
        """Fail in seconds, not after the set-up, when the copied src does not import."""
        env = {k: v for k, v in os.environ.items() if not _FOREIGN_ENV.match(k)}
        env["PYTHONPATH"] = os.pathsep.join([str(self.src), str(ROOT)])
        code = ("import cloudtrack.tracking, cloudtrack.artifacts, cloudtrack.mlflow_plugin, sys; "
                "assert cloudtrack.__file__.startswith(sys.argv[1]), cloudtrack.__file__")
        proc = subprocess.run([sys.executable, "-c", code, str(self.src)], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise BenchmarkError("the copy of src/cloudtrack does not import (is someone "
                                 f"mid-edit?):\n{proc.stderr[-3000:]}")

    def close_children(self) -> None:
        for child in list(self.children):
            with contextlib.suppress(OSError):
                child.kill()

    def close(self) -> None:
        self.close_children()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        for name, svc in reversed(list(self.services.items())):
            try:
                svc.stop()
            except Exception as e:
                print(f"# {name}: stop failed: {e}", file=sys.stderr)
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- results ------------------------------------------------------------------------------------

@dataclass
class Row:
    workload: str
    variant: str
    backend: str
    samples: list[float]
    requests: int | None
    baseline: bool = False
    target: float | None = None
    note: str = ""
    load1: float = 0.0
    ratio: float | None = None
    network: dict[str, int] = field(default_factory=dict)
    #: the measured process's peak RSS (F only: the client's, or the server's for the UI)
    peak_rss_mb: float | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.samples)

    @property
    def verdict(self) -> str:
        if self.baseline:
            return "baseline"
        if self.target is None or self.ratio is None:
            return ""
        if self.backend == "local":
            return "(no network)"
        return "met" if self.ratio <= self.target else "MISSED"


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.problems: list[str] = []
        #: printed after the table, one "# " line each (how long F's population took)
        self.notes: list[str] = []

    def add(self, workload: str, variant: str, backend: str, result: Mapping[str, Any] | None,
            *, samples: list[float] | None = None, baseline: bool = False,
            note: str = "") -> Row:
        assert result is not None
        row = Row(workload, variant, backend, samples or [float(result["seconds"])],
                  result.get("requests"), baseline, TARGETS.get((workload, variant)), note,
                  float(result.get("load1", 0.0)), network=dict(result.get("network") or {}))
        self.rows.append(row)
        return row

    def relate(self, row: Row, base: Row | None) -> None:
        if base is not None and base.seconds > 0 and not row.baseline:
            row.ratio = row.seconds / base.seconds
        elif row.baseline:
            row.ratio = 1.0

    def table(self) -> str:
        # round trips > requests: a 100-continue before a body; connections: new TCP
        # connections, each one more round trip (moto closes every connection).
        # service-s: the services' own answering time summed over requests (the proxies
        # measure it), which tells a slow emulator from a slow client.
        rss = any(r.peak_rss_mb is not None for r in self.rows)
        head = ("workload", "variant", "backend", "seconds", "x MLflow", "requests",
                "round-trips", "connections", "service-s", *(("peak RSS MB",) if rss else ()),
                "target", "verdict")
        lines = [head]
        for r in self.rows:
            net = r.network if r.requests is not None else {}
            lines.append((
                r.workload, r.variant, r.backend,
                f"{r.seconds:.3f}" + (f" (n={len(r.samples)})" if len(r.samples) > 1 else ""),
                "" if r.ratio is None else f"{r.ratio:.3f}",
                "-" if r.requests is None else str(r.requests),
                str(net.get("round_trips", "-")), str(net.get("connections", "-")),
                f"{net['service_us'] / 1e6:.3f}" if "service_us" in net else "-",
                *((f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-",) if rss else ()),
                "" if r.target is None else f"<= {r.target:g}",
                r.verdict + (f"  {r.note}" if r.note else ""),
            ))
        return format_table(lines)


def format_table(lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first line is the header, ruled off."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- the benchmark --------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_folder(root: Path, files: int, big_mb: int) -> Path:
    """``files`` files of 1 KiB and one of ``big_mb`` MB, all random (nothing compresses)."""
    folder = root / "artifact-folder"
    (folder / "small").mkdir(parents=True)
    for i in range(files):
        (folder / "small" / f"file-{i:04d}.bin").write_bytes(os.urandom(1024))
    with open(folder / "big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(big_mb):
            # A fresh first 16 bytes per MB: no two blocks are alike.
            f.write(os.urandom(16) + block[16:] if i else block)
    return folder


class Benchmark:
    def __init__(self, args: argparse.Namespace, lab: Lab) -> None:
        self.args = args
        self.lab = lab
        self.results = Results()
        self.populated: dict[str, dict[str, Any]] = {}

    @property
    def stores(self) -> list[Target]:
        return [self.lab.targets[b] for b in self.args.backends]

    def measure(self, kind: str, target: Target, spec: Mapping[str, Any],
                extra: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """``--repeat`` fresh children of ``kind``; their results."""
        out = []
        for _ in range(self.args.repeat):
            out.append(self.lab.run(kind, spec, self.lab.child_env(target, extra=extra)))
        return out

    def add_median(self, workload: str, variant: str, backend: str,
                   results: list[dict[str, Any]], **kw: Any) -> Row:
        """A row whose seconds are the median of the samples and whose requests/load come
        from the median sample."""
        ordered = sorted(results, key=lambda r: float(r["seconds"]))
        mid = ordered[(len(ordered) - 1) // 2]
        return self.results.add(workload, variant, backend, mid,
                                samples=[float(r["seconds"]) for r in results], **kw)

    # -- set-up -----------------------------------------------------------------------------

    def populate(self) -> None:
        """S and H data, without the proxies: into MLflow's database, and side by side into
        one cloudtrack store through ``BlobTrackingStore`` (strict mode), then copied object
        by object into every other store (:func:`work_copy`)."""
        a = self.args
        runs = a.runs if "S" in a.workloads else 0
        points = a.points if "H" in a.workloads else 0
        if not runs and not points:
            return
        names = {"search_experiment": "bench-search", "history_experiment": "bench-history",
                 "runs": runs, "points": points}
        mlflow = self.lab.targets["mlflow"]
        db = self.lab.services["mlflow"].workdir / "mlflow.db"
        local = self.lab.targets.get("local")
        source_uri = local.direct_uri if local else (self.lab.workdir / "source").as_uri()
        first = {
            "mlflow": ("populate-mlflow", {**names, "db": f"sqlite:///{db}",
                                           "server": mlflow.direct_uri},
                       self.lab.child_env(mlflow, direct=True)),
            "local" if local else "source": (
                "populate", {**names, "uri": source_uri, "threads": a.threads},
                self.lab.child_env(local or mlflow, direct=True,
                                   extra={"CLOUDTRACK_STRICT": "true",
                                          "MLFLOW_TRACKING_URI": source_uri})),
        }
        _log(f"populating {runs} runs and a {points}-point history into MLflow's database "
             f"and {source_uri} (no proxy, side by side)")
        self._run_jobs(first)
        source = self.populated.get("local") or self.populated["source"]
        copies = {t.name: ("copy", {"source": source_uri, "uri": t.direct_uri,
                                    "threads": a.threads},
                           self.lab.child_env(t, direct=True))
                  for t in self.stores if t.name != "local"}
        if copies:
            _log(f"copying that store into {', '.join(copies)} (no proxy, side by side)")
            self._run_jobs(copies)
            for name in copies:
                if "history_run_id" in source:
                    self.populated[name]["history_run_id"] = source["history_run_id"]

    def _run_jobs(self, jobs: Mapping[str, tuple[str, dict[str, Any], dict[str, str]]]) -> None:
        pool = ThreadPoolExecutor(len(jobs))
        futures = {pool.submit(self.lab.run, *job): name for name, job in jobs.items()}
        try:
            for fut in as_completed(futures):
                name = futures[fut]
                self.populated[name] = fut.result()  # the first failure ends the benchmark
                extra = (f", {self.populated[name]['objects']} objects"
                         if "objects" in self.populated[name] else "")
                _log(f"  {name}: done in {self.populated[name]['seconds']:.0f} s{extra}")
        finally:
            self.lab.close_children()  # no-op unless a job failed
            pool.shutdown(wait=True, cancel_futures=True)

    # -- workloads --------------------------------------------------------------------------

    def workload_l(self) -> None:
        mlflow = self.lab.targets["mlflow"]
        spec = {"epochs": self.args.epochs}
        _log(f"L: trainer loop, {self.args.epochs} epochs")
        sync = self.measure("loop", mlflow, {**spec, "experiment": "loop-mlflow"})
        base = self.add_median("L", "mlflow server", "sqlite", sync, baseline=True)
        rows = [self.add_median("L", "mlflow server, async logging", "sqlite",
                                self.measure("loop", mlflow, {**spec, "experiment": "loop-async"},
                                             {"MLFLOW_ENABLE_ASYNC_LOGGING": "true"}))]
        for t in (self.lab.fresh(b, "loop") for b in self.args.backends):
            for variant, extra in (("cloudtrack default", {}),
                                   ("cloudtrack strict", {"CLOUDTRACK_STRICT": "true"})):
                _log(f"L: {variant} on {t.name}")
                results = self.measure("loop", t, {**spec, "experiment": f"loop-{variant[11:]}"},
                                       extra)
                rows.append(self.add_median("L", variant, t.name, results))
        for row in [base, *rows]:
            self.results.relate(row, base)

    def workload_s(self) -> None:
        spec = {"experiment": "bench-search"}
        _log(f"S: search_runs over {self.args.runs} runs")
        mlflow = self.lab.targets["mlflow"]
        base = self.measure("search", mlflow, spec)
        base_cold = self.add_median("S", "cold", "sqlite server", [r["cold"] for r in base],
                                    baseline=True)
        base_warm = self.add_median("S", "warm", "sqlite server", [r["warm"] for r in base],
                                    baseline=True)
        expected = base[0]["cold"]["names"]
        for t in self.stores:
            _log(f"S: {t.name}")
            first = self.lab.run("search", spec, self.lab.child_env(t))
            later = self.measure("search", t, spec)
            for r in [first, *later]:
                for call in ("cold", "warm"):
                    self.check_names(f"S {call} on {t.name}", r[call]["names"], expected)
            rows = [(self.results.add("S", "cold, first search ever", t.name, first["cold"]),
                     base_cold),
                    (self.add_median("S", "cold", t.name, [r["cold"] for r in later]),
                     base_cold),
                    (self.add_median("S", "warm", t.name, [r["warm"] for r in later]),
                     base_warm)]
            for row, b in rows:
                self.results.relate(row, b)
        self.results.relate(base_cold, base_cold)
        self.results.relate(base_warm, base_warm)
        for row in (base_cold, base_warm):
            row.note = f"{len(expected)} runs returned"

    def check_names(self, what: str, got: list[str], expected: list[str]) -> None:
        if len(got) != len(expected):
            self.results.problems.append(f"{what}: {len(got)} runs, MLflow returned "
                                         f"{len(expected)}")
        elif got != expected:
            self.results.problems.append(f"{what}: same count ({len(got)}) but different "
                                         "runs or order than MLflow")

    def workload_h(self) -> None:
        _log(f"H: get_metric_history of {self.args.points} points")
        spec = {"points": self.args.points}
        mlflow = self.lab.targets["mlflow"]
        base = self.add_median("H", "mlflow server", "sqlite", self.measure(
            "history", mlflow, {**spec, "run_id": self.populated["mlflow"]["history_run_id"]}),
            baseline=True)
        self.results.relate(base, base)
        for t in self.stores:
            row = self.add_median("H", "cloudtrack", t.name, self.measure(
                "history", t, {**spec, "run_id": self.populated[t.name]["history_run_id"]}))
            self.results.relate(row, base)

    def workload_a(self) -> None:
        a = self.args
        _log(f"A: log_artifacts of {a.artifact_files} x 1 KiB + {a.artifact_big_mb} MB")
        folder = make_folder(self.lab.workdir, a.artifact_files, a.artifact_big_mb)
        spec = {"folder": str(folder), "files": a.artifact_files + 1}
        s3 = self.lab.fresh("s3", "artifacts-mlflow")
        base_results = self.measure("artifacts", s3, {**spec, "repo": "mlflow-s3",
                                                      "uri": f"{s3.uri}/a-mlflow"})
        base = self.add_median("A", "mlflow S3ArtifactRepository", "s3", base_results,
                               baseline=True)
        self.results.relate(base, base)
        for t in (self.lab.fresh(b, "artifacts") for b in self.args.backends):
            results = self.measure("artifacts", t, {**spec, "repo": "cloudtrack",
                                                    "uri": f"{t.uri}/a-cloudtrack"})
            repo = results[0]["repository"].rsplit(".", 1)[-1]
            row = self.add_median("A", "cloudtrack", t.name, results,
                                  note="" if repo == "BlobArtifactRepository" else f"({repo})")
            self.results.relate(row, base)

    def workload_f(self) -> None:
        from benchmark_reads import Reads

        Reads(self).run()

    def run(self) -> None:
        for name, step in (("S", self.workload_s), ("H", self.workload_h),
                           ("L", self.workload_l), ("A", self.workload_a),
                           ("F", self.workload_f)):
            if name in self.args.workloads:
                step()


def _list(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated subset of "
                                         f"{','.join(allowed)}, not {value!r}")
    return list(dict.fromkeys(items))


def new_parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: the first paragraph of its docstring as description, and
    ``--latency-ms``."""
    p = argparse.ArgumentParser(prog=f"scripts/{script}",
                                description=doc.split("\n\n")[0] if doc else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=20.0,
                   help="added to every round trip by the proxies (default 20)")
    p.add_argument("--setting", type=_setting, action="append", default=[],
                   metavar="CLOUDTRACK_NAME=VALUE",
                   help="a cloudtrack setting for every child, e.g. CLOUDTRACK_READ_TIMEOUT=60 "
                        "(repeatable; the header and the JSON record it)")
    return p


def _setting(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not re.fullmatch(r"CLOUDTRACK_[A-Z0-9_]+", name):
        raise argparse.ArgumentTypeError(
            f"expected CLOUDTRACK_NAME=VALUE (see `cloudtrack config`), not {value!r}")
    return name, setting


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = new_parser("benchmark.py", __doc__)
    p.add_argument("--backends", type=lambda v: _list(v, BACKENDS, "--backends"),
                   default=list(BACKENDS), help="default: s3,azure,gcs,local")
    p.add_argument("--workloads", type=lambda v: _list(v, WORKLOADS, "--workloads"),
                   default=list(WORKLOADS), help="default: L,S,H,A,F")
    p.add_argument("--runs", type=int, default=10_000, help="S: runs in the searched experiment")
    p.add_argument("--points", type=int, default=100_000, help="H: points of the metric")
    p.add_argument("--epochs", type=int, default=100, help="L: epochs of the trainer loop")
    p.add_argument("--artifact-files", type=int, default=500, help="A: files of 1 KiB")
    p.add_argument("--artifact-big-mb", type=int, default=200, help="A: size of the big file")
    p.add_argument("--repeat", type=int, default=1,
                   help="fresh children per measurement; the table shows the median")
    p.add_argument("--reads-runs", type=_reads_sizes, default=[2000],
                   help="F: runs per experiment, one or more sizes (default 2000; the full run "
                        "uses 2000,10000); sizes above 10000 are report only (first and "
                        "second search of the stores)")
    p.add_argument("--reads-models", type=int, default=500,
                   help="F: registered models (1-2 versions each)")
    p.add_argument("--reads-writers", type=int, default=8,
                   help="F: concurrent processes writing the runs and the models")
    p.add_argument("--reads-ui-settle", type=float, default=10.0,
                   help="F: also send the UI's request this many seconds after each server "
                        "answered /health, to a server of its own (0: only at once)")
    p.add_argument("--reads-baseline-large", action="store_true",
                   help="F: measure the MLflow server at the report-only sizes too")
    p.add_argument("--threads", type=int, default=8,
                   help="threads populating a store (Azurite stalls with many more)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--src-commit", default=None, metavar="REV",
                   help="measure src/cloudtrack as committed in REV (git archive; the working "
                        "tree is not touched) instead of the working tree's")
    args = p.parse_args(argv)
    if args.reads_models < 0:
        p.error("--reads-models cannot be negative (0: no registry step)")
    if args.reads_ui_settle < 0:
        p.error("--reads-ui-settle cannot be negative (0: the request at once only)")
    for name in ("runs", "points", "epochs", "artifact_files", "repeat", "threads",
                 "reads_writers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.artifact_big_mb < 0 or args.latency_ms < 0:
        p.error("--artifact-big-mb and --latency-ms cannot be negative")
    return args


def _reads_sizes(value: str) -> list[int]:
    from benchmark_reads import parse_sizes

    return parse_sizes(value)


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               text=True, capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty.strip() else "")


def _resolve_commit(rev: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
                              cwd=ROOT, text=True, capture_output=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit(f"--src-commit {rev}: not a commit of {ROOT}") from e


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def new_meta(latency_ms: float, **sizes: Any) -> dict[str, Any]:
    """What a benchmark's header and JSON say of the run: when, where, what was measured
    (``sizes``); :func:`run_lab` adds the rest."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cores": os.cpu_count(), "load_at_start": os.getloadavg(),
            "latency_ms": latency_ms, **sizes, "git": _git_state()}


def run_lab(lab: Lab, meta: dict[str, Any], body: Callable[[], None], *,
            partial: Callable[[], str]) -> int | None:
    """Freeze src/, run ``body`` (which starts what it needs in ``lab``), and stop every
    service whatever happens; SIGTERM and a closed terminal clean up like Ctrl-C.

    None when ``body`` finished (``meta`` then holds ``src_digest``, ``load_at_end`` and
    ``seconds``); else the exit code: 130 when interrupted, 2 when a :class:`BenchmarkError`
    ended it, after printing ``partial()`` (what was measured before the failure)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    started = time.monotonic()
    try:
        meta["src_digest"] = lab.freeze_src()
        lab.check_src()
        body()
    except KeyboardInterrupt:
        _log("interrupted; stopping the services")
        return 130
    except BenchmarkError as e:
        _log(f"failed: {e}")
        print(partial())
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        lab.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    meta["load_at_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    return None


def header(title: str, meta: Mapping[str, Any]) -> str:
    """The first line of a benchmark's output: when, on what, how loaded, which source."""
    return (f"# {title} {meta['date']}, {meta['cores']} cores, load "
            f"{meta['load_at_start'][0]:.1f} -> {meta['load_at_end'][0]:.1f}, "
            f"+{meta['latency_ms']:g} ms per round trip, src {meta['git']} "
            f"({meta['src_digest']})"
            + "".join(f", {k}={v}" for k, v in meta.get("settings", {}).items()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        if argv[1].startswith("reads-"):
            from benchmark_reads import WORKERS as READS_WORKERS

            return worker_main(argv[1], argv[2], READS_WORKERS)
        return worker_main(argv[1], argv[2])
    args = parse_args(argv)
    meta = new_meta(args.latency_ms, settings=dict(args.setting), backends=args.backends,
                    workloads=args.workloads,
                    runs=args.runs, points=args.points, epochs=args.epochs,
                    artifact_files=args.artifact_files, artifact_big_mb=args.artifact_big_mb,
                    reads_runs=args.reads_runs, reads_models=args.reads_models,
                    reads_writers=args.reads_writers, reads_ui_settle=args.reads_ui_settle,
                    repeat=args.repeat)
    if args.src_commit:
        meta["git"] = f"{_resolve_commit(args.src_commit)} (--src-commit, not the working tree)"
    lab = Lab(args.latency_ms, src_commit=args.src_commit, settings=dict(args.setting))
    bench = Benchmark(args, lab)

    def body() -> None:
        names = ["mlflow", *(SERVICE_OF[b] for b in args.backends)]
        if "A" in args.workloads and "s3" not in args.backends:
            names.append(SERVICE_OF["s3"])  # MLflow's S3 repository is the baseline
        _log(f"starting {', '.join(names)}; proxies add {args.latency_ms:g} ms per round trip")
        lab.start(names)
        lab.add_mlflow()
        for b in args.backends:
            lab.add_store(b)
        bench.populate()
        meta["populate_seconds"] = {k: round(v["seconds"], 1) for k, v in bench.populated.items()}
        bench.run()

    failed = run_lab(lab, meta, body, partial=lambda: "\n".join(
        [bench.results.table(), *(f"# {n}" for n in bench.results.notes)]))
    if failed is not None:
        return failed
    results = bench.results
    print(header("cloudtrack benchmark", meta))
    print(f"# sizes: runs={args.runs} points={args.points} epochs={args.epochs} "
          f"artifacts={args.artifact_files}x1KiB+{args.artifact_big_mb}MB "
          f"reads-runs={','.join(map(str, args.reads_runs))} reads-models={args.reads_models} "
          f"reads-writers={args.reads_writers} repeat={args.repeat}; "
          f"total {meta['seconds']:.0f} s")
    print(results.table())
    for note in results.notes:
        print(f"# {note}")
    for problem in results.problems:
        print(f"# RESULT MISMATCH: {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "problems": results.problems,
                                         "notes": results.notes, "rows": [
            {**asdict(r), "seconds": r.seconds, "verdict": r.verdict} for r in results.rows]},
            indent=2) + "\n")
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
