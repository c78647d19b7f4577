"""PCM device physics (:mod:`imcsim.physics.pcm`, :mod:`.crossbar`) against closed forms
and the numpy twins in :mod:`imcsim.physics.reference`.

Published equations: /work/shared/physics-reference.md, "PCM statistical model" (Joshi et al.,
Nat. Commun. 11, 2473, 2020; HERMES preset after Le Gallo et al., Nat. Electron. 6, 680,
2023). Draws are pure functions of (seed, stream, index, counter), so every test is
deterministic; statistical tolerances are nevertheless k standard errors (SE) of the sample
statistic, as if the seed were random: k = 5 fails by chance with probability 2·Φ(−5) =
5.7e-7 per comparison, while a model error of that size fails for every seed. Where the
exact draws can be rebuilt from :mod:`.rng`, a test also checks the kernel against its
equation with those very draws, to rounding.
"""

import math

import numba
import numpy as np
import pytest
from scipy import stats

from imcsim.physics import crossbar, pcm, reference, rng

K_SE = 5.0
U64 = np.uint64
JOSHI = pcm.JOSHI_2020
HERMES = pcm.HERMES_2023


def censored_normal_mean_std(mu, sigma):
    """Mean and std of max(0, X), X ~ N(mu, sigma²) (the clip of every conductance at 0 S):
    E[Y] = μΦ(c) + σφ(c), E[Y²] = (μ² + σ²)Φ(c) + μσφ(c), c = μ/σ."""
    c = mu / sigma
    cdf, pdf = stats.norm.cdf(c), stats.norm.pdf(c)
    m1 = mu * cdf + sigma * pdf
    m2 = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    return m1, np.sqrt(m2 - m1 * m1)


def sd_standard_error(sd, excess_kurtosis, n):
    """SE of a sample std by the delta method: Var(s) ≈ σ²(κ + 2)/(4n); σ/sqrt(2n) for a
    normal (κ = 0)."""
    return sd * np.sqrt((excess_kurtosis + 2.0) / (4.0 * n))


# ----------------------------------------------------------------------------------------
# Programming noise (statistical model)


def joshi_sigma_prog(g_r):
    """σ_prog in S, Joshi 2020 (µS polynomial at g_max = 25 µS)."""
    return (0.26348 + 1.9650 * g_r - 1.1731 * g_r**2) * 1e-6


def hermes_sigma_prog(g_r):
    """σ_prog in S, HERMES cubic (µS polynomial at g_max = 20.7 µS)."""
    return (0.16603222 + 4.71806468 * g_r - 8.48101252 * g_r**2 + 4.68961419 * g_r**3) * 1e-6


def program(model, g_target, seed=1, counter=0, scale=1.0, g_max=None):
    g_out = np.empty_like(g_target)
    pcm.program_statistical(g_target, g_out, model.g_max if g_max is None else g_max,
                            np.asarray(model.prog_coeff), model.prog_coeff_g_ref, scale,
                            U64(seed), U64(counter))
    return g_out


G_R_LEVELS = np.array([0.1, 0.3, 0.5, 0.8, 1.0])
N_LEVEL = 200_000  # devices per level: SE(std) = σ/sqrt(2n) = 0.16 % of σ; 5 SE = 0.8 %


@pytest.mark.parametrize(("model", "sigma_fn"), [(JOSHI, joshi_sigma_prog),
                                                 (HERMES, hermes_sigma_prog)],
                         ids=["joshi2020", "hermes2023"])
def test_programming_noise_std(model, sigma_fn):
    g_t = np.repeat(G_R_LEVELS * model.g_max, N_LEVEL)
    g = program(model, g_t, seed=3).reshape(G_R_LEVELS.size, N_LEVEL)
    for row, g_r in zip(g, G_R_LEVELS):
        sigma = sigma_fn(g_r)
        # The clip at 0 is ≥ 3.7 σ below g_T here (HERMES, g_r = 0.1); account for it exactly
        # anyway with the censored-normal moments (≤ 1e-4 relative change of the std).
        mean, sd = censored_normal_mean_std(g_r * model.g_max, sigma)
        assert sd == pytest.approx(sigma, rel=2e-4)
        # Tolerances: SE(mean) = σ/sqrt(n), SE(std) = σ/sqrt(2n) (normal), 5 SE each.
        assert abs(row.mean() - mean) < K_SE * sd / np.sqrt(N_LEVEL)
        assert abs(row.std() - sd) < K_SE * sd_standard_error(sd, 0.0, N_LEVEL)


@pytest.mark.parametrize("model", [JOSHI, HERMES], ids=["joshi2020", "hermes2023"])
def test_programming_noise_exact_draws(model):
    # With the draws rebuilt from the RNG: g = max(0, g_T + s·σ_prog(g_T)·ξ), to rounding,
    # over the whole range including targets at and beyond the clip (g_T = 0).
    n = 50_000
    g_t = np.linspace(0.0, model.g_max, n)
    xi = rng.normals(9, rng.STREAM_PROG, n, counter=4)
    sigma_fn = joshi_sigma_prog if model is JOSHI else hermes_sigma_prog
    for scale in (1.0, 2.5):
        g = program(model, g_t, seed=9, counter=4, scale=scale)
        expected = np.maximum(g_t + scale * sigma_fn(g_t / model.g_max) * xi, 0.0)
        # atol: rounding of g_T + σξ at |g| ≤ 30 µS is < 1e-20 S; rtol: polynomial rounding.
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-20)
    # Zero noise scale programs the target exactly.
    assert np.array_equal(program(model, g_t, scale=0.0), g_t)


def test_programming_noise_at_zero_target():
    # g_T = 0: g = max(0, σ0·ξ), a half-normal with an atom at 0. P(g = 0) = 1/2 (binomial
    # SE 0.5/sqrt(n)), E[g] = σ0/sqrt(2π) (SE = σ0·sqrt((1/2 − 1/(2π))/n)); 5 SE each.
    n = 400_000
    for model, sigma0 in [(JOSHI, 0.26348e-6), (HERMES, 0.16603222e-6)]:
        g = program(model, np.zeros(n), seed=8)
        assert abs(np.mean(g == 0.0) - 0.5) < K_SE * 0.5 / np.sqrt(n)
        assert abs(g.mean() - sigma0 / np.sqrt(2 * np.pi)) < (
            K_SE * sigma0 * np.sqrt((0.5 - 0.5 / np.pi) / n))


def test_programming_noise_scales_with_g_max():
    # Polynomial in µS at g_ref = 25 µS, scaled by g_max/g_ref for another g_max
    # (physics-reference.md); exact with the same draws.
    n = 1000
    g_max = 10e-6
    g_t = np.linspace(0, g_max, n)
    g = program(JOSHI, g_t, seed=2, g_max=g_max)
    xi = rng.normals(2, rng.STREAM_PROG, n)
    expected = np.maximum(g_t + joshi_sigma_prog(g_t / g_max) * (g_max / 25e-6) * xi, 0.0)
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-20)


# ----------------------------------------------------------------------------------------
# Drift exponent and read-noise amplitude


def joshi_mu_sd(g_r):
    ln_g = math.log(max(g_r, 1e-7))
    return (min(max(-0.0155 * ln_g + 0.0244, 0.049), 0.1),
            min(max(-0.0125 * ln_g - 0.0059, 0.008), 0.045))


def hermes_mu_sd(g_r):
    g = max(g_r, 1e-7)
    ln_g = math.log(g)
    if g < 0.0945:
        mu = min(max(-0.0387 * ln_g - 0.0182, 0.072), 0.13)
    else:
        mu = -0.0436 * g**2 - 0.0126 * g + 0.0736
    if g < 0.3055:
        sd = min(max(-0.0117 * ln_g - 0.0057, 0.0091), 0.04)
    else:
        sd = -0.0118 * g**2 + 0.0093 * g + 0.0073
    return mu, sd


def joshi_qs(g_r):
    return min(0.0088 / max(g_r**0.65, 1e-3), 0.2)


def hermes_qs(g_r):
    if g_r < 0.16:
        return min(max(-0.0117 * math.log(max(g_r, 1e-7)) - 0.0069, 0.015), 0.04)
    return 0.0069 * g_r**3 - 0.0280 * g_r**2 + 0.0211 * g_r + 0.0123


# Grid covering both clips, the 1e-7 floor, g_r = 0, the HERMES branch points and g_r > 1.
G_R_GRID = np.unique(np.concatenate([
    [0.0, 1e-9, 1e-7, 0.0945, 0.16, 0.3055, 1.0, 1.3],
    np.nextafter([0.0945, 0.16, 0.3055], 0.0),
    np.geomspace(1e-8, 1.0, 400),
]))


def test_drift_mean_std_closed_forms():
    for g_r in G_R_GRID:
        g_r = float(g_r)
        # Same operations in the same order as the published fits: equal to rounding (the
        # scalar libm calls are shared, so in practice bit for bit).
        assert pcm.drift_mean_std(g_r, pcm.MODEL_JOSHI) == pytest.approx(
            joshi_mu_sd(g_r), rel=1e-14)
        assert pcm.drift_mean_std(g_r, pcm.MODEL_HERMES) == pytest.approx(
            hermes_mu_sd(g_r), rel=1e-14)
        if g_r > 0.0:
            assert pcm.read_noise_qs(g_r, pcm.MODEL_JOSHI) == pytest.approx(
                joshi_qs(g_r), rel=1e-14)
        assert pcm.read_noise_qs(g_r, pcm.MODEL_HERMES) == pytest.approx(
            hermes_qs(g_r), rel=1e-14)
    # Published clip values (Joshi): μ_ν ∈ [0.049, 0.1], σ_ν ∈ [0.008, 0.045], Q_s ≤ 0.2.
    assert pcm.drift_mean_std(1.0, pcm.MODEL_JOSHI) == (0.049, 0.008)
    assert pcm.drift_mean_std(1e-6, pcm.MODEL_JOSHI) == (0.1, 0.045)
    assert pcm.read_noise_qs(1e-6, pcm.MODEL_JOSHI) == 0.2


def draw_drift(model_id, g_for_nu, g_for_qs, g_max, seed=5, counter=0, scale=1.0):
    nu = np.empty_like(g_for_nu)
    qs = np.empty_like(g_for_nu)
    pcm.draw_drift_state(g_for_nu, g_for_qs, g_max, model_id, scale, U64(seed), U64(counter),
                         nu, qs)
    return nu, qs


@pytest.mark.parametrize(("model", "mu_sd", "levels"), [
    # Joshi at 1e-3 and 0.01: μ/σ ≈ 2.2, so 1.4–1.7 % of the draws are folded, raising the
    # mean by 2σ(φ(c) − cΦ(−c)) = 4–5e-4 (4–5 SE) over μ; at 0.3–1, μ/σ ≥ 4.
    (JOSHI, joshi_mu_sd, [1e-3, 0.01, 0.05, 0.3, 1.0]),
    (HERMES, hermes_mu_sd, [1e-3, 0.05, 0.2, 0.5, 1.0]),
], ids=["joshi2020", "hermes2023"])
def test_drift_exponent_distribution(model, mu_sd, levels):
    n = 200_000  # per level
    levels = np.array(levels)
    g = np.repeat(levels * model.g_max, n)
    nu, _ = draw_drift(model.model_id, g, g, model.g_max, seed=17)
    nu = nu.reshape(levels.size, n)
    for row, g_r in zip(nu, levels):
        mu, sd = mu_sd(float(g_r))
        # ν = |μ + σξ| is folded normal: scipy.stats.foldnorm(c = μ/σ, scale = σ).
        fold = stats.foldnorm(mu / sd, scale=sd)
        f_mean, f_var, f_kurt = (float(v) for v in fold.stats(moments="mvk"))
        f_sd = math.sqrt(f_var)
        # SE(mean) = sd_ν/sqrt(n) (≤ 1e-4 here); SE(std) = sd_ν·sqrt((κ + 2)/(4n)); 5 SE.
        assert abs(row.mean() - f_mean) < K_SE * f_sd / np.sqrt(n)
        assert abs(row.std() - f_sd) < K_SE * sd_standard_error(f_sd, f_kurt, n)
        assert row.min() >= 0.0
        # Shape: KS against the folded normal, D_crit(alpha = 1e-6, n = 2e5) = 5.8e-3.
        assert stats.kstest(row, fold.cdf).statistic < stats.kstwobign.isf(1e-6) / np.sqrt(n)


def test_drift_state_exact_draws_and_qs():
    # Rebuilt draws: ν = drift_scale·|μ_ν(g_nu) + σ_ν(g_nu)·ξ| (ξ at `counter` of stream NU),
    # and Q_s a function of g_qs alone, equal to the closed form (HERMES: Q_s from the
    # programmed conductance, ν from the target, so the two inputs are kept apart here).
    n = 3000
    for model, mu_sd, qs_fn in [(JOSHI, joshi_mu_sd, joshi_qs),
                                (HERMES, hermes_mu_sd, hermes_qs)]:
        g_nu = np.linspace(0.0, 1.1, n) * model.g_max
        g_qs = np.linspace(1.0, 1e-3, n) * model.g_max
        xi = rng.normals(21, rng.STREAM_NU, n, counter=6)
        for scale in (1.0, 0.5):
            nu, qs = draw_drift(model.model_id, g_nu, g_qs, model.g_max, seed=21, counter=6,
                                scale=scale)
            ms = np.array([mu_sd(float(g) / model.g_max) for g in g_nu])
            np.testing.assert_allclose(nu, scale * np.abs(ms[:, 0] + ms[:, 1] * xi),
                                       rtol=1e-13, atol=1e-17)
            expected_qs = [qs_fn(float(g) / model.g_max) for g in g_qs]
            np.testing.assert_allclose(qs, expected_qs, rtol=1e-14, atol=0)
        # Negative conductances (never produced, but accepted) use |g|.
        nu_neg, qs_neg = draw_drift(model.model_id, -g_nu, -g_qs, model.g_max, seed=21,
                                    counter=6)
        nu_pos, qs_pos = draw_drift(model.model_id, g_nu, g_qs, model.g_max, seed=21,
                                    counter=6)
        assert np.array_equal(nu_neg, nu_pos) and np.array_equal(qs_neg, qs_pos)


# ----------------------------------------------------------------------------------------
# Drift and read noise


def read(g_prog, t_prog, nu, q_s, times, counters, model, shifted, noise_scale, seed=31):
    out = np.empty((len(times), g_prog.size))
    pcm.read_drifted(g_prog, t_prog, nu, q_s, np.asarray(times, dtype=np.float64),
                     np.asarray(counters, dtype=np.uint64), model.t0, model.t_read, shifted,
                     noise_scale, U64(seed), out)
    return out


@pytest.fixture(scope="module")
def drift_devices():
    """4000 devices: half programmed within 2 ms (the log1p shortcut applies), half spread
    over 5 hours (exact logarithm); conductances 1–25 µS, ν from the Joshi model."""
    n = 4000
    g_prog = (1.0 + 24.0 * rng.uniforms(1, rng.STREAM_TARGET, n)) * 1e-6
    t_prog = 1000.0 + 0.5e-6 * np.arange(n)
    t_prog[n // 2:] = 1000.0 + 5 * 3600.0 * rng.uniforms(2, rng.STREAM_TARGET, n - n // 2)
    nu, qs = draw_drift(pcm.MODEL_JOSHI, g_prog, g_prog, JOSHI.g_max, seed=4)
    return g_prog, t_prog, nu, qs


@pytest.mark.parametrize("shifted", [False, True], ids=["clamped", "shifted"])
def test_drift_closed_form(drift_devices, shifted):
    g_prog, t_prog, nu, qs = drift_devices
    t_last = t_prog.max()
    # Times before any programming, before/after the last device's programming, inside t0
    # (clamped: no drift yet), and out to one year.
    times = np.array([999.0, 1000.0005, 1000.0 + 30.0, t_last, t_last + 1e-3, t_last + 1.0,
                      t_last + 19.0, t_last + 20.0, t_last + 21.0, t_last + 3600.0,
                      t_last + 86400.0, t_last + 3.15e7])
    g = read(g_prog, t_prog, nu, qs, times, np.arange(times.size) + 100, JOSHI, shifted, 0.0)
    t0 = JOSHI.t0
    tau = times[:, None] - t_prog[None, :]
    done = tau > 0.0
    tau_eff = tau + t0 if shifted else np.maximum(tau, t0)
    with np.errstate(invalid="ignore"):  # τ + t0 < 0 for unprogrammed devices (masked)
        expected = np.where(done, g_prog * (tau_eff / t0) ** (-nu), g_prog)
    # rtol 1e-12: τ is a difference of times ≤ 3.2e7 s, so its rounding (≤ 4e-9 s) moves
    # ν·ln τ by < 1e-12 for τ ≥ 1e-3 s; the log1p series is exact to ε⁴/4 < 3e-21.
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=0)
    # Not yet programmed (τ ≤ 0) reads G_p exactly; clamped: no drift before t0.
    assert np.array_equal(g[~done], np.broadcast_to(g_prog, g.shape)[~done])
    assert done.any() and (~done).any()
    if not shifted:
        early = done & (tau <= t0)
        assert early.any()
        assert np.array_equal(g[early], np.broadcast_to(g_prog, g.shape)[early])
    # Drift only lowers the conductance, monotonically in time, for every device.
    assert np.all(g <= g_prog)
    assert np.all(np.diff(g, axis=0) <= 0.0)


def test_drift_factor_and_noise_growth_helpers():
    # The scalar helpers state the same equations as read_drifted:
    # drift_factor = (τ_eff/t0)^(−ν), τ_eff = τ + t0 (shifted) or max(τ, t0) (clamped);
    # read_noise_growth = sqrt(ln((τ_n + t_read)/(2 t_read))), τ_n = τ + t0 or τ, 0 where
    # the logarithm is not positive.
    t0, t_read = JOSHI.t0, JOSHI.t_read
    for tau in [1e-9, 1e-7, 2.4e-7, 1.0, 19.999, 20.0, 20.001, 3600.0, 3.15e7]:
        for shifted in (False, True):
            tau_eff = tau + t0 if shifted else max(tau, t0)
            assert pcm.drift_factor(tau, 0.07, t0, shifted) == pytest.approx(
                (tau_eff / t0) ** -0.07, rel=1e-14)
            tau_n = tau + t0 if shifted else tau
            arg = (tau_n + t_read) / (2 * t_read)
            expected = math.sqrt(math.log(arg)) if arg > 1.0 else 0.0
            assert pcm.read_noise_growth(tau, t0, t_read, shifted) == pytest.approx(
                expected, rel=1e-14)
    assert pcm.read_noise_growth(1e-7, t0, t_read, False) == 0.0  # τ < t_read: no noise yet
    # ... and they agree with the kernel (noise-free and noisy, one device programmed at 0).
    g_p, nu, qs = np.array([10e-6]), np.array([0.07]), np.array([0.02])
    for shifted in (False, True):
        for tau in (5.0, 1e5):
            g0 = read(g_p, np.zeros(1), nu, qs, [tau], [3], JOSHI, shifted, 0.0)[0, 0]
            assert g0 == pytest.approx(10e-6 * pcm.drift_factor(tau, 0.07, t0, shifted),
                                       rel=1e-13)
            g1 = read(g_p, np.zeros(1), nu, qs, [tau], [3], JOSHI, shifted, 1.0)[0, 0]
            xi = rng.normal(31, rng.STREAM_READ, 0, 3)
            growth = pcm.read_noise_growth(tau, t0, t_read, shifted)
            assert g1 == pytest.approx(g0 * (1.0 + 0.02 * growth * xi), rel=1e-13)


@pytest.mark.parametrize("shifted", [False, True], ids=["clamped", "shifted"])
def test_read_matches_reference(drift_devices, shifted):
    g_prog, t_prog, nu, qs = drift_devices
    t_last = t_prog.max()
    times = [999.0, 1000.0005, t_last + 1e-3, t_last + 10.0, t_last + 1e4, t_last + 3.15e7]
    counters = np.arange(len(times)) * 3 + 7
    for scale in (1.0, 3.0):
        g = read(g_prog, t_prog, nu, qs, times, counters, JOSHI, shifted, scale)
        with np.errstate(invalid="ignore"):  # reference computes (τ + t0)^−ν for τ + t0 < 0
            r = reference.read_drifted(g_prog, t_prog, nu, qs, times, counters.astype(U64),
                                       JOSHI.t0, JOSHI.t_read, shifted, scale, U64(31))
        # The kernel takes ln τ through ln(t − t_ref) and a log1p series, the twin directly:
        # both evaluate G_d + G_d·noise to rounding, so |Δ| ≤ 1e-12·(|g| + G_p) (the G_p term
        # covers reads where G_d·(1 + noise) nearly cancels; negative ones are clipped to 0 in
        # both).
        assert np.all(np.abs(g - r) <= 1e-12 * (np.abs(r) + g_prog))
    # With 3× noise some low-conductance reads go below 0 and are clipped (Q_s ≤ 0.071 here,
    # sd of the relative noise up to 1.2 at one year).
    assert np.any(g == 0.0) and np.any(r == 0.0)


@pytest.mark.parametrize("shifted", [False, True], ids=["clamped", "shifted"])
def test_read_noise_grows_with_log_time(shifted):
    # All devices at g_r = 0.5 (Q_s = 0.0088/0.5^0.65 = 0.0138) programmed at t = 0; the
    # relative deviation (g − G_drift)/G_drift at τ is Q_s·sqrt(ln((τ_n + t_read)/(2 t_read)))·ξ
    # with τ_n = τ (clamped) or τ + t0 (shifted): 0.053 (clamped) / 0.058 (shifted) at 1 s,
    # 0.078 at one year. The clip at 0 is > 12 σ away.
    n = 200_000
    g_prog = np.full(n, 0.5 * JOSHI.g_max)
    t_prog = np.zeros(n)
    nu, qs = draw_drift(pcm.MODEL_JOSHI, g_prog, g_prog, JOSHI.g_max, seed=12)
    assert qs[0] == joshi_qs(0.5)
    times = np.array([1.0, 60.0, 3600.0, 86400.0, 3.15e7])
    counters = np.arange(times.size) + 1
    g_drift = read(g_prog, t_prog, nu, qs, times, counters, JOSHI, shifted, 0.0)
    g = read(g_prog, t_prog, nu, qs, times, counters, JOSHI, shifted, 1.0)
    rel = (g - g_drift) / g_drift
    tau_n = times + JOSHI.t0 if shifted else times
    expected_sd = qs[0] * np.sqrt(np.log((tau_n + JOSHI.t_read) / (2 * JOSHI.t_read)))
    for row, sd in zip(rel, expected_sd):
        # Normal: SE(mean) = sd/sqrt(n), SE(std) = sd/sqrt(2n) (0.16 %), 5 SE = 0.8 %. The
        # expected sd grows by 48 % (clamped) / 35 % (shifted) from 1 s to one year and by
        # ≥ 3.7 % between neighbouring times, so the log-time growth is resolved.
        assert abs(row.mean()) < K_SE * sd / np.sqrt(n)
        assert abs(row.std() - sd) < K_SE * sd_standard_error(sd, 0.0, n)
    # Reads at different times use different counters: independent noise, r ~ N(0, 1/n).
    assert abs(np.corrcoef(rel[0], rel[-1])[0, 1]) < K_SE / np.sqrt(n)


# ----------------------------------------------------------------------------------------
# Per-pulse model


PM = pcm.PulseModel()


def set_pulses(g, amplitude, n_pulses, dg0_d, g_sat_d, seed, counter0, sigma_c2c=PM.sigma_c2c):
    g = np.array(g, dtype=np.float64)
    pcm.apply_set_pulses(g, amplitude, n_pulses, dg0_d, g_sat_d, sigma_c2c, U64(seed),
                         U64(counter0))
    return g


def test_set_pulses_match_reference():
    n = 20_000
    par = pcm.draw_device_params(4, n, PM)
    g0 = rng.uniforms(1, rng.STREAM_TARGET, n) * 20e-6
    amp = rng.uniforms(2, rng.STREAM_TARGET, n)
    for n_pulses, counter0 in [(1, 0), (12, 40)]:
        g = set_pulses(g0, amp, n_pulses, par.dg0, par.g_sat, 6, counter0)
        r = reference.set_pulses(g0, amp, n_pulses, par.dg0, par.g_sat, PM.sigma_c2c, U64(6),
                                 U64(counter0))
        # rtol 1e-12 (kernel multiplies by 1/g_sat, twin divides); atol 1e-12·Δg_0 covers
        # results that cancel to ~0 before the floor at 0 S.
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12 * PM.dg0)
        assert np.all(g >= 0.0)
    assert np.array_equal(set_pulses(g0, amp, 0, par.dg0, par.g_sat, 6, 0), g0)


@pytest.mark.parametrize(("g_start", "s"), [(10e-6, 1.0), (15e-6, 0.5), (24e-6, 0.2)])
def test_single_pulse_increment_statistics(g_start, s):
    # Fixed device (Δg_0,d = 6 µS, g_sat,d = 30 µS): one pulse adds
    # s·Δg0·(1 − G/g_sat) + σ_c2c·s·Δg0·ξ. The new G is ≥ 3.9 increment-SDs above the floor
    # at 0 (asserted below), so the floor moves the mean by < 0.01 SE.
    n = 400_000
    dg0, g_sat = 6e-6, 30e-6
    mean = s * dg0 * (1.0 - g_start / g_sat)
    sd = PM.sigma_c2c * s * dg0
    assert stats.norm.cdf(-(g_start + mean) / sd) < 1e-4
    g = set_pulses(np.full(n, g_start), np.full(n, s), 1, np.full(n, dg0), np.full(n, g_sat),
                   seed=13, counter0=3)
    inc = g - g_start
    # Normal increments: SE(mean) = sd/sqrt(n), SE(std) = sd/sqrt(2n); 5 SE (0.8 % and
    # 0.56 % of sd).
    assert abs(inc.mean() - mean) < K_SE * sd / np.sqrt(n)
    assert abs(inc.std() - sd) < K_SE * sd_standard_error(sd, 0.0, n)


def test_many_pulses_saturate_at_g_sat():
    # G_{k+1} = a·G_k + Δg0 + σ·Δg0·ξ with a = 1 − Δg0/g_sat = 0.8 (s = 1) is an AR(1)
    # process with stationary mean g_sat and stationary std σ·Δg0/sqrt(1 − a²) = 6 µS; from
    # G = 0 the transient decays as a^k (2e-10 after 100 pulses). The floor at 0 is 5 σ
    # below g_sat (p = 3e-7 per pulse), negligible. Stationary samples are normal, so
    # SE(mean) = 6 µS/sqrt(n), SE(std) = 6 µS/sqrt(2n); 5 SE (0.3 % of g_sat).
    n = 100_000
    dg0, g_sat = 6e-6, 30e-6
    g = set_pulses(np.zeros(n), np.ones(n), 100, np.full(n, dg0), np.full(n, g_sat), 19, 0)
    a = 1.0 - dg0 / g_sat
    sd = PM.sigma_c2c * dg0 / np.sqrt(1.0 - a * a)
    assert abs(g.mean() - g_sat) < K_SE * sd / np.sqrt(n)
    assert abs(g.std() - sd) < K_SE * sd_standard_error(sd, 0.0, n)


def test_split_pulses_are_bitwise_identical():
    n = 5000
    par = pcm.draw_device_params(8, n, PM)
    amp = rng.uniforms(3, rng.STREAM_TARGET, n)
    g0 = np.full(n, 1e-6)
    once = set_pulses(g0, amp, 10, par.dg0, par.g_sat, 23, 5)
    first = set_pulses(g0, amp, 4, par.dg0, par.g_sat, 23, 5)
    twice = set_pulses(first, amp, 6, par.dg0, par.g_sat, 23, 9)
    assert np.array_equal(once, twice)
    # ... and a wrong counter0 for the second half does change the result.
    wrong = set_pulses(first, amp, 6, par.dg0, par.g_sat, 23, 5)
    assert not np.array_equal(once, wrong)


def test_reset_is_lognormal():
    # g = g_reset,d·exp(σ_reset·ξ): ln(g/g_reset,d) ~ N(0, σ_reset²), median g_reset,d.
    # SE(mean) = σ/sqrt(n), SE(std) = σ/sqrt(2n), SE(P(g < median)) = 0.5/sqrt(n); 5 SE.
    n = 400_000
    par = pcm.draw_device_params(2, n, PM)
    g = np.full(n, 12e-6)
    pcm.apply_reset(g, par.g_reset, PM.sigma_reset, U64(29), U64(7))
    z = np.log(g / par.g_reset)
    sd = PM.sigma_reset
    assert abs(z.mean()) < K_SE * sd / np.sqrt(n)
    assert abs(z.std() - sd) < K_SE * sd_standard_error(sd, 0.0, n)
    assert abs(np.mean(g < par.g_reset) - 0.5) < K_SE * 0.5 / np.sqrt(n)
    assert stats.kstest(z / sd, stats.norm.cdf).statistic < stats.kstwobign.isf(1e-6) / np.sqrt(n)
    # The draw is at `counter` of stream RESET, whatever the previous conductance.
    g2 = np.zeros(n)
    pcm.apply_reset(g2, par.g_reset, PM.sigma_reset, U64(29), U64(7))
    assert np.array_equal(g, g2)


def test_device_params_spread():
    # Δg_0,d = Δg_0·max(1 + 0.2ξ, 0.05), g_sat,d = g_sat·max(1 + 0.1ξ, 0.1),
    # g_reset,d = g_reset·exp(0.3ξ). The clips sit at ξ < −4.75 and −9 (P = 1e-6 and 1e-19),
    # negligible.
    # Relative spreads: SE(mean) = σ/sqrt(n), SE(std) = σ/sqrt(2n); 5 SE.
    n = 400_000
    p = pcm.draw_device_params(31, n, PM)
    rel = [(p.dg0 / PM.dg0 - 1.0, PM.sigma_d2d_dg0),
           (p.g_sat / PM.g_sat - 1.0, PM.sigma_d2d_gsat),
           (np.log(p.g_reset / PM.g_reset), PM.sigma_reset_d2d)]
    for x, sd in rel:
        assert abs(x.mean()) < K_SE * sd / np.sqrt(n)
        assert abs(x.std() - sd) < K_SE * sd_standard_error(sd, 0.0, n)
    # The three parameters of a device are independent draws: |r| < 5/sqrt(n).
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert abs(np.corrcoef(rel[i][0], rel[j][0])[0, 1]) < K_SE / np.sqrt(n)
    # Pure in (seed, index): a prefix of a larger draw is the smaller draw.
    q = pcm.draw_device_params(31, 1000, PM)
    assert np.array_equal(q.dg0, p.dg0[:1000]) and np.array_equal(q.g_reset, p.g_reset[:1000])


def test_device_params_floor():
    # With σ_Δ = 1 the floor max(1 + ξ, 0.05) binds for ξ < −0.95: fraction Φ(−0.95) = 0.171
    # (binomial SE sqrt(p(1−p)/n)), and those devices sit exactly at 0.05·Δg_0.
    n = 200_000
    p = pcm.draw_device_params(5, n, pcm.PulseModel(sigma_d2d_dg0=1.0))
    floor = 0.05 * PM.dg0
    assert p.dg0.min() == floor
    frac = stats.norm.cdf(-0.95)
    assert abs(np.mean(p.dg0 == floor) - frac) < K_SE * np.sqrt(frac * (1 - frac) / n)


# ----------------------------------------------------------------------------------------
# Program and verify


VP = pcm.VerifyPolicy()
N_PV = 10_000


def program_verify(target, par, seed=41, counter0=0, read_noise=VP.read_noise,
                   read_resolution=VP.read_resolution, max_pulses=VP.max_pulses):
    n = target.size
    g = np.empty(n)
    n_pulses = np.empty(n, dtype=np.int64)
    converged = np.empty(n, dtype=np.bool_)
    pcm.program_verify(target, g, par.dg0, par.g_sat, par.g_reset, PM.dg0, PM.g_sat,
                       PM.sigma_c2c, PM.sigma_reset, VP.tolerance, max_pulses, read_noise,
                       read_resolution, VP.step_fraction, VP.s_min, U64(seed), U64(counter0),
                       n_pulses, converged)
    return g, n_pulses, converged


@pytest.fixture(scope="module")
def pv_devices():
    par = pcm.draw_device_params(43, N_PV, PM)
    target = rng.uniforms(44, rng.STREAM_TARGET, N_PV) * JOSHI.g_max
    return target, par


def verify_read_noise(seed, counter0, n_pulses):
    """ξ of each device's last verify read: counter counter0 + n_pulses of stream VERIFY."""
    key = reference.stream_key(U64(seed), rng.STREAM_VERIFY)
    origin = reference.index_origin(key, np.arange(n_pulses.size))
    return reference.origin_normal(origin, U64(counter0) + n_pulses.astype(U64))


@pytest.mark.parametrize("read_resolution", [0.0, 0.05e-6], ids=["unquantised", "quantised"])
def test_program_verify_stopping_rule(pv_devices, read_resolution):
    target, par = pv_devices
    g, n_pulses, converged = program_verify(target, par, counter0=100,
                                            read_resolution=read_resolution)
    assert np.all((n_pulses >= 1) & (n_pulses <= VP.max_pulses))
    assert np.all(n_pulses[~converged] == VP.max_pulses)
    # Most devices converge: only targets above a device's own g_sat,d (or unlucky ones)
    # run out of budget. (96 % observed; the bound guards against a broken controller.)
    assert converged.mean() > 0.9
    # Converged means the verify read, not G, was within tolerance: |G − g_T| may exceed the
    # tolerance by the read noise. With ≤ 4e5 reads, |ξ| < 6.5 for all (p = 8e-11 each).
    dev = np.abs(g - target)
    assert np.all(dev[converged] <= VP.tolerance + 6.5 * VP.read_noise)
    assert np.any(dev[converged] > VP.tolerance)  # the read-noise allowance is used
    # Rebuild the last verify read exactly: G_r = G + σ_v·ξ (quantised), the stopping rule
    # |G_r − g_T| ≤ tolerance holds for converged devices and fails for the others.
    g_read = g + VP.read_noise * verify_read_noise(41, 100, n_pulses)
    if read_resolution > 0.0:
        g_read = np.floor(g_read / read_resolution + 0.5) * read_resolution
    err = np.abs(target - g_read)
    assert np.all(err[converged] <= VP.tolerance)
    assert np.all(err[~converged] > VP.tolerance)


def test_program_verify_noise_free_reads(pv_devices):
    target, par = pv_devices
    g, n_pulses, converged = program_verify(target, par, read_noise=0.0, read_resolution=0.0)
    assert converged.mean() > 0.9
    assert np.all(np.abs(g[converged] - target[converged]) <= VP.tolerance)
    assert np.all(np.abs(g[~converged] - target[~converged]) > VP.tolerance)
    assert np.all(n_pulses[~converged] == VP.max_pulses)


def test_program_verify_budget_of_one(pv_devices):
    # max_pulses = 1: only the initial RESET, then one verify read. G is the RESET draw at
    # counter0 of stream RESET; converged exactly where that read (counter0 + 1 of stream
    # VERIFY) is within tolerance: targets below ~0.6 µS.
    target, par = pv_devices
    g, n_pulses, converged = program_verify(target, par, counter0=3, max_pulses=1)
    assert np.all(n_pulses == 1)
    g_reset = np.empty(N_PV)
    pcm.apply_reset(g_reset, par.g_reset, PM.sigma_reset, U64(41), U64(3))
    assert np.array_equal(g, g_reset)
    g_read = g + VP.read_noise * verify_read_noise(41, 3, n_pulses)
    assert np.array_equal(converged, np.abs(target - g_read) <= VP.tolerance)
    assert 0 < converged.sum() < N_PV


def test_program_verify_thread_independent(pv_devices, restore_threads):
    target, par = pv_devices
    results = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        results[threads] = program_verify(target, par, counter0=7)
    for a, b in zip(results[1], results[2]):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------------
# Crossbar


def test_weight_mapping_round_trip_and_clipping():
    w_scale, g_max = 0.8, 25e-6
    w = np.linspace(-1.2, 1.2, 2401)
    gp, gm = crossbar.weights_to_conductances(w, w_scale, g_max)
    # One device of each pair is at 0 S, the other carries |w|·g_max/w_scale, ≤ g_max.
    assert np.all((gp == 0.0) | (gm == 0.0))
    assert np.all((gp >= 0.0) & (gp <= g_max) & (gm >= 0.0) & (gm <= g_max))
    assert np.all(gp[w > 0] > 0.0) and np.all(gm[w < 0] > 0.0)
    back = crossbar.conductances_to_weights(gp, gm, w_scale, g_max)
    inside = np.abs(w) <= w_scale
    # Round trip: two multiplications and a division, rtol 1e-15 (a few ulps).
    np.testing.assert_allclose(back[inside], w[inside], rtol=1e-15, atol=0)
    # Clipping: |w| > w_scale maps to ±w_scale.
    np.testing.assert_allclose(back[~inside], np.sign(w[~inside]) * w_scale, rtol=1e-15)
    assert np.all(gp[w > w_scale] == g_max) and np.all(gm[w < -w_scale] == g_max)
    assert gp[w == 0.0].item() == 0.0 and gm[w == 0.0].item() == 0.0


def mvm(gp, gm, x, scale):
    out = np.empty((x.shape[0], gp.shape[1]))
    crossbar.mvm_differential(gp, gm, x, scale, out)
    return out


@pytest.fixture(scope="module")
def tile():
    rows, cols, batch = 257, 130, 33
    gp = rng.uniforms(1, rng.STREAM_TARGET, (rows, cols)) * 25e-6
    gm = rng.uniforms(2, rng.STREAM_TARGET, (rows, cols)) * 25e-6
    x = rng.normals(3, rng.STREAM_INPUT, (batch, rows))
    x[:, ::7] = 0.0  # exercise the zero-input skip
    return gp, gm, x, 0.8 / 25e-6


def test_mvm_matches_matmul(tile):
    gp, gm, x, scale = tile
    y = mvm(gp, gm, x, scale)
    expected = x @ ((gp - gm) * scale)
    # rtol 1e-12 on each output, plus atol 1e-12·Σ|x||W| for outputs that cancel to ~0
    # (summation order differs from BLAS; rounding is bounded by n·ε·Σ|terms|).
    bound = np.abs(x) @ np.abs((gp - gm) * scale)
    assert np.all(np.abs(y - expected) <= 1e-12 * (np.abs(expected) + bound))


def test_mvm_thread_independent(tile, restore_threads):
    gp, gm, x, scale = tile
    out = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        out[threads] = mvm(gp, gm, x, scale)
    assert np.array_equal(out[1], out[2])
