"""Network-level check: a float MLP on tiles, programmed, drifted and evaluated."""

import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.config import parse_scenario
from imcsim.physics import crossbar, pcm
from imcsim.runner import run_scenario
from imcsim.scenarios import digits, network, programming
from imcsim.store import Trace

NET = """
[run]
name = "net"
[periphery]
dac_bits = 8
adc_bits = 8
[network]
hidden = [16]
epochs = 15
device_seeds = [1, 2]
times = [1.0, 86400.0]
tile_rows = 40
tile_cols = 12
calibration_images = 128
gdp = { iterations = 20, batch = 256 }
"""


@pytest.fixture(scope="module")
def data_and_params():
    data = digits.load_digits_split(0)
    params, _ = digits.train_mlp(data.x_train, data.y_train, hidden=(16,), epochs=15, seed=0)
    return data, params


def test_tiles_cover_every_weight_once(data_and_params):
    _, params = data_and_params
    specs = network.build_tiles(params, np.ones((4, 64)), crossbar.Periphery(), pcm.JOSHI_2020,
                                40, 12)
    for layer, w in enumerate(params.weights):
        covered = np.zeros(w.shape, dtype=int)
        for lay, r0, c0, block, scale, _ in specs:
            if lay == layer:
                covered[r0:r0 + block.shape[0], c0:c0 + block.shape[1]] += 1
                assert np.array_equal(block, w[r0:r0 + block.shape[0], c0:c0 + block.shape[1]])
                assert scale == np.max(np.abs(w))
        assert np.all(covered == 1)
    seeds = {network.tile_seed(1, k) for k in range(len(specs))}
    assert len(seeds) == len(specs)  # every tile has its own device instances


def test_perfectly_programmed_noiseless_tiles_reproduce_the_float_network(data_and_params):
    """Exact target conductances, no read noise and an ideal periphery: the analog forward
    pass equals the float one (a closed-form limit of the whole mapping)."""
    data, params = data_and_params
    stat = pcm.StatisticalModel(read_noise_scale=0.0)
    # ranges calibrated on the very inputs evaluated, so nothing saturates
    specs = network.build_tiles(params, data.x_test, crossbar.Periphery(
        dac_bits=0, adc_bits=0), stat, 40, 12)
    tiles = []
    for k, (layer, r0, c0, block, scale, periphery) in enumerate(specs):
        gp, gm = crossbar.weights_to_conductances(block, scale, stat.g_max)
        n = block.size
        state = programming.TileState(np.concatenate([gp.ravel(), gm.ravel()]),
                                      np.zeros(2 * n), np.zeros(2 * n), np.zeros(2 * n),
                                      pcm.draw_device_params(1, 2 * n, pcm.PulseModel()))
        tiles.append(network.Tile(layer, r0, c0, block, scale, periphery, state, k,
                                  np.ones(2 * n, dtype=np.int64)))
    hook = network.analog_hook(tiles, stat, 100.0, 3)
    analog = digits.forward(params, data.x_test, matmul=hook)
    assert np.allclose(analog, digits.forward(params, data.x_test), rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def net_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("net") / "net.h5"
    return run_scenario(parse_scenario(NET), out)


def test_network_run_records_the_accuracy_table(net_trace):
    from imcsim.analysis.network import accuracy_table

    with Trace(net_trace) as tr:
        assert tr.status == "complete"
        table = accuracy_table(tr)
    assert table.methods == ["verify", "gdp"] and list(table.times) == [1.0, 86400.0]
    assert table.mean.shape == (2, 2) and table.n_seeds == 2
    # programmed networks stay close to the float one (chance is 10 %)
    assert np.all(table.mean > table.float_accuracy - 0.1)
    assert all(0 < e < 0.2 for e in table.weight_error.values())
    assert table.pulses_mean["gdp"] <= 40 and table.pulses_mean["verify"] <= 40


def test_info_prints_the_accuracy_table(net_trace):
    result = CliRunner().invoke(main, ["info", str(net_trace)])
    assert result.exit_code == 0
    assert "mean ± std over 2 device seeds" in result.output
    rows = [line.split() for line in result.output.splitlines()
            if line.split()[:1] in (["verify"], ["gdp"])]
    assert len(rows) == 2 and all("±" in row for row in rows)


def test_same_scenario_same_accuracies(net_trace, tmp_path, read_datasets):
    again = run_scenario(parse_scenario(NET), tmp_path / "again.h5")
    assert read_datasets(again) == read_datasets(net_trace)


def test_gdp_loop_draws_stay_clear_of_the_evaluation_reads(gdp_loops):
    """The check reads deployed tiles at counters 1 (calibration) and 10 + k (times); GDP's
    in-loop reads use counter0 + 1 + k of the same READ stream, so its counter0 must sit
    above every evaluation counter or a chip's read noise repeats GDP's own."""
    seen = gdp_loops
    w = np.random.default_rng(2).standard_normal((12, 6))
    periphery = crossbar.Periphery(dac_bits=8, adc_bits=8, adc_full_scale=50e-6)
    specs = [(0, 0, 0, w, float(np.abs(w).max()), periphery)]
    network.program_tiles(specs, "gdp", pcm.VerifyPolicy(differential=True),
                          programming.GDPPolicy(iterations=20, batch=16), pcm.PulseModel(),
                          pcm.StatisticalModel(), 4)
    (counter0, iterations), = seen
    evaluation = range(1, 10 + 10 ** 6)
    assert counter0 >= evaluation.stop or counter0 + iterations + 2 <= evaluation.start
