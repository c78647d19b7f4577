"""The spiking benchmark runs, its Numba core agrees with the numpy reference and it reports
positive event rates (no timing test)."""

import re
import subprocess
import sys
from pathlib import Path


def test_bench_spiking_quick_runs():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_spiking.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    agree = re.findall(r"agree to 1e-12: (\w+)", out)
    assert agree and all(a == "True" for a in agree), out
    rates = [float(x) for x in re.findall(r"^\s+\d+x\d+x\d+\s+\S.*?\s+[\d.]+\s+([\d.]+)\s+"
                                          r"[\d.]+\s+[\d.]+x$", out, re.MULTILINE)]
    assert len(rates) == 6 and all(r > 0 for r in rates), out
    assert re.search(r"DSTD M=\d+ \(numpy\)\s+[\d.]+\s+[\d.]+ x exact", out), out
