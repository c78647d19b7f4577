"""Spiking-core study results: accuracy per model × method, on its own and the other model."""

from __future__ import annotations

import numpy as np

from imcsim.store import Trace


def _keys(trace: Trace) -> list[tuple[str, str]]:
    models = [str(m) for m in trace.attrs["spiking_models"]]
    methods = [str(m) for m in trace.attrs["spiking_methods"]]
    return [(model, method) for model in models for method in methods]


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else np.nan


def accuracy_table(trace: Trace) -> list[dict]:
    """One row per (model, method): final test accuracy on its own model's exact core and
    on the other model's (mean, sample std over seeds), seeds, epochs."""
    rows = []
    for model, method in _keys(trace):
        key = f"{model}_{method}"
        final = trace.series(f"final_accuracy_{key}").data[-1]  # (seeds, [own, other])
        own, own_std = _mean_std(final[:, 0])
        other, other_std = _mean_std(final[:, 1])
        rows.append({"model": model, "method": method, "own_mean": own, "own_std": own_std,
                     "other_mean": other, "other_std": other_std, "seeds": int(final.shape[0]),
                     "epochs": int(trace.series(f"accuracy_{key}").data.shape[0])})
    return rows


def format_accuracy_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["  no trained networks"]
    lines = [f"  final test accuracy (%), mean ± std over {rows[0]['seeds']} seeds after "
             f"{rows[0]['epochs']} epochs, exact event-driven core",
             f"  {'trained for':<12}{'method':<8}{'on its own model':>18}{'on the other':>16}"
             f"{'change':>9}"]
    def spread(std):
        return f"{100 * std:4.2f}" if np.isfinite(std) else "  --"

    for r in rows:
        lines.append(f"  {r['model']:<12}{r['method']:<8}"
                     f"{100 * r['own_mean']:>11.2f} ± {spread(r['own_std'])}"
                     f"{100 * r['other_mean']:>9.2f} ± {spread(r['other_std'])}"
                     f"{100 * (r['other_mean'] - r['own_mean']):>+9.2f}")
    lines.append("  other model: top_down weights run on the bottom_up core (reversal potentials), "
                 "and vice versa")
    return lines


def summary_lines(trace: Trace) -> list[str]:
    """The lines ``imcsim info`` prints for a spiking study."""
    return format_accuracy_table(accuracy_table(trace))


def figure(trace: Trace, out) -> None:
    """Accuracy per epoch (mean ± std over seeds) of every model × method; the example
    membrane trajectories of each model's output layer; a raster of test spike times."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _keys(trace)
    models = sorted({m for m, _ in keys}, key=[m for m, _ in keys].index)
    fig, axes = plt.subplots(1, 2 + len(models), figsize=(5 * (2 + len(models)), 4.2),
                             constrained_layout=True)
    for model, method in keys:
        s = trace.series(f"accuracy_{model}_{method}")
        mean, std = 100 * s.data.mean(axis=1), 100 * s.data.std(axis=1)
        axes[0].plot(s.t, mean, "o-", ms=3, label=f"{model} / {method}")
        axes[0].fill_between(s.t, mean - std, mean + std, alpha=0.2)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)

    t_axis = trace.group["spiking"]["membrane_t"][()]
    n_layers = len(trace.attrs["spiking_layer_sizes"]) - 1
    for ax, model in zip(axes[1:1 + len(models)], models):
        v = trace.series(f"membrane_{model}_layer{n_layers - 1}").data[-1]
        ax.plot(t_axis, v, lw=1)
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.axvline(1.0, color="grey", ls=":", lw=0.8)
        ax.set_ylim(min(-0.5, float(np.nanmin(v))), 1.6)
        ax.set_xlabel("time (T): accumulation | firing phase")
        ax.set_ylabel("output membrane potential (V_swing)")
        ax.set_title(f"{model}: test sample 0", fontsize=9)

    model, method = keys[0]
    labels = trace.group["spiking"]["test_labels"][()]
    times = trace.series(f"test_times_{model}_{method}_layer{n_layers - 1}").data[-1][0]
    shown = np.arange(min(40, times.shape[0]))
    ax = axes[-1]
    sample, neuron = np.nonzero(np.isfinite(times[shown]))
    ax.scatter(times[shown][sample, neuron], sample + neuron / 12.0, s=4,
               c=(neuron == labels[shown][sample]), cmap="coolwarm", vmin=0, vmax=1)
    ax.set_xlabel("output spike time (T from the firing phase's start)")
    ax.set_ylabel("test sample (+ neuron/12); red: the labelled class")
    ax.set_title(f"raster: {model} / {method}, seed 0", fontsize=9)
    fig.suptitle(f"{trace.path.name}: charge-domain spiking core")
    fig.savefig(Path(out), dpi=110)
    plt.close(fig)
