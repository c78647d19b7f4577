"""Smoke test of benchmarks/bench_tile.py: the quick run completes and reports every row.

No timing thresholds: only that each measured throughput is a positive finite number.
"""

import math

EXPECTED_ROWS = (
    [f"{op}.{tier}.{k}" for op in ("mvm", "mvm_tn") for tier in ("small", "batch", "large")
     for k in ("numpy_1t", "numpy_nt", "numba_1t", "numba_nt", "numba_nt_off16")]
    + [f"periph.{tier}.{k}" for tier in ("small", "batch", "large")
       for k in ("ideal", "tile_mvm", "dac", "diff", "adc")]
    + ["ir.exact", "ir.exact_solve", "ir.relaxed_1t", "ir.relaxed_nt"]
    + [f"prog.{tier}.{k}" for tier in ("small", "large") for k in ("verify", "gdp")]
)


def test_quick_tile_benchmark_reports_every_row(quick_benchmark):
    result, stdout = quick_benchmark(
        "bench_tile.py", EXPECTED_ROWS,
        ("1. ideal tile MVM", "2. tile MVM with 8-bit DAC and ADC", "3. IR drop",
         "4. programming a tile"))
    for tier in ("small", "large"):
        prog = result["programming"][tier]
        for key in ("gdp_s_per_tile", "gdp_s_per_iteration", "verify_s_per_tile",
                    "verify_s_per_iteration"):
            assert math.isfinite(prog[key]) and prog[key] > 0, (tier, key)
    assert result["programming"]["large"]["gdp_extrapolated"]
    assert "for scale: a PyTorch-based simulator" in stdout
