"""On-device training on memristor tiles: the three update rules, determinism, the trace."""

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.config import parse_scenario
from imcsim.physics import memristor
from imcsim.runner import run_scenario
from imcsim.scenarios import mixed_precision as mp
from imcsim.store import Trace


def test_nominal_step_is_one_mid_window_pulse():
    model = memristor.BulkSwitchingModel()
    g_mid = 0.5 * (model.g_min + model.g_max)
    b = (model.g_max - model.g_min) / (1 - np.exp(-model.pulses_full / model.a_potentiation))
    dg = (model.g_min + b - g_mid) * (1 - np.exp(-1 / model.a_potentiation))
    assert mp.nominal_step(model, 2.0) == pytest.approx(dg * 2.0 / (0.5 * (model.g_max
                                                                         - model.g_min)))


@pytest.fixture(scope="module")
def results():
    """Final accuracy and pulses of every rule over three seeds (about 5 s in all)."""
    out = {}
    for rule in mp.RULES:
        runs = [mp.train(rule, mp.TrainingConfig(seed=seed)) for seed in (0, 1, 2)]
        out[rule] = (np.mean([h.accuracy[-1] for h in runs]),
                     np.mean([h.pulses_mean[-1] for h in runs]), runs)
    return out


def test_mixed_precision_is_within_two_points_of_float_and_analog_sgd_is_worse(results):
    float_acc, _, _ = results["float"]
    mixed_acc, mixed_pulses, _ = results["mixed"]
    analog_acc, _, _ = results["analog"]
    assert float_acc > 0.9
    assert mixed_acc > float_acc - 0.02
    assert analog_acc < float_acc - 0.1  # small updates are lost below one device step
    assert 0 < mixed_pulses < 16 * 15 * 43  # pulses only where the accumulator crossed ε


def test_pulses_stay_within_the_cap_and_conductances_in_the_window(results):
    model = memristor.BulkSwitchingModel()
    for rule in ("analog", "mixed"):
        for history in results[rule][2]:
            assert history.pulses.max() <= 16 * 15 * 43
            g = history.conductance[-1]
            span = model.g_max - model.g_min
            assert g.min() >= model.g_min - 5 * model.sigma_d2d_window * span
            assert g.max() <= model.g_max + 5 * model.sigma_d2d_window * span


def test_transfer_to_a_fresh_chip_keeps_mixed_precision_accuracy(results):
    """Wu et al.'s transfer: trained weights written to other devices with a 0.5-level write
    error keep (nearly) their accuracy; one epoch of retraining recovers the rest."""
    history = results["mixed"][2][0]
    frozen, retrained = mp.transfer(history, mp.TrainingConfig(seed=0))
    assert frozen > history.accuracy[-1] - 0.05
    assert retrained > history.accuracy[-1] - 0.02
    perfect, _ = mp.transfer(history, mp.TrainingConfig(seed=0), sigma_levels=0.0,
                             retrain_epochs=0)
    assert perfect > history.accuracy[-1] - 0.03  # only read noise and other devices differ


def test_same_seed_same_curves_with_any_thread_count(restore_threads):
    cfg = mp.TrainingConfig(epochs=3)
    runs = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        h = mp.train("mixed", cfg)
        runs.append((h.accuracy, h.loss, h.pulses_mean, h.pulses, h.conductance[-1]))
    for a, b in zip(*runs):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_training_scenario_writes_curves_and_info_prints_the_table(tmp_path):
    text = """
[run]
name = "mp"
[training]
epochs = 3
seeds = [0, 1]
"""
    out = run_scenario(parse_scenario(text), tmp_path / "mp.h5")
    with Trace(out) as tr:
        acc = tr.series("accuracy_mixed")
        assert acc.data.shape == (3, 2) and list(acc.t) == [1.0, 2.0, 3.0]
        assert tr.file["series/accuracy_mixed/t"].attrs["units"] == "epoch"
        assert tr.series("pulses_mixed").data.shape == (1, 2, 64 * 64 + 64 * 10)
        assert tr.series("conductance_analog").data.shape == (3, 2, 64 * 64 + 64 * 10)
        moved = tr.series("transfer_mixed").data[0]
        assert moved.shape == (2, 2) and np.all((moved > 0.5) & (moved <= 1.0))
    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 0
    assert "mean ± std over 2 seeds" in result.output
    plot = CliRunner().invoke(main, ["plot", str(out), "-o", str(tmp_path / "t.png")])
    assert plot.exit_code == 0 and (tmp_path / "t.png").stat().st_size > 10_000
    assert sum(line.split()[:1] in (["float"], ["analog"], ["mixed"])
               for line in result.output.splitlines()) == 3


def test_im2col_is_a_valid_convolution():
    gen = np.random.default_rng(3)
    x = gen.standard_normal((2, 36))  # two 6x6 images
    kernel = gen.standard_normal((3, 3))
    got = (mp.im2col(x, 6, 3) @ kernel.ravel()).reshape(2, 4, 4)
    img = x.reshape(2, 6, 6)
    expected = np.array([[[np.sum(img[b, i:i + 3, j:j + 3] * kernel) for j in range(4)]
                          for i in range(4)] for b in range(2)])
    assert np.allclose(got, expected, rtol=1e-12)


def test_lenet_backward_matches_finite_differences():
    """The gradient the training loop uses, through im2col, ReLU, pooling and the dense
    layers, against central differences of the loss (float rule, no tiles)."""
    layers = mp.lenet_layers(6, 2, 5, 3)
    weights, biases = mp._init_weights(layers, 4)
    gen = np.random.default_rng(5)
    x, y = gen.uniform(0, 1, (4, 36)), np.array([0, 1, 2, 1])

    def loss_and_grads(ws):
        inputs, caches, h = [], [], x
        for k, layer in enumerate(layers):
            a = layer.pre(h)
            h, cache = layer.post(a @ ws[k] + biases[k])
            inputs.append(a)
            caches.append(cache)
        z = h - h.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(4), y]))
        dz = p.copy()
        dz[np.arange(4), y] -= 1.0
        dz /= 4
        grads = [None] * len(layers)
        for k in range(len(layers) - 1, -1, -1):
            grads[k] = inputs[k].T @ dz
            if k > 0:
                dz = layers[k - 1].post_backward(dz @ ws[k].T, caches[k - 1])
        return loss, grads

    _, grads = loss_and_grads(weights)
    for k in range(len(layers)):
        for idx in [(0, 0), (weights[k].shape[0] - 1, weights[k].shape[1] - 1)]:
            plus = [w.copy() for w in weights]
            minus = [w.copy() for w in weights]
            plus[k][idx] += 1e-6
            minus[k][idx] -= 1e-6
            numeric = (loss_and_grads(plus)[0] - loss_and_grads(minus)[0]) / 2e-6
            assert grads[k][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_lenet_mixed_precision_tracks_float():
    accs = {}
    for rule in ("float", "mixed"):
        accs[rule] = np.mean([mp.train(rule, mp.TrainingConfig(
            seed=s, architecture="lenet", channels=16, hidden=(64,), epochs=20)).accuracy[-1]
            for s in (0, 1, 2)])
    assert accs["float"] > 0.9 and accs["mixed"] > accs["float"] - 0.02


def test_training_reads_mnist_idx_files_when_pointed_to(tmp_path):
    """A tiny data set in MNIST's four-file IDX layout (written here; nothing downloaded)."""
    import struct

    def idx(array, path):
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        header += b"".join(struct.pack(">I", d) for d in array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    gen = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for part, n in (("train", 120), ("t10k", 40)):
        labels = gen.integers(0, 3, n)
        images = np.zeros((n, 8, 8))
        for k, label in enumerate(labels):  # class = which third of the image is bright
            images[k, :, 3 * label:3 * label + 2] = 200
        idx(images, folder / f"{part}-images-idx3-ubyte")
        idx(labels, folder / f"{part}-labels-idx1-ubyte")
    text = f"""
[run]
name = "mnist"
[training]
dataset = "mnist"
mnist_dir = "{folder}"
epochs = 3
rules = ["mixed"]
seeds = [0]
"""
    out = run_scenario(parse_scenario(text), tmp_path / "m.h5")
    with Trace(out) as tr:
        assert tr.series("accuracy_mixed").data[-1, 0] > 0.9  # an easy, separable task
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(str(folder), str(tmp_path / "nowhere")))
    result = CliRunner().invoke(main, ["run", str(bad), "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "training.mnist_dir: no such folder" in result.stderr
    assert not (tmp_path / "x.h5").exists()
