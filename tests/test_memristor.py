"""Bulk-switching memristor pulse response: closed form, bounds, noise, batching, fitting."""

import dataclasses

import numba
import numpy as np
import pytest

from imcsim.physics import memristor

MODEL = memristor.BulkSwitchingModel()


def _devices(n, model=MODEL):
    """n identical devices with the model's nominal parameters."""
    return memristor.MemristorDevices(np.full(n, model.g_min), np.full(n, model.g_max),
                                      np.full(n, model.a_potentiation),
                                      np.full(n, model.a_depression))


def _pulse(g, n, dev, sigma=0.0, seed=1, counter0=0, count=None):
    count = np.zeros(g.size, dtype=np.int64) if count is None else count
    memristor.apply_pulses(g, np.asarray(n, dtype=np.int64), dev.g_min, dev.g_max,
                           dev.a_potentiation, dev.a_depression, MODEL.pulses_full, sigma,
                           np.uint64(seed), np.uint64(counter0), count)
    return g, count


@pytest.mark.parametrize("up", [True, False])
def test_noise_free_pulses_follow_the_closed_form(up):
    dev = _devices(1)
    g = np.array([MODEL.g_min if up else MODEL.g_max])
    curve = [g[0]]
    for _ in range(MODEL.pulses_full):
        _pulse(g, [1 if up else -1], dev)
        curve.append(g[0])
    expected = memristor.pulse_response(MODEL, MODEL.pulses_full, up=up)
    assert np.allclose(curve, expected, rtol=1e-12, atol=0)
    # P_max pulses sweep the whole window, by construction of B
    assert curve[-1] == pytest.approx(MODEL.g_max if up else MODEL.g_min, rel=1e-12)
    steps = np.abs(np.diff(curve))
    assert np.all(np.diff(steps) < 0)  # nonlinear: every step smaller than the one before


def test_noisy_pulses_stay_in_the_window_with_the_stated_spread():
    n = 200_000
    dev = _devices(n)
    g0 = 0.5 * (MODEL.g_min + MODEL.g_max)
    g = np.full(n, g0)
    _pulse(g, np.ones(n), dev, sigma=MODEL.sigma_c2c)
    nominal = memristor.pulse_response(MODEL, 1, up=True, g0=g0)[1] - g0
    rel = (g - g0) / nominal - 1.0
    # relative increment noise σ_c2c; SE of a std is σ/sqrt(2n): 5 SE
    assert abs(rel.std() / MODEL.sigma_c2c - 1) < 5 / np.sqrt(2 * n)
    assert abs(rel.mean()) < 5 * MODEL.sigma_c2c / np.sqrt(n)
    g = np.full(n, MODEL.g_max * 0.999)
    _pulse(g, np.full(n, 50), dev, sigma=1.0, seed=3)
    assert g.min() >= MODEL.g_min and g.max() <= MODEL.g_max


def test_batching_and_threads_do_not_change_the_result(restore_threads):
    n = 5000
    dev = memristor.draw_devices(MODEL, n, seed=4)
    plan = np.random.default_rng(0).integers(-6, 7, size=(4, n))
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        g = np.full(n, 20e-6)
        count = np.zeros(n, dtype=np.int64)
        for row in plan:  # four calls, each device's pulses drawn at its own running count
            _pulse(g, row, dev, sigma=0.1, count=count)
        results.append((g.copy(), count.copy()))
    for g, count in results[1:]:
        assert np.array_equal(g, results[0][0]) and np.array_equal(count, results[0][1])
    assert np.array_equal(results[0][1], np.abs(plan).sum(axis=0))
    # one call with all same-sign pulses equals the same pulses split over two calls
    g1, c1 = _pulse(np.full(n, 20e-6), np.full(n, 6), dev, sigma=0.1)
    g2, c2 = _pulse(np.full(n, 20e-6), np.full(n, 2), dev, sigma=0.1)
    g2, c2 = _pulse(g2, np.full(n, 4), dev, sigma=0.1, count=c2)
    assert np.array_equal(g1, g2) and np.array_equal(c1, c2)


def test_device_to_device_spreads():
    n = 100_000
    dev = memristor.draw_devices(MODEL, n, seed=9)
    span = MODEL.g_max - MODEL.g_min
    assert abs(dev.g_min.std() / (MODEL.sigma_d2d_window * span) - 1) < 5 / np.sqrt(2 * n)
    log_a = np.log(dev.a_potentiation / MODEL.a_potentiation)
    assert abs(log_a.std() / MODEL.sigma_d2d_a - 1) < 5 / np.sqrt(2 * n)
    assert abs(log_a.mean()) < 5 * MODEL.sigma_d2d_a / np.sqrt(n)


def test_read_noise_is_relative():
    n = 200_000
    g = np.full(n, 10e-6)
    out = np.empty(n)
    memristor.read(g, MODEL.sigma_read, np.uint64(2), np.uint64(0), out)
    assert abs((out / g - 1).std() / MODEL.sigma_read - 1) < 5 / np.sqrt(2 * n)


@pytest.mark.parametrize("a_p, a_d", [(20.0, 80.0), (60.0, 45.0), (300.0, 300.0)])
def test_fit_recovers_parameters_of_noise_free_curves(a_p, a_d):
    model = dataclasses.replace(MODEL, a_potentiation=a_p, a_depression=a_d)
    fit = memristor.fit_pulse_response(memristor.pulse_response(model, 128, up=True),
                                       memristor.pulse_response(model, 128, up=False))
    assert fit.a_potentiation == pytest.approx(a_p, rel=1e-6)
    assert fit.a_depression == pytest.approx(a_d, rel=1e-6)
    assert fit.g_min == pytest.approx(model.g_min, rel=1e-6)
    assert fit.g_max == pytest.approx(model.g_max, rel=1e-6)


def test_fit_recovers_parameters_of_noisy_simulated_curves():
    """Curves the model itself generates, pulse by pulse with cycle noise, averaged over 64
    devices as a measurement would be: every parameter within 5 % of the truth."""
    n = 64
    dev = _devices(n)
    curves = {}
    for up in (True, False):
        g = np.full(n, MODEL.g_min if up else MODEL.g_max)
        count = np.zeros(n, dtype=np.int64)
        rows = [g.mean()]
        for _ in range(MODEL.pulses_full):
            _pulse(g, np.full(n, 1 if up else -1), dev, sigma=MODEL.sigma_c2c, seed=11,
                   count=count)
            rows.append(g.mean())
        curves[up] = np.array(rows)
    fit = memristor.fit_pulse_response(curves[True], curves[False])
    for name in ("a_potentiation", "a_depression", "g_min", "g_max"):
        truth = getattr(MODEL, name)
        got = getattr(fit, name)
        assert abs(got / truth - 1) < 0.05, (name, got, truth, fit.stderr[name])
    assert fit.model().a_potentiation == fit.a_potentiation


def test_fit_rejects_bad_curves():
    with pytest.raises(ValueError):
        memristor.fit_pulse_response([1.0, 2.0], [3.0, 2.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        memristor.fit_pulse_response([1.0, np.nan, 2, 3], [3.0, 2.0, 1.0, 0.5])
