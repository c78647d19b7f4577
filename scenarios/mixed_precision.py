"""On-device training of an MLP on bulk-switching memristor tiles: float SGD, plain analog SGD
and mixed-precision updates (Nandakumar et al., Front. Neurosci. 2020; as used on chip by
Wu, ..., Lu, arXiv 2305.14547).

Mapping. Every weight is one memristor against a fixed reference conductance G_ref = (G_min +
G_max)/2 of the nominal window: W = (G − G_ref)·w_max/G_half, G_half = (G_max − G_min)/2, so
the window spans ±w_max. Initial weights (He initialisation, clipped) are written exactly,
standing for a program-and-verify before training.

Each minibatch (all rules see the same batches and initial weights):

* forward: every layer's product x·W runs on its tile (:func:`crossbar.tile_mvm`) with the
  devices read at this batch (relative read noise), an 8-bit DAC whose range follows the
  batch's largest |x| (dynamic input scaling) and an ADC whose full scale is set once per
  layer from the first batch (3× its largest current); bias and ReLU are digital;
* backward: the error of a hidden layer, δ·Wᵀ, runs on the same tile transposed (columns
  driven, rows read), with the same periphery rules; the weight gradient xᵀδ/B is digital;
* update, by rule:
  - ``float``: the weights are float numbers updated by SGD (no tiles at all: the baseline);
  - ``analog``: ΔW = −η∇ becomes n = round(ΔW/ε) pulses at once (|n| ≤ ``max_pulses``), ε
    the nominal weight change of one pulse at mid-window: small updates are lost, large ones
    are applied through the nonlinear, noisy, asymmetric device;
  - ``mixed``: χ ← χ − η∇ accumulates in float; n = trunc(χ/ε) pulses where |χ| ≥ ε, and
    χ ← χ − n·ε (the nominal change, not a verified one).
Biases are digital and updated by SGD under every rule. Pulse k of a device draws its noise
at its own running pulse count, so results do not depend on thread count or batching.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from imcsim.physics import crossbar, memristor
from imcsim.scenarios import digits

RULES = ("float", "analog", "mixed")
PROGRAM_STREAM = 23  # programming error of a transfer to fresh devices


@dataclass(frozen=True)
class TrainingConfig:
    """Training settings: MLP ``hidden`` sizes, ``epochs``, ``batch``, learning rate ``lr``,
    weight range ``w_max`` (the window maps to ±w_max), ``max_pulses`` per update and device,
    DAC/ADC ``dac_bits``/``adc_bits``, ``v_read`` (V), ``seed`` (data split, initial weights,
    batch order and devices); ``architecture`` "mlp" or "lenet" (a 3×3 convolution with
    ``channels`` filters as an im2col MVM, 2×2 average pooling, one dense hidden layer of
    hidden[0] units, the output layer)."""

    hidden: tuple[int, ...] = (64,)
    epochs: int = 15
    batch: int = 32
    lr: float = 0.1
    w_max: float = 1.0
    max_pulses: int = 16
    dac_bits: int = 8
    adc_bits: int = 8
    v_read: float = 0.2
    seed: int = 0
    architecture: str = "mlp"
    channels: int = 8
    model: memristor.BulkSwitchingModel = field(default_factory=memristor.BulkSwitchingModel)


@dataclass
class History:
    """Per-epoch test accuracy, training loss and cumulative mean pulses per device."""

    accuracy: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    pulses_mean: list = field(default_factory=list)
    pulses: np.ndarray | None = None  # per device, at the end
    conductance: list = field(default_factory=list)  # per epoch, all devices (S)
    weights: list = field(default_factory=list)  # final weights (read from the devices)
    biases: list = field(default_factory=list)


def nominal_step(model: memristor.BulkSwitchingModel, w_max: float) -> float:
    """ε: weight change of one potentiation pulse at mid-window on a nominal device."""
    g_mid = 0.5 * (model.g_min + model.g_max)
    dg = memristor.pulse_response(model, 1, up=True, g0=g_mid)[1] - g_mid
    return float(dg * w_max / (0.5 * (model.g_max - model.g_min)))


class _Tiles:
    """The devices of every layer, flat, with their per-device parameters."""

    def __init__(self, shapes, cfg: TrainingConfig, weights, device_seed: int,
                 program_sigma: float = 0.0):
        m = cfg.model
        self.shapes = shapes
        self.sizes = [a * b for a, b in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        n = int(self.offsets[-1])
        self.dev = memristor.draw_devices(m, n, device_seed)
        self.g_ref = 0.5 * (m.g_min + m.g_max)
        self.g_half = 0.5 * (m.g_max - m.g_min)
        self.per_siemens = cfg.w_max / self.g_half
        w = np.concatenate([np.clip(x, -cfg.w_max, cfg.w_max).ravel() for x in weights])
        target = self.g_ref + w / self.per_siemens
        if program_sigma > 0.0:  # write-verify error of the transfer to a fresh chip
            from imcsim.physics import rng

            target = target + program_sigma * rng.normals(device_seed, PROGRAM_STREAM, (n,))
        self.g = np.clip(target, self.dev.g_min, self.dev.g_max)
        self.count = np.zeros(n, dtype=np.int64)
        self.read_buffer = np.empty(n)

    def weights(self):
        """Weights the devices hold now (noise-free read)."""
        return [(self.layer(k, self.g) - self.g_ref) * self.per_siemens
                for k in range(len(self.shapes))]

    def layer(self, k, flat):
        return flat[self.offsets[k]:self.offsets[k + 1]].reshape(self.shapes[k])


def _periphery(cfg, input_range, full_scale):
    return crossbar.Periphery(dac_bits=cfg.dac_bits, adc_bits=cfg.adc_bits,
                              input_range=max(input_range, 1e-12), v_read=cfg.v_read,
                              adc_full_scale=max(full_scale, 1e-15))


def _tile_product(g, g_ref, x, cfg, per_siemens, full_scale):
    """x·W on a tile (weight units), W = (g − g_ref)·per_siemens."""
    p = _periphery(cfg, float(np.max(np.abs(x))), full_scale)
    return crossbar.tile_mvm(g, np.full_like(g, g_ref), x, p, per_siemens * 1.0, 1.0)


def train(rule: str, cfg: TrainingConfig, data: digits.DataSplit | None = None) -> History:
    """Train the MLP with one update rule; returns its history (accuracy on the test set).
    BLAS runs on one thread, so the result does not depend on its thread count."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _train(rule, cfg, data)


@dataclass
class Layer:
    """One weight layer: ``pre`` turns the layer input into the rows fed to the tile (identity
    for a dense layer, im2col patches for a convolution); ``post`` turns the product into the
    next layer's input and ``post_backward`` maps a gradient back through it (with the cache
    ``post`` returned). ``post_tangent(dz, cache)`` is the Jacobian-vector product of ``post``
    at the point its cache was taken (the forward pass of an exact Hessian-vector product)."""

    shape: tuple[int, int]
    pre: object
    post: object
    post_backward: object
    post_tangent: object = None


def _relu(z):
    return np.maximum(z, 0.0), z > 0.0


def _identity(z):
    return z, None


def mlp_layers(sizes) -> list[Layer]:
    """Dense layers with ReLU between them."""
    layers = []
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = k == len(sizes) - 2
        masked = (lambda d, c: d) if last else (lambda d, mask: d * mask)
        layers.append(Layer((a, b), lambda h: h, _identity if last else _relu, masked, masked))
    return layers


def im2col(x, side: int, k: int) -> np.ndarray:
    """(B, side²) images -> (B·(side−k+1)², k²) patches of a valid k×k convolution."""
    n = side - k + 1
    img = x.reshape(-1, side, side)
    cols = np.empty((img.shape[0], n, n, k * k))
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i * k + j] = img[:, i:i + n, j:j + n]
    return cols.reshape(-1, k * k)


def lenet_layers(side: int, channels: int, hidden: int, classes: int, k: int = 3
                 ) -> list[Layer]:
    """A LeNet-style CNN: k×k convolution with ``channels`` filters (an im2col MVM on the
    tile), ReLU, 2×2 average pooling, a dense hidden layer and the output layer."""
    n = side - k + 1
    pooled = n // 2

    def conv_post(z):
        b = z.shape[0] // (n * n)
        a = np.maximum(z, 0.0).reshape(b, n, n, channels)
        pool = a[:, :2 * pooled, :2 * pooled].reshape(b, pooled, 2, pooled, 2, channels)
        return pool.mean(axis=(2, 4)).reshape(b, -1), (z > 0.0, b)

    def conv_back(d, cache):
        mask, b = cache
        up = np.repeat(np.repeat(d.reshape(b, pooled, pooled, channels) / 4.0, 2, axis=1),
                       2, axis=2)
        full = np.zeros((b, n, n, channels))
        full[:, :2 * pooled, :2 * pooled] = up
        return full.reshape(-1, channels) * mask

    def conv_tangent(dz, cache):
        mask, b = cache
        a = (dz * mask).reshape(b, n, n, channels)
        pool = a[:, :2 * pooled, :2 * pooled].reshape(b, pooled, 2, pooled, 2, channels)
        return pool.mean(axis=(2, 4)).reshape(b, -1)

    flat = pooled * pooled * channels
    return [Layer((k * k, channels), lambda x: im2col(x, side, k), conv_post, conv_back,
                  conv_tangent),
            *mlp_layers([flat, hidden, classes])]


def _init_weights(layers, seed):
    """He-normal weights and zero biases of every layer (deterministic in the seed)."""
    gen = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    return ([gen.standard_normal(l.shape) * np.sqrt(2.0 / l.shape[0]) for l in layers],
            [np.zeros(l.shape[1]) for l in layers])


def network_layers(cfg: TrainingConfig, features: int, classes: int) -> list[Layer]:
    """The layers of ``cfg.architecture`` for inputs of ``features`` pixels."""
    if cfg.architecture == "lenet":
        return lenet_layers(round(np.sqrt(features)), cfg.channels, cfg.hidden[0], classes)
    return mlp_layers([features, *cfg.hidden, classes])


def _train(rule, cfg, data, start=None, device_seed=None, program_sigma=0.0):
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    data = data or digits.load_digits_split(cfg.seed)
    layers = network_layers(cfg, data.x_train.shape[1], int(data.y_train.max()) + 1)
    if start is None:
        if cfg.architecture == "lenet":
            start = _init_weights(layers, cfg.seed)
        else:
            params = digits.init_mlp([layers[0].shape[0], *(l.shape[1] for l in layers)],
                                     cfg.seed)
            start = (params.weights, params.biases)
    weights = [np.clip(w, -cfg.w_max, cfg.w_max) for w in start[0]]
    biases = [b.copy() for b in start[1]]
    shapes = [w.shape for w in weights]
    tiles = None if rule == "float" else _Tiles(
        shapes, cfg, weights, cfg.seed if device_seed is None else device_seed, program_sigma)
    eps = nominal_step(cfg.model, cfg.w_max)
    chi = [np.zeros(s) for s in shapes]
    full_scale = {}
    order_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7]))
    history = History()
    n_train = data.x_train.shape[0]
    step = 0
    seed = np.uint64(cfg.seed)

    def current_weights(read_counter):
        if tiles is None:
            return weights
        memristor.read(tiles.g, cfg.model.sigma_read, seed, np.uint64(read_counter),
                       tiles.read_buffer)
        return [tiles.layer(k, tiles.read_buffer) for k in range(len(shapes))]

    def product(key, a, g):
        """a·W on the tile (or in float), W = (g − g_ref)·per_siemens; the ADC full scale of
        each direction of each layer is 3x the largest current of its first batch."""
        if tiles is None:
            return a @ g
        if key not in full_scale:
            ideal = a @ ((g - tiles.g_ref) * tiles.per_siemens)
            a_range = max(float(np.max(np.abs(a))), 1e-30)
            full_scale[key] = (3.0 * float(np.max(np.abs(ideal))) / tiles.per_siemens
                               * cfg.v_read / a_range)
        return _tile_product(g, tiles.g_ref, a, cfg, tiles.per_siemens, full_scale[key])

    def forward(x, read_counter):
        gs = current_weights(read_counter)
        inputs, caches, h = [], [], x
        for k, layer in enumerate(layers):
            a = layer.pre(h)
            h, cache = layer.post(product(("fwd", k), a, gs[k]) + biases[k])
            inputs.append(a)
            caches.append(cache)
        return h, inputs, caches, gs

    for _epoch in range(cfg.epochs):
        losses = []
        perm = order_rng.permutation(n_train)
        for begin in range(0, n_train, cfg.batch):
            batch = perm[begin:begin + cfg.batch]
            x, y = data.x_train[batch], data.y_train[batch]
            logits, inputs, caches, gs = forward(x, 2 * step)
            logits = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            losses.append(float(-np.mean(np.log(p[np.arange(y.size), y] + 1e-300))))
            dz = p
            dz[np.arange(y.size), y] -= 1.0
            dz /= y.size
            grads = [None] * len(layers)
            for k in range(len(layers) - 1, -1, -1):
                grads[k] = inputs[k].T @ dz
                biases[k] -= cfg.lr * dz.sum(axis=0)
                if k > 0:  # the error of the layer below, through this tile transposed
                    gt = weights[k].T if tiles is None else gs[k].T.copy()
                    dh = product(("bwd", k), dz, gt)
                    dz = layers[k - 1].post_backward(dh, caches[k - 1])
            if tiles is None:
                for k in range(len(layers)):
                    weights[k] -= cfg.lr * grads[k]
            else:
                n_pulses = np.zeros(tiles.g.size, dtype=np.int64)
                for k in range(len(layers)):
                    update = -cfg.lr * grads[k]
                    if rule == "analog":
                        n = np.rint(update / eps)
                    else:
                        chi[k] += update
                        n = np.trunc(chi[k] / eps)
                    n = np.clip(n, -cfg.max_pulses, cfg.max_pulses)
                    if rule == "mixed":
                        chi[k] -= n * eps
                    n_pulses[tiles.offsets[k]:tiles.offsets[k + 1]] = n.ravel().astype(np.int64)
                memristor.apply_pulses(tiles.g, n_pulses, tiles.dev.g_min, tiles.dev.g_max,
                                       tiles.dev.a_potentiation, tiles.dev.a_depression,
                                       cfg.model.pulses_full, cfg.model.sigma_c2c, seed,
                                       np.uint64(0), tiles.count)
            step += 1
        history.accuracy.append(_accuracy(forward(data.x_test, 2 * step + 1)[0], data.y_test))
        history.loss.append(float(np.mean(losses)))
        history.pulses_mean.append(float(tiles.count.mean()) if tiles is not None else 0.0)
        if tiles is not None:
            history.conductance.append(tiles.g.copy())
    history.pulses = tiles.count.copy() if tiles is not None else None
    history.weights = tiles.weights() if tiles is not None else [w.copy() for w in weights]
    history.biases = [b.copy() for b in biases]
    if cfg.epochs == 0:
        history.accuracy.append(_accuracy(forward(data.x_test, 2 * step + 1)[0], data.y_test))
    return history


def _accuracy(logits, y) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def transfer(history: History, cfg: TrainingConfig, data: digits.DataSplit | None = None,
             retrain_epochs: int = 1, levels: int = 16, sigma_levels: float = 0.5):
    """Map trained weights to a fresh chip (other device instances, write-verify error of
    ``sigma_levels`` level separations of a ``levels``-level window, as in Wu et al.'s
    transfer study) and return (accuracy without retraining, accuracy after
    ``retrain_epochs`` of mixed-precision retraining on the new chip)."""
    import dataclasses

    from threadpoolctl import threadpool_limits

    data = data or digits.load_digits_split(cfg.seed)
    m = cfg.model
    sigma = sigma_levels * (m.g_max - m.g_min) / (levels - 1)
    fresh = cfg.seed + 1_000_003
    start = (history.weights, history.biases)
    with threadpool_limits(1, user_api="blas"):
        frozen = _train("mixed", dataclasses.replace(cfg, epochs=0), data, start=start,
                        device_seed=fresh, program_sigma=sigma)
        retrained = _train("mixed", dataclasses.replace(cfg, epochs=retrain_epochs), data,
                           start=start, device_seed=fresh, program_sigma=sigma)
    return frozen.accuracy[-1], retrained.accuracy[-1]


class TrainingRun:
    """The training study of a scenario with a ``[training]`` table, as a trace run."""

    def __init__(self, loaded, seed: int):
        from imcsim.config import resolve_path
        from imcsim.errors import InputError

        self.section = loaded.scenario.training
        self.data = None  # digits: each seed splits its own
        if self.section.dataset == "mnist":
            try:
                self.data = digits.load_mnist_idx(resolve_path(self.section.mnist_dir,
                                                               loaded.path))
            except (FileNotFoundError, ValueError) as exc:
                raise InputError(f"training.mnist_dir: {exc}") from None
        self.rules = list(self.section.rules)
        self.seeds = list(self.section.seeds)
        self.n_steps = len(self.rules) * len(self.seeds)
        self.writer = None

    def declare(self, writer):
        self.writer = w = writer
        sec = self.section
        w.set_attrs(training_rules=self.rules, training_seeds=self.seeds)
        n = len(self.seeds)
        for rule in self.rules:
            for name, units, desc in (
                    ("accuracy", "1", "test accuracy after each epoch, per seed"),
                    ("loss", "1", "mean training loss of each epoch, per seed"),
                    ("pulses_mean", "1", "mean pulses per device so far, per seed")):
                w.declare_series(f"{name}_{rule}", (n,), "f8", units, f"{rule}: {desc}",
                                 n=sec.epochs, time_units="epoch",
                                 time_description="epochs completed")
            data = self.data or digits.load_digits_split(self.seeds[0])
            layers = network_layers(sec.config(self.seeds[0]), data.x_train.shape[1],
                                    int(data.y_train.max()) + 1)
            n_dev = sum(a * b for a, b in (layer.shape for layer in layers))
            if rule != "float":
                w.declare_series(f"pulses_{rule}", (n, n_dev), "f8", "1",
                                 f"{rule}: pulses each device received over training, per "
                                 "seed [seed, device]", n=1, time_units="epoch",
                                 time_description="epochs completed")
                w.declare_series(f"conductance_{rule}", (n, n_dev), "f8", "S",
                                 f"{rule}: every device's conductance after each epoch "
                                 "[seed, device]", n=sec.epochs, time_units="epoch",
                                 time_description="epochs completed")
            w.declare_series(f"transfer_{rule}", (n, 2), "f8", "1",
                             f"{rule}: test accuracy of the trained weights written to a fresh "
                             "chip (0.5-level write error), without and after one epoch of "
                             "mixed-precision retraining [seed, (frozen, retrained)]", n=1,
                             time_units="epoch", time_description="epochs completed")
            w.declare_metric(f"accuracy_{rule}_final", "1",
                             f"{rule}: test accuracy after the last epoch, mean over seeds")
            w.declare_metric(f"pulses_{rule}_final", "1",
                             f"{rule}: mean pulses per device over training, mean over seeds")

    def run(self, progress=None):
        w = self.writer
        for rule in self.rules:
            histories, transfers = [], []
            for seed in self.seeds:
                cfg = self.section.config(seed)
                histories.append(train(rule, cfg, self.data))
                transfers.append(transfer(histories[-1], cfg, self.data))
                if progress is not None:
                    progress(1)
            epochs = self.section.epochs
            for epoch in range(epochs):
                for name in ("accuracy", "loss", "pulses_mean"):
                    w.append(f"{name}_{rule}", float(epoch + 1),
                             [getattr(h, name)[epoch] for h in histories])
                if rule != "float":
                    w.append(f"conductance_{rule}", float(epoch + 1),
                             [h.conductance[epoch] for h in histories])
            if rule != "float":
                w.append(f"pulses_{rule}", float(epochs), [h.pulses for h in histories])
            w.append(f"transfer_{rule}", float(epochs), transfers)
            w.set_metric(f"accuracy_{rule}_final",
                         float(np.mean([h.accuracy[-1] for h in histories])))
            w.set_metric(f"pulses_{rule}_final",
                         float(np.mean([h.pulses_mean[-1] for h in histories])))
            w.flush()
