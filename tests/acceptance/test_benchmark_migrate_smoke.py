"""scripts/benchmark_migrate.py runs end to end at tiny sizes and prints its table.

Only that it runs, and that every row was measured the way the table says: the timings of a
smoke run on a shared machine mean nothing, so nothing here compares them (docs/benchmarks.md
has the real numbers).  It installs mlflow-export-import from PyPI into its scratch folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.test_benchmark_smoke import PATIENT

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark_migrate.py"


@pytest.mark.timeout(1200)
def test_benchmark_migrate_runs_end_to_end_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--latency-ms", "2",
                           *PATIENT, "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=1140, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("case")), None)
    assert header is not None, proc.stdout
    assert [c.strip() for c in lines[header].split("  ") if c.strip()] == [
        "case", "tool", "source -> dest", "runs", "seconds", "runs/s", "ratio", "ratio of",
        "requests", "req/run", "service-s", "cpu-s", "server-cpu-s", "peak RSS MB (+child)",
        "target", "verdict"]

    result = json.loads(out.read_text())
    # The results say under which settings they were measured.
    assert result["meta"]["settings"]["CLOUDTRACK_READ_TIMEOUT"] == "60"
    rows = result["rows"]
    by_key = {(r["case"], r["tool"], r["pair"], r["runs"]): r for r in rows}
    assert set(by_key) == {
        ("migrate", "cloudtrack", "sqlite -> s3", 20),
        ("re-run", "cloudtrack", "sqlite -> s3", 20),
        ("migrate", "cloudtrack", "sqlite -> gcs", 20),
        ("migrate", "cloudtrack", "sqlite -> azure", 20),
        ("migrate", "cloudtrack", "server -> s3", 20),
        ("compare", "mlflow-export-import 1.2.0", "server -> server", 4),
        ("compare", "cloudtrack", "server -> server", 4),
        ("memory", "cloudtrack", "sqlite -> local", 20),
        ("memory", "cloudtrack", "sqlite -> local", 60),
    }
    for key, row in by_key.items():
        # Every row has a ratio, and every row over the network went through the proxies.
        assert row["seconds"] > 0 and row["ratio"] is not None, key
        assert row["result"]["peak_rss_mb"] > 0, key
        if key[2].startswith("sqlite"):  # the sqlite reader process's peak, when sampled
            assert row["result"]["children_peak_rss_mb"] >= 0, key
        if key[0] != "memory":
            assert row["result"]["requests"] >= 1, key
            assert row["result"]["network"]["service_us"] > 0, key
        if key[2].startswith("server"):  # the MLflow servers' CPU while they answered
            assert row["result"]["servers_cpu_s"] > 0, key
    # A re-run over the migrated store copies nothing, in a few requests.
    rerun = by_key[("re-run", "cloudtrack", "sqlite -> s3", 20)]["result"]
    assert rerun["report"]["unchanged"]["runs"] == 20 and not rerun["report"]["copied"].get("runs")
    # A LIST of heads and of head pages, at most 16 page GETs, the rest: not one per run.
    assert rerun["requests"] <= 16 + 10
    # What each tool kept of the source: cloudtrack every time and user, export-import none.
    kept = {tool: by_key[("compare", tool, "server -> server", 4)]["result"]["kept"]
            for tool in ("cloudtrack", "mlflow-export-import 1.2.0")}
    assert kept["cloudtrack"] == {"runs": 4, "run ids": 0, "start times": 4, "end times": 4,
                                  "users": 4}
    assert kept["mlflow-export-import 1.2.0"]["runs"] == 4
    assert kept["mlflow-export-import 1.2.0"]["start times"] == 0
