"""PTO: the differentiable device model against the PCM kernels, the range gradients against
finite differences, and the optimiser's guarantee and effect."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from imcsim.physics import crossbar, pcm, rng
from imcsim.scenarios import inference, pto
from imcsim.scenarios.mixed_precision import lenet_layers, mlp_layers


def small_net(architecture: str, seed: int = 0):
    layers = mlp_layers([64, 12, 10]) if architecture == "mlp" else lenet_layers(8, 3, 10, 10)
    gen = np.random.default_rng(seed)
    weights = [gen.standard_normal(layer.shape) * np.sqrt(2.0 / layer.shape[0])
               for layer in layers]
    biases = [0.1 * gen.standard_normal(layer.shape[1]) for layer in layers]
    return SimpleNamespace(layers=layers, weights=weights, biases=biases)


@pytest.fixture(scope="module")
def batch():
    gen = np.random.default_rng(3)
    return gen.uniform(0, 1, (32, 64)), gen.integers(0, 10, 32)


def range_differences(value, tiles, h, stride):
    """Central differences of ``value(log_scales, log_ranges)`` in every ``stride``-th ln s
    of each tile and in each tile's ln r, in the order of :func:`range_gradient`."""
    log_s = [np.log(t.scale) for t in tiles]
    log_r = [np.log(t.input_range) for t in tiles]
    fd = []
    for i in range(len(tiles)):
        for j in range(0, log_s[i].size, stride):
            up = [v.copy() for v in log_s]
            down = [v.copy() for v in log_s]
            up[i][j] += h
            down[i][j] -= h
            fd.append((value(up, log_r) - value(down, log_r)) / (2 * h))
        up, down = list(log_r), list(log_r)
        up[i] += h
        down[i] -= h
        fd.append((value(log_s, up) - value(log_s, down)) / (2 * h))
    return np.array(fd)


def range_gradient(obj, stride):
    """The analytic ∂J/∂ln s (every ``stride``-th of each tile) and ∂J/∂ln r of ``obj``."""
    return np.concatenate([np.append(gs[::stride], gr)
                           for gs, gr in zip(obj.grad_log_scale, obj.grad_log_range)])


@pytest.mark.parametrize("t", [1.0, 3600.0, 86400.0, 3.1536e7])
@pytest.mark.parametrize("drift_time", ["clamped", "shifted"])
@pytest.mark.parametrize("preset", [pcm.JOSHI_2020, pcm.HERMES_2023], ids=lambda s: s.kind)
def test_device_model_is_the_kernels_with_the_same_draws(t, drift_time, preset):
    """With the normals of the kernels' streams and counters, PTO's numpy model reads the
    same conductances as program_statistical -> draw_drift_state -> read_drifted, for both
    presets (HERMES: Q_s from the programmed conductance; 1 s and 1 h lie before and after
    its t0 = 300 s). The targets cross every piece of the HERMES fits."""
    stat = dataclasses.replace(preset, drift_time=drift_time)
    seed, n = 123, 4000
    g_t = np.concatenate([np.zeros(100), np.linspace(0, 1, n - 100) ** 2]) * stat.g_max
    g_p, nu, q_s = np.empty(n), np.empty(n), np.empty(n)
    pcm.program_statistical(g_t, g_p, stat.g_max, np.asarray(stat.prog_coeff),
                            stat.prog_coeff_g_ref, 1.0, np.uint64(seed), np.uint64(0))
    g_for_qs = g_t if stat.kind == "joshi2020" else g_p
    pcm.draw_drift_state(g_t, g_for_qs, stat.g_max, stat.model_id, 1.0, np.uint64(seed),
                         np.uint64(0), nu, q_s)
    kernel = np.empty((1, n))
    pcm.read_drifted(g_p, np.zeros(n), nu, q_s, np.array([t]), np.array([9], dtype=np.uint64),
                     stat.t0, stat.t_read, stat.shifted, 1.0, np.uint64(seed), kernel)
    g, _ = pto.device_read(g_t, rng.normals(seed, rng.STREAM_PROG, (n,), 0),
                           rng.normals(seed, rng.STREAM_NU, (n,), 0),
                           rng.normals(seed, rng.STREAM_READ, (n,), 9), t, stat)
    np.testing.assert_allclose(g, kernel[0], rtol=1e-12, atol=1e-12 * stat.g_max)


@pytest.mark.parametrize("t", [86400.0, 3.1536e7])
@pytest.mark.parametrize("preset", [pcm.JOSHI_2020, pcm.HERMES_2023], ids=lambda s: s.kind)
def test_device_derivative_matches_finite_differences(preset, t):
    """∂g/∂g_T against central differences (step 1e-7·g_max; no kink within a step of the
    points at this seed). Targets from 0.002·g_max, where the HERMES log fits are live, to
    g_max, through every piece of its μ_ν, σ_ν and Q_s fits."""
    stat = preset
    gen = np.random.default_rng(4)
    g_t = gen.uniform(0.002, 1.0, 400) * stat.g_max
    xi = gen.standard_normal((3, 400))
    h = 1e-7 * stat.g_max

    def read(g):
        return pto.device_read(g, *xi, t, stat)

    fd = (read(g_t + h)[0] - read(g_t - h)[0]) / (2 * h)
    np.testing.assert_allclose(read(g_t)[1], fd, rtol=1e-5, atol=1e-7)
    assert np.ptp(read(g_t)[1]) > 0.1  # not a constant: programming noise varies with g_T


@pytest.mark.parametrize("t", [86400.0, 3.1536e7])
def test_hermes_fit_derivatives_match_finite_differences_on_every_piece(t):
    """The HERMES pieces one at a time, noise-free except one source, so a wrong slope of a
    single fit cannot hide behind the others: drift exponent (μ_ν with ξ_ν = 0, σ_ν with
    ξ_ν = 2) on both sides of g_r = 0.0945 and 0.3055, and Q_s (programming noise off, read
    noise on) on both sides of g_r = 0.16."""
    stat = pcm.HERMES_2023
    g_r = np.array([0.01, 0.05, 0.09, 0.1, 0.2, 0.3, 0.31, 0.6, 0.95])
    g_t = g_r * stat.g_max
    h = 1e-7 * stat.g_max
    zeros = np.zeros_like(g_t)
    quiet = dataclasses.replace(stat, prog_noise_scale=0.0)
    for xi_nu, xi_read in ((0.0, 0.0), (2.0, 0.0), (0.0, 1.5)):
        xi = (zeros, zeros + xi_nu, zeros + xi_read)

        def read(g, xi=xi):
            return pto.device_read(g, *xi, t, quiet)

        fd = (read(g_t + h)[0] - read(g_t - h)[0]) / (2 * h)
        np.testing.assert_allclose(read(g_t)[1], fd, rtol=1e-6)
        # the derivative differs from the drift-free slope g/g_T: the fits are at work
        assert np.max(np.abs(read(g_t)[1] - read(g_t)[0] / g_t)) > 1e-3


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["fixed", "afp"])
@pytest.mark.parametrize("loss", pto.LOSSES)
def test_range_gradients_match_finite_differences(architecture, kind, loss, batch):
    """∂J/∂ln s and ∂J/∂ln r of the objective with the device draws and the drift
    compensation held fixed, unquantised periphery (where the straight-through estimator is
    the derivative), ranges moved off the max-abs values so no weight sits on a clip edge.
    Layers are cut into several tiles; the CNN's gradient crosses pooling and ReLU."""
    x, y = batch
    net = small_net(architecture)
    hw = inference.Hardware(periphery=crossbar.Periphery(dac_bits=0, adc_bits=0,
                                                         adc_full_scale=2 * 0.2 * 25e-6),
                            tile_rows=40, tile_cols=8)
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, kind)
    tiles = inference.with_ranges(tiles, [t.scale * 0.83 for t in tiles],
                                  [t.input_range * 0.71 for t in tiles])
    draws = pto.draw_tiles(tiles, 5, 1)
    target = inference.layer_forward(net, x) if loss == "logit_mse" else None
    obj = pto.objective(net, tiles, hw, x, y, rows, draws, 86400.0, target_logits=target)

    def value(ls, lr):
        return pto.objective(net, tiles, hw, x, y, rows, draws, 86400.0,
                             [np.exp(v) for v in ls], [float(np.exp(v)) for v in lr],
                             alphas=obj.alphas, grad=False, target_logits=target).loss

    fd = range_differences(value, tiles, 1e-6, 3)
    analytic = range_gradient(obj, 3)
    scale = np.max(np.abs(fd))
    assert scale > 0
    np.testing.assert_allclose(analytic, fd, rtol=1e-4, atol=1e-6 * scale)


def test_pto_never_ends_worse_and_fixes_a_bad_dac_range(batch):
    """Started from DAC ranges 8x too wide (most of the 8-bit DAC's levels unused), PTO
    lowers the objective on its fixed evaluation draws and narrows the ranges; the returned
    ranges never score worse than the start."""
    x, y = batch
    net = small_net("mlp", 1)
    hw = inference.Hardware()
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    wide = inference.with_ranges(tiles, [t.scale for t in tiles],
                                 [8 * t.input_range for t in tiles])
    settings = pto.PTOSettings(iterations=40, lr=0.05, draws_per_step=1, eval_draws=2,
                               holdout_draws=0, check_every=10)
    result = pto.optimise(net, wide, hw, x, y, rows, settings, seed=99)
    assert result.loss_best <= result.loss_start
    assert result.loss_best < 0.9 * result.loss_start
    assert all(a.input_range < b.input_range for a, b in zip(result.tiles, wide))
    # already-good ranges with a zero learning rate: returns the start exactly
    still = pto.optimise(net, tiles, hw, x, y, rows,
                         dataclasses.replace(settings, iterations=4, lr=1e-300), seed=99)
    assert still.loss_best == still.loss_start


@pytest.mark.parametrize("parameters", ["columns", "dac"])
def test_ablations_move_only_their_parameters(parameters, batch):
    x, y = batch
    net = small_net("mlp", 2)
    hw = inference.Hardware()
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    settings = pto.PTOSettings(iterations=6, lr=0.1, eval_draws=1, holdout_draws=0,
                               check_every=2, parameters=parameters)
    result = pto.optimise(net, tiles, hw, x, y, rows, settings, seed=4)
    scales_moved = any(not np.array_equal(a.scale, b.scale)
                       for a, b in zip(result.tiles, tiles))
    ranges_moved = any(a.input_range != b.input_range for a, b in zip(result.tiles, tiles))
    assert result.loss_best < result.loss_start  # the checkpoints did move
    assert (scales_moved, ranges_moved) == ((True, False) if parameters == "columns"
                                            else (False, True))


def test_bad_settings_are_rejected(batch):
    x, y = batch
    net = small_net("mlp")
    hw = inference.Hardware()
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    with pytest.raises(ValueError, match="loss"):
        pto.optimise(net, tiles, hw, x, y, rows, pto.PTOSettings(loss="mae"), seed=1)
    with pytest.raises(ValueError, match="parameters"):
        pto.optimise(net, tiles, hw, x, y, rows, pto.PTOSettings(parameters="all"), seed=1)
    with pytest.raises(ValueError, match="schedule"):
        pto.optimise(net, tiles, hw, x, y, rows, pto.PTOSettings(schedule="step"), seed=1)
    with pytest.raises(ValueError, match="hermes2023"):
        pto.device_read(np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3), 1.0,
                        dataclasses.replace(pcm.JOSHI_2020, kind="yet_another_pcm"))


@pytest.mark.parametrize("common_mode", [(), (6e-6, -4e-6)], ids=["pairs", "common_mode"])
@pytest.mark.parametrize("r_wire", [0.0, 4.0])
@pytest.mark.parametrize("preset", [pcm.JOSHI_2020, pcm.HERMES_2023], ids=lambda s: s.kind)
def test_tile_model_with_the_chips_draws_is_the_harness(preset, r_wire, common_mode):
    """With the normals of a programmed chip (pto.chip_draws at the harness's read counters)
    the tile model's cross-entropy equals that of the harness's logits (scenarios.inference
    evaluate path: DAC/ADC through crossbar.tile_mvm, global drift compensation against the
    reference read at t_calibrate): PTO optimises the objective the chips are scored on, on
    either device preset, with wire resistance on the same resistive array, and with a
    common-mode conductance C(|u|) on both devices of every pair."""
    net = small_net("cnn", 5)
    gen = np.random.default_rng(8)
    x, y = gen.uniform(0, 1, (48, 64)), gen.integers(0, 10, 48)
    periphery = crossbar.Periphery(dac_bits=8, adc_bits=8, adc_full_scale=50e-6,
                                   r_wire_row=r_wire, r_wire_col=r_wire,
                                   ir_drop_solver="exact")
    hw = inference.Hardware(stat=preset, periphery=periphery, tile_rows=40, tile_cols=8,
                            common_mode=common_mode)
    rows = inference.layer_rows(net, x[:16])
    tiles = inference.map_network(net, hw, rows, "fixed")
    t, device_seed, counter = 86400.0, 7, inference._READ_COUNTER0 + 3
    chips = inference.deploy(tiles, hw, device_seed, rows)
    hook = inference.chip_hook(chips, hw, t, counter, rows)
    logits = inference.layer_forward(net, x, hook)
    z = logits - logits.max(axis=1, keepdims=True)
    harness = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(y.size), y]))
    draws = pto.chip_draws(tiles, device_seed, inference._READ_COUNTER0, counter)
    model = pto.objective(net, tiles, hw, x, y, rows, draws, t, grad=False)
    np.testing.assert_allclose(model.alphas, hook.alphas, rtol=1e-12)
    assert model.loss == pytest.approx(harness, rel=1e-10)
    assert abs(np.mean(model.alphas) - 1.0) > 0.05  # drift compensation is at work at 1 day


def test_mse_clip_scales_minimise_the_closed_form_weight_error():
    """The scanned optimum against the closed-form σ_g (robust_training.conductance_sigma,
    not the table weight_sigma interpolates) on a finer grid around it; without device noise
    no clipping pays (s = max|w|); with it, heavy-tailed columns clip and the error falls."""
    from imcsim.scenarios import robust_training as rt

    gen = np.random.default_rng(2)
    w = gen.standard_t(3, (200, 6)) * 0.1
    hw = inference.Hardware(tile_rows=256, tile_cols=256)
    tile = inference.map_network(SimpleNamespace(weights=[w]), hw, [np.ones((1, 200))])[0]
    noise = rt.NoiseModel(device=pcm.JOSHI_2020, t_inference=86400.0)
    scales, at_max, at_best = pto.mse_clip_scales(tile, noise)
    s0 = np.max(np.abs(w), axis=0)
    g_max = noise.device.g_max

    def exact(j, s):
        col = w[:, j]
        sigma = s * rt.conductance_sigma(np.minimum(np.abs(col) / s, 1.0) * g_max, noise) / g_max
        return float(np.sum((np.clip(col, -s, s) - col) ** 2 + sigma ** 2))

    for j in range(w.shape[1]):
        assert at_best[j] == pytest.approx(exact(j, scales[j]), rel=1e-3)
        assert at_max[j] == pytest.approx(exact(j, s0[j]), rel=1e-3)
        finer = min(exact(j, f * scales[j]) for f in np.linspace(0.98, 1.02, 21))
        assert at_best[j] <= finer * (1 + 2e-3)
    # the device noise is mostly proportional to |w|: clipping buys ~10 %, not more
    assert np.all(scales < s0) and 0.8 * np.sum(at_max) < np.sum(at_best) < 0.95 * np.sum(at_max)
    quiet = dataclasses.replace(noise, scale=0.0)
    np.testing.assert_allclose(pto.mse_clip_scales(tile, quiet)[0], s0, rtol=1e-12)


def test_holdout_estimates_the_gain_without_selection():
    """With a zero step the returned ranges are the start, so the hold-out difference is
    exactly 0; with steps, checkpoints carry the paired standard error of J − J(start)."""
    x, y = np.random.default_rng(3).uniform(0, 1, (32, 64)), np.arange(32) % 10
    net = small_net("mlp", 1)
    hw = inference.Hardware()
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    settings = pto.PTOSettings(iterations=4, lr=1e-300, draws_per_step=2, eval_draws=6,
                               holdout_draws=5, check_every=2)
    still = pto.optimise(net, tiles, hw, x, y, rows, settings, seed=3)
    assert still.holdout_best == still.holdout_start and still.holdout_sem == 0.0
    assert still.start_spread > 0
    moved = pto.optimise(net, tiles, hw, x, y, rows, dataclasses.replace(settings, lr=0.1),
                         seed=3)
    assert [c[0] for c in moved.checkpoints] == [0, 2, 4]
    assert all(c[3] > 0 for c in moved.checkpoints[1:])
    assert np.isfinite(moved.holdout_best) and moved.holdout_sem > 0


def _wired(hw, r_wire, solver="exact"):
    return dataclasses.replace(hw, periphery=dataclasses.replace(
        hw.periphery, r_wire_row=r_wire, r_wire_col=r_wire, ir_drop_solver=solver))


@pytest.mark.parametrize("solver", ["exact", "relaxed"])
def test_wire_aware_gradients_match_finite_differences_of_the_resistive_objective(batch, solver):
    """With wires the tile model's forward is the resistive array's and its gradient the
    adjoint's. As r → 0 both become the ideal model's. At 16 Ω per cell, where the wires
    move the loss by more than 0.1 %, ∂J/∂ln s and ∂J/∂ln r match central differences of
    the resistive objective (rel 1e-4), with either solver; the wire-blind gradient does not.
    """
    x, y = batch
    net = small_net("mlp")
    hw = inference.Hardware(periphery=crossbar.Periphery(dac_bits=0, adc_bits=0,
                                                         adc_full_scale=2 * 0.2 * 25e-6),
                            tile_rows=64, tile_cols=12)
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    tiles = inference.with_ranges(tiles, [t.scale * 0.83 for t in tiles],
                                  [t.input_range * 0.71 for t in tiles])
    draws = pto.draw_tiles(tiles, 5, 1)
    ideal = pto.objective(net, tiles, hw, x, y, rows, draws, 86400.0)
    tiny = pto.objective(net, tiles, _wired(hw, 1e-9, solver), x, y, rows, draws, 86400.0)
    assert tiny.loss == pytest.approx(ideal.loss, rel=1e-6)
    for a, b in zip([*tiny.grad_log_scale, np.array(tiny.grad_log_range)],
                    [*ideal.grad_log_scale, np.array(ideal.grad_log_range)]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    wired = _wired(hw, 16.0, solver)
    obj = pto.objective(net, tiles, wired, x, y, rows, draws, 86400.0)
    assert obj.loss != pytest.approx(ideal.loss, rel=1e-3)  # the wires matter here

    def value(ls, lr):
        return pto.objective(net, tiles, wired, x, y, rows, draws, 86400.0,
                             [np.exp(v) for v in ls], [float(np.exp(v)) for v in lr],
                             alphas=obj.alphas, grad=False).loss

    fd = range_differences(value, tiles, 1e-5, 2)
    adjoint, blind = range_gradient(obj, 2), range_gradient(ideal, 2)
    scale = np.max(np.abs(fd))
    np.testing.assert_allclose(adjoint, fd, rtol=1e-4, atol=1e-6 * scale)
    assert np.max(np.abs(blind - fd)) > 1e-2 * scale


@pytest.mark.parametrize("r_wire", [0.0, 16.0])
def test_range_gradients_with_a_common_mode_match_finite_differences(batch, r_wire):
    """With a common mode C(|u|) = 8 − 6|u| µS on both devices of every pair, a column scale
    moves both targets of each of its pairs (through C) and the gradient must follow both,
    on an ideal array and through the wires' adjoint: ∂J/∂ln s and ∂J/∂ln r against central
    differences (rel 1e-4; dropping dC/d|u| from the gradient fails this)."""
    x, y = batch
    net = small_net("mlp")
    periphery = crossbar.Periphery(dac_bits=0, adc_bits=0, adc_full_scale=2 * 0.2 * 25e-6,
                                   r_wire_row=r_wire, r_wire_col=r_wire, ir_drop_solver="exact")
    hw = inference.Hardware(periphery=periphery, tile_rows=64, tile_cols=12,
                            common_mode=(8e-6, -6e-6))
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    tiles = inference.with_ranges(tiles, [t.scale * 0.83 for t in tiles],
                                  [t.input_range * 0.71 for t in tiles])
    draws = pto.draw_tiles(tiles, 5, 1)
    obj = pto.objective(net, tiles, hw, x, y, rows, draws, 86400.0)
    def value(ls, lr):
        return pto.objective(net, tiles, hw, x, y, rows, draws, 86400.0,
                             [np.exp(v) for v in ls], [float(np.exp(v)) for v in lr],
                             alphas=obj.alphas, grad=False).loss

    fd, analytic = range_differences(value, tiles, 1e-5, 2), range_gradient(obj, 2)
    scale = np.max(np.abs(fd))
    np.testing.assert_allclose(analytic, fd, rtol=1e-4, atol=1e-6 * scale)


def test_pto_ignores_the_wires_unless_told(batch):
    """settings.wires = False (the default) optimises for an ideal array whatever the chip:
    the result on a resistive chip is the result without wires, byte for byte; with
    wires = True it differs."""
    x, y = batch
    net = small_net("mlp")
    hw = inference.Hardware(tile_rows=64, tile_cols=12)
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    settings = pto.PTOSettings(iterations=4, check_every=2, eval_draws=2, holdout_draws=0,
                               draws_per_step=1)
    runs = [pto.optimise(net, tiles, h, x, y, rows, st, 3) for h, st in (
        (hw, settings), (_wired(hw, 16.0), settings),
        (_wired(hw, 16.0), dataclasses.replace(settings, wires=True)))]
    same = [np.concatenate([t.scale for t in r.tiles] + [[t.input_range for t in r.tiles]])
            for r in runs]
    assert np.array_equal(same[0], same[1]) and runs[0].loss_history == runs[1].loss_history
    assert runs[2].loss_history != runs[0].loss_history
