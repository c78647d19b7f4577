"""Programming a differential PCM tile: gradient-descent programming (GDP) on the MVM error.

Büchel, Vasilopoulos et al., "Gradient descent-based programming of analog in-memory computing
cores" (IEDM 2022, arXiv 2305.16647; journal version IEEE JETCAS 2023) program a tile by
minimising the error of its matrix-vector products, read through the core's own ADC, with
synthetic random inputs, instead of reading and correcting unit cells one by one. Their full
text was not available to us; the algorithm below follows the published summary
(../shared/physics-reference.md) and is **our reconstruction** where it has to choose:

Every iteration k (all devices in parallel, no per-cell read):

1. random inputs x ~ U[−a·r_in, a·r_in]^(B × rows) through the DAC, a ≤ 1 the input scale
   (``input_scale``; 0 picks the largest a for which three standard deviations of an ideal
   column current stay within the ADC's full scale, so the gradient is not read through a
   saturated ADC);
2. the tile's outputs y = ADC((G⁺ − G⁻)ᵀ·v_read·x_q) in weight units, with the device read
   noise of the moment;
3. error E = y − x·W_T and gradient ∇ = xᵀE/B of ½‖E‖²/B; since E[x xᵀ] = ((a·r_in)²/3)·I,
   the weight error is estimated as ΔW_est = 3∇/(a·r_in)²;
4. the step ΔW = −η_k·ΔW_est becomes one partial-SET pulse per pair: on G⁺ where ΔW > 0, on
   G⁻ where ΔW < 0, of normalised amplitude s = min(|ΔW|·(g_max/w_scale)/Δg_0, 1), the
   nominal fresh-cell increment Δg_0 converting siemens to amplitude (the controller knows
   no device state); amplitudes below ``s_min`` give no pulse;
5. η_k decays exponentially from ``lr`` to ``lr_final`` over the iterations.

Each device takes at most ``max_pulses`` pulses (the RESET that starts the programming
included), so GDP and program-and-verify can be compared at equal caps; the mean pulses
actually spent are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imcsim.physics import crossbar, pcm, rng

STREAM_GDP_INPUT = 11  # random inputs of GDP iterations (a stream of their own)


@dataclass(frozen=True)
class GDPPolicy:
    """GDP settings: ``iterations``; ``batch`` random inputs per iteration (several times the
    row count keeps the gradient estimate clean); learning rate ``lr`` decaying to
    ``lr_final``; ``s_min`` smallest pulse amplitude; ``max_pulses`` per device (RESET
    included); ``t_iteration`` (s) scenario time per iteration."""

    iterations: int = 60
    batch: int = 1024
    lr: float = 1.0
    lr_final: float = 0.1
    s_min: float = 0.0
    max_pulses: int = 40
    t_iteration: float = 1e-6
    input_scale: float = 0.0


@dataclass
class TileState:
    """Flat [pair, row, col] device arrays of one tile (S, s)."""

    g: np.ndarray
    t_prog: np.ndarray
    nu: np.ndarray
    q_s: np.ndarray
    params: pcm.DeviceParams


@dataclass
class GDPTrace:
    """Per-iteration record: time (s), relative MVM error seen through the ADC, mean pulses
    per device so far, learning rate."""

    t: np.ndarray
    mvm_error: np.ndarray
    pulses_mean: np.ndarray
    lr: np.ndarray


def relative_error(y, y_reference) -> float:
    """‖y − y_ref‖/‖y_ref‖ (Frobenius). numpy's pairwise sums, not BLAS: the value must not
    depend on how many threads a BLAS library happens to use."""
    diff = np.asarray(y) - y_reference
    return float(np.sqrt(np.sum(diff * diff)) / np.sqrt(np.sum(np.square(y_reference))))


def learning_rates(policy: GDPPolicy) -> np.ndarray:
    """η_k = lr·(lr_final/lr)^(k/(K−1)), k = 0..K−1."""
    k = np.arange(policy.iterations)
    span = max(policy.iterations - 1, 1)
    return policy.lr * (policy.lr_final / policy.lr) ** (k / span)


def gdp_input_scale(w_target, weight_scale: float, g_max: float,
                    periphery: crossbar.Periphery) -> float:
    """Largest a ≤ 1 with 3σ of the ideal column currents under U[−a, a] inputs (full-scale
    DAC codes) within the ADC full scale: σ_j = a·v_read·sqrt(Σ_i G_ij²/3), G = W·g_max/w_s."""
    if periphery.adc_bits <= 0:
        return 1.0
    g = np.asarray(w_target) * (g_max / weight_scale)
    sigma = periphery.v_read * float(np.sqrt(np.max(np.sum(g * g, axis=0)) / 3.0))
    return min(1.0, periphery.adc_full_scale / (3.0 * sigma)) if sigma > 0 else 1.0


def program_gdp(state: TileState, w_target: np.ndarray, *, pulse: pcm.PulseModel,
                stat: pcm.StatisticalModel, periphery: crossbar.Periphery,
                weight_scale: float, policy: GDPPolicy, seed: int, counter0: int,
                t_start: float, pulses_out: np.ndarray, on_iteration=None) -> GDPTrace:
    """Program ``state`` toward weights ``w_target`` (rows, cols) by GDP, in place.

    Starts by RESETting every device at ``t_start``; iteration k happens at
    t_start + (k + 1)·t_iteration. ``pulses_out`` receives the pulses per device.
    ``on_iteration(k, t, state)`` is called after each iteration (e.g. for snapshots).
    Draws: RESET at counter0, pulses of iteration k at counter0 + 1 + k (stream SET), the
    iteration's read noise at the same counters of stream READ, inputs from their own stream.
    """
    rows, cols = w_target.shape
    n = rows * cols
    seed = np.uint64(seed)
    g = state.g
    pcm.apply_reset(g, state.params.g_reset, pulse.sigma_reset, seed, np.uint64(counter0))
    state.t_prog[:] = t_start
    pulses_out[:] = 1
    g_per_weight = stat.g_max / weight_scale
    rates = learning_rates(policy)
    trace = GDPTrace(np.empty(policy.iterations), np.empty(policy.iterations),
                     np.empty(policy.iterations), rates.copy())
    scale = policy.input_scale or gdp_input_scale(w_target, weight_scale, stat.g_max,
                                                   periphery)
    amplitude = np.empty(2 * n)
    read = np.empty((1, 2 * n))
    grad = np.empty((rows, cols))
    for k in range(policy.iterations):
        t = t_start + (k + 1) * policy.t_iteration
        counter = np.uint64(counter0 + 1 + k)
        u = 2.0 * rng.uniforms(seed, STREAM_GDP_INPUT, (policy.batch, rows), counter=counter)
        x = periphery.input_range * crossbar.dac(scale * (u - 1.0) * periphery.input_range,
                                                 periphery)
        # The state-dependent read noise of the devices as they are now.
        pcm.draw_drift_state(g, g, stat.g_max, stat.model_id, stat.drift_scale, seed, counter,
                             state.nu, state.q_s)
        pcm.read_drifted(g, state.t_prog, state.nu, state.q_s, np.array([t]),
                         np.array([counter]), stat.t0, stat.t_read, stat.shifted,
                         stat.read_noise_scale, seed, read)
        g_read = read[0].reshape(2, rows, cols)
        y = crossbar.tile_mvm(g_read[0], g_read[1], x, periphery, weight_scale, stat.g_max)
        y_target = np.empty_like(y)
        crossbar.matmul(x, w_target, y_target)
        error = y - y_target
        trace.mvm_error[k] = relative_error(y, y_target)
        crossbar.matmul_tn(x, error, grad)
        step_g = (-rates[k] * 3.0 / (policy.batch * (scale * periphery.input_range) ** 2)
                  * g_per_weight) * grad.reshape(-1)
        s = np.minimum(np.abs(step_g) / pulse.dg0, 1.0)
        s[s < policy.s_min] = 0.0
        amplitude[:n] = np.where(step_g > 0.0, s, 0.0)
        amplitude[n:] = np.where(step_g < 0.0, s, 0.0)
        amplitude[pulses_out >= policy.max_pulses] = 0.0
        pcm.apply_set_pulses(g, amplitude, 1, state.params.dg0, state.params.g_sat,
                             pulse.sigma_c2c, seed, counter)
        pulsed = amplitude > 0.0
        pulses_out[pulsed] += 1
        state.t_prog[pulsed] = t
        trace.t[k] = t
        trace.pulses_mean[k] = pulses_out.mean()
        if on_iteration is not None:
            on_iteration(k, t, state)
    # Drift starts now, with the exponents of the programmed states.
    pcm.draw_drift_state(g, g, stat.g_max, stat.model_id, stat.drift_scale, seed,
                         np.uint64(counter0 + 1 + policy.iterations), state.nu, state.q_s)
    return trace


def mvm_error(state: TileState, w_target, t, *, stat, periphery, weight_scale, seed, counter,
              batch=1024, read_noise=True):
    """Relative MVM error ‖y − x·W_T‖/‖x·W_T‖ of the tile at time ``t`` on fresh random inputs
    (stream INPUT at ``counter``), through DAC and ADC; ``read_noise=False`` reads the
    noise-free drifted conductances."""
    rows, cols = w_target.shape
    seed = np.uint64(seed)
    x = periphery.input_range * crossbar.dac(
        2.0 * rng.uniforms(seed, rng.STREAM_INPUT, (batch, rows), counter=counter) - 1.0,
        periphery)
    read = np.empty((1, state.g.size))
    pcm.read_drifted(state.g, state.t_prog, state.nu, state.q_s, np.array([float(t)]),
                     np.array([counter], dtype=np.uint64), stat.t0, stat.t_read, stat.shifted,
                     stat.read_noise_scale if read_noise else 0.0, seed, read)
    g_read = read[0].reshape(2, rows, cols)
    y = crossbar.tile_mvm(g_read[0], g_read[1], x, periphery, weight_scale, stat.g_max)
    y_target = np.empty_like(y)
    crossbar.matmul(x, w_target, y_target)
    return relative_error(y, y_target)
