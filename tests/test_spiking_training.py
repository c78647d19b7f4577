"""Training the spiking core: DSTD against the exact closed form (their Theorem 1), both
gradients against finite differences, the study's trace, determinism, the CLI, bad input."""

from pathlib import Path

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.config import parse_scenario
from imcsim.errors import InputError
from imcsim.physics import spiking as sp
from imcsim.runner import run_scenario
from imcsim.scenarios import spiking as ss
from imcsim.store import Trace

SHIPPED = Path(ss.__file__).with_name("spiking_digits.toml")

TINY = """
[run]
name = "tiny_spiking"
seed = 3
[spiking]
hidden = [6]
epochs = 2
batch = 64
seeds = [0, 1]
"""


def _random_layer(seed, n_in=200, n_out=10, batch=50, e_rev=1.0, mean=0.0, std=0.1):
    rng = np.random.default_rng(seed)
    t_in = rng.uniform(0.0, 1.0, (batch, n_in))
    w = rng.normal(mean, std, (n_in, n_out))
    return t_in, w, sp.reversal_beta(w, e_rev, -e_rev)


def _dstd_error(t_in, w, beta, steps, offset_fraction=0.5):
    exact = sp.layer_spike_times(t_in, w, beta, return_v_end=True)[1]
    approx = ss.dstd_layer(t_in, w, beta, steps, offset_fraction / steps)
    return float(np.mean(np.abs(approx - exact)))


def test_dstd_is_exact_for_the_top_down_model_at_any_grid():
    t_in, w, _ = _random_layer(0)
    exact = (1.0 - t_in) @ w  # v(1) of the ideal core
    for steps, frac in ((1, 0.3), (3, 0.9), (15, 0.01)):
        v = ss.dstd_layer(t_in, w, np.zeros_like(w), steps, frac / steps)
        np.testing.assert_allclose(v, exact, rtol=0, atol=1e-12)


def test_dstd_error_falls_as_grid_step_squared_and_as_one_over_e():
    # Their Theorem 1: |v(1) − v̂(1)| = O(Δτ²/|E|) once f·Δτ is small; 1000 random spikes per
    # sample as in their Fig. 3a, weights small enough for the asymptotic regime.
    steps = np.array([8, 16, 32, 64])
    errors = {e: np.array([_dstd_error(*_random_layer(1, n_in=1000, batch=40, std=0.003,
                                                      e_rev=e), m) for m in steps])
              for e in (4.0, 32.0)}
    for e, err in errors.items():
        slope = np.polyfit(np.log(steps), np.log(err), 1)[0]
        assert -2.15 < slope < -1.85, (e, slope)
    assert 5.5 < errors[4.0][1] / errors[32.0][1] < 9.0  # 1/|E| would give 8


def test_dstd_converges_to_the_exact_core_even_far_from_the_asymptotic_regime():
    # |E| = 1 and large weights (f·Δτ ~ 1 at M = 16): slower, but still convergent.
    t_in, w, beta = _random_layer(2, n_in=1000, batch=40, std=0.05, e_rev=1.0)
    errors = [_dstd_error(t_in, w, beta, m) for m in (4, 16, 64, 256)]
    assert np.all(np.diff(errors) < 0)
    assert errors[-1] < 1e-5 < errors[0]


def _fd(fun, x, index, eps=1e-6):
    xp, xm = x.copy(), x.copy()
    xp[index] += eps
    xm[index] -= eps
    return (fun(xp) - fun(xm)) / (2 * eps)


@pytest.mark.parametrize("method", ["dstd", "exact"])
@pytest.mark.parametrize("model", ["bottom_up", "top_down"])
def test_network_gradient_matches_central_finite_differences(method, model):
    cfg = ss.SpikingConfig(hidden=(7,), spike_noise=0.0, gamma1=0.3, dstd_steps=6, leak=0.2,
                           fire_rate="calibrated" if model == "bottom_up" else "unit")
    data = ss.load_data(cfg)
    x, y = data.x_train[:24], data.y_train[:24]
    weights = ss.init_layers(cfg, data.x_train[:64], model)
    offsets = [0.07, 0.11]

    def loss(ws):
        return ss.loss_and_grad(ws, x, y, model, method, cfg, offsets)[0]

    _, grads, _ = ss.loss_and_grad(weights, x, y, model, method, cfg, offsets)
    rng = np.random.default_rng(2)
    checked = 0
    for layer in (0, 1):
        for _ in range(6):
            j, i = rng.integers(weights[layer].shape[0]), rng.integers(weights[layer].shape[1])
            if abs(weights[layer][j, i]) < 1e-3:
                continue  # β jumps where w changes sign: no derivative there
            fd = _fd(lambda wl, layer=layer: loss([wl if k == layer else weights[k]
                                                   for k in range(2)]),
                     weights[layer], (j, i))
            assert grads[layer][j, i] == pytest.approx(fd, rel=1e-5, abs=1e-8)
            checked += abs(fd) > 1e-6
    assert checked >= 6  # most draws have a non-zero gradient


@pytest.mark.parametrize("method", ["dstd", "exact"])
def test_input_time_gradient_matches_central_finite_differences(method):
    t_in, w, beta = _random_layer(3, n_in=12, n_out=5, batch=4, e_rev=2.0, mean=0.05,
                                  std=0.3)
    grad_v = np.random.default_rng(4).normal(size=(4, 5))

    def objective(t):
        if method == "dstd":
            v = ss.dstd_layer(t, w, beta, 9, 0.04, leak=0.3)
        else:
            v = sp.layer_spike_times(t, w, beta, leak=0.3, return_v_end=True)[1]
        return float(np.sum(grad_v * v))

    if method == "dstd":
        _, cache = ss.dstd_layer(t_in, w, beta, 9, 0.04, leak=0.3, cache=True)
        _, grad_t = ss.dstd_layer_backward(grad_v, w, beta, cache)
    else:
        _, grad_t = sp.layer_gradients(t_in, w, beta, grad_v, leak=0.3)
    for b, j in ((0, 0), (1, 5), (3, 11), (2, 7)):
        assert grad_t[b, j] == pytest.approx(_fd(objective, t_in, (b, j)), rel=1e-5, abs=1e-9)


def test_trained_network_learns_and_predict_agrees_with_the_core():
    cfg = ss.SpikingConfig(epochs=3, hidden=(12,))
    data = ss.load_data(cfg)
    net = ss.train(cfg, "bottom_up", "dstd", data)
    assert net.history["accuracy"][-1] > 0.6  # 10 classes: chance is 0.1
    assert len(net.history["loss"]) == 3 and net.history["loss"][-1] < net.history["loss"][0]
    t_out = sp.network_spike_times(data.x_test, net.layers, beta_fire=1 / cfg.e_dis)
    np.testing.assert_array_equal(net.predict(data.x_test), np.argmin(t_out, axis=1))
    for w, beta in net.layers:
        np.testing.assert_array_equal(beta, sp.reversal_beta(w, cfg.e_plus, cfg.e_minus))
    assert all(np.all(b == 0) for _, b in net.on_model("top_down").layers)
    assert ss.encode(np.array([0.0, 0.25, 1.0])).tolist() == [1.0, 0.75, 0.0]


def test_study_trace_holds_curves_weights_and_cross_model_accuracy(tmp_path):
    out = run_scenario(parse_scenario(TINY), tmp_path / "s.h5")
    with Trace(out) as tr:
        assert tr.status == "complete"
        acc = tr.series("accuracy_bottom_up_dstd")
        assert acc.data.shape == (2, 2) and list(acc.t) == [1.0, 2.0]
        assert tr.file["series/accuracy_bottom_up_dstd/t"].attrs["units"] == "epoch"
        w = tr.series("weights_top_down_exact_layer0")
        assert w.data.shape == (1, 2, 16, 6) and w.units == "1"
        assert "V_swing" in tr.file["series/weights_top_down_exact_layer0/data"].attrs[
            "normalisation"]
        assert np.all(tr.series("beta_top_down_exact_layer1").data == 0)
        final = tr.series("final_accuracy_top_down_dstd").data[-1]
        assert final.shape == (2, 2) and np.all((final >= 0) & (final <= 1))
        assert tr.metrics()["accuracy_top_down_dstd_other"][0] == pytest.approx(
            final[:, 1].mean())
        times = tr.series("test_times_bottom_up_dstd_layer1").data[-1]
        inputs = tr.group["spiking"]["test_input_times"][()]
        assert times.shape == (2, inputs.shape[0], 10)
        weights = [tr.series(f"weights_bottom_up_dstd_layer{k}").data[-1][0] for k in (0, 1)]
        layers = [(wk, sp.reversal_beta(wk, 2.80, -1.53)) for wk in weights]
        np.testing.assert_array_equal(
            sp.network_spike_times(inputs, layers, beta_fire=1 / 6.44), times[0])
        final_bu = tr.series("final_accuracy_bottom_up_dstd").data[-1]
    net, t_test, y_test = ss.load_trained(out, "bottom_up", "dstd", seed_index=1)
    assert net.config.seed == 1 and net.beta_fire == pytest.approx(1 / 6.44)
    assert net.accuracy(t_test, y_test) == final_bu[1, 0]
    assert net.on_model("top_down").accuracy(t_test, y_test) == final_bu[1, 1]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "mean ± std over 2 seeds" in info.output and "top_down    exact" in info.output
    png = tmp_path / "s.png"
    plot = CliRunner().invoke(main, ["plot", str(out), "-o", str(png)])
    assert plot.exit_code == 0 and png.stat().st_size > 10_000


def test_same_bytes_with_one_and_two_threads(tmp_path, restore_threads, read_datasets):
    text = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 2", "epochs = 1")
    files = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        files.append(run_scenario(parse_scenario(text), tmp_path / f"t{threads}.h5"))
    assert read_datasets(files[0]) == read_datasets(files[1])


def test_single_layer_network_is_a_valid_study():
    loaded = parse_scenario(TINY.replace("hidden = [6]", "hidden = []"))
    assert loaded.scenario.spiking.config(0).hidden == ()
    cfg = loaded.scenario.spiking.config(0)
    weights = ss.init_layers(cfg, ss.load_data(cfg).x_train[:32], "top_down")
    assert [w.shape for w in weights] == [(16, 10)]


def test_shipped_scenario_runs_end_to_end_on_a_tiny_setting(tmp_path):
    text = SHIPPED.read_text()
    loaded = parse_scenario(text)
    assert loaded.scenario.kind == "spiking" and loaded.scenario.spiking.epochs >= 20
    tiny = (text.replace("epochs = 30", "epochs = 1").replace("seeds = [0, 1, 2]", "seeds = [0]")
            .replace('methods = ["dstd", "exact"]', 'methods = ["dstd"]'))
    assert tiny != text
    out = run_scenario(parse_scenario(tiny), tmp_path / "d.h5")
    with Trace(out) as tr:
        assert tr.series("accuracy_top_down_dstd").data.shape == (1, 1)


@pytest.mark.parametrize("line, message", [
    ("e_minus = 1.5", "spiking.e_minus: must be < 0"),
    ("e_dis = 0.8", "spiking.e_dis: must be > 1"),
    ("dstd_steps = -2", "spiking.dstd_steps: must be > 0"),
    ("dstd_steps = 0", "spiking.dstd_steps"),
    ('models = ["bottom_up", "bottom_up"]', "spiking.models: an entry is listed twice"),
    ('methods = ["adjoint"]', "spiking.methods[0]"),
    ("pool = 3", "spiking.pool"),
    ("tau_in = 2.0", "spiking.tau_in"),
    ("lerning_rate = 0.1", "spiking.lerning_rate: unknown key"),
])
def test_bad_settings_are_input_errors_naming_the_field(tmp_path, line, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(TINY + line + "\n")
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY + line + "\n")
    result = CliRunner().invoke(main, ["run", str(bad), "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "error:" in result.stderr
    assert not (tmp_path / "x.h5").exists()
