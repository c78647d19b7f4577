"""Smoke test of benchmarks/bench_tile.py: the quick run completes and reports every row.

No timing thresholds: only that each measured throughput is a positive finite number.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_tile.py"

EXPECTED_ROWS = (
    [f"{op}.{tier}.{k}" for op in ("mvm", "mvm_tn") for tier in ("small", "batch", "large")
     for k in ("numpy_1t", "numpy_nt", "numba_1t", "numba_nt", "numba_nt_off16")]
    + [f"periph.{tier}.{k}" for tier in ("small", "batch", "large")
       for k in ("ideal", "tile_mvm", "dac", "diff", "adc")]
    + ["ir.exact", "ir.exact_solve", "ir.relaxed_1t", "ir.relaxed_nt"]
    + [f"prog.{tier}.{k}" for tier in ("small", "large") for k in ("verify", "gdp")]
)


def test_quick_tile_benchmark_reports_every_row(tmp_path):
    out = tmp_path / "bench_tile.json"
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
    for section in ("1. ideal tile MVM", "2. tile MVM with 8-bit DAC and ADC", "3. IR drop",
                    "4. programming a tile"):
        assert section in proc.stdout
    for tier in ("small", "large"):
        prog = result["programming"][tier]
        for key in ("gdp_s_per_tile", "gdp_s_per_iteration", "verify_s_per_tile",
                    "verify_s_per_iteration"):
            assert math.isfinite(prog[key]) and prog[key] > 0, (tier, key)
    assert result["programming"]["large"]["gdp_extrapolated"]
    assert "for scale: a PyTorch-based simulator" in proc.stdout
    assert result["machine"]["numpy"] and result["machine"]["numba_threads_used"] >= 1
