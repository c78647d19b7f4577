"""Event-driven charge-domain spiking core: closed form against a numerical ODE solver, limits,
the numpy reference, the physical mapping, thread independence and bad input."""

import itertools

import numba
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from imcsim.physics import spiking as sp

E_PLUS, E_MINUS, E_DIS = 2.80, -1.53, 6.44  # Sakemi et al.'s sky130 circuit (normalised)


def _layer(seed, n_in=6, n_out=4, batch=1, mean=0.15, std=0.5):
    rng = np.random.default_rng(seed)
    t_in = rng.uniform(0.0, 1.0, (batch, n_in))
    w = rng.normal(mean, std, (n_in, n_out))
    return t_in, w


def _ode_reference(t_row, w, beta, t_eval, beta_fire, leak, rate=1.0):
    """v(t) of every neuron by DOP853 on dv/dt = −α·v + Σ w(1 − βv)θ(t − t_j) for t < 1 and
    a·(1 − β_fire·v) − α·v for 1 ≤ t ≤ 2, integrated piece by piece between the input events
    (where the right-hand side jumps), and the firing-phase crossing of v = 1 found by the
    solver's event location (np.inf: none)."""
    n_out = w.shape[1]
    breaks = np.unique(np.concatenate(([0.0], t_row[t_row < 1.0], [1.0, 2.0])))
    v = np.zeros((t_eval.size, n_out))
    t_spike = np.full(n_out, np.inf)

    def crossing(t, y):
        return y[0] - 1.0

    crossing.direction = 1.0
    for i in range(n_out):
        y = 0.0
        for a, b in itertools.pairwise(breaks):
            if a < 1.0:
                on = t_row <= 0.5 * (a + b)  # the inputs switched on in this piece
                g, f = np.sum(w[on, i]), leak + np.sum(beta[on, i] * w[on, i])
            else:
                g, f = rate, leak + rate * beta_fire
            sol = solve_ivp(lambda t, yy, g=g, f=f: [g - f * yy[0]], (a, b), [y],
                            method="DOP853", rtol=1e-12, atol=1e-14, dense_output=True,
                            events=crossing if a >= 1.0 else None)
            inside = (t_eval >= a) & ((t_eval < b) | (b == 2.0))
            if inside.any():
                v[inside, i] = sol.sol(t_eval[inside])[0]
            if a == 1.0 and y >= 1.0:
                t_spike[i] = 0.0  # above threshold when the firing phase starts
            elif a >= 1.0 and sol.t_events[0].size:
                t_spike[i] = sol.t_events[0][0] - 1.0
            y = sol.sol(b)[0]
    return v, t_spike


@pytest.mark.parametrize("model, leak, rate", [
    ("bottom_up", 0.0, 1.0), ("top_down", 0.0, 1.0), ("bottom_up", 0.3, 1.0),
    ("top_down", 0.3, 1.0), ("bottom_up", 0.0, 1.3)])
def test_closed_form_trajectory_and_spike_times_match_solve_ivp(model, leak, rate):
    t_in, w = _layer(3, n_in=7, n_out=5, mean=0.3, std=0.4)
    t_in[0, 2] = np.inf  # an input that never spikes
    t_in[0, 4] = t_in[0, 1]  # two simultaneous inputs
    if model == "bottom_up":
        beta, beta_fire = sp.reversal_beta(w, E_PLUS, E_MINUS), 1.0 / E_DIS
    else:
        beta, beta_fire = np.zeros_like(w), 0.0
    t_eval = np.linspace(0.0, 2.0, 41)[1:]
    v_ode, spikes_ode = _ode_reference(t_in[0], w, beta, t_eval, beta_fire, leak, rate)
    phase = {"beta_fire": beta_fire, "leak": leak, "fire_rate": rate}
    v = sp.membrane_potential(t_in[0], w, beta, t_eval, **phase)
    np.testing.assert_allclose(v, v_ode, rtol=1e-6, atol=1e-10)
    t_out = sp.layer_spike_times(t_in, w, beta, **phase)[0]
    assert np.sum((t_out > 0) & (t_out < 1)) >= 2  # the check below compares crossings
    np.testing.assert_array_equal(np.isfinite(t_out), np.isfinite(spikes_ode))
    fired = np.isfinite(t_out) & (t_out > 0)
    np.testing.assert_allclose(t_out[fired], spikes_ode[fired], rtol=1e-6)


def test_v_at_spike_time_is_threshold_and_spike_ends_where_trajectory_crosses():
    t_in, w = _layer(2, n_in=10, n_out=6, batch=1, mean=0.2)
    beta = sp.reversal_beta(w, E_PLUS, E_MINUS)
    t_out = sp.layer_spike_times(t_in, w, beta, beta_fire=1 / E_DIS, leak=0.3)[0]
    for i in np.flatnonzero(np.isfinite(t_out) & (t_out > 0)):
        v = sp.membrane_potential(t_in[0], w, beta, [1.0 + t_out[i]], beta_fire=1 / E_DIS,
                                  leak=0.3)
        assert v[0, i] == pytest.approx(1.0, abs=1e-12)


def test_top_down_end_of_phase_potential_is_the_weighted_sum():
    t_in, w = _layer(3, n_in=32, n_out=8, batch=20)
    t_in[t_in > 0.8] = np.inf
    t_in[0, :] = np.inf  # no input at all: v(1) = 0, threshold reached as the phase ends
    _, v_end = sp.layer_spike_times(t_in, w, np.zeros_like(w), return_v_end=True)
    expected = np.where(np.isfinite(t_in), 1.0 - t_in, 0.0) @ w
    np.testing.assert_allclose(v_end, expected, rtol=1e-12, atol=1e-13)
    t_out = sp.layer_spike_times(t_in, w, np.zeros_like(w))
    assert np.all(t_out[0] == 1.0)
    inside = (expected > 0) & (expected < 1)
    np.testing.assert_allclose(t_out[inside], 1.0 - expected[inside], rtol=1e-12)


def test_small_beta_converges_to_top_down_linearly():
    t_in, w = _layer(4, n_in=16, n_out=8, batch=10)
    _, v0 = sp.layer_spike_times(t_in, w, np.zeros_like(w), return_v_end=True)
    gaps = []
    for scale in (1e-3, 1e-4):
        beta = scale * sp.reversal_beta(w, E_PLUS, E_MINUS)
        _, v = sp.layer_spike_times(t_in, w, beta, return_v_end=True)
        gaps.append(np.max(np.abs(v - v0)))
    assert gaps[1] < 1e-2
    assert gaps[0] / gaps[1] == pytest.approx(10.0, rel=1e-2)  # first order in β


def test_reversal_potentials_bound_the_membrane():
    # Strong excitation only: v creeps toward E₊ but never past it; inhibition toward E₋.
    t_in = np.zeros((1, 4))
    w = np.full((4, 2), 20.0)
    w[:, 1] = -20.0
    beta = sp.reversal_beta(w, E_PLUS, E_MINUS)
    _, v = sp.layer_spike_times(t_in, w, beta, return_v_end=True)
    assert E_PLUS - 1e-6 < v[0, 0] <= E_PLUS
    assert E_MINUS <= v[0, 1] < E_MINUS + 1e-6


def test_firing_rule_for_early_late_and_missing_spikes():
    v_end = np.array([1.5, 1.0, 0.25, -0.5, -2.0])
    np.testing.assert_allclose(sp.firing_times(v_end), [0.0, 0.0, 0.75, np.inf, np.inf])
    np.testing.assert_allclose(sp.firing_times(v_end, clipped=True), [0, 0, 0.75, 1, 1])
    # A discharger with a reversal potential E_dis: the crossing of v(t) = E − (E − v₀)e^{−t/E}.
    t = sp.firing_times(np.array([0.25]), beta_fire=1 / E_DIS)[0]
    assert E_DIS - (E_DIS - 0.25) * np.exp(-t / E_DIS) == pytest.approx(1.0, abs=1e-14)
    # Their App. A.2 discharge (Eq. 85): v(1) = 0 fires exactly as the phase ends.
    beta = 1 / E_DIS
    rate = sp.calibrated_fire_rate(beta)
    v0 = np.array([0.0, 0.4, -0.05])
    eq85 = (np.log(1 - beta) - np.log(1 - beta * v0)) / np.log(1 - beta)
    t = sp.firing_times(v0, beta_fire=beta, fire_rate=rate)
    np.testing.assert_allclose(t[:2], eq85[:2], rtol=1e-13)
    assert np.isinf(t[2]) and eq85[2] > 1.0
    assert sp.calibrated_fire_rate(0.0) == 1.0
    # κ ≥ a: the discharge saturates at or below threshold.
    assert np.isinf(sp.firing_times(np.array([0.9]), beta_fire=1.0)[0])
    assert sp.firing_times(np.array([0.9]), beta_fire=1.0, clipped=True)[0] == 1.0


def test_kernel_matches_numpy_reference_with_ties_misses_and_late_inputs():
    rng = np.random.default_rng(5)
    t_in = rng.uniform(0.0, 1.2, (64, 24))
    t_in[rng.uniform(size=t_in.shape) < 0.1] = np.inf
    t_in[:, 3] = t_in[:, 7]  # ties
    t_in[:, 0] = 0.0
    w = rng.normal(0.05, 0.4, (24, 12))
    beta = sp.reversal_beta(w, E_PLUS, E_MINUS)
    for kwargs in ({}, {"beta_fire": 1 / E_DIS, "leak": 0.4}, {"clipped": True}):
        t_k, v_k = sp.layer_spike_times(t_in, w, beta, return_v_end=True, **kwargs)
        t_n, v_n = sp.layer_spike_times_numpy(t_in, w, beta, return_v_end=True, **kwargs)
        np.testing.assert_allclose(v_k, v_n, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(np.isinf(t_k), np.isinf(t_n))
        finite = np.isfinite(t_k)
        np.testing.assert_allclose(t_k[finite], t_n[finite], rtol=0, atol=1e-12)


def test_network_feeds_each_layers_times_to_the_next():
    rng = np.random.default_rng(6)
    t_in = rng.uniform(0, 1, (8, 5))
    layers = [(w, sp.reversal_beta(w, E_PLUS, E_MINUS))
              for w in (rng.normal(0.3, 0.4, (5, 4)), rng.normal(0.4, 0.5, (4, 3)))]
    times = sp.network_spike_times(t_in, layers, beta_fire=0.1, return_all=True)
    first = sp.layer_spike_times(t_in, *layers[0], beta_fire=0.1)
    np.testing.assert_array_equal(times[0], first)
    np.testing.assert_array_equal(times[1], sp.layer_spike_times(first, *layers[1],
                                                                 beta_fire=0.1))


def test_physical_synapse_in_si_units_maps_onto_the_normalised_core():
    # C dV/dt = Σ g(E − V) in SI units, integrated numerically, against the normalised core.
    c_mem, v_swing, t_phase = 103.3e-15, 0.6, 1e-6
    g = np.array([[2e-7], [1.5e-7], [3e-7]])  # S
    e_rev = np.array([[1.68], [-0.92], [1.68]])  # V from reset, toward threshold positive
    t_on = np.array([0.1e-6, 0.3e-6, 0.55e-6])
    w, beta = sp.normalise_synapse(g, e_rev, c_mem=c_mem, v_swing=v_swing, t_phase=t_phase)
    sol = solve_ivp(lambda t, v: [np.sum(g[t_on <= t, 0] * (e_rev[t_on <= t, 0] - v[0]))
                                  / c_mem], (0.0, t_phase), [0.0], method="DOP853",
                    rtol=1e-12, atol=1e-16, max_step=1e-9)
    _, v_end = sp.layer_spike_times((t_on / t_phase)[None, :], w, beta, return_v_end=True)
    assert v_end[0, 0] == pytest.approx(sol.y[0, -1] / v_swing, rel=1e-6)
    g2, e2 = sp.physical_synapse(w, beta, c_mem=c_mem, v_swing=v_swing, t_phase=t_phase)
    np.testing.assert_allclose(g2, g, rtol=1e-14)
    np.testing.assert_allclose(e2, e_rev, rtol=1e-14)
    w_i, beta_i = sp.normalise_current(1e-7, c_mem=c_mem, v_swing=v_swing, t_phase=t_phase)
    assert beta_i == 0.0 and w_i == pytest.approx(1e-7 * t_phase / (c_mem * v_swing))
    assert sp.physical_current(w_i, c_mem=c_mem, v_swing=v_swing, t_phase=t_phase) == \
        pytest.approx(1e-7, rel=1e-14)


def test_same_bytes_with_one_and_two_threads(restore_threads):
    t_in, w = _layer(7, n_in=40, n_out=30, batch=257)
    beta = sp.reversal_beta(w, E_PLUS, E_MINUS)
    out = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        t, v = sp.layer_spike_times(t_in, w, beta, beta_fire=0.1, return_v_end=True)
        gw, gt = sp.layer_gradients(t_in, w, beta, np.ones_like(v))
        out.append(b"".join(a.tobytes() for a in (t, v, gw, gt)))
    assert out[0] == out[1]


@pytest.mark.parametrize("call, message", [
    (lambda t, w, b: sp.layer_spike_times(t[0], w, b), "2-D"),
    (lambda t, w, b: sp.layer_spike_times(np.where(t == t.max(), np.nan, t), w, b), ">= 0"),
    (lambda t, w, b: sp.layer_spike_times(-t, w, b), ">= 0"),
    (lambda t, w, b: sp.layer_spike_times(t, w[:-1], b), "w must have shape"),
    (lambda t, w, b: sp.layer_spike_times(t, w, b[:, :-1]), "beta must have the shape"),
    (lambda t, w, b: sp.layer_spike_times(t, w, b, beta_fire=-1.0), "beta_fire"),
    (lambda t, w, b: sp.layer_spike_times(t, w, b, leak=np.nan), "leak"),
    (lambda t, w, b: sp.membrane_potential(t[0], w, b, [2.5]), "t_eval"),
    (lambda t, w, b: sp.reversal_beta(w, 2.8, 1.53), r"E\+ > 0 > E-"),
    (lambda t, w, b: sp.physical_synapse(w, 0 * b, c_mem=1e-13, v_swing=1, t_phase=1e-6),
     "physical_current"),
    (lambda t, w, b: sp.normalise_synapse(w, b, c_mem=0.0, v_swing=1, t_phase=1e-6), "c_mem"),
])
def test_bad_input_is_rejected_with_a_message(call, message):
    t_in, w = _layer(8, batch=2)
    with pytest.raises(ValueError, match=message):
        call(t_in, w, sp.reversal_beta(w, E_PLUS, E_MINUS))
