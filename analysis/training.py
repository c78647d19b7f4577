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
        rows.append({"rule": rule, "accuracy_mean": float(final.mean()),
                     "accuracy_std": float(final.std(ddof=1)) if final.size > 1 else np.nan,
                     "seeds": int(final.size), "epochs": int(acc.shape[0]),
                     "pulses_mean": float(pulses[-1].mean())})
    return rows


def format_training_table(rows: list[dict]) -> list[str]:
    lines = [f"  final test accuracy (%), mean ± std over {rows[0]['seeds']} seeds, after "
             f"{rows[0]['epochs']} epochs" if rows else "  no training rules",
             f"  {'rule':<8}{'accuracy':>18}{'pulses/device':>16}"]
    for r in rows:
        lines.append(f"  {r['rule']:<8}{100 * r['accuracy_mean']:>10.2f} ± "
                     f"{100 * r['accuracy_std']:4.2f}{r['pulses_mean']:>16.2f}")
    return lines
