"""Workload F of scripts/benchmark.py: the first reads after a sweep (issue #12).

    .venv/bin/python scripts/benchmark.py --workloads F --backends s3,gcs,azure,local
        [--reads-runs 2000,10000] [--reads-models 500] [--reads-writers 8]

A sweep leaves an experiment of N runs written by several processes through MLflow's normal
API and never read.  Then somebody looks at it.  Each step is a fresh child process (or a
freshly started server), on every store and on the MLflow server on sqlite, side by side and
behind the same latency proxies:

1. **first search**: ``mlflow.search_runs`` with a param and a metric filter ordered by a
   metric, the first read of the experiment ever;
2. **second search**: the same call in another new process;
3. **UI**: an ``mlflow server`` started on the store (on the MLflow side, a second server on
   the same sqlite database) answering the experiment page's ``runs/search`` request, the first
   request after it started; the server talks to the store through the store's latency proxy
   and the request reaches the server through a proxy of its own;
4. **registry**: ``search_registered_models(max_results=1000)`` in a new process, over
   ``--reads-models`` registered models of 1-2 versions each, on the first size's store.

The runs are written by ``--reads-writers`` concurrent processes through ``MlflowClient``
(``create_run``, three ``log_batch`` calls: params, metrics, tags, then ``set_terminated``: what
``start_run``/``log_params``/``log_metrics``/``set_tags``/``end_run`` send), directly to the
emulator or the server, around the proxies.  ``MlflowClient`` rather than the fluent API because
it takes a start time: every side gets the same start times, so the UI's ``start_time DESC``
page must list the same runs in the same order.  Every answer is compared with the MLflow
server's and with the one computed from the data (run names are unique and the same on every
side; run ids are each store's own); a difference makes the benchmark exit with status 1.

Sizes above :data:`REPORT_ONLY_ABOVE` (``--reads-runs 100000``) are report only: the stores'
first and second searches, without the MLflow server (``--reads-baseline-large`` adds it), the
UI and the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import resource
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark import BenchmarkError, ChildTimeout, Row, Target, _log, _timed

if TYPE_CHECKING:
    from benchmark import Benchmark

#: The search of steps 1 and 2: p1 is one of ten values, so about 5% of the runs match.
FILTER = "metrics.m0 > 0.5 and params.p1 = 'v3'"
ORDER = ["metrics.m2 DESC"]
#: The experiment page's request, as the UI bundled with MLflow 3.17 sends it (main.*.js:
#: ``max_results: 100``, ordered by ``attributes.start_time`` descending, active runs, no
#: filter when the page opens).
UI_PATH = "/ajax-api/2.0/mlflow/runs/search"
UI_MAX_RESULTS = 100
UI_ORDER = ["attributes.start_time DESC"]
#: Start time of run 0 (2023-11-14); run i starts i seconds later and lasts 0.5 s.
T0 = 1_700_000_000_000
REPORT_ONLY_ABOVE = 10_000
#: The MLflow side's rows name the backend like workload S's.
MLFLOW_SIDE = "sqlite server"


# -- the data every side gets ---------------------------------------------------------------------

def run_values(i: int) -> tuple[str, int, dict[str, str], dict[str, float], dict[str, str]]:
    """Name, start time, 10 params, 10 metrics and 5 tags of the i-th run."""
    rnd = random.Random(f"reads-{i}")
    params = {f"p{j}": f"value-{rnd.randrange(100)}" for j in range(10)}
    params["p1"] = f"v{rnd.randrange(10)}"
    metrics = {f"m{j}": rnd.random() for j in range(10)}
    tags = {f"t{j}": f"tag-{(i + j) % 7}" for j in range(5)}
    return f"run-{i:06d}", T0 + i * 1000, params, metrics, tags


def expected_search(runs: int) -> list[str]:
    """Names of the runs :data:`FILTER` matches, in :data:`ORDER`, computed from the data."""
    hits = []
    for i in range(runs):
        name, _, params, metrics, _ = run_values(i)
        if metrics["m0"] > 0.5 and params["p1"] == "v3":
            hits.append((-metrics["m2"], name))
    return [name for _, name in sorted(hits)]


def expected_ui(runs: int) -> list[str]:
    return [run_values(i)[0] for i in range(runs - 1, max(-1, runs - 1 - UI_MAX_RESULTS), -1)]


def model_name(i: int) -> str:
    return f"model-{i:04d}"


def model_versions(i: int) -> int:
    return 1 + i % 2


# -- child processes ------------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def work_setup(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Create the experiment the writers share (no proxy)."""
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    experiment_id = MlflowClient().create_experiment(spec["experiment"])
    return {"experiment_id": experiment_id, "seconds": time.perf_counter() - t0}


def work_write(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One writer: runs ``writer``, ``writer + writers``, ... of ``runs``, each through the calls
    the fluent API makes for start_run, log_params, log_metrics, set_tags and end_run."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = spec["experiment_id"]
    written = 0
    t0 = time.perf_counter()
    for i in range(int(spec["writer"]), int(spec["runs"]), int(spec["writers"])):
        name, start, params, metrics, tags = run_values(i)
        run_id = client.create_run(experiment_id, start_time=start, run_name=name).info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()])
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run_id, end_time=start + 500)
        written += 1
    return {"runs": written, "seconds": time.perf_counter() - t0}


def work_models(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One writer of registered models: 1-2 versions each, no run behind them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    t0 = time.perf_counter()
    made = 0
    for i in range(int(spec["writer"]), int(spec["models"]), int(spec["writers"])):
        name = model_name(i)
        client.create_registered_model(name, tags={"team": f"team-{i % 5}"})
        for v in range(model_versions(i)):
            client.create_model_version(name, f"s3://bench-models/{name}/v{v + 1}")
        made += 1
    return {"models": made, "seconds": time.perf_counter() - t0}


def work_search(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Steps 1 and 2: one ``mlflow.search_runs`` in this new process."""
    import mlflow
    import pandas  # noqa: F401  (imported by search_runs on its first call: outside the clock)
    from mlflow.tracking._tracking_service.utils import _get_store

    # The store is built (and cached by MLflow) outside the clock, as in workload S; building
    # it reads nothing of the experiment.
    _get_store()
    out: dict[str, Any] = {"base_rss_mb": _peak_rss_mb()}
    with _timed(out):
        frame = mlflow.search_runs(experiment_ids=[spec["experiment_id"]],
                                   filter_string=FILTER, order_by=ORDER)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["names"] = ([] if "tags.mlflow.runName" not in frame
                    else [str(n) for n in frame["tags.mlflow.runName"]])
    return out


def work_ui(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Step 3: the experiment page's ``runs/search`` request to a server that just started.

    The connection is opened (``/health``) outside the clock: a browser has one open from
    loading the page."""
    host, port = spec["host"], int(spec["port"])
    time.sleep(float(spec.get("settle") or 0))  # before the connection: servers close idle ones
    conn = http.client.HTTPConnection(host, port, timeout=3600)
    conn.request("GET", "/health")
    conn.getresponse().read()
    body = json.dumps({"experiment_ids": [spec["experiment_id"]], "run_view_type": "ACTIVE_ONLY",
                       "max_results": UI_MAX_RESULTS, "order_by": UI_ORDER})
    out: dict[str, Any] = {}
    with _timed(out):
        conn.request("POST", UI_PATH, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    conn.close()
    if resp.status != 200:
        raise BenchmarkError(f"POST {UI_PATH} answered {resp.status}: "
                             f"{data[:2000].decode(errors='replace')}")
    runs = json.loads(data).get("runs", [])
    out["names"] = [r["info"].get("run_name", "") for r in runs]
    out["bytes"] = len(data)
    return out


def work_registry(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Step 4: the first ``search_registered_models`` of this new process."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client._get_registry_client()  # builds the registry store outside the clock
    out: dict[str, Any] = {"base_rss_mb": _peak_rss_mb()}
    with _timed(out):
        models = client.search_registered_models(max_results=1000)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["names"] = [m.name for m in models]
    return out


WORKERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "reads-setup": work_setup,
    "reads-write": work_write,
    "reads-models": work_models,
    "reads-search": work_search,
    "reads-ui": work_ui,
    "reads-registry": work_registry,
}


def _tree_peak_rss_mb(pid: int | None) -> float | None:
    """The largest peak RSS (VmHWM) among a server's processes: its uvicorn worker's."""
    if pid is None:
        return None
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return None
    best = 0
    for proc in procs:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
    return best / 1024 or None


# -- the workload ---------------------------------------------------------------------------------

class Reads:
    """Workload F for every ``--reads-runs`` size, on the benchmark's backends and its MLflow
    server; rows go to the benchmark's results."""

    def __init__(self, bench: Benchmark) -> None:
        self.bench = bench
        self.lab = bench.lab
        self.args = bench.args
        self.results = bench.results
        self.registry_done = False

    def run(self) -> None:
        for runs in self.args.reads_runs:
            self.one_size(runs)

    def one_size(self, runs: int) -> None:
        large = runs > REPORT_ONLY_ABOVE
        report_only = large and not self.args.reads_baseline_large
        # The MLflow server first: every store's answer is compared with its.
        sides = [] if report_only else [self.lab.targets["mlflow"]]
        sides += [self.lab.fresh(b, f"reads-{runs}") for b in self.args.backends]
        experiment = f"reads-{runs}"
        label = {t.name: MLFLOW_SIDE if t.name == "mlflow" else t.name for t in sides}
        ids = {t.name: self.populate(t, experiment, runs) for t in sides}
        expected = expected_search(runs)
        _log(f"F: {runs} runs, the search matches {len(expected)}")

        def spec(t: Target) -> dict[str, Any]:
            return {"experiment_id": ids[t.name]}

        # 1 and 2: the first search ever, then another new process.
        for step in ("first", "second"):
            rows: list[Row] = []
            reference: list[str] | None = None
            for t in sides:
                _log(f"F: {step} search on {label[t.name]}")
                repeat = 1 if step == "first" else self.args.repeat
                results = [self.attempt("reads-search", spec(t), self.lab.child_env(t))
                           for _ in range(repeat)]
                for r in results:
                    self.check(f"F {step} search, {runs} runs, on {label[t.name]}",
                               r["names"], expected, reference)
                if t.name == "mlflow" and results[0]["names"] is not None:
                    reference = results[0]["names"]
                rows.append(self.row(f"{step} search, {runs} runs", label[t.name], results,
                                     baseline=t.name == "mlflow", report_only=report_only))
            self.relate(rows)
            if rows and rows[0].baseline:
                rows[0].note = "; ".join(n for n in (rows[0].note,
                                                     f"{len(expected)} runs returned") if n)
        if large:
            return
        # 3: the UI's request to a server just started on each store: at once, and (a user
        # opening the page a little later) --reads-ui-settle seconds after it answered /health.
        expected_page = expected_ui(runs)
        settles = [0.0] + ([self.args.reads_ui_settle] if self.args.reads_ui_settle else [])
        for settle in settles:
            rows = []
            reference = None
            variant = f"UI runs/search, {runs} runs" + (f", {settle:g} s after start"
                                                       if settle else "")
            for t in sides:
                _log(f"F: {variant} on an mlflow server on {label[t.name]}")
                result = self.ui(t, ids[t.name], settle)
                self.check(f"F {variant}, on {label[t.name]}", result["names"], expected_page,
                           reference)
                if t.name == "mlflow" and result["names"] is not None:
                    reference = result["names"]
                rows.append(self.row(variant, label[t.name], [result],
                                     baseline=t.name == "mlflow"))
            self.relate(rows)
        # 4: the registry, once, in the first size's stores.
        if not self.registry_done and self.args.reads_models:
            self.registry(sides, label)
            self.registry_done = True

    def populate(self, target: Target, experiment: str, runs: int) -> str:
        """The experiment's runs by ``--reads-writers`` processes at once, around the proxy;
        returns the experiment id."""
        env = self.lab.child_env(target, direct=True)
        setup = self.lab.run("reads-setup", {"experiment": experiment}, env)
        writers = self.args.reads_writers
        specs = [{"experiment_id": setup["experiment_id"], "writer": w, "writers": writers,
                  "runs": runs} for w in range(writers)]
        t0 = time.perf_counter()
        done = self._parallel("reads-write", specs, env)
        seconds = time.perf_counter() - t0
        written = sum(int(r["runs"]) for r in done)
        if written != runs:
            raise BenchmarkError(f"{target.name}: the writers wrote {written} of {runs} runs")
        name = MLFLOW_SIDE if target.name == "mlflow" else target.name
        self.results.notes.append(f"F populate {name}: {runs} runs by {writers} processes in "
                                  f"{seconds:.1f} s ({runs / seconds:.1f} runs/s, no proxy)")
        _log(f"F: populated {name} with {runs} runs in {seconds:.0f} s")
        return str(setup["experiment_id"])

    def _parallel(self, kind: str, specs: Sequence[Mapping[str, Any]],
                  env: Mapping[str, str]) -> list[dict[str, Any]]:
        pool = ThreadPoolExecutor(len(specs))
        try:
            futures = [pool.submit(self.lab.run, kind, s, env) for s in specs]
            return [f.result() for f in futures]  # the first failure ends the benchmark
        finally:
            self.lab.close_children()  # no-op unless one failed
            pool.shutdown(wait=True, cancel_futures=True)

    def ui(self, target: Target, experiment_id: str, settle: float = 0.0) -> dict[str, Any]:
        """Start ``mlflow server`` on the target's store (the MLflow side: on its sqlite
        database), put a latency proxy in front, and send the experiment page's request,
        ``settle`` seconds after the server answered ``/health`` (on our stores, it reads
        ahead meanwhile: cloudtrack.warmup)."""
        from backends._common import LOOPBACK
        from backends.mlflow.service import MlflowServer, MlflowServerError
        from backends.proxy import LatencyProxy

        if target.name == "mlflow":
            db = self.lab.services["mlflow"].workdir / "mlflow.db"
            store_uri, store_controls = f"sqlite:///{db}", []
        else:
            store_uri, store_controls = target.uri, list(target.controls)
        env = {k: v for k, v in self.lab.child_env(target).items()
               if k not in ("MLFLOW_TRACKING_URI", "BENCH_PROXY_CONTROL")}
        # A server on another machine than the searches before: its read cache starts empty.
        env["XDG_CACHE_HOME"] = tempfile.mkdtemp(dir=self.lab.workdir, prefix="ui-cache-")
        server = MlflowServer(store_uri, extra_env=env, startup_timeout=600)
        proxy = None
        try:
            try:
                server.start()
            except MlflowServerError as e:
                raise BenchmarkError(f"mlflow server on {store_uri} did not start: {e}") from e
            proxy = LatencyProxy(LOOPBACK, server.port, self.lab.latency_ms,
                                 name=f"ui-{target.name}")
            proxy.start()
            controls = [proxy.control_url, *store_controls]
            result = self.attempt(
                "reads-ui", {"host": LOOPBACK, "port": proxy.port, "experiment_id": experiment_id,
                             "settle": settle},
                self.lab.child_env(target, extra={"BENCH_PROXY_CONTROL": " ".join(controls)}))
            result["peak_rss_mb"] = _tree_peak_rss_mb(server.pid)
            result["server_startup_seconds"] = server.startup_seconds
            return result
        finally:
            if proxy is not None:
                proxy.stop()
            server.stop()

    def registry(self, sides: Sequence[Target], label: Mapping[str, str]) -> None:
        models, writers = self.args.reads_models, self.args.reads_writers
        expected = sorted(model_name(i) for i in range(models))[:1000]
        rows: list[Row] = []
        for t in sides:
            _log(f"F: {models} registered models into {label[t.name]}")
            t0 = time.perf_counter()
            self._parallel("reads-models", [{"writer": w, "writers": writers, "models": models}
                                            for w in range(writers)],
                           self.lab.child_env(t, direct=True))
            versions = sum(model_versions(i) for i in range(models))
            self.results.notes.append(
                f"F populate {label[t.name]}: {models} registered models, {versions} versions by "
                f"{writers} processes in {time.perf_counter() - t0:.1f} s (no proxy)")
        reference: list[str] | None = None
        for t in sides:
            _log(f"F: search_registered_models on {label[t.name]}")
            result = self.attempt("reads-registry", {}, self.lab.child_env(t))
            self.check(f"F registry on {label[t.name]}", result["names"], expected, reference)
            if t.name == "mlflow" and result["names"] is not None:
                reference = result["names"]
            rows.append(self.row(f"registry search, {models} models", label[t.name], [result],
                                 baseline=t.name == "mlflow"))
        self.relate(rows)

    def attempt(self, kind: str, spec: Mapping[str, Any],
                env: Mapping[str, str]) -> dict[str, Any]:
        """One measuring child; one that hangs is killed at its TIMEOUTS bound and becomes a
        row saying so (and a problem), instead of ending the benchmark."""
        try:
            return self.lab.run(kind, spec, env)
        except ChildTimeout as e:
            _log(f"F: {e}")
            timeout = self.lab.timeouts[kind]
            return {"seconds": float(timeout), "requests": None, "names": None,
                    "note": f"did not finish, killed after {timeout} s"}

    # -- rows -------------------------------------------------------------------------------

    def check(self, what: str, got: list[str] | None, computed: list[str],
              mlflow: list[str] | None) -> None:
        """The same names in the same order as the MLflow server's answer (when there is one)
        and as computed from the data."""
        if got is None:
            self.results.problems.append(f"{what}: did not finish")
            return
        if mlflow is not None:
            self.bench.check_names(what, got, mlflow)
        self.bench.check_names(f"{what} (against the data)", got, computed)

    def row(self, variant: str, backend: str, results: list[dict[str, Any]], *,
            baseline: bool, report_only: bool = False) -> Row:
        notes = [n for n in ["report only" if report_only else "",
                             *(r.get("note", "") for r in results)] if n]
        row = self.bench.add_median("F", variant, backend, results, baseline=baseline,
                                    note="; ".join(dict.fromkeys(notes)))
        ordered = sorted(results, key=lambda r: float(r["seconds"]))
        row.peak_rss_mb = ordered[(len(ordered) - 1) // 2].get("peak_rss_mb")
        return row

    def relate(self, rows: Sequence[Row]) -> None:
        base = rows[0] if rows and rows[0].baseline else None
        for row in rows:
            self.results.relate(row, base)


def parse_sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--reads-runs takes run counts such as 2000,10000, "
                                         f"not {value!r}")
    return list(dict.fromkeys(sizes))


__all__ = ["REPORT_ONLY_ABOVE", "WORKERS", "Reads", "parse_sizes"]
