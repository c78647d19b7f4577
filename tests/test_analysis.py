"""End to end: scenario -> engine -> trace file -> analysis recovers the published model.

These tests read everything back from the HDF5 trace, so they check the engine's
bookkeeping (times, counters, device layout) as well as the physics.
"""

import numpy as np
import pytest
from scipy import stats

from imcsim.analysis.drift import drift_exponents, fit_drift_exponents, mvm_error_vs_time
from imcsim.config import parse_scenario
from imcsim.runner import run_scenario
from imcsim.store import Trace

G_MAX = 25e-6
ROWS = COLS = 128
W_CONST = 0.5  # every weight 0.5 -> every G+ at g_r = 0.5, every G- at 0

SCENARIO = f"""
[run]
name = "stat"
seed = 11
[array]
rows = {ROWS}
cols = {COLS}
[targets]
distribution = "file"
file = "w.npy"
[record]
subset = 2048
[[timeline]]
kind = "program"
method = "statistical"
[[timeline]]
kind = "read"
times = {{ start = 40.0, stop = 3.1536e7, num = 24 }}
full_times = [1.0, 3600.0, 3.1536e7]
"""


@pytest.fixture(scope="module")
def stat_trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("stat")
    np.save(d / "w.npy", np.full((ROWS, COLS), W_CONST))
    (d / "s.toml").write_text(SCENARIO)
    from imcsim.config import load_scenario

    out = run_scenario(load_scenario(d / "s.toml"), d / "stat.h5")
    with Trace(out) as tr:
        yield tr


def _joshi_sigma_prog(g_r):
    return (0.26348 + 1.9650 * g_r - 1.1731 * g_r**2) * 1e-6


def _joshi_nu(g_r):
    ln = np.log(g_r)
    return np.clip(-0.0155 * ln + 0.0244, 0.049, 0.1), np.clip(-0.0125 * ln - 0.0059, 0.008,
                                                                0.045)


def test_programming_noise_std_from_trace(stat_trace):
    g = stat_trace.series("g_programmed").data[0, 0].ravel()
    n = g.size
    sigma = _joshi_sigma_prog(W_CONST)
    # SE of a sample std is σ/sqrt(2n) (0.55 % here); 5 SE.
    assert abs(g.std(ddof=1) / sigma - 1) < 5 / np.sqrt(2 * n)
    # SE of the mean is σ/sqrt(n).
    assert abs(g.mean() - W_CONST * G_MAX) < 5 * sigma / np.sqrt(n)


def test_drift_exponent_statistics_from_trace(stat_trace):
    nu = stat_trace.series("nu").data[0, 0].ravel()
    mu, sd = _joshi_nu(W_CONST)
    folded = stats.foldnorm(mu / sd, scale=sd)
    n = nu.size
    assert abs(nu.mean() - folded.mean()) < 5 * folded.std() / np.sqrt(n)
    assert abs(nu.std(ddof=1) / folded.std() - 1) < 5 * np.sqrt(
        (stats.kurtosis(nu) + 2) / (4 * n))


def test_read_noise_grows_with_log_time(stat_trace):
    """Relative deviation from the noise-free drift = Q_s·sqrt(ln((τ + t_read)/(2 t_read)))."""
    gp = stat_trace.series("g_programmed").data[0, 0].ravel()
    tp = stat_trace.series("t_programmed").data[0, 0].ravel()
    nu = stat_trace.series("nu").data[0, 0].ravel()
    q_s = 0.0088 / W_CONST**0.65
    full = stat_trace.series("conductance")
    n = gp.size
    for t, g in zip(full.t, full.data[:, 0]):
        tau = t - tp
        g_drift = gp * (np.maximum(tau, 20.0) / 20.0) ** (-nu)
        rel = g.ravel() / g_drift - 1
        expected = q_s * np.sqrt(np.log((tau.mean() + 250e-9) / (2 * 250e-9)))
        assert abs(rel.std(ddof=1) / expected - 1) < 5 / np.sqrt(2 * n), t


def test_drift_fit_recovers_model_exponents(stat_trace):
    idx, nu_fit, nu_model = drift_exponents(stat_trace)
    plus = idx < ROWS * COLS  # G+ devices, all at g_r = 0.5, Q_s·sqrt(ln) ≈ 5-6 %
    diff = (nu_fit - nu_model)[plus]
    assert np.all(np.isfinite(diff))
    # Each fit has an error ~ 0.055 / (std(ln t)·sqrt(24)) ≈ 0.0034; the mean over the
    # subset must vanish within 5 standard errors, the spread must match that size.
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(diff.mean()) < 5 * se
    assert diff.std() < 0.01


def test_fit_drift_exponents_exact_without_noise():
    t = np.geomspace(40, 1e7, 12)
    nu = np.array([0.03, 0.06, 0.1])
    g = 1e-5 * (t[:, None] / 20.0) ** (-nu[None, :])
    assert np.allclose(fit_drift_exponents(t, g, 40.0), nu, rtol=1e-12)


NOISELESS = """
[run]
seed = 3
[device.statistical]
prog_noise_scale = 0.0
read_noise_scale = 0.0
[array]
rows = 32
cols = 16
[[timeline]]
kind = "program"
method = "statistical"
[[timeline]]
kind = "calibrate"
t = 1.0
[[timeline]]
kind = "mvm"
times = [1.0, 10.0, 100.0, 1e5, 1e7]
"""


def test_noiseless_mvm_is_exact_before_t0_and_compensation_helps(tmp_path):
    out = run_scenario(parse_scenario(NOISELESS), tmp_path / "n.h5")
    with Trace(out) as tr:
        c = mvm_error_vs_time(tr)
    # Without programming or read noise the tile computes W·x exactly until drift starts.
    assert np.all(c.error[c.t < 20.0] < 1e-12)
    assert np.all(np.diff(c.error[c.t >= 20.0]) > 0)  # drift only makes it worse
    late = c.t > 1e3
    assert np.all(c.error_gdc[late] < 0.5 * c.error[late])
    assert np.allclose(c.alpha[c.t < 20.0], 1.0, rtol=1e-12)
    assert np.all(c.alpha[late] > 1.0)
