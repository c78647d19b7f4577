"""Float training baseline: digits split, MNIST IDX reading, MLP gradient, training, hooks."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

from imcsim.scenarios.digits import (
    MLPParams,
    accuracy,
    forward,
    init_mlp,
    load_digits_split,
    load_mnist_idx,
    loss,
    loss_and_grad,
    read_idx,
    train_mlp,
)


@pytest.fixture(scope="module")
def split():
    return load_digits_split(0)


@pytest.fixture(scope="module")
def trained(split):
    """The default MLP on the seed-0 split, with its wall time."""
    t0 = time.perf_counter()
    params, history = train_mlp(split.x_train, split.y_train, seed=0)
    return params, history, time.perf_counter() - t0


def same_params(a: MLPParams, b: MLPParams) -> bool:
    return all(x.shape == y.shape and x.tobytes() == y.tobytes()
               for x, y in zip(a.arrays(), b.arrays(), strict=True))


# --------------------------------------------------------------------------------------------
# Digits split


def test_split_shapes_scaling_and_types(split):
    assert split.x_train.shape == (1347, 64) and split.x_test.shape == (450, 64)
    assert split.x_train.dtype == np.float64 and split.y_train.dtype == np.int64
    for x in (split.x_train, split.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    # Pixels are k/16 exactly.
    assert np.array_equal(split.x_train * 16, np.round(split.x_train * 16))


def test_split_is_disjoint_complete_and_stratified(split):
    from sklearn.datasets import load_digits

    from imcsim.scenarios.digits import stratified_split

    data = load_digits()
    train, test = stratified_split(data.target, seed=0, test_fraction=0.25)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(data.target)))
    np.testing.assert_array_equal(split.x_train, data.data[train] / 16.0)
    np.testing.assert_array_equal(split.x_test, data.data[test] / 16.0)
    np.testing.assert_array_equal(split.y_test, data.target[test])
    counts = np.bincount(data.target, minlength=10)
    test_counts = np.bincount(split.y_test, minlength=10)
    assert np.all(np.abs(test_counts - counts * 0.25) <= 0.5)  # round(n_c · 0.25) per class
    assert np.array_equal(test_counts + np.bincount(split.y_train, minlength=10), counts)
    # Interleaved, not sorted by class.
    assert np.any(np.diff(split.y_train) < 0) and np.any(np.diff(split.y_test) < 0)


def test_split_indices_disjoint_for_other_fractions():
    from imcsim.scenarios.digits import stratified_split

    y = np.repeat(np.arange(4), [10, 7, 3, 25])
    for fraction in (0.1, 0.5, 0.9):
        train, test = stratified_split(y, seed=3, test_fraction=fraction)
        assert np.intersect1d(train, test).size == 0
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(y.size))
        for c in range(4):  # every class lands on both sides
            assert np.any(y[train] == c) and np.any(y[test] == c)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(y, seed=0, test_fraction=1.0)


def test_split_is_a_pure_function_of_the_seed(split):
    again = load_digits_split(0)
    assert all(np.array_equal(a, b) for a, b in zip(split, again, strict=True))
    other = load_digits_split(1)
    assert not np.array_equal(split.y_train, other.y_train)
    assert not np.array_equal(split.x_test, other.x_test)


# --------------------------------------------------------------------------------------------
# MLP: gradient, training, determinism


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    params = init_mlp((5, 4, 3, 3), seed=2)
    for b in params.biases:
        b[:] = 0.1 * rng.standard_normal(b.shape)
    x = rng.standard_normal((7, 5))
    y = np.array([0, 1, 2, 2, 1, 0, 1])
    decay = 0.03
    value, grad = loss_and_grad(params, x, y, weight_decay=decay)
    assert value == pytest.approx(loss(params, x, y, weight_decay=decay), rel=1e-14)
    eps = 1e-6
    for a, g in zip(params.arrays(), grad.arrays(), strict=True):
        fd = np.empty_like(a)
        for k in np.ndindex(a.shape):
            saved = a[k]
            a[k] = saved + eps
            up = loss(params, x, y, weight_decay=decay)
            a[k] = saved - eps
            down = loss(params, x, y, weight_decay=decay)
            a[k] = saved
            fd[k] = (up - down) / (2 * eps)
        rel = np.linalg.norm(g - fd) / max(np.linalg.norm(g) + np.linalg.norm(fd), 1e-300)
        assert rel < 1e-6, (a.shape, rel)


def test_training_steps_along_that_gradient(split):
    """One full-batch step of plain SGD moves the initial weights by exactly −lr·∇loss."""
    x, y = split.x_train[:200], split.y_train[:200]
    lr, decay = 0.1, 1e-3
    start = init_mlp((64, 16, 10), seed=4)
    _, grad = loss_and_grad(start, x, y, weight_decay=decay)
    params, _ = train_mlp(x, y, hidden=(16,), epochs=1, lr=lr, batch=len(x), seed=4,
                          weight_decay=decay, optimizer="sgd", momentum=0.0, n_classes=10)
    for p, p0, g in zip(params.arrays(), start.arrays(), grad.arrays(), strict=True):
        # Only the order of the batch (and so of the float sums) differs.
        np.testing.assert_allclose(p, p0 - lr * g, rtol=1e-9, atol=1e-12)


def test_default_training_reaches_95_percent_quickly(split, trained):
    params, history, seconds = trained
    acc = accuracy(params, split.x_test, split.y_test)
    assert acc >= 0.95, acc
    assert seconds < 10.0, seconds
    assert params.layer_sizes == (64, 128, 10)
    assert len(history.loss) == len(history.train_accuracy) > 1
    assert history.loss[-1] < history.loss[0]
    assert history.train_accuracy[-1] >= 0.99


def test_same_seed_bit_identical_different_seed_differs(split):
    x, y = split.x_train, split.y_train
    kw = dict(hidden=(32,), epochs=3)
    a, ha = train_mlp(x, y, seed=7, **kw)
    b, hb = train_mlp(x, y, seed=7, **kw)
    c, _ = train_mlp(x, y, seed=8, **kw)
    assert same_params(a, b)
    assert ha.loss == hb.loss and ha.train_accuracy == hb.train_accuracy
    assert not any(np.array_equal(p, q) for p, q in zip(a.weights, c.weights, strict=True))


def test_weight_clipping_bounds_weights_not_biases(split):
    params, _ = train_mlp(split.x_train, split.y_train, hidden=(32,), epochs=3, clip=0.05,
                          seed=1, lr=1e-2)
    for w in params.weights:
        assert np.abs(w).max() <= 0.05
        assert np.mean(np.abs(w) == 0.05) > 0.01  # the bound is active
    assert max(np.abs(b).max() for b in params.biases) > 0.05


def test_validation_history_and_bad_arguments(split):
    x, y = split.x_train[:100], split.y_train[:100]
    _, h = train_mlp(x, y, hidden=(8,), epochs=2, validation=(split.x_test, split.y_test))
    assert len(h.val_accuracy) == 2 and 0.0 <= h.val_accuracy[-1] <= 1.0
    with pytest.raises(ValueError, match="clip"):
        train_mlp(x, y, clip=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        train_mlp(x, y, optimizer="rmsprop")
    with pytest.raises(ValueError, match="integer"):
        train_mlp(x, y.astype(float))
    with pytest.raises(ValueError, match="n_classes"):
        train_mlp(x, y, n_classes=3)


# --------------------------------------------------------------------------------------------
# matmul hook


def test_matmul_hook_called_once_per_layer_in_order(split, trained):
    params = trained[0]
    calls = []

    seen = []

    def exact(layer, x, w):
        calls.append((layer, x.shape, w.shape))
        seen.append(w)
        return x @ w

    x = split.x_test[:20]
    assert np.array_equal(forward(params, x, exact), forward(params, x))
    assert calls == [(0, (20, 64), (64, 128)), (1, (20, 128), (128, 10))]
    assert seen[0] is params.weights[0] and seen[1] is params.weights[1]

    two_hidden = init_mlp((64, 9, 7, 10), seed=0)
    calls.clear()
    forward(two_hidden, x, exact)
    assert [c[0] for c in calls] == [0, 1, 2]


def test_noisy_matmul_hook_lowers_accuracy(split, trained):
    params = trained[0]
    rng = np.random.default_rng(0)

    def noisy(layer, x, w):
        y = x @ w
        return y + 1.0 * np.std(y) * rng.standard_normal(y.shape)

    clean = accuracy(params, split.x_test, split.y_test)
    assert accuracy(params, split.x_test, split.y_test, matmul=noisy) < clean - 0.1

    def wrong_shape(layer, x, w):
        return (x @ w)[:, :-1]

    with pytest.raises(ValueError, match="shape"):
        forward(params, split.x_test, wrong_shape)


# --------------------------------------------------------------------------------------------
# MNIST IDX


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_tiny_mnist(folder, gz: bool):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 0], dtype=np.uint8),
    }
    for name, a in arrays.items():
        data = idx_bytes(a, 0x08)
        if gz and "train" in name:  # mixed: two gzipped, two plain
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_tiny_mnist(tmp_path, gz)
    data = load_mnist_idx(tmp_path)
    assert data.x_train.shape == (5, 12) and data.x_test.shape == (2, 12)
    np.testing.assert_array_equal(data.x_train * 255,
                                  arrays["train-images-idx3-ubyte"].reshape(5, 12))
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, [9, 0])
    assert data.y_train.dtype == np.int64 and data.x_test.max() <= 1.0
    images = load_mnist_idx(tmp_path, flatten=False).x_test
    assert images.shape == (2, 4, 3)


def test_read_idx_other_dtypes_and_malformed(tmp_path):
    a = (np.arange(6).reshape(2, 3) / 7).astype(">f4")
    (tmp_path / "f.idx").write_bytes(idx_bytes(a, 0x0D))
    out = read_idx(tmp_path / "f.idx")
    assert out.dtype == np.float32 and out.dtype.isnative and np.array_equal(out, a)
    (tmp_path / "short.idx").write_bytes(idx_bytes(a, 0x0D)[:-1])
    with pytest.raises(ValueError, match=r"short\.idx"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "junk.idx").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk.idx")


def test_mnist_missing_file_is_named(tmp_path):
    write_tiny_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist_idx(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"absent\.idx"):
        read_idx(tmp_path / "absent.idx")


def test_mnist_count_mismatch(tmp_path):
    write_tiny_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8), 0x08))
    with pytest.raises(ValueError, match="2 images"):
        load_mnist_idx(tmp_path)
