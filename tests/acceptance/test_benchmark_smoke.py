"""scripts/benchmark.py runs end to end at tiny sizes and prints its table.

Only that it runs: the timings of a smoke run on a shared machine mean nothing, so nothing
here compares them (docs/benchmarks.md has the real numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark.py"

#: The emulators share this machine with the rest of the suite: in one CI run moto answered
#: nothing for over 20 s, two 10 s read timeouts, and the migrate benchmark's store gave up
#: (tests/acceptance/test_benchmark_migrate_smoke.py).  What a store does when its service
#: stalls is tested in tests/chaos and tests/test_retry.py; here only that the script runs.
PATIENT = ["--setting", "CLOUDTRACK_READ_TIMEOUT=60", "--setting", "CLOUDTRACK_RETRY_DEADLINE=300"]

#: Every workload against one proxied backend (s3: moto is needed for A's baseline anyway),
#: at sizes that make each child process mostly interpreter start-up.
SMOKE = ["--backends", "s3", "--workloads", "L,S,H,A", "--latency-ms", "2", "--runs", "40",
         "--points", "2000", "--epochs", "3", "--artifact-files", "5", "--artifact-big-mb", "1",
         *PATIENT]


@pytest.mark.timeout(900)
def test_benchmark_runs_end_to_end_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *SMOKE, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=840, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("workload")), None)
    assert header is not None, proc.stdout
    assert lines[header].split() == ["workload", "variant", "backend", "seconds", "x", "MLflow",
                                     "requests", "round-trips", "connections", "service-s",
                                     "target", "verdict"]
    table = [line.split() for line in lines[header + 2:] if line.strip()]
    assert {row[0] for row in table} == {"L", "S", "H", "A"}, proc.stdout

    result = json.loads(out.read_text())
    assert result["problems"] == []
    assert result["meta"]["settings"] == {"CLOUDTRACK_READ_TIMEOUT": "60",
                                          "CLOUDTRACK_RETRY_DEADLINE": "300"}
    rows = {(r["workload"], r["variant"], r["backend"]): r for r in result["rows"]}
    expected = {
        ("L", "mlflow server", "sqlite"), ("L", "mlflow server, async logging", "sqlite"),
        ("L", "cloudtrack default", "s3"), ("L", "cloudtrack strict", "s3"),
        ("S", "cold", "sqlite server"), ("S", "warm", "sqlite server"),
        ("S", "cold, first search ever", "s3"), ("S", "cold", "s3"), ("S", "warm", "s3"),
        ("H", "mlflow server", "sqlite"), ("H", "cloudtrack", "s3"),
        ("A", "mlflow S3ArtifactRepository", "s3"), ("A", "cloudtrack", "s3"),
    }
    assert set(rows) == expected
    for key, row in rows.items():
        # Every row went through a proxy that counted it, and has a ratio to its baseline.
        assert row["requests"] is not None and row["requests"] >= 1, key
        assert row["network"]["round_trips"] >= row["requests"], key
        assert row["network"]["service_us"] > 0, key
        assert row["seconds"] > 0 and row["ratio"] is not None, key
    # The trainer loop's requests: MLflow's REST client pays one per logging call (3 epochs x
    # 3 metrics + 10 params + 5 tags), cloudtrack's default mode buffers them.
    assert rows[("L", "mlflow server", "sqlite")]["requests"] >= 24
    assert rows[("L", "cloudtrack default", "s3")]["requests"] < 24
