"""Drift analysis of PCM traces: ν fits, MVM error vs time, conductance histograms."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from imcsim.store import Trace


def fit_drift_exponents(tau: np.ndarray, g: np.ndarray, tau_min: float) -> np.ndarray:
    """Least-squares ν per device from log G = log G_0 − ν·log τ over reads with τ ≥ tau_min.

    ``tau`` is the time since programming, (n_times,) or (n_times, n_devices), in s; ``g`` is
    (n_times, n_devices) in S. Devices that read 0 S at a used time get NaN. 1/f read noise
    scatters log G by about Q_s·sqrt(ln(τ/2t_read)) per read, so the fit's standard error is
    roughly that over (std of log τ · sqrt(n_times)).
    """
    tau = np.broadcast_to(tau.reshape(tau.shape[0], -1), g.shape)
    use = tau >= tau_min
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t = np.where(use, np.log(np.where(use, tau, 1.0)), np.nan)
        log_g = np.where(use, np.log(np.where(use, g, 1.0)), np.nan)
    unreadable = np.any(use & ~np.isfinite(log_g), axis=0)  # read 0 S (or less): no fit
    log_g[:, unreadable] = np.nan
    n = use.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of unfit devices
        x = log_t - np.nanmean(log_t, axis=0)
        y = log_g - np.nanmean(log_g, axis=0)
        nu = -np.nansum(x * y, axis=0) / np.nansum(x * x, axis=0)
    nu[(n < 2) | unreadable] = np.nan
    return nu


def drift_exponents(trace: Trace, after: float = 0.0, tau_min: float | None = None):
    """ν fitted from the recorded subset over reads after the programming step that precedes
    time ``after`` (s), using reads at least ``tau_min`` (default 2·t0) after each device's
    last pulse. Returns (subset indices, ν fitted, ν drawn by the model for those devices)."""
    from imcsim.config import Scenario, from_dict

    t0 = from_dict(Scenario, trace.scenario, "").device.statistical_model().t0
    prog = trace.series("t_programmed")
    if prog.t.size == 0:
        raise ValueError("no programming step in this run")
    k = max(int(np.searchsorted(prog.t, after, side="right")) - 1, 0)
    t_next = prog.t[k + 1] if k + 1 < prog.t.size else np.inf
    s = trace.series("conductance_subset", t_min=prog.t[k], t_max=t_next)
    idx = trace.device("subset_index")
    tp = prog.data[k].reshape(-1)[idx]
    tau = s.t[:, None] - tp[None, :]
    nu_fit = fit_drift_exponents(tau, s.data, 2 * t0 if tau_min is None else tau_min)
    nu_model = trace.series("nu").data[k].reshape(-1)[idx]
    return idx, nu_fit, nu_model


@dataclass
class MVMErrorCurve:
    t: np.ndarray  # s
    error: np.ndarray  # relative, raw
    error_gdc: np.ndarray  # relative, global drift compensation
    alpha: np.ndarray


def mvm_error_vs_time(trace: Trace, t_min: float = -np.inf, t_max: float = np.inf
                      ) -> MVMErrorCurve:
    """Relative MVM error with and without global drift compensation against time."""
    e = trace.series("mvm_error", t_min, t_max)
    g = trace.series("mvm_error_gdc", t_min, t_max)
    a = trace.series("gdc_alpha", t_min, t_max)
    return MVMErrorCurve(e.t, e.data, g.data, a.data)


def conductance_histograms(trace: Trace, bins: int = 80, pair: int | None = None):
    """Histograms of all-device reads: (bin edges in S, t (s), counts [n_times, bins])."""
    s = trace.series("conductance")
    data = s.data if pair is None else s.data[:, pair]
    flat = data.reshape(data.shape[0], -1)
    hi = float(np.nanmax(flat)) if flat.size else 1.0
    edges = np.linspace(0.0, hi * 1.001 if hi > 0 else 1.0, bins + 1)
    counts = np.stack([np.histogram(row, edges)[0] for row in flat]) if flat.size else \
        np.zeros((0, bins), dtype=int)
    return edges, s.t, counts
