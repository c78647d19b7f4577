"""Figures of trace files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imcsim.analysis.drift import conductance_histograms, drift_exponents, mvm_error_vs_time
from imcsim.store import Trace

_YEAR = 3.1536e7


def _time_label(t: float) -> str:
    for unit, s in (("y", _YEAR), ("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if t >= s:
            return f"{t / s:.3g} {unit}"
    return f"{t:.2g} s"


def drift_figure(trace: Trace, out: str | Path) -> Path:
    """Conductance distributions at the full reads, subset traces, ν fit and MVM error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax = axes[0, 0]
    if "conductance" in trace.series_names() and trace.series("conductance").t.size:
        edges, times, counts = conductance_histograms(trace, bins=100, pair=0)
        centres = 0.5 * (edges[1:] + edges[:-1]) * 1e6
        for t, c in zip(times, counts):
            ax.plot(centres, c, label=f"t = {_time_label(t)}")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("G⁺ conductance (µS)")
    ax.set_ylabel("devices per bin")
    ax.set_title("Conductance distribution (all G⁺ devices)")

    ax = axes[0, 1]
    s = trace.series("conductance_subset")
    if s.t.size:
        show = s.data[:, :: max(1, s.data.shape[1] // 40)]
        ax.plot(s.t, show * 1e6, lw=0.6, alpha=0.7)
        ax.set_xscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("conductance (µS)")
    ax.set_title("Recorded devices (drift + 1/f read noise)")

    ax = axes[1, 0]
    try:
        _, nu_fit, nu_model = drift_exponents(trace)
        ok = np.isfinite(nu_fit) & (nu_model > 0)
        ax.scatter(nu_model[ok], nu_fit[ok], s=6, alpha=0.6)
        top = max(float(np.max(nu_model[ok], initial=0.0)), float(np.max(nu_fit[ok], initial=0.0)))
        lim = [0, max(0.05, top * 1.05)]
        ax.plot(lim, lim, "k--", lw=0.8, label="ν fit = ν model")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.legend(fontsize=8)
    except (ValueError, KeyError) as exc:
        ax.text(0.5, 0.5, f"no drift fit: {exc}", ha="center", transform=ax.transAxes)
    ax.set_xlabel("drift exponent ν drawn by the model")
    ax.set_ylabel("ν fitted from the reads")
    ax.set_title("Drift exponents")

    ax = axes[1, 1]
    if "mvm_error" in trace.series_names() and trace.series("mvm_error").t.size:
        c = mvm_error_vs_time(trace)
        ax.plot(c.t, c.error * 100, "o-", ms=3, label="raw")
        ax.plot(c.t, c.error_gdc * 100, "s-", ms=3, label="global drift compensation")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("relative MVM error (%)")
    ax.set_title("MVM error vs time")
    fig.suptitle(f"{trace.attrs.get('run_name', '')}: {trace.path.name} "
                 f"(seed {trace.attrs.get('seed')}, status {trace.status})")
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
