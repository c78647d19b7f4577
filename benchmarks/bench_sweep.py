"""Sweep throughput: the same sweep run serially in one process and on a dask LocalCluster.

    python benchmarks/bench_sweep.py [--runs 32] [--size 64] [--workers 2]

Prints a table: wall time serially (``run_scenario`` one after another, Numba warm), on a
running LocalCluster of ``--workers`` × 1 thread with warm workers (its start-up reported
apart), the speed-up,
and the per-task overhead of the sweep engine, (workers·T_cluster − T_serial)/runs, which
covers scheduling, pickling, the temporary-file rename and the sweep.h5 rewrite. From the
measured per-run cost it extrapolates what a 1,000-run sweep needs on a 64-core cluster.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

BASE = """
[run]
name = "bench"
seed = 1
[array]
rows = {size}
cols = {size}
[record]
subset = 16
[[timeline]]
kind = "program"
verify = {{ differential = true }}
[[timeline]]
kind = "calibrate"
t = 1.0
[[timeline]]
kind = "read"
times = {{ start = 1.0, stop = 3.1536e7, num = 16 }}
full_times = [1.0]
[[timeline]]
kind = "mvm"
times = {{ start = 1.0, stop = 3.1536e7, num = 16 }}
"""

SWEEP = """
[sweep]
name = "bench"
base = "base.toml"
seed = 3
repeats = {repeats}
[[sweep.axis]]
path = "timeline[0].verify.tolerance"
values = [0.25e-6, 0.5e-6, 1e-6, 2e-6]
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32, help="runs (a multiple of 4)")
    parser.add_argument("--size", type=int, default=64, help="array rows = cols")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from dask.distributed import Client, LocalCluster

    from imcsim.runner import run_scenario
    from imcsim.sweep import execute_run, load_sweep, run_sweep

    repeats = max(1, args.runs // 4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "base.toml").write_text(BASE.format(size=args.size))
        (tmp / "sweep.toml").write_text(SWEEP.format(repeats=repeats))
        sweep = load_sweep(tmp / "sweep.toml")
        n = len(sweep.runs)
        run_scenario(sweep.scenario(sweep.runs[0]), tmp / "warm.h5")  # compile / load cache
        t0 = time.perf_counter()
        for run in sweep.runs:
            run_scenario(sweep.scenario(run), tmp / f"serial{run.name}.h5", threads=1)
        serial = time.perf_counter() - t0

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        # warm every worker's Numba cache before timing, as the serial side was warmed
        for k in range(args.workers):
            (tmp / f"w{k}" / "runs").mkdir(parents=True)
        warm = [client.submit(execute_run, sweep, r, str(tmp / f"w{k}"), pure=False)
                for k, r in enumerate(sweep.runs[:args.workers])]
        client.gather(warm)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        status = run_sweep(sweep, tmp / "out", scheduler=cluster.scheduler_address)
        clustered = time.perf_counter() - t0
        client.close()
        cluster.close()
        assert set(status.values()) == {"complete"}

    per_run = serial / n
    overhead = max(0.0, (args.workers * clustered - serial) / n)
    rows = [
        ("serial, one process", f"{serial:8.2f} s", f"{per_run * 1e3:8.1f} ms/run", "1.00x"),
        (f"LocalCluster {args.workers} x 1 thread, started", f"{clustered:8.2f} s",
         f"{clustered / n * 1e3:8.1f} ms/run", f"{serial / clustered:.2f}x"),
        ("cluster start + worker warm-up (apart)", f"{startup:8.2f} s", "", ""),
        ("per-task overhead of the sweep engine", "", f"{overhead * 1e3:8.1f} ms/run", ""),
    ]
    print(f"imcsim sweep benchmark: {n} runs of a {args.size}x{args.size} drift scenario")
    print(f"  {'benchmark':<48} {'wall':>10} {'per run':>16} {'speed-up':>9}")
    for label, wall, each, speed in rows:
        print(f"  {label:<48} {wall:>10} {each:>16} {speed:>9}")
    cores = 64
    waves = math.ceil(1000 / cores)
    projected = waves * (per_run + overhead)
    print(f"\nprojection: 1,000 such runs on {cores} cores (1 thread each) = ceil(1000/{cores}) "
          f"= {waves} waves x ({per_run * 1e3:.0f} ms compute + {overhead * 1e3:.0f} ms "
          f"overhead) = {projected:.1f} s, plus scheduler and worker start-up "
          f"(~{startup:.0f} s here); serially {1000 * per_run:.0f} s")


if __name__ == "__main__":
    main()
