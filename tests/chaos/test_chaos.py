"""Chaos: many processes logging through a proxy that fails requests, on S3, Azure and GCS.

One workload per backend and profile, behind the seeded fault proxy (``tests/fixtures/faults.py``):
8 writers in runs of their own, racing ``mlflow.set_experiment`` on one name; 2 writers sharing
one run; 4 processes registering versions of one model; then a SIGKILL round — writers killed
mid-run, and fresh processes that log on into the killed writers' runs and end them.  Strict
mode runs at 5% faults on every request; the default mode buffers and writes about once a
second, so it makes few requests and gets a heavier rate; "exhausted" (strict, two attempts per
operation) makes retries run out, so that calls raise everywhere, setup calls included.

Each worker writes down what it tried, what it was told is stored, and the errors it saw
(``tests/chaos/workers.py``).  Read back through a client without the proxy: every
acknowledged point, param and tag is there exactly once, nothing that was never logged is,
one experiment has the raced name, version numbers are distinct and gap-free and no call got
two, the latest values agree with the histories, every object parses, no process hung, and
every error a caller saw names the operation and the URI.
"""

from __future__ import annotations

import collections
import gzip
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, ViewType

from cloudtrack.config import resolve
from cloudtrack.model_registry import BlobRegistryStore
from cloudtrack.store import layout, pages, records
from cloudtrack.tracking import BlobTrackingStore
from tests.chaos import workers
from tests.chaos.conftest import FAULT_COUNTS
from tests.fixtures import workers as forkserver
from tests.fixtures.faults import FaultyFactory, FaultyStore

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

BACKENDS = ["s3", "azure", "gcs"]
#: Mode, fault rate and attempts per profile.  The default mode's flushes are few requests, so
#: they get more faults; "exhausted" gives each operation two attempts at a rate where many
#: run out, so that calls raise — mid set_experiment, create_run, create_model_version too.
PROFILES = {"strict": ("true", 0.05, None), "default": ("false", 0.2, None),
            "exhausted": ("true", 0.2, 2)}
SEED = int(os.environ.get("CLOUDTRACK_CHAOS_SEED", "11"))
EXPERIMENT = "chaos-raced"
MODEL = "chaos-model"
#: Points per writer; versions per registering process.
POINTS = 40
VERSIONS = 5
#: A held answer ("timeout") outlasts the client's read timeout, which is short to keep the
#: suite fast.
READ_TIMEOUT = 2.0
HOLD = 3.0
#: No worker may take longer than this: past it, it hung.
WORKER_TIMEOUT = 150.0


class Crowd:
    """Worker processes with their record files; a hang is killed and remembered."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: dict[str, Any] = {}
        self.killed: set[str] = set()
        self.hung: list[str] = []

    def path(self, name: str) -> str:
        return str(self.tmp / f"{name}.jsonl")

    def start(self, name: str, target: Any, spec: dict[str, Any]) -> None:
        proc = forkserver.context().Process(target=target, args=(self.env, spec, self.path(name)),
                                            name=name)
        proc.start()
        self.procs[name] = proc

    def join(self, names: list[str], timeout: float = WORKER_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.procs[name]
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                self.hung.append(name)
                proc.kill()
                proc.join(10)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        self.killed.add(name)

    def lines(self, name: str) -> list[dict[str, Any]]:
        return workers.read(self.path(name))

    def crashed(self) -> dict[str, int]:
        return {name: p.exitcode for name, p in self.procs.items()
                if name not in self.killed and name not in self.hung and p.exitcode != 0}

    def acked_metrics(self, name: str) -> int:
        return sum(1 for line in self.lines(name) if line.get("ack") == "metric")


def run_of(lines: list[dict[str, Any]]) -> str | None:
    return next((line["run_id"] for line in lines if line.get("ack") == "run"), None)


def parse_every_object(fs: FaultyStore) -> int:
    """Walk the store without the proxy and parse every object as its kind of record."""
    blobs = fs.open_direct()
    count = 0
    try:
        for info in blobs.list(""):
            data = blobs.get(info.key)
            uri = blobs.object_uri(info.key)
            if info.key.startswith(layout.INDEX):  # pages: lines of records
                _, entries = pages.unpack(data)
                for _, record_bytes in entries.values():
                    records.parse(record_bytes, uri)
                count += 1
                continue
            if info.key.endswith(".json.gz"):
                record = records.parse(gzip.decompress(data), uri)
                assert isinstance(record.get("heads"), dict), uri
            else:
                record = records.parse(data, uri)
            if info.key.startswith("history/"):
                assert isinstance(record.get("metrics"), list), uri
            elif info.key.startswith("heads/"):
                assert record["info"]["run_id"] in info.key, uri
            elif info.key.startswith("experiment-names/"):
                assert "experiment_id" in record, uri
            elif info.key.startswith("registry/versions/"):
                assert int(record["version"]) == int(info.key.rsplit("/", 1)[1][:-5]), uri
            count += 1
    finally:
        blobs.close()
    return count


#: An error that ran out of retries: "<operation> <object URI> failed after … Run `cloudtrack
#: doctor <store URI>` to see why.".
GAVE_UP = re.compile(r"\b(GET|PUT|PUT-IF-ABSENT|PUT-IF-VERSION|LIST|DELETE|HEAD|COPY|UPLOAD|"
                     r"DOWNLOAD|CREATE) (\S+) failed after \d+ attempts?\b")


def check_error(error: dict[str, Any], fs: FaultyStore) -> str | None:
    """What is unclear about an error a caller saw; None when it names the operation and the
    object's URI in the store, and ends with the doctor command for the store."""
    message, root = error["message"], fs.uri.rstrip("/")
    found = GAVE_UP.search(message)
    if found is None or not found.group(2).startswith(root):
        return (f"{error['error']} raised {error['type']} without naming the operation and an "
                f"object of {root}: {message[:400]}")
    if f"cloudtrack doctor {root}" not in message:
        return f"{error['error']} raised {error['type']} without the doctor command: {message[:400]}"
    return None


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_acknowledged_is_lost_under_faults(
        faulty: FaultyFactory, backend: str, profile: str, tmp_path: Path,
        record_property: Any) -> None:
    strict, rate, attempts = PROFILES[profile]
    fs = faulty(backend, rate=rate, seed=SEED, retry_after=0.2, hold_seconds=HOLD)
    env = {**fs.env, "MLFLOW_TRACKING_URI": fs.uri, "MLFLOW_REGISTRY_URI": fs.uri,
           "CLOUDTRACK_STRICT": strict,
           "CLOUDTRACK_READ_TIMEOUT": str(READ_TIMEOUT), "GIT_PYTHON_REFRESH": "quiet",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    if attempts:
        env["CLOUDTRACK_MAX_ATTEMPTS"] = str(attempts)
    clean_config = resolve(fs.uri, {**fs.direct_env, "CLOUDTRACK_STRICT": "true"})
    clean = BlobTrackingStore(fs.uri, config=clean_config)
    registry = BlobRegistryStore(fs.uri, config=clean_config)
    shared = clean.create_run("0", "chaos", 0, [], "shared").info.run_id
    crowd = Crowd(tmp_path, env)
    started = time.monotonic()

    # Round one: 8 own runs, 2 writers in one run, 4 registering processes, all at once.
    own = [f"own{i}" for i in range(8)]
    pair = [f"shared{i}" for i in range(2)]
    regs = [f"reg{i}" for i in range(4)]
    for name in own:
        crowd.start(name, workers.writer, {"experiment": EXPERIMENT, "key": name, "n": POINTS,
                                           "flush": 5})
    for name in pair:
        crowd.start(name, workers.writer, {"run_id": shared, "key": name, "n": POINTS,
                                           "flush": 5, "end": False})
    for name in regs:
        crowd.start(name, workers.registrar, {"model": MODEL, "n": VERSIONS,
                                              "source": f"file:///chaos/{name}"})
    crowd.join(own + pair + regs)
    round_one = time.monotonic() - started

    # The SIGKILL round: writers killed mid-run, then fresh processes log on into their runs.
    victims = [f"victim{i}" for i in range(3)]
    for name in victims:
        crowd.start(name, workers.writer, {"experiment": EXPERIMENT, "key": name, "n": None,
                                           "flush": 3, "pause": 0.02})
    wait_until = time.monotonic() + 90
    while time.monotonic() < wait_until and not all(
            crowd.acked_metrics(v) >= 12 or not crowd.procs[v].is_alive() for v in victims):
        time.sleep(0.2)
    for name in victims:
        if crowd.procs[name].is_alive():
            crowd.kill(name)
    heirs = []
    for name in victims:
        run_id = run_of(crowd.lines(name))
        if run_id is not None:
            heirs.append(f"heir-{name}")
            crowd.start(heirs[-1], workers.writer, {"run_id": run_id, "key": name,
                                                    "start": 100_000, "n": 15, "flush": 5})
    crowd.join(heirs)
    elapsed = time.monotonic() - started

    stats = fs.proxy.stats()
    faults = {k: v for k, v in stats["faults"].items() if v}
    summary = (f"{backend} {profile} rate {rate:g} seed {SEED}: {stats['requests']} "
               f"requests, {stats['faulted']} faults {faults}; {elapsed:.0f}s "
               f"(round one {round_one:.0f}s)")
    record_property(FAULT_COUNTS, summary)
    print(summary)

    names = own + pair + regs + victims + heirs
    lines = {name: crowd.lines(name) for name in names}
    problems: list[str] = []
    problems += [f"{name} hung (still running after {WORKER_TIMEOUT:g}s)" for name in crowd.hung]
    problems += [f"{name} exited with {code}" for name, code in crowd.crashed().items()]
    if not crowd.killed:
        problems.append("no writer was still running to be killed: the SIGKILL round did nothing")
    for name in names:
        for line in lines[name]:
            if "error" in line and (why := check_error(line, fs)):
                problems.append(f"{name}: {why}")
    errors = collections.Counter((name, line["error"]) for name in names
                                 for line in lines[name] if "error" in line)

    # One experiment of the raced name, and every writer in it.
    same_name = [e for e in clean.search_experiments(view_type=ViewType.ALL, max_results=1000)
                 if e.name == EXPERIMENT]
    if len(same_name) != 1:
        problems.append(f"{len(same_name)} experiments named {EXPERIMENT!r}: "
                        f"{[e.experiment_id for e in same_name]}")
    exp_ids = {line["experiment_id"] for name in own + victims for line in lines[name]
               if line.get("ack") == "experiment"}
    if len(exp_ids) != 1:
        problems.append(f"set_experiment answered different ids {sorted(exp_ids)}")

    # Every acknowledged value present exactly once; nothing present that was never tried.
    tried: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    tried_entries: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    acked: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    acked_entries: dict[tuple[str, str, str], str] = {}
    writer_of = {name: run_of(lines[name]) for name in own + victims}
    writer_of.update({name: shared for name in pair})
    writer_of.update({h: writer_of[h.removeprefix("heir-")] for h in heirs})
    for name, run_id in writer_of.items():
        if run_id is None:
            continue
        for line in lines[name]:
            kind = line.get("try")
            if kind == "metric":
                tried[run_id, line["key"]].add(line["step"])
            elif kind in ("param", "tag"):
                tried_entries[run_id, kind].add(line["key"])
            kind = line.get("ack")
            if kind == "metric":
                acked[run_id, line["key"]].add(line["step"])
            elif kind in ("param", "tag"):
                acked_entries[run_id, kind, line["key"]] = line["value"]
    runs = clean.search_runs([e.experiment_id for e in clean.search_experiments(
        view_type=ViewType.ALL, max_results=1000)], "", ViewType.ALL, max_results=10_000)
    logged_runs = {r for r, _ in tried}
    for run in runs:
        rid = run.info.run_id
        for key, latest in run.data.metrics.items():
            history = clean.get_metric_history(rid, key)
            steps = collections.Counter(m.step for m in history)
            twice = sorted(s for s, n in steps.items() if n > 1)
            if twice:
                problems.append(f"run {rid} {key}: steps stored twice {twice[:10]}")
            never = sorted(set(steps) - tried[rid, key])
            if never:
                problems.append(f"run {rid} {key}: steps never logged {never[:10]}")
            wrong = [m.step for m in history if m.value != workers.value(key, m.step)]
            if wrong:
                problems.append(f"run {rid} {key}: wrong values at steps {wrong[:10]}")
            last = max(history, key=lambda m: (m.step, m.timestamp, m.value), default=None)
            if last is not None and latest != last.value:
                problems.append(f"run {rid} {key}: latest value {latest} (step "
                                f"{int(latest) % 1_000_000}) but the history ends at step "
                                f"{last.step}")
        for kind, entries in (("param", run.data.params), ("tag", run.data.tags)):
            stray = sorted(k for k in entries if not k.startswith("mlflow.")
                           and k not in tried_entries[rid, kind])
            if stray:
                problems.append(f"run {rid}: {kind}s never logged {stray[:10]}")
        if rid not in logged_runs and run.data.metrics:
            problems.append(f"run {rid} holds metrics no writer logged")
    by_id = {run.info.run_id: run for run in runs}
    for (rid, key), steps in sorted(acked.items()):
        stored = {m.step for m in clean.get_metric_history(rid, key)}
        lost = sorted(steps - stored)
        if lost:
            problems.append(f"run {rid} {key}: {len(lost)} acknowledged points lost, steps "
                            f"{lost[:10]}")
    for (rid, kind, key), value in sorted(acked_entries.items()):
        run = by_id.get(rid)
        entries = (run.data.params if kind == "param" else run.data.tags) if run else {}
        if entries.get(key) != value:
            problems.append(f"run {rid}: acknowledged {kind} {key}={value} reads "
                            f"{entries.get(key)!r}")

    # Versions: distinct, gap-free, one per call.
    versions = registry.search_model_versions(f"name='{MODEL}'", max_results=10_000)
    numbers = sorted(int(v.version) for v in versions)
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"version numbers not gap-free: {numbers}")
    sources = collections.Counter(v.source for v in versions)
    dupes = sorted(s for s, n in sources.items() if n > 1)
    if dupes:
        problems.append(f"one call registered several versions: {dupes}")
    tried_sources = {line["source"] for name in regs for line in lines[name]
                     if line.get("try") == "version"}
    if set(sources) - tried_sources:
        problems.append(f"versions nobody registered: {sorted(set(sources) - tried_sources)}")
    stored = {int(v.version): v.source for v in versions}
    acked_versions = [(line["version"], line["source"]) for name in regs
                      for line in lines[name] if line.get("ack") == "version"]
    if len({n for n, _ in acked_versions}) != len(acked_versions):
        problems.append(f"one version number answered twice: {sorted(acked_versions)}")
    for number, source in acked_versions:
        if stored.get(number) != source:
            problems.append(f"version {number} answered for {source} holds "
                            f"{stored.get(number)!r}")
    unacked = len(numbers) - len(acked_versions)
    raised = sum(n for (name, op), n in errors.items() if op == "create_model_version")
    if unacked > raised:
        problems.append(f"{unacked} versions no call was answered for, {raised} calls raised")

    objects = parse_every_object(fs)
    clean.close()

    assert stats["faulted"] >= 5, f"too few faults to mean anything: {stats}"
    assert sum(len(v) for v in acked.values()) >= 4 * POINTS, "the writers acknowledged little"
    if attempts:
        assert sum(errors.values()) >= 5, f"retries hardly ran out: {dict(errors)}"
    assert not problems, f"{summary}; {objects} objects; errors seen {dict(errors)}:\n" + \
        "\n".join(problems[:60])


def test_flush_returns_once_the_write_in_flight_landed(faulty: FaultyFactory,
                                                        tmp_path: Path) -> None:
    """``mlflow.flush_async_logging()`` (``store.flush()``) is where a default-mode writer
    knows its data is stored.  A background pass that took the run's data just before, and is
    still writing it, must be waited for: otherwise a process that flushes and then ends
    without the interpreter's exit hooks (SIGKILL, ``os._exit`` in a forked child) loses data
    that flush said was written — how the Azurite runs of test_many_writers lost a writer's
    whole history (tests/chaos/README.md)."""
    fs = faulty("s3", rate=0.0)
    env = {**fs.env, "CLOUDTRACK_STRICT": "false", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    clean = BlobTrackingStore(fs.uri, config=resolve(fs.uri, {**fs.direct_env,
                                                              "CLOUDTRACK_STRICT": "true"}))
    run_id = clean.create_run("0", "chaos", 0, [], "flushed").info.run_id
    buffered = BlobTrackingStore(fs.uri, config=resolve(fs.uri, env))
    try:
        buffered.log_metric(run_id, Metric("m", 0.0, 1, 0))
        fs.proxy.configure(latency_ms=2000)  # each write now takes 2 s
        for step in range(1, 50):
            buffered.log_metric(run_id, Metric("m", float(step), 1, step))
        deadline = time.monotonic() + 10
        while buffered._flusher.pending_runs() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the background pass has taken the points
        assert not buffered._flusher.pending_runs(), "the background pass never started"
        buffered.flush()
        stored = len(clean.get_metric_history(run_id, "m"))
        assert stored == 50, f"flush() returned with {stored} of 50 points stored"
    finally:
        fs.proxy.configure(latency_ms=0)
        buffered.close()
        clean.close()
