"""Charge-domain spiking IMC core, event by event (Sakemi et al., arXiv 2412.09010 v1).

A column of a charge-domain crossbar is a membrane capacitor C_m charged by synapses that an
input spike switches on and that stay on to the end of the accumulation phase. A real
current source's output depends on the node it drives (channel-length modulation,
I = I₀·(1 + λ·V_DS)), so each synapse is a conductance with a reversal potential,
C_m·dV/dt = Σ_j g_j·(E_j − V)·θ(t − t_j) (their Eq. 1 and App. A). The paper calls the
result a spiking network with reversal potentials, the "IMC-aware neuron model".

**Normalised units** (every function here except the SI mappings at the end:
:func:`normalise_synapse`, :func:`normalise_current` and their inverses). Time is in units of
the phase length T (1 µs in their sky130 circuit), potential in units of the swing V_swing
from the reset level to the firing threshold, measured from reset toward threshold (their
circuit is inverted in polarity; V here is the excursion). Then (their Eqs. 8-11)

    dv/dt = −α·v + Σ_j w_ij·(1 − β_ij·v)·θ(t − t_j),   0 ≤ t < 1 (accumulation phase)

with w_ij = g_ij·T·E_ij/(C_m·V_swing) and β_ij = V_swing/E_ij (:func:`normalise_synapse`):
β = 1/E₊ > 0 for excitatory (w ≥ 0) and 1/E₋ < 0 for inhibitory (w < 0) synapses, so β·w ≥ 0
and every synapse pulls v toward its own reversal potential. β = 0 everywhere is the ideal
("top-down") core whose synaptic current does not depend on v; it ends the phase at
v(1) = Σ_j w_ij·(1 − t_j) (a weighted sum, the ANN view of the circuit). α is the leak
T/(R_leak·C_m) (0 in all of the paper's experiments).

**Closed form.** Between two input events f = α + Σ_on β·w and g = Σ_on w are constant, so
v(t + Δ) = v(t)·e^{−fΔ} + g·Δ·φ(fΔ) with φ(x) = (1 − e^{−x})/x (= their Eq. 33,
v_j = g/f + (v_{j−1} − g/f)·e^{−fΔ}, written so that f → 0 is exact). The kernels sort each
sample's input spikes once and apply this per interval: no time step anywhere.

**RC-Spike neuron** (their Eqs. 20, 26, 27; Fig. 4a; the circuit of Fig. 6). v(0) = 0. After
the accumulation phase comes the firing phase, in which the inputs are off (the layer before
is being reset) and a discharger drives the membrane toward threshold:

    dv/dt = a·(1 − β_fire·v) − α·v = a − κ·v,   κ = a·β_fire + α,   1 ≤ t < 2 (firing phase)

The paper's ideal model has κ = 0 and a = 1 (dv/dt = 1, so t_out = 1 − v(1)); their
circuit's discharge transistor has a finite reversal potential E_dis ≈ 6.44 (β_fire =
1/E_dis, their Table 2). a is the discharge current in units of C_m·V_swing/T: 1 by default
(the rate at the reset level, the project's reference form); their App. A.2 (Eqs. 82-85)
sizes it so that v(1) = 0 fires exactly at the end of the phase,
a = −ln(1 − β_fire)/β_fire (:func:`calibrated_fire_rate`). The neuron spikes once, when v
reaches the threshold 1; its spike time, measured from the start of the firing phase, is
(by solving the linear equation above)

    t_out = ln((a − κ·v(1)) / (a − κ)) / κ    (t_out = (1 − v(1))/a for κ = 0)

and the output spike is the next layer's input spike at that time of its accumulation phase.

**Rule for neurons that do not reach threshold.** A neuron with v(1) ≥ 1 spikes at once,
t_out = 0 (the output stage only acts in the firing phase). A neuron that does not reach the
threshold within the firing phase (t_out > 1, or κ ≥ a so that v never reaches 1) does not
spike: ``t_out = np.inf`` (the *physical* rule, what the circuit does). With
``clipped=True`` it is 1 instead: the paper's clip(·) to [0, 1] (their Eq. 27), used in
training. The two give the same next layer: an input spike at t = 1 or never switches its
synapse on for no time at all.

Input times outside [0, 1): np.inf (or any t ≥ 1) means the input never spikes in the
accumulation phase; negative or NaN times are errors.

The exact gradients (:func:`layer_gradients`) are those of the closed form: reverse-mode
through the per-interval update, and for the firing time implicit differentiation of the
threshold crossing v(t_out) = 1, dt_out/dv(1) = −(∂v(t_out)/∂v(1))/v̇(t_out)
= −1/(a − κ·v(1)).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from imcsim.physics import mathfn

# |f·Δ| below which φ and φ' use their Taylor series (truncation error < 1e-15 relative).
_SERIES_X = 1e-3


# ----------------------------------------------------------------------------------------
# Scalar closed forms (shared by every kernel below)


@njit(cache=True, inline="always")
def _phi(x):
    """φ(x) = (1 − e^{−x})/x, φ(0) = 1, accurate for every x (expm1)."""
    if x == 0.0:
        return 1.0
    return -math.expm1(-x) / x


@njit(cache=True, inline="always")
def _dphi(x):
    """φ'(x) = (e^{−x} − φ(x))/x, by its Taylor series near 0 (no cancellation)."""
    if abs(x) < _SERIES_X:
        return -0.5 + x * (1.0 / 3.0 - x * (0.125 - x / 30.0))
    return (math.exp(-x) - _phi(x)) / x


@njit(cache=True, inline="always", error_model="numpy")
def _advance(v, f, g, dt):
    """v(t + dt) of dv/dt = g − f·v from v(t) = v (f, g constant).

    Branch-free so that the loops over neurons vectorise: e^{−x} by the table exponential of
    :mod:`mathfn` (≤ 1 ulp), φ(x) = (1 − e^{−x})/x, or its Taylor series for |x| < 10⁻³
    (where the difference loses digits; truncation < 10⁻¹⁸)."""
    x = f * dt
    e = mathfn.exp(-x)
    series = 1.0 - x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0 - x / 120.0)))
    phi = series if abs(x) < _SERIES_X else (1.0 - e) / x
    return v * e + g * dt * phi


@njit(cache=True, inline="always")
def _firing_time(v_end, rate, kappa, clipped):
    """Threshold-crossing time of dv/dt = a − κ·v (a = ``rate``) from v(0) = v_end to v = 1
    (module doc)."""
    if v_end >= 1.0:
        return 0.0
    if kappa == 0.0:
        t = (1.0 - v_end) / rate
    elif kappa >= rate:
        t = np.inf  # the discharge saturates at a/κ ≤ 1: threshold never reached
    else:
        r = kappa / rate
        t = (math.log1p(-r * v_end) - math.log1p(-r)) / kappa
    if t > 1.0:
        return 1.0 if clipped else np.inf
    return t


# ----------------------------------------------------------------------------------------
# Exact event-driven layer (Numba)


# Batches with fewer synaptic updates (batch × N_in × N_out) than this run on one thread: a
# parallel launch costs more than it saves there (and far more when a core is busy).
_PARALLEL_WORK = 1 << 18


@njit(cache=True, error_model="numpy")
def _layer_sample(b, t_in, w, beta_w, leak, rate, kappa, clipped, t_out, v_end):
    """One sample of an RC-Spike layer: its input spikes sorted once, the closed form applied
    per interval between them, then the firing-phase crossing."""
    n_in = t_in.shape[1]
    n_out = w.shape[1]
    order = np.argsort(t_in[b], kind="mergesort")
    v = np.zeros(n_out)
    f = np.full(n_out, leak)
    g = np.zeros(n_out)
    t_prev = 0.0
    for k in range(n_in):
        j = order[k]
        tj = t_in[b, j]
        if not tj < 1.0:
            break  # sorted: every later input spikes after the phase (or never)
        dt = tj - t_prev
        if dt > 0.0:
            for i in range(n_out):
                v[i] = _advance(v[i], f[i], g[i], dt)
        for i in range(n_out):
            f[i] += beta_w[j, i]
            g[i] += w[j, i]
        t_prev = tj
    dt = 1.0 - t_prev
    for i in range(n_out):
        vi = _advance(v[i], f[i], g[i], dt)
        v_end[b, i] = vi
        t_out[b, i] = _firing_time(vi, rate, kappa, clipped)


@njit(cache=True, parallel=True)
def _layer_kernel(t_in, w, beta_w, leak, rate, kappa, clipped, t_out, v_end):
    """:func:`_layer_sample` over a batch, one sample per thread (thread-count independent)."""
    for b in prange(t_in.shape[0]):
        _layer_sample(b, t_in, w, beta_w, leak, rate, kappa, clipped, t_out, v_end)


@njit(cache=True)
def _layer_kernel_serial(t_in, w, beta_w, leak, rate, kappa, clipped, t_out, v_end):
    """:func:`_layer_kernel` on the calling thread (same arithmetic, same bytes)."""
    for b in range(t_in.shape[0]):
        _layer_sample(b, t_in, w, beta_w, leak, rate, kappa, clipped, t_out, v_end)


@njit(cache=True, error_model="numpy")
def _layer_grad_sample(b, t_in, w, beta, beta_w, leak, grad_v_end, grad_w, grad_t_in):
    """Reverse mode through :func:`_layer_sample`'s accumulation phase for sample b.

    grad_w[b, j, i] = ∂L/∂w_ji of sample b (β held fixed), grad_t_in[b, j] = ∂L/∂t_j, for
    L = Σ_i grad_v_end[b, i]·v_i(1). Per interval s with x = f·Δ:
    ∂v_{s+1}/∂v_s = e^{−x}, ∂v_{s+1}/∂g = Δ·φ(x), ∂v_{s+1}/∂f = Δ·(−v_s·e^{−x} + g·Δ·φ'(x)).
    Input j (switched on at its event p) enters f and g of every interval from p on, so
    ∂L/∂w_ji = β_ji·Σ_{s≥p} ∂L/∂f_s + Σ_{s≥p} ∂L/∂g_s; delaying its onset by δ removes
    w_ji·(1 − β_ji·v_i(t_j))·δ of charge at t_j, so ∂L/∂t_j = −Σ_i λ_i(t_j)·w_ji·(1 − β_ji·v_i(t_j))
    with λ(t_j) = ∂L/∂v(t_j) the adjoint carried back from t = 1.
    """
    n_in = t_in.shape[1]
    n_out = w.shape[1]
    order = np.argsort(t_in[b], kind="mergesort")
    n_ev = 0
    while n_ev < n_in and t_in[b, order[n_ev]] < 1.0:
        n_ev += 1
    # Forward, keeping v at every event (after the interval before it).
    v_at = np.zeros((n_ev + 1, n_out))
    dts = np.empty(n_ev + 1)
    f = np.full(n_out, leak)
    g = np.zeros(n_out)
    t_prev = 0.0
    v = np.zeros(n_out)
    for k in range(n_ev):
        j = order[k]
        tj = t_in[b, j]
        dt = tj - t_prev
        if k > 0:
            dts[k - 1] = dt
            for i in range(n_out):
                v[i] = _advance(v[i], f[i], g[i], dt)
        for i in range(n_out):
            v_at[k, i] = v[i]
            f[i] += beta_w[j, i]
            g[i] += w[j, i]
        t_prev = tj
    if n_ev > 0:
        dts[n_ev - 1] = 1.0 - t_prev
    # Backward over the intervals after each event, last first; f, g are undone as
    # each event is passed.
    lam = grad_v_end[b].copy()
    sum_f = np.zeros(n_out)
    sum_g = np.zeros(n_out)
    for k in range(n_ev - 1, -1, -1):
        j = order[k]
        dt = dts[k]
        for i in range(n_out):
            x = f[i] * dt
            e = math.exp(-x)
            vs = v_at[k, i]
            sum_f[i] += lam[i] * dt * (-vs * e + g[i] * dt * _dphi(x))
            sum_g[i] += lam[i] * dt * _phi(x)
            lam[i] *= e
        acc = 0.0
        for i in range(n_out):
            grad_w[b, j, i] = beta[j, i] * sum_f[i] + sum_g[i]
            acc -= lam[i] * w[j, i] * (1.0 - beta[j, i] * v_at[k, i])
            f[i] -= beta_w[j, i]
            g[i] -= w[j, i]
        grad_t_in[b, j] = acc


@njit(cache=True, parallel=True)
def _layer_grad_kernel(t_in, w, beta, beta_w, leak, grad_v_end, grad_w, grad_t_in):
    for b in prange(t_in.shape[0]):
        _layer_grad_sample(b, t_in, w, beta, beta_w, leak, grad_v_end, grad_w, grad_t_in)


@njit(cache=True)
def _layer_grad_kernel_serial(t_in, w, beta, beta_w, leak, grad_v_end, grad_w, grad_t_in):
    for b in range(t_in.shape[0]):
        _layer_grad_sample(b, t_in, w, beta, beta_w, leak, grad_v_end, grad_w, grad_t_in)


# ----------------------------------------------------------------------------------------
# Public API


def reversal_beta(w, e_plus: float, e_minus: float) -> np.ndarray:
    """β of each synapse from the sign of its weight: 1/E₊ for w ≥ 0, 1/E₋ for w < 0.

    E₊ > 0 and E₋ < 0 are normalised reversal potentials (units of V_swing); their sky130
    circuit has E₊ = 2.80, E₋ = −1.53 (Sakemi et al., "Examination of PNN approach by
    Circuit Simulations"). ``np.inf`` for both gives the top-down β = 0.
    """
    if not (e_plus > 0 and e_minus < 0):
        raise ValueError(f"reversal potentials need E+ > 0 > E-, got {e_plus}, {e_minus}")
    w = np.asarray(w, dtype=np.float64)
    return np.where(w >= 0, 1.0 / e_plus, 1.0 / e_minus)


def _check_layer(t_in, w, beta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t_in = np.ascontiguousarray(t_in, dtype=np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    beta = np.ascontiguousarray(beta, dtype=np.float64)
    if t_in.ndim != 2:
        raise ValueError(f"t_in must be 2-D (batch, inputs), got shape {t_in.shape}")
    if w.ndim != 2 or w.shape[0] != t_in.shape[1]:
        raise ValueError(f"w must have shape ({t_in.shape[1]}, outputs), got {w.shape}")
    if beta.shape != w.shape:
        raise ValueError(f"beta must have the shape of w {w.shape}, got {beta.shape}")
    if np.isnan(t_in).any() or (t_in < 0).any():
        raise ValueError("t_in: spike times must be >= 0 (np.inf: no spike), got NaN or < 0")
    if not (np.isfinite(w).all() and np.isfinite(beta).all()):
        raise ValueError("w and beta must be finite")
    return t_in, w, beta


def _check_phase(beta_fire: float, leak: float, fire_rate: float = 1.0) -> tuple[float, float]:
    """(a, κ) of the firing phase dv/dt = a − κ·v, κ = a·β_fire + α."""
    if not (math.isfinite(beta_fire) and beta_fire >= 0):
        raise ValueError(f"beta_fire must be finite and >= 0, got {beta_fire}")
    if not (math.isfinite(leak) and leak >= 0):
        raise ValueError(f"leak must be finite and >= 0, got {leak}")
    if not (math.isfinite(fire_rate) and fire_rate > 0):
        raise ValueError(f"fire_rate must be finite and > 0, got {fire_rate}")
    return float(fire_rate), float(fire_rate) * float(beta_fire) + float(leak)


def calibrated_fire_rate(beta_fire: float) -> float:
    """The discharge rate a = −ln(1 − β_fire)/β_fire (1 for β_fire = 0) with which a neuron
    at v(1) = 0 reaches threshold exactly at the end of the firing phase: the choice of
    Sakemi et al., App. A.2, Eqs. 82-85 (spike time ln((1 − β·v)/(1 − β))/(−ln(1 − β)))."""
    if not 0.0 <= beta_fire < 1.0:
        raise ValueError(f"beta_fire must be in [0, 1) to calibrate, got {beta_fire}")
    return 1.0 if beta_fire == 0.0 else -math.log1p(-beta_fire) / beta_fire


def layer_spike_times(t_in, w, beta, *, beta_fire: float = 0.0, leak: float = 0.0,
                      fire_rate: float = 1.0, clipped: bool = False,
                      return_v_end: bool = False):
    """Exact RC-Spike output spike times of one layer (normalised units, module doc).

    ``t_in`` (batch, N_in) input spike times in [0, 1] (np.inf: no spike); ``w``, ``beta``
    (N_in, N_out). Returns t_out (batch, N_out), measured from the start of the firing phase:
    in [0, 1], or np.inf for a neuron that does not reach threshold in the firing phase
    (1.0 instead with ``clipped``). With ``return_v_end`` also v(1), the membrane potential
    at the end of the accumulation phase. ``fire_rate`` a: the firing phase is
    dv/dt = a·(1 − β_fire·v) − α·v. Deterministic and independent of the thread count.
    """
    t_in, w, beta = _check_layer(t_in, w, beta)
    rate, kappa = _check_phase(beta_fire, leak, fire_rate)
    t_out = np.empty((t_in.shape[0], w.shape[1]))
    v_end = np.empty_like(t_out)
    kernel = _layer_kernel if t_in.size * w.shape[1] >= _PARALLEL_WORK else _layer_kernel_serial
    kernel(t_in, w, np.ascontiguousarray(beta * w), float(leak), rate, kappa, bool(clipped),
           t_out, v_end)
    return (t_out, v_end) if return_v_end else t_out


def firing_times(v_end, *, beta_fire: float = 0.0, leak: float = 0.0, fire_rate: float = 1.0,
                 clipped: bool = False) -> np.ndarray:
    """Spike times of the firing phase from v(1) (numpy; the rule of the module doc)."""
    rate, kappa = _check_phase(beta_fire, leak, fire_rate)
    v = np.asarray(v_end, dtype=np.float64)
    if kappa == 0.0:
        t = (1.0 - v) / rate
    elif kappa >= rate:
        t = np.full_like(v, np.inf)
    else:
        r = kappa / rate
        with np.errstate(invalid="ignore"):
            t = (np.log1p(-r * v) - np.log1p(-r)) / kappa
    t = np.where(v >= 1.0, 0.0, t)
    return np.where(t > 1.0, 1.0 if clipped else np.inf, t)


def firing_time_slope(v_end, *, beta_fire: float = 0.0, leak: float = 0.0,
                      fire_rate: float = 1.0) -> np.ndarray:
    """dt_out/dv(1) of the clipped firing time, by implicit differentiation of v(t_out) = 1:
    −1/(a − κ·v(1)) where 0 < t_out < 1, else 0."""
    rate, kappa = _check_phase(beta_fire, leak, fire_rate)
    v = np.asarray(v_end, dtype=np.float64)
    t = firing_times(v, beta_fire=beta_fire, leak=leak, fire_rate=fire_rate, clipped=True)
    inside = (t > 0.0) & (t < 1.0)
    return np.where(inside, -1.0 / np.where(inside, rate - kappa * v, 1.0), 0.0)


def layer_gradients(t_in, w, beta, grad_v_end, *, leak: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Exact gradients of L = Σ grad_v_end·v(1) of one layer: (∂L/∂w summed over the
    batch (N_in, N_out), ∂L/∂t_in (batch, N_in)). β is held fixed (the circuit sets it).

    Chain with :func:`firing_time_slope` for gradients of spike times. The per-sample
    gradients are summed by numpy in a fixed order: thread-count independent.
    """
    t_in, w, beta = _check_layer(t_in, w, beta)
    _check_phase(0.0, leak)
    grad_v_end = np.ascontiguousarray(grad_v_end, dtype=np.float64)
    if grad_v_end.shape != (t_in.shape[0], w.shape[1]):
        raise ValueError(f"grad_v_end must have shape {(t_in.shape[0], w.shape[1])}")
    per_sample = np.zeros((t_in.shape[0], *w.shape))
    grad_t = np.zeros(t_in.shape)
    kernel = (_layer_grad_kernel if t_in.size * w.shape[1] >= _PARALLEL_WORK
              else _layer_grad_kernel_serial)
    kernel(t_in, w, beta, np.ascontiguousarray(beta * w), float(leak), grad_v_end, per_sample,
           grad_t)
    return per_sample.sum(axis=0), grad_t


def layer_spike_times_numpy(t_in, w, beta, *, beta_fire: float = 0.0, leak: float = 0.0,
                            fire_rate: float = 1.0, clipped: bool = False,
                            return_v_end: bool = False):
    """The same closed form as :func:`layer_spike_times` in plain numpy: vectorised over
    samples and neurons, one Python step per input event. Test reference and benchmark
    baseline."""
    t_in, w, beta = _check_layer(t_in, w, beta)
    n_batch = t_in.shape[0]
    order = np.argsort(t_in, axis=1, kind="stable")
    t_sorted = np.take_along_axis(t_in, order, axis=1)
    bw = beta * w
    v = np.zeros((n_batch, w.shape[1]))
    f = np.full_like(v, float(leak))
    g = np.zeros_like(v)
    t_prev = np.zeros((n_batch, 1))
    for k in range(t_in.shape[1]):
        tk = t_sorted[:, k:k + 1]
        on = tk < 1.0
        dt = np.where(on, tk - t_prev, 0.0)
        x = f * dt
        with np.errstate(invalid="ignore", divide="ignore"):
            phi = np.where(x == 0.0, 1.0, -np.expm1(-x) / x)
        v = v * np.exp(-x) + g * dt * phi
        j = order[:, k]
        f = f + np.where(on, bw[j], 0.0)
        g = g + np.where(on, w[j], 0.0)
        t_prev = np.where(on, tk, t_prev)
    dt = 1.0 - t_prev
    x = f * dt
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(x == 0.0, 1.0, -np.expm1(-x) / x)
    v = v * np.exp(-x) + g * dt * phi
    t_out = firing_times(v, beta_fire=beta_fire, leak=leak, fire_rate=fire_rate,
                         clipped=clipped)
    return (t_out, v) if return_v_end else t_out


def network_spike_times(t_in, layers, *, beta_fire: float = 0.0, leak: float = 0.0,
                        fire_rate: float = 1.0, clipped: bool = False,
                        return_all: bool = False):
    """Spike times through a stack ``layers = [(w, beta), ...]``: each layer's output times
    (from the start of its firing phase) are the next layer's input times (the next layer's
    accumulation phase is this layer's firing phase). Returns the last layer's times, or
    with ``return_all`` the list of every layer's."""
    if not layers:
        raise ValueError("layers: needs at least one (w, beta) layer")
    out = []
    t = t_in
    for w, beta in layers:
        t = layer_spike_times(t, w, beta, beta_fire=beta_fire, leak=leak, fire_rate=fire_rate,
                              clipped=clipped)
        out.append(t)
    return out if return_all else out[-1]


def membrane_potential(t_in_row, w, beta, t_eval, *, beta_fire: float = 0.0,
                       leak: float = 0.0, fire_rate: float = 1.0) -> np.ndarray:
    """v(t) of every output neuron of one sample at times ``t_eval`` in [0, 2], closed form.

    [0, 1) is the accumulation phase, [1, 2] the firing phase (t − 1 from its start). The
    firing-phase equation dv/dt = a − κ·v holds for the whole phase: the membrane keeps
    moving after the spike (the sensing inverter only reports the crossing); the spike time
    is where this trajectory crosses 1. Returns (len(t_eval), N_out).
    """
    t_in_row = np.asarray(t_in_row, dtype=np.float64)
    if t_in_row.ndim != 1:
        raise ValueError(f"t_in_row must be 1-D (inputs,), got shape {t_in_row.shape}")
    t_in, w, beta = _check_layer(t_in_row[None, :], w, beta)
    rate, kappa = _check_phase(beta_fire, leak, fire_rate)
    t_eval = np.asarray(t_eval, dtype=np.float64)
    if t_eval.ndim != 1 or np.isnan(t_eval).any() or (t_eval < 0).any() or (t_eval > 2).any():
        raise ValueError("t_eval: times must be a 1-D array in [0, 2]")
    times = t_in[0]
    order = np.argsort(times, kind="stable")
    order = order[times[order] < 1.0]
    starts = np.concatenate(([0.0], times[order]))  # interval k starts at starts[k]
    n_out = w.shape[1]
    v_start = np.zeros((starts.size, n_out))
    f_int = np.full((starts.size, n_out), float(leak))
    g_int = np.zeros((starts.size, n_out))
    bw = beta * w
    for k, j in enumerate(order, start=1):
        f_int[k] = f_int[k - 1] + bw[j]
        g_int[k] = g_int[k - 1] + w[j]
        v_start[k] = _advance_np(v_start[k - 1], f_int[k - 1], g_int[k - 1],
                                 starts[k] - starts[k - 1])
    v_end = _advance_np(v_start[-1], f_int[-1], g_int[-1], 1.0 - starts[-1])
    out = np.empty((t_eval.size, n_out))
    acc = t_eval < 1.0
    k = np.searchsorted(starts, t_eval[acc], side="right") - 1
    out[acc] = _advance_np(v_start[k], f_int[k], g_int[k], (t_eval[acc] - starts[k])[:, None])
    s = (t_eval[~acc] - 1.0)[:, None]
    out[~acc] = _advance_np(v_end[None, :], kappa, rate, s)
    return out


def _advance_np(v, f, g, dt):
    x = np.asarray(f * dt, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(x == 0.0, 1.0, -np.expm1(-x) / x)
    return v * np.exp(-x) + g * dt * phi


# ----------------------------------------------------------------------------------------
# Physical <-> normalised synapses


def normalise_synapse(g, e_rev, *, c_mem: float, v_swing: float, t_phase: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(w, β) of synapses C_m·dV/dt = g·(E − V): w = g·T·E/(C_m·V_swing), β = V_swing/E.

    ``g`` in S, ``e_rev`` in V (relative to the reset level, positive toward threshold;
    ±inf gives β = 0 and is only meaningful with :func:`normalise_current`), ``c_mem`` in F,
    ``v_swing`` (reset-to-threshold swing) in V, ``t_phase`` (phase length T) in s.
    """
    _check_scales(c_mem, v_swing, t_phase)
    g = np.asarray(g, dtype=np.float64)
    e_rev = np.asarray(e_rev, dtype=np.float64)
    if (e_rev == 0).any() or np.isnan(e_rev).any():
        raise ValueError("e_rev: reversal potentials must be non-zero")
    return g * t_phase * e_rev / (c_mem * v_swing), v_swing / e_rev


def physical_synapse(w, beta, *, c_mem: float, v_swing: float, t_phase: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`normalise_synapse`: (g in S, E in V) from (w, β), β ≠ 0
    (g = w·β·C_m/T ≥ 0, E = V_swing/β). For β = 0 use :func:`physical_current`."""
    _check_scales(c_mem, v_swing, t_phase)
    w = np.asarray(w, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if (beta == 0).any():
        raise ValueError("beta = 0 is a current source: use physical_current")
    return w * beta * c_mem / t_phase, v_swing / beta


def normalise_current(i_syn, *, c_mem: float, v_swing: float, t_phase: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(w, β = 0) of ideal current sources C_m·dV/dt = I: w = I·T/(C_m·V_swing), I in A."""
    _check_scales(c_mem, v_swing, t_phase)
    w = np.asarray(i_syn, dtype=np.float64) * t_phase / (c_mem * v_swing)
    return w, np.zeros_like(w)


def physical_current(w, *, c_mem: float, v_swing: float, t_phase: float) -> np.ndarray:
    """Inverse of :func:`normalise_current`: I = w·C_m·V_swing/T (A); also the current a
    synapse (w, β) delivers at V = 0 (the reset level)."""
    _check_scales(c_mem, v_swing, t_phase)
    return np.asarray(w, dtype=np.float64) * c_mem * v_swing / t_phase


def _check_scales(c_mem, v_swing, t_phase):
    for name, value in (("c_mem", c_mem), ("v_swing", v_swing), ("t_phase", t_phase)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
