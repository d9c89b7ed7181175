"""``cloudtrack migrate`` measured side by side in one run, every service behind the same latency.

    .venv/bin/python scripts/benchmark_migrate.py [--latency-ms 20] [--runs 2000] [--points 100]
        [--compare-runs 300] [--memory-runs 2000,20000]
        [--cases throughput,compare,memory] [--quick] [--json out.json] [--profile DIR]

The services come from ``backends/`` and the plumbing from ``scripts/benchmark.py``: moto (s3),
Azurite (azure), the GCS emulator (gcs) and two ``mlflow server --workers 1`` on sqlite (a
source and a destination), each behind its own :class:`backends.proxy.LatencyProxy`.  Every
measurement is a fresh child process that times exactly the migration (or the tool it is
compared with) and reads the proxies' request counters around it; a child's peak RSS comes
from ``getrusage(RUSAGE_SELF)`` at its end.  ``server-cpu-s`` is the CPU the MLflow servers'
processes used meanwhile (psutil, around the child): on two cores, half of it is the least
wall time any client could take with those servers.

The data (written beforehand, without the proxies, with MLflow's own ORM tables in bulk): an
experiment of ``--runs`` runs, each with 10 params, 5 tags, 5 metrics x ``--points`` points and
2 small artifacts, into a sqlite file (artifacts in a folder) and, the same again, into the
source MLflow server's database (artifacts in the folder it serves ``mlflow-artifacts:`` from).
The server also gets an experiment of ``--compare-runs`` runs of the same shape.

What is measured:

* **sqlite -> s3, gcs, azure**: the whole experiment, each into a new bucket (runs/s, target
  >= 50);
* **re-run**: the same migration again over the migrated s3 store (target <= 10 s);
* **server -> s3**: the server's copy of the experiment (runs/s, target >= 50);
* **compare**: the server's ``--compare-runs`` experiment copied into the second MLflow server
  by mlflow-export-import 1.2.0 (``export-experiment`` then ``import-experiment``) and by
  ``cloudtrack migrate``, each run as the command a person types, timed from the first start
  to the last exit; target: cloudtrack >= 20x faster.  A server is the one destination that tool can write: it creates the experiment
  again for every run and only takes a REST error for "already exists", so into an ``s3://``
  store (or a SQL one) its second run fails.  mlflow-export-import is installed
  into a folder of its own (``pip install --no-deps --target``, beside this venv's MLflow)
  and put on that child's PYTHONPATH only.  What each copy kept of the source (run ids,
  start and end times, users) is read back afterwards and shown;
* **memory**: sqlite sources of ``--memory-runs`` runs (``--memory-points`` points per
  metric) into a local store: peak RSS stays flat as the source grows (target: the largest
  source's peak <= 1.25x the smallest's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/benchmark.py, when imported

from benchmark import (
    ROOT,
    SERVICE_OF,
    BenchmarkError,
    Lab,
    Target,
    _list,
    _log,
    _timed,
    format_table,
    header,
    new_meta,
    new_parser,
    run_lab,
    worker_main,
)

EXPORT_IMPORT = "mlflow-export-import==1.2.0"
DESTS = ("s3", "gcs", "azure")
CASES = ("throughput", "compare", "memory")
#: The experiment every source holds, and the server's smaller one for the comparison.
EXPERIMENT = "bench"
COMPARE_EXPERIMENT = "bench-compare"
#: A fixed moment (2021-03-04) far from now: a copy that kept no time shows it.
T0 = 1_614_816_000_000
PARAMS, TAGS, METRICS = 10, 5, 5
ARTIFACTS = {"summary.json": 200, "predictions.csv": 1500}  # name -> bytes

TARGET_RUNS_PER_S = 50.0
TARGET_RERUN_S = 10.0
TARGET_SPEEDUP = 20.0
TARGET_MEMORY = 1.25

TIMEOUTS = {"populate": 3600, "migrate": 3600, "cli": 7200}
QUICK = {"runs": 20, "points": 5, "compare_runs": 4, "memory_runs": [20, 60], "memory_points": 2}


# -- the data ---------------------------------------------------------------------------------

def run_rows(experiment_id: int, artifact_location: str, i: int, points: int
             ) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """The i-th run of an experiment as rows of MLflow's tables (runs, tags, params, metrics,
    latest_metrics), identical in every source but for the run id."""
    import uuid

    run_id = uuid.uuid4().hex
    start = T0 + i * 60_000
    user = f"user-{i % 7}"
    name = f"run-{i:06d}"
    tags = {f"t{j}": f"tag-{(i + j) % 7}" for j in range(TAGS)}
    tags.update({"mlflow.runName": name, "mlflow.user": user, "mlflow.source.name": "train.py",
                 "mlflow.source.type": "LOCAL"})
    metrics = [{"key": f"m{j}", "value": math.sin(i + j + s / 7), "timestamp": start + 100 * s,
                "step": s, "is_nan": False, "run_uuid": run_id}
               for j in range(METRICS) for s in range(points)]
    return run_id, {
        "runs": [{"run_uuid": run_id, "name": name, "source_type": "LOCAL",
                  "source_name": "train.py", "entry_point_name": "", "user_id": user,
                  "status": "FINISHED", "start_time": start,
                  "end_time": start + 100 * points + 500, "source_version": "",
                  "lifecycle_stage": "active", "experiment_id": experiment_id,
                  "artifact_uri": f"{artifact_location}/{run_id}/artifacts"}],
        "tags": [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()],
        "params": [{"key": f"p{j}", "value": f"value-{(i * 31 + j) % 101}", "run_uuid": run_id}
                   for j in range(PARAMS)],
        "metrics": metrics,
        "latest_metrics": [m for m in metrics if m["step"] == points - 1],
    }


def work_populate(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Fill one MLflow SQL store (no proxy): the experiments in ``spec["experiments"]`` as
    (name, runs, points), their runs inserted in bulk into MLflow's tables, and each run's
    artifacts written into ``spec["artifact_dir"]``, the folder behind ``artifact_root``."""
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import insert

    tables = {"runs": SqlRun, "tags": SqlTag, "params": SqlParam, "metrics": SqlMetric,
              "latest_metrics": SqlLatestMetric}
    store = SqlAlchemyStore(spec["db"], spec["artifact_root"])
    folder = Path(spec["artifact_dir"])
    t0 = time.perf_counter()
    for name, runs, points in spec["experiments"]:
        exp_id = store.create_experiment(name)
        location = store.get_experiment(exp_id).artifact_location.rstrip("/")
        for first in range(0, runs, 500):
            rows: dict[str, list[dict[str, Any]]] = {t: [] for t in tables}
            for i in range(first, min(runs, first + 500)):
                run_id, one = run_rows(int(exp_id), location, i, points)
                for table, items in one.items():
                    rows[table].extend(items)
                run_dir = folder / exp_id / run_id / "artifacts"
                run_dir.mkdir(parents=True)
                for file, size in ARTIFACTS.items():
                    (run_dir / file).write_bytes(f"{run_id}:{file}:".encode().ljust(size, b"."))
            with store.ManagedSessionMaker() as session:
                for table, model in tables.items():
                    session.execute(insert(model), rows[table])
    store.engine.dispose()
    return {"seconds": time.perf_counter() - t0}


# -- the measured children ------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and every process under it."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _children_peak(out: dict[str, Any]) -> Iterator[None]:
    """``out["children_peak_rss_mb"]``: the largest peak RSS (``VmHWM``) of this process's
    sqlite readers, sampled every 0.1 s while the block runs.  (``getrusage(RUSAGE_CHILDREN)``
    reports the parent's size for a child forked before it exec'd, and so would a sample taken
    in between: other children are left out.)"""
    import threading

    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for listing in Path("/proc/self/task").glob("*/children"):
                try:
                    pids = listing.read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        if b"sqlite_reader" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) / 1024)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        out["children_peak_rss_mb"] = peak[0]


def _runs(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found: list[Any] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def kept(source: str, experiment: str, dest: str, dest_experiment: str) -> dict[str, int]:
    """What the destination's copies kept of their source runs, matched by run name."""
    from mlflow import MlflowClient

    src = {r.info.run_name: r.info for r in _runs(MlflowClient(source), experiment)}
    out = {"runs": 0, "run ids": 0, "start times": 0, "end times": 0, "users": 0}
    for run in _runs(MlflowClient(dest), dest_experiment):
        s, d = src.get(run.info.run_name), run.info
        if s is None:
            continue
        out["runs"] += 1
        out["run ids"] += d.run_id == s.run_id
        out["start times"] += d.start_time == s.start_time
        out["end times"] += d.end_time == s.end_time
        out["users"] += d.user_id == s.user_id
    return out


@contextlib.contextmanager
def _profiled(path: str | None) -> Iterator[None]:
    """cProfile every thread of the block (the migration works in pools) into ``path``."""
    if not path:
        yield
        return
    import cProfile
    import pstats
    import threading

    profiles: list[cProfile.Profile] = []
    plain_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            plain_run(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    main = cProfile.Profile()
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.Thread.run = plain_run  # type: ignore[method-assign]
        stats = pstats.Stats(main)
        for profile in profiles:
            with contextlib.suppress(TypeError):  # a thread still running: no stats yet
                stats.add(profile)
        stats.dump_stats(path)


def work_migrate(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One ``cloudtrack.migrate.migrate`` call, timed, with its requests and peak RSS."""
    from cloudtrack.migrate import migrate

    out: dict[str, Any] = {"base_rss_mb": _peak_rss_mb()}
    cpu = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN)
    with _timed(out), _profiled(spec.get("profile")), _children_peak(out):
        report = migrate(spec["source"], spec["dest"], experiments=spec["experiments"])
    # A sqlite source's reader process (cloudtrack.migrate.sqlite_reader) counts: its CPU in
    # cpu-s, its peak beside the migration's.
    out["cpu_s"] = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
    out["peak_rss_mb"] = _peak_rss_mb()
    out["report"] = report.to_dict()
    runs = report.unchanged["runs"] if spec["rerun"] else report.copied["runs"]
    if not report.ok or runs != spec["runs"]:
        raise BenchmarkError(f"migrate {spec['source']} -> {spec['dest']}: expected "
                             f"{spec['runs']} runs {'unchanged' if spec['rerun'] else 'copied'}; "
                             f"report: {json.dumps(out['report'])[:3000]}")
    if spec["kept"]:
        out["kept"] = kept(spec["source"], spec["experiments"][0], spec["dest"],
                           spec["experiments"][0])
    return out


def work_cli(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Commands run one after the other as a person would type them (each with its own
    MLFLOW_TRACKING_URI), timed together from the first start to the last exit; peak RSS is
    the largest of theirs."""
    out: dict[str, Any] = {}
    folder = tempfile.mkdtemp(prefix="bench-cli-")
    stdout = ""
    with _timed(out):
        for step in spec["steps"]:
            argv = [sys.executable, *(a.replace("{folder}", folder) for a in step["argv"])]
            proc = subprocess.run(argv, env={**os.environ, **step["env"]}, cwd=folder,
                                  capture_output=True, text=True, timeout=TIMEOUTS["cli"],
                                  check=False)
            if proc.returncode != 0:
                raise BenchmarkError(f"{' '.join(argv[1:5])} exited with {proc.returncode}: "
                                     f"{(proc.stdout + proc.stderr)[-3000:]}")
            stdout = proc.stdout
    out["cpu_s"] = _cpu_seconds(resource.RUSAGE_CHILDREN)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    shutil.rmtree(folder, ignore_errors=True)
    if spec["json_report"]:
        out["report"] = json.loads(stdout)
    out["kept"] = kept(spec["source"], spec["experiment"], spec["dest"], spec["dest_experiment"])
    if out["kept"]["runs"] != spec["runs"]:
        raise BenchmarkError(f"{' '.join(spec['steps'][0]['argv'][:3])} left "
                             f"{out['kept']['runs']} of {spec['runs']} runs in {spec['dest']}")
    return out


WORKERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "populate": work_populate,
    "migrate": work_migrate,
    "cli": work_cli,
}


# -- results ----------------------------------------------------------------------------------------

@dataclass
class Row:
    case: str
    tool: str
    pair: str
    runs: int
    result: dict[str, Any]
    ratio: float | None = None
    baseline: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.result["seconds"])

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 else math.inf

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")

    def cells(self) -> tuple[str, ...]:
        net = self.result.get("network") or {}
        requests = self.result.get("requests")
        return (
            self.case, self.tool, self.pair, str(self.runs), f"{self.seconds:.1f}",
            f"{self.rate:.1f}",
            "" if self.ratio is None else f"{self.ratio:.2f}x",
            self.baseline,
            "-" if requests is None else str(requests),
            "-" if requests is None or not self.runs else f"{requests / self.runs:.1f}",
            f"{net['service_us'] / 1e6:.1f}" if "service_us" in net else "-",
            f"{self.result['cpu_s']:.1f}" if "cpu_s" in self.result else "-",
            f"{self.result['servers_cpu_s']:.1f}" if self.result.get("servers_cpu_s") else "-",
            f"{self.result.get('peak_rss_mb', 0):.0f}"
            + (f" (+{self.result['children_peak_rss_mb']:.0f})"
               if self.result.get("children_peak_rss_mb") else ""),
            self.target, self.verdict + (f"  {self.note}" if self.note else ""),
        )


HEAD = ("case", "tool", "source -> dest", "runs", "seconds", "runs/s", "ratio", "ratio of",
        "requests", "req/run", "service-s", "cpu-s", "server-cpu-s", "peak RSS MB (+child)",
        "target", "verdict")


def _kept_note(result: Mapping[str, Any]) -> str:
    k = result.get("kept")
    if not k:
        return ""
    return "kept " + ", ".join(f"{name} {k[name]}/{k['runs']}"
                               for name in ("run ids", "start times", "end times", "users"))


# -- the benchmark ----------------------------------------------------------------------------------

class MigrateBenchmark:
    def __init__(self, args: argparse.Namespace, lab: Lab) -> None:
        self.args = args
        self.lab = lab
        self.rows: list[Row] = []
        self.sqlite = f"sqlite:///{lab.workdir / 'source.db'}"
        self.export_import_dir = lab.workdir / "mlflow-export-import"

    @property
    def comparing(self) -> bool:
        return "compare" in self.args.cases and self.args.compare_runs > 0

    # -- set-up -------------------------------------------------------------------------------

    def install_export_import(self) -> None:
        """mlflow-export-import into a folder of its own: ``--no-deps`` beside this venv's
        MLflow, plus tabulate, which it imports without declaring it."""
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--disable-pip-version-check", "--target",
                               str(self.export_import_dir), EXPORT_IMPORT, "tabulate"],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise BenchmarkError(f"pip install {EXPORT_IMPORT} failed:\n{proc.stderr[-3000:]}")

    def populate(self) -> None:
        a = self.args
        server = self.lab.services["mlflow"].workdir
        jobs = []
        if "throughput" in a.cases:
            jobs.append({"db": self.sqlite,
                         "artifact_root": (self.lab.workdir / "source-artifacts").as_uri(),
                         "artifact_dir": str(self.lab.workdir / "source-artifacts"),
                         "experiments": [(EXPERIMENT, a.runs, a.points)]})
        on_server = ([(EXPERIMENT, a.runs, a.points)] if "throughput" in a.cases else []) \
            + ([(COMPARE_EXPERIMENT, a.compare_runs, a.points)] if self.comparing else [])
        if on_server:
            jobs.append({"db": f"sqlite:///{server / 'mlflow.db'}",
                         "artifact_root": "mlflow-artifacts:/",
                         "artifact_dir": str(server / "artifacts"), "experiments": on_server})
        for n in (a.memory_runs if "memory" in a.cases else []):
            jobs.append({"db": self.memory_source(n),
                         "artifact_root": (self.lab.workdir / f"memory-{n}").as_uri(),
                         "artifact_dir": str(self.lab.workdir / f"memory-{n}"),
                         "experiments": [(EXPERIMENT, n, a.memory_points)]})
        _log(f"populating {len(jobs)} sources (no proxy, two at a time)")
        env = self.lab.child_env(self.lab.targets["mlflow"], direct=True)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(self.lab.run, "populate", job, env) for job in jobs]
            try:
                for job, fut in zip(jobs, futures, strict=True):
                    _log(f"  {job['db']}: {fut.result()['seconds']:.0f} s")
            finally:
                self.lab.close_children()  # no-op unless one failed

    def memory_source(self, runs: int) -> str:
        return f"sqlite:///{self.lab.workdir / f'memory-{runs}.db'}"

    # -- measuring ------------------------------------------------------------------------------

    def env(self, *targets: Target | None, extra: Mapping[str, str] | None = None
            ) -> dict[str, str]:
        """A child's environment: every target's services through their proxies, and the
        proxies' counters to read."""
        present = [t for t in targets if t is not None]
        env = self.lab.child_env(present[0] if present else self.lab.targets["mlflow"])
        for t in present:
            env.update(t.env)
        env.pop("MLFLOW_TRACKING_URI", None)  # every URI is passed explicitly
        env["BENCH_PROXY_CONTROL"] = " ".join(c for t in present for c in t.controls)
        env.update(extra or {})
        return env

    def migrate(self, source: str, dest: str, env: dict[str, str], runs: int, *,
                experiment: str = EXPERIMENT, rerun: bool = False,
                with_kept: bool = False) -> dict[str, Any]:
        profile = None
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            name = f"{source.split(':')[0]}-{dest.split(':')[0]}{'-rerun' if rerun else ''}"
            profile = str(self.args.profile.resolve() / f"{name}-{runs}.prof")
        return self.measured("migrate", {"source": source, "dest": dest, "runs": runs,
                                         "experiments": [experiment], "rerun": rerun,
                                         "kept": with_kept, "profile": profile}, env)

    def measured(self, kind: str, spec: Mapping[str, Any], env: dict[str, str]
                 ) -> dict[str, Any]:
        """One measurement in a child, with the CPU the MLflow servers spent meanwhile (what
        bounds a migration from or to a server on this machine's two cores)."""
        before = self.servers_cpu()
        result = self.lab.run(kind, spec, env)
        result["servers_cpu_s"] = self.servers_cpu() - before
        return result

    def servers_cpu(self) -> float:
        """CPU seconds (user + system) the MLflow servers' processes have used so far."""
        return sum(_tree_cpu_seconds(svc.pid) for name, svc in self.lab.services.items()
                   if name.startswith("mlflow") and svc.pid is not None)

    def add(self, case: str, tool: str, pair: str, runs: int, result: dict[str, Any],
            **kw: Any) -> Row:
        row = Row(case, tool, pair, runs, result, **kw)
        self.rows.append(row)
        _log(f"  {case} {pair} ({tool}): {row.seconds:.1f} s, {row.rate:.1f} runs/s, "
             f"{result.get('requests')} requests, peak RSS {result.get('peak_rss_mb', 0):.0f} MB")
        return row

    def measure_throughput(self) -> None:
        """sqlite -> each bucket, the re-run over s3, the server -> s3."""
        a = self.args
        for backend in a.dests:
            dest = self.lab.fresh(backend, f"migrate-{backend}")
            _log(f"sqlite -> {backend}: {a.runs} runs")
            result = self.migrate(self.sqlite, dest.uri, self.env(dest), a.runs)
            self.add("migrate", "cloudtrack", f"sqlite -> {backend}", a.runs, result,
                     target=f">= {TARGET_RUNS_PER_S:g} runs/s")
            if backend == "s3":
                _log("re-run sqlite -> s3 over the migrated store")
                again = self.migrate(self.sqlite, dest.uri, self.env(dest), a.runs, rerun=True)
                self.add("re-run", "cloudtrack", "sqlite -> s3", a.runs, again,
                         target=f"<= {TARGET_RERUN_S:g} s",
                         note="(nothing to copy)")
        server = self.lab.targets["mlflow"]
        dest = self.lab.fresh("s3", "migrate-server")
        _log(f"server -> s3: {a.runs} runs")
        result = self.migrate(server.uri, dest.uri, self.env(server, dest), a.runs)
        self.add("migrate", "cloudtrack", "server -> s3", a.runs, result,
                 target=f">= {TARGET_RUNS_PER_S:g} runs/s")

    def measure_comparison(self) -> Row | None:
        """mlflow-export-import and cloudtrack migrate, each run as its command line: the same
        experiment of the source server into the destination server (as experiments of
        different names)."""
        a = self.args
        if not self.comparing:
            return None
        source, dest = self.lab.targets["mlflow"], self.lab.targets["mlflow-dest"]
        pair = "server -> server"
        env = self.env(source, dest, extra={"PYTHONPATH": os.pathsep.join(
            [str(self.lab.src), str(ROOT), str(self.export_import_dir)])})
        spec = {"source": source.uri, "dest": dest.uri, "experiment": COMPARE_EXPERIMENT,
                "runs": a.compare_runs}
        at_source, at_dest = {"MLFLOW_TRACKING_URI": source.uri}, {"MLFLOW_TRACKING_URI": dest.uri}
        tool = "mlflow_export_import.experiment."
        _log(f"{pair}: mlflow-export-import, {a.compare_runs} runs")
        mei = self.measured("cli", {**spec, "json_report": False,
                                   "dest_experiment": f"{COMPARE_EXPERIMENT}-export-import",
                                   "steps": [
            {"argv": ["-m", tool + "export_experiment", "--experiment", COMPARE_EXPERIMENT,
                      "--output-dir", "{folder}/export"], "env": at_source},
            {"argv": ["-m", tool + "import_experiment", "--experiment-name",
                      f"{COMPARE_EXPERIMENT}-export-import", "--input-dir", "{folder}/export"],
             "env": at_dest}]}, env)
        base = self.add("compare", "mlflow-export-import 1.2.0", pair, a.compare_runs, mei,
                        ratio=1.0, baseline="itself", note=_kept_note(mei))
        _log(f"{pair}: cloudtrack migrate, {a.compare_runs} runs")
        ct = self.measured("cli", {**spec, "json_report": True,
                                  "dest_experiment": COMPARE_EXPERIMENT, "steps": [
            {"argv": ["-m", "cloudtrack.cli", "migrate", source.uri, dest.uri, "--experiment",
                      COMPARE_EXPERIMENT, "--json"], "env": {}}]}, env)
        row = self.add("compare", "cloudtrack", pair, a.compare_runs, ct,
                       ratio=base.seconds / float(ct["seconds"]),
                       baseline="export-import's time", target=f">= {TARGET_SPEEDUP:g}x",
                       note=_kept_note(ct))
        row.met = row.ratio is not None and row.ratio >= TARGET_SPEEDUP
        return base

    def measure_memory(self) -> None:
        a = self.args
        first: Row | None = None
        for n in a.memory_runs:
            dest = self.lab.fresh("local", f"memory-{n}")
            _log(f"memory: sqlite ({n} runs) -> local store")
            result = self.migrate(self.memory_source(n), dest.uri, self.env(), n)
            row = self.add("memory", "cloudtrack", "sqlite -> local", n, result,
                           note=f"({a.memory_points} points per metric)")
            if first is None:
                first = row
                row.ratio, row.baseline = 1.0, "itself (peak RSS)"
            else:
                row.ratio = float(result["peak_rss_mb"]) / float(first.result["peak_rss_mb"])
                row.baseline = f"peak RSS at {first.runs} runs"
                row.target = f"<= {TARGET_MEMORY:g}x"
                row.met = row.ratio <= TARGET_MEMORY

    def relate(self, base: Row | None) -> None:
        """Throughput rows against export-import's rate (server -> server); the re-run against
        the first migration into the same store."""
        first_s3 = next((r for r in self.rows if r.case == "migrate"
                         and r.pair == "sqlite -> s3"), None)
        for row in self.rows:
            if row.case == "migrate":
                row.met = row.rate >= TARGET_RUNS_PER_S
                if base is not None:
                    row.ratio = row.rate / base.rate
                    row.baseline = f"export-import's runs/s ({base.pair})"
            elif row.case == "re-run":
                row.met = row.seconds <= TARGET_RERUN_S
                if first_s3 is not None:
                    row.ratio = row.seconds / first_s3.seconds
                    row.baseline = "the first migration's time"

    def run(self) -> None:
        if "throughput" in self.args.cases:
            self.measure_throughput()
        base = self.measure_comparison()
        if "memory" in self.args.cases:
            self.measure_memory()
        self.relate(base)

    def table(self) -> str:
        return format_table([HEAD, *(r.cells() for r in self.rows)])


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated run counts, not {value!r}")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = new_parser("benchmark_migrate.py", __doc__)
    p.add_argument("--runs", type=int, default=2000, help="runs of the migrated experiment")
    p.add_argument("--points", type=int, default=100, help="points of each of the 5 metrics")
    p.add_argument("--dests", type=lambda v: _list(v, DESTS, "--dests"), default=list(DESTS),
                   help="buckets the sqlite source goes into (default: s3,gcs,azure)")
    p.add_argument("--compare-runs", type=int, default=300,
                   help="runs of the experiment both tools copy (default 300; 0: no "
                        "comparison, no mlflow-export-import)")
    p.add_argument("--memory-runs", type=_sizes, default=[2000, 20000],
                   help="sizes of the memory case's sources (default 2000,20000)")
    p.add_argument("--memory-points", type=int, default=10,
                   help="points of each metric in the memory case's sources (default 10)")
    p.add_argument("--cases", type=lambda v: _list(v, CASES, "--cases"), default=list(CASES),
                   help="what to measure (default: throughput,compare,memory; throughput "
                        "includes the re-run)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: checks that everything runs, measures nothing worth "
                        "reading (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", type=Path, default=None,
                   help="cProfile every thread of each cloudtrack migration into this folder "
                        "(slows them down: for finding costs, not for the table)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.compare_runs < 0:
        p.error("--compare-runs cannot be negative")
    for name in ("runs", "points", "memory_points"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 0:
        p.error("--latency-ms cannot be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1], argv[2], WORKERS)
    args = parse_args(argv)
    meta = new_meta(args.latency_ms, settings=dict(args.setting), cases=args.cases,
                    runs=args.runs, points=args.points, dests=args.dests,
                    compare_runs=args.compare_runs, memory_runs=args.memory_runs,
                    memory_points=args.memory_points)
    lab = Lab(args.latency_ms, script=Path(__file__).resolve(), timeouts=TIMEOUTS,
              settings=dict(args.setting))
    bench = MigrateBenchmark(args, lab)

    def body() -> None:
        # Keyed as scripts/benchmark.py's Lab finds them (SERVICE_OF).
        services = {"mlflow": "mlflow", "local": "local"}
        if "throughput" in args.cases:
            services[SERVICE_OF["s3"]] = SERVICE_OF["s3"]
            services.update({SERVICE_OF[d]: SERVICE_OF[d] for d in args.dests})
        if bench.comparing:
            services["mlflow-dest"] = "mlflow"
        _log(f"starting {', '.join(services)}; proxies add {args.latency_ms:g} ms per round trip")
        with ThreadPoolExecutor(2) as pool:
            installing = pool.submit(bench.install_export_import) if bench.comparing else None
            lab.start(services)
            if installing is not None:
                installing.result()
        lab.add_mlflow()
        if bench.comparing:
            lab.add_mlflow("mlflow-dest")
        bench.populate()
        bench.run()

    failed = run_lab(lab, meta, body, partial=bench.table)
    if failed is None:
        print(header("cloudtrack migrate benchmark", meta))
        print(f"# cases: {','.join(args.cases)}; sizes: runs={args.runs} x ({PARAMS} params, "
              f"{TAGS} tags, {METRICS} metrics x {args.points} points, {len(ARTIFACTS)} "
              f"artifacts) compare={args.compare_runs} "
              f"memory={','.join(map(str, args.memory_runs))} x {args.memory_points} points; "
              f"total {meta['seconds']:.0f} s")
        print(bench.table())
    elif failed == 130 and bench.rows:  # interrupted: what was measured is still worth keeping
        print(bench.table())
    if args.json is not None and (failed is None or bench.rows):
        # Also after a failure or an interruption: the rows measured until then.
        args.json.write_text(json.dumps({"meta": meta, "complete": failed is None, "rows": [
            {**asdict(r), "seconds": r.seconds, "runs_per_s": r.rate, "verdict": r.verdict}
            for r in bench.rows]}, indent=2, default=str) + "\n")
    return 0 if failed is None else failed

if __name__ == "__main__":
    sys.exit(main())
