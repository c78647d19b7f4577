"""Float baseline for the training studies: digits / MNIST data and a small numpy MLP.

Later studies (PTO, MPT, AFP) map a trained network onto simulated crossbar tiles and compare
against this digital baseline. Everything here is numpy (float64) and deterministic:

* :func:`load_digits_split` — scikit-learn's bundled 8×8 digits (1,797 images, no download),
  pixels scaled to [0, 1], split stratified by class as a pure function of the seed.
* :func:`load_mnist_idx` — MNIST from local IDX files (optionally gzipped) when a user has
  them; nothing is ever downloaded.
* :func:`train_mlp` — an MLP (ReLU hidden layers, softmax cross-entropy) trained by minibatch
  Adam or SGD with momentum; the same seed gives bit-identical weights on the same machine
  whatever the BLAS thread count.
* :func:`forward` / :func:`accuracy` — inference with an optional hook
  ``matmul(layer_index, x, W) -> y`` that replaces the product ``x @ W`` of each layer, so a
  simulated analog tile can stand in for it. Biases are added digitally after the hook.

Weights are stored as ``(in, out)`` matrices, so a layer computes ``y = x @ W + b`` on a batch
``x`` of shape ``(n, in)``; a crossbar with ``in`` rows and ``out`` columns holds ``W`` as is.
The random numbers here shuffle data and initialise weights; they are no device physics, so
numpy's ``Generator`` is used rather than the counter-based streams of ``imcsim.physics.rng``.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

MatmulHook = Callable[[int, np.ndarray, np.ndarray], np.ndarray]

# Child seeds of SeedSequence(seed): weight initialisation and minibatch order are separate
# streams, so changing the number of epochs never changes the initial weights.
_STREAM_INIT = 0
_STREAM_BATCHES = 1


# --------------------------------------------------------------------------------------------
# Data


class DataSplit(NamedTuple):
    """Train and test sets: ``x`` float64 of shape (n, features) in [0, 1], ``y`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def stratified_split(y: np.ndarray, seed: int, test_fraction: float = 0.25
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a split that keeps the class proportions of ``y``.

    Each class ``c`` with ``n_c`` samples sends ``round(n_c · test_fraction)`` of them (at
    least one, and never all) to the test set. The result is a pure function of ``(y, seed)``;
    both index arrays are shuffled (so classes are interleaved).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if idx.size < 2:
            raise ValueError(f"class {c!r} has {idx.size} sample(s); a stratified split needs 2")
        idx = rng.permutation(idx)
        n_test = min(max(round(idx.size * test_fraction), 1), idx.size - 1)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def load_digits_split(seed: int, test_fraction: float = 0.25) -> DataSplit:
    """scikit-learn's bundled digits (8×8 = 64 features, 10 classes), split by class.

    Pixels (0…16 in the data set) are divided by 16 into [0, 1]. With the default
    ``test_fraction`` the split is 1,347 training and 450 test images.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float64) / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    train, test = stratified_split(y, seed, test_fraction)
    return DataSplit(x[train], y[train], x[test], y[test])


# IDX element types (LeCun's format): code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` compressed when its name ends so) into a native array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    except (OSError, EOFError) as exc:  # e.g. a corrupt gzip stream
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX payload holds {len(raw) - header} bytes, shape {shape} "
                         f"of {dtype.name} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_mnist_file(folder: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` in ``folder`` (the plain file wins when both exist)."""
    for name in (stem, stem + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {stem} (or {stem}.gz) not found in {folder}")


def load_mnist_idx(folder: str | Path, flatten: bool = True) -> DataSplit:
    """MNIST (or any data set in the same four-file IDX layout) from a local folder.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each optionally as ``<name>.gz``. Pixels (0…255) are
    divided by 255; with ``flatten`` images become rows of ``height·width`` features.
    Raises ``FileNotFoundError`` naming the first missing file, ``ValueError`` on a malformed
    file or on image and label counts that disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {folder}")
    paths = {key: _find_mnist_file(folder, stem) for key, stem in MNIST_FILES.items()}
    out = []
    for part in ("train", "test"):
        images = read_idx(paths[f"{part}_images"])
        labels = read_idx(paths[f"{part}_labels"])
        if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{paths[f'{part}_images']}: {images.shape[0]} images but "
                             f"{paths[f'{part}_labels']} holds labels of shape {labels.shape}")
        x = images.astype(np.float64) / 255.0
        if flatten:
            x = x.reshape(x.shape[0], -1)
        out += [x, labels.astype(np.int64)]
    return DataSplit(*out)


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class MLPParams:
    """Weights ``W[l]`` of shape (in, out) and biases ``b[l]`` of shape (out,), float64."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (self.weights[0].shape[0], *(w.shape[1] for w in self.weights))

    def copy(self) -> MLPParams:
        return MLPParams([w.copy() for w in self.weights], [b.copy() for b in self.biases])

    def arrays(self) -> list[np.ndarray]:
        """All parameters in a fixed order: W0, b0, W1, b1, …"""
        return [a for pair in zip(self.weights, self.biases) for a in pair]


@dataclass
class History:
    """Per-epoch training record, measured on the full sets after each epoch."""

    loss: list[float] = field(default_factory=list)  # objective: cross-entropy + L2 term
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)  # only with ``validation``


def init_mlp(sizes: Sequence[int], seed: int) -> MLPParams:
    """He-normal weights (std √(2/in)) and zero biases for layer sizes ``(in, h…, out)``."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer sizes must be ≥ 2 positive integers, got {sizes}")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[_STREAM_INIT])
    weights = [rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
               for n_in, n_out in itertools.pairwise(sizes)]
    biases = [np.zeros(n_out) for n_out in sizes[1:]]
    return MLPParams(weights, biases)


def layer_product(matmul: MatmulHook | None, layer: int, x: np.ndarray, w: np.ndarray
                  ) -> np.ndarray:
    """x @ w, or the hook's product for ``layer`` (e.g. through tiles), shape-checked."""
    if matmul is None:
        return x @ w
    y = np.asarray(matmul(layer, x, w))
    if y.shape != (x.shape[0], w.shape[1]):
        raise ValueError(f"matmul hook returned shape {y.shape} for layer {layer}, "
                         f"expected {(x.shape[0], w.shape[1])}")
    return y


def forward(params: MLPParams, x: np.ndarray, matmul: MatmulHook | None = None) -> np.ndarray:
    """Logits of shape (n, classes) for inputs ``x`` of shape (n, features).

    ``matmul(layer_index, x, W) -> y`` replaces ``x @ W`` of each layer (called exactly once
    per layer, in order, with the layer's input activations); the bias and the ReLU of hidden
    layers are applied digitally afterwards. ``None`` is the exact float product.
    """
    h = np.asarray(x, dtype=np.float64)
    last = len(params.weights) - 1
    for layer, (w, b) in enumerate(zip(params.weights, params.biases)):
        h = layer_product(matmul, layer, h, w) + b
        if layer < last:
            h = np.maximum(h, 0.0)
    return h


def predict(params: MLPParams, x: np.ndarray, matmul: MatmulHook | None = None) -> np.ndarray:
    """Predicted class of each row of ``x`` (int64)."""
    return np.argmax(forward(params, x, matmul), axis=1).astype(np.int64)


def accuracy(params: MLPParams, x: np.ndarray, y: np.ndarray,
             matmul: MatmulHook | None = None) -> float:
    """Fraction of rows of ``x`` classified as ``y``."""
    return float(np.mean(predict(params, x, matmul) == np.asarray(y)))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def loss(params: MLPParams, x: np.ndarray, y: np.ndarray, weight_decay: float = 0.0,
         matmul: MatmulHook | None = None) -> float:
    """Training objective: mean softmax cross-entropy + ``weight_decay/2 · Σ‖W‖²``."""
    logp = _log_softmax(forward(params, x, matmul))
    value = -float(np.mean(logp[np.arange(logp.shape[0]), np.asarray(y)]))
    if weight_decay:
        value += 0.5 * weight_decay * sum(float(np.sum(w * w)) for w in params.weights)
    return value


def loss_and_grad(params: MLPParams, x: np.ndarray, y: np.ndarray, weight_decay: float = 0.0
                  ) -> tuple[float, MLPParams]:
    """:func:`loss` and its exact gradient (backpropagation), as used by :func:`train_mlp`.

    Only weights are decayed, not biases. The gradient is an :class:`MLPParams` of the same
    shapes as ``params``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    n = x.shape[0]
    acts = [x]  # input of each layer
    h = x
    last = len(params.weights) - 1
    for layer, (w, b) in enumerate(zip(params.weights, params.biases)):
        h = h @ w + b
        if layer < last:
            h = np.maximum(h, 0.0)
            acts.append(h)
    logp = _log_softmax(h)
    rows = np.arange(n)
    value = -float(np.mean(logp[rows, y]))
    if weight_decay:
        value += 0.5 * weight_decay * sum(float(np.sum(w * w)) for w in params.weights)
    delta = np.exp(logp)
    delta[rows, y] -= 1.0
    delta /= n  # d loss / d logits
    gw: list[np.ndarray] = [np.empty(0)] * len(params.weights)
    gb: list[np.ndarray] = [np.empty(0)] * len(params.weights)
    for layer in range(last, -1, -1):
        w = params.weights[layer]
        gw[layer] = acts[layer].T @ delta
        if weight_decay:
            gw[layer] += weight_decay * w
        gb[layer] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ w.T) * (acts[layer] > 0.0)
    return value, MLPParams(gw, gb)


# --------------------------------------------------------------------------------------------
# Training

# Defaults: ≥ 96 % test accuracy on digits (load_digits_split) in about a second on 2 cores.
DEFAULT_HIDDEN = (128,)
DEFAULT_EPOCHS = 40
DEFAULT_LR = 2e-3
DEFAULT_BATCH = 32
DEFAULT_WEIGHT_DECAY = 1e-4


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (samples, features), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError("y holds negative class labels")
    if not np.all(np.isfinite(x)):
        raise ValueError("x holds NaN or infinite values")
    return x, y.astype(np.int64)


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch: int = DEFAULT_BATCH,
    seed: int = 0,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    clip: float | None = None,
    optimizer: str = "adam",
    momentum: float = 0.9,
    n_classes: int | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[MLPParams, History]:
    """Train an MLP ``features → hidden… → classes`` by minibatch gradient descent.

    ``optimizer`` is ``"adam"`` (β = 0.9, 0.999, ε = 1e-8) or ``"sgd"`` (heavy-ball momentum
    ``v ← momentum·v − lr·g``, ``W ← W + v``). Each epoch visits the training set once in a
    fresh random order; the last minibatch may be smaller. ``clip`` (> 0) clips every weight
    to ``[−clip, clip]`` after initialisation and after each step (biases stay free), for
    mapping to a bounded conductance range. ``n_classes`` defaults to ``max(y) + 1``.
    ``validation = (x_val, y_val)`` adds a per-epoch accuracy to the history.

    Deterministic: the same arguments and seed give bit-identical weights (float64; BLAS runs
    single-threaded here, so the thread settings of the process do not matter). Returns
    ``(params, history)``.
    """
    x, y = _check_xy(x, y)
    if x.shape[0] == 0:
        raise ValueError("no training samples")
    if epochs < 0 or batch < 1:
        raise ValueError(f"epochs must be ≥ 0 and batch ≥ 1, got {epochs} and {batch}")
    if not lr > 0.0 or weight_decay < 0.0:
        raise ValueError(f"lr must be > 0 and weight_decay ≥ 0, got {lr} and {weight_decay}")
    if clip is not None and not clip > 0.0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    n_out = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if n_out <= int(y.max()):
        raise ValueError(f"n_classes = {n_out} but y holds label {int(y.max())}")
    val = None if validation is None else _check_xy(*validation)

    # One BLAS thread: the products here are small (threads only add contention), and the
    # result cannot depend on how many threads BLAS would otherwise use.
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(x, y, (x.shape[1], *hidden, n_out), epochs, lr, batch, seed,
                      weight_decay, clip, optimizer, momentum, val)


def _train(x: np.ndarray, y: np.ndarray, sizes: Sequence[int], epochs: int, lr: float,
           batch: int, seed: int, weight_decay: float, clip: float | None, optimizer: str,
           momentum: float, validation: tuple[np.ndarray, np.ndarray] | None
           ) -> tuple[MLPParams, History]:
    params = init_mlp(sizes, seed)
    if clip is not None:
        for w in params.weights:
            np.clip(w, -clip, clip, out=w)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[_STREAM_BATCHES])
    state = params.arrays()
    m = [np.zeros_like(a) for a in state]  # momentum (SGD) or first moment (Adam)
    v = [np.zeros_like(a) for a in state]  # second moment (Adam)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = History()
    step = 0
    n = x.shape[0]
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            _, grad = loss_and_grad(params, x[idx], y[idx], weight_decay)
            step += 1
            for i, (a, g) in enumerate(zip(state, grad.arrays())):
                if optimizer == "adam":
                    m[i] *= beta1
                    m[i] += (1.0 - beta1) * g
                    v[i] *= beta2
                    v[i] += (1.0 - beta2) * g * g
                    m_hat = m[i] / (1.0 - beta1**step)
                    v_hat = v[i] / (1.0 - beta2**step)
                    a -= lr * m_hat / (np.sqrt(v_hat) + eps)
                else:
                    m[i] *= momentum
                    m[i] -= lr * g
                    a += m[i]
                if clip is not None and i % 2 == 0:  # arrays() order: W0, b0, W1, b1, …
                    np.clip(a, -clip, clip, out=a)
        history.loss.append(loss(params, x, y, weight_decay))
        history.train_accuracy.append(accuracy(params, x, y))
        if validation is not None:
            history.val_accuracy.append(accuracy(params, *validation))
    return params, history
