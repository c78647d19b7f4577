"""Inference of trained networks on drifting PCM tiles, and the mappings the remedies compare.

Harness (issue 7, item 1). A trained network (``scenarios.robust_training.Net``: layers of
``mixed_precision.Layer`` — dense, or an im2col convolution as the first layer — with
weights ``(in, out)`` and digital biases) is mapped onto tiles of at most ``tile_rows ×
tile_cols`` differential PCM pairs, in the generalisation of ``scenarios.network``'s mapping to
any layer list, per-column weight scales and per-tile DAC ranges:

* a layer W is cut into blocks of ``tile_rows`` input rows × ``tile_cols / copies`` output
  columns (``copies`` = 2 for the two-column mappings below), one tile per block;
* column j of a block has its own weight scale s_j (weight units mapped to g_max: the
  "conductance range" of the column) and every tile its own DAC input range r (the |input|
  at the DAC's full scale);
* a *physical* column p of a tile holds the normalised targets u_ip = clip(k_p·W'_ip/s_j(p),
  −1, 1) as a pair G⁺ = max(u, 0)·g_max, G⁻ = max(−u, 0)·g_max, with W' the weights the
  column carries and k_p its gain; its ADC output c_p = ADC(Σ_i x_q,i·(G⁺ − G⁻)_ip/g_max)
  (normalised current, x_q the DAC output in [−1, 1]) enters the digital output as
  y_j = α·r·Σ_{p→j} f_p·c_p with f_p = s_j/(k_p·n_j), n_j the columns that share output j.

Mappings (the ``kind`` of :func:`map_network`):

* ``"fixed"``: one pair per weight, k = 1 (uniform fixed-point mapping, as the GDP issue's
  network check, but per column);
* ``"fixed2"``: two pairs per weight on two columns holding the same weight, outputs averaged
  (f = s/2): fixed-point at the device count of AFP, independent device noise averaging;
* ``"afp"``: analog floating point, our reconstruction of the "bi-scale" representation of
  Wan et al. (arXiv 2008.02400; the paper's text was not available to us, only its
  abstract, so what follows is a reconstruction and labelled as such). Each weight gets a
  one-bit exponent e = 1 where |w| < s_j/γ, else 0. Column "big" of output j holds the
  weights with e = 0 at gain 1, column "small" the weights with e = 1 at gain γ
  (u = γ·w/s_j, so small weights use the whole conductance range), and the digital periphery
  divides the small column's partial sum by γ: y_j = α·r·s_j·(c_big + c_small/γ).
  Cost, explicitly: two physical columns (two pairs, four devices) per weight — the same
  device count as ``"fixed2"`` — one of the two pairs holding target 0 (both devices RESET,
  which still carry the statistical model's programming noise at g_T = 0 and its 1/f noise),
  and two ADC conversions per output instead of one.

Device physics: the statistical PCM model of ``physics.pcm``, either preset — Joshi et al.
(2020, ``[device] model = "joshi2020"``) or HERMES (Le Gallo et al. 2023, ``"hermes2023"``)
(``program_statistical``: programming noise at the target; ``draw_drift_state``: drift
exponent from the target and 1/f amplitude from the target (Joshi) or the programmed
conductance (HERMES, as fitted); ``read_drifted``: drift and 1/f read noise at the
read time, one read of every device per evaluation time, shared by all test images), device
instances keyed by ``network.tile_seed(device_seed, tile index)``. Global drift compensation
as in ``scenarios.network``: at ``t_calibrate`` every tile keeps the mean |y| of the float
network's calibration rows; at time t its outputs are multiplied by α = reference/mean |y|.
The periphery is ``physics.crossbar``'s: signed DAC and ADC (bits, v_read), ADC full scale in
A fixed by the hardware (not calibrated per tile), outputs read through
:func:`crossbar.tile_mvm`. With wire resistance ([periphery] r_wire_row / r_wire_col, Ω per
cell pitch) every MVM is solved as the resistive network (IR drop, ``physics.irdrop``), the
block sitting in the tile's corner next to the row drivers and the ADCs and the unused rows
and columns absent. Global drift compensation takes its reference on the resistive array at
t_calibrate, so it does not undo the IR-drop loss itself (which shrinks as the conductances
drift); it only rescales what changes after. The weight error (:func:`weight_error`) stays
that of the devices alone. PTO's tile model (``scenarios.pto``) has no wires unless
``[inference.pto] wires = true``: by default, with r_wire > 0, it optimises against an ideal
array and is evaluated on the resistive one — a model mismatch the study measures; with
``wires`` its forward pass solves the same resistive array and its gradient is that array's
exact adjoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from imcsim.physics import crossbar, pcm, rng
from imcsim.scenarios import network
from imcsim.scenarios import programming as gdp_programming

MAPPINGS = ("fixed", "fixed2", "afp")
DEVICE_MODELS = ("joshi2020", "hermes2023")  # PCM presets PTO's tile model implements
_READ_COUNTER0 = 16  # read counters: calibration at _READ_COUNTER0, time k at +1 + k


PROGRAMMING = ("statistical", "verify", "gdp")


@dataclass(frozen=True)
class Programming:
    """How a chip's devices reach their targets.

    "statistical": in one step, to the preset's fitted programming-noise statistic (Joshi et
    al. 2020 / Le Gallo et al. 2023 fit σ_prog(g_T) of their own iterative programming), with
    the drift exponent and read-noise amplitude drawn at the target as those papers fit them.
    "verify": pulse by pulse, the per-pulse PCM model ``pulse`` (our reconstruction, see
    :mod:`physics.pcm`) under the program-and-verify controller ``verify``
    (:func:`network.program_verify`); the programming error is then whatever the loop leaves
    (bounded by its tolerance where it converges). "gdp": pulse by pulse with gradient-descent
    programming (:func:`scenarios.programming.program_gdp`, policy ``gdp``), which programs
    each tile's physical columns toward their normalised targets so as to minimise the MVM
    error seen through the tile's own DAC range, ADC and wires. In both pulse-level methods
    the drift exponent and read-noise amplitude of each device are drawn at the conductance
    it reached. Drift and read noise follow the statistical preset in every case. Under the
    pulse-level methods the preset's programming-noise fit no longer describes the chip; the
    methods that model the noise (noise injection, HA-SGD, PTO) still use it unless
    ``[inference] noise_model = "characterised"`` refits it to the chip's own programming
    (:func:`characterise_programming`).
    """

    method: str = "statistical"
    verify: pcm.VerifyPolicy = field(default_factory=lambda: pcm.VerifyPolicy(
        differential=True))
    pulse: pcm.PulseModel = field(default_factory=pcm.PulseModel)
    gdp: gdp_programming.GDPPolicy = field(default_factory=gdp_programming.GDPPolicy)

    def __post_init__(self):
        if self.method not in PROGRAMMING:
            raise ValueError(f"programming method must be one of {PROGRAMMING}, "
                             f"got {self.method!r}")


@dataclass(frozen=True)
class Hardware:
    """The simulated chip: PCM statistical model, tile size, periphery, GDC time.

    ``periphery`` gives dac_bits, adc_bits, v_read (V) and adc_full_scale (A); its
    input_range is replaced per tile by the mapping's DAC range. ``t_calibrate`` (s) is when
    the drift-compensation reference is taken, after programming at t = 0; ``programming``
    says how the devices are programmed. ``common_mode`` (coefficients in S of C(|u|), see
    ``robust_training.NoiseModel``) is conductance both devices of a pair carry on top of
    their targets: statistical and program-and-verify programming aim G⁺, G⁻ at it, and the
    noise-aware methods model it; GDP programs differences and ignores it. Empty (the
    default) on every chip; :func:`characterise_programming` measures the one a programming
    method leaves, for the methods' model of the chip.
    """

    stat: pcm.StatisticalModel = field(default_factory=pcm.StatisticalModel)
    periphery: crossbar.Periphery = field(default_factory=lambda: crossbar.Periphery(
        dac_bits=8, adc_bits=8, adc_full_scale=50e-6))
    tile_rows: int = 256
    tile_cols: int = 256
    t_calibrate: float = 1.0
    programming: Programming = field(default_factory=Programming)
    common_mode: tuple[float, ...] = ()

    def __post_init__(self):
        from imcsim.scenarios.robust_training import check_common_mode

        object.__setattr__(self, "common_mode", check_common_mode(self.common_mode))

    def noise(self, t_inference: float, **flags):
        """The device noise of this chip's pairs at ``t_inference`` (s) after programming, as
        training and range optimisation model it (``robust_training.NoiseModel``)."""
        from imcsim.scenarios.robust_training import NoiseModel

        return NoiseModel(device=self.stat, t_inference=t_inference,
                          common_mode=self.common_mode, **flags)

    @property
    def adc_range(self) -> float:
        """ADC full scale in normalised current units Σ x_q·u (the current of one row at full
        input on a full-scale device is 1): I_fs/(v_read·g_max)."""
        return self.periphery.adc_full_scale / (self.periphery.v_read * self.stat.g_max)


@dataclass
class TileMap:
    """One tile of a mapped network.

    ``weights`` (rows, P) are the weights each physical column carries (0 where a weight sits
    in the other column of an AFP pair), ``gain`` k_p and ``share`` 1/n_j per physical column,
    ``column`` the block column j each physical column adds to; ``scale`` s_j per block
    column (weight units at g_max) and ``input_range`` r (the DAC's full-scale |input|)."""

    layer: int
    row0: int
    col0: int
    n_cols: int
    weights: np.ndarray
    gain: np.ndarray
    share: np.ndarray
    column: np.ndarray
    scale: np.ndarray
    input_range: float

    @property
    def rows(self) -> int:
        return self.weights.shape[0]

    def targets(self, scale: np.ndarray | None = None) -> np.ndarray:
        """Normalised targets u = clip(k·W'/s, −1, 1), shape (rows, P)."""
        s = (self.scale if scale is None else scale)[self.column]
        return np.clip(self.weights * (self.gain / s), -1.0, 1.0)

    def factors(self, scale: np.ndarray | None = None) -> np.ndarray:
        """f_p = s_j·share_p/k_p: weight units per unit of normalised current and input."""
        s = (self.scale if scale is None else scale)[self.column]
        return s * self.share / self.gain

    def combine(self, c: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """Σ_{p→j} f_p·c_p: physical ADC outputs (B, P) -> block outputs (B, n_cols)."""
        weighted = c * self.factors(scale)
        out = np.zeros((c.shape[0], self.n_cols))
        for p in range(self.column.size):  # at most two physical columns per output
            out[:, self.column[p]] += weighted[:, p]
        return out


def afp_exponent(w: np.ndarray, scale, gain: float) -> np.ndarray:
    """AFP one-bit exponent (reconstruction): True where |w| < scale/γ, i.e. where the weight
    fits the high-gain column."""
    return np.abs(w) < np.asarray(scale) / gain


def afp_weight_scale(w: np.ndarray, gain: float, scale=None) -> np.ndarray:
    """Per-weight scale (weight units at g_max) of the AFP mapping: s_j for weights with
    exponent 0, s_j/γ for those with exponent 1 (default s_j: the column's max |w|)."""
    s = np.max(np.abs(w), axis=0) if scale is None else np.asarray(scale, dtype=float)
    s = np.where(s > 0, s, 1.0)
    return np.where(afp_exponent(w, s, gain), s / gain, np.broadcast_to(s, w.shape))


def mapping_weight_sigma(w: np.ndarray, kind: str, noise, gain: float = 4.0) -> np.ndarray:
    """σ_i of every weight of a layer in weight units under a mapping, at the time and with
    the device model of ``noise`` (``robust_training.NoiseModel``; σ of a pair from
    ``robust_training.conductance_sigma``), max-abs column scales s:

    * fixed: s·σ_pair(|w|/s·g_max)/g_max;
    * fixed2: the same over √2 (two independent pairs averaged);
    * afp: a weight with exponent 1 sits at γ·|w|/s in the gain column (scaled back by 1/γ)
      while the other column holds a pair at target 0 whose devices still carry their
      (rectified) programming and read noise: σ² = ((s/γ)·σ_pair(γ|w|/s·g_max))² +
      (s·σ_pair(0))², over g_max²; a weight with exponent 0 likewise gets the gain column's
      zero pair at s/γ.
    """
    from imcsim.scenarios.robust_training import conductance_sigma

    g_max = noise.device.g_max
    s = column_scales_maxabs(w)
    u = np.minimum(np.abs(w) / s, 1.0)
    floor = float(conductance_sigma(np.zeros(1), noise)[0])
    if kind == "fixed":
        return s * conductance_sigma(u * g_max, noise) / g_max
    if kind == "fixed2":
        return s * conductance_sigma(u * g_max, noise) / (g_max * np.sqrt(2.0))
    if kind != "afp":
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {kind!r}")
    small = u < 1.0 / gain
    own = np.where(small, s / gain * conductance_sigma(np.minimum(gain * u, 1.0) * g_max, noise),
                   s * conductance_sigma(u * g_max, noise))
    other = np.where(small, s * floor, s / gain * floor)
    return np.sqrt(own ** 2 + other ** 2) / g_max


# --------------------------------------------------------------------------------------------
# Layer rows and ranges


def layer_forward(net, x: np.ndarray, matmul=None, keep=False):
    """Logits of ``net`` on ``x`` with ``matmul(layer, rows, W)`` replacing ``rows @ W`` (None:
    float); with ``keep``, also every layer's rows and post-cache (for back-propagation)."""
    h = np.asarray(x, dtype=np.float64)
    rows_all, caches = [], []
    for k, (layer, w, b) in enumerate(zip(net.layers, net.weights, net.biases)):
        rows = layer.pre(h)
        z = (rows @ w if matmul is None else matmul(k, rows, w)) + b
        h, cache = layer.post(z)
        if keep:
            rows_all.append(rows)
            caches.append(cache)
    return (h, rows_all, caches) if keep else h


def layer_rows(net, x: np.ndarray) -> list[np.ndarray]:
    """The rows every layer's tiles see when the float network runs on ``x``."""
    return layer_forward(net, x, keep=True)[1]


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _blocks(net, hw: Hardware, copies: int):
    cols = max(hw.tile_cols // copies, 1)
    for layer, w in enumerate(net.weights):
        for r0 in range(0, w.shape[0], hw.tile_rows):
            for c0 in range(0, w.shape[1], cols):
                yield layer, r0, c0, w[r0:r0 + hw.tile_rows, c0:c0 + cols]


def column_scales_maxabs(w: np.ndarray) -> np.ndarray:
    """Per-column max |w| (the largest weight of each column at g_max); 1 for an all-zero
    column."""
    s = np.max(np.abs(w), axis=0)
    return np.where(s > 0, s, 1.0)


def input_range_maxabs(rows: np.ndarray) -> float:
    """DAC range from the largest |input| of the calibration rows (1 if all are 0)."""
    return float(np.max(np.abs(rows))) or 1.0


def input_range_percentile(rows: np.ndarray, percentile: float) -> float:
    """DAC range at the ``percentile``-th percentile of |input| over the calibration rows
    (the statistical calibration of common quantisation tools); never 0."""
    value = float(np.percentile(np.abs(rows), percentile))
    return value if value > 0 else input_range_maxabs(rows)


def map_network(net, hw: Hardware, rows_calibration: list[np.ndarray], kind: str = "fixed", *,
                gain: float = 4.0, input_ranges: str | list[float] = "maxabs",
                percentile: float = 99.9) -> list[TileMap]:
    """Tiles of ``net`` with max-abs column scales and DAC ranges from the calibration rows
    (``input_ranges``: "maxabs", "percentile" or one value per tile), mapping ``kind``
    ("fixed", "fixed2", "afp"; ``gain`` γ of AFP)."""
    if kind not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {kind!r}")
    if kind == "afp" and not gain > 1.0:
        raise ValueError(f"the AFP gain must be > 1, got {gain}")
    copies = 1 if kind == "fixed" else 2
    tiles = []
    for index, (layer, r0, c0, block) in enumerate(_blocks(net, hw, copies)):
        rows = rows_calibration[layer][:, r0:r0 + block.shape[0]]
        if isinstance(input_ranges, str):
            r = (input_range_percentile(rows, percentile) if input_ranges == "percentile"
                 else input_range_maxabs(rows))
        else:
            r = float(input_ranges[index])
        s = column_scales_maxabs(block)
        n = block.shape[1]
        col = np.arange(n)
        if kind == "fixed":
            weights, gains, share, column = block.copy(), np.ones(n), np.ones(n), col
        elif kind == "fixed2":
            weights = np.concatenate([block, block], axis=1)
            gains, share, column = np.ones(2 * n), np.full(2 * n, 0.5), np.tile(col, 2)
        else:
            small = afp_exponent(block, s, gain)
            weights = np.concatenate([np.where(small, 0.0, block), np.where(small, block, 0.0)],
                                     axis=1)
            gains = np.concatenate([np.ones(n), np.full(n, gain)])
            share, column = np.ones(2 * n), np.tile(col, 2)
        tiles.append(TileMap(layer, r0, c0, n, weights, gains, share, column, s, r))
    return tiles


def tile_wide_scales(tiles: list[TileMap]) -> list[np.ndarray]:
    """One weight scale per tile, the largest of its column scales (for max-abs columns: the
    largest |w| of the block), so that only the tile's largest weight reaches g_max — the
    mapping of the GDP network check and aihwkit's default (per-tile, not per-column)."""
    return [np.full_like(t.scale, t.scale.max()) for t in tiles]


def with_ranges(tiles: list[TileMap], scales: list[np.ndarray], input_ranges: list[float]
                ) -> list[TileMap]:
    """Copies of ``tiles`` with new column scales and DAC ranges (e.g. chosen by PTO)."""
    return [replace(t, scale=np.asarray(s, dtype=float).copy(), input_range=float(r))
            for t, s, r in zip(tiles, scales, input_ranges)]


# --------------------------------------------------------------------------------------------
# Programming, reading, evaluating


@dataclass
class ProgrammedTile:
    """A tile's devices after programming: flat [G⁺ (rows·P), G⁻ (rows·P)]; ``t_prog`` each
    device's last pulse (s, None: all at t = 0), ``pulses`` its pulse count (None:
    statistical programming), ``converged`` whether its pair ended within the verify
    tolerance (verify only), ``mvm_error`` GDP's relative MVM error at its last iteration."""

    tile: TileMap
    seed: int
    g_target: np.ndarray
    g_prog: np.ndarray
    nu: np.ndarray
    q_s: np.ndarray
    gdc_reference: float = np.nan
    t_prog: np.ndarray | None = None
    pulses: np.ndarray | None = None
    converged: np.ndarray | None = None
    mvm_error: float = np.nan


def conductance_targets(tile: TileMap, g_max: float, common_mode=()) -> np.ndarray:
    """Flat targets [G⁺, G⁻] (S) of a tile's pairs, both raised by C(|u|) of
    ``common_mode`` (none when empty)."""
    u = tile.targets()
    g_t = np.concatenate([np.maximum(u, 0.0).ravel(), np.maximum(-u, 0.0).ravel()]) * g_max
    if len(common_mode):
        from imcsim.scenarios.robust_training import common_mode_conductance

        g_t = g_t + np.tile(common_mode_conductance(common_mode, np.abs(u).ravel())[0], 2)
    return g_t


def program(tiles: list[TileMap], stat: pcm.StatisticalModel, device_seed: int,
            programming: Programming | None = None,
            periphery: crossbar.Periphery | None = None,
            common_mode: tuple[float, ...] = ()) -> list[ProgrammedTile]:
    """Program every tile at t = 0 on the devices of ``device_seed`` (tile k:
    ``network.tile_seed(device_seed, k)``), by ``programming`` (default: statistical); GDP
    needs the chip's ``periphery`` (its input_range is replaced by each tile's DAC range).
    Statistical and program-and-verify programming aim both devices of a pair ``common_mode``
    higher (:func:`conductance_targets`); GDP's targets are the differences.

    Every method draws the drift exponents from the same standard normals (stream NU,
    counter 0, unused by the programming loops) and reads with the same counters, so for one
    seed they differ only in how the devices were programmed (common random numbers). GDP's
    loop draws from ``network.PROGRAMMING_COUNTER0`` on, so no evaluation read repeats the
    read noise of one of its iterations."""
    programming = programming or Programming()
    if programming.method == "gdp" and periphery is None:
        raise ValueError("GDP programming needs the chip's periphery")
    out = []
    for index, tile in enumerate(tiles):
        seed = network.tile_seed(device_seed, index)
        g_t = conductance_targets(tile, stat.g_max,
                                  () if programming.method == "gdp" else common_mode)
        chip = ProgrammedTile(tile, seed, g_t, np.empty_like(g_t), np.empty_like(g_t),
                              np.empty_like(g_t))
        if programming.method == "gdp":
            u = tile.targets()
            state = gdp_programming.TileState(
                chip.g_prog, np.zeros(g_t.size), np.empty(g_t.size), np.empty(g_t.size),
                pcm.draw_device_params(seed, g_t.size, programming.pulse))
            chip.pulses = np.zeros(g_t.size, dtype=np.int64)
            # Normalised targets at weight scale 1: the tile's G⁺ − G⁻ = u·g_max, its inputs
            # through the tile's own DAC range, as tile_output computes them.
            trace = gdp_programming.program_gdp(
                state, u, pulse=programming.pulse, stat=stat,
                periphery=replace(periphery, input_range=tile.input_range), weight_scale=1.0,
                policy=programming.gdp, seed=seed, counter0=network.PROGRAMMING_COUNTER0,
                t_start=0.0, pulses_out=chip.pulses)
            chip.t_prog, chip.mvm_error = state.t_prog, float(trace.mvm_error[-1])
        elif programming.method == "verify":
            half = g_t.size // 2
            chip.g_prog, chip.t_prog, chip.pulses, chip.converged, _ = network.program_verify(
                g_t[:half], g_t[half:], seed, programming.verify, programming.pulse)
        else:
            pcm.program_statistical(g_t, chip.g_prog, stat.g_max, np.asarray(stat.prog_coeff),
                                    stat.prog_coeff_g_ref, stat.prog_noise_scale,
                                    np.uint64(seed), np.uint64(0))
        if programming.method == "statistical":
            # fitted at the target (Joshi: ν and Q_s; HERMES: ν, Q_s at the programmed state)
            g_for_nu = g_t
            g_for_qs = g_t if stat.model_id == pcm.MODEL_JOSHI else chip.g_prog
        else:  # a pulse-programmed device knows only the state it reached
            g_for_nu = g_for_qs = chip.g_prog
        pcm.draw_drift_state(g_for_nu, g_for_qs, stat.g_max, stat.model_id, stat.drift_scale,
                             np.uint64(seed), np.uint64(0), chip.nu, chip.q_s)
        out.append(chip)
    return out


NOISE_MODELS = ("preset", "characterised")
CHARACTERISATION_LEVELS = 33  # ~2000 pairs a level: σ to 1.6 %
CHARACTERISATION_PAIRS = 65536  # as many tiles (or network copies) as hold it


@dataclass(frozen=True)
class ProgrammingFit:
    """What :func:`characterise_programming` measured and fitted. Per level |u| (fraction of
    g_max): ``sigma`` the standard deviation of the programmed weight error
    e = G⁺ − G⁻ − u·g_max (S) over at least ``pairs_per_level`` pairs (NaN for a level with
    fewer than 8), ``sigma_se`` its standard
    error (S), ``bias`` the mean of e in the weight's direction (S); ``sigma_fitted`` and
    ``sigma_preset`` what the fitted and the preset programming-noise models predict (S);
    ``stat`` the preset with the fitted coefficients; ``chi2_dof`` χ²/(levels − coefficients)
    of the fit in units of ``sigma_se`` (≈ 1 where the preset's polynomial form describes
    the programming, ≫ 1 where it cannot). ``low`` the mean conductance of the device of
    each pair whose target is 0 (S) and ``low_fitted`` the model's; ``common_mode`` the
    fitted C(|u|) coefficients (S, empty when the data do not call for one) and
    ``common_mode_levels`` C at each level (S)."""

    levels: np.ndarray
    sigma: np.ndarray
    sigma_se: np.ndarray
    bias: np.ndarray
    sigma_fitted: np.ndarray
    sigma_preset: np.ndarray
    stat: pcm.StatisticalModel
    chi2_dof: float
    pairs_per_level: int
    low: np.ndarray
    low_fitted: np.ndarray
    common_mode: tuple[float, ...]
    common_mode_levels: np.ndarray


def _programming_sigma(g_target, stat: pcm.StatisticalModel, common_mode=()) -> np.ndarray:
    """σ of G⁺ − G⁻ (S) of pairs with G⁺ at ``g_target`` and G⁻ at 0, both raised by
    ``common_mode``, under the statistical programming noise of ``stat`` alone (both devices
    rectified at 0, as programmed)."""
    from imcsim.scenarios import robust_training as rt

    noise = rt.NoiseModel(device=stat, t_inference=0.0, drift=False, read=False,
                          common_mode=common_mode)
    return rt.conductance_sigma(np.asarray(g_target, dtype=np.float64), noise)


def _low_device_mean(g_target, stat: pcm.StatisticalModel) -> np.ndarray:
    """E[max(0, g_T + σ_prog(g_T)·ξ)] (S): the programmed mean of single devices."""
    from imcsim.scenarios import robust_training as rt

    noise = rt.NoiseModel(device=stat, t_inference=0.0, drift=False, read=False)
    return rt.device_moments(np.asarray(g_target, dtype=np.float64), noise)[0]


def _common_mode_fit(levels, low, low_se, stat: pcm.StatisticalModel, max_degree: int = 4):
    """Coefficients (S) of C(|u|) that make the model's mean of the target-0 device,
    E[max(0, C + σ_prog(C)·ξ)], match ``low`` at each level: per level the C_k that does
    (bisection; 0 where the mean at C = 0 already reaches it), then a polynomial in |u| by
    weighted least squares, its degree (or none) by BIC on χ² in units of ``low_se``.
    Polynomials negative anywhere on [0, 1] are not candidates."""
    from imcsim.scenarios.robust_training import check_common_mode, common_mode_conductance

    g_max = stat.g_max
    lo, hi = np.zeros(levels.size), np.full(levels.size, 2.0 * g_max)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _low_device_mean(mid, stat) > low
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    c_level = 0.5 * (lo + hi)

    def chi2(coeff):
        c = common_mode_conductance(coeff, levels)[0]
        return float(np.sum(((_low_device_mean(c, stat) - low) / low_se) ** 2))

    best = (chi2(()), ())
    for degree in range(min(max_degree, levels.size - 2) + 1):
        coeff = np.polynomial.polynomial.polyfit(levels, c_level, degree, w=1.0 / low_se)
        try:
            coeff = check_common_mode(coeff)
        except ValueError:
            continue
        score = chi2(coeff) + (degree + 1) * np.log(levels.size)
        if score < best[0]:
            best = (score, coeff)
    return best[1]


def characterise_programming(hw: Hardware, seed: int, levels: int = CHARACTERISATION_LEVELS,
                             max_degree: int = 8, pairs: int = CHARACTERISATION_PAIRS,
                             tiles: list[TileMap] | None = None) -> ProgrammingFit:
    """Characterise the chip's programming and refit the preset's programming-noise model to
    it, as Joshi et al. (2020) fitted σ_prog(g_T) to their own iterative programming.

    Characterisation tiles of the chip's ``hw.tile_rows × hw.tile_cols``, as many as hold at
    least ``pairs`` pairs, on devices of their own (``seed``; never a chip that is evaluated)
    get targets u = ±|u|_k, the ``levels`` values |u|_k evenly spaced on [0, 1] assigned in
    equal numbers at random, with random signs, and are programmed by the chip's own method
    (``hw.programming``: statistical, program-and-verify or GDP through a DAC range of 1,
    tile k on the devices of ``network.tile_seed(seed, k)``). With ``tiles`` (a network's
    mapped tiles) the characterisation instead programs as many copies of those tiles as
    hold ``pairs`` pairs, on devices of their own, and bins every pair by its |u| to the
    nearest of the ``levels`` levels (levels with fewer than 8 pairs are not measured: NaN):
    a programming whose outcome depends on what else a tile holds (GDP's common mode does)
    is then characterised on the tiles it will program. From the programmed
    conductances (the states the devices reached, before any drift or read noise) the weight
    error of every pair is
    e = G⁺ − G⁻ − u·g_max; per level its standard deviation σ_k and standard error
    σ_k/sqrt(2(n_k − 1)), and the mean and standard error of the device whose target is 0.

    **Common mode.** A programming that leaves conductance in both devices of a pair (GDP
    raises both; at |u| = 0 by about half of g_max on the default chip) adds the drift and
    read noise of that conductance to every weight without carrying signal. The model of
    the pair is therefore G⁺ at g_T + C(|u|), G⁻ at C(|u|), C a polynomial in |u| fitted to
    the mean of the target-0 device (:func:`_common_mode_fit`; none where the data do not
    call for one, as for the statistical model's own programming, whose target-0 device sits
    at its rectified noise). The two fits alternate three times: C given σ_prog (the preset's
    first), σ_prog given C. GDP's common mode depends on what else a tile holds (more than
    twice as large at target 0 among uniformly spread weights as among mostly small ones,
    tested), so uniform levels overstate it for a trained network's tiles: pass ``tiles``.

    **Programming noise.** The fit keeps the preset's functional form: σ_prog(g) =
    max(P(g/g_max), 0) with P a polynomial (coefficients in S at g_ref = g_max), applied
    independently to both devices of a pair at their conductances and rectified at 0 as the
    statistical model programs them, so that the predicted pair σ(|u|_k) =
    sqrt(Var(G⁺) + Var(G⁻)) is what noise injection, HA-SGD and PTO compute
    (``robust_training.conductance_sigma``). For each degree from the preset's to
    ``max_degree`` the coefficients minimise χ² = Σ_k ((σ(|u|_k) − σ_k)/se_k)²
    (``scipy.optimize.least_squares``, started at the preset's and at a constant); the degree
    with the least BIC, χ² + (degree + 1)·ln(levels), is kept. The preset's degree describes
    its own programming (χ²/dof ≈ 1), but program-and-verify leaves a near-constant σ of
    about tolerance/√3 above a step at |u| = 0 (both devices RESET), which a low-degree
    polynomial cannot follow. Not modelled, and reported instead: the mean error ``bias``
    (the statistical model's programming is unbiased but for its rectification at 0), the
    spread of the common mode from pair to pair, and any correlation between the two
    devices of a pair or between pairs (program-and-verify of the difference, GDP). Drift
    and read noise keep the preset's fits, which the pulse-level chip also follows."""
    from scipy.optimize import least_squares

    stat, g_max = hw.stat, hw.stat.g_max
    if levels < len(stat.prog_coeff) + 2:
        raise ValueError(f"characterisation needs at least {len(stat.prog_coeff) + 2} levels")
    magnitude = np.linspace(0.0, 1.0, levels)
    if tiles is None:
        if pairs < 8 * levels:
            raise ValueError(f"characterisation needs at least 8 pairs a level, got {pairs} "
                             f"pairs for {levels} levels")
        gen = np.random.default_rng(seed)
        rows, cols = hw.tile_rows, hw.tile_cols
        n_tiles = -(-pairs // (rows * cols))  # as many of the chip's tiles as hold ``pairs``
        level_of = gen.permutation(np.arange(n_tiles * rows * cols) % levels).reshape(
            n_tiles, rows, cols)
        sign = np.where(gen.random(level_of.shape) < 0.5, -1.0, 1.0)
        u = sign * magnitude[level_of]
        ones = np.ones(cols)
        copies = [TileMap(layer=0, row0=0, col0=0, n_cols=cols, weights=u[k], gain=ones,
                          share=ones, column=np.arange(cols), scale=ones, input_range=1.0)
                  for k in range(n_tiles)]
    else:
        per_copy = sum(t.weights.size for t in tiles)
        copies = list(tiles) * -(-pairs // per_copy)
    chips = program(copies, stat, seed, hw.programming, hw.periphery, hw.common_mode)
    u = np.concatenate([chip.tile.targets().ravel() for chip in chips])
    g_plus = np.concatenate([chip.g_prog[:chip.g_prog.size // 2] for chip in chips])
    g_minus = np.concatenate([chip.g_prog[chip.g_prog.size // 2:] for chip in chips])
    level_of = np.rint(np.abs(u) * (levels - 1)).astype(np.int64)
    error = g_plus - g_minus - u * g_max
    along = np.where(u < 0.0, -error, error)  # positive: |weight| programmed too large
    low_device = np.where(u < 0.0, g_plus, g_minus)
    count = np.bincount(level_of, minlength=levels)
    used = count >= 8
    if used.sum() < len(stat.prog_coeff) + 2:
        raise ValueError(f"characterisation measured only {int(used.sum())} levels with 8 or "
                         f"more pairs; it needs {len(stat.prog_coeff) + 2}")

    def per_level(values, statistic):
        return np.array([statistic(values[level_of == k]) if used[k] else np.nan
                         for k in range(levels)])

    sigma = per_level(error, lambda v: v.std(ddof=1))
    bias = per_level(along, np.mean)
    low = per_level(low_device, np.mean)
    low_se = per_level(low_device, lambda v: v.std(ddof=1) / np.sqrt(v.size))
    se = sigma / np.sqrt(2.0 * (np.maximum(count, 2) - 1))
    # A level measured without scatter (noise-free programming) still counts, at the
    # resolution of the conductances themselves.
    se = np.maximum(se, 1e-12 * g_max)
    low_se = np.maximum(low_se, 1e-12 * g_max)
    g_levels = magnitude * g_max
    n = int(count[used].min())

    def model(coeff_us):
        return replace(stat, prog_coeff=tuple(float(c) * 1e-6 for c in coeff_us),
                       prog_coeff_g_ref=g_max, prog_noise_scale=1.0)

    preset_us = (np.asarray(stat.prog_coeff) * (g_max / stat.prog_coeff_g_ref)
                 * stat.prog_noise_scale * 1e6)
    current = stat
    n_used = int(used.sum())
    for _ in range(3):
        common = _common_mode_fit(magnitude[used], low[used], low_se[used], current)

        def residuals(coeff_us, common=common):  # in µS, the units the fit reads
            return ((_programming_sigma(g_levels[used], model(coeff_us), common) - sigma[used])
                    / se[used])

        best = None
        for degree in range(preset_us.size - 1, min(max_degree, n_used - 2) + 1):
            starts = (np.pad(preset_us, (0, degree + 1 - preset_us.size)),
                      np.r_[np.nanmedian(sigma) * 1e6, np.zeros(degree)])
            for start in starts:
                fit = least_squares(residuals, start, method="lm")
                chi2 = float(np.sum(fit.fun ** 2))
                bic = chi2 + (degree + 1) * np.log(n_used)
                if best is None or bic < best[0]:
                    best = (bic, chi2, degree, fit.x)
        _, chi2, degree, coeff_us = best
        current = model(coeff_us)
    from imcsim.scenarios.robust_training import common_mode_conductance

    c_levels = common_mode_conductance(common, magnitude)[0]
    return ProgrammingFit(levels=magnitude, sigma=sigma, sigma_se=se, bias=bias,
                          sigma_fitted=_programming_sigma(g_levels, current, common),
                          sigma_preset=_programming_sigma(g_levels, stat), stat=current,
                          chi2_dof=chi2 / (n_used - degree - 1), pairs_per_level=n,
                          low=low, low_fitted=_low_device_mean(c_levels, current),
                          common_mode=common, common_mode_levels=c_levels)


def read(chip: ProgrammedTile, stat: pcm.StatisticalModel, t: float, counter: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """(G⁺, G⁻), each (rows, P) in S, of one tile read at ``t`` with read-noise counter."""
    g = np.empty((1, chip.g_prog.size))
    t_prog = chip.t_prog if chip.t_prog is not None else np.zeros_like(chip.g_prog)
    pcm.read_drifted(chip.g_prog, t_prog, chip.nu, chip.q_s,
                     np.array([float(t)]), np.array([counter], dtype=np.uint64), stat.t0,
                     stat.t_read, stat.shifted, stat.read_noise_scale, np.uint64(chip.seed), g)
    half = g.size // 2
    shape = chip.tile.weights.shape
    return g[0, :half].reshape(shape), g[0, half:].reshape(shape)


def tile_output(tile: TileMap, g_plus, g_minus, rows: np.ndarray, hw: Hardware) -> np.ndarray:
    """Block outputs (B, n_cols) in weight units, before drift compensation: the physical
    columns through DAC and ADC (:func:`crossbar.tile_mvm` with weight_scale = 1, which
    returns r·c, c the normalised current), recombined digitally with the factors f_p."""
    periphery = replace(hw.periphery, input_range=tile.input_range)
    x = rows[:, tile.row0:tile.row0 + tile.rows]
    c = crossbar.tile_mvm(g_plus, g_minus, x, periphery, 1.0, hw.stat.g_max)
    return tile.combine(c)


def calibrate(chips: list[ProgrammedTile], hw: Hardware, rows_calibration: list[np.ndarray]
              ) -> None:
    """Store every tile's drift-compensation reference: mean |y| on the calibration rows of
    its layer, read at ``hw.t_calibrate``."""
    for chip in chips:
        gp, gm = read(chip, hw.stat, hw.t_calibrate, _READ_COUNTER0)
        y = tile_output(chip.tile, gp, gm, rows_calibration[chip.tile.layer], hw)
        chip.gdc_reference = float(np.mean(np.abs(y)))


def _compensation(chips, reads, hw: Hardware, rows_calibration) -> list[float]:
    alphas = []
    for chip, (gp, gm) in zip(chips, reads):
        alpha = 1.0
        if rows_calibration is not None and np.isfinite(chip.gdc_reference):
            level = float(np.mean(np.abs(tile_output(chip.tile, gp, gm,
                                                     rows_calibration[chip.tile.layer], hw))))
            alpha = chip.gdc_reference / level if level > 0 else 1.0
        alphas.append(alpha)
    return alphas


def chip_hook(chips: list[ProgrammedTile], hw: Hardware, t: float, counter: int,
              rows_calibration: list[np.ndarray] | None):
    """``matmul(layer, rows, W)`` computing each layer on its tiles read at ``t``, every
    tile's output multiplied by α = reference/mean|y on the calibration rows| (no
    compensation when ``rows_calibration`` is None)."""
    reads = [read(chip, hw.stat, t, counter) for chip in chips]
    alphas = _compensation(chips, reads, hw, rows_calibration)

    def matmul(layer, rows, w):
        y = np.zeros((rows.shape[0], w.shape[1]))
        for chip, (gp, gm), alpha in zip(chips, reads, alphas):
            tile = chip.tile
            if tile.layer == layer:
                y[:, tile.col0:tile.col0 + tile.n_cols] += alpha * tile_output(tile, gp, gm,
                                                                                rows, hw)
        return y

    matmul.reads = reads
    matmul.alphas = alphas
    return matmul


def weight_error(net, chips: list[ProgrammedTile], reads, alphas, g_max: float) -> float:
    """‖W_eff − W‖/‖W‖ over all layers, W_eff = α·Σ_p f_p·(G⁺ − G⁻)_p/g_max the weights the
    tiles hold as read (drift-compensated, periphery ideal): the device noise a mapping
    leaves in weight units."""
    num = den = 0.0
    for chip, (gp, gm), alpha in zip(chips, reads, alphas):
        tile = chip.tile
        w_eff = alpha * tile.combine((gp - gm) / g_max)
        w = net.weights[tile.layer][tile.row0:tile.row0 + tile.rows,
                                    tile.col0:tile.col0 + tile.n_cols]
        num += float(np.sum((w_eff - w) ** 2))
        den += float(np.sum(w * w))
    return float(np.sqrt(num / den))


def deploy(tiles: list[TileMap], hw: Hardware, device_seed: int,
           rows_calibration: list[np.ndarray]) -> list[ProgrammedTile]:
    """Program the tiles on the devices of ``device_seed`` and take the drift-compensation
    reference."""
    chips = program(tiles, hw.stat, device_seed, hw.programming, hw.periphery, hw.common_mode)
    calibrate(chips, hw, rows_calibration)
    return chips


def evaluate(net, tiles: list[TileMap], hw: Hardware, device_seed: int, times, x, y,
             rows_calibration: list[np.ndarray], errors: list | None = None,
             deployed: list | None = None) -> np.ndarray:
    """Test accuracy of ``net`` on its tiles programmed on the devices of ``device_seed``,
    at each of ``times`` (s) after programming, with global drift compensation; appends
    :func:`weight_error` at each time to ``errors`` and the programmed tiles to
    ``deployed`` when given."""
    chips = deploy(tiles, hw, device_seed, rows_calibration)
    if deployed is not None:
        deployed.extend(chips)
    out = np.empty(len(times))
    for k, t in enumerate(times):
        hook = chip_hook(chips, hw, t, _READ_COUNTER0 + 1 + k, rows_calibration)
        out[k] = accuracy(layer_forward(net, x, hook), y)
        if errors is not None:
            errors.append(weight_error(net, chips, hook.reads, hook.alphas, hw.stat.g_max))
    return out


# --------------------------------------------------------------------------------------------
# The study


# What each method must know about the hardware (beyond the trained weights).
NEEDS = {
    "float": "nothing (digital reference)",
    "sgd_maxabs": "tile size; calibration inputs for the DAC range (max |x|)",
    "sgd_maxabs_tile": "tile size; calibration inputs for the DAC range (max |x|); one weight "
                       "scale per tile (max |w| of its block), no per-column scale",
    "sgd_percentile": "tile size; calibration inputs for the DAC range (percentile of |x|)",
    "sgd_fixed2": "tile size; calibration inputs; two pairs per weight (2x devices, columns)",
    "noise": "device noise model sigma(g) at the deployment time (programming, drift "
             "spread, 1/f read); max-abs mapping at training time",
    "hasgd": "device noise model sigma(g) at the deployment time; max-abs mapping at "
             "training time",
    "afp": "tile size; calibration inputs; AFP gain and a second column per output (2x "
           "devices, 2 ADC conversions per output)",
    "afp_hasgd": "device noise model sigma(g) at the deployment time; the AFP mapping and "
                 "gain at training time; 2x devices",
    "pto_sgd": "DAC and ADC bits, ADC full scale, device statistical model (programming, "
               "drift, 1/f read noise), deployment time, tile partitioning; 256 labelled "
               "calibration images; nothing at training time (and it assumes no wire "
               "resistance)",
    "pto_noise": "everything of pto_sgd, plus the device noise model at training time",
    "sgd_mse_clip": "device noise model sigma(g) at the deployment time (per-column clipping "
                    "that minimises the expected weight error); tile size; calibration inputs",
    "pto_sgd_oracle": "DIAGNOSTIC, not a method: PTO on SGD as pto_sgd but with the TEST "
                      "images and labels as its calibration set (the most a chip-agnostic "
                      "range choice can buy)",
    "pto_sgd_chip_oracle": "DIAGNOSTIC, unphysical ceiling: PTO on the evaluated chip's own "
                           "devices and read against the TEST labels, a reprogrammed device "
                           "assumed to repeat its programming error",
}

# Methods that assume the device noise model, and so its programming noise.
_NOISE_AWARE = ("noise", "hasgd", "afp_hasgd", "pto_sgd", "pto_noise", "sgd_mse_clip",
                "pto_sgd_oracle")


def needs(method: str, noise_model: str = "preset", pto_wires: bool = False) -> str:
    """What ``method`` must know about the hardware (NEEDS), with where its programming noise
    comes from under ``noise_model`` and whether PTO models the wires."""
    text = NEEDS[method]
    if pto_wires and method.startswith("pto"):
        text = text.replace(" (and it assumes no wire resistance)",
                            "; the wire resistance per cell pitch (its tile model solves the "
                            "resistive array)")
    if noise_model == "characterised" and method in _NOISE_AWARE:
        text += ("; its programming noise and common-mode conductance measured on copies of "
                 "the SGD network's tiles programmed by the chip's own method")
    return text


# The trained network each method starts from.
TRAINING_OF = {"float": "sgd", "sgd_maxabs": "sgd", "sgd_maxabs_tile": "sgd",
               "sgd_percentile": "sgd",
               "sgd_fixed2": "sgd", "afp": "sgd", "pto_sgd": "sgd", "noise": "noise",
               "pto_noise": "noise", "hasgd": "hasgd", "afp_hasgd": "hasgd_afp",
               "sgd_mse_clip": "sgd", "pto_sgd_oracle": "sgd", "pto_sgd_chip_oracle": "sgd"}
# PTO on device draws of its own (never the evaluated chip's); the oracle on the test set
PTO_METHODS = ("pto_sgd", "pto_noise", "pto_sgd_oracle")
_STREAM_PTO = 70  # PTO's device draws: never the devices of an evaluated chip
_STREAM_CHARACTERISE = 71  # the programming characterisation: never an evaluated chip


def recovery(float_acc, baseline_acc, remedy_acc) -> float:
    """Share of the float − baseline accuracy loss a remedy wins back, from per-seed
    accuracies: (mean remedy − mean baseline)/(mean float − mean baseline); NaN where the
    loss is below two standard errors of the baseline's mean (no loss to measure)."""
    baseline = np.asarray(baseline_acc, dtype=float)
    lost = float(np.mean(float_acc) - baseline.mean())
    sem = float(baseline.std(ddof=1) / np.sqrt(baseline.size)) if baseline.size > 1 else 0.0
    if not lost > 2.0 * sem:
        return np.nan
    return float((np.mean(remedy_acc) - baseline.mean()) / lost)


def bootstrap_picks(n: int, groups=None, resamples: int = 10000, seed: int = 0) -> np.ndarray:
    """Indices (resamples, n) of a bootstrap over ``n`` paired samples (chips).

    Without ``groups``: every resample draws n samples with replacement. With ``groups`` (one
    label per sample, e.g. the training seed of the network a chip carries; equal group
    sizes): a two-stage bootstrap, which first draws the groups with replacement and then the
    samples within each drawn group, so that the scatter between groups (a network trained
    from another seed is another network) enters the interval instead of being averaged away
    as if every chip were independent. Deterministic for a given ``seed``."""
    gen = np.random.default_rng(seed)
    if groups is None:
        return gen.integers(0, n, size=(resamples, n))
    labels = np.asarray(groups)
    members = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    size = members[0].size
    if any(m.size != size for m in members) or size * len(members) != n:
        raise ValueError("bootstrap groups must have equal sizes")
    table = np.stack(members)  # (groups, size)
    chosen = gen.integers(0, len(members), size=(resamples, len(members)))
    within = gen.integers(0, size, size=(resamples, len(members), size))
    return table[chosen[:, :, None], within].reshape(resamples, n)


def recovery_interval(float_acc, baseline_acc, remedy_acc, level: float = 0.95,
                      resamples: int = 10000, seed: int = 0, groups=None
                      ) -> tuple[float, float]:
    """Paired bootstrap percentile interval of :func:`recovery` over device seeds (chips).

    The ratio of two noisy means has no simple standard error, and with a handful of seeds
    its scatter is as large as the ratio, so a share quoted without an interval says little.
    Chips are resampled with replacement, the baseline and remedy of a chip together (they ran
    on the same devices), by :func:`bootstrap_picks` (two-stage where ``groups`` labels the
    training seed of each chip's networks); resamples whose loss is not positive have no share
    and are dropped. (NaN, NaN) where the point estimate is NaN."""
    if not np.isfinite(recovery(float_acc, baseline_acc, remedy_acc)):
        return np.nan, np.nan
    flt = np.broadcast_to(np.asarray(float_acc, dtype=float), np.shape(baseline_acc))
    base = np.asarray(baseline_acc, dtype=float)
    remedy = np.asarray(remedy_acc, dtype=float)
    picks = bootstrap_picks(base.size, groups, resamples, seed)
    lost = flt[picks].mean(axis=1) - base[picks].mean(axis=1)
    gained = remedy[picks].mean(axis=1) - base[picks].mean(axis=1)
    shares = gained[lost > 0] / lost[lost > 0]
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(shares, [tail, 100.0 - tail])
    return float(low), float(high)


# What the trace keeps of each pulse-level programming, per method and device seed.
_CONDUCTANCE_RECORD = ("conductance", "mean programmed device conductance over the mean "
                       "target conductance (1: each pair holds just its target; above 1: "
                       "conductance common to both devices of a pair, which drifts and reads "
                       "noisily but carries no signal)")
_PROGRAMMING_RECORDS = {
    "statistical": (_CONDUCTANCE_RECORD,),
    "verify": (("pulses", "mean pulses per device (RESETs included)"),
               ("converged", "share of pairs that ended within the verify tolerance"),
               _CONDUCTANCE_RECORD),
    "gdp": (("pulses", "mean pulses per device (RESETs included)"),
            ("mvm_error", "relative MVM error |y - y_target|/|y_target| seen through the "
                          "periphery at GDP's last iteration, mean over tiles"),
            _CONDUCTANCE_RECORD),
}


def _programming_record(what: str, chips: list[ProgrammedTile]) -> float:
    if what == "mvm_error":
        return float(np.mean([c.mvm_error for c in chips]))
    if what == "conductance":
        return float(np.mean(np.concatenate([c.g_prog for c in chips]))
                     / np.mean(np.concatenate([c.g_target for c in chips])))
    return float(np.mean(np.concatenate([getattr(c, what) for c in chips])))


def _mapping_of(method: str) -> tuple[str, str]:
    """(mapping kind, DAC range rule) of a method."""
    if method in ("afp", "afp_hasgd"):
        return "afp", "maxabs"
    if method == "sgd_fixed2":
        return "fixed2", "maxabs"
    if method == "sgd_percentile":
        return "fixed", "percentile"
    return "fixed", "maxabs"


class InferenceRun:
    """The inference-robustness study of a scenario with an ``[inference]`` table."""

    def __init__(self, loaded, seed: int):
        from threadpoolctl import threadpool_limits

        from imcsim.errors import InputError
        from imcsim.scenarios import digits, robust_training

        sc = loaded.scenario
        self.section = sec = sc.inference
        per = sc.periphery
        stat = sc.device.statistical_model()
        if stat.kind not in DEVICE_MODELS and any(m.startswith("pto") for m in sec.methods):
            raise InputError(f"device.model: PTO's differentiable device model implements "
                             f"{', '.join(DEVICE_MODELS)}, not {stat.kind!r}")
        if "pto_sgd_chip_oracle" in sec.methods and sec.pto.t_target not in sec.times:
            raise InputError("inference.pto.t_target: the chip oracle needs it among "
                             "inference.times")
        periphery = per.periphery()
        programming = Programming(sec.programming, sec.verify.policy(periphery),
                                  sc.device.pulse_model(), sec.gdp.policy())
        self.hw = Hardware(stat=stat, periphery=periphery, tile_rows=sec.tile_rows,
                           tile_cols=sec.tile_cols, t_calibrate=sec.t_calibrate,
                           programming=programming)
        self.pto_seed = int(rng.stream_key(np.uint64(seed), np.uint64(_STREAM_PTO))
                            >> np.uint64(1))
        self.characterisation_seed = int(rng.stream_key(
            np.uint64(seed), np.uint64(_STREAM_CHARACTERISE)) >> np.uint64(1))
        # What the noise-aware methods assume the chip to be (``model_hw``): the chip itself
        # but for its programming noise under noise_model = "characterised" (set in run()).
        self.model_hw = self.hw
        # Under a characterised noise model the SGD network comes first: the programming is
        # characterised on copies of its mapping before any noise-aware training.
        self.trainings = ["sgd"] if sec.noise_model == "characterised" else []
        for method in sec.methods:
            name = TRAINING_OF[method]
            if name not in self.trainings:
                self.trainings.append(name)
        with threadpool_limits(1, user_api="blas"):
            split = digits.load_digits_split(sec.train_seed if sec.split_seed is None
                                             else sec.split_seed)
        n_cal = sec.calibration_images
        if n_cal >= split.x_train.shape[0]:
            raise InputError(f"inference.calibration_images: {n_cal} is not below the "
                             f"{split.x_train.shape[0]} training images")
        # The calibration images set the DAC ranges, the drift-compensation reference and
        # PTO's objective. "train": the first training images, which every network was also
        # trained on (the usual post-training calibration set); "holdout": the same images
        # withheld from every training, so that PTO fits data its network never saw.
        self.x_cal, self.y_cal = split.x_train[:n_cal], split.y_train[:n_cal]
        self.data = (split if sec.calibration_source == "train" else digits.DataSplit(
            split.x_train[n_cal:], split.y_train[n_cal:], split.x_test, split.y_test))
        self.features = self.data.x_train.shape[1]
        self.classes = int(self.data.y_train.max()) + 1
        self.shapes = {a: robust_training.build_net(a, self.features, self.classes,
                                                    hidden=tuple(sec.hidden),
                                                    channels=sec.channels, seed=0)
                       for a in sec.architectures}
        n_pto = sum(m in PTO_METHODS for m in sec.methods)
        n_eval = sum(m != "float" for m in sec.methods) * len(sec.device_seeds)
        self.n_steps = len(sec.architectures) * (len(self.trainings) + n_pto + n_eval)
        self.writer = None

    def _pto_tiles(self, arch):
        """Tiles of the fixed max-abs mapping (the partition PTO optimises)."""
        net = self.shapes[arch]
        rows = [np.ones((1, w.shape[0])) for w in net.weights]
        return map_network(net, self.hw, rows, "fixed")

    def declare(self, writer):
        import json

        sec = self.section
        self.writer = w = writer
        w.set_attrs(inference_architectures=list(sec.architectures),
                    inference_methods=list(sec.methods),
                    inference_needs=json.dumps({m: needs(m, sec.noise_model, sec.pto.wires)
                                                for m in sec.methods}),
                    inference_device_seeds=list(sec.device_seeds),
                    inference_times=list(sec.times),
                    inference_trainings=self.trainings,
                    inference_pto_seed=self.pto_seed,
                    inference_programming=sec.programming,
                    inference_noise_model=sec.noise_model)
        for arch in sec.architectures if sec.noise_model == "characterised" else ():
            levels = CHARACTERISATION_LEVELS
            w.declare_series(f"characterisation_{arch}_levels", (levels,), "f8", "1",
                             f"{arch}: target |u| of each level of the programming "
                             "characterisation, fraction of g_max", n=1, time_units="s",
                             time_description="0: programming")
            for what, desc in (
                    ("sigma", "measured std of the programmed weight error G+ - G- - u*g_max"),
                    ("sigma_se", "standard error of sigma"),
                    ("bias", "measured mean weight error in the weight's direction"),
                    ("sigma_fitted", "std predicted by the refitted programming-noise model "
                                     "that noise injection, HA-SGD and PTO assume"),
                    ("sigma_preset", "std predicted by the device preset's programming-noise "
                                     "fit"),
                    ("low", "measured mean conductance of the device whose target is 0"),
                    ("low_fitted", "mean of that device under the refitted model, common mode "
                                   "included"),
                    ("common_mode_levels", "fitted common-mode conductance C(|u|) both "
                                           "devices of a pair carry in the refitted model")):
                w.declare_series(f"characterisation_{arch}_{what}", (levels,), "f8", "S",
                                 f"{arch}, per level (NaN: fewer than 8 pairs): {desc} "
                                 f"({sec.programming} programming of copies of the SGD "
                                 f"network's max-abs mapping, {CHARACTERISATION_PAIRS} or "
                                 "more pairs, devices of their own)",
                                 n=1, time_units="s",
                                 time_description="0: programming")
            w.declare_metric(f"characterisation_{arch}_chi2_dof", "1",
                             "chi^2 per degree of freedom of the programming-noise fit "
                             "(~1: the polynomial form describes the programming)")
        n_seeds = len(sec.device_seeds)
        for arch in sec.architectures:
            for method in sec.methods:
                w.declare_series(f"accuracy_{arch}_{method}", (n_seeds,), "f8", "1",
                                 f"{arch}, {method}: test accuracy per device seed "
                                 f"({list(sec.device_seeds)}) at each time after "
                                 f"programming, with global drift compensation; needs to "
                                 f"know: {NEEDS[method]}", n=len(sec.times))
                if method != "float":
                    for what, desc in _PROGRAMMING_RECORDS[sec.programming]:
                        w.declare_series(f"programming_{what}_{arch}_{method}", (n_seeds,),
                                         "f8", "1", f"{arch}, {method}: {desc} per device "
                                         f"seed ({sec.programming} programming)", n=1,
                                         time_units="s", time_description="0: programming")
                    w.declare_series(f"weight_error_{arch}_{method}", (n_seeds,), "f8", "1",
                                     f"{arch}, {method}: |W_eff - W|/|W| over all layers per "
                                     "device seed, W_eff the drift-compensated weights the "
                                     "tiles hold as read at each time (ideal periphery)",
                                     n=len(sec.times))
            for name in self.trainings:
                for what, desc in (("loss", "mean training loss (cross-entropy)"),
                                   ("test_accuracy", "float test accuracy"),
                                   ("penalty", "mean HA-SGD penalty estimate (0 otherwise)")):
                    w.declare_series(f"training_{arch}_{name}_{what}", (), "f8", "1",
                                     f"{arch}, training '{name}': {desc} per epoch",
                                     n=sec.epochs, time_units="epoch",
                                     time_description="epochs completed")
                net = self.shapes[arch]
                for k, (wk, bk) in enumerate(zip(net.weights, net.biases)):
                    for what, shape, desc in (("w", wk.shape, "weights (in, out)"),
                                              ("b", bk.shape, "digital biases")):
                        w.declare_series(f"trained_{arch}_{name}_{what}{k}", shape, "f8", "1",
                                         f"{arch}, training '{name}': {desc} of layer {k} "
                                         "after the last epoch (network units)", n=1,
                                         time_units="epoch",
                                         time_description="epochs completed")
            for method in sec.methods:
                if method not in PTO_METHODS:
                    continue
                for k, tile in enumerate(self._pto_tiles(arch)):
                    w.declare_series(f"pto_{arch}_{method}_tile{k}_scale", (tile.n_cols,), "f8",
                                     "1", f"{arch}, {method}: column scales s_j of tile {k} "
                                     f"(layer {tile.layer}, rows {tile.row0}.., cols "
                                     f"{tile.col0}..), weight units mapped to g_max; sample 0 "
                                     "max-abs start, sample 1 after PTO", n=2,
                                     time_units="1", time_description="0 start, 1 optimised")
                w.declare_series(f"pto_{arch}_{method}_input_range",
                                 (len(self._pto_tiles(arch)),), "f8", "1",
                                 f"{arch}, {method}: DAC input range r of every tile (|input| "
                                 "at full scale); sample 0 max-abs start, 1 after PTO", n=2,
                                 time_units="1", time_description="0 start, 1 optimised")
                w.declare_series(f"pto_{arch}_{method}_objective", (), "f8", "1",
                                 f"{arch}, {method}: PTO objective (cross-entropy of the "
                                 "calibration set, the test set for pto_sgd_oracle, through "
                                 "the tile model), mean over each iteration's device draws",
                                 n=sec.pto.iterations,
                                 time_units="iteration", time_description="PTO iteration")
                w.declare_metric(f"pto_{arch}_{method}_objective_start", "1",
                                 "PTO objective on the fixed evaluation draws at the start")
                w.declare_metric(f"pto_{arch}_{method}_objective_best", "1",
                                 "PTO objective on the fixed evaluation draws, returned ranges")
                n_checks = 1 + -(-sec.pto.iterations // sec.pto.check_every)
                w.declare_series(f"pto_{arch}_{method}_checkpoints", (3,), "f8", "1",
                                 f"{arch}, {method}: at each checkpoint, on the "
                                 f"{sec.pto.eval_draws} fixed evaluation draws: mean "
                                 "objective J, J - J(start) (paired, common draws), and the "
                                 "standard error of that difference", n=n_checks,
                                 time_units="iteration", time_description="PTO iteration")
                for what, desc in (
                        ("start_spread", "std of the objective over single evaluation draws "
                                         "at the start (selection noise per draw)"),
                        ("holdout_start", "objective at the start on the hold-out draws "
                                          "(never used to choose)"),
                        ("holdout_best", "objective of the returned ranges on the hold-out "
                                         "draws: the gain without selection bias"),
                        ("holdout_sem", "paired standard error of holdout_best - "
                                        "holdout_start")):
                    w.declare_metric(f"pto_{arch}_{method}_{what}", "1", f"{arch}, {method}: "
                                     + desc)
            if "sgd_mse_clip" in sec.methods:
                w.declare_metric(f"mse_clip_weight_error_ratio_{arch}", "1",
                                 f"{arch}: rms weight error (clipping + device noise model at "
                                 "t_train) of the SGD network at the MSE-optimal column scales "
                                 "over that at max-abs scales (pto.mse_clip_scales): the most "
                                 "a column range can shrink the weight error")
            for method in sec.methods:
                if (method not in ("float", "sgd_mse_clip", "sgd_maxabs_tile")
                        and not method.startswith("pto")):
                    n_weights = sum(wk.size for wk in self.shapes[arch].weights)
                    w.declare_series(f"weight_sigma_{arch}_{method}", (n_weights,), "f8", "1",
                                     f"{arch}, {method}: σ_i of every weight (layers in order, "
                                     "each (in, out) row-major, as trained_*) in network "
                                     "units, from the device noise model at t_train under the "
                                     "method's mapping (mapping_weight_sigma), no periphery",
                                     n=1, time_description="t_train (s after programming)")
                    w.declare_metric(f"predicted_weight_error_{arch}_{method}", "1",
                                     f"{arch}, {method}: sqrt(sum sigma_i^2 / sum w_i^2) of "
                                     "the device noise model at t_train under the method's "
                                     "mapping (mapping_weight_sigma), no periphery")
            if "afp" in sec.methods:
                w.declare_metric(f"afp_small_share_{arch}", "1",
                                 f"{arch}: share of the SGD network's weights that AFP puts "
                                 "in the gain column (|w| < s/gain)")
            w.declare_metric(f"float_accuracy_{arch}", "1",
                             f"{arch}: test accuracy of the SGD-trained network in float")
            if {"float", "sgd_maxabs", "pto_sgd"} <= set(sec.methods):
                for t in sec.times:
                    w.declare_metric(f"pto_recovery_{arch}_t{t:g}", "1",
                                     f"{arch}: (acc PTO on SGD − acc SGD max-abs) / (acc float "
                                     f"− acc SGD max-abs), means over device seeds, at {t:g} s "
                                     "(NaN where the loss is below 2 standard errors)")
                    for end in ("low", "high"):
                        w.declare_metric(f"pto_recovery_{arch}_t{t:g}_ci95_{end}", "1",
                                         f"{arch}: {end} end of the 95 % paired bootstrap "
                                         f"interval of pto_recovery_{arch}_t{t:g} over device "
                                         "seeds (recovery_interval, 10,000 resamples)")

    def run(self, progress=None):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            for arch in self.section.architectures:
                self._run_architecture(arch, progress)

    def _characterise(self, arch, net_sgd):
        """Refit the programming noise the noise-aware methods assume to the chip's own
        programming (:func:`characterise_programming`) on copies of the SGD network's
        fixed max-abs mapping (the tiles the chip programs, on devices of their own) and
        record what was measured."""
        tiles = map_network(net_sgd, self.hw, layer_rows(net_sgd, self.x_cal), "fixed")
        fit = characterise_programming(self.hw, self.characterisation_seed,
                                       levels=CHARACTERISATION_LEVELS, tiles=tiles)
        self.model_hw = replace(self.hw, stat=fit.stat, common_mode=fit.common_mode)
        w = self.writer
        w.append(f"characterisation_{arch}_levels", 0.0, fit.levels)
        for what in ("sigma", "sigma_se", "bias", "sigma_fitted", "sigma_preset", "low",
                     "low_fitted", "common_mode_levels"):
            w.append(f"characterisation_{arch}_{what}", 0.0, getattr(fit, what))
        w.set_metric(f"characterisation_{arch}_chi2_dof", fit.chi2_dof)
        w.set_attrs(**{f"characterisation_{arch}_prog_coeff": list(fit.stat.prog_coeff),
                       f"characterisation_{arch}_prog_coeff_g_ref": fit.stat.prog_coeff_g_ref,
                       f"characterisation_{arch}_common_mode": list(fit.common_mode),
                       "characterisation_seed": self.characterisation_seed})

    def _train(self, arch, name):
        from imcsim.scenarios import robust_training as rt

        sec = self.section
        net = rt.build_net(arch, self.features, self.classes, hidden=tuple(sec.hidden),
                           channels=sec.channels, seed=sec.train_seed)
        noise = self.model_hw.noise(sec.t_train)
        method = "hasgd" if name.startswith("hasgd") else name
        scale = "maxabs"
        if name == "hasgd_afp":
            gain = sec.afp_gain

            def scale(layer, w):
                return afp_weight_scale(w, gain)
        return rt.train(net, self.data, method=method, epochs=sec.epochs, lr=sec.lr,
                        batch=sec.batch, seed=sec.train_seed,
                        noise=None if method == "sgd" else noise, weight_scale=scale,
                        hessian=sec.hessian, probes=sec.probes,
                        penalty_mode=sec.penalty_mode)

    def _chip_oracle(self, net, tiles, rows_cal, progress):
        """DIAGNOSTIC ceiling, never a result and not a bound of any realisable method: for
        every device seed, PTO on that chip's own devices and read (pto.chip_draws, the
        counters of :func:`evaluate` at t_target) against the test set's labels, then the
        harness's accuracy of the chip at its optimised ranges. Unphysical twice over: it
        fits the one read it is scored on, and it keeps every device's standard-normal
        programming draw when a new column scale reprograms the device (a real device would
        draw a fresh error)."""
        from dataclasses import replace as replace_settings

        from imcsim.scenarios import pto

        sec, hw, data = self.section, self.hw, self.data
        settings = replace_settings(sec.pto.settings(), draws_per_step=1, eval_draws=1,
                                    holdout_draws=0, loss="cross_entropy", parameters="both")
        read_target = _READ_COUNTER0 + 1 + list(sec.times).index(sec.pto.t_target)

        def chip_tiles(device_seed):
            chip = pto.chip_draws(tiles, device_seed, _READ_COUNTER0, read_target)
            return pto.optimise(net, tiles, hw, data.x_test, data.y_test, rows_cal, settings,
                                0, draws=lambda counter: chip).tiles

        return self._evaluate_seeds(net, chip_tiles, rows_cal, progress)

    def _evaluate_seeds(self, net, tiles_for, rows_cal, progress):
        """(accuracy, weight error) of shape (times, seeds) and the programming records
        (name -> per seed) of ``net`` on the chip of every device seed, deployed with the
        tiles ``tiles_for(device_seed)``."""
        sec, data = self.section, self.data
        acc = np.empty((len(sec.times), len(sec.device_seeds)))
        err = np.empty_like(acc)
        records = {what: np.empty(len(sec.device_seeds))
                   for what, _ in _PROGRAMMING_RECORDS[sec.programming]}
        for j, device_seed in enumerate(sec.device_seeds):
            errors, chips = [], []
            acc[:, j] = evaluate(net, tiles_for(device_seed), self.hw, device_seed, sec.times,
                                 data.x_test, data.y_test, rows_cal, errors, chips)
            err[:, j] = errors
            for what, values in records.items():
                values[j] = _programming_record(what, chips)
            if progress is not None:
                progress(1)
        return acc, err, records

    def _run_architecture(self, arch, progress):
        from imcsim.scenarios import pto

        sec, w, hw = self.section, self.writer, self.hw
        nets = {}
        for name in self.trainings:
            net, history = self._train(arch, name)
            nets[name] = net
            if name == "sgd" and sec.noise_model == "characterised":
                self._characterise(arch, net)
            for epoch, values in enumerate(zip(history.loss, history.test_accuracy,
                                               history.penalty)):
                for what, value in zip(("loss", "test_accuracy", "penalty"), values):
                    w.append(f"training_{arch}_{name}_{what}", float(epoch + 1), value)
            for k, (wk, bk) in enumerate(zip(net.weights, net.biases)):
                w.append(f"trained_{arch}_{name}_w{k}", float(sec.epochs), wk)
                w.append(f"trained_{arch}_{name}_b{k}", float(sec.epochs), bk)
            if progress is not None:
                progress(1)
        data = self.data
        x_cal, y_cal = self.x_cal, self.y_cal
        if "sgd" in nets:
            w.set_metric(f"float_accuracy_{arch}",
                         accuracy(layer_forward(nets["sgd"], data.x_test), data.y_test))
        results, weight_errors = {}, {}
        for method in sec.methods:
            net = nets[TRAINING_OF[method]]
            if method == "float":
                acc = accuracy(layer_forward(net, data.x_test), data.y_test)
                results[method] = np.full((len(sec.times), len(sec.device_seeds)), acc)
                continue
            rows_cal = layer_rows(net, x_cal)
            kind, rule = _mapping_of(method)
            if (method not in ("sgd_mse_clip", "sgd_maxabs_tile")
                    and not method.startswith("pto")):
                noise = self.model_hw.noise(sec.t_train)
                sigma = np.concatenate([mapping_weight_sigma(wk, kind, noise, sec.afp_gain).ravel()
                                        for wk in net.weights])
                w.append(f"weight_sigma_{arch}_{method}", sec.t_train, sigma)
                w.set_metric(f"predicted_weight_error_{arch}_{method}",
                             float(np.sqrt(np.sum(sigma ** 2) / sum(float(np.sum(wk * wk))
                                                                  for wk in net.weights))))
            if method == "afp":
                u = np.concatenate([(np.abs(wk) / column_scales_maxabs(wk)).ravel()
                                    for wk in net.weights])
                w.set_metric(f"afp_small_share_{arch}", float(np.mean(u < 1.0 / sec.afp_gain)))
            tiles = map_network(net, hw, rows_cal, kind, gain=sec.afp_gain, input_ranges=rule,
                                percentile=sec.percentile)
            if method == "sgd_maxabs_tile":
                # one scale per tile, as the GDP network check and aihwkit's default mapping
                # (weight_scaling_columnwise = False): the weaker baseline of the two max-abs
                tiles = with_ranges(tiles, tile_wide_scales(tiles),
                                    [t.input_range for t in tiles])
            if method == "sgd_mse_clip":
                noise = self.model_hw.noise(sec.t_train)
                fits = [pto.mse_clip_scales(tile, noise) for tile in tiles]
                w.set_metric(f"mse_clip_weight_error_ratio_{arch}",
                             float(np.sqrt(sum(f[2].sum() for f in fits)
                                           / sum(f[1].sum() for f in fits))))
                tiles = with_ranges(tiles, [f[0] for f in fits],
                                    [t.input_range for t in tiles])
            if method in PTO_METHODS:
                x_pto, y_pto = ((data.x_test, data.y_test) if method == "pto_sgd_oracle"
                                else (x_cal, y_cal))
                result = pto.optimise(net, tiles, self.model_hw, x_pto, y_pto, rows_cal,
                                      sec.pto.settings(), self.pto_seed)
                for k, (start, end) in enumerate(zip(tiles, result.tiles)):
                    w.append(f"pto_{arch}_{method}_tile{k}_scale", 0.0, start.scale)
                    w.append(f"pto_{arch}_{method}_tile{k}_scale", 1.0, end.scale)
                w.append(f"pto_{arch}_{method}_input_range", 0.0,
                         [t.input_range for t in tiles])
                w.append(f"pto_{arch}_{method}_input_range", 1.0,
                         [t.input_range for t in result.tiles])
                for it, value in enumerate(result.loss_history):
                    w.append(f"pto_{arch}_{method}_objective", float(it + 1), value)
                w.set_metric(f"pto_{arch}_{method}_objective_start", result.loss_start)
                w.set_metric(f"pto_{arch}_{method}_objective_best", result.loss_best)
                for it, value, gain, sem in result.checkpoints:
                    w.append(f"pto_{arch}_{method}_checkpoints", float(it), [value, gain, sem])
                for what in ("start_spread", "holdout_start", "holdout_best", "holdout_sem"):
                    w.set_metric(f"pto_{arch}_{method}_{what}", getattr(result, what))
                tiles = result.tiles
                if progress is not None:
                    progress(1)
            if method == "pto_sgd_chip_oracle":
                acc, err, records = self._chip_oracle(net, tiles, rows_cal, progress)
            else:
                acc, err, records = self._evaluate_seeds(
                    net, lambda device_seed, tiles=tiles: tiles, rows_cal, progress)
            for what, values in records.items():
                w.append(f"programming_{what}_{arch}_{method}", 0.0, values)
            results[method] = acc
            weight_errors[method] = err
        for method in sec.methods:
            for k, t in enumerate(sec.times):
                w.append(f"accuracy_{arch}_{method}", float(t), results[method][k])
                if method in weight_errors:
                    w.append(f"weight_error_{arch}_{method}", float(t),
                             weight_errors[method][k])
        if {"float", "sgd_maxabs", "pto_sgd"} <= set(sec.methods):
            for k, t in enumerate(sec.times):
                shares = (results["float"][k], results["sgd_maxabs"][k], results["pto_sgd"][k])
                w.set_metric(f"pto_recovery_{arch}_t{t:g}", recovery(*shares))
                for end, value in zip(("low", "high"), recovery_interval(*shares)):
                    w.set_metric(f"pto_recovery_{arch}_t{t:g}_ci95_{end}", value)
        w.flush()
