"""Tile periphery (DAC/ADC), deterministic matmul kernels, differential program-and-verify and
gradient-descent programming (GDP) on small tiles."""

import numba
import numpy as np
import pytest

from imcsim.physics import crossbar, pcm, rng
from imcsim.scenarios.programming import GDPPolicy, TileState, learning_rates, program_gdp

G_MAX = pcm.JOSHI_2020.g_max
PULSE = pcm.PulseModel()


# ----------------------------------------------------------------------------------------
# matmul kernels


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (64, 33, 17), (130, 256, 96)])
def test_matmul_kernels_match_numpy(shape):
    batch, rows, cols = shape
    gen = np.random.default_rng(1)
    x, w = gen.standard_normal((batch, rows)), gen.standard_normal((rows, cols))
    e = gen.standard_normal((batch, cols))
    out = np.empty((batch, cols))
    crossbar.matmul(x, w, out)
    assert np.allclose(out, x @ w, rtol=1e-12, atol=1e-12 * np.sqrt(rows))
    grad = np.empty((rows, cols))
    crossbar.matmul_tn(x, e, grad)
    assert np.allclose(grad, x.T @ e, rtol=1e-12, atol=1e-12 * np.sqrt(batch))


def test_matmul_independent_of_threads_and_batch_size(restore_threads):
    gen = np.random.default_rng(2)
    x, w = gen.standard_normal((37, 200)), gen.standard_normal((200, 50))
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        out = np.empty((37, 50))
        crossbar.matmul(x, w, out)
        results.append(out)
    assert np.array_equal(results[0], results[1])
    part = np.empty((5, 50))
    crossbar.matmul(x[3:8], w, part)  # another batch size and block alignment
    assert np.array_equal(part, results[0][3:8])


# ----------------------------------------------------------------------------------------
# Periphery


def test_dac_levels_and_saturation():
    p = crossbar.Periphery(dac_bits=4, input_range=2.0)
    x = np.linspace(-3.0, 3.0, 10001)
    q = crossbar.dac(x, p)
    assert np.unique(q).size == 2 * 7 + 1  # 2^(4−1) − 1 = 7 levels per sign and zero
    assert q.max() == 1.0 and q.min() == -1.0  # |x| > input_range saturates
    inside = np.abs(x) <= 2.0
    assert np.max(np.abs(q[inside] - x[inside] / 2.0)) <= 0.5 / 7 + 1e-15
    assert np.array_equal(crossbar.dac(x, crossbar.Periphery(dac_bits=0, input_range=2.0)),
                          np.clip(x / 2.0, -1, 1))


def test_adc_rounding_and_clipping():
    p = crossbar.Periphery(adc_bits=6, adc_full_scale=31e-6)  # LSB = 1 µA
    i = np.array([0.49e-6, 0.51e-6, -2.6e-6, 40e-6, -40e-6])
    assert np.allclose(crossbar.adc(i, p), [0.0, 1e-6, -3e-6, 31e-6, -31e-6], rtol=1e-12)


def test_tile_mvm_ideal_periphery_is_the_weight_product():
    gen = np.random.default_rng(3)
    w = gen.uniform(-1, 1, (40, 24))
    gp, gm = crossbar.weights_to_conductances(w, 1.0, G_MAX)
    x = gen.uniform(-1, 1, (10, 40))
    ideal = crossbar.Periphery(dac_bits=0, adc_bits=0)
    y = crossbar.tile_mvm(gp, gm, x, ideal, 1.0, G_MAX)
    assert np.allclose(y, x @ w, rtol=1e-12, atol=1e-13)


def test_tile_mvm_quantisation_error_is_bounded_by_half_an_lsb():
    gen = np.random.default_rng(4)
    w = gen.uniform(-1, 1, (64, 32))
    gp, gm = crossbar.weights_to_conductances(w, 1.0, G_MAX)
    x = gen.uniform(-1, 1, (50, 64))
    p = crossbar.Periphery(dac_bits=0, adc_bits=8, adc_full_scale=1e-3)  # no clipping
    y = crossbar.tile_mvm(gp, gm, x, p, 1.0, G_MAX)
    lsb_weight = p.adc_full_scale / 127 * p.input_range / p.v_read / G_MAX
    assert np.max(np.abs(y - x @ w)) <= 0.5 * lsb_weight * (1 + 1e-9)
    assert np.max(np.abs(y - x @ w)) > 0.3 * lsb_weight  # and it does quantise


# ----------------------------------------------------------------------------------------
# Differential program-and-verify


def _verify_pairs(w, *, read_noise=0.1e-6, resolution=0.0, tolerance=0.5e-6, max_pulses=40,
                  seed=5):
    gp, gm = crossbar.weights_to_conductances(w, 1.0, G_MAX)
    target = (gp - gm).ravel()
    n = target.size
    params = pcm.draw_device_params(seed, 2 * n, PULSE)
    g = np.empty(2 * n)
    pulses = np.zeros(2 * n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)
    pcm.program_verify_pairs(target, g, params.dg0, params.g_sat, params.g_reset, PULSE.dg0,
                             PULSE.g_sat, PULSE.sigma_c2c, PULSE.sigma_reset, tolerance,
                             max_pulses, read_noise, resolution, 0.7, 0.02, np.uint64(seed),
                             np.uint64(0), pulses, ok)
    return target, g, pulses, ok


def test_verify_pairs_noiseless_reads_end_within_tolerance():
    w = 2 * rng.uniforms(1, rng.STREAM_TARGET, (64, 64)) - 1
    target, g, pulses, ok = _verify_pairs(w, read_noise=0.0)
    n = target.size
    diff = g[:n] - g[n:]
    assert ok.mean() > 0.99
    assert np.all(np.abs(diff - target)[ok] <= 0.5e-6)
    assert pulses.min() >= 1 and pulses.max() <= 40
    # Overshoots are corrected on the partner: some pairs end with both devices SET.
    assert np.mean((g[:n] > 1e-6) & (g[n:] > 1e-6)) > 0.01


def test_verify_pairs_respects_budget_and_threads(restore_threads):
    w = 2 * rng.uniforms(2, rng.STREAM_TARGET, (32, 32)) - 1
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        results.append(_verify_pairs(w, max_pulses=3))
    (_, g1, p1, ok1), (_, g2, p2, ok2) = results
    assert np.array_equal(g1, g2) and np.array_equal(p1, p2) and np.array_equal(ok1, ok2)
    assert p1.max() <= 3
    assert ok1.mean() < 0.9  # three pulses are not enough for most pairs


def test_verify_pairs_beats_single_device_verify_at_equal_budget():
    w = 2 * rng.uniforms(3, rng.STREAM_TARGET, (64, 64)) - 1
    target, g, pulses, _ = _verify_pairs(w)
    n = target.size
    gp, gm = crossbar.weights_to_conductances(w, 1.0, G_MAX)
    params = pcm.draw_device_params(5, 2 * n, PULSE)
    g1 = np.empty(2 * n)
    p1 = np.zeros(2 * n, dtype=np.int64)
    ok1 = np.zeros(2 * n, dtype=np.bool_)
    pcm.program_verify(np.concatenate([gp.ravel(), gm.ravel()]), g1, params.dg0, params.g_sat,
                       params.g_reset, PULSE.dg0, PULSE.g_sat, PULSE.sigma_c2c,
                       PULSE.sigma_reset, 0.5e-6, 40, 0.1e-6, 0.0, 0.7, 0.02, np.uint64(5),
                       np.uint64(0), p1, ok1)
    rms_pairs = np.sqrt(np.mean((g[:n] - g[n:] - target) ** 2))
    rms_single = np.sqrt(np.mean((g1[:n] - g1[n:] - target) ** 2))
    assert rms_pairs < 0.5 * rms_single
    assert pulses.mean() <= p1.mean()


# ----------------------------------------------------------------------------------------
# GDP


def _gdp(w, policy, seed=7, adc_bits=8):
    rows, cols = w.shape
    n = rows * cols
    params = pcm.draw_device_params(seed, 2 * n, PULSE)
    state = TileState(np.empty(2 * n), np.zeros(2 * n), np.zeros(2 * n), np.zeros(2 * n),
                      params)
    pulses = np.zeros(2 * n, dtype=np.int64)
    periphery = crossbar.Periphery(adc_bits=adc_bits,
                                   adc_full_scale=1e-4 * np.sqrt(rows / 256))
    trace = program_gdp(state, w, pulse=PULSE, stat=pcm.JOSHI_2020, periphery=periphery,
                        weight_scale=1.0, policy=policy, seed=seed, counter0=100,
                        t_start=0.0, pulses_out=pulses)
    w_prog = crossbar.conductances_to_weights(state.g[:n], state.g[n:], 1.0, G_MAX)
    return state, trace, pulses, w_prog.reshape(rows, cols)


def test_learning_rate_schedule():
    rates = learning_rates(GDPPolicy(iterations=5, lr=1.0, lr_final=0.01))
    assert np.allclose(rates, [1.0, 10**-0.5, 0.1, 10**-1.5, 0.01])


def test_gdp_converges_on_a_small_tile():
    w = 2 * rng.uniforms(4, rng.STREAM_TARGET, (48, 32)) - 1
    _, trace, pulses, w_prog = _gdp(w, GDPPolicy(iterations=40, batch=256))
    # From all-RESET (output ≈ 0, error ≈ 100 %) to a few percent through an 8-bit ADC.
    assert trace.mvm_error[0] > 0.9
    assert trace.mvm_error[-1] < 0.08
    assert np.linalg.norm(w_prog - w) / np.linalg.norm(w) < 0.08
    assert pulses.max() <= 40 and np.all(np.diff(trace.pulses_mean) >= 0)


def test_gdp_stops_at_its_pulse_budget():
    w = 2 * rng.uniforms(5, rng.STREAM_TARGET, (32, 32)) - 1
    _, _, pulses, _ = _gdp(w, GDPPolicy(iterations=20, batch=128, max_pulses=4))
    assert pulses.max() == 4  # the RESET plus three SET pulses, then nothing


def test_gdp_same_seed_same_bytes_with_any_thread_count(restore_threads):
    w = 2 * rng.uniforms(6, rng.STREAM_TARGET, (24, 16)) - 1
    runs = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        state, trace, pulses, _ = _gdp(w, GDPPolicy(iterations=8, batch=64))
        runs.append((state.g.copy(), state.t_prog.copy(), trace.mvm_error.copy(), pulses))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------------
# Through the scenario engine

GDP_SCENARIO = """
[run]
seed = 3
[array]
rows = 32
cols = 24
[periphery]
dac_bits = 8
adc_bits = 8
adc_full_scale = 3.5e-5
[[timeline]]
kind = "program"
method = "{method}"
gdp = {{ iterations = 30, batch = 256 }}
verify = {{ differential = true }}
[[timeline]]
kind = "mvm"
times = [1.0, 1e5]
batch = 256
"""


@pytest.mark.parametrize("method", ["gdp", "verify"])
def test_programming_methods_run_through_the_engine(tmp_path, method):
    from imcsim.config import parse_scenario
    from imcsim.runner import run_scenario
    from imcsim.store import Trace

    out = run_scenario(parse_scenario(GDP_SCENARIO.format(method=method)), tmp_path / "p.h5")
    with Trace(out) as tr:
        assert tr.status == "complete"
        metrics = {k: v for k, (v, _) in tr.metrics().items()}
        assert metrics["weight_error_relative"] < 0.1
        assert metrics["mvm_error_first"] < 0.15
        pulses = tr.series("pulses").data[0]
        assert pulses.max() <= 40
        if method == "gdp":
            err = tr.series("gdp_mvm_error")
            assert err.t.size == 30 and np.all(np.diff(err.t) > 0)
            assert err.data[0] > 0.9 and err.data[-1] < 0.1
            # the last pulse of each device is when its drift starts
            t_prog = tr.series("t_programmed").data[0]
            assert t_prog.max() <= err.t[-1] and t_prog.min() >= 0.0
        else:
            assert "gdp_mvm_error" not in tr.series_names()


# ----------------------------------------------------------------------------------------
# IR drop in the tile MVM


def _ir_tile(rows=24, cols=16, seed=8):
    gen = np.random.default_rng(seed)
    w = gen.uniform(-1, 1, (rows, cols))
    gp, gm = crossbar.weights_to_conductances(w, 1.0, G_MAX)
    return w, gp + 0.1e-6, gm + 0.1e-6, gen.uniform(-1, 1, (6, rows))


def test_tile_mvm_ir_drop_relaxed_matches_exact_and_reduces_outputs():
    _, gp, gm, x = _ir_tile()
    ideal = crossbar.Periphery(dac_bits=8, adc_bits=0)
    wired = dict(dac_bits=8, adc_bits=0, r_wire_row=2.5, r_wire_col=2.5)
    y0 = crossbar.tile_mvm(gp, gm, x, ideal, 1.0, G_MAX)
    exact = crossbar.tile_mvm(gp, gm, x, crossbar.Periphery(**wired, ir_drop_solver="exact"),
                              1.0, G_MAX)
    relaxed = crossbar.tile_mvm(gp, gm, x, crossbar.Periphery(**wired), 1.0, G_MAX)
    # The relaxation stops when its a-priori bound, per bit line 1e-6·v_read·Σ_i g (A), is
    # met; for I⁺ − I⁻ in weight units (× input_range/(v_read·g_max)) that is:
    bound = 1e-6 * (gp + gm).sum(axis=0) / G_MAX
    assert np.all(np.abs(relaxed - exact) <= bound)
    assert 1e-3 < np.linalg.norm(exact - y0) / np.linalg.norm(y0) < 0.2
    assert np.array_equal(crossbar.tile_mvm(gp, gm, x, crossbar.Periphery(
        dac_bits=8, adc_bits=0, r_wire_row=0.0), 1.0, G_MAX), y0)


def test_pwm_time_slices_superpose_to_the_amplitude_current_under_ir_drop():
    """The network is linear: PWM's time slices (rows at ±v_read while |x_q|·Q ≥ k) integrate
    to the amplitude-encoded current, IR drop included."""
    from imcsim.physics import irdrop

    _, gp, gm, x = _ir_tile(rows=8, cols=5)
    p = crossbar.Periphery(dac_bits=3, adc_bits=0, encoding="pwm", r_wire_row=3.0,
                           r_wire_col=2.0, ir_drop_solver="exact")
    got = crossbar.column_currents(gp, gm, crossbar.dac(x, p), p)
    g_lines = np.empty((8, 10))
    g_lines[:, 0::2], g_lines[:, 1::2] = gp, gm
    solver = irdrop.ExactIRDropSolver(g_lines, 3.0, 2.0)
    codes = np.rint(crossbar.dac(x, p) * 3)
    slices = sum(solver.solve(0.2 * np.sign(codes) * (np.abs(codes) >= k))
                 for k in (1, 2, 3)) / 3
    assert np.allclose(got, slices[:, 0::2] - slices[:, 1::2], rtol=1e-10, atol=1e-18)
    ideal = crossbar.column_currents(gp, gm, crossbar.dac(x, p), crossbar.Periphery(
        dac_bits=3, adc_bits=0))
    assert np.linalg.norm(got - ideal) > 1e-3 * np.linalg.norm(ideal)  # and IR drop matters


@pytest.mark.parametrize("r_wire", [0.0, 300.0])
def test_differential_column_current_vjp_is_the_derivative(r_wire):
    """crossbar.column_currents_vjp on the interleaved G⁺/G⁻ lines: Σ_batch ∂L/∂G± and
    ∂L/∂x_q of L = Σ ḡ·(I⁺ − I⁻) against central differences of column_currents, without
    wires and at 300 Ω per segment (r·g·N² ≈ 0.2 on this 8 × 10-line array)."""
    _, gp, gm, x = _ir_tile(rows=8, cols=5)
    p = crossbar.Periphery(dac_bits=0, adc_bits=0, r_wire_row=r_wire, r_wire_col=r_wire,
                           ir_drop_solver="exact")
    weights = np.random.default_rng(9).standard_normal((6, 5))
    x_q = crossbar.dac(x, p)

    def loss(gp_, gm_, x_):
        return float(np.sum(weights * crossbar.column_currents(gp_, gm_, x_, p)))

    current, d_plus, d_minus, d_x = crossbar.column_currents_vjp(gp, gm, x_q, p, weights)
    np.testing.assert_allclose(current, crossbar.column_currents(gp, gm, x_q, p), rtol=1e-10)
    for grad, which in ((d_plus, 0), (d_minus, 1)):
        fd = np.empty_like(gp)
        for idx in np.ndindex(gp.shape):
            pair = [gp.copy(), gm.copy(), gp.copy(), gm.copy()]
            pair[which][idx] += 1e-11
            pair[2 + which][idx] -= 1e-11
            fd[idx] = (loss(pair[0], pair[1], x_q) - loss(pair[2], pair[3], x_q)) / 2e-11
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())
    fd_x = np.empty_like(x_q)
    for idx in np.ndindex(x_q.shape):
        up, down = x_q.copy(), x_q.copy()
        up[idx] += 1e-6
        down[idx] -= 1e-6
        fd_x[idx] = (loss(gp, gm, up) - loss(gp, gm, down)) / 2e-6
    np.testing.assert_allclose(d_x, fd_x, rtol=1e-6, atol=1e-8 * np.abs(fd_x).max())


def test_gdp_corrects_ir_drop_that_a_per_cell_verify_cannot_see():
    """GDP optimises the MVM the tile really computes, wire resistance included; a per-cell
    verify programs each cell exactly and leaves the IR-drop error in the product."""
    from imcsim.scenarios.programming import mvm_error

    rows = cols = 48
    w = 2 * rng.uniforms(9, rng.STREAM_TARGET, (rows, cols)) - 1
    periphery = crossbar.Periphery(adc_bits=8, adc_full_scale=1e-4 * np.sqrt(rows / 256),
                                   r_wire_row=2.5, r_wire_col=2.5)
    n = rows * cols
    params = pcm.draw_device_params(9, 2 * n, PULSE)
    errors = {}
    for method in ("gdp", "verify"):
        state = TileState(np.empty(2 * n), np.zeros(2 * n), np.zeros(2 * n), np.zeros(2 * n),
                          params)
        pulses = np.zeros(2 * n, dtype=np.int64)
        if method == "gdp":
            program_gdp(state, w, pulse=PULSE, stat=pcm.JOSHI_2020, periphery=periphery,
                        weight_scale=1.0, policy=GDPPolicy(iterations=40, batch=256), seed=9,
                        counter0=0, t_start=0.0, pulses_out=pulses)
        else:
            gp, gm = crossbar.weights_to_conductances(w, 1.0, G_MAX)
            ok = np.zeros(n, dtype=np.bool_)
            pcm.program_verify_pairs((gp - gm).ravel(), state.g, params.dg0, params.g_sat,
                                     params.g_reset, PULSE.dg0, PULSE.g_sat, PULSE.sigma_c2c,
                                     PULSE.sigma_reset, 0.5e-6, 40, 0.1e-6, 0.0, 0.7, 0.02,
                                     np.uint64(9), np.uint64(0), pulses, ok)
        errors[method] = mvm_error(state, w, 1.0, stat=pcm.JOSHI_2020, periphery=periphery,
                                   weight_scale=1.0, seed=9, counter=3, read_noise=False)
    assert errors["gdp"] < 0.7 * errors["verify"], errors


def test_verify_budget_curves_reproduce_the_full_run(tmp_path):
    """Budget k replays the first k pulses of every device of the full run, so the curve ends
    exactly at the programmed state; snapshots come every `snapshot_every` budgets."""
    from imcsim.config import parse_scenario
    from imcsim.runner import run_scenario
    from imcsim.store import Trace

    text = GDP_SCENARIO.format(method="verify").replace(
        "[periphery]", "[record]\nsubset = 16\nprogramming_curves = true\nsnapshot_every = 8\n"
        "[periphery]")
    out = run_scenario(parse_scenario(text), tmp_path / "v.h5")
    with Trace(out) as tr:
        err = tr.series("verify_mvm_error")
        pulses = tr.series("verify_pulses_mean").data
        snaps = tr.series("programming_snapshot")
        final = tr.series("g_programmed").data[0]
        assert err.t.size == 40 and snaps.t.size == 5
        assert np.array_equal(snaps.data[-1], final)  # budget 40 = the run itself
        assert pulses[-1] == tr.series("pulses").data[0].mean()
        assert err.data[0] > 0.9 and err.data[-1] < 0.15
        assert np.all(np.diff(pulses) >= 0)


def test_gdp_trace_does_not_depend_on_the_blas_thread_count(tmp_path, read_datasets):
    """Norms and products use numpy's own sums or the project's kernels, never BLAS threads,
    so the trace is the same whatever OPENBLAS_NUM_THREADS is."""
    from threadpoolctl import threadpool_limits

    from imcsim.config import parse_scenario
    from imcsim.runner import run_scenario

    # a batch large enough (1024 x 24 outputs) for OpenBLAS to split its reductions
    text = GDP_SCENARIO.format(method="gdp").replace("batch = 256 }", "batch = 1024 }")
    assert "batch = 1024 }" in text
    outs = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            outs.append(run_scenario(parse_scenario(text), tmp_path / f"b{threads}.h5"))
    assert read_datasets(outs[0]) == read_datasets(outs[1])
