"""Smoke test of benchmarks/bench_pcm.py: the quick run completes and reports every row.

No timing thresholds: only that each measured throughput is a positive finite number.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pcm.py"

EXPECTED_ROWS = (
    [f"set.{tier}.{k}" for tier in ("small", "large")
     for k in ("numba_1t", "numba_nt", "numpy_generator", "numpy_counter")]
    + [f"pv.small.{what}_{k}" for k in ("1t", "nt") for what in ("devices", "pulses")]
    + [f"read.{tier}.{k}" for tier in ("small", "large")
       for k in ("numba_1t", "numba_nt", "numpy_counter", "noise_free_1t", "noise_free_nt")]
    + ["trace.kernel", "trace.subset", "trace.full", "trace.run"]
)


def test_quick_benchmark_reports_every_row(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    rows = {r["id"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(EXPECTED_ROWS)
    for r in rows.values():
        for key in ("throughput", "ratio", "best_s", "median_s"):
            value = r[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (r["id"], key)
        assert r["baseline"] in rows
        assert r["label"] in proc.stdout
    for section in ("1. partial-SET pulses", "2. program-and-verify", "3. drifted read",
                    "4. trace writing"):
        assert section in proc.stdout
    assert result["machine"]["numpy"] and result["machine"]["numba_threads_used"] >= 1
