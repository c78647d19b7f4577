"""Phase-change memory (PCM) device physics: per-pulse programming, statistical model, drift.

Two complementary descriptions of one device, both in SI units (siemens, seconds):

1. **Per-pulse dynamics** (:class:`PulseModel`), used when a scenario programs devices pulse
   by pulse. Qualitative behaviour from Nandakumar et al., J. Appl. Phys. 124, 152135 (2018):
   partial-SET increments shrink as the cell crystallises and saturate toward a maximum
   conductance, grow with pulse amplitude, and are stochastic with a spread comparable to their
   mean; RESET returns the cell to a low-conductance amorphous state. The functional form and
   its default constants below are **our reconstruction** (the paper reports measured
   statistics, not this closed form):

   * RESET:     G ← g_reset,d · exp(σ_reset · ξ)                        (lognormal, S)
   * SET pulse: G ← max(0, G + s · Δg_0,d · [(1 − G / g_sat,d) + σ_c2c · ξ])
                with s = (I − I_th)/(I_ref − I_th) ∈ [0, 1] the normalised pulse amplitude,
   * device-to-device: Δg_0,d = Δg_0·max(1 + σ_Δ·ξ_d, 0.05),
                       g_sat,d = g_sat·max(1 + σ_sat·ξ_d, 0.1),
                       g_reset,d = g_reset·exp(σ_reset,d2d·ξ_d),
   so the mean increment decreases linearly with G and vanishes at g_sat,d, and the standard
   deviation of an increment, σ_c2c·s·Δg_0,d, equals σ_c2c times the increment of a fresh cell.

2. **Statistical model** (:class:`StatisticalModel`) of Nandakumar et al. (ICECS 2019) and
   Joshi et al., Nat. Commun. 11, 2473 (2020), with g_r = g/g_max:

   * programming noise  σ_prog = P(g_r) · g_max/g_ref  with P a polynomial in µS,
                        g_prog = max(0, g_T + σ_prog · ξ)
   * drift exponent     μ_ν = clip(−0.0155 ln g_r + 0.0244, 0.049, 0.1),
                        σ_ν = clip(−0.0125 ln g_r − 0.0059, 0.008, 0.045),
                        ν = |μ_ν + σ_ν · ξ|           (g_r clipped below at 1e-7)
   * drift              G(t) = G_p · (τ/t0)^(−ν)
   * 1/f read noise     Q_s = min(0.0088 / max(g_r^0.65, 1e-3), 0.2),
                        σ_read(t) = G(t) · Q_s · sqrt(ln((τ + t_read)/(2 t_read))),
                        g = max(0, G(t) + σ_read · ξ).

   The HERMES preset (Le Gallo et al., Nat. Electron. 6, 680 (2023), two devices per weight)
   uses g_max = 20.7 µS, t0 = 300 s, t_read = 512 ns, a cubic programming-noise polynomial and
   piecewise fits of μ_ν, σ_ν and Q_s (constants in :func:`drift_mean_std` and
   :func:`read_noise_qs`; Q_s taken from the programmed conductance there).

**Time convention.** τ is the time since the device's own last programming pulse, t − t_p.
With ``drift_time = "clamped"`` (default, the paper's form) G(t) = G_p·(max(τ, t0)/t0)^(−ν):
G_p is the conductance read t0 after programming, as in Joshi et al., and no drift is applied
before t0. With ``drift_time = "shifted"`` τ is replaced by τ + t0 in both the drift and the
read-noise terms (the convention of IBM's aihwkit ``PCMLikeNoiseModel``), so G(t_p) = G_p.
For τ ≫ t0 the two agree.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit, prange

from imcsim.physics import mathfn, rng

MODEL_JOSHI = 0
MODEL_HERMES = 1
_MODEL_IDS = {"joshi2020": MODEL_JOSHI, "hermes2023": MODEL_HERMES}
_G_R_FLOOR = 1e-7


@dataclass(frozen=True)
class StatisticalModel:
    """Constants of the statistical PCM model (see module docstring for the equations).

    Attributes:
        kind: "joshi2020" (Joshi et al. 2020 / aihwkit PCMLikeNoiseModel) or "hermes2023".
        g_max: conductance that the largest |weight| maps to, S.
        prog_coeff: programming-noise polynomial P(g_r) = Σ c_k g_r^k, coefficients in S
            at conductance scale ``prog_coeff_g_ref``.
        prog_coeff_g_ref: g_max at which ``prog_coeff`` was fitted, S.
        t0: drift reference time, s.  t_read: 1/f-noise read duration, s.
        drift_time: "clamped" (paper) or "shifted" (aihwkit) time convention.
        prog_noise_scale, drift_scale, read_noise_scale: dimensionless multipliers (1 = paper).
    """

    kind: Literal["joshi2020", "hermes2023"] = "joshi2020"
    g_max: float = 25e-6
    prog_coeff: tuple[float, ...] = (0.26348e-6, 1.9650e-6, -1.1731e-6)
    prog_coeff_g_ref: float = 25e-6
    t0: float = 20.0
    t_read: float = 250e-9
    drift_time: Literal["clamped", "shifted"] = "clamped"
    prog_noise_scale: float = 1.0
    drift_scale: float = 1.0
    read_noise_scale: float = 1.0

    @property
    def model_id(self) -> int:
        return _MODEL_IDS[self.kind]

    @property
    def shifted(self) -> bool:
        return self.drift_time == "shifted"


JOSHI_2020 = StatisticalModel()
HERMES_2023 = StatisticalModel(
    kind="hermes2023",
    g_max=20.7e-6,
    prog_coeff=(0.16603222e-6, 4.71806468e-6, -8.48101252e-6, 4.68961419e-6),
    prog_coeff_g_ref=20.7e-6,
    t0=300.0,
    t_read=512e-9,
)
STATISTICAL_PRESETS = {"joshi2020": JOSHI_2020, "hermes2023": HERMES_2023}


@dataclass(frozen=True)
class PulseModel:
    """Per-pulse PCM dynamics (our reconstruction, see module docstring), SI units.

    Attributes:
        g_reset: median amorphous (RESET) conductance, S.
        sigma_reset: cycle-to-cycle lognormal spread of the RESET conductance.
        sigma_reset_d2d: device-to-device lognormal spread of the median RESET conductance.
        dg0: mean increment of a full-amplitude partial-SET pulse on a fresh cell, S.
        g_sat: conductance the increments saturate toward, S.
        sigma_c2c: cycle-to-cycle std of an increment, in units of s·Δg_0,d.
        sigma_d2d_dg0, sigma_d2d_gsat: relative device-to-device spreads of Δg_0 and g_sat.
        i_threshold, i_reference: SET current below which nothing happens and the current of a
            full-amplitude (s = 1) pulse, A; used to report pulse amplitudes as currents.
        t_pulse: time one pulse plus its verify read takes, s.
    """

    g_reset: float = 0.1e-6
    sigma_reset: float = 0.3
    sigma_reset_d2d: float = 0.3
    dg0: float = 6.0e-6
    g_sat: float = 30.0e-6
    sigma_c2c: float = 0.6
    sigma_d2d_dg0: float = 0.2
    sigma_d2d_gsat: float = 0.1
    i_threshold: float = 50e-6
    i_reference: float = 200e-6
    t_pulse: float = 1e-6


@dataclass(frozen=True)
class VerifyPolicy:
    """Program-and-verify controller settings.

    Attributes:
        tolerance: stop when |G_read − g_target| ≤ tolerance, S.
        max_pulses: pulse budget per device, RESET pulses included.
        read_noise: std of the additive noise of each verify read, S.
        read_resolution: quantisation step of the verify read, S (0: unquantised).
        step_fraction: fraction of the read error a SET pulse aims to close (< 1 avoids
            overshoot, which costs a RESET and a restart).
        s_min: smallest normalised amplitude the pulse generator produces.
        differential: verify the pair's difference G⁺ − G⁻ and correct an overshoot on the
            partner (:func:`program_verify_pairs`) instead of each device on its own.
    """

    tolerance: float = 0.5e-6
    max_pulses: int = 40
    read_noise: float = 0.1e-6
    read_resolution: float = 0.0
    step_fraction: float = 0.7
    s_min: float = 0.02
    differential: bool = False


@dataclass(frozen=True)
class DeviceParams:
    """Per-device (device-to-device) parameters of the pulse model, one entry per device."""

    dg0: np.ndarray  # S
    g_sat: np.ndarray  # S
    g_reset: np.ndarray  # S


# ----------------------------------------------------------------------------------------
# Device-to-device parameters


@njit(cache=True, parallel=True)
def _draw_device_params(seed, dg0, g_sat, g_reset, s_dg0, s_sat, s_reset, out_dg0, out_sat,
                        out_reset):
    key = rng.stream_key(seed, rng.STREAM_D2D)
    for i in prange(out_dg0.size):
        o = rng.index_origin(key, i)
        out_dg0[i] = dg0 * max(1.0 + s_dg0 * rng.origin_normal(o, 0), 0.05)
        out_sat[i] = g_sat * max(1.0 + s_sat * rng.origin_normal(o, 1), 0.1)
        out_reset[i] = g_reset * np.exp(s_reset * rng.origin_normal(o, 2))


def draw_device_params(seed: int, n_devices: int, model: PulseModel) -> DeviceParams:
    """Draw the device-to-device parameters of ``n_devices`` devices (pure in seed, index)."""
    out = [np.empty(n_devices) for _ in range(3)]
    _draw_device_params(np.uint64(seed), model.dg0, model.g_sat, model.g_reset,
                        model.sigma_d2d_dg0, model.sigma_d2d_gsat, model.sigma_reset_d2d, *out)
    return DeviceParams(*out)


# ----------------------------------------------------------------------------------------
# Per-pulse dynamics


@njit(cache=True, inline="always")
def reset_conductance(g_reset_d, sigma_reset, xi):
    """Amorphous-state conductance after RESET: g_reset,d·exp(σ_reset·ξ), S."""
    return g_reset_d * np.exp(sigma_reset * xi)


@njit(cache=True, inline="always")
def set_pulse(g, s, dg0_d, inv_gsat_d, sigma_c2c, xi):
    """One partial-SET pulse: G + s·Δg_0,d·[(1 − G/g_sat,d) + σ_c2c·ξ], floored at 0 (S)."""
    g_new = g + s * dg0_d * ((1.0 - g * inv_gsat_d) + sigma_c2c * xi)
    return g_new if g_new > 0.0 else 0.0


@njit(cache=True, parallel=True)
def apply_set_pulses(g, amplitude, n_pulses, dg0_d, g_sat_d, sigma_c2c, seed, counter0):
    """Apply ``n_pulses`` partial-SET pulses of normalised amplitude ``amplitude[i]`` in place.

    Pulse k on device i draws its cycle noise at counter ``counter0 + k`` of stream SET, so
    splitting the pulses over several calls with consecutive ``counter0`` gives the same G.
    """
    key = rng.stream_key(seed, rng.STREAM_SET)
    for i in prange(g.size):
        o = rng.index_origin(key, i)
        gi = g[i]
        s = amplitude[i]
        d = dg0_d[i]
        inv_sat = 1.0 / g_sat_d[i]
        for k in range(n_pulses):
            gi = set_pulse(gi, s, d, inv_sat, sigma_c2c, rng.origin_normal(o, counter0 + k))
        g[i] = gi


@njit(cache=True, parallel=True)
def apply_reset(g, g_reset_d, sigma_reset, seed, counter):
    """RESET every device in place (one pulse), cycle noise at ``counter`` of stream RESET."""
    key = rng.stream_key(seed, rng.STREAM_RESET)
    for i in prange(g.size):
        o = rng.index_origin(key, i)
        g[i] = reset_conductance(g_reset_d[i], sigma_reset, rng.origin_normal(o, counter))


@njit(cache=True, parallel=True)
def program_verify(g_target, g, dg0_d, g_sat_d, g_reset_d, dg0_nominal, g_sat_nominal,
                   sigma_c2c, sigma_reset, tolerance, max_pulses, read_noise, read_resolution,
                   step_fraction, s_min, seed, counter0, n_pulses_out, converged_out):
    """Iterative program-and-verify of every device toward ``g_target`` (S), in place.

    Per device: RESET, then repeat {verify read G_r = G + σ_v·ξ (quantised to the read
    resolution); stop if |G_r − g_T| ≤ tolerance; if G_r < g_T apply a SET pulse whose
    amplitude aims at ``step_fraction`` of the error using the controller's *nominal*
    expected increment Δg_0·(1 − G_r/g_sat) (it does not know the device's own parameters);
    otherwise RESET and start again} until the budget of ``max_pulses`` pulses is spent.

    Pulse k of a device draws its noise at counter ``counter0 + k`` (streams SET, RESET,
    VERIFY), so results do not depend on scheduling. Writes the pulses used per device and
    whether it ended within tolerance.
    """
    key_set = rng.stream_key(seed, rng.STREAM_SET)
    key_reset = rng.stream_key(seed, rng.STREAM_RESET)
    key_read = rng.stream_key(seed, rng.STREAM_VERIFY)
    inv_gsat_nominal = 1.0 / g_sat_nominal
    for i in prange(g.size):
        o_set = rng.index_origin(key_set, i)
        o_reset = rng.index_origin(key_reset, i)
        o_read = rng.index_origin(key_read, i)
        target = g_target[i]
        d = dg0_d[i]
        inv_sat = 1.0 / g_sat_d[i]
        gi = reset_conductance(g_reset_d[i], sigma_reset, rng.origin_normal(o_reset, counter0))
        n = 1
        ok = False
        while True:
            g_read = gi + read_noise * rng.origin_normal(o_read, counter0 + n)
            if read_resolution > 0.0:
                g_read = np.floor(g_read / read_resolution + 0.5) * read_resolution
            err = target - g_read
            if abs(err) <= tolerance:
                ok = True
                break
            if n >= max_pulses:
                break
            if err > 0.0:
                expected = dg0_nominal * (1.0 - g_read * inv_gsat_nominal)
                s = 1.0
                if expected > 0.0:
                    s = min(max(step_fraction * err / expected, s_min), 1.0)
                gi = set_pulse(gi, s, d, inv_sat, sigma_c2c, rng.origin_normal(o_set, counter0 + n))
            else:
                gi = reset_conductance(g_reset_d[i], sigma_reset,
                                       rng.origin_normal(o_reset, counter0 + n))
            n += 1
        g[i] = gi
        n_pulses_out[i] = n
        converged_out[i] = ok


@njit(cache=True, parallel=True)
def program_verify_pairs(target, g, dg0_d, g_sat_d, g_reset_d, dg0_nominal, g_sat_nominal,
                         sigma_c2c, sigma_reset, tolerance, max_pulses, read_noise,
                         read_resolution, step_fraction, s_min, seed, counter0, pulses_out,
                         converged_out):
    """Differential program-and-verify of pairs toward signed targets G⁺ − G⁻ = ``target`` (S).

    ``g`` and the device parameters hold 2·n devices: G⁺ of pair k at index k, G⁻ at n + k
    (the flat [pair, row, col] layout). Per pair: RESET both, then repeat {read both devices
    (each with additive noise σ_v and quantised to the read resolution); stop if the read
    difference is within ``tolerance`` of the target; otherwise SET the device that moves
    the difference toward the target (G⁺ if it is too low, G⁻ if too high), with the
    amplitude that aims at ``step_fraction`` of the error from the nominal increment at its
    read state; a device whose nominal increment has fallen below 5 % of Δg_0 (saturated)
    makes the pair RESET and start again}. This is the strong per-cell baseline of
    Büchel et al.: an overshoot is corrected by pulsing the partner, not by RESET. Each
    device has a budget of ``max_pulses`` pulses (RESETs included); the pair stops when the
    device it needs is out of budget. Pulse k of a device draws its noise at counter0 + k,
    verify read r of the pair at counter0 + r (streams SET, RESET, VERIFY).
    """
    n = target.size
    key_set = rng.stream_key(seed, rng.STREAM_SET)
    key_reset = rng.stream_key(seed, rng.STREAM_RESET)
    key_read = rng.stream_key(seed, rng.STREAM_VERIFY)
    inv_gsat_nominal = 1.0 / g_sat_nominal
    for k in prange(n):
        dev = np.empty(2, dtype=np.int64)
        dev[0] = k
        dev[1] = n + k
        o_set = np.empty(2, dtype=np.uint64)
        o_reset = np.empty(2, dtype=np.uint64)
        o_read = np.empty(2, dtype=np.uint64)
        for d in range(2):
            o_set[d] = rng.index_origin(key_set, dev[d])
            o_reset[d] = rng.index_origin(key_reset, dev[d])
            o_read[d] = rng.index_origin(key_read, dev[d])
        gv = np.empty(2)
        used = np.zeros(2, dtype=np.int64)
        for d in range(2):
            gv[d] = reset_conductance(g_reset_d[dev[d]], sigma_reset,
                                      rng.origin_normal(o_reset[d], counter0))
            used[d] = 1
        ok = False
        r = 1
        while True:
            reads = np.empty(2)
            for d in range(2):
                v = gv[d] + read_noise * rng.origin_normal(o_read[d], counter0 + r)
                if read_resolution > 0.0:
                    v = np.floor(v / read_resolution + 0.5) * read_resolution
                reads[d] = v
            r += 1
            err = target[k] - (reads[0] - reads[1])
            if abs(err) <= tolerance:
                ok = True
                break
            d = 0 if err > 0.0 else 1
            expected = dg0_nominal * (1.0 - reads[d] * inv_gsat_nominal)
            if expected < 0.05 * dg0_nominal:
                if used[0] >= max_pulses or used[1] >= max_pulses:
                    break
                for dd in range(2):
                    gv[dd] = reset_conductance(g_reset_d[dev[dd]], sigma_reset,
                                               rng.origin_normal(o_reset[dd],
                                                                 counter0 + used[dd]))
                    used[dd] += 1
                continue
            if used[d] >= max_pulses:
                break
            s = min(max(step_fraction * abs(err) / expected, s_min), 1.0)
            gv[d] = set_pulse(gv[d], s, dg0_d[dev[d]], 1.0 / g_sat_d[dev[d]], sigma_c2c,
                              rng.origin_normal(o_set[d], counter0 + used[d]))
            used[d] += 1
        for d in range(2):
            g[dev[d]] = gv[d]
            pulses_out[dev[d]] = used[d]
        converged_out[k] = ok


# ----------------------------------------------------------------------------------------
# Statistical model


@njit(cache=True, inline="always")
def _poly(coeff, x):
    acc = 0.0
    for k in range(coeff.size - 1, -1, -1):
        acc = acc * x + coeff[k]
    return acc


@njit(cache=True, inline="always")
def programming_noise_std(g_target, g_max, coeff, coeff_g_ref):
    """σ_prog(g_T) = max(P(g_T/g_max), 0)·g_max/g_ref in S (Joshi et al. 2020)."""
    return max(_poly(coeff, g_target / g_max), 0.0) * g_max / coeff_g_ref


@njit(cache=True, inline="always")
def drift_mean_std(g_r, model_id):
    """(μ_ν, σ_ν) of the drift exponent at relative conductance g_r (dimensionless).

    Joshi 2020: μ_ν = clip(−0.0155 ln g_r + 0.0244, 0.049, 0.1),
    σ_ν = clip(−0.0125 ln g_r − 0.0059, 0.008, 0.045).
    HERMES (Le Gallo 2023, two devices per weight): piecewise fits, μ_ν =
    clip(−0.0387 ln g_r − 0.0182, 0.072, 0.13) below g_r = 0.0945 and
    −0.0436 g_r² − 0.0126 g_r + 0.0736 above; σ_ν = clip(−0.0117 ln g_r − 0.0057, 0.0091, 0.04)
    below g_r = 0.3055 and −0.0118 g_r² + 0.0093 g_r + 0.0073 above.
    """
    g_r = max(g_r, _G_R_FLOOR)
    ln_g = np.log(g_r)
    if model_id == MODEL_HERMES:
        if g_r < 0.0945:
            mu = min(max(-0.0387 * ln_g - 0.0182, 0.072), 0.13)
        else:
            mu = -0.0436 * g_r * g_r - 0.0126 * g_r + 0.0736
        if g_r < 0.3055:
            sd = min(max(-0.0117 * ln_g - 0.0057, 0.0091), 0.04)
        else:
            sd = -0.0118 * g_r * g_r + 0.0093 * g_r + 0.0073
        return mu, sd
    mu = min(max(-0.0155 * ln_g + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * ln_g - 0.0059, 0.008), 0.045)
    return mu, sd


@njit(cache=True, inline="always")
def read_noise_qs(g_r, model_id):
    """1/f read-noise amplitude Q_s at relative conductance g_r (dimensionless).

    Joshi 2020: Q_s = min(0.0088 / max(g_r^0.65, 1e-3), 0.2).
    HERMES: clip(−0.0117 ln g_r − 0.0069, 0.015, 0.04) below g_r = 0.16, else
    0.0069 g_r³ − 0.0280 g_r² + 0.0211 g_r + 0.0123.
    """
    if model_id == MODEL_HERMES:
        if g_r < 0.16:
            return min(max(-0.0117 * np.log(max(g_r, _G_R_FLOOR)) - 0.0069, 0.015), 0.04)
        return ((0.0069 * g_r - 0.0280) * g_r + 0.0211) * g_r + 0.0123
    return min(0.0088 / max(g_r ** 0.65, 1e-3), 0.2)


@njit(cache=True, parallel=True)
def program_statistical(g_target, g_out, g_max, coeff, coeff_g_ref, prog_noise_scale, seed,
                        counter):
    """Programming in one shot with the statistical model: g = max(0, g_T + σ_prog(g_T)·ξ)."""
    key = rng.stream_key(seed, rng.STREAM_PROG)
    for i in prange(g_target.size):
        sigma = programming_noise_std(g_target[i], g_max, coeff, coeff_g_ref)
        g = g_target[i] + prog_noise_scale * sigma * rng.origin_normal(
            rng.index_origin(key, i), counter)
        g_out[i] = g if g > 0.0 else 0.0


@njit(cache=True, parallel=True)
def draw_drift_state(g_for_nu, g_for_qs, g_max, model_id, drift_scale, seed, counter, nu_out,
                     qs_out):
    """Per-device drift exponent ν = drift_scale·|μ_ν + σ_ν·ξ| and 1/f amplitude Q_s.

    The state-dependent fits are evaluated at ``g_for_nu`` and ``g_for_qs`` (S): for the
    statistical models these are the target (Joshi: both; HERMES: ν from the target, Q_s from
    the programmed conductance, as fitted); pulse-level programming passes the programmed
    conductance for both, since a device knows only its state.
    """
    key = rng.stream_key(seed, rng.STREAM_NU)
    for i in prange(g_for_nu.size):
        g_r = abs(g_for_nu[i]) / g_max
        mu, sd = drift_mean_std(g_r, model_id)
        nu_out[i] = drift_scale * abs(mu + sd * rng.origin_normal(rng.index_origin(key, i),
                                                                   counter))
        qs_out[i] = read_noise_qs(abs(g_for_qs[i]) / g_max, model_id)


# ----------------------------------------------------------------------------------------
# Drift and read


@njit(cache=True, inline="always")
def drift_factor(tau, nu, t0, shifted):
    """(τ_eff/t0)^(−ν) with τ_eff = τ + t0 (shifted) or max(τ, t0) (clamped)."""
    tau_eff = tau + t0 if shifted else max(tau, t0)
    return np.exp(-nu * np.log(tau_eff / t0))


@njit(cache=True, inline="always")
def read_noise_growth(tau, t0, t_read, shifted):
    """sqrt(ln((τ_eff + t_read)/(2 t_read))), 0 where the logarithm is not positive."""
    tau_eff = tau + t0 if shifted else tau
    arg = (tau_eff + t_read) / (2.0 * t_read)
    return np.sqrt(np.log(arg)) if arg > 1.0 else 0.0


_READ_BLOCK = 256  # devices per vectorised block of read_drifted (fits L1 with its buffers)
_SERIES_LIMIT = 1e-5  # log1p series to third order is exact to rounding below this argument


@njit(cache=True, parallel=True)
def read_drifted(g_prog, t_prog, nu, q_s, times, counters, t0, t_read, shifted, read_noise_scale,
                 seed, out):
    """Conductance of every device read at each time: ``out[k, i]`` at ``times[k]`` (S).

    G(t) = G_p·(τ_eff/t0)^(−ν) and g = max(0, G(t) + s_r·G(t)·Q_s·sqrt(ln((τ_n + t_read)/
    (2 t_read)))·ξ), with τ = t − t_p and τ_eff = max(τ, t0), τ_n = τ (clamped) or
    τ_eff = τ_n = τ + t0 (shifted); the square root is 0 where its logarithm is not positive.
    ξ is drawn at ``counters[k]`` of stream READ: the 1/f noise accumulated up to the read,
    one draw per device per read time. ``read_noise_scale = 0`` gives the noise-free drifted
    conductance. Devices with τ ≤ 0 (not yet programmed) read their stored G_p.

    Speed without approximation. Devices programmed in one step differ in t_p by micro- to
    milliseconds, so ln(τ + shift) is taken from ln(t − t_ref + shift) (t_ref = earliest t_p,
    one logarithm per read time) by the series of log1p, and ln(τ_n + t_read) likewise, both
    exact to rounding while their arguments are below 1e-5; other reads take the exact
    logarithm in a second pass. Blocks of devices are processed one read time at a time in
    branch-free loops (``mathfn.exp``, ``rng.ziggurat_fast_path``) that LLVM vectorises; the
    ~1 % of normals that leave the ziggurat's fast path are finished in a scalar pass. Every
    element follows the same arithmetic whatever its block or thread, so the output does not
    depend on the thread count.
    """
    key = rng.stream_key(seed, rng.STREAM_READ)
    n = g_prog.size
    t_ref = t_prog.min() if n else 0.0
    shift = t0 if shifted else 0.0
    log_t0 = np.log(t0)
    log_2tr = np.log(2.0 * t_read)
    n_blocks = (n + _READ_BLOCK - 1) // _READ_BLOCK
    for b in prange(n_blocks):
        lo = b * _READ_BLOCK
        m = min(lo + _READ_BLOCK, n) - lo
        origin = np.empty(m, dtype=np.uint64)
        delta = np.empty(m)  # t_p − t_ref, s
        noise = np.empty(m)  # s_r·Q_s
        for j in range(m):
            origin[j] = rng.index_origin(key, lo + j)
            delta[j] = t_prog[lo + j] - t_ref
            noise[j] = q_s[lo + j] * read_noise_scale
        drift_log = np.empty(m)  # ln(τ_eff/t0) ≥ 0
        noise_log = np.empty(m)  # ln((τ_n + t_read)/(2 t_read))
        z = np.empty(m)
        bits = np.empty(m, dtype=np.uint64)
        fixup = np.empty(m, dtype=np.bool_)  # exact logarithm or slow normal needed
        for k in range(times.size):
            t = times[k]
            span = t - t_ref + shift
            if span <= 0.0:
                for j in range(m):
                    out[k, lo + j] = g_prog[lo + j]
                continue
            log_span = np.log(span)
            inv_span = 1.0 / span
            counter = counters[k]
            for j in range(m):  # vectorised: series logarithms and fast-path normals
                eps = delta[j] * inv_span
                log_a = log_span - eps * (1.0 + eps * (0.5 + eps * (1.0 / 3.0)))
                x = t_read * inv_span * (1.0 + eps * (1.0 + eps * (1.0 + eps)))
                d = log_a - log_t0
                drift_log[j] = d if (shifted or d > 0.0) else 0.0
                noise_log[j] = log_a + x * (1.0 - x * (0.5 - x * (1.0 / 3.0))) - log_2tr
                w = rng.origin_bits(origin[j], counter)
                bits[j] = w
                zj, accepted = rng.ziggurat_fast_path(w)
                z[j] = zj
                fixup[j] = ((eps >= _SERIES_LIMIT) | (x >= _SERIES_LIMIT)
                            | (t - t_prog[lo + j] <= 0.0) | (not accepted))
            for j in range(m):  # scalar: the rare exact logarithms and slow normals
                if not fixup[j]:
                    continue
                z[j] = rng.ziggurat_normal(bits[j])
                a = span - delta[j]  # τ + shift, s
                if t - t_prog[lo + j] <= 0.0:
                    drift_log[j] = 0.0
                    noise_log[j] = 0.0
                    continue
                d = np.log(a) - log_t0
                drift_log[j] = d if (shifted or d > 0.0) else 0.0
                noise_log[j] = np.log((a + t_read) / (2.0 * t_read))
            for j in range(m):  # vectorised: drift and noise
                gd = g_prog[lo + j] * mathfn.exp(-nu[j + lo] * drift_log[j])
                nl = noise_log[j]
                gd += gd * noise[j] * np.sqrt(nl if nl > 0.0 else 0.0) * z[j]
                out[k, lo + j] = gd if gd > 0.0 else 0.0
            for j in range(m):
                if fixup[j] and t - t_prog[lo + j] <= 0.0:
                    out[k, lo + j] = g_prog[lo + j]
