"""On-device training results: final accuracy and pulses per update rule."""

from __future__ import annotations

import numpy as np

from imcsim.store import Trace


def training_table(trace: Trace) -> list[dict]:
    """One row per rule: final test accuracy (mean, sample std over seeds), epochs, and the
    mean pulses per device over training."""
    rows = []
    for rule in [str(r) for r in trace.attrs["training_rules"]]:
        acc = trace.series(f"accuracy_{rule}").data
        pulses = trace.series(f"pulses_mean_{rule}").data
        final = acc[-1]
        moved = trace.series(f"transfer_{rule}").data[-1]  # (seeds, 2)
        rows.append({"rule": rule, "accuracy_mean": float(final.mean()),
                     "transfer_mean": float(moved[:, 0].mean()),
                     "retrained_mean": float(moved[:, 1].mean()),
                     "accuracy_std": float(final.std(ddof=1)) if final.size > 1 else np.nan,
                     "seeds": int(final.size), "epochs": int(acc.shape[0]),
                     "pulses_mean": float(pulses[-1].mean())})
    return rows


def format_training_table(rows: list[dict]) -> list[str]:
    lines = [f"  final test accuracy (%), mean ± std over {rows[0]['seeds']} seeds, after "
             f"{rows[0]['epochs']} epochs" if rows else "  no training rules",
             f"  {'rule':<8}{'accuracy':>18}{'pulses/device':>16}{'fresh chip':>12}"
             f"{'+1 epoch':>10}"]
    for r in rows:
        lines.append(f"  {r['rule']:<8}{100 * r['accuracy_mean']:>10.2f} ± "
                     f"{100 * r['accuracy_std']:4.2f}{r['pulses_mean']:>16.2f}"
                     f"{100 * r['transfer_mean']:>12.2f}{100 * r['retrained_mean']:>10.2f}")
    return lines


def training_figure(trace: Trace, out):
    """Accuracy and loss per epoch (mean ± std over seeds) and pulses per device."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [str(r) for r in trace.attrs["training_rules"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for rule in rules:
        for ax, name in zip(axes[:2], ("accuracy", "loss")):
            s = trace.series(f"{name}_{rule}")
            mean, std = s.data.mean(axis=1), s.data.std(axis=1)
            scale = 100.0 if name == "accuracy" else 1.0
            ax.plot(s.t, mean * scale, "o-", label=rule)
            ax.fill_between(s.t, (mean - std) * scale, (mean + std) * scale, alpha=0.2)
        if rule != "float":
            pulses = trace.series(f"pulses_{rule}").data[-1].ravel()
            axes[2].hist(pulses, bins=50, alpha=0.6, label=f"{rule} (mean {pulses.mean():.1f})")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("training loss")
    axes[2].set_xlabel("pulses per device over training")
    axes[2].set_ylabel("devices")
    axes[2].set_yscale("log")
    for ax in axes[:2]:
        ax.set_xlabel("epoch")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"{trace.path.name}: on-device training ({len(rules)} rules)")
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def summary_lines(trace: Trace) -> list[str]:
    """The lines ``imcsim info`` prints for a training study: the per-rule table."""
    return format_training_table(training_table(trace))


def figure(trace: Trace, out) -> None:
    """The figure ``imcsim plot`` draws for a training study."""
    training_figure(trace, out)
