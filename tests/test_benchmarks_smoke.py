"""Smoke test of benchmarks/bench_pcm.py: the quick run completes and reports every row.

No timing thresholds: only that each measured throughput is a positive finite number.
"""

EXPECTED_ROWS = (
    [f"set.{tier}.{k}" for tier in ("small", "large")
     for k in ("numba_1t", "numba_nt", "numpy_generator", "numpy_counter")]
    + [f"pv.small.{what}_{k}" for k in ("1t", "nt") for what in ("devices", "pulses")]
    + [f"read.{tier}.{k}" for tier in ("small", "large")
       for k in ("numba_1t", "numba_nt", "numpy_counter", "noise_free_1t", "noise_free_nt")]
    + ["trace.kernel", "trace.subset", "trace.full", "trace.run"]
)


def test_quick_benchmark_reports_every_row(quick_benchmark):
    quick_benchmark("bench_pcm.py", EXPECTED_ROWS,
                    ("1. partial-SET pulses", "2. program-and-verify", "3. drifted read",
                     "4. trace writing"))
