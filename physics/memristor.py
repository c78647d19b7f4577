"""Bulk-switching memristor (RRAM) pulse response: nonlinear, asymmetric, noisy, bounded.

Device: the forming-free bulk-switching RRAM of Wu, ..., Lu (arXiv 2305.14547, Adv. Mater.
2023): switching by the oxygen-vacancy profile in the bulk, gradual updates, low read noise,
up to 128 levels between 4 and 40 µS (16 levels between 7.6 and 31.3 µS on 4,096 devices).

Pulse response: the exponential form of NeuroSim (Chen et al., IEEE TCAD 2018), in which P
identical pulses from the bottom of the window give

    G(P) = G_min + B_p·(1 − exp(−P/A_p)),   B_p = (G_max − G_min)/(1 − exp(−P_max/A_p)),

so that G(P_max) = G_max, and depression from the top mirrors it with (A_d, B_d). Written
per pulse (what a kernel applies to a device in any state):

    potentiation  ΔG⁺(G) = (G_min + B_p − G)·(1 − e^(−1/A_p))
    depression    ΔG⁻(G) = −(G − G_max + B_d)·(1 − e^(−1/A_d)),

each multiplied by (1 + σ_c2c·ξ) (cycle-to-cycle noise) and the result clipped to
[G_min, G_max]. A small A is strongly nonlinear (large first steps that shrink quickly), a
large A nearly linear; A_p ≠ A_d makes the response asymmetric. Device-to-device spread:
A_p, A_d, G_min and G_max of each device are drawn once, lognormally (A) and normally (window
edges). Read noise: additive Gaussian of σ_read relative to G at each read.

The window (4-40 µS) and 128 levels are the paper's; the nonlinearity, asymmetry and noise
defaults are **our documented choices** (the paper shows curves but no fitted A): users
calibrate them to their own data with :func:`fit_pulse_response`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from imcsim.physics import rng

STREAM_MEMRISTOR_D2D = 20
STREAM_MEMRISTOR_PULSE = 21
STREAM_MEMRISTOR_READ = 22


@dataclass(frozen=True)
class BulkSwitchingModel:
    """Parameters of the pulse response (SI units; A in pulses).

    Attributes:
        g_min, g_max: conductance window, S.
        pulses_full: P_max, pulses that sweep the whole window (128 levels).
        a_potentiation, a_depression: nonlinearity constants A_p, A_d (pulses).
        sigma_c2c: relative cycle-to-cycle spread of one increment.
        sigma_d2d_a: lognormal device-to-device spread of A_p and A_d.
        sigma_d2d_window: relative device-to-device spread of G_min and G_max.
        sigma_read: relative read noise.
    """

    g_min: float = 4e-6
    g_max: float = 40e-6
    pulses_full: int = 128
    a_potentiation: float = 60.0
    a_depression: float = 45.0
    sigma_c2c: float = 0.1
    sigma_d2d_a: float = 0.1
    sigma_d2d_window: float = 0.03
    sigma_read: float = 0.005


@dataclass(frozen=True)
class MemristorDevices:
    """Per-device parameters (arrays of one length): window edges (S) and A_p, A_d."""

    g_min: np.ndarray
    g_max: np.ndarray
    a_potentiation: np.ndarray
    a_depression: np.ndarray


def draw_devices(model: BulkSwitchingModel, n: int, seed: int) -> MemristorDevices:
    """Device-to-device parameters of ``n`` devices, a pure function of (seed, index)."""
    z = [rng.normals(seed, STREAM_MEMRISTOR_D2D, (n,), counter=k) for k in range(4)]
    span = model.g_max - model.g_min
    g_min = model.g_min + model.sigma_d2d_window * span * z[0]
    g_max = model.g_max + model.sigma_d2d_window * span * z[1]
    g_max = np.maximum(g_max, g_min + 0.1 * span)
    return MemristorDevices(g_min, g_max,
                            model.a_potentiation * np.exp(model.sigma_d2d_a * z[2]),
                            model.a_depression * np.exp(model.sigma_d2d_a * z[3]))


@njit(cache=True, inline="always")
def direction_constants(up, g_min, g_max, a_p, a_d, pulses_full):
    """(asymptote G_∞, per-pulse fraction k) of one direction: ΔG = (G_∞ − G)·k, with
    G_∞ = G_min + B_p, k = 1 − e^(−1/A_p) up and G_∞ = G_max − B_d, k = 1 − e^(−1/A_d) down."""
    if up:
        b = (g_max - g_min) / (1.0 - np.exp(-pulses_full / a_p))
        return g_min + b, 1.0 - np.exp(-1.0 / a_p)
    b = (g_max - g_min) / (1.0 - np.exp(-pulses_full / a_d))
    return g_max - b, 1.0 - np.exp(-1.0 / a_d)


@njit(cache=True, inline="always")
def pulse_step(g, g_inf, k, g_min, g_max, sigma_c2c, xi):
    """One pulse: G + (G_∞ − G)·k·(1 + σ_c2c·ξ), clipped to [G_min, G_max] (S)."""
    g_new = g + (g_inf - g) * k * (1.0 + sigma_c2c * xi)
    return min(max(g_new, g_min), g_max)


@njit(cache=True, parallel=True)
def apply_pulses(g, n_pulses, g_min, g_max, a_p, a_d, pulses_full, sigma_c2c, seed, counter0,
                 pulse_count):
    """Apply ``n_pulses[i]`` pulses to device i in place: potentiation for n > 0, depression
    for n < 0. Device i's k-th pulse ever (``pulse_count[i]`` before this call, updated)
    draws its noise at counter ``counter0 + pulse_count[i] + k``, so the result does not
    depend on how updates are batched over calls."""
    key = rng.stream_key(seed, STREAM_MEMRISTOR_PULSE)
    for i in prange(g.size):
        n = n_pulses[i]
        if n == 0:
            continue
        o = rng.index_origin(key, i)
        gi = g[i]
        count = abs(n)
        g_inf, k_frac = direction_constants(n > 0, g_min[i], g_max[i], a_p[i], a_d[i],
                                            pulses_full)
        for k in range(count):
            xi = rng.origin_normal(o, counter0 + pulse_count[i] + k)
            gi = pulse_step(gi, g_inf, k_frac, g_min[i], g_max[i], sigma_c2c, xi)
        g[i] = gi
        pulse_count[i] += count


@njit(cache=True, parallel=True)
def read(g, sigma_read, seed, counter, out):
    """Read every device once: G·(1 + σ_read·ξ), ξ at ``counter`` of the READ stream."""
    key = rng.stream_key(seed, STREAM_MEMRISTOR_READ)
    for i in prange(g.size):
        out[i] = g[i] * (1.0 + sigma_read * rng.origin_normal(rng.index_origin(key, i),
                                                              counter))


def pulse_response(model_or_params, pulses: int, up: bool = True, g0: float | None = None):
    """Noise-free conductance after 0..pulses pulses (closed form of the NeuroSim curve)."""
    m = model_or_params
    p = np.arange(pulses + 1)
    if up:
        b = (m.g_max - m.g_min) / (1.0 - np.exp(-m.pulses_full / m.a_potentiation))
        start = m.g_min if g0 is None else g0
        # from G0 the curve is the same exponential, shifted in P
        return m.g_min + b - (m.g_min + b - start) * np.exp(-p / m.a_potentiation)
    b = (m.g_max - m.g_min) / (1.0 - np.exp(-m.pulses_full / m.a_depression))
    start = m.g_max if g0 is None else g0
    return m.g_max - b + (start - m.g_max + b) * np.exp(-p / m.a_depression)


@dataclass(frozen=True)
class PulseResponseFit:
    """Result of :func:`fit_pulse_response`: parameters and their standard errors."""

    g_min: float
    g_max: float
    a_potentiation: float
    a_depression: float
    pulses_full: int
    stderr: dict

    def model(self, base: BulkSwitchingModel | None = None) -> BulkSwitchingModel:
        """A :class:`BulkSwitchingModel` with the fitted window and nonlinearity."""
        import dataclasses

        return dataclasses.replace(base or BulkSwitchingModel(), g_min=self.g_min,
                                   g_max=self.g_max, a_potentiation=self.a_potentiation,
                                   a_depression=self.a_depression,
                                   pulses_full=self.pulses_full)


def fit_pulse_response(g_up: np.ndarray, g_down: np.ndarray) -> PulseResponseFit:
    """Fit the NeuroSim form to measured curves: ``g_up[P]`` after P potentiation pulses from
    the bottom of the window, ``g_down[P]`` after P depression pulses from the top (S).

    Both curves share G_min and G_max; P_max is the number of pulses of the curves. Least
    squares (scipy ``curve_fit``) over (G_min, G_max, A_p, A_d), started from the curve ends
    and a linear-ish A; returns parameters with standard errors from the covariance.
    """
    from scipy.optimize import curve_fit

    g_up = np.asarray(g_up, dtype=float)
    g_down = np.asarray(g_down, dtype=float)
    if g_up.ndim != 1 or g_down.ndim != 1 or g_up.size < 4 or g_down.size < 4:
        raise ValueError("need two 1-D curves of at least 4 points (conductance vs pulses)")
    if not (np.all(np.isfinite(g_up)) and np.all(np.isfinite(g_down))):
        raise ValueError("curves must be finite")
    p_max = max(g_up.size, g_down.size) - 1
    p_up = np.arange(g_up.size)
    p_down = np.arange(g_down.size)

    def both(_, g_min, g_max, a_p, a_d):
        b_p = (g_max - g_min) / (1.0 - np.exp(-p_max / a_p))
        b_d = (g_max - g_min) / (1.0 - np.exp(-p_max / a_d))
        up = g_min + b_p * (1.0 - np.exp(-p_up / a_p))
        down = g_max - b_d * (1.0 - np.exp(-p_down / a_d))
        return np.concatenate([up, down])

    # Fit in units of the observed span, so that the solver's tolerances mean something for
    # conductances of ~1e-5 S.
    offset = float(g_up[0])
    scale = max(abs(float(g_down[0]) - offset), 1e-30)
    data = (np.concatenate([g_up, g_down]) - offset) / scale
    start = (0.0, 1.0, p_max / 2.0, p_max / 2.0)
    popt, pcov = curve_fit(both, None, data, p0=start,
                           bounds=([-np.inf, -np.inf, 0.05, 0.05], [np.inf, np.inf, 1e6, 1e6]),
                           maxfev=20000)
    popt[:2] = offset + scale * popt[:2]
    pcov[:2, :] *= scale
    pcov[:, :2] *= scale
    err = np.sqrt(np.diag(pcov))
    names = ("g_min", "g_max", "a_potentiation", "a_depression")
    return PulseResponseFit(*map(float, popt), pulses_full=p_max,
                            stderr=dict(zip(names, map(float, err))))
