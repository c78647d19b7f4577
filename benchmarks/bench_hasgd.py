"""Cost of Hessian-aware SGD per epoch against plain SGD and noise injection, and what each
training buys under the weight-unit PCM noise model.

Run as a script (its folder must be on ``sys.path``, which running it as a script does: the
timing helpers are imported from ``bench_pcm.py`` next to it)::

    python benchmarks/bench_hasgd.py [--quick] [--repeats R] [--json FILE]

1. **Seconds per epoch** (digits, 1,347 training images, batch 32, the defaults of
   ``scenarios/inference_robustness.toml``) of the MLP 64-64-10 and the CNN (3×3 conv with 8
   filters, 2×2 pooling, 64, 10), for: plain SGD (the baseline), noise injection, HA-SGD with
   the full penalty gradient and k = 1 or 4 Hutchinson probes (3 exact Hessian-vector
   products per probe), HA-SGD with the frozen-curvature gradient and a Hutchinson (k = 1)
   or Gauss-Newton diagonal. Each epoch is timed as one run, best of ``--repeats``
   interleaved rounds after a warm-up (``bench_pcm.Bench``); the ratio is time / SGD's time
   in the same process. BLAS runs on one thread (as training does).
2. **Accuracy** (not a timing): every method trained for 30 epochs on training seeds 0-4
   (data split, initial weights, batch order), noise at 1 day (``NoiseModel()``: Joshi et al.
   PCM, programming + drift-exponent spread + 1/f read noise, global drift compensation),
   per-column max-abs weight scale: clean test accuracy, and the mean test accuracy of 20
   draws of W + σ⊙ξ (weight-space Monte-Carlo, not the tile harness); mean ± std over the
   seeds, and the per-seed (paired) difference of the noisy accuracy from SGD's, mean ± std
   (the same seed shares split and initial weights, so pairing removes their spread). And
   why the numbers are what they are: the median σ_i/|w_i| over weights, and the
   loss increase the noise is expected to cause, ½ Σ σ_i² H_ii (exact Gauss-Newton diagonal =
   the exact Hessian diagonal of these ReLU networks, on the whole training set), against the
   training loss; the median |w|/s and the share of weights below s/4 (the ones analog
   floating point would map with a 4x gain).
3. **σ_i/s against |w_i|/s** at 1 s, 1 h, 1 day and 1 year (no training involved).

``--quick`` (smoke test): section 1 on the first 320 training images (10 minibatches),
section 2 on seed 0 with 3 epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numba
import numpy as np
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

from imcsim.scenarios import digits
from imcsim.scenarios import robust_training as rt

ARCHITECTURES = {"mlp": "MLP 64-64-10", "cnn": "CNN conv3x3x8-pool-64-10"}
# (id, label, train keyword arguments); the first is the baseline of its group
VARIANTS = (
    ("sgd", "plain SGD", dict(method="sgd")),
    ("noise", "noise injection", dict(method="noise")),
    ("hasgd_full_k1", "HA-SGD full, Hutchinson k=1", dict(method="hasgd", probes=1)),
    ("hasgd_full_k4", "HA-SGD full, Hutchinson k=4", dict(method="hasgd", probes=4)),
    ("hasgd_frozen_hutch", "HA-SGD frozen, Hutchinson k=1",
     dict(method="hasgd", penalty_mode="frozen", hessian="hutchinson", probes=1)),
    ("hasgd_frozen_gn", "HA-SGD frozen, Gauss-Newton",
     dict(method="hasgd", penalty_mode="frozen", hessian="gauss_newton")),
)
ACCURACY_VARIANTS = ("sgd", "noise", "hasgd_full_k1", "hasgd_frozen_gn")
TRAIN = dict(lr=0.05, batch=32)  # as scenarios/inference_robustness.toml
SIGMA_TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 3.1536e7}
SIGMA_LEVELS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)


def sigma_table() -> list[list[float]]:
    """σ_i/s at each |w|/s level (rows) and time (columns)."""
    return [[float(rt.weight_sigma(np.array([u]), 1.0, rt.NoiseModel(t_inference=t))[0])
             for t in SIGMA_TIMES.values()] for u in SIGMA_LEVELS]


def bench_epochs(b: Bench, data, noise) -> None:
    for arch, name in ARCHITECTURES.items():
        net = rt.build_net(arch, 64, 10, hidden=(64,), channels=8, seed=0)
        cases = []
        for key, label, kw in VARIANTS:
            row = Row(id=f"{arch}_{key}",
                      section=f"1. one training epoch ({len(data.y_train)} images), {name}",
                      label=label, short=label, devices=sum(w.size for w in net.weights),
                      work="1 epoch", threads="np", per_run=1.0, unit="epochs",
                      baseline=f"{arch}_sgd")

            def run(_, kw=kw, net=net):
                rt.train(net, data, epochs=1, seed=0, noise=noise, **TRAIN, **kw)

            cases.append(Case(run=run, rows=[row]))
        b.run_group(f"epoch {arch}", cases)


def accuracy_table(data_seeds, epochs, noise, log) -> list[dict]:
    out = []
    for arch in ARCHITECTURES:
        for key in ACCURACY_VARIANTS:
            kw = dict(next(v[2] for v in VARIANTS if v[0] == key))
            clean, noisy, rel, expected, train_loss, w_rel, small = [], [], [], [], [], [], []
            for seed in data_seeds:
                log(f"accuracy {arch} {key} seed {seed}")
                data = digits.load_digits_split(seed)
                net = rt.build_net(arch, 64, 10, hidden=(64,), channels=8, seed=seed)
                net, history = rt.train(net, data, epochs=epochs, seed=seed, noise=noise,
                                        **TRAIN, **kw)
                clean.append(history.test_accuracy[-1])
                noisy.append(float(np.mean(rt.noisy_accuracy(net, data.x_test, data.y_test,
                                                              noise, draws=20, seed=seed))))
                sigma = [rt.weight_sigma(w, rt.column_maxabs_scale(w), noise)
                         for w in net.weights]
                w_all = np.concatenate([w.ravel() for w in net.weights])
                s_all = np.concatenate([s.ravel() for s in sigma])
                nonzero = np.abs(w_all) > 0
                rel.append(float(np.median(s_all[nonzero] / np.abs(w_all[nonzero]))))
                u = np.concatenate([(np.abs(w) / rt.column_maxabs_scale(w)).ravel()
                                    for w in net.weights])
                w_rel.append(float(np.median(u)))
                small.append(float(np.mean(u < 0.25)))
                diag = rt.gauss_newton_diagonal(net, data.x_train, data.y_train)
                expected.append(0.5 * float(sum(np.sum(s * s * d) for s, d in zip(sigma, diag))))
                train_loss.append(rt.loss(net, data.x_train, data.y_train))
            out.append(dict(arch=arch, variant=key, seeds=list(data_seeds), clean=clean,
                            noisy=noisy, median_rel_sigma=rel, expected_loss_increase=expected,
                            median_w_over_s=w_rel, share_below_quarter=small,
                            train_loss=train_loss))
    return out


def _ms(values, scale=100.0, digits_=1) -> str:
    a = np.asarray(values) * scale
    return f"{a.mean():.{digits_}f} ± {a.std():.{digits_}f}"


def format_result(result: dict) -> str:
    rows = [Row(**r) for r in result["rows"]]
    lines = header_lines(result, "imcsim HA-SGD cost per epoch", "BLAS on 1 thread")
    head = (f"  {'training':<34} {'weights':>8} {'best s/epoch':>13} {'med/best':>8} "
            f"{'time / SGD':>11} {'other CPU':>9}")
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines += ["", section, head]
        lines.append(f"  {r.label:<34} {r.devices:>8} {r.best_s:>13.4f} "
                     f"{r.median_s / r.best_s:>8.2f} {r.ratio:>10.1f}x {_pct(r.other_cpu):>9}")
    acc = result["accuracy"]
    cfg = result["config"]
    lines += ["", f"2. accuracy after {cfg['epochs']} epochs, training seeds {cfg['seeds']} "
              "(mean ± std over seeds; noise: NoiseModel() at 1 day, 20 draws per seed)",
              f"  {'network':<5} {'training':<34} {'clean %':>13} {'W+σξ %':>13} "
              f"{'Δ vs SGD, paired':>16} {'median σ/|w|':>13} {'½Σσ²H_ii':>16} "
              f"{'train loss':>16}"]
    labels = {v[0]: v[1] for v in VARIANTS}
    sgd = {a["arch"]: np.asarray(a["noisy"]) for a in acc if a["variant"] == "sgd"}
    for a in acc:
        paired = np.asarray(a["noisy"]) - sgd[a["arch"]]
        lines.append(f"  {a['arch']:<5} {labels[a['variant']]:<34} {_ms(a['clean']):>13} "
                     f"{_ms(a['noisy']):>13} {_ms(paired):>16} "
                     f"{_ms(a['median_rel_sigma'], 1.0, 3):>13} "
                     f"{_ms(a['expected_loss_increase'], 1.0, 4):>16} "
                     f"{_ms(a['train_loss'], 1.0, 4):>16}")
    lines += ["", "   weights of the trained networks, relative to their column's max |w| (s): "
              "median |w|/s, share with |w| < s/4 (mean ± std over seeds)"]
    for a in acc:
        lines.append(f"  {a['arch']:<5} {labels[a['variant']]:<34} "
                     f"{_ms(a['median_w_over_s'], 1.0, 3):>13} "
                     f"{_ms(a['share_below_quarter'], 100.0, 1):>11} %")
    lines += ["", "3. device noise in weight units, σ_i/s against |w_i|/s (NoiseModel at t, "
              "Joshi et al. 2020 PCM, differential pair, per-level drift compensation)",
              "  " + f"{'|w|/s':>6}" + "".join(f"{label:>10}" for label in SIGMA_TIMES)]
    for u, row in zip(SIGMA_LEVELS, result["sigma_table"]):
        lines.append("  " + f"{u:>6.2f}" + "".join(f"{v:>10.4f}" for v in row))
    return "\n".join(lines + footer_lines(result, rows))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed and 3 epochs in section 2")
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS,
                    help=f"timed runs per row, the best is reported (>= {MIN_REPEATS})")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.repeats < MIN_REPEATS:
        ap.error(f"--repeats must be at least {MIN_REPEATS}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    noise = rt.NoiseModel()
    seeds = (0,) if args.quick else (0, 1, 2, 3, 4)
    epochs = 3 if args.quick else 30
    b = Bench(args.repeats, 1, log=log)
    loadavg_start = _loadavg()
    start = load_snapshot()
    with threadpool_limits(1, user_api="blas"):
        data = digits.load_digits_split(0)
        if args.quick:
            data = data._replace(x_train=data.x_train[:320], y_train=data.y_train[:320])
        bench_epochs(b, data, noise)
        t0 = time.perf_counter()
        acc = accuracy_table(seeds, epochs, noise, log)
        acc_seconds = time.perf_counter() - t0
    end = load_snapshot()
    time_ratios(b.rows)
    b.notes += [
        "HA-SGD full: 3 exact Hessian-vector products (R-operator) per probe per minibatch; "
        "frozen: one diagonal estimate per minibatch (scenarios/robust_training.py).",
        "noise injection's extra time is the σ(W) lookup and the normals of every minibatch.",
        f"section 2 took {acc_seconds:.0f} s; its W+σξ column is the weight-unit noise model "
        "alone (no DAC/ADC, no drift-compensation bias): the tile-level table is "
        "scenarios/inference_robustness.toml's.",
    ]
    result = {
        "machine": machine_info(numba.get_num_threads()),
        "config": {"mode": "quick" if args.quick else "default", "repeats": args.repeats,
                   "seeds": list(seeds), "epochs": epochs,
                   **run_stats(start, end, loadavg_start)},
        "rows": [asdict(r) for r in b.rows],
        "accuracy": acc,
        "sigma_table": sigma_table(),
        "notes": b.notes,
    }
    report(result, format_result(result), args.json)
    return result


if __name__ == "__main__":
    main()
