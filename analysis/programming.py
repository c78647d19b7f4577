"""Programming studies (GDP against program-and-verify): tables and figures from a study trace.

A study file holds one run per (method, targets, ADC resolution); each run's scenario says
which it is. Errors are the relative MVM errors ‖y − x·W_T‖/‖x·W_T‖ recorded by the MVM
events (through the run's DAC and ADC, with read noise and drift at the MVM time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imcsim.store import Trace, open_trace, run_names


def method_label(scenario: dict) -> str:
    """A short name for how a run programmed its tile (its first program step)."""
    step = next((s for s in scenario.get("timeline", []) if s.get("kind") == "program"), None)
    if step is None:
        return "none"
    method = step.get("method", "verify")
    if method != "verify":
        return method
    verify = step.get("verify", {})
    read = "ADC read" if verify.get("read_through_adc") else "hi-res read"
    kind = "verify" if verify.get("differential") else "verify (per device)"
    return f"{kind}, {read}"


@dataclass
class StudyRun:
    """What the analysis needs of one run."""

    name: str
    method: str
    targets: str
    adc_bits: int
    metrics: dict
    mvm_t: np.ndarray
    mvm_error: np.ndarray
    mvm_error_gdc: np.ndarray
    gdp: dict = field(default_factory=dict)  # t, mvm_error, pulses_mean of GDP iterations
    verify: dict = field(default_factory=dict)  # the same for verify budgets 1..max_pulses

    def error_at(self, t: float, compensated: bool = False) -> float:
        """MVM error at the MVM time closest to ``t`` (s, log distance)."""
        if self.mvm_t.size == 0:
            return np.nan
        k = int(np.argmin(np.abs(np.log(self.mvm_t) - np.log(t))))
        return float((self.mvm_error_gdc if compensated else self.mvm_error)[k])


def load_study(path: str | Path) -> list[StudyRun]:
    """Every run of a study trace (or the single run of a plain trace)."""
    with open_trace(path) as f:
        names = run_names(f) or [None]
    runs = []
    for name in names:
        with Trace(path, run=name) as tr:
            sc = tr.scenario
            series = tr.series_names()
            mvm = tr.series("mvm_error") if "mvm_error" in series else None
            gdc = tr.series("mvm_error_gdc") if "mvm_error_gdc" in series else None
            curves = {}
            for prefix in ("gdp", "verify"):
                if f"{prefix}_mvm_error" in series:
                    e = tr.series(f"{prefix}_mvm_error")
                    curves[prefix] = {"t": e.t, "mvm_error": e.data,
                                      "pulses_mean": tr.series(f"{prefix}_pulses_mean").data}
            runs.append(StudyRun(
                name=name or str(tr.attrs.get("run_name", "run")), method=method_label(sc),
                targets=sc.get("targets", {}).get("distribution", "uniform"),
                adc_bits=int(sc.get("periphery", {}).get("adc_bits", 0)),
                metrics={k: v for k, (v, _) in tr.metrics().items()},
                mvm_t=mvm.t if mvm is not None else np.zeros(0),
                mvm_error=mvm.data if mvm is not None else np.zeros(0),
                mvm_error_gdc=gdc.data if gdc is not None else np.zeros(0),
                gdp=curves.get("gdp", {}), verify=curves.get("verify", {})))
    return runs


def comparison_rows(runs: list[StudyRun], times=(1.0, 86400.0, 3.1536e7)) -> list[dict]:
    """One row per run: method, targets, ADC bits, MVM error at ``times`` (raw and drift
    compensated), programmed-weight error and mean pulses per device."""
    rows = []
    for r in runs:
        row = {"run": r.name, "method": r.method, "targets": r.targets, "adc_bits": r.adc_bits,
               "weight_error": r.metrics.get("weight_error_relative", np.nan),
               "pulses_mean": r.metrics.get("pulses_mean", np.nan)}
        for t in times:
            row[f"error@{t:g}s"] = r.error_at(t)
            row[f"error_gdc@{t:g}s"] = r.error_at(t, compensated=True)
        rows.append(row)
    return rows


def _groups(runs):
    """(method, targets) -> runs sorted by ADC bits."""
    out: dict[tuple[str, str], list[StudyRun]] = {}
    for r in runs:
        out.setdefault((r.method, r.targets), []).append(r)
    return {k: sorted(v, key=lambda r: r.adc_bits) for k, v in out.items()}


def programming_figure(path: str | Path, out: str | Path) -> Path:
    """GDP convergence, error vs ADC bits, error vs drift time and error vs pulses spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_study(path)
    groups = _groups(runs)
    colours = {key: f"C{k}" for k, key in enumerate(groups)}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)

    ax = axes[0, 0]
    for key, rs in groups.items():
        for r in rs:
            if r.gdp:
                best = r.adc_bits == max(x.adc_bits for x in rs)
                ax.plot(np.arange(1, r.gdp["mvm_error"].size + 1), r.gdp["mvm_error"] * 100,
                        color=colours[key], alpha=1.0 if best else 0.3,
                        label=f"{key[0]}, {key[1]}, {r.adc_bits}-bit ADC" if best else None)
    ax.set_yscale("log")
    ax.set_xlabel("GDP iteration")
    ax.set_ylabel("MVM error seen through the ADC (%)")
    ax.set_title("GDP convergence (faint: fewer ADC bits)")
    if ax.lines:
        ax.legend(fontsize=8)

    ax = axes[0, 1]
    for key, rs in groups.items():
        bits = [r.adc_bits for r in rs]
        ax.plot(bits, [r.error_at(1.0) * 100 for r in rs], "o-", color=colours[key],
                label=f"{key[0]}, {key[1]}")
    ax.set_yscale("log")
    ax.set_xlabel("ADC bits")
    ax.set_ylabel("MVM error at 1 s (%)")
    ax.set_title("Error vs ADC resolution (equal pulse cap)")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    for key, rs in groups.items():
        r = rs[-1]  # the finest ADC of the group
        if r.mvm_t.size:
            ax.plot(r.mvm_t, r.mvm_error * 100, "o--", color=colours[key], alpha=0.6)
            ax.plot(r.mvm_t, r.mvm_error_gdc * 100, "s-", color=colours[key],
                    label=f"{key[0]}, {key[1]}, {r.adc_bits}-bit")
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("MVM error (%)")
    ax.set_title("Drift: raw (dashed) and with global drift compensation")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for key, rs in groups.items():
        r = rs[-1]  # the finest ADC of the group
        curve = r.gdp or r.verify
        if curve:
            ax.plot(curve["pulses_mean"], curve["mvm_error"] * 100, "-", color=colours[key],
                    label=f"{key[0]}, {key[1]}, {r.adc_bits}-bit")
        ax.scatter([x.metrics.get("pulses_mean", np.nan) for x in rs],
                   [x.error_at(1.0) * 100 for x in rs], color=colours[key], s=12,
                   label=None if curve else f"{key[0]}, {key[1]}")
    ax.set_yscale("log")
    ax.set_xlabel("mean pulses per device spent (cap equal for all)")
    ax.set_ylabel("MVM error through the ADC (%)")
    ax.set_title("Error vs pulses: during programming (lines), at 1 s (dots)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{Path(path).name}: programming study ({len(runs)} runs)")
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
