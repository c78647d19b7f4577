"""Post-training range optimisation (PTO): per-column conductance ranges and per-tile DAC
ranges of a trained, frozen network, optimised through a differentiable model of its tiles.

After Lammie, Vasilopoulos, Büchel, Camposampiero, Le Gallo, Rasch, Sebastian, "Improving the
Accuracy of Analog-Based In-Memory Computing Accelerators Post-Training" (ISCAS 2024, arXiv
2401.09859): for each crossbar, (1) the conductance range of each column and (2) the input
(DAC) range are optimised after training. Only the abstract was available to us; the
objective, the tile model and the optimiser below are **our reconstruction**.

Parameters, per tile of :mod:`scenarios.inference`: the column scales s_j (weight units at
g_max: a column's weights are clipped at ±s_j and mapped by u = w/s_j onto [−1, 1]) and the
DAC range r (inputs are clipped at ±r and quantised). They are optimised as θ = (ln s, ln r)
so that they stay positive.

Objective (what is minimised):

    J(θ) = E_ξ [ CE( f(x_cal; θ, ξ, t_target), y_cal ) ],

the mean cross-entropy of the calibration set (``calibration_images`` training images and
labels) through the network whose every product runs on the tile model below, with the
device noise ξ drawn from the PCM statistical model at the deployment time ``t_target``
(default 1 day). Each iteration averages the gradient over ``draws_per_step`` fresh device
draws (a Monte-Carlo estimate of E_ξ, i.e. stochastic gradient descent, Adam on θ, step
decayed on a half cosine); the returned θ is the best of the start and the checkpoints on a
fixed set of ``eval_draws`` draws shared by all candidates (common random numbers: the chip
to chip scatter of J, as large as J itself, cancels in the comparison), so the optimised
ranges never score worse than the starting ones on that estimate of J; ``holdout_draws``
independent draws then estimate the gain without the bias of having chosen the best.

How much any range choice can buy is bounded by the device model. Under Joshi et al.'s
model the noise is mostly proportional to the conductance, so in weight units σ(w; s) hardly
depends on the column scale s (:func:`mse_clip_scales`; on the default study's CNN the
expected-weight-error optimal clipping lowers the rms weight error by 2.4 %). HERMES'
programming noise is nearly flat above g_r ≈ 0.2, but at 1 day its 1/f read noise and
drift-exponent spread, which grow with g, are as large, so the bound barely moves: 2.7 % on
the same CNN (scenarios/inference_range_bound_hermes.toml). There PTO's column ranges
nevertheless buy most of its gain (scenarios/inference_pto_ablation_hermes.toml) while the
rms weight error falls less than under the MSE-optimal clipping: what PTO finds is not a
lower weight error but (our reading) a distribution of it that the loss is less sensitive to.

Tile model (normalised units, as in :mod:`scenarios.inference`):

* DAC: x_q = Q_D(clip(a/r, −1, 1)), Q_D rounding to 2^(b−1) − 1 levels per sign, with a
  straight-through estimator (∂Q/∂x = 1): ∂(r·x_q)/∂r = x_q − a/r inside the range and
  sign(a) outside (the LSQ/PACT gradient of a learnable clipping range);
* weights: u = clip(k·w/s, −1, 1) on a pair G⁺ = max(u, 0)·g_max + C(|u|),
  G⁻ = max(−u, 0)·g_max + C(|u|), C the model's common mode (``Hardware.common_mode``; none
  unless characterised, when ∂C/∂u moves both targets and both derivatives are followed);
* devices, reparameterised so that the gradient flows through the target g_T (the
  statistical model of :mod:`physics.pcm`, preset Joshi et al. 2020 or HERMES, Le Gallo et
  al. 2023; the same draws ξ as its kernels for the same seed and counters):
  g_p = max(0, g_T + σ_prog(g_T)·ξ_p), ν = |μ_ν(g_T) + σ_ν(g_T)·ξ_ν|,
  G(t) = g_p·(τ_eff/t0)^(−ν), g = max(0, G(t)·(1 + Q_s(g_Q)·n(t)·ξ_r)),
  n(t) = sqrt(ln((τ + t_read)/(2 t_read))), g_Q = g_T (Joshi) or g_p (HERMES, as fitted);
  μ_ν, σ_ν, Q_s the preset's (piecewise for HERMES) fits; ∂g/∂g_T in closed form on the
  branch in use (:func:`device_read`);
* ADC: c_q = Q_A(clip(Σ_i x_q,i·(g⁺ − g⁻)_i/g_max, ±c_fs)) with the chip's fixed full scale
  c_fs = I_fs/(v_read·g_max), straight-through inside, zero gradient where it clips;
* wires (``PTOSettings.wires`` with wire resistance in the periphery; otherwise the array is
  ideal): the column currents c are those of the resistive array (``crossbar.column_currents``,
  the harness's solver, on the conductances read g⁺, g⁻), and their gradients in g± and
  x_q are exact: the adjoint of the nodal equations, which is the reciprocal read of the
  same array (rows grounded, each column's amplifier end driven at ∂J/∂c;
  ``crossbar.column_currents_vjp``), two reads per tile and batch instead of one;
* output y_j = α·r·Σ_{p→j} f_p·c_q,p with f_p = s_j·share_p/k_p; α is the tile's global
  drift compensation (reference at t_calibrate over the value at t_target, both on the float
  network's calibration rows, same device draws), re-estimated at every evaluation and held
  constant in the gradient (stop-gradient), as the chip re-measures it.

What PTO must know about the hardware: DAC and ADC bits, the ADC full scale, the device
statistical model (programming noise, drift and 1/f read noise against conductance), the
deployment time, the tile partitioning (with ``wires``, also the wire resistance per cell
pitch) — and a small labelled calibration set; not the individual devices of the chip it is
deployed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from imcsim.physics import crossbar, pcm, rng
from imcsim.scenarios import network
from imcsim.scenarios.inference import DEVICE_MODELS, Hardware, TileMap, with_ranges
from imcsim.scenarios.robust_training import common_mode_conductance

_G_R_FLOOR = 1e-7
LOSSES = ("cross_entropy", "logit_mse")
PARAMETERS = ("both", "columns", "dac")
_EVAL_COUNTER0 = 1 << 32  # counters of the fixed evaluation draws (optimisation: 1, 2, ...)
_HOLDOUT_COUNTER0 = 1 << 33  # ... of the hold-out draws, never used to choose


# --------------------------------------------------------------------------------------------
# Device read-out with its derivative in the target conductance


def _drift_fits(g_t, stat: pcm.StatisticalModel):
    """(μ_ν, ∂μ_ν/∂g_T, σ_ν, ∂σ_ν/∂g_T) at the targets ``g_t`` (S), as ``pcm.drift_mean_std``
    evaluates them (g_r floored at 1e-7), derivatives in 1/S on the branch in use (0 on a
    clip or below the floor)."""
    g_r = g_t / stat.g_max
    floored = g_r > _G_R_FLOOR
    g_r = np.maximum(g_r, _G_R_FLOOR)
    ln_g = np.log(g_r)
    dln = np.where(floored, 1.0 / np.where(floored, g_t, 1.0), 0.0)  # ∂ln g_r/∂g_T

    def log_fit(a, b, lo, hi):
        raw = a * ln_g + b
        return np.clip(raw, lo, hi), a * dln * ((raw > lo) & (raw < hi))

    if stat.model_id == pcm.MODEL_JOSHI:
        mu, dmu = log_fit(-0.0155, 0.0244, 0.049, 0.1)
        sd, dsd = log_fit(-0.0125, -0.0059, 0.008, 0.045)
        return mu, dmu, sd, dsd
    # HERMES (Le Gallo et al. 2023): logarithmic fits at low conductance, quadratics above
    low = g_r < 0.0945
    mu_log, dmu_log = log_fit(-0.0387, -0.0182, 0.072, 0.13)
    mu = np.where(low, mu_log, -0.0436 * g_r * g_r - 0.0126 * g_r + 0.0736)
    dmu = np.where(low, dmu_log, (-2.0 * 0.0436 * g_r - 0.0126) / stat.g_max)
    low = g_r < 0.3055
    sd_log, dsd_log = log_fit(-0.0117, -0.0057, 0.0091, 0.04)
    sd = np.where(low, sd_log, -0.0118 * g_r * g_r + 0.0093 * g_r + 0.0073)
    dsd = np.where(low, dsd_log, (-2.0 * 0.0118 * g_r + 0.0093) / stat.g_max)
    return mu, dmu, sd, dsd


def _read_noise_fit(g, stat: pcm.StatisticalModel):
    """(Q_s, ∂Q_s/∂g) at conductances ``g`` ≥ 0 (S), as ``pcm.read_noise_qs`` evaluates
    them; the derivative (1/S) is that of the branch in use, 0 on a clip."""
    g_max = stat.g_max
    g_r = g / g_max
    positive = g > 0
    safe_g = np.where(positive, g, 1.0)
    if stat.model_id == pcm.MODEL_JOSHI:
        root = g_r ** 0.65
        raw = 0.0088 / np.maximum(root, 1e-3)
        live = (root > 1e-3) & (raw < 0.2)
        return np.minimum(raw, 0.2), np.where(live, -0.65 * raw / safe_g, 0.0)
    low = g_r < 0.16
    floored = g_r > _G_R_FLOOR
    raw = -0.0117 * np.log(np.maximum(g_r, _G_R_FLOOR)) - 0.0069
    q_log = np.clip(raw, 0.015, 0.04)
    dq_log = np.where(floored & (raw > 0.015) & (raw < 0.04), -0.0117 / safe_g, 0.0)
    q_cubic = ((0.0069 * g_r - 0.0280) * g_r + 0.0211) * g_r + 0.0123
    dq_cubic = ((3.0 * 0.0069 * g_r - 2.0 * 0.0280) * g_r + 0.0211) / g_max
    return np.where(low, q_log, q_cubic), np.where(low, dq_log, dq_cubic)


def device_read(g_target, xi_prog, xi_nu, xi_read, t: float, stat: pcm.StatisticalModel):
    """Conductance read at ``t`` (s after programming at 0) of devices programmed to
    ``g_target`` (S), and ∂g/∂g_T, for given standard-normal draws: the statistical model of
    :mod:`physics.pcm` for either preset (equations in the module docstring there and here).

    Joshi et al. (2020): μ_ν, σ_ν and Q_s are fits at the target g_T. HERMES (Le Gallo et al.
    2023): μ_ν, σ_ν piecewise at the target, Q_s piecewise at the *programmed* conductance
    g_p (as fitted there, and as :func:`scenarios.inference.program` passes it), so its
    derivative reaches g_T through ∂g_p/∂g_T = 1 + σ_prog'(g_T)·ξ_p.

    With ξ from ``rng.normals(seed, STREAM_PROG | STREAM_NU | STREAM_READ, ...)`` at the
    counters the kernels use, g equals ``pcm.program_statistical`` → ``draw_drift_state`` →
    ``read_drifted`` to rounding (tested for both presets). Kinks (clips of the fits, the
    switch between the pieces of a HERMES fit, g floored at 0, |·| of ν) take the derivative
    of the branch in use.
    """
    if stat.kind not in DEVICE_MODELS:
        raise ValueError(f"PTO's differentiable device model implements {DEVICE_MODELS}, "
                         f"got {stat.kind!r}")
    g_t = np.asarray(g_target, dtype=np.float64)
    g_max = stat.g_max
    g_r = g_t / g_max
    coeff = np.asarray(stat.prog_coeff)
    poly = np.zeros_like(g_r)
    dpoly = np.zeros_like(g_r)
    for k in range(coeff.size - 1, -1, -1):
        dpoly = dpoly * g_r + poly
        poly = poly * g_r + coeff[k]
    sigma_p = stat.prog_noise_scale * np.maximum(poly, 0.0) * g_max / stat.prog_coeff_g_ref
    dsigma_p = stat.prog_noise_scale * (poly > 0) * dpoly / stat.prog_coeff_g_ref
    g_p_raw = g_t + sigma_p * xi_prog
    on = g_p_raw > 0
    g_p = np.where(on, g_p_raw, 0.0)
    dg_p = on * (1.0 + dsigma_p * xi_prog)

    mu, dmu, sd, dsd = _drift_fits(g_t, stat)
    m = mu + sd * xi_nu
    nu = stat.drift_scale * np.abs(m)
    dnu = stat.drift_scale * np.sign(m) * (dmu + dsd * xi_nu)

    tau = float(t)
    if stat.shifted:
        log_drift = np.log((tau + stat.t0) / stat.t0)
        arg = (tau + stat.t0 + stat.t_read) / (2.0 * stat.t_read)
    else:
        log_drift = np.log(max(tau, stat.t0) / stat.t0)
        arg = (tau + stat.t_read) / (2.0 * stat.t_read)
    growth = np.sqrt(np.log(arg)) if arg > 1.0 else 0.0
    decay = np.exp(-nu * log_drift)
    g_d = g_p * decay
    dg_d = dg_p * decay - g_p * log_drift * decay * dnu

    if stat.model_id == pcm.MODEL_JOSHI:
        q_s, dq = _read_noise_fit(g_t, stat)
    else:
        q_s, dq_dgp = _read_noise_fit(g_p, stat)
        dq = dq_dgp * dg_p
    noise = stat.read_noise_scale * growth * xi_read
    g_raw = g_d * (1.0 + q_s * noise)
    keep = g_raw > 0
    g = np.where(keep, g_raw, 0.0)
    dg = keep * (dg_d * (1.0 + q_s * noise) + g_d * noise * dq)
    return g, dg


@dataclass
class TileDraws:
    """Standard-normal draws of one tile's 2·rows·P devices: programming, drift exponent,
    1/f read at t_calibrate and at the target time."""

    prog: np.ndarray
    nu: np.ndarray
    read_calibrate: np.ndarray
    read_target: np.ndarray


def draw_tiles(tiles: list[TileMap], seed: int, counter: int) -> list[TileDraws]:
    """One device instance per tile (tile k keyed by ``network.tile_seed(seed, k)``), drawn
    at ``counter`` of the PROG and NU streams and 2·counter, 2·counter + 1 of READ."""
    out = []
    for index, tile in enumerate(tiles):
        s = network.tile_seed(seed, index)
        n = 2 * tile.weights.size
        out.append(TileDraws(rng.normals(s, rng.STREAM_PROG, (n,), counter),
                             rng.normals(s, rng.STREAM_NU, (n,), counter),
                             rng.normals(s, rng.STREAM_READ, (n,), 2 * counter),
                             rng.normals(s, rng.STREAM_READ, (n,), 2 * counter + 1)))
    return out


# --------------------------------------------------------------------------------------------
# Differentiable tile and network


def _quantise(x, bits: int):
    if bits <= 0:
        return x
    levels = 2 ** (bits - 1) - 1
    return np.round(x * levels) / levels


def _read_weights(tile: TileMap, scale, draws: TileDraws, t: float, read_xi, stat,
                  common_mode=()):
    """Normalised read-out ũ = (g⁺ − g⁻)/g_max, its derivative in u, u, the mask of
    unclipped weights, the conductances read (flat [g⁺, g⁻], S) and, with a ``common_mode``
    C(|u|) raising both targets, (∂g⁺/∂u, ∂g⁻/∂u) per weight (S; None without one)."""
    v = tile.weights * (tile.gain / scale[tile.column])
    u = np.clip(v, -1.0, 1.0)
    n = u.size
    g_max = stat.g_max
    g_t = np.concatenate([np.maximum(u, 0.0).ravel(), np.maximum(-u, 0.0).ravel()]) * g_max
    if len(common_mode):
        c, dc = common_mode_conductance(common_mode, np.abs(u))
        g_t = g_t + np.tile(c.ravel(), 2)
    g, dg = device_read(g_t, draws.prog, draws.nu, read_xi, t, stat)
    u_read = ((g[:n] - g[n:]) / g_max).reshape(u.shape)
    if not len(common_mode):
        du = np.where(u >= 0, dg[:n].reshape(u.shape), dg[n:].reshape(u.shape))
        return u_read, du, v, np.abs(v) < 1.0, g, None
    positive = u >= 0
    dc_du = np.where(positive, dc, -dc)  # C(|u|) moves both targets
    dgp_du = dg[:n].reshape(u.shape) * (np.where(positive, g_max, 0.0) + dc_du)
    dgm_du = dg[n:].reshape(u.shape) * (np.where(positive, 0.0, -g_max) + dc_du)
    return u_read, (dgp_du - dgm_du) / g_max, v, np.abs(v) < 1.0, g, (dgp_du, dgm_du)


def _tile_forward(tile: TileMap, scale, r, rows, u_read, hw: Hardware, g=None):
    """(a, x_q, c, c_q, out): the tile's inputs, DAC outputs, normalised column currents,
    ADC outputs and block outputs. With wire resistance in ``hw.periphery`` and the
    conductances ``g`` (flat [g⁺, g⁻], S) the currents are those of the resistive array
    (``crossbar.column_currents``, the solver the harness uses)."""
    a = rows[:, tile.row0:tile.row0 + tile.rows]
    x_q = _quantise(np.clip(a / r, -1.0, 1.0), hw.periphery.dac_bits)
    if g is not None and hw.periphery.ir_drop:
        n = u_read.size
        c = crossbar.column_currents(g[:n].reshape(u_read.shape), g[n:].reshape(u_read.shape),
                                     x_q, hw.periphery) / (hw.periphery.v_read * hw.stat.g_max)
    else:
        c = x_q @ u_read
    c_fs = hw.adc_range
    c_q = _quantise(np.clip(c / c_fs, -1.0, 1.0), hw.periphery.adc_bits) * c_fs
    return a, x_q, c, c_q, r * tile.combine(c_q, scale)


def _wired_vjp(g, positive, x_q, g_c, hw: Hardware, pair_du=None):
    """(∂L/∂u per weight or its part before the device derivative, ∂L/∂x_q) of the resistive
    array from ∂L/∂c = ``g_c``, by the exact adjoint of ``crossbar.column_currents`` (its
    reciprocal read). Without a common mode the target of a weight with u ≥ 0
    (``positive``) is on G⁺, otherwise on G⁻, so its ∂L/∂ũ, ũ = (G⁺ − G⁻)/g_max, is
    g_max·∂L/∂G⁺ or −g_max·∂L/∂G⁻ and the caller applies the device derivative; with one
    (``pair_du`` = (∂G⁺/∂u, ∂G⁻/∂u)) both devices move and ∂L/∂u is returned whole."""
    n = positive.size
    g_max = hw.stat.g_max
    _, d_plus, d_minus, g_x = crossbar.column_currents_vjp(
        g[:n].reshape(positive.shape), g[n:].reshape(positive.shape), x_q, hw.periphery,
        g_c / (hw.periphery.v_read * g_max))
    if pair_du is not None:
        return d_plus * pair_du[0] + d_minus * pair_du[1], g_x
    return np.where(positive, g_max * d_plus, -g_max * d_minus), g_x


def _level(tile, scale, r, rows, u_read, hw, g=None) -> float:
    return float(np.mean(np.abs(_tile_forward(tile, scale, r, rows, u_read, hw, g)[4])))


@dataclass
class Objective:
    """J and its gradient in θ = (ln s per tile, ln r per tile) for one set of draws."""

    loss: float
    grad_log_scale: list = field(default_factory=list)
    grad_log_range: list = field(default_factory=list)
    alphas: list = field(default_factory=list)


def objective(net, tiles: list[TileMap], hw: Hardware, x, y, rows_calibration, draws,
              t_target: float, scales=None, ranges=None, alphas=None, grad: bool = True,
              target_logits=None) -> Objective:
    """Cross-entropy of (x, y) through the tile model with ``draws`` (one per tile) and, with
    ``grad``, its gradient in ln s and ln r. With ``target_logits`` (the float network's
    logits of x) the loss is instead ½·mean_b Σ_c (z_bc − z_float,bc)², the output error
    against the float network. ``scales`` / ``ranges`` default to the tiles' own; ``alphas``
    (drift compensation per tile) are computed from the draws unless given (the gradient
    treats them as constants either way)."""
    stat = hw.stat
    scales = [t.scale for t in tiles] if scales is None else scales
    ranges = [t.input_range for t in tiles] if ranges is None else ranges
    reads = [_read_weights(t, s, d, t_target, d.read_target, stat, hw.common_mode)
             for t, s, d in zip(tiles, scales, draws)]
    if alphas is None:
        alphas = []
        for tile, s, r, d, rd in zip(tiles, scales, ranges, draws, reads):
            cal_rows = rows_calibration[tile.layer]
            cal = _read_weights(tile, s, d, hw.t_calibrate, d.read_calibrate, stat,
                                hw.common_mode)
            level = _level(tile, s, r, cal_rows, rd[0], hw, rd[4])
            reference = _level(tile, s, r, cal_rows, cal[0], hw, cal[4])
            alphas.append(reference / level if level > 0 else 1.0)
    h = np.asarray(x, dtype=np.float64)
    saved, caches = [], []
    for k, (layer, w, b) in enumerate(zip(net.layers, net.weights, net.biases)):
        rows = layer.pre(h)
        z = np.zeros((rows.shape[0], w.shape[1]))
        for i, tile in enumerate(tiles):
            if tile.layer != k:
                continue
            a, x_q, c, c_q, out = _tile_forward(tile, scales[i], ranges[i], rows,
                                                reads[i][0], hw, reads[i][4])
            out = alphas[i] * out
            z[:, tile.col0:tile.col0 + tile.n_cols] += out
            saved.append((i, a, x_q, c, c_q, out))
        h, cache = layer.post(z + b)
        caches.append(cache)
    n = h.shape[0]
    if target_logits is None:
        logits = h - h.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(p[np.arange(n), y] + 1e-300)))
        dz = p
        dz[np.arange(n), y] -= 1.0
        dz /= n
    else:
        error = h - target_logits
        loss = 0.5 * float(np.sum(error * error)) / n
        dz = error / n
    result = Objective(loss, alphas=list(alphas))
    if not grad:
        return result
    g_scale = [np.zeros_like(s) for s in scales]
    g_range = [0.0] * len(tiles)
    by_layer = {}
    for entry in saved:
        by_layer.setdefault(tiles[entry[0]].layer, []).append(entry)
    for k in range(len(net.layers) - 1, -1, -1):
        d_rows = None
        for i, a, x_q, c, c_q, out in by_layer.get(k, []):
            tile, s, r, alpha = tiles[i], scales[i], ranges[i], alphas[i]
            u_read, du, v, inside_w, g_read, pair_du = reads[i]
            gy = dz[:, tile.col0:tile.col0 + tile.n_cols]
            gy_p = gy[:, tile.column]
            g_range[i] += float(np.sum(gy * out)) / r
            share = tile.share / tile.gain
            g_factor = alpha * r * np.sum(gy_p * c_q, axis=0)
            np.add.at(g_scale[i], tile.column, g_factor * share)
            factor = tile.factors(s)
            g_c = alpha * r * gy_p * factor * (np.abs(c) < hw.adc_range)
            if hw.periphery.ir_drop:
                g_u, g_x = _wired_vjp(g_read, v >= 0, x_q, g_c, hw, pair_du)
                g_u = (g_u if pair_du is not None else g_u * du) * inside_w
            else:
                g_u = (x_q.T @ g_c) * du * inside_w
                g_x = g_c @ u_read.T
            np.add.at(g_scale[i], tile.column, np.sum(g_u * (-v / s[tile.column]), axis=0))
            inside_x = np.abs(a) < r
            g_range[i] += float(np.sum(g_x * (-a / r ** 2) * inside_x))
            if k > 0:
                if d_rows is None:
                    d_rows = np.zeros((a.shape[0], net.weights[k].shape[0]))
                d_rows[:, tile.row0:tile.row0 + tile.rows] += g_x * inside_x / r
        if k > 0:
            # layers after the first are dense (their pre is the identity)
            dz = net.layers[k - 1].post_backward(d_rows, caches[k - 1])
    result.grad_log_scale = [g * s for g, s in zip(g_scale, scales)]
    result.grad_log_range = [g * r for g, r in zip(g_range, ranges)]
    return result


# --------------------------------------------------------------------------------------------
# Optimiser


@dataclass(frozen=True)
class PTOSettings:
    """Adam on θ = (ln s, ln r) for ``iterations`` steps, each on the mean gradient of
    ``draws_per_step`` fresh device draws, learning rate ``lr`` decayed to 0 on a half
    cosine (``schedule`` "cosine"; "constant" keeps it); checkpoint every ``check_every``
    steps on ``eval_draws`` fixed draws (the same draws for every candidate: common random
    numbers), the best kept; ``holdout_draws`` further draws, never used to choose, give an
    unbiased estimate of what the choice gained. ``t_target`` (s) the deployment time whose
    noise the objective uses; ``loss`` "cross_entropy" (labels) or "logit_mse" (output error
    against the float network); ``parameters`` "both", "columns" (column scales only) or
    "dac" (DAC ranges only), for ablations; ``wires``: the tile model solves the resistive
    array of the hardware's wire resistance (False: an ideal array, whatever the chip has).

    Why these defaults (measured on the default study's CNN, `imcsim run
    scenarios/inference_robustness.toml`, trace metrics pto_cnn_pto_sgd_start_spread,
    _holdout_*): J of one device draw scatters by about its own mean (0.012 around 0.016 at
    the max-abs start), and the difference between the start and the ranges PTO returns,
    taken on common draws, by 0.0068 per draw around a gain of 0.0036. On 4 evaluation draws
    (the earlier default) the standard error of that difference, 0.0034, equalled the gain:
    choosing among checkpoints was a coin toss. On 128 draws it is 0.0006 (6 standard
    errors). Four draws per step halve the gradient's noise; with them the objective on the
    evaluation draws still falls between the last checkpoints by less than its standard error
    (pto_*_checkpoints; twice the iterations in scenarios/inference_pto_ablation.toml), and
    the cosine decay lets the iterate settle instead of wandering by ~lr around the
    optimum."""

    iterations: int = 150
    lr: float = 0.03
    t_target: float = 86400.0
    draws_per_step: int = 4
    schedule: str = "cosine"
    eval_draws: int = 128
    holdout_draws: int = 128
    check_every: int = 25
    loss: str = "cross_entropy"
    parameters: str = "both"
    wires: bool = False


@dataclass
class PTOResult:
    tiles: list
    loss_start: float  # J on the evaluation draws at the starting ranges
    loss_best: float  # ... at the returned ranges
    loss_history: list  # per iteration, mean J on that iteration's draws
    checkpoints: list  # (iteration, J, J − J_start, its paired standard error), eval draws
    holdout_start: float = np.nan  # J of the start on the hold-out draws
    holdout_best: float = np.nan  # ... of the returned ranges
    holdout_sem: float = np.nan  # paired standard error of their difference
    start_spread: float = np.nan  # std of J over single evaluation draws at the start


SCHEDULES = ("cosine", "constant")


def evaluation_losses(net, tiles, hw, x, y, rows_calibration, draws, t_target,
                      scales=None, ranges=None, target_logits=None) -> np.ndarray:
    """J of every one of ``draws`` (a list of per-tile draws), no gradient."""
    return np.array([objective(net, tiles, hw, x, y, rows_calibration, d, t_target, scales,
                               ranges, grad=False, target_logits=target_logits).loss
                     for d in draws])


def evaluation_loss(net, tiles, hw, x, y, rows_calibration, eval_draws, t_target,
                    scales=None, ranges=None, target_logits=None) -> float:
    return float(np.mean(evaluation_losses(net, tiles, hw, x, y, rows_calibration, eval_draws,
                                           t_target, scales, ranges, target_logits)))


def _paired_sem(difference: np.ndarray) -> float:
    n = difference.size
    return float(difference.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan


def optimise(net, tiles: list[TileMap], hw: Hardware, x_cal, y_cal, rows_calibration,
             settings: PTOSettings, seed: int, draws=None) -> PTOResult:
    """Optimise every tile's column scales and DAC range from their current values (module
    docstring); device draws keyed by ``seed`` (not by any chip the result is evaluated on).
    ``draws(counter)`` replaces the device draws (a list of :class:`TileDraws`, one per
    tile) — a fixed chip for the diagnostic oracle of :mod:`scenarios.inference`."""
    if settings.loss not in LOSSES:
        raise ValueError(f"PTO loss must be one of {LOSSES}, got {settings.loss!r}")
    if settings.parameters not in PARAMETERS:
        raise ValueError(f"PTO parameters must be one of {PARAMETERS}, got "
                         f"{settings.parameters!r}")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"PTO schedule must be one of {SCHEDULES}, got "
                         f"{settings.schedule!r}")
    if not settings.wires and hw.periphery.ir_drop:
        hw = replace(hw, periphery=replace(hw.periphery, r_wire_row=0.0, r_wire_col=0.0))
    if draws is None:
        def draws(counter):
            return draw_tiles(tiles, seed, counter)
    move_scales = settings.parameters in ("both", "columns")
    move_ranges = settings.parameters in ("both", "dac")
    target = None
    if settings.loss == "logit_mse":
        from imcsim.scenarios.inference import layer_forward

        target = layer_forward(net, x_cal)
    log_s = [np.log(t.scale) for t in tiles]
    log_r = [np.log(t.input_range) for t in tiles]
    eval_set = [draws(_EVAL_COUNTER0 + m) for m in range(settings.eval_draws)]

    def score(ls, lr_, draw_set):
        return evaluation_losses(net, tiles, hw, x_cal, y_cal, rows_calibration, draw_set,
                                 settings.t_target, [np.exp(v) for v in ls],
                                 [float(np.exp(v)) for v in lr_], target)

    start_losses = score(log_s, log_r, eval_set)
    start = best = float(start_losses.mean())
    best_params = ([v.copy() for v in log_s], list(log_r))
    checkpoints = [(0, start, 0.0, 0.0)]
    history = []
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m_s = [np.zeros_like(v) for v in log_s]
    v_s = [np.zeros_like(v) for v in log_s]
    m_r = np.zeros(len(tiles))
    v_r = np.zeros(len(tiles))
    per_step = settings.draws_per_step
    for it in range(1, settings.iterations + 1):
        loss = 0.0
        g_s = [np.zeros_like(v) for v in log_s]
        g_r = np.zeros(len(tiles))
        for q in range(per_step):
            obj = objective(net, tiles, hw, x_cal, y_cal, rows_calibration,
                            draws((it - 1) * per_step + q + 1), settings.t_target,
                            [np.exp(v) for v in log_s], [float(np.exp(v)) for v in log_r],
                            target_logits=target)
            loss += obj.loss / per_step
            for i in range(len(tiles)):
                g_s[i] += obj.grad_log_scale[i] / per_step
                g_r[i] += obj.grad_log_range[i] / per_step
        history.append(loss)
        step = settings.lr
        if settings.schedule == "cosine":
            step *= 0.5 * (1.0 + np.cos(np.pi * (it - 1) / settings.iterations))
        c1, c2 = 1.0 - beta1 ** it, 1.0 - beta2 ** it
        for i in range(len(tiles)):
            m_s[i] = beta1 * m_s[i] + (1 - beta1) * g_s[i]
            v_s[i] = beta2 * v_s[i] + (1 - beta2) * g_s[i] * g_s[i]
            if move_scales:
                log_s[i] = log_s[i] - step * (m_s[i] / c1) / (np.sqrt(v_s[i] / c2) + eps)
            m_r[i] = beta1 * m_r[i] + (1 - beta1) * g_r[i]
            v_r[i] = beta2 * v_r[i] + (1 - beta2) * g_r[i] * g_r[i]
            if move_ranges:
                log_r[i] = log_r[i] - step * (m_r[i] / c1) / (np.sqrt(v_r[i] / c2) + eps)
        if it % settings.check_every == 0 or it == settings.iterations:
            losses = score(log_s, log_r, eval_set)
            value = float(losses.mean())
            checkpoints.append((it, value, value - start, _paired_sem(losses - start_losses)))
            if value < best:
                best = value
                best_params = ([v.copy() for v in log_s], list(log_r))
    # frozen parameters keep their exact values (exp(ln x) is not always x)
    chosen = with_ranges(tiles, [np.exp(v) if move_scales else t.scale
                                 for v, t in zip(best_params[0], tiles)],
                         [float(np.exp(v)) if move_ranges else t.input_range
                          for v, t in zip(best_params[1], tiles)])
    result = PTOResult(chosen, start, best, history, checkpoints,
                       start_spread=float(start_losses.std(ddof=1)) if start_losses.size > 1
                       else np.nan)
    if settings.holdout_draws > 1:
        holdout = [draws(_HOLDOUT_COUNTER0 + m) for m in range(settings.holdout_draws)]
        before, after = (evaluation_losses(net, tiles, hw, x_cal, y_cal, rows_calibration,
                                           holdout, settings.t_target, [t.scale for t in ts],
                                           [t.input_range for t in ts], target)
                         for ts in (tiles, chosen))
        result.holdout_start = float(before.mean())
        result.holdout_best = float(after.mean())
        result.holdout_sem = _paired_sem(after - before)
    return result



# --------------------------------------------------------------------------------------------
# How much range choice can buy: the weight-error optimum and the chip oracle


def mse_clip_scales(tile: TileMap, noise, factors=None):
    """Per-column scales s_j minimising the expected squared weight error of the column under
    the weight-unit device model (``robust_training.weight_sigma``, ``noise`` a NoiseModel):

        E_j(s) = Σ_i (clip(w_ij, −s, s) − w_ij)² + σ(w_ij; s)²,
        σ(w; s) = s·σ_g(min(|w|/s, 1)·g_max, t)/g_max,

    scanned over s = f·max_i |w_ij|, f in ``factors`` (default 241 log-spaced values in
    [0.2, 1]; clipping more than 80 % of the range never pays at this device model).
    Closed form per s, no labels, no network: what a mapping can win on the weights alone.
    Under Joshi et al.'s model σ_g is mostly proportional to g (programming noise 0.26 +
    1.97·g_r − 1.17·g_r² µS at g_max = 25 µS; the 1/f term ∝ g^0.35; the drift spread
    relative), so σ(w; s) depends on s only through the offset and curvature terms, which
    bounds what any choice of s can do; HERMES' programming noise (0.17 + 4.72·g_r −
    8.48·g_r² + 4.69·g_r³ µS at 20.7 µS) is nearly flat above g_r ≈ 0.2, but its 1/f and
    drift terms grow with g, so at 1 day the bound is about as tight (module docstring).
    Fixed mapping only (gain 1, one column per output).

    Returns (scales (n_cols,), E_j at the max-abs scale, E_j at the chosen scale).
    """
    from imcsim.scenarios.robust_training import weight_sigma

    if np.any(tile.gain != 1.0) or tile.column.size != tile.n_cols:
        raise ValueError("mse_clip_scales: fixed mapping (one pair per weight) only")
    factors = np.geomspace(0.2, 1.0, 241) if factors is None else np.asarray(factors, float)
    w = tile.weights
    s0 = np.max(np.abs(w), axis=0)
    s0 = np.where(s0 > 0, s0, tile.scale)
    errors = np.empty((factors.size, w.shape[1]))
    for k, f in enumerate(factors):
        s = f * s0
        clip_error = np.clip(w, -s, s) - w
        errors[k] = np.sum(clip_error ** 2 + weight_sigma(w, s, noise) ** 2, axis=0)
    best = np.argmin(errors, axis=0)
    at_max = errors[int(np.argmin(np.abs(factors - 1.0)))]
    return factors[best] * s0, at_max, errors[best, np.arange(w.shape[1])]


def chip_draws(tiles: list[TileMap], device_seed: int, read_calibrate: int, read_target: int
               ) -> list[TileDraws]:
    """The standard normals of the chip ``device_seed`` as the harness programs and reads it
    (:func:`scenarios.inference.program`, ``read`` at counters ``read_calibrate`` for the
    drift-compensation reference and ``read_target`` for the evaluation): with them the tile
    model reproduces the harness's outputs (tested). For the diagnostic chip oracle only —
    PTO proper never sees the chip it is deployed on."""
    out = []
    for index, tile in enumerate(tiles):
        s = network.tile_seed(device_seed, index)
        n = 2 * tile.weights.size
        out.append(TileDraws(rng.normals(s, rng.STREAM_PROG, (n,), 0),
                             rng.normals(s, rng.STREAM_NU, (n,), 0),
                             rng.normals(s, rng.STREAM_READ, (n,), read_calibrate),
                             rng.normals(s, rng.STREAM_READ, (n,), read_target)))
    return out
