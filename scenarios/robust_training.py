"""Training for analog inference: float SGD, noise-injection training and Hessian-aware SGD
(HA-SGD), with the PCM device noise expressed in weight units.

Networks (:func:`build_net`) are the layers of :mod:`imcsim.scenarios.mixed_precision` — an
MLP, or a small CNN whose 3×3 convolution is an im2col product — with float64 weights
``(in, out)`` and digital biases, trained on the digits split of
:mod:`imcsim.scenarios.digits`. Every method is minibatch SGD with heavy-ball momentum
(``v ← μ·v − η·g``, ``w ← w + v``; μ = 0.9 by default) on the mean softmax cross-entropy:

* ``"sgd"``: plain float training, the digital baseline;
* ``"noise"``: hardware-aware noise-injection training: every forward/backward pass of a
  minibatch uses W + σ(W)⊙ξ, ξ ~ N(0, 1) drawn fresh from a numpy Generator seeded from
  (seed, step); the gradient at the noisy weights is applied to the clean weights (straight
  through). σ(W) is :func:`weight_sigma` of the :class:`NoiseModel`;
* ``"hasgd"``: Hessian-aware SGD, minimising the second-order expected loss under the same
  device noise,

      E_ε[L(w + ε)] ≈ L(w) + ½ Σ_i σ_i² H_ii,      ε_i ~ N(0, σ_i²) independent,

  (the first-order term vanishes because ε has zero mean). The penalty P = ½ Σ σ_i² H_ii and
  its gradient are estimated on every minibatch (:func:`penalty_gradient`).

**HA-SGD is a reconstruction.** Wan, Wang, Zhou, Iyer and Roychowdhury ("Accuracy and
Resiliency of Analog Compute-in-Memory Inference Engines", arXiv 2008.02400, ACM JETC 2022)
name Hessian-aware SGD in their abstract; their full text could not be obtained (searched:
arXiv mirrors, ACM abstract page, public paper collections), so the objective above, its
estimators and the gradient below are ours, built from the abstract's description and the
issue's statement of the objective. Nothing here is presented as the paper's algorithm.

Hessian diagonals (:func:`hessian_diagonal`, of the minibatch-mean loss, weights only):

* ``"hutchinson"``: diag H ≈ (1/k) Σ_p z_p ⊙ H z_p with Rademacher z_p (unbiased; the
  variance of one probe's entry i is Σ_{j≠i} H_ij²). H z is the *exact* Hessian-vector
  product by Pearlmutter's R-operator (forward-over-backward, :func:`hessian_vector`), not a
  finite difference: ReLU and average pooling are piecewise linear, so the only second
  derivatives are those of the softmax and the products between layers;
* ``"gauss_newton"``: the exact diagonal of G = (1/n) Σ_s J_sᵀ (diag p_s − p_s p_sᵀ) J_s,
  from the factorisation diag p − p pᵀ = A Aᵀ, A = diag(√p) − p √pᵀ: one backward pass per
  class of the columns of A, per-sample gradients squared and summed. H − G is the term
  Σ_c ∂L/∂z_c · ∂²z_c/∂w∂w of the logits' own second derivatives; G = H for a model linear
  in its weights (softmax regression). For the ReLU/average-pooling networks here the logits
  are linear in each *single* weight (with the unit masks fixed), so ∂²z_c/∂w_i² = 0 and the
  GN diagonal equals the exact Hessian diagonal, while the matrices differ off the diagonal
  (tests/test_robust_training.py checks both): for these networks "gauss_newton" is the
  exact diagonal at C backward passes (C classes) and no sampling noise;
* ``"exact"``: H e_i for every weight i (tests and tiny networks only).

Gradient of the penalty (``penalty_gradient``):

* ``"full"`` (the gradient of P itself): with u = σ ⊙ z (z Rademacher), E_z[uᵀ H u] = Σ σ_i² H_ii,
  so ∇P = ½ E_z[∇_w(uᵀ H(w) u)|_u] + E_z[z ⊙ σ' ⊙ (H u)]. The first term is the third-order
  derivative of L along u, obtained as the central difference of exact Hessian-vector
  products, [H(w + h·u) u − H(w − h·u) u]/(2h) (symmetry of third derivatives), with
  h = ``fd_step`` (default 1: the difference spans ± one noise standard deviation, so it is the
  curvature change averaged over the scale the noise actually explores — a ReLU network's
  Hessian jumps wherever a unit switches; the infinitesimal limit sees only the smooth
  pieces between the jumps, and a small step that straddles one returns a spike of size
  jump/h); the second term is the dependence of σ_i on w_i. Three Hessian-vector products
  per probe. At h → 0 the estimate is unbiased for ∇P (tested against finite differences
  of the exact P); at h = 1 it is the gradient of P smoothed over ±σ.
* ``"frozen"``: H_ii held constant within the step (estimated by ``hessian``), gradient
  σ_i·σ_i'·H_ii only: one estimate per step, but it never makes the loss flatter — it only
  moves weights to where the device is less noisy.

In both, the weight scale s (the per-column conductance range) is held constant within a
step: the maximum over a column moves one weight at a time and has no useful gradient.

Randomness: initial weights, minibatch order, injected noise and probes come from numpy
Generators seeded from (seed, stream[, step]) — no device physics is drawn here, the device
model enters only through σ. BLAS runs on one thread (threadpoolctl), so weights are
bit-identical whatever its thread count.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from imcsim.physics import pcm
from imcsim.scenarios import digits
from imcsim.scenarios.mixed_precision import lenet_layers, mlp_layers

METHODS = ("sgd", "noise", "hasgd")
HESSIANS = ("hutchinson", "gauss_newton", "exact")
ARCHITECTURES = ("mlp", "cnn")

# Child streams of SeedSequence([seed, stream, ...]): changing one never moves another.
_STREAM_INIT = 31
_STREAM_ORDER = 32
_STREAM_NOISE = 33
_STREAM_PROBE = 34

MatmulHook = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# Networks


@dataclass
class Net:
    """A network: ``layers`` (mixed_precision.Layer: pre/post hooks), ``weights[k]`` (in, out)
    and ``biases[k]`` (out,) float64, ``architecture`` "mlp" or "cnn"."""

    layers: list
    weights: list
    biases: list
    architecture: str

    def copy(self) -> Net:
        return Net(self.layers, [w.copy() for w in self.weights],
                   [b.copy() for b in self.biases], self.architecture)


def build_net(architecture: str, features: int, classes: int, *, hidden=(64,), channels=8,
              seed: int) -> Net:
    """A fresh network: He-normal weights (std √(2/fan_in)), zero biases.

    ``"mlp"``: dense ``features → hidden… → classes`` with ReLU; ``"cnn"``: a 3×3 valid
    convolution with ``channels`` filters on the √features-sided image (im2col product),
    ReLU, 2×2 average pooling, a dense layer of ``hidden[0]`` units and the output layer.
    """
    if architecture == "mlp":
        layers = mlp_layers([features, *hidden, classes])
    elif architecture == "cnn":
        side = round(math.sqrt(features))
        if side * side != features:
            raise ValueError(f"cnn needs square images, got {features} features")
        layers = lenet_layers(side, channels, hidden[0], classes)
    else:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    gen = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_INIT]))
    weights = [gen.standard_normal(layer.shape) * np.sqrt(2.0 / layer.shape[0])
               for layer in layers]
    return Net(layers, weights, [np.zeros(layer.shape[1]) for layer in layers], architecture)


def _forward(net, weights, x, matmul=None):
    """Logits and, per layer, the rows fed to its product and the cache of its ``post``."""
    rows, caches, h = [], [], x
    for k, (layer, w, b) in enumerate(zip(net.layers, weights, net.biases)):
        a = layer.pre(h)
        h, cache = layer.post(digits.layer_product(matmul, k, a, w) + b)
        rows.append(a)
        caches.append(cache)
    return h, rows, caches


def forward(net: Net, x, matmul: MatmulHook | None = None) -> np.ndarray:
    """Logits (n, classes). ``matmul(layer_index, rows, W) -> rows @ W`` replaces each layer's
    product (rows = ``layer.pre(h)``: im2col patches for the convolution); bias, ReLU and
    pooling are digital."""
    return _forward(net, net.weights, np.asarray(x, dtype=np.float64), matmul)[0]


def accuracy(net: Net, x, y, matmul: MatmulHook | None = None) -> float:
    """Fraction of rows of ``x`` classified as ``y``."""
    return float(np.mean(np.argmax(forward(net, x, matmul), axis=1) == np.asarray(y)))


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True), z - np.log(p.sum(axis=1, keepdims=True))


def loss(net: Net, x, y, weights=None) -> float:
    """Mean softmax cross-entropy of the batch (at ``weights`` if given)."""
    logits = _forward(net, net.weights if weights is None else weights, x)[0]
    logp = _softmax(logits)[1]
    return -float(np.mean(logp[np.arange(len(y)), y]))


def _backward(net, weights, rows, caches, dz):
    """Weight and bias gradients from the gradient ``dz`` of the loss at the logits."""
    n_layers = len(net.layers)
    gw, gb = [None] * n_layers, [None] * n_layers
    for k in range(n_layers - 1, -1, -1):
        gw[k] = rows[k].T @ dz
        gb[k] = dz.sum(axis=0)
        if k > 0:
            dz = net.layers[k - 1].post_backward(dz @ weights[k].T, caches[k - 1])
    return gw, gb


def loss_and_grad(net: Net, x, y, weights=None):
    """(mean cross-entropy, weight gradients, bias gradients) by backpropagation."""
    weights = net.weights if weights is None else weights
    logits, rows, caches = _forward(net, weights, x)
    p, logp = _softmax(logits)
    n = len(y)
    value = -float(np.mean(logp[np.arange(n), y]))
    dz = p
    dz[np.arange(n), y] -= 1.0
    dz /= n
    gw, gb = _backward(net, weights, rows, caches, dz)
    return value, gw, gb


def hessian_vector(net: Net, x, y, v, weights=None) -> list[np.ndarray]:
    """H·v of the mean cross-entropy w.r.t. the weights (biases fixed), exact, by the
    R-operator (Pearlmutter 1994): one forward tangent pass and one backward pass of the
    tangents. ``v`` is a list shaped like the weights."""
    weights = net.weights if weights is None else weights
    layers = net.layers
    n_layers = len(layers)
    rows, r_rows, caches = [], [], []
    h, r_h = x, None
    for k, (layer, w, b) in enumerate(zip(layers, weights, net.biases)):
        a = layer.pre(h)
        r_a = None if r_h is None else layer.pre(r_h)
        z = a @ w + b
        r_z = a @ v[k] if r_a is None else r_a @ w + a @ v[k]
        h, cache = layer.post(z)
        r_h = layer.post_tangent(r_z, cache)
        rows.append(a)
        r_rows.append(r_a)
        caches.append(cache)
    p = _softmax(h)[0]
    n = len(y)
    r_logits = r_h
    dz = p.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n
    r_dz = (p * r_logits - p * np.sum(p * r_logits, axis=1, keepdims=True)) / n
    out = [None] * n_layers
    for k in range(n_layers - 1, -1, -1):
        out[k] = rows[k].T @ r_dz
        if r_rows[k] is not None:
            out[k] += r_rows[k].T @ dz
        if k > 0:
            dh = dz @ weights[k].T
            r_dh = r_dz @ weights[k].T + dz @ v[k].T
            dz = layers[k - 1].post_backward(dh, caches[k - 1])
            r_dz = layers[k - 1].post_backward(r_dh, caches[k - 1])
    return out


def _rademacher(gen, shapes):
    return [gen.integers(0, 2, size=s).astype(np.float64) * 2.0 - 1.0 for s in shapes]


def gauss_newton_diagonal(net: Net, x, y, weights=None) -> list[np.ndarray]:
    """Exact diagonal of the Gauss-Newton matrix of the mean cross-entropy (module
    docstring): one backward pass per class, per-sample gradients squared."""
    weights = net.weights if weights is None else weights
    logits, rows, caches = _forward(net, weights, x)
    p = _softmax(logits)[0]
    n, classes = p.shape
    sqrt_p = np.sqrt(p)
    diag = [np.zeros(w.shape) for w in weights]
    for c in range(classes):
        col = -p * sqrt_p[:, c:c + 1]  # column c of A = diag(√p) − p √pᵀ, per sample
        col[:, c] += sqrt_p[:, c]
        dz = col
        for k in range(len(net.layers) - 1, -1, -1):
            a = rows[k]
            per = a.shape[0] // n  # rows of the product per sample (im2col patches)
            if per == 1:
                diag[k] += (a * a).T @ (dz * dz)
            else:
                g = np.einsum("bpi,bpj->bij", a.reshape(n, per, -1), dz.reshape(n, per, -1))
                diag[k] += np.einsum("bij,bij->ij", g, g)
            if k > 0:
                dz = net.layers[k - 1].post_backward(dz @ weights[k].T, caches[k - 1])
    return [d / n for d in diag]


def hessian_diagonal(net: Net, x, y, *, method: str = "hutchinson", probes: int = 1,
                     seed: int = 0, weights=None) -> list[np.ndarray]:
    """Diagonal of the Hessian of the mean cross-entropy on (x, y) w.r.t. every weight:
    ``"hutchinson"`` (``probes`` Rademacher probes from Generator(seed)), ``"gauss_newton"``
    or ``"exact"`` (one Hessian-vector product per weight)."""
    weights = net.weights if weights is None else weights
    x = np.asarray(x, dtype=np.float64)
    shapes = [w.shape for w in weights]
    if method == "gauss_newton":
        return gauss_newton_diagonal(net, x, y, weights)
    if method == "exact":
        diag = [np.zeros(s) for s in shapes]
        for k, s in enumerate(shapes):
            for i in np.ndindex(s):
                e = [np.zeros(t) for t in shapes]
                e[k][i] = 1.0
                diag[k][i] = hessian_vector(net, x, y, e, weights)[k][i]
        return diag
    if method != "hutchinson":
        raise ValueError(f"hessian method must be one of {HESSIANS}, got {method!r}")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    gen = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_PROBE]))
    diag = [np.zeros(s) for s in shapes]
    for _ in range(probes):
        z = _rademacher(gen, shapes)
        hz = hessian_vector(net, x, y, z, weights)
        for k in range(len(shapes)):
            diag[k] += z[k] * hz[k]
    return [d / probes for d in diag]


# --------------------------------------------------------------------------------------------
# Device noise in weight units


@dataclass(frozen=True)
class NoiseModel:
    """PCM device noise of a deployed weight, seen ``t_inference`` seconds after programming
    with global drift compensation (see :func:`weight_sigma`).

    Attributes:
        device: the statistical PCM model (Joshi et al. 2020 by default).
        t_inference: time since programming at which the network is used, s.
        programming, drift, read: include programming noise, the drift-exponent spread and
            1/f read noise.
        scale: dimensionless multiplier of σ (1 = the device model; noise-injection practice
            sometimes trains at a larger σ).
        common_mode: coefficients c_k (S) of C(|u|) = Σ_k c_k·|u|^k, the conductance both
            devices of a pair carry on top of their targets (|u| = g_T/g_max, the pair's
            weight): G⁺ is programmed to g_T + C, G⁻ to C, each with its own noise at its own
            conductance. Empty (the default): none, G⁻ at 0. A pair-level property of how
            the chip was programmed (GDP leaves one; :func:`scenarios.inference.
            characterise_programming` measures it), not of the device preset.
    """

    device: pcm.StatisticalModel = field(default_factory=lambda: pcm.JOSHI_2020)
    t_inference: float = 86400.0
    programming: bool = True
    drift: bool = True
    read: bool = True
    scale: float = 1.0
    common_mode: tuple[float, ...] = ()

    def __post_init__(self):
        if not (np.isfinite(self.t_inference) and self.t_inference >= 0.0):
            raise ValueError(f"t_inference must be >= 0 s, got {self.t_inference!r}")
        if not (np.isfinite(self.scale) and self.scale >= 0.0):
            raise ValueError(f"scale must be >= 0, got {self.scale!r}")
        check_common_mode(self.common_mode)


def common_mode_conductance(coeff, u_abs) -> tuple[np.ndarray, np.ndarray]:
    """(C(|u|), dC/d|u|) in S of the common-mode polynomial ``coeff`` (S, in powers of |u|);
    zeros for an empty one."""
    u_abs = np.asarray(u_abs, dtype=np.float64)
    coeff = np.asarray(coeff, dtype=np.float64)
    if coeff.size == 0:
        return np.zeros_like(u_abs), np.zeros_like(u_abs)
    return (np.polynomial.polynomial.polyval(u_abs, coeff),
            np.polynomial.polynomial.polyval(u_abs, np.polynomial.polynomial.polyder(coeff)))


def check_common_mode(coeff) -> tuple[float, ...]:
    """``coeff`` as a tuple of floats; ValueError unless finite and C(|u|) ≥ 0 on [0, 1]."""
    coeff = tuple(float(c) for c in coeff)
    if not all(math.isfinite(c) for c in coeff):
        raise ValueError(f"common_mode coefficients must be finite, got {coeff}")
    if coeff and np.min(common_mode_conductance(coeff, np.linspace(0.0, 1.0, 1001))[0]) < 0.0:
        raise ValueError(f"common_mode C(|u|) must be >= 0 S on 0 <= |u| <= 1, got {coeff}")
    return coeff


_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(cache=True)
def _normal_cdf(a):
    return 0.5 * math.erfc(-a / _SQRT2)


@njit(cache=True)
def _rectified_moments(m, s):
    """(E[Y], E[Y²]) of Y = max(0, m + s·ξ), ξ ~ N(0, 1)."""
    if s <= 0.0:
        v = max(m, 0.0)
        return v, v * v
    a = m / s
    cdf = _normal_cdf(a)
    pdf = _INV_SQRT_2PI * math.exp(-0.5 * a * a)
    return m * cdf + s * pdf, (m * m + s * s) * cdf + m * s * pdf


@njit(cache=True)
def _folded_exp_moment(mu, sd, k):
    """E[exp(−k·|X|)], X ~ N(μ, sd²) (the folded normal's Laplace transform)."""
    if sd <= 0.0:
        return math.exp(-k * abs(mu))
    c = math.exp(0.5 * k * k * sd * sd)
    return c * (math.exp(-k * mu) * _normal_cdf((mu - k * sd * sd) / sd)
                + math.exp(k * mu) * _normal_cdf((-mu - k * sd * sd) / sd))


@njit(cache=True)
def _device_moments(g_target, g_max, coeff, coeff_g_ref, model_id, prog_scale, drift_scale,
                    drift_log, read_scale, read_growth, programming, drift, read):
    """(E[g_c], E[g_c²]) of one device's compensated read conductance (S, S²)."""
    sigma_p = 0.0
    if programming:
        sigma_p = prog_scale * pcm.programming_noise_std(g_target, g_max, coeff, coeff_g_ref)
    m1, m2 = _rectified_moments(g_target, sigma_p)
    ratio = 1.0
    g_r = abs(g_target) / g_max
    if drift and drift_log > 0.0:
        mu, sd = pcm.drift_mean_std(g_r, model_id)
        e1 = _folded_exp_moment(drift_scale * mu, drift_scale * sd, drift_log)
        e2 = _folded_exp_moment(drift_scale * mu, drift_scale * sd, 2.0 * drift_log)
        ratio = e2 / (e1 * e1)
    r1, r2 = 1.0, 1.0
    if read:
        q = read_scale * pcm.read_noise_qs(g_r, model_id) * read_growth
        r1, r2 = _rectified_moments(1.0, q)
    return m1 * r1, m2 * ratio * r2


@njit(cache=True)
def _pair_sigma(g_target, out, g_max, coeff, coeff_g_ref, model_id, prog_scale, drift_scale,
                drift_log, read_scale, read_growth, programming, drift, read, common):
    """σ of G⁺ − G⁻ (S) for G⁺ programmed to each ``g_target`` + C and G⁻ to C, with
    C = Σ_k common[k]·(g_target/g_max)^k (0 for an empty ``common``)."""
    z1, z2 = _device_moments(0.0, g_max, coeff, coeff_g_ref, model_id, prog_scale,
                             drift_scale, drift_log, read_scale, read_growth, programming,
                             drift, read)
    var_zero = max(z2 - z1 * z1, 0.0)
    for i in range(g_target.size):
        c = 0.0
        for k in range(common.size - 1, -1, -1):
            c = c * (g_target[i] / g_max) + common[k]
        if common.size:
            z1, z2 = _device_moments(c, g_max, coeff, coeff_g_ref, model_id, prog_scale,
                                     drift_scale, drift_log, read_scale, read_growth,
                                     programming, drift, read)
            var_zero = max(z2 - z1 * z1, 0.0)
        m1, m2 = _device_moments(g_target[i] + c, g_max, coeff, coeff_g_ref, model_id,
                                 prog_scale, drift_scale, drift_log, read_scale, read_growth,
                                 programming, drift, read)
        out[i] = math.sqrt(max(m2 - m1 * m1, 0.0) + var_zero)


def _time_terms(noise: NoiseModel) -> tuple[float, float]:
    """ln(τ_eff/t0) of the drift and sqrt(ln((τ_n + t_read)/(2 t_read))) of the read noise at
    τ = t_inference, in the device model's time convention (physics/pcm.py)."""
    d = noise.device
    tau = float(noise.t_inference)
    tau_eff = tau + d.t0 if d.shifted else max(tau, d.t0)
    return math.log(tau_eff / d.t0), float(pcm.read_noise_growth(tau, d.t0, d.t_read,
                                                                  d.shifted))


def device_moments(g_target, noise: NoiseModel) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of single devices' compensated conductance (S, S²) at each target
    (see :func:`weight_sigma`); exposed for the Monte-Carlo test against the PCM kernels."""
    d = noise.device
    drift_log, growth = _time_terms(noise)
    g = np.atleast_1d(np.asarray(g_target, dtype=np.float64))
    mean, var = np.empty(g.size), np.empty(g.size)
    coeff = np.asarray(d.prog_coeff, dtype=np.float64)
    for i, gi in enumerate(g.ravel()):
        m1, m2 = _device_moments(float(gi), d.g_max, coeff, d.prog_coeff_g_ref, d.model_id,
                                 d.prog_noise_scale, d.drift_scale, drift_log,
                                 d.read_noise_scale, growth, noise.programming, noise.drift,
                                 noise.read)
        mean[i], var[i] = m1, max(m2 - m1 * m1, 0.0)
    return mean.reshape(g.shape), var.reshape(g.shape)


def conductance_sigma(g_target, noise: NoiseModel) -> np.ndarray:
    """σ_g(g_T, t) in S: std of G⁺ − G⁻ of a differential pair with G⁺ at ``g_target`` and
    G⁻ at 0 (the mapping of physics/crossbar.py), both raised by ``noise.common_mode``,
    times ``noise.scale``."""
    d = noise.device
    g = np.asarray(g_target, dtype=np.float64)
    flat = np.ascontiguousarray(g.ravel())
    out = np.empty(flat.size)
    drift_log, growth = _time_terms(noise)
    _pair_sigma(flat, out, d.g_max, np.asarray(d.prog_coeff, dtype=np.float64),
                d.prog_coeff_g_ref, d.model_id, d.prog_noise_scale, d.drift_scale, drift_log,
                d.read_noise_scale, growth, noise.programming, noise.drift, noise.read,
                np.asarray(noise.common_mode, dtype=np.float64))
    return out.reshape(g.shape) * noise.scale


_TABLE_POINTS = 16385  # σ_g on [0, g_max]; interpolation error < 5e-4 relative (at the kinks)


@functools.lru_cache(maxsize=64)
def _sigma_table(noise: NoiseModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """σ_g and dσ_g/dg on a uniform grid of [0, g_max] (S, S, 1): a training step needs σ of
    every weight, and the closed form costs ~10 transcendental calls per device."""
    grid = np.linspace(0.0, noise.device.g_max, _TABLE_POINTS)
    sigma = conductance_sigma(grid, noise)
    return grid, sigma, np.gradient(sigma, grid)


def _interp_uniform(g, grid, values):
    """Linear interpolation on the uniform grid (np.interp's bisection is ~5x slower)."""
    position = g * ((grid.size - 1) / grid[-1])
    i = np.minimum(position.astype(np.int64), grid.size - 2)
    frac = position - i
    return values[i] + frac * (values[i + 1] - values[i])


def _target_conductance(w, weight_scale, g_max):
    return np.minimum(np.abs(w) / weight_scale, 1.0) * g_max


def weight_sigma(w, weight_scale, noise: NoiseModel, idle_scale=None) -> np.ndarray:
    """σ_i of every weight in weight units: σ_i = s_i·σ_g(|w_i|/s_i·g_max, t)/g_max.

    ``weight_scale`` s (the |w| mapped to g_max; |w| > s is clipped) broadcasts against
    ``w``: per column, or per weight for analog floating point. ``idle_scale`` s'_i (same
    broadcasting, optional) is the scale of a second pair that carries weight i's output but
    holds target 0 for it — the other column of a two-column mapping such as analog floating
    point — whose noise adds: σ_i² = (s_i·σ_g(|w_i|/s_i·g_max))²/g_max² +
    (s'_i·σ_g(0))²/g_max². σ_g is the standard
    deviation of G⁺ − G⁻ at time t = ``noise.t_inference`` after one-shot programming of the
    Joshi et al. (2020) statistical model (physics/pcm.py, physics-reference sheet), each
    device independent:

        g_c = max(0, g_T + σ_prog(g_T)·ξ₁) · D/E[D] · max(0, 1 + q·ξ₃),
        D = (τ_eff/t0)^(−ν),  ν = |μ_ν(g_T) + σ_ν(g_T)·ξ₂|,
        q = Q_s(g_T)·sqrt(ln((τ_n + t_read)/(2 t_read))),

    whose moments are closed-form (rectified normal; the folded normal's Laplace transform
    E[e^(−kν)]), so Var g_c = E[g_p²]·E[D²]/E[D]²·E[R²] − (E[g_p]·E[R])². Included:
    programming noise at the target, the device-to-device spread of the drift exponent, 1/f
    read noise at t (one read), for both devices of the pair (the RESET partner, target 0,
    contributes its rectified programming noise). Approximation: drift compensation divides
    by the *mean* drift factor at each target conductance, E[D(g_T)]; a global compensation
    factor (one α per tile) leaves in addition a deterministic, conductance-dependent gain
    error (μ_ν falls from 0.1 to 0.049 with g_T), which is a bias, not noise, and is not in
    σ: it is the same for every device at a level, so it is for calibration (drift
    compensation, PTO) to remove, not for an expectation over noise to average out. Not
    included either: DAC/ADC quantisation and the mean offset of the rectified RESET partner
    (both deterministic given the mapping). The HERMES preset fits Q_s at the programmed
    conductance; here it is taken at the target, which leaves σ_g within 1.3 % of a
    Monte-Carlo of the kernels (200,000 devices per level, g_r = 0 … 1, 1 day; tested at
    g_T = 0, the RESET partner, to 2 %).

    Evaluated from a table of σ_g on 16,385 conductances per NoiseModel (linear
    interpolation, relative error < 5e-4 at the kinks of the clipped fits, tested);
    :func:`conductance_sigma` is the closed form itself.
    """
    w = np.asarray(w, dtype=np.float64)
    s = np.broadcast_to(np.asarray(weight_scale, dtype=np.float64), w.shape)
    g_max = noise.device.g_max
    grid, sigma, _ = _sigma_table(noise)
    own = s * _interp_uniform(_target_conductance(w, s, g_max), grid, sigma) / g_max
    if idle_scale is None:
        return own
    idle = np.asarray(idle_scale, dtype=np.float64) * (sigma[0] / g_max)
    return np.sqrt(own * own + idle * idle)


def weight_sigma_slope(w, weight_scale, noise: NoiseModel, idle_scale=None) -> np.ndarray:
    """∂σ_i/∂w_i at fixed scales: sign(w)·dσ_g/dg (the s/g_max factors cancel), from central
    differences of the tabulated σ_g, times σ_own/σ_i with an idle pair; 0 where |w| ≥ s
    (clipped to g_max)."""
    w = np.asarray(w, dtype=np.float64)
    s = np.broadcast_to(np.asarray(weight_scale, dtype=np.float64), w.shape)
    grid, _, slope = _sigma_table(noise)
    dsdg = _interp_uniform(_target_conductance(w, s, noise.device.g_max), grid, slope)
    out = np.sign(w) * np.where(np.abs(w) < s, dsdg, 0.0)
    if idle_scale is None:
        return out
    total = weight_sigma(w, s, noise, idle_scale)
    own = weight_sigma(w, s, noise)
    return out * np.divide(own, total, out=np.zeros_like(total), where=total > 0)


def column_maxabs_scale(w) -> np.ndarray:
    """The max-abs mapping: per column (output), s_j = max_i |W_ij| (1 for an all-zero
    column), shape (1, out)."""
    s = np.max(np.abs(w), axis=0, keepdims=True)
    return np.where(s > 0.0, s, 1.0)


def _scales(weight_scale, weights) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(scale, idle scale or None) of every layer: "maxabs", or ``callable(layer, W)``
    returning a scale or a pair (scale, idle_scale) (see :func:`weight_sigma`)."""
    if isinstance(weight_scale, str):
        if weight_scale != "maxabs":
            raise ValueError(f"weight_scale must be 'maxabs' or a callable, got "
                             f"{weight_scale!r}")
        return [(column_maxabs_scale(w), None) for w in weights]
    out = []
    for k, w in enumerate(weights):
        value = weight_scale(k, w)
        scale, idle = value if isinstance(value, tuple) else (value, None)
        out.append((np.asarray(scale, dtype=np.float64),
                    None if idle is None else np.asarray(idle, dtype=np.float64)))
    return out


def noisy_accuracy(net: Net, x, y, noise: NoiseModel, *, draws: int = 20, seed: int = 0,
                   weight_scale="maxabs") -> np.ndarray:
    """Test accuracy of ``draws`` networks W + σ(W)⊙ξ (ξ ~ N(0, 1) from Generator(seed)):
    what the weight-unit noise model alone predicts, without DAC/ADC, drift bias or
    compensation error (those are the tile harness's, scenarios/inference.py)."""
    gen = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_NOISE]))
    sigma = [weight_sigma(w, s, noise, idle)
             for w, (s, idle) in zip(net.weights, _scales(weight_scale, net.weights))]
    out = np.empty(draws)
    for d in range(draws):
        noisy = net.copy()
        noisy.weights = [w + s * gen.standard_normal(w.shape)
                         for w, s in zip(net.weights, sigma)]
        out[d] = accuracy(noisy, x, y)
    return out


# --------------------------------------------------------------------------------------------
# HA-SGD penalty


def penalty(net: Net, x, y, sigma, *, weights=None) -> float:
    """P = ½ Σ_i σ_i² H_ii with the exact Hessian diagonal (tests, tiny networks)."""
    diag = hessian_diagonal(net, x, y, method="exact", weights=weights)
    return 0.5 * float(sum(np.sum(s * s * d) for s, d in zip(sigma, diag)))


def penalty_gradient(net: Net, x, y, sigma, slope, *, mode: str = "full",
                     hessian: str = "hutchinson", probes: int = 1, fd_step: float = 1.0,
                     gen: np.random.Generator | None = None, weights=None):
    """(estimate of P = ½ Σ σ_i² H_ii, estimate of ∇P) on one batch (module docstring).

    ``sigma`` and ``slope`` (∂σ_i/∂w_i) are lists shaped like the weights. ``mode="full"``
    uses ``probes`` Rademacher probes z (or, with ``probes="basis"``, every unit vector —
    deterministic and exact up to the difference step, for tests); ``"frozen"`` uses the
    Hessian diagonal of ``hessian`` held constant.
    """
    weights = net.weights if weights is None else weights
    shapes = [w.shape for w in weights]
    gen = gen if gen is not None else np.random.default_rng(0)
    if mode == "frozen":
        diag = (gauss_newton_diagonal(net, x, y, weights) if hessian == "gauss_newton" else
                hessian_diagonal(net, x, y, method=hessian, probes=probes,
                                 seed=int(gen.integers(1 << 62)), weights=weights))
        value = 0.5 * float(sum(np.sum(s * s * d) for s, d in zip(sigma, diag)))
        return value, [s * ds * d for s, ds, d in zip(sigma, slope, diag)]
    if mode != "full":
        raise ValueError(f"penalty gradient mode must be 'full' or 'frozen', got {mode!r}")
    if probes == "basis":
        directions = []
        for k, s in enumerate(shapes):
            for i in np.ndindex(s):
                e = [np.zeros(t) for t in shapes]
                e[k][i] = 1.0
                directions.append(e)
        weight = 1.0
    else:
        directions = [_rademacher(gen, shapes) for _ in range(int(probes))]
        weight = 1.0 / len(directions)
    value = 0.0
    grad = [np.zeros(s) for s in shapes]
    for z in directions:
        u = [zk * sk for zk, sk in zip(z, sigma)]
        hu = hessian_vector(net, x, y, u, weights)
        plus = hessian_vector(net, x, y, u, [w + fd_step * uk for w, uk in zip(weights, u)])
        minus = hessian_vector(net, x, y, u, [w - fd_step * uk for w, uk in zip(weights, u)])
        value += 0.5 * weight * float(sum(np.sum(a * b) for a, b in zip(u, hu)))
        for k in range(len(shapes)):
            grad[k] += weight * (0.25 * (plus[k] - minus[k]) / fd_step
                                 + z[k] * slope[k] * hu[k])
    return value, grad


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class History:
    """Per-epoch record: mean training loss (cross-entropy of the clean weights' batches, or
    of the noisy ones for noise injection), mean penalty estimate (HA-SGD), train and test
    accuracy of the clean network, and wall seconds per epoch (for benchmarks only)."""

    loss: list = field(default_factory=list)
    penalty: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


def train(net: Net, data: digits.DataSplit, *, method: str = "sgd", epochs: int = 30,
          lr: float = 0.05, batch: int = 32, seed: int = 0, noise: NoiseModel | None = None,
          weight_scale="maxabs", hessian: str = "hutchinson", probes: int = 1,
          penalty_mode: str = "full", penalty_weight: float = 1.0, fd_step: float = 1.0,
          momentum: float = 0.9) -> tuple[Net, History]:
    """Train a copy of ``net`` on ``data`` by minibatch SGD with momentum; returns the trained
    network and its :class:`History`.

    ``method``: "sgd", "noise" (noise injection with σ of ``noise``) or "hasgd" (loss +
    ``penalty_weight``·½ Σ σ_i² H_ii; ``penalty_mode`` "full" or "frozen", ``hessian``
    "hutchinson" (``probes`` per step) or "gauss_newton" for the frozen mode). ``weight_scale``
    is "maxabs" (per-column max |w| of the current weights) or ``callable(layer, W) -> s``
    broadcastable to W (e.g. per-weight scales of analog floating point), or a pair
    ``(s, idle_s)`` whose second member adds the noise of an idle zero-target pair
    (:func:`weight_sigma`). Biases are digital:
    no noise, no penalty. Deterministic in ``seed``; BLAS on one thread.
    """
    from threadpoolctl import threadpool_limits

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "sgd" and noise is None:
        raise ValueError(f"method {method!r} needs a NoiseModel")
    if epochs < 0 or batch < 1 or not lr > 0.0:
        raise ValueError(f"need epochs >= 0, batch >= 1, lr > 0; got {epochs}, {batch}, {lr}")
    if method == "hasgd":
        if penalty_mode not in ("full", "frozen"):
            raise ValueError(f"penalty_mode must be 'full' or 'frozen', got {penalty_mode!r}")
        if hessian not in ("hutchinson", "gauss_newton"):
            raise ValueError(f"hessian must be 'hutchinson' or 'gauss_newton', got {hessian!r}")
        if penalty_mode == "full" and hessian != "hutchinson":
            raise ValueError("penalty_mode 'full' takes its curvature from Hutchinson probes; "
                             f"hessian {hessian!r} needs penalty_mode 'frozen'")
        if not (isinstance(probes, int) and probes >= 1):
            raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
        if not (fd_step > 0.0 and penalty_weight >= 0.0):
            raise ValueError(f"need fd_step > 0 and penalty_weight >= 0, got {fd_step}, "
                             f"{penalty_weight}")
    with threadpool_limits(1, user_api="blas"):
        return _train(net.copy(), data, method, epochs, lr, batch, seed, noise, weight_scale,
                      hessian, probes, penalty_mode, penalty_weight, fd_step, momentum)


def _train(net, data, method, epochs, lr, batch, seed, noise, weight_scale, hessian, probes,
           penalty_mode, penalty_weight, fd_step, momentum):
    order = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_ORDER]))
    x_all, y_all = data.x_train, data.y_train
    n = x_all.shape[0]
    vw = [np.zeros_like(w) for w in net.weights]
    vb = [np.zeros_like(b) for b in net.biases]
    history = History()
    step = 0
    for _ in range(epochs):
        start = time.perf_counter()
        losses, penalties = [], []
        perm = order.permutation(n)
        for begin in range(0, n, batch):
            idx = perm[begin:begin + batch]
            x, y = x_all[idx], y_all[idx]
            if method == "noise":
                gen = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_NOISE, step]))
                scales = _scales(weight_scale, net.weights)
                noisy = [w + weight_sigma(w, s, noise, idle) * gen.standard_normal(w.shape)
                         for w, (s, idle) in zip(net.weights, scales)]
                value, gw, gb = loss_and_grad(net, x, y, noisy)
            else:
                value, gw, gb = loss_and_grad(net, x, y)
            if method == "hasgd":
                gen = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_PROBE, step]))
                scales = _scales(weight_scale, net.weights)
                sigma = [weight_sigma(w, s, noise, idle)
                         for w, (s, idle) in zip(net.weights, scales)]
                slope = [weight_sigma_slope(w, s, noise, idle)
                         for w, (s, idle) in zip(net.weights, scales)]
                pen, gp = penalty_gradient(net, x, y, sigma, slope, mode=penalty_mode,
                                           hessian=hessian, probes=probes, fd_step=fd_step,
                                           gen=gen)
                penalties.append(pen)
                gw = [g + penalty_weight * p for g, p in zip(gw, gp)]
            losses.append(value)
            for w, v, g in zip(net.weights, vw, gw):
                v *= momentum
                v -= lr * g
                w += v
            for b, v, g in zip(net.biases, vb, gb):
                v *= momentum
                v -= lr * g
                b += v
            step += 1
        history.seconds.append(time.perf_counter() - start)
        history.loss.append(float(np.mean(losses)))
        history.penalty.append(float(np.mean(penalties)) if penalties else 0.0)
        history.train_accuracy.append(accuracy(net, x_all, y_all))
        history.test_accuracy.append(accuracy(net, data.x_test, data.y_test))
    return net, history
