"""Test-set evaluation through PCM tiles against the same network in plain numpy.

Run as a script (its folder must be on ``sys.path``, which running it as a script does: the
timing helpers are imported from ``bench_pcm.py`` next to it)::

    python benchmarks/bench_inference.py [--quick] [--threads N] [--repeats R] [--json FILE]

For the MLP 64-64-10 and the CNN (3×3 conv with 8 filters, 2×2 pooling, 64, 10) of
``scenarios/inference_robustness.toml``, SGD-trained for 30 epochs on digits (seed 0), with its
hardware (Joshi et al. PCM, 256×256 tiles, 8-bit DAC and ADC, 50 µA ADC full scale), each row
one pass over the 450 test images (``--quick``: 100):

* ``numpy forward`` (baseline): the float network, ``rows @ W`` by BLAS on one thread;
* ``tiles, fixed``: one evaluation of the study at one drift time — every tile read at t
  (``pcm.read_drifted``: drift and 1/f noise of all devices), its drift-compensation factor
  from the 256 calibration images, then the test set through DAC → differential MVM
  (``crossbar.tile_mvm``) → ADC → digital recombination; at 1 and N Numba threads;
* ``tiles, AFP``: the same with the analog floating-point mapping (twice the columns and ADC
  conversions);
* ``program + calibrate``: statistical programming of every tile on one device seed and the
  drift-compensation reference (once per seed and method in the study); the same pulse by
  pulse with program-and-verify and with GDP (``programming = "verify"`` / ``"gdp"``, the
  controllers' defaults);
* ``PTO iteration``: one objective and gradient of PTO on the 256 calibration images
  (per-iteration device draws included); the same with ``[inference.pto] wires = true`` on
  a 4 Ω-per-cell array (every tile's currents solved as the resistive network, relaxed
  solver to 1e-6 of full scale, at the target and calibration reads, and the gradient by
  the array's adjoint: two more solves, the read and its reciprocal, with node voltages).

Ratios are time / the numpy forward's time, measured in the same process (``bench_pcm.Bench``:
one untimed warm-up, best of ``--repeats`` interleaved rounds). Nothing asserts on wall time.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numba
from bench_pcm import (
    MIN_REPEATS,
    Bench,
    Case,
    Row,
    _loadavg,
    _pct,
    footer_lines,
    header_lines,
    load_snapshot,
    machine_info,
    report,
    run_stats,
    time_ratios,
)
from threadpoolctl import threadpool_limits

from imcsim.physics import crossbar
from imcsim.scenarios import digits, inference, pto
from imcsim.scenarios import robust_training as rt

ARCHITECTURES = {"mlp": "MLP 64-64-10", "cnn": "CNN conv3x3x8-pool-64-10"}
DAY = 86400.0


def bench_architecture(b: Bench, arch: str, data, n_test: int, threads: int) -> None:
    hw = inference.Hardware(periphery=crossbar.Periphery(dac_bits=8, adc_bits=8,
                                                         adc_full_scale=50e-6))
    net, _ = rt.train(rt.build_net(arch, 64, 10, seed=0), data, method="sgd", epochs=30,
                      seed=0)
    x, y = data.x_test[:n_test], data.y_test[:n_test]
    x_cal, y_cal = data.x_train[:256], data.y_train[:256]
    rows_cal = inference.layer_rows(net, x_cal)
    maps = {kind: inference.map_network(net, hw, rows_cal, kind) for kind in ("fixed", "afp")}
    chips = {kind: inference.deploy(tiles, hw, 1, rows_cal) for kind, tiles in maps.items()}
    devices = 2 * sum(t.weights.size for t in maps["fixed"])
    section = f"{ARCHITECTURES[arch]}, {n_test} test images"

    def row(key, label, thr, baseline=f"{arch}_numpy", n_dev=devices, work="test set"):
        return Row(id=f"{arch}_{key}", section=section, label=label, short=label,
                   devices=n_dev, work=work, threads=thr, per_run=1.0, unit="passes",
                   baseline=baseline)

    def numpy_forward(_):
        inference.layer_forward(net, x)

    def tiles_pass(kind):
        def run(_):
            hook = inference.chip_hook(chips[kind], hw, DAY, 40, rows_cal)
            inference.accuracy(inference.layer_forward(net, x, hook), y)
        return run

    def pto_iteration(_, model=hw):
        pto.objective(net, maps["fixed"], model, x_cal, y_cal, rows_cal,
                      pto.draw_tiles(maps["fixed"], 7, 1), DAY)

    wired = replace(hw, periphery=replace(hw.periphery, r_wire_row=4.0, r_wire_col=4.0,
                                          ir_drop_solver="relaxed", ir_drop_tolerance=1e-6))

    def deploy_with(method):
        pulsed = replace(hw, programming=inference.Programming(method))
        return lambda _: inference.deploy(maps["fixed"], pulsed, 2, rows_cal)

    cases = [
        Case(run=numpy_forward, rows=[row("numpy", "numpy forward (float)", "np")]),
        Case(run=tiles_pass("fixed"), rows=[row("fixed_1t", "tiles, fixed, read at 1 d", "1")],
             threads=1),
        Case(run=tiles_pass("fixed"),
             rows=[row("fixed_nt", "tiles, fixed, read at 1 d", str(threads))], threads=threads),
        Case(run=tiles_pass("afp"),
             rows=[row("afp_nt", "tiles, AFP, read at 1 d", str(threads), n_dev=2 * devices)],
             threads=threads),
        Case(run=lambda _: inference.deploy(maps["fixed"], hw, 2, rows_cal),
             rows=[row("program", "program + calibrate (1 seed)", str(threads),
                       work="all tiles")], threads=threads),
        Case(run=deploy_with("verify"),
             rows=[row("program_verify", "  ... by program-and-verify", str(threads),
                       work="all tiles")], threads=threads),
        Case(run=deploy_with("gdp"),
             rows=[row("program_gdp", "  ... by GDP (60 iterations)", str(threads),
                       work="all tiles")], threads=threads),
        Case(run=pto_iteration,
             rows=[row("pto", "PTO iteration (256 images)", str(threads), work="obj + grad")],
             threads=threads),
        Case(run=lambda _: pto_iteration(_, wired),
             rows=[row("pto_wires", "  ... told the wires (4 ohm)", str(threads),
                       work="obj + grad")], threads=threads),
    ]
    b.run_group(f"inference {arch}", cases)


def format_result(result: dict) -> str:
    rows = [Row(**r) for r in result["rows"]]
    lines = header_lines(result, "imcsim inference through tiles vs numpy", "BLAS on 1 thread")
    head = (f"  {'benchmark':<32} {'devices':>8} {'work/run':>10} {'thr':>3} {'best ms':>9} "
            f"{'med/best':>8} {'time / numpy':>13} {'other CPU':>9}")
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines += ["", section, head]
        lines.append(f"  {r.label:<32} {r.devices:>8} {r.work:>10} {r.threads:>3} "
                     f"{r.best_s * 1e3:>9.3f} {r.median_s / r.best_s:>8.2f} "
                     f"{r.ratio:>12.1f}x {_pct(r.other_cpu):>9}")
    return "\n".join(lines + footer_lines(result, rows))


def main(argv=None) -> dict:
    max_threads = numba.config.NUMBA_NUM_THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 test images instead of 450")
    ap.add_argument("--threads", type=int, default=max_threads,
                    help=f"threads of the multi-threaded rows (1..{max_threads})")
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS,
                    help=f"timed runs per row, the best is reported (>= {MIN_REPEATS})")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.repeats < MIN_REPEATS:
        ap.error(f"--repeats must be at least {MIN_REPEATS}")
    if not 1 <= args.threads <= max_threads:
        ap.error(f"--threads must be between 1 and {max_threads}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    n_test = 100 if args.quick else 450
    b = Bench(args.repeats, args.threads, log=log)
    threads_before = numba.get_num_threads()
    loadavg_start = _loadavg()
    start = load_snapshot()
    data = digits.load_digits_split(0)
    try:
        with threadpool_limits(1, user_api="blas"):
            for arch in ARCHITECTURES:
                bench_architecture(b, arch, data, n_test, args.threads)
    finally:
        numba.set_num_threads(threads_before)
    end = load_snapshot()
    time_ratios(b.rows)
    b.notes += [
        "a tile pass reads every device once (drift + 1/f noise), computes each tile's drift "
        "compensation on the 256 calibration images and runs the test set through DAC, "
        "tile MVM and ADC; the numpy forward does the float products only.",
        "AFP has twice the devices, columns and ADC conversions of the fixed mapping.",
    ]
    result = {
        "machine": machine_info(args.threads),
        "config": {"mode": "quick" if args.quick else "default", "repeats": args.repeats,
                   "threads": args.threads, "test_images": n_test,
                   **run_stats(start, end, loadavg_start)},
        "rows": [asdict(r) for r in b.rows],
        "notes": b.notes,
    }
    report(result, format_result(result), args.json)
    return result


if __name__ == "__main__":
    main()
