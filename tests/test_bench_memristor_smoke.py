"""The memristor benchmark runs and reports positive, finite throughputs (no timing test)."""

import re
import subprocess
import sys
from pathlib import Path


def test_bench_memristor_quick_runs():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_memristor.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    rates = [float(x) for x in re.findall(r"([\d.]+) M pulses/s", out)]
    assert len(rates) == 3 and all(r > 0 for r in rates)
    for rule in ("float", "analog", "mixed"):
        assert re.search(rf"^\s+{rule}\s+[\d.]+\s+\d+%\s+\d+%$", out, re.MULTILINE), out
