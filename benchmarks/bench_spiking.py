"""Throughput of the event-driven spiking core and cost of its two training methods.

    python benchmarks/bench_spiking.py [--quick] [--repeats R]

1. Exact RC-Spike layer forward (``physics.spiking.layer_spike_times``, Numba, one sample per
   thread) at 1 and all threads, against ``layer_spike_times_numpy`` (the same closed form
   in numpy, vectorised over samples and neurons, one step per input event) in the same
   process. An *input event* is one input spike delivered to a layer (all its neurons
   updated in closed form); a *synaptic event* is one input spike at one neuron
   (input events × N_out). Inputs: uniform spike times, 10 % missing; bottom-up β
   (E₊ = 2.80, E₋ = −1.53).
2. One training minibatch (forward + backward of the whole network, cost and gradient) by
   DSTD (numpy, M = 15) against the exact event-based method (Numba forward and backward),
   for the study's 16-16-10 network and a wider 256-128-10 one, BLAS on one thread (as
   training runs it). The exact method sorts each sample's spikes and applies their Eq. 33
   per event, O(N_in·N_out) per sample, not the O(N_in²·N_out) of the unrolled closed form
   the paper counts: DSTD's advantage on a CPU is therefore a constant factor, not N_in/M.

Each group runs every row once untimed (compilation, first touch), then ``--repeats``
interleaved rounds; the best time of each row is reported and every ratio is against a
baseline timed in the same rounds. Nothing here asserts on wall time.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numba
import numpy as np

from imcsim.physics import spiking as sp
from imcsim.scenarios import spiking as ss

SEED = 2026


def interleaved_best(fns: dict, repeats: int) -> dict:
    """Best wall time of each callable over ``repeats`` interleaved rounds (one warm-up)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, np.inf)
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        gc.enable()
    return best


def layer_inputs(batch: int, n_in: int, n_out: int):
    rng = np.random.default_rng(SEED)
    t_in = rng.uniform(0.0, 1.0, (batch, n_in))
    t_in[rng.uniform(size=t_in.shape) < 0.1] = np.inf
    w = rng.normal(0.5 / n_in, 1.0 / np.sqrt(n_in), (n_in, n_out))
    return t_in, w, sp.reversal_beta(w, 2.80, -1.53)


def forward_rows(batch: int, n_in: int, n_out: int, repeats: int, n_threads: int):
    t_in, w, beta = layer_inputs(batch, n_in, n_out)
    events = int(np.sum(t_in < 1.0))

    def kernel(threads):
        def run():
            numba.set_num_threads(threads)
            sp.layer_spike_times(t_in, w, beta, beta_fire=1 / 6.4)
        return run

    fns = {"numpy": lambda: sp.layer_spike_times_numpy(t_in, w, beta, beta_fire=1 / 6.4),
           "numba 1 thread": kernel(1)}
    if n_threads > 1:
        fns[f"numba {n_threads} threads"] = kernel(n_threads)
    best = interleaved_best(fns, repeats)
    numba.set_num_threads(n_threads)
    a = sp.layer_spike_times(t_in, w, beta, beta_fire=1 / 6.4)
    b = sp.layer_spike_times_numpy(t_in, w, beta, beta_fire=1 / 6.4)
    agree = np.array_equal(np.isinf(a), np.isinf(b)) and np.allclose(
        a[np.isfinite(a)], b[np.isfinite(b)], rtol=0, atol=1e-12)
    for name, t in best.items():
        print(f"  {f'{batch}x{n_in}x{n_out}':<18}{name:<22}{1e3 * t:>9.2f}"
              f"{events / t / 1e6:>14.2f}{events * n_out / t / 1e6:>12.1f}"
              f"{best['numpy'] / t:>8.1f}x")
    print(f"  {'':<18}(Numba and numpy agree to 1e-12: {agree})")


def forward_section(shapes, repeats: int, n_threads: int):
    print("\n1. exact layer forward: Numba kernel vs numpy reference (same closed form)")
    print(f"  {'batch x in x out':<18}{'implementation':<22}{'best ms':>9}"
          f"{'M input ev/s':>14}{'M syn ev/s':>12}{'vs numpy':>9}")
    for shape in shapes:
        forward_rows(*shape, repeats, n_threads)


def training_rows(sizes, repeats: int, batch: int):
    cfg = ss.SpikingConfig(hidden=tuple(sizes[1:-1]), spike_noise=0.0)
    rng = np.random.default_rng(SEED)
    x = rng.uniform(0.0, 1.0, (batch, sizes[0]))
    y = rng.integers(0, 10, batch)
    weights = ss.init_layers(cfg, x, "bottom_up")
    offsets = [0.5 / cfg.dstd_steps] * len(weights)
    fns = {f"exact (Numba, {numba.get_num_threads()} thr)":
           lambda: ss.loss_and_grad(weights, x, y, "bottom_up", "exact", cfg),
           f"DSTD M={cfg.dstd_steps} (numpy)":
           lambda: ss.loss_and_grad(weights, x, y, "bottom_up", "dstd", cfg, offsets)}
    best = interleaved_best(fns, repeats)
    base = next(iter(best.values()))
    for name, t in best.items():
        print(f"  {'-'.join(map(str, sizes)):<14}{name:<26}{1e3 * t:>9.2f}"
              f"{t / base:>11.2f} x exact")


def training_section(networks, repeats: int, batch: int):
    from threadpoolctl import threadpool_limits

    print(f"\n2. one training minibatch of {batch} (forward + backward): DSTD vs exact, "
          "BLAS on one thread as in training")
    print(f"  {'network':<14}{'method':<26}{'best ms':>9}{'time ratio':>16}")
    with threadpool_limits(1, user_api="blas"):
        for sizes in networks:
            training_rows(sizes, repeats, batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 30 s)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n_threads = numba.get_num_threads()
    repeats = max(3 if args.quick else 5, args.repeats)
    load = os.getloadavg()[0]
    print(f"bench_spiking: numba {numba.__version__}, {n_threads} threads, best of {repeats}; "
          f"1-min load average {load:.1f} on {os.cpu_count()} CPUs"
          + (" (busy machine: N-thread rows are not comparable)" if load > 1.0 else ""))
    if args.quick:
        forward_section([(256, 16, 16), (64, 256, 128)], repeats, n_threads)
        training_section([(16, 16, 10)], repeats, 32)
    else:
        forward_section([(1024, 16, 16), (1024, 64, 64), (256, 784, 400)], repeats, n_threads)
        training_section([(16, 16, 10), (256, 128, 10)], repeats, 32)


if __name__ == "__main__":
    main()
