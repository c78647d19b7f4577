"""Inference-robustness study results: the table method × drift time → accuracy and its
figure (scenarios.inference)."""

from __future__ import annotations

import json

import numpy as np

from imcsim.store import Trace

_DAY = 86400.0


def _names(trace: Trace, key: str) -> list[str]:
    return [str(v) for v in trace.attrs[key]]


def accuracy_table(trace: Trace) -> list[dict]:
    """One row per (architecture, method): drift times (s), mean and sample std of the test
    accuracy over device seeds at each time, the seeds, and what the method needs to know."""
    needs = json.loads(str(trace.attrs["inference_needs"]))
    seeds = [int(s) for s in trace.attrs["inference_device_seeds"]]
    rows = []
    for arch in _names(trace, "inference_architectures"):
        for method in _names(trace, "inference_methods"):
            s = trace.series(f"accuracy_{arch}_{method}")
            std = s.data.std(axis=1, ddof=1) if s.data.shape[1] > 1 else np.full(s.t.size,
                                                                                   np.nan)
            rows.append({"architecture": arch, "method": method, "t": s.t,
                         "mean": s.data.mean(axis=1), "std": std, "seeds": seeds,
                         "needs": needs[method]})
    return rows


def _time_label(t: float) -> str:
    for unit, size in (("y", 3.1536e7), ("d", _DAY), ("h", 3600.0), ("min", 60.0)):
        if t >= size:
            return f"{t / size:g} {unit}"
    return f"{t:g} s"


def summary_lines(trace: Trace) -> list[str]:
    """The lines ``imcsim info`` prints: per architecture, the table method × drift time →
    accuracy (%) mean ± std over device seeds, PTO's recovery, and the needs-to-know list."""
    rows = accuracy_table(trace)
    if not rows:
        return ["  no results"]
    metrics = trace.metrics()
    lines = [f"  test accuracy (%), mean ± std over device seeds {rows[0]['seeds']}, with "
             "global drift compensation"]
    resolved = json.loads(str(trace.attrs.get("scenario_resolved", "{}")))
    device = resolved.get("device", {}).get("model")
    if device:
        lines.insert(0, f"  PCM device model: {device}")
    for arch in _names(trace, "inference_architectures"):
        mine = [r for r in rows if r["architecture"] == arch]
        times = mine[0]["t"]
        lines.append(f"  {arch}:")
        lines.append(f"    {'method':<20}" + "".join(f"{_time_label(t):>16}" for t in times))
        for r in mine:
            cells = "".join(f"{100 * m:>9.2f} ± {100 * s:4.2f}" for m, s in zip(r["mean"],
                                                                                 r["std"]))
            lines.append(f"    {r['method']:<20}{cells}")
        lines.append("    weight error |W_eff − W|/|W| (%) of the tiles as read, mean over seeds:")
        for r in mine:
            name = f"weight_error_{arch}_{r['method']}"
            if name in trace.series_names():
                err = trace.series(name).data.mean(axis=1)
                lines.append(f"    {r['method']:<20}" + "".join(f"{100 * e:>16.2f}"
                                                             for e in err))
        by_method = {r["method"]: r for r in mine}
        if "sgd_maxabs" in by_method:
            lines.append("    paired difference to sgd_maxabs on the same chips (points), "
                         "mean ± std over seeds:")
            base = trace.series(f"accuracy_{arch}_sgd_maxabs").data
            for r in mine:
                if r["method"] in ("float", "sgd_maxabs"):
                    continue
                diff = 100 * (trace.series(f"accuracy_{arch}_{r['method']}").data - base)
                spread = diff.std(axis=1, ddof=1) if diff.shape[1] > 1 else 0 * diff[:, 0]
                lines.append(f"    {r['method']:<20}" + "".join(
                    f"{m:>+9.2f} ± {s:4.2f}" for m, s in zip(diff.mean(axis=1), spread)))
        for method in by_method:
            key = f"pto_{arch}_{method}_holdout_start"
            if key in metrics and np.isfinite(metrics[key][0]):
                start, best = metrics[key][0], metrics[f"pto_{arch}_{method}_holdout_best"][0]
                sem = metrics[f"pto_{arch}_{method}_holdout_sem"][0]
                spread = metrics[f"pto_{arch}_{method}_start_spread"][0]
                lines.append(f"    {method}: objective on hold-out draws {start:.4f} -> "
                             f"{best:.4f} ({best - start:+.4f} ± {sem:.4f} paired s.e.; one "
                             f"draw scatters by {spread:.4f})")
        key = f"mse_clip_weight_error_ratio_{arch}"
        if key in metrics:
            lines.append(f"    MSE-optimal column clipping: rms weight error x "
                         f"{metrics[key][0]:.3f} of max-abs (device model at t_train)")
        if {"float", "sgd_maxabs", "pto_sgd"} <= set(by_method):
            lines.append("    PTO on SGD, share of the float − max-abs loss recovered "
                         "(loss ± its standard error over seeds):")
            base, pto, flt = by_method["sgd_maxabs"], by_method["pto_sgd"], by_method["float"]
            n = len(rows[0]["seeds"])
            for k, t in enumerate(times):
                lost = flt["mean"][k] - base["mean"][k]
                sem = base["std"][k] / np.sqrt(n)
                key = f"pto_recovery_{arch}_t{t:g}"
                share = metrics.get(key, (np.nan, ""))[0]
                text = (f"{100 * share:.0f} %" if np.isfinite(share)
                        else "loss below 2 standard errors: nothing to measure")
                lines.append(f"      {_time_label(t):>6}: loss {100 * lost:5.2f} ± "
                             f"{100 * sem:4.2f} points, PTO gains "
                             f"{100 * (pto['mean'][k] - base['mean'][k]):5.2f}: {text}")
    lines.append("  needs to know:")
    for r in rows[:len(_names(trace, "inference_methods"))]:
        lines.append(f"    {r['method']:<20}{r['needs']}")
    return lines


def figure(trace: Trace, out) -> None:
    """Accuracy vs drift time (log axis), one line per method with its ±std band over device
    seeds, one panel per architecture."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = accuracy_table(trace)
    archs = _names(trace, "inference_architectures")
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.8),
                             constrained_layout=True, squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for r in (r for r in rows if r["architecture"] == arch):
            style = "--" if r["method"] == "float" else "o-"
            line, = ax.plot(r["t"], 100 * r["mean"], style, label=r["method"])
            std = np.nan_to_num(r["std"])
            ax.fill_between(r["t"], 100 * (r["mean"] - std), 100 * (r["mean"] + std),
                            color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("time after programming (s)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{arch}: mean ± std over {len(rows[0]['seeds'])} device seeds")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{Path(trace.path).name}: inference under PCM drift")
    fig.savefig(Path(out), dpi=110)
    plt.close(fig)
