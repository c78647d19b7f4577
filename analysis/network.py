"""Network-level results: test accuracy per programming method and drift time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imcsim.store import Trace


@dataclass
class AccuracyTable:
    """Accuracy (fraction) per method × time: mean and sample std over device seeds."""

    methods: list[str]
    times: np.ndarray  # s
    mean: np.ndarray  # (methods, times)
    std: np.ndarray  # (methods, times), ddof = 1
    n_seeds: int
    float_accuracy: float
    weight_error: dict  # method -> mean relative weight error after programming
    pulses_mean: dict  # method -> mean pulses per device


def accuracy_table(trace: Trace) -> AccuracyTable:
    """Read the accuracy table of a network run."""
    methods = [str(m) for m in trace.attrs["network_methods"]]
    rows, stds, times = [], [], None
    weight, pulses = {}, {}
    for method in methods:
        s = trace.series(f"accuracy_{method}")
        times = s.t
        rows.append(s.data.mean(axis=1))
        stds.append(s.data.std(axis=1, ddof=1) if s.data.shape[1] > 1
                    else np.full(s.t.size, np.nan))
        weight[method] = float(trace.series(f"weight_error_{method}").data.mean())
        pulses[method] = float(trace.series(f"pulses_mean_{method}").data.mean())
    n_seeds = len(trace.attrs["network_device_seeds"])
    return AccuracyTable(methods, times if times is not None else np.zeros(0),
                         np.array(rows), np.array(stds), n_seeds,
                         trace.metrics()["float_accuracy"][0], weight, pulses)


def _time_label(t: float) -> str:
    for unit, s in (("y", 3.1536e7), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= s:
            return f"{t / s:g} {unit}"
    return f"{t:g} s"


def format_accuracy_table(table: AccuracyTable) -> list[str]:
    """Lines of text: method × time, mean ± std (%) over the device seeds."""
    head = f"  {'method':<8}" + "".join(f"{_time_label(t):>16}" for t in table.times) + \
        f"{'weight err':>12}{'pulses':>8}"
    lines = [f"  test accuracy (%), mean ± std over {table.n_seeds} device seeds; float "
             f"network {100 * table.float_accuracy:.2f} %", head]
    for k, method in enumerate(table.methods):
        cells = "".join(f"{100 * m:>9.2f} ± {100 * s:4.2f}"
                        for m, s in zip(table.mean[k], table.std[k]))
        lines.append(f"  {method:<8}{cells}{100 * table.weight_error[method]:>11.2f}%"
                     f"{table.pulses_mean[method]:>8.1f}")
    return lines


def summary_lines(trace: Trace) -> list[str]:
    """The lines ``imcsim info`` prints for a network check: the accuracy table."""
    return format_accuracy_table(accuracy_table(trace))
