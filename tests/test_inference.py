"""Inference harness: networks on PCM tiles, the fixed-point, two-pair and AFP mappings, drift
compensation, the study run, its table and figure, and its determinism."""

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.config import parse_scenario
from imcsim.errors import InputError
from imcsim.physics import crossbar, pcm
from imcsim.runner import run_scenario
from imcsim.scenarios import inference
from imcsim.scenarios.mixed_precision import lenet_layers, mlp_layers
from imcsim.store import Trace

NOISELESS = pcm.StatisticalModel(prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.0)
IDEAL = crossbar.Periphery(dac_bits=0, adc_bits=0, adc_full_scale=1.0)


def random_net(architecture: str, seed: int = 0):
    """He-initialised weights and random biases: exactness tests need no training."""
    layers = (mlp_layers([64, 24, 10]) if architecture == "mlp"
              else lenet_layers(8, 4, 16, 10))
    gen = np.random.default_rng(seed)
    weights = [gen.standard_normal(layer.shape) * np.sqrt(2.0 / layer.shape[0])
               for layer in layers]
    biases = [0.1 * gen.standard_normal(layer.shape[1]) for layer in layers]
    return SimpleNamespace(layers=layers, weights=weights, biases=biases,
                           architecture=architecture)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0.0, 1.0, (40, 64))


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", (*inference.MAPPINGS, "fixed_tile_scale"))
def test_noise_free_unquantised_tiles_reproduce_the_float_network(architecture, kind, images):
    """No device noise, ideal DAC/ADC, small tiles (layers split over several): the analog
    forward pass equals the float one to rounding, for every mapping and for one weight
    scale per tile (sgd_maxabs_tile)."""
    net = random_net(architecture)
    hw = inference.Hardware(stat=NOISELESS, periphery=IDEAL, tile_rows=20, tile_cols=8)
    rows = inference.layer_rows(net, images)
    tiles = inference.map_network(net, hw, rows, kind.replace("_tile_scale", ""))
    if kind == "fixed_tile_scale":
        tiles = inference.with_ranges(tiles, inference.tile_wide_scales(tiles),
                                      [t.input_range for t in tiles])
        for t in tiles:
            block = net.weights[t.layer][t.row0:t.row0 + t.rows, t.col0:t.col0 + t.n_cols]
            assert np.all(t.scale == np.max(np.abs(block)))
    assert len(tiles) > len(net.weights)
    chips = inference.deploy(tiles, hw, 3, rows)
    for t in (1.0, 3.1536e7):
        logits = inference.layer_forward(net, images, inference.chip_hook(chips, hw, t, 5, rows))
        np.testing.assert_allclose(logits, inference.layer_forward(net, images),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", inference.MAPPINGS)
def test_mappings_reproduce_the_float_mvm_and_afp_splits_by_magnitude(kind):
    gen = np.random.default_rng(2)
    w = gen.standard_normal((30, 6)) * np.exp(gen.uniform(-3, 0, (30, 6)))  # wide magnitudes
    net = SimpleNamespace(layers=mlp_layers([30, 6]), weights=[w], biases=[np.zeros(6)])
    x = gen.uniform(-1, 1, (12, 30))
    hw = inference.Hardware(stat=NOISELESS, periphery=IDEAL)
    tile, = inference.map_network(net, hw, [x], kind, gain=4.0)
    chip, = inference.program([tile], NOISELESS, 5)
    gp, gm = inference.read(chip, NOISELESS, 10.0, 1)
    np.testing.assert_allclose(inference.tile_output(tile, gp, gm, x, hw), x @ w, rtol=1e-12,
                               atol=1e-13)
    u = tile.targets()
    assert np.all(np.abs(u) <= 1.0)
    if kind == "afp":
        small = np.abs(w) < np.max(np.abs(w), axis=0) / 4.0
        assert 0 < small.sum() < w.size
        # small weights sit in the gain-4 column at 4x the conductance a fixed mapping gives
        np.testing.assert_allclose(u[:, 6:][small], 4.0 * (w / np.max(np.abs(w), axis=0))[small])
        assert np.all(u[:, :6][small] == 0) and np.all(u[:, 6:][~small] == 0)
        np.testing.assert_allclose(inference.afp_weight_scale(w, 4.0)[small],
                                   np.broadcast_to(np.max(np.abs(w), axis=0) / 4, w.shape)[small])


def test_drift_compensation_restores_the_output_scale():
    """Drift only (no programming or read noise): after a year the raw outputs have shrunk by
    the mean drift factor ≈ (t/t0)^(−ν̄); the global compensation removes that shrinkage, and
    what is left is the spread of ν between devices, far below it."""
    stat = pcm.StatisticalModel(prog_noise_scale=0.0, read_noise_scale=0.0)
    net = random_net("mlp", 4)
    x = np.random.default_rng(5).uniform(0, 1, (200, 64))
    hw = inference.Hardware(stat=stat, periphery=IDEAL)
    rows = inference.layer_rows(net, x)
    tiles = inference.map_network(net, hw, rows, "fixed")
    chips = inference.program(tiles, stat, 7)
    inference.calibrate(chips, hw, rows)
    t = 3.1536e7
    ideal = rows[0] @ net.weights[0]
    raw = inference.chip_hook(chips, hw, t, 3, None)(0, rows[0], net.weights[0])
    compensated = inference.chip_hook(chips, hw, t, 3, rows)(0, rows[0], net.weights[0])
    shrink = np.mean(np.abs(raw)) / np.mean(np.abs(ideal))
    nu = chips[0].nu[chips[0].g_target > 0]
    expected = np.mean((t / stat.t0) ** -nu)  # conductance-weighted means differ by ~ν spread
    assert shrink == pytest.approx(expected, rel=0.1)
    assert shrink < 0.6
    err_raw = np.linalg.norm(raw - ideal) / np.linalg.norm(ideal)
    err_gdc = np.linalg.norm(compensated - ideal) / np.linalg.norm(ideal)
    assert np.mean(np.abs(compensated)) == pytest.approx(np.mean(np.abs(ideal)), rel=0.02)
    assert err_gdc < 0.25 * err_raw


def test_two_pairs_per_weight_halve_the_noise_variance():
    """fixed2 averages two independently programmed pairs: the weight error falls by √2
    (within the sampling error of ~5,000 weights)."""
    stat = pcm.StatisticalModel(drift_scale=0.0, read_noise_scale=0.0)
    net = random_net("mlp", 6)
    x = np.random.default_rng(7).uniform(0, 1, (50, 64))
    hw = inference.Hardware(stat=stat, periphery=IDEAL)
    rows = inference.layer_rows(net, x)
    errors = {}
    for kind in ("fixed", "fixed2"):
        tiles = inference.map_network(net, hw, rows, kind)
        chips = inference.program(tiles, stat, 11)
        reads = [inference.read(c, stat, 1.0, 1) for c in chips]
        errors[kind] = inference.weight_error(net, chips, reads, [1.0] * len(chips), stat.g_max)
    assert errors["fixed"] / errors["fixed2"] == pytest.approx(np.sqrt(2.0), rel=0.05)


def test_percentile_range_is_below_maxabs_and_never_zero():
    rows = np.concatenate([np.zeros(990), np.linspace(0, 1, 10)])[:, None]
    assert inference.input_range_percentile(rows, 99.9) < inference.input_range_maxabs(rows)
    assert inference.input_range_percentile(np.zeros((5, 1)), 50.0) == 1.0


# ----------------------------------------------------------------------------------------
# The study


TINY = """
[run]
name = "tiny_inference"
seed = 3
[periphery]
dac_bits = 8
adc_bits = 8
adc_full_scale = 50e-6
[inference]
architectures = ["mlp", "cnn"]
hidden = [8]
channels = 2
epochs = 2
device_seeds = [1, 2]
times = [1.0, 86400.0]
calibration_images = 64
pto = { iterations = 3, check_every = 2, eval_draws = 2, holdout_draws = 2, draws_per_step = 1 }
"""


@pytest.fixture(scope="module")
def tiny_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("inference") / "tiny.h5"
    return run_scenario(parse_scenario(TINY), out)


def test_study_writes_every_method_with_units_and_needs(tiny_trace):
    from imcsim.analysis.inference import accuracy_table

    with Trace(tiny_trace) as tr:
        assert tr.status == "complete"
        rows = accuracy_table(tr)
        s = tr.series("accuracy_cnn_pto_sgd")
        assert s.units == "1" and s.data.shape == (2, 2) and list(s.t) == [1.0, 86400.0]
        ranges = tr.series("pto_mlp_pto_sgd_input_range").data
        assert ranges.shape == (2, 2) and np.all(ranges > 0)
        metrics = tr.metrics()
        assert metrics["pto_mlp_pto_sgd_objective_best"][0] <= (
            metrics["pto_mlp_pto_sgd_objective_start"][0])
    assert len(rows) == 2 * len(inference.NEEDS)
    assert all(r["needs"] and np.all((r["mean"] >= 0) & (r["mean"] <= 1)) for r in rows)


def test_two_stage_bootstrap_keeps_the_scatter_between_trained_networks():
    """Five training seeds × 20 chips whose remedy gain differs by network (s.d. 0.4 points
    against a mean of 0.8): an interval that resamples chips as if independent covers the
    true 40 % in about a third of 200 simulated studies; the two-stage bootstrap (networks,
    then chips) in about 85 % (a percentile bootstrap over only five groups runs somewhat
    below its nominal 95 %). Bounds 0.75 and 0.6 sit ≥ 4 binomial s.d. from both."""
    gen = np.random.default_rng(5)
    groups = np.repeat(np.arange(5), 20)
    one_stage = two_stage = 0
    for study in range(200):
        network = np.repeat(gen.normal(0.0, 0.004, 5), 20)
        base = 0.96 + gen.normal(0.0, 0.005, 100)
        remedy = base + 0.008 + network + gen.normal(0.0, 0.002, 100)
        low, high = inference.recovery_interval([0.98] * 100, base, remedy, resamples=2000,
                                                seed=study)
        one_stage += low <= 0.4 <= high
        low, high = inference.recovery_interval([0.98] * 100, base, remedy, resamples=2000,
                                                seed=study, groups=groups)
        two_stage += low <= 0.4 <= high
    assert two_stage / 200 >= 0.75 and one_stage / 200 <= 0.6


def test_study_over_training_seeds_is_pooled_by_info(tmp_path):
    """Two runs that retrain from seeds 0 and 1 on the split of split_seed: the same test set,
    different networks; `imcsim info` on the file prints the tables pooled over both."""
    text = (TINY.replace("[inference]\n", "[inference]\nsplit_seed = 0\n"
                         'methods = ["float", "sgd_maxabs", "hasgd"]\n')
            + "\n".join(f'[[variant]]\nname = "seed{k}"\n"inference.train_seed" = {k}\n'
                        for k in (0, 1))
            + '[[variant]]\nname = "other_dac"\n"inference.train_seed" = 2\n'
              '"periphery.dac_bits" = 6\n')
    out = run_scenario(parse_scenario(text), tmp_path / "seeds.h5")
    from imcsim.analysis.inference import pooled_summary_lines

    # only runs that differ in nothing but the training seed are pooled
    assert pooled_summary_lines(out, ["seed0", "seed1", "other_dac"]) == []
    assert pooled_summary_lines(out, ["seed0"]) == []
    assert pooled_summary_lines(out, ["seed0", "seed1"])
    weights = []
    for name in ("seed0", "seed1"):
        with Trace(out, run=name) as tr:
            weights.append(tr.series("trained_mlp_sgd_w0").data[-1])
            assert tr.metrics()["float_accuracy_mlp"][0] > 0.1
    assert not np.array_equal(*weights)
    for k in (0, 1):
        run = inference.InferenceRun(parse_scenario(text.replace(
            "split_seed = 0", f"split_seed = 0\ntrain_seed = {k}").split("[[variant]]")[0]), 0)
        weights.append(run.data.x_test)
    assert np.array_equal(weights[2], weights[3])  # one test set for every training seed
    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "pooled" not in result.output  # the three runs differ in more than the seed
    assert "float_accuracy_mlp" in result.output  # full metric names, one line each
    out = run_scenario(parse_scenario(text.split('[[variant]]\nname = "other_dac"')[0]),
                       tmp_path / "two_seeds.h5")  # the same study without the DAC variant
    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "pooled over 2 runs (training seeds [0, 1])" in result.output
    assert "4 chips" in result.output and "two-stage" in result.output
    png = tmp_path / "pooled.png"
    result = CliRunner().invoke(main, ["plot", str(out), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000


def test_info_compares_two_runs_chip_by_chip(tmp_path):
    """`imcsim info FILE --compare A B`: B − A per method and time, device seed by device
    seed. Two variants that differ only in the DAC bits share their networks and devices,
    so float is identical in both and the SGD row's difference is the DAC's alone; runs with
    other device seeds cannot be paired."""
    text = (TINY.replace("[inference]\n", '[inference]\narchitectures = ["mlp"]\n'
                         'methods = ["float", "sgd_maxabs"]\n')
            .replace('architectures = ["mlp", "cnn"]\n', "")
            + '[[variant]]\nname = "dac8"\n'
            + '[[variant]]\nname = "dac4"\n"periphery.dac_bits" = 4\n'
            + '[[variant]]\nname = "seeds"\n"inference.device_seeds" = [3, 4]\n')
    out = run_scenario(parse_scenario(text), tmp_path / "variants.h5")
    result = CliRunner().invoke(main, ["info", str(out), "--compare", "dac8", "dac4"])
    assert result.exit_code == 0, result.output
    assert "dac4 − dac8" in result.output and "identical in both runs, chip by chip: float" \
        in result.output
    with Trace(out, run="dac8") as a, Trace(out, run="dac4") as b:
        diff = 100 * (b.series("accuracy_mlp_sgd_maxabs").data
                      - a.series("accuracy_mlp_sgd_maxabs").data)
    row = next(line for line in result.output.splitlines() if "sgd_maxabs" in line)
    assert row.split()[1] == f"{diff[0].mean():+.2f}"
    result = CliRunner().invoke(main, ["info", str(out), "--compare", "dac8", "seeds"])
    assert result.exit_code == 2 and "device seeds" in result.output
    result = CliRunner().invoke(main, ["info", str(out), "--compare", "dac8", "absent"])
    assert result.exit_code == 2 and "absent" in result.output


def test_bootstrap_picks_draw_whole_groups_then_chips_within_them():
    groups = np.repeat([7, 3, 9], 4)
    picks = inference.bootstrap_picks(12, groups, resamples=500, seed=1)
    assert picks.shape == (500, 12)
    blocks = groups[picks].reshape(500, 3, 4)
    assert np.all(blocks == blocks[:, :, :1])  # each block of 4 from one group
    assert np.array_equal(picks, inference.bootstrap_picks(12, groups, resamples=500, seed=1))
    assert set(np.unique(blocks[:, :, 0])) == {3, 7, 9}
    with pytest.raises(ValueError, match="equal sizes"):
        inference.bootstrap_picks(5, [0, 0, 0, 1, 1])


def test_trace_holds_the_trained_networks_and_their_noise(tiny_trace):
    """The stored weights and biases are the network the study evaluated (they reproduce its
    float accuracy), and the stored σ_i give the predicted weight error metric."""
    from imcsim.scenarios import digits, robust_training

    data = digits.load_digits_split(0)
    with Trace(tiny_trace) as tr:
        metrics = tr.metrics()
        for arch in ("mlp", "cnn"):
            net = robust_training.build_net(arch, 64, 10, hidden=(8,), channels=2, seed=0)
            for k in range(len(net.weights)):
                net.weights[k] = tr.series(f"trained_{arch}_sgd_w{k}").data[-1]
                net.biases[k] = tr.series(f"trained_{arch}_sgd_b{k}").data[-1]
            acc = inference.accuracy(inference.layer_forward(net, data.x_test), data.y_test)
            assert acc == metrics[f"float_accuracy_{arch}"][0]
            sigma = tr.series(f"weight_sigma_{arch}_sgd_maxabs").data[-1]
            total = sum(float(np.sum(w * w)) for w in net.weights)
            assert np.sqrt(np.sum(sigma ** 2) / total) == pytest.approx(
                metrics[f"predicted_weight_error_{arch}_sgd_maxabs"][0], rel=1e-12)
            expected = np.concatenate([inference.mapping_weight_sigma(
                w, "fixed", robust_training.NoiseModel(device=pcm.StatisticalModel(),
                                                       t_inference=86400.0)).ravel()
                for w in net.weights])
            np.testing.assert_allclose(sigma, expected, rtol=1e-12)


def test_info_and_plot_show_the_table(tiny_trace, tmp_path):
    result = CliRunner().invoke(main, ["info", str(tiny_trace)])
    assert result.exit_code == 0, result.output
    assert "pto_noise" in result.output and "1 d" in result.output and "±" in result.output
    assert "loss won back" in result.output and "standard error of the mean" in result.output
    with Trace(tiny_trace) as tr:
        metrics = tr.metrics()
    for arch in ("mlp", "cnn"):
        share = metrics[f"pto_recovery_{arch}_t86400"][0]
        low = metrics[f"pto_recovery_{arch}_t86400_ci95_low"][0]
        high = metrics[f"pto_recovery_{arch}_t86400_ci95_high"][0]
        assert (np.isnan(share) and np.isnan(low)) or low <= share <= high
    png = tmp_path / "inference.png"
    result = CliRunner().invoke(main, ["plot", str(tiny_trace), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000


def test_one_and_two_threads_give_the_same_bytes(tiny_trace, tmp_path, read_datasets,
                                                 restore_threads):
    import numba

    numba.set_num_threads(2 if numba.get_num_threads() == 1 else 1)
    again = run_scenario(parse_scenario(TINY), tmp_path / "again.h5")
    assert read_datasets(again) == read_datasets(tiny_trace)


@pytest.mark.parametrize("change, field", [
    ('methods = []', "methods"),
    ('methods = ["float", "magic"]', "methods[1]"),
    ('afp_gain = 1.0', "afp_gain"),
    ('t_calibrate = -1.0', "t_calibrate"),
    ('percentile = 0.0', "percentile"),
    ('calibration_source = "test"', "calibration_source"),
    ('programming = "pulsed"', "programming"),
    ('noise_model = "measured"', "noise_model"),
    ('programming = "verify"\nmethods = ["float", "pto_sgd_chip_oracle"]', "methods"),
    ('verify = { tolerance = -1e-6 }', "verify.tolerance"),
])
def test_bad_inference_tables_are_input_errors(change, field):
    text = TINY.replace("[inference]\n", f"[inference]\n{change}\n")
    with pytest.raises(InputError, match=re.escape(f"inference.{field}:")):
        parse_scenario(text)


def test_needs_to_know_follows_the_noise_model_and_the_wires():
    """What a method must know changes with what it is told: PTO told the wires needs the
    wire resistance (and no longer claims to assume none); a noise-aware method under the
    characterised noise model needs the characterisation; a method that models no noise
    needs neither."""
    told = inference.needs("pto_sgd", "preset", pto_wires=True)
    assert "wire resistance per cell pitch" in told and "assumes no wire" not in told
    assert "assumes no wire resistance" in inference.needs("pto_sgd")
    assert "copies of the SGD network's tiles" in inference.needs("noise", "characterised")
    assert inference.needs("sgd_maxabs", "characterised", True) == inference.NEEDS["sgd_maxabs"]


def test_pto_wires_must_be_a_boolean():
    text = TINY.replace("pto = { iterations = 3,", 'pto = { wires = "yes", iterations = 3,')
    with pytest.raises(InputError, match=re.escape("inference.pto.wires:")):
        parse_scenario(text)


def test_unsupported_hardware_is_an_input_error_before_any_file(tmp_path):
    for text, field in ((TINY.replace("[run]", '[device]\nmodel = "ecram2030"\n[run]'),
                         "device.model"),
                        (TINY.replace("calibration_images = 64", "calibration_images = 1347"),
                         "inference.calibration_images")):
        out = tmp_path / "never.h5"
        with pytest.raises(InputError, match=field):
            run_scenario(parse_scenario(text), out)
        assert not out.exists()


def test_ir_drop_in_the_harness_matches_a_word_line_ladder_solved_directly():
    """Word-line resistance only (bit lines at 0 V), noiseless devices, ideal periphery, one
    input row driven: that row is a ladder of segments r from the driver through the
    interleaved G⁺/G⁻ cells of every physical column, each a shunt to ground. Its node
    voltages from a dense solve of the ladder, times the cells' conductances, give the
    column currents; the harness's tile output must equal them recombined digitally."""
    net = random_net("mlp")
    r_row = 3.0
    periphery = dataclasses.replace(IDEAL, r_wire_row=r_row, ir_drop_solver="exact")
    hw = inference.Hardware(stat=NOISELESS, periphery=periphery, tile_rows=40, tile_cols=16)
    x = np.random.default_rng(3).uniform(0.0, 1.0, (8, 64))
    tiles = inference.map_network(net, hw, inference.layer_rows(net, x), "fixed2")
    chip = inference.program(tiles[:1], NOISELESS, 5)[0]
    gp, gm = inference.read(chip, NOISELESS, 1.0, 7)
    tile = chip.tile
    row = 6
    drive = np.zeros((1, tile.rows))
    drive[0, row] = tile.input_range  # full-scale input: v_read on this word line
    shunt = np.empty(2 * gp.shape[1])
    shunt[0::2], shunt[1::2] = gp[row], gm[row]
    n = shunt.size
    ladder = np.diag(shunt + 2.0 / r_row)
    ladder[-1, -1] -= 1.0 / r_row  # open far end
    ladder -= np.diag(np.full(n - 1, 1.0 / r_row), 1) + np.diag(np.full(n - 1, 1.0 / r_row), -1)
    source = np.zeros(n)
    source[0] = periphery.v_read / r_row
    node = np.linalg.solve(ladder, source)
    current = gp[row] * node[0::2] - gm[row] * node[1::2]
    expected = tile.combine(current[None, :] * tile.input_range
                            / (periphery.v_read * NOISELESS.g_max))
    got = inference.tile_output(tile, gp, gm,
                                np.pad(drive, ((0, 0), (tile.row0, 0))), hw)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    ideal = inference.tile_output(tile, gp, gm, np.pad(drive, ((0, 0), (tile.row0, 0))),
                                  dataclasses.replace(hw, periphery=IDEAL))
    assert np.max(np.abs(got - ideal)) > 1e-3 * np.max(np.abs(ideal))  # the wires matter


def test_ir_drop_vanishes_with_the_wire_resistance(images):
    net = random_net("cnn")
    logits = []
    for r in (0.0, 1e-9):
        periphery = dataclasses.replace(IDEAL, r_wire_row=r, r_wire_col=r,
                                        ir_drop_solver="exact")
        hw = inference.Hardware(stat=NOISELESS, periphery=periphery, tile_rows=20,
                                tile_cols=8)
        rows = inference.layer_rows(net, images)
        chips = inference.deploy(inference.map_network(net, hw, rows, "fixed"), hw, 3, rows)
        logits.append(inference.layer_forward(net, images,
                                              inference.chip_hook(chips, hw, 3600.0, 5, rows)))
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-6, atol=1e-9)


def test_study_with_wire_resistance_evaluates_every_method_on_the_resistive_array(tmp_path):
    """PTO (whose tile model has no wires) and the baselines run on a resistive array; the
    accuracies differ from the same study without wires, the trained networks do not."""
    text = TINY.replace("[inference]\n", '[inference]\nmethods = ["float", "sgd_maxabs", '
                        '"pto_sgd"]\n')
    runs = []
    for name, wires in (("ir", "r_wire_row = 1.0\nr_wire_col = 1.0\n"), ("ideal", "")):
        runs.append(run_scenario(parse_scenario(text.replace("[periphery]\n",
                                                             f"[periphery]\n{wires}")),
                                 tmp_path / f"{name}.h5"))
    with Trace(runs[0]) as ir, Trace(runs[1]) as ideal:
        assert ir.status == "complete"
        assert np.array_equal(ir.series("trained_mlp_sgd_w0").data,
                              ideal.series("trained_mlp_sgd_w0").data)
        assert not np.array_equal(ir.series("accuracy_mlp_sgd_maxabs").data,
                                  ideal.series("accuracy_mlp_sgd_maxabs").data)
        assert "assumes no wire resistance" in ir.attrs["inference_needs"]


def test_holdout_calibration_images_are_never_trained_on():
    """With calibration_source = "holdout" the calibration images (DAC ranges, GDC reference,
    PTO's data) are withheld from every training; with "train" the networks see them."""
    for source, overlap in (("train", True), ("holdout", False)):
        text = TINY.replace("[inference]\n", f'[inference]\ncalibration_source = "{source}"\n')
        run = inference.InferenceRun(parse_scenario(text), 0)
        assert run.x_cal.shape == (64, 64)
        trained = {row.tobytes() for row in run.data.x_train}
        seen = [row.tobytes() in trained for row in run.x_cal]
        assert all(seen) if overlap else not any(seen)
        assert run.data.x_train.shape[0] == 1347 - (0 if overlap else 64)
        assert run.data.x_test.shape[0] == 450


def test_hermes_study_runs_on_the_hermes_device(tiny_trace, tmp_path):
    """The tiny study on the HERMES preset (as scenarios/inference_robustness_hermes.toml):
    every method is written and PTO's guarantee holds. The chips are HERMES' (g_max =
    20.7 µS, t0 = 300 s): the weight error of the max-abs mapping at 1 s, read before t0
    and so without drift, is below that at 1 day, and both are those of the device model,
    not Joshi's (the same networks on Joshi's preset, ``tiny_trace``, give other errors)."""
    from imcsim.analysis.inference import accuracy_table

    hermes = TINY.replace("[run]", '[device]\nmodel = "hermes2023"\n[run]').replace(
        'architectures = ["mlp", "cnn"]', 'architectures = ["mlp"]')
    path = run_scenario(parse_scenario(hermes), tmp_path / "hermes.h5")
    with Trace(path) as tr:
        assert tr.status == "complete"
        assert json.loads(tr.attrs["scenario_resolved"])["device"]["model"] == "hermes2023"
        rows = accuracy_table(tr)
        assert len(rows) == len(inference.NEEDS)
        assert all(np.all((r["mean"] >= 0) & (r["mean"] <= 1)) for r in rows)
        metrics = tr.metrics()
        for method in ("pto_sgd", "pto_noise"):
            assert metrics[f"pto_mlp_{method}_objective_best"][0] <= (
                metrics[f"pto_mlp_{method}_objective_start"][0])
        error = tr.series("weight_error_mlp_sgd_maxabs").data  # (time, device seed)
    assert np.all(error[0] < error[1])
    with Trace(tiny_trace) as tr:
        joshi = tr.series("weight_error_mlp_sgd_maxabs").data
    assert np.all(np.abs(error - joshi) > 1e-3 * joshi)


# ----------------------------------------------------------------------------------------
# Pulse-level programming of the chip


@pytest.mark.parametrize("differential", [True, False])
def test_program_and_verify_lands_every_converged_target_within_tolerance(differential):
    """With a noiseless verify read, the loop stops only when the read is within tolerance,
    so every converged pair (differential: G⁺ − G⁻) or device is within it of its target;
    the two controllers are different loops, so they leave different conductances."""
    from imcsim.scenarios import network

    gen = np.random.default_rng(4)
    w = gen.standard_normal((30, 12))
    g_plus, g_minus = crossbar.weights_to_conductances(w, float(np.abs(w).max()), 25e-6)
    policy = pcm.VerifyPolicy(read_noise=0.0, differential=differential)
    g, t_prog, pulses, converged, params = network.program_verify(g_plus, g_minus, 9, policy,
                                                                  pcm.PulseModel())
    n = w.size
    assert converged.mean() > 0.99 and np.all(pulses >= 1)
    assert np.array_equal(t_prog, pulses * pcm.PulseModel().t_pulse)
    if differential:
        error = (g[:n] - g[n:]) - (g_plus - g_minus).ravel()
        assert np.all(np.abs(error[converged[:n]]) <= policy.tolerance * (1 + 1e-12))
    else:
        error = g - np.concatenate([g_plus.ravel(), g_minus.ravel()])
        assert np.all(np.abs(error[converged]) <= policy.tolerance * (1 + 1e-12))
    other = network.program_verify(g_plus, g_minus, 9, dataclasses.replace(
        policy, differential=not differential), pcm.PulseModel())[0]
    assert not np.array_equal(g, other)
    assert params.dg0.size == 2 * n


def test_verify_programmed_chip_holds_the_targets_within_tolerance(images):
    """The harness with pulse-level programming and no drift or read noise: every tile's
    pairs, read back, hold their mapped targets within the verify tolerance — the layout,
    seeds and targets reach the pulse-level controller intact."""
    net = random_net("mlp")
    policy = pcm.VerifyPolicy(read_noise=0.0, differential=True)
    hw = inference.Hardware(stat=NOISELESS, periphery=IDEAL, tile_rows=20, tile_cols=8,
                            programming=inference.Programming("verify", policy))
    rows = inference.layer_rows(net, images)
    tiles = inference.map_network(net, hw, rows, "fixed")
    chips = inference.deploy(tiles, hw, 3, rows)
    for chip in chips:
        gp, gm = inference.read(chip, hw.stat, 1.0, 17)
        target = chip.tile.targets() * hw.stat.g_max
        ok = chip.converged[:target.size].reshape(target.shape)
        assert ok.mean() > 0.99
        assert np.all(np.abs((gp - gm - target)[ok]) <= policy.tolerance * (1 + 1e-12))
    statistical = inference.program(tiles, hw.stat, 3)
    assert all(c.pulses is None and c.t_prog is None for c in statistical)
    # noise-free one-step programming holds just the targets; pulse-level programming
    # starts from RESET, so both devices of a pair keep at least their RESET conductance
    assert inference._programming_record("conductance", statistical) == pytest.approx(1.0)
    assert inference._programming_record("conductance", chips) > 1.0
    with pytest.raises(ValueError, match="programming method"):
        inference.Programming("pulsed")


def test_gdp_programmed_chip_reproduces_each_tiles_mvm(images):
    """GDP in the harness, no drift or read noise, ideal periphery: every tile, programmed
    from RESET toward its normalised targets, computes its block's products to within a few
    per cent on the network's own inputs (GDP minimised the error on random ones), far below
    the error of the RESET state it started from; its last-iteration error is recorded."""
    net = random_net("mlp")
    hw = inference.Hardware(stat=NOISELESS, periphery=IDEAL, tile_rows=20, tile_cols=8,
                            programming=inference.Programming("gdp"))
    rows = inference.layer_rows(net, images)
    tiles = inference.map_network(net, hw, rows, "fixed")
    chips = inference.deploy(tiles, hw, 3, rows)
    for chip in chips:
        tile = chip.tile
        x = rows[tile.layer][:, tile.row0:tile.row0 + tile.rows]
        exact = x @ net.weights[tile.layer][tile.row0:tile.row0 + tile.rows,
                                            tile.col0:tile.col0 + tile.n_cols]
        gp, gm = inference.read(chip, hw.stat, 1.0, 17)
        y = inference.tile_output(tile, gp, gm, rows[tile.layer], hw)
        error = np.linalg.norm(y - exact) / np.linalg.norm(exact)
        assert error < 0.1 and 0.0 < chip.mvm_error < 0.1
        assert np.all(chip.pulses >= 1) and chip.pulses.max() > 1
    with pytest.raises(ValueError, match="periphery"):
        inference.program(tiles, hw.stat, 3, hw.programming)


def test_gdp_common_mode_depends_on_what_else_the_tile_holds():
    """GDP raises both devices of a pair, and by how much depends on the rest of the tile:
    the pairs with target 0 on a 64 × 64 tile whose other weights are spread uniformly over
    [0, 1] end with more than twice the conductance of the same pairs on a tile of mostly
    small weights (|u| ~ |N(0, 0.15²)|, as a trained network's), on the same devices. A
    characterisation tile with uniform levels therefore overstates the common mode of a
    network's tiles (scenarios/inference_characterised.toml)."""
    gen = np.random.default_rng(5)
    rows = cols = 64
    hw = inference.Hardware(tile_rows=rows, tile_cols=cols,
                            programming=inference.Programming(method="gdp"))
    zero = gen.random((rows, cols)) < 0.2
    sign = np.where(gen.random((rows, cols)) < 0.5, -1.0, 1.0)
    ones = np.ones(cols)
    common = {}
    for name, magnitude in (("uniform", gen.uniform(0.0, 1.0, (rows, cols))),
                            ("small", np.minimum(np.abs(gen.normal(0.0, 0.15, (rows, cols))),
                                                 1.0))):
        u = np.where(zero, 0.0, sign * magnitude)
        tile = inference.TileMap(layer=0, row0=0, col0=0, n_cols=cols, weights=u, gain=ones,
                                 share=ones, column=np.arange(cols), scale=ones,
                                 input_range=1.0)
        chip, = inference.program([tile], hw.stat, 123, hw.programming, hw.periphery)
        g_plus, g_minus = chip.g_prog.reshape(2, rows, cols)
        common[name] = float(np.mean(np.where(u >= 0, g_minus, g_plus)[zero]))
    assert common["small"] > 0.5e-6  # GDP leaves a common mode on either tile
    assert common["uniform"] > 2.0 * common["small"]


def test_evaluation_reads_never_repeat_a_programming_loops_draws(gdp_loops, images):
    """GDP reads the devices (READ stream) at counters counter0 + 1 + k while it programs;
    the harness reads the deployed chip at _READ_COUNTER0 + 1 + k. If the two ranges met, a
    chip's read noise would repeat noise GDP had already responded to (and flattered it)."""
    from imcsim.scenarios import programming

    seen = gdp_loops
    net = random_net("mlp")
    hw = inference.Hardware(stat=NOISELESS, periphery=IDEAL, programming=inference.Programming(
        "gdp", gdp=programming.GDPPolicy(iterations=20, batch=16)))
    rows = inference.layer_rows(net, images)
    inference.deploy(inference.map_network(net, hw, rows, "fixed"), hw, 3, rows)
    assert seen
    evaluation = range(inference._READ_COUNTER0, inference._READ_COUNTER0 + 1 + 10 ** 6)
    for counter0, iterations in seen:
        loop = range(counter0, counter0 + iterations + 2)
        assert loop.start >= evaluation.stop or loop.stop <= evaluation.start


PULSED_TINY = TINY.replace("[inference]\n", """[inference]
architectures = ["mlp"]
programming = "PROGRAMMING"
methods = ["float", "sgd_maxabs", "pto_sgd"]
gdp = { iterations = 10, batch = 64 }
""").replace('architectures = ["mlp", "cnn"]\n', "")


@pytest.mark.parametrize("programming, record", [("verify", "converged"),
                                                 ("gdp", "mvm_error")])
def test_pulse_programmed_study_records_its_pulses_and_is_thread_independent(
        programming, record, tmp_path, read_datasets, restore_threads):
    import numba

    text = PULSED_TINY.replace("PROGRAMMING", programming)
    first = run_scenario(parse_scenario(text), tmp_path / "first.h5")
    with Trace(first) as tr:
        assert tr.attrs["inference_programming"] == programming
        pulses = tr.series("programming_pulses_mlp_sgd_maxabs").data
        other = tr.series(f"programming_{record}_mlp_pto_sgd").data
        assert pulses.shape == (1, 2) and np.all(pulses >= 1.0)
        assert np.all((other > 0.9) & (other <= 1.0)) if record == "converged" else \
            np.all((other > 0.0) & (other < 0.5))
        assert "programming_pulses_mlp_float" not in tr.series_names()
        assert np.all(tr.series("programming_conductance_mlp_pto_sgd").data > 1.0)
    result = CliRunner().invoke(main, ["info", str(first)])
    assert result.exit_code == 0 and f"{programming} programming, mean over" in result.output
    numba.set_num_threads(2 if numba.get_num_threads() == 1 else 1)
    again = run_scenario(parse_scenario(text), tmp_path / "again.h5")
    assert read_datasets(again) == read_datasets(first)


@pytest.mark.parametrize("preset", ["joshi2020", "hermes2023"])
def test_characterising_statistical_programming_recovers_the_preset(preset):
    """Characterised on its own statistical programming, the chip gives back the preset's
    programming noise: ~2000 pairs a level measure σ to 1/sqrt(2·2000) = 1.6 %, so the
    refitted curve (which pools all 33 levels) stays within 3 % of the preset's, the fit's
    χ²/dof is that of a right model (30 dof: below 1.6 with 99 % probability), and the mean
    error is the rectification of the G⁻ = 0 device, −E[max(0, σ(0)·ξ)] = −σ(0)/sqrt(2π)."""
    stat = pcm.STATISTICAL_PRESETS[preset]
    fit = inference.characterise_programming(inference.Hardware(stat=stat), 11)
    assert fit.pairs_per_level >= 1985 and fit.levels.size == 33
    np.testing.assert_allclose(fit.sigma_fitted, fit.sigma_preset, rtol=0.03)
    assert fit.chi2_dof < 1.6
    sigma_zero = pcm.programming_noise_std(0.0, stat.g_max, np.asarray(stat.prog_coeff),
                                           stat.prog_coeff_g_ref)
    rectification = -sigma_zero / np.sqrt(2.0 * np.pi)
    assert np.mean(fit.bias[8:]) == pytest.approx(rectification, rel=0.15)
    # the target-0 device sits at that rectified noise: no common mode worth the name (the
    # mean of ~2000 such devices is known to ~0.003 µS)
    assert np.max(fit.common_mode_levels) < 0.02e-6
    np.testing.assert_allclose(fit.low, -rectification, rtol=0.1)
    # what the noise-aware methods then assume is the preset's noise again
    from imcsim.scenarios import robust_training as rt

    g = np.linspace(0.0, stat.g_max, 50)
    np.testing.assert_allclose(
        rt.conductance_sigma(g, rt.NoiseModel(device=fit.stat, t_inference=86400.0,
                                              common_mode=fit.common_mode)),
        rt.conductance_sigma(g, rt.NoiseModel(device=stat, t_inference=86400.0)), rtol=0.03)


def test_characterisation_measures_a_common_mode_and_the_model_predicts_its_noise():
    """A statistical chip that raises both devices of a pair by C(|u|) = 8 − 6|u| µS: the
    characterisation finds C (within 0.1 µS at every level: the mean of ~2000 devices of
    σ ≤ 1.3 µS is known to 0.03 µS) and the true pair σ (within 3 %, as without one), and the
    model then predicts the 1-day σ of G⁺ − G⁻ of the chip's own pairs — programming, drift
    and read noise of two devices at g_T + C and C, compensated by the level's mean drift —
    within 5 % at every probed level (2000 pairs each: 1.6 % standard error), where a model
    without the common mode is 15 % or more too low at |u| = 0 (its G⁻ then carries
    nothing)."""
    from imcsim.scenarios import robust_training as rt

    true_common = (8e-6, -6e-6)
    hw = inference.Hardware(common_mode=true_common)
    fit = inference.characterise_programming(hw, 11)
    expected = rt.common_mode_conductance(true_common, fit.levels)[0]
    assert np.max(np.abs(fit.common_mode_levels - expected)) < 0.1e-6
    truth = inference._programming_sigma(fit.levels * hw.stat.g_max, hw.stat, true_common)
    np.testing.assert_allclose(fit.sigma_fitted, truth, rtol=0.03)
    model = dataclasses.replace(hw, stat=fit.stat, common_mode=fit.common_mode)
    without = dataclasses.replace(hw, common_mode=())
    # the chip: 2000 pairs at each of 4 levels, read at 1 day
    levels = np.repeat([0.0, 0.25, 0.5, 1.0], 2000)
    u = np.where(np.arange(levels.size) % 2, levels, -levels).reshape(-1, 80)
    ones = np.ones(80)
    tile = inference.TileMap(layer=0, row0=0, col0=0, n_cols=80, weights=u, gain=ones,
                             share=ones, column=np.arange(80), scale=ones, input_range=1.0)
    chip, = inference.program([tile], hw.stat, 23, common_mode=hw.common_mode)
    g_plus, g_minus = inference.read(chip, hw.stat, 86400.0, 5)
    low_target = np.abs(u) == 0
    assert np.mean(g_minus[low_target]) > 4e-6  # both devices hold the common mode
    programmed = chip.g_prog.reshape(2, *u.shape)
    positive = u >= 0
    high = [np.where(positive, g_plus, g_minus), np.where(positive, *programmed)]
    low = [np.where(positive, g_minus, g_plus), np.where(positive, *programmed[::-1])]
    for level in (0.0, 0.25, 0.5, 1.0):
        at = np.abs(u) == level
        # each role compensated by its mean drift at the level, as the closed form assumes
        diff = (high[0][at] * high[1][at].mean() / high[0][at].mean()
                - low[0][at] * low[1][at].mean() / low[0][at].mean())
        predicted = rt.conductance_sigma(np.array([level * hw.stat.g_max]),
                                         model.noise(86400.0))[0]
        assert diff.std() == pytest.approx(predicted, rel=0.05), level
        if level == 0.0:
            blind = rt.conductance_sigma(np.zeros(1), without.noise(86400.0))[0]
            assert blind < 0.85 * diff.std()


def test_characterising_program_and_verify_measures_its_tolerance_band():
    """Program-and-verify with a noiseless verify read leaves every converged pair within
    ±tolerance, so the measured σ of every nonzero level is at most the tolerance and, the
    last pulse landing anywhere in the band, near the uniform value tolerance/√3 (a level
    with a pair that ran out of pulses reads higher: σ weighs outliers); target 0 (both
    devices RESET) is far below. The refit follows the measurement, not the preset."""
    policy = pcm.VerifyPolicy(read_noise=0.0, differential=True)
    hw = inference.Hardware(tile_rows=128, tile_cols=128,
                            programming=inference.Programming("verify", policy))
    fit = inference.characterise_programming(hw, 5)
    inner = fit.sigma[1:-3]  # the top levels approach saturation, where pairs may not converge
    uniform = policy.tolerance / np.sqrt(3.0)
    assert np.all(inner <= policy.tolerance)
    assert np.median(inner) == pytest.approx(uniform, rel=0.05)
    assert np.mean(np.abs(inner / uniform - 1.0) < 0.1) >= 0.85
    assert fit.sigma[0] < 0.5 * inner.min()
    assert np.all(fit.sigma_preset[4:] > 1.5 * fit.sigma[4:])  # |u| ≥ 1/8
    close = np.abs(fit.sigma_fitted - fit.sigma) <= 0.15 * fit.sigma
    assert close.mean() >= 0.9
    with pytest.raises(ValueError, match="levels"):
        inference.characterise_programming(hw, 5, levels=4)
    with pytest.raises(ValueError, match="pairs a level"):
        inference.characterise_programming(hw, 5, pairs=100)


def test_characterisation_on_a_networks_tiles_bins_its_own_weights():
    """Given a network's mapped tiles, the characterisation programs as many copies as hold
    the requested pairs (on devices of their own) and bins every pair by |u| to the nearest
    level: the counts follow the network's weights, levels with fewer than 8 pairs are NaN,
    and on statistical programming the measured σ of the well-filled levels is the preset's
    (within 4 standard errors)."""
    net = SimpleNamespace(layers=mlp_layers([64, 12, 10]),
                          weights=[np.random.default_rng(3).standard_normal((64, 12)) * 0.2,
                                   np.random.default_rng(4).standard_normal((12, 10)) * 0.3],
                          biases=[np.zeros(12), np.zeros(10)])
    hw = inference.Hardware(tile_rows=64, tile_cols=12)
    x = np.random.default_rng(5).uniform(0, 1, (16, 64))
    tiles = inference.map_network(net, hw, inference.layer_rows(net, x), "fixed")
    fit = inference.characterise_programming(hw, 3, pairs=8000, tiles=tiles)
    u = np.concatenate([t.targets().ravel() for t in tiles])
    copies = -(-8000 // u.size)
    count = np.bincount(np.rint(np.abs(u) * 32).astype(int), minlength=33) * copies
    assert np.array_equal(np.isfinite(fit.sigma), count >= 8)
    assert np.sum(count >= 8) < 33  # a trained-like network leaves some levels empty
    assert fit.pairs_per_level == count[count >= 8].min()
    full = count >= 200
    se = fit.sigma[full] / np.sqrt(2 * (count[full] - 1))
    assert np.all(np.abs(fit.sigma[full] - fit.sigma_preset[full]) < 4 * se)


def test_characterisation_on_small_tiles_programs_as_many_as_hold_its_pairs():
    """A chip of 20 x 8 tiles is characterised on ceil(4096/160) = 26 of them (tile seeds
    0..25 of the characterisation seed), so every level still holds ~124 pairs."""
    hw = inference.Hardware(tile_rows=20, tile_cols=8)
    fit = inference.characterise_programming(hw, 3, pairs=4096)
    assert fit.pairs_per_level == 26 * 160 // 33
    assert np.all(np.isfinite(fit.sigma)) and np.all(fit.sigma > 0)
    np.testing.assert_allclose(fit.sigma, fit.sigma_preset, rtol=4.0 / np.sqrt(2 * 125))


CHARACTERISED_TINY = PULSED_TINY.replace("PROGRAMMING", "verify").replace(
    'methods = ["float", "sgd_maxabs", "pto_sgd"]',
    'methods = ["float", "sgd_maxabs", "noise", "pto_sgd"]\nnoise_model = "NOISE_MODEL"')


def test_characterised_noise_model_changes_what_the_methods_assume_not_the_chip(
        tmp_path, read_datasets, restore_threads):
    """noise_model = "characterised" refits the programming noise the noise-aware methods
    assume; the chip is the same chip: the SGD network on max-abs tiles reads the same
    accuracies, byte for byte, while noise injection trains against the refitted σ (and so
    yields another network). Same bytes with 1 and 2 threads."""
    import numba

    preset = run_scenario(parse_scenario(CHARACTERISED_TINY.replace("NOISE_MODEL", "preset")),
                          tmp_path / "preset.h5")
    text = CHARACTERISED_TINY.replace("NOISE_MODEL", "characterised")
    fitted = run_scenario(parse_scenario(text), tmp_path / "fitted.h5")
    with Trace(preset) as a, Trace(fitted) as b:
        assert not any(n.startswith("characterisation") for n in a.series_names())
        assert b.attrs["inference_noise_model"] == "characterised"
        assert np.array_equal(a.series("accuracy_mlp_sgd_maxabs").data,
                              b.series("accuracy_mlp_sgd_maxabs").data)
        assert not np.array_equal(a.series("trained_mlp_noise_w0").data,
                                  b.series("trained_mlp_noise_w0").data)
        # the σ_i the noise-trained network was trained against is the refitted model's
        sigma_a = a.series("weight_sigma_mlp_sgd_maxabs").data[-1]
        sigma_b = b.series("weight_sigma_mlp_sgd_maxabs").data[-1]
        assert np.mean(sigma_b) < np.mean(sigma_a)
        measured = b.series("characterisation_mlp_sigma").data[-1]
        preset_sigma = b.series("characterisation_mlp_sigma_preset").data[-1]
        inner = np.isfinite(measured) & (b.series("characterisation_mlp_levels").data[-1] > 0.05)
        assert inner.sum() >= 5 and np.all(measured[inner] < preset_sigma[inner])
        assert len(b.attrs["characterisation_mlp_prog_coeff"]) >= 3
    result = CliRunner().invoke(main, ["info", str(fitted)])
    assert result.exit_code == 0 and "refitted model" in result.output
    assert "measured on copies of the SGD" in result.output  # in what noise must know
    figure = tmp_path / "fitted.png"
    result = CliRunner().invoke(main, ["plot", str(fitted), "-o", str(figure)])
    assert result.exit_code == 0 and figure.stat().st_size > 0
    numba.set_num_threads(2 if numba.get_num_threads() == 1 else 1)
    again = run_scenario(parse_scenario(text), tmp_path / "again.h5")
    assert read_datasets(again) == read_datasets(fitted)


def test_hardware_adc_range_is_in_rows_of_full_scale_current():
    hw = inference.Hardware(periphery=dataclasses.replace(IDEAL, adc_full_scale=50e-6))
    assert hw.adc_range == pytest.approx(10.0)  # 50 µA = 10 × 0.2 V × 25 µS


def test_quick_benchmark_reports_every_row(tmp_path):
    """bench_inference.py --quick completes and every ratio is a positive finite number (no
    timing thresholds)."""
    import json
    import math
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_inference.py"),
                           "--quick", "--json", str(out)], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == sorted(f"{a}_{k}" for a in ("mlp", "cnn") for k in (
        "numpy", "fixed_1t", "fixed_nt", "afp_nt", "program", "program_verify", "program_gdp",
        "pto", "pto_wires"))
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows.values())
    assert "time / numpy" in proc.stdout


@pytest.mark.parametrize("kind", inference.MAPPINGS)
def test_predicted_weight_noise_matches_the_programmed_tiles(kind):
    """mapping_weight_sigma (the device noise model per weight, AFP's zero pairs included)
    against the rms weight error of tiles programmed and read by the PCM kernels, no drift
    (so no compensation bias): agreement within 4 % (about 6,000 weights × 4 device seeds;
    the sampling error of an rms is ~1/sqrt(2n) ≈ 0.5 %, the rest is the rectification bias
    of weak devices the σ model leaves out)."""
    from imcsim.scenarios.robust_training import NoiseModel

    stat = pcm.StatisticalModel(drift_scale=0.0)
    t = 86400.0
    net = random_net("mlp", 8)
    net.weights = [net.weights[0], net.weights[1]]
    hw = inference.Hardware(stat=stat, periphery=IDEAL)
    rows = [np.ones((1, w.shape[0])) for w in net.weights]
    tiles = inference.map_network(net, hw, rows, kind, gain=4.0)
    noise = NoiseModel(device=stat, t_inference=t)
    predicted = np.sqrt(sum(np.sum(inference.mapping_weight_sigma(w, kind, noise, 4.0) ** 2)
                            for w in net.weights) / sum(np.sum(w * w) for w in net.weights))
    measured = []
    for seed in range(4):
        chips = inference.program(tiles, stat, seed)
        reads = [inference.read(c, stat, t, 2) for c in chips]
        measured.append(inference.weight_error(net, chips, reads, [1.0] * len(chips),
                                               stat.g_max) ** 2)
    assert np.sqrt(np.mean(measured)) == pytest.approx(predicted, rel=0.04)


def test_recovery_is_defined_only_where_the_baseline_loses():
    base = [0.90, 0.92, 0.91, 0.89, 0.93]
    assert inference.recovery([0.98] * 5, base, [0.945] * 5) == pytest.approx(0.5)
    assert np.isnan(inference.recovery([0.912] * 5, base, [0.95] * 5))  # within the spread
    assert np.isnan(inference.recovery([0.90] * 5, base, [0.95] * 5))  # baseline above float


def test_recovery_interval_covers_the_true_share_at_its_level():
    """Seeds whose baseline loses 2 points and whose remedy wins back a true 40 % of it, with
    a paired chip-to-chip scatter as the default study's (0.5 points): over 200 simulated
    studies of 20 seeds the 95 % interval must hold 0.4 in 95 % of them (binomial s.d. 1.5 %,
    so 88 % to 100 % passes; a 68 % interval, or one that resampled the baseline alone,
    would not), and must narrow as seeds are added."""
    gen = np.random.default_rng(11)
    hits, widths = 0, {}
    for study in range(200):
        chip = gen.normal(0.0, 0.005, 20)
        base = 0.96 + chip
        remedy = base + 0.4 * 0.02 + gen.normal(0.0, 0.004, 20)
        low, high = inference.recovery_interval([0.98] * 20, base, remedy, resamples=2000,
                                                seed=study)
        hits += low <= 0.4 <= high
        widths.setdefault(20, []).append(high - low)
        low5, high5 = inference.recovery_interval([0.98] * 5, base[:5], remedy[:5],
                                                  resamples=2000, seed=study)
        if np.isfinite(low5):
            widths.setdefault(5, []).append(high5 - low5)
    assert 0.88 <= hits / 200 <= 1.0
    assert np.median(widths[5]) > 1.5 * np.median(widths[20])
    share = inference.recovery([0.98] * 20, base, remedy)
    low, high = inference.recovery_interval([0.98] * 20, base, remedy)
    assert low < share < high
    assert (low, high) == inference.recovery_interval([0.98] * 20, base, remedy)
    assert np.isnan(inference.recovery_interval([0.90] * 5, base[:5], remedy[:5])[0])


@pytest.mark.parametrize("name", ["inference_robustness.toml", "inference_robustness_hermes.toml",
                                  "inference_noise_sources.toml", "inference_pto_ablation.toml",
                                  "inference_range_bound.toml",
                                  "inference_range_bound_hermes.toml",
                                  "inference_pto_ablation_hermes.toml",
                                  "inference_pto_calibration.toml",
                                  "inference_training_seeds.toml",
                                  "inference_training_seeds_hermes.toml",
                                  "inference_ir_drop.toml",
                                  "inference_programming.toml",
                                  "inference_characterised.toml",
                                  "inference_ir_drop_pto.toml"])
def test_shipped_inference_scenarios_validate(name):
    from pathlib import Path

    from imcsim.config import load_scenario
    from imcsim.runner import study_run_class

    loaded = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / name)
    for _, _, sc in loaded.runs():
        assert sc.kind == "inference"
        run = study_run_class(sc.kind)(dataclasses.replace(loaded, scenario=sc, variants=()),
                                       sc.run.seed)
        assert run.n_steps > 0
