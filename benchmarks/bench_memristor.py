"""Memristor throughput: per-pulse updates against numpy, and time per training epoch.

    python benchmarks/bench_memristor.py [--quick]

1. ``memristor.apply_pulses`` (Numba, 1 and all threads) against the same pulse model
   vectorised in numpy with numpy's own fastest normals (the baseline at its best), in
   device-pulses per second, ratios measured in this process.
2. One training epoch of the digits MLP for each update rule, with the share of the time
   spent in the tile MVMs (``crossbar.tile_mvm``) and the device kernels
   (``memristor.apply_pulses`` and ``memristor.read``).
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from imcsim.physics import crossbar, memristor
from imcsim.scenarios import mixed_precision as mp


def numpy_pulses(g, n_pulses, dev, model, generator):
    """The pulse model of ``memristor.pulse_step`` in numpy, one pulse over all devices at a
    time (devices with fewer pulses are masked)."""
    up = n_pulses > 0
    b_p = (dev.g_max - dev.g_min) / (1 - np.exp(-model.pulses_full / dev.a_potentiation))
    b_d = (dev.g_max - dev.g_min) / (1 - np.exp(-model.pulses_full / dev.a_depression))
    k_p = 1 - np.exp(-1 / dev.a_potentiation)
    k_d = 1 - np.exp(-1 / dev.a_depression)
    count = np.abs(n_pulses)
    xi = np.empty_like(g)
    for k in range(int(count.max())):
        generator.standard_normal(out=xi)
        dg = np.where(up, (dev.g_min + b_p - g) * k_p, -(g - dev.g_max + b_d) * k_d)
        g = np.where(k < count, np.clip(g + dg * (1 + model.sigma_c2c * xi), dev.g_min,
                                        dev.g_max), g)
    return g


def best_of(fn, repeats=5):
    fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def pulse_rows(n, model, pulses):
    """Print the rows of section 1 for ``n`` devices."""
    dev = memristor.draw_devices(model, n, 1)
    plan = np.where(np.arange(n) % 2 == 0, pulses, -pulses).astype(np.int64)
    g0 = np.full(n, 20e-6)
    gen = np.random.default_rng(0)
    t_np = best_of(lambda: numpy_pulses(g0.copy(), plan, dev, model, gen))
    rows = [("numpy, same model, numpy normals", t_np)]
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        t = best_of(lambda: memristor.apply_pulses(
            g0.copy(), plan, dev.g_min, dev.g_max, dev.a_potentiation, dev.a_depression,
            model.pulses_full, model.sigma_c2c, np.uint64(1), np.uint64(0),
            np.zeros(n, dtype=np.int64)))
        rows.append((f"numba, {threads} thread(s)", t))
    for label, t in rows:
        print(f"  {label:<40} {n:>9} {n * pulses / t / 1e6:>15.1f} M pulses/s "
              f"{t_np / t:>7.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    model = memristor.BulkSwitchingModel()
    pulses = 16
    print("imcsim memristor throughput (best of 5 after a warm-up; ratios in this process)")
    print(f"machine: numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads, "
          f"numpy {np.__version__}\n")
    print("1. per-pulse updates (memristor.apply_pulses), 16 pulses per device")
    print(f"  {'benchmark':<40} {'devices':>9} {'throughput':>24} {'ratio':>8}")
    for n in ((1 << 14,) if args.quick else (1 << 17, 1 << 20)):
        pulse_rows(n, model, pulses)
    print("\n2. one training epoch (digits MLP 64-64-10, batch 32, 8-bit DAC/ADC tiles)")
    print(f"  {'rule':<10} {'s/epoch':>9} {'tile MVMs':>10} {'device kernels':>15}")
    spent = {"tile": 0.0, "device": 0.0}
    originals = (crossbar.tile_mvm, memristor.apply_pulses, memristor.read)

    def timed(fn, bucket):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[bucket] += time.perf_counter() - t0
        return wrapper

    crossbar.tile_mvm = timed(originals[0], "tile")
    memristor.apply_pulses = timed(originals[1], "device")
    memristor.read = timed(originals[2], "device")
    try:
        for rule in mp.RULES:
            cfg = mp.TrainingConfig(epochs=1 if args.quick else 3)
            mp.train(rule, cfg)  # warm-up
            spent.update(tile=0.0, device=0.0)
            t0 = time.perf_counter()
            mp.train(rule, cfg)
            total = time.perf_counter() - t0
            print(f"  {rule:<10} {total / cfg.epochs:>9.3f} {spent['tile'] / total:>9.0%} "
                  f"{spent['device'] / total:>14.0%}")
    finally:
        crossbar.tile_mvm, memristor.apply_pulses, memristor.read = originals


if __name__ == "__main__":
    main()
