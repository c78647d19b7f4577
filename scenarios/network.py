"""Network-level check: a float-trained MLP mapped onto PCM tiles, programmed by each method,
evaluated as it drifts.

For every programming method and device seed: every layer W (in × out) is split into tiles of
at most ``rows × cols``; each tile maps its block with a per-layer weight scale
(w_scale = max|W|, so the largest weight sits at g_max) onto differential pairs and is
programmed (program-and-verify or GDP) with its own device instances. The periphery ranges are
set from a calibration set before programming, as a compiler would: the DAC range of a layer
is the largest |input| it sees, the ADC full scale of a tile the largest |column current| its
float weights produce. At ``t_calibrate`` (1 s) the tile runs the calibration inputs and keeps
the mean |output| as its global-drift-compensation reference (Le Gallo / Joshi); at each
evaluation time every tile is read once (drift and 1/f read noise at that time), its outputs
are rescaled by α = reference/mean|output on the calibration inputs| and the test set runs
through the network (bias and ReLU in digital).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imcsim.physics import crossbar, pcm, rng
from imcsim.scenarios import digits, programming

_TILE_STREAM_BASE = 1000  # device seeds of tiles: stream_key(device_seed, base + tile index)
# Counters from here on belong to programming (GDP's in-loop reads use the READ stream at
# counter0 + 1 + k): evaluation reads keep to small counters, so a deployed chip's read
# noise never repeats the draws a programming loop already saw and responded to.
PROGRAMMING_COUNTER0 = 1 << 40


@dataclass
class Tile:
    """One programmed tile: its block of a layer, scale, periphery and device state."""

    layer: int
    row0: int
    col0: int
    w: np.ndarray  # target block (rows, cols), weight units
    weight_scale: float
    periphery: crossbar.Periphery
    state: programming.TileState
    seed: int
    pulses: np.ndarray
    gdc_reference: float = np.nan


def tile_seed(device_seed: int, index: int) -> int:
    """Seed of tile ``index``'s device instances and draws: a pure function of both."""
    return int(rng.stream_key(np.uint64(device_seed), np.uint64(_TILE_STREAM_BASE + index))
               >> np.uint64(1))


def layer_inputs(params: digits.MLPParams, x: np.ndarray) -> list[np.ndarray]:
    """The input of every layer for a batch ``x`` in float (after ReLU of the one before)."""
    out = [x]
    h = x
    for k, (w, b) in enumerate(zip(params.weights, params.biases)):
        h = h @ w + b
        if k < len(params.weights) - 1:
            h = np.maximum(h, 0.0)
            out.append(h)
    return out


def build_tiles(params: digits.MLPParams, x_calibration: np.ndarray, periphery_template:
                crossbar.Periphery, stat: pcm.StatisticalModel, tile_rows: int, tile_cols: int,
                adc_headroom: float = 1.0) -> list[tuple[int, int, int, np.ndarray, float,
                                                         crossbar.Periphery]]:
    """(layer, row0, col0, block, weight scale, periphery) of every tile, ranges calibrated
    in float from ``x_calibration``."""
    specs = []
    inputs = layer_inputs(params, x_calibration)
    for layer, w in enumerate(params.weights):
        scale = float(np.max(np.abs(w))) or 1.0
        x_range = float(np.max(np.abs(inputs[layer]))) or 1.0
        for r0 in range(0, w.shape[0], tile_rows):
            for c0 in range(0, w.shape[1], tile_cols):
                block = w[r0:r0 + tile_rows, c0:c0 + tile_cols]
                x = inputs[layer][:, r0:r0 + tile_rows] / x_range
                current = (x @ block) * (stat.g_max / scale) * periphery_template.v_read
                full_scale = adc_headroom * float(np.max(np.abs(current))) or 1e-6
                periphery = crossbar.Periphery(**{**periphery_template.__dict__,
                                                  "input_range": x_range,
                                                  "adc_full_scale": full_scale})
                specs.append((layer, r0, c0, block, scale, periphery))
    return specs


def program_verify(g_plus: np.ndarray, g_minus: np.ndarray, seed: int,
                   verify: pcm.VerifyPolicy, pulse: pcm.PulseModel
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                              pcm.DeviceParams]:
    """Pulse-level program-and-verify of n pairs toward the targets ``g_plus``, ``g_minus``
    (S, any shape, n each) on fresh device instances of ``seed``: the pair's difference
    (:func:`pcm.program_verify_pairs`) when ``verify.differential``, else each device on its
    own (:func:`pcm.program_verify`).

    Returns (g, t_prog, pulses, converged, params): the 2·n programmed conductances in the flat
    [G⁺ (n), G⁻ (n)] layout (S), each device's time of its last pulse from the start of
    programming (pulses × t_pulse, s), its pulse count, and whether it (its pair, when
    differential) ended within tolerance, and the devices' device-to-device parameters."""
    targets = np.concatenate([np.ravel(g_plus), np.ravel(g_minus)]).astype(np.float64)
    n2 = targets.size
    params = pcm.draw_device_params(seed, n2, pulse)
    g = np.empty(n2)
    pulses = np.zeros(n2, dtype=np.int64)
    common = (params.dg0, params.g_sat, params.g_reset, pulse.dg0, pulse.g_sat,
              pulse.sigma_c2c, pulse.sigma_reset, verify.tolerance, verify.max_pulses,
              verify.read_noise, verify.read_resolution, verify.step_fraction, verify.s_min,
              np.uint64(seed), np.uint64(0), pulses)
    if verify.differential:
        converged = np.zeros(n2 // 2, dtype=np.bool_)
        pcm.program_verify_pairs(targets[:n2 // 2] - targets[n2 // 2:], g, *common, converged)
        converged = np.concatenate([converged, converged])
    else:
        converged = np.zeros(n2, dtype=np.bool_)
        pcm.program_verify(targets, g, *common, converged)
    return g, pulses * pulse.t_pulse, pulses, converged, params


def program_tiles(specs, method: str, verify: pcm.VerifyPolicy,
                  gdp: programming.GDPPolicy, pulse: pcm.PulseModel,
                  stat: pcm.StatisticalModel, device_seed: int) -> list[Tile]:
    """Program every tile with ``method`` ("verify" or "gdp") on fresh device instances."""
    tiles = []
    for index, (layer, r0, c0, block, scale, periphery) in enumerate(specs):
        seed = tile_seed(device_seed, index)
        if method == "gdp":
            n = block.size
            params = pcm.draw_device_params(seed, 2 * n, pulse)
            state = programming.TileState(np.empty(2 * n), np.zeros(2 * n), np.empty(2 * n),
                                          np.empty(2 * n), params)
            pulses = np.zeros(2 * n, dtype=np.int64)
            programming.program_gdp(state, block, pulse=pulse, stat=stat, periphery=periphery,
                                    weight_scale=scale, policy=gdp, seed=seed,
                                    counter0=PROGRAMMING_COUNTER0, t_start=0.0,
                                    pulses_out=pulses)
        else:
            gp, gm = crossbar.weights_to_conductances(block, scale, stat.g_max)
            g, t_prog, pulses, _, params = program_verify(gp, gm, seed, verify, pulse)
            state = programming.TileState(g, t_prog, np.empty_like(g), np.empty_like(g), params)
            pcm.draw_drift_state(state.g, state.g, stat.g_max, stat.model_id, stat.drift_scale,
                                 np.uint64(seed), np.uint64(PROGRAMMING_COUNTER0), state.nu,
                                 state.q_s)
        tiles.append(Tile(layer, r0, c0, block, scale, periphery, state, seed, pulses))
    return tiles


def _read(tile: Tile, stat: pcm.StatisticalModel, t: float, counter: int) -> np.ndarray:
    out = np.empty((1, tile.state.g.size))
    pcm.read_drifted(tile.state.g, tile.state.t_prog, tile.state.nu, tile.state.q_s,
                     np.array([float(t)]), np.array([counter], dtype=np.uint64), stat.t0,
                     stat.t_read, stat.shifted, stat.read_noise_scale, np.uint64(tile.seed),
                     out)
    return out[0].reshape(2, *tile.w.shape)


def analog_hook(tiles: list[Tile], stat: pcm.StatisticalModel, t: float, counter: int,
                x_calibration_inputs: list[np.ndarray] | None = None):
    """A ``matmul(layer, x, W)`` hook that computes each layer on its tiles read at ``t``,
    outputs rescaled by each tile's drift-compensation factor."""
    reads = {id(tile): _read(tile, stat, t, counter) for tile in tiles}

    def matmul(layer, x, w):
        y = np.zeros((x.shape[0], w.shape[1]))
        for tile in tiles:
            if tile.layer != layer:
                continue
            g = reads[id(tile)]
            rows, cols = tile.w.shape
            xs = x[:, tile.row0:tile.row0 + rows]
            out = crossbar.tile_mvm(g[0], g[1], xs, tile.periphery, tile.weight_scale,
                                    stat.g_max)
            if np.isfinite(tile.gdc_reference) and x_calibration_inputs is not None:
                cal = crossbar.tile_mvm(g[0], g[1],
                                        x_calibration_inputs[layer][:, tile.row0:tile.row0 + rows],
                                        tile.periphery, tile.weight_scale, stat.g_max)
                level = float(np.mean(np.abs(cal)))
                out = out * (tile.gdc_reference / level if level > 0 else 1.0)
            y[:, tile.col0:tile.col0 + cols] += out
        return y

    return matmul


def calibrate(tiles: list[Tile], stat: pcm.StatisticalModel, t: float, counter: int,
              x_calibration_inputs: list[np.ndarray]) -> None:
    """Store each tile's mean |output| on the calibration inputs at time ``t``."""
    for tile in tiles:
        g = _read(tile, stat, t, counter)
        rows = tile.w.shape[0]
        cal = crossbar.tile_mvm(g[0], g[1],
                                x_calibration_inputs[tile.layer][:, tile.row0:tile.row0 + rows],
                                tile.periphery, tile.weight_scale, stat.g_max)
        tile.gdc_reference = float(np.mean(np.abs(cal)))


def weight_error(tiles: list[Tile], stat: pcm.StatisticalModel) -> float:
    """‖W_programmed − W_target‖/‖W_target‖ over all tiles (as programmed, no drift)."""
    num = den = 0.0
    for tile in tiles:
        n = tile.w.size
        w = crossbar.conductances_to_weights(tile.state.g[:n], tile.state.g[n:],
                                             tile.weight_scale, stat.g_max)
        num += float(np.sum((w.reshape(tile.w.shape) - tile.w) ** 2))
        den += float(np.sum(tile.w ** 2))
    return float(np.sqrt(num / den))


class NetworkRun:
    """The network-level check of a scenario with a ``[network]`` table, as a trace run."""

    def __init__(self, loaded, seed: int):
        from threadpoolctl import threadpool_limits

        from imcsim.config import resolve_path

        with threadpool_limits(1, user_api="blas"):  # thread-count-independent results
            self._prepare(loaded, resolve_path)

    def _prepare(self, loaded, resolve_path):
        sc = loaded.scenario
        net = sc.network
        self.net = net
        self.stat = sc.device.statistical_model()
        self.pulse = sc.device.pulse_model()
        self.periphery = sc.periphery.periphery()
        if net.dataset == "mnist":
            try:
                self.data = digits.load_mnist_idx(resolve_path(net.mnist_dir, loaded.path))
            except (FileNotFoundError, ValueError) as exc:
                from imcsim.errors import InputError

                raise InputError(f"network.mnist_dir: {exc}") from None
        else:
            self.data = digits.load_digits_split(net.train_seed)
        self.params, self.history = digits.train_mlp(self.data.x_train, self.data.y_train,
                                                     hidden=tuple(net.hidden),
                                                     epochs=net.epochs, seed=net.train_seed)
        self.float_accuracy = digits.accuracy(self.params, self.data.x_test, self.data.y_test)
        self.x_cal = self.data.x_train[:net.calibration_images]
        self.cal_inputs = layer_inputs(self.params, self.x_cal)
        self.specs = build_tiles(self.params, self.x_cal, self.periphery, self.stat,
                                 net.tile_rows, net.tile_cols)
        self.n_steps = len(net.methods) * len(net.device_seeds) * (len(net.times) + 1)
        self.writer = None

    def declare(self, writer):
        net = self.net
        self.writer = w = writer
        w.set_attrs(network_methods=list(net.methods),
                    network_device_seeds=list(net.device_seeds),
                    network_layers=[list(x.shape) for x in self.params.weights],
                    network_tiles=len(self.specs))
        for k, (layer, r0, c0, block, scale, periphery) in enumerate(self.specs):
            w.static(f"tile{k}_weights", block, "1",
                     f"target weights of tile {k}: layer {layer}, rows {r0}.., cols {c0}..",
                     group="network")
            w.static(f"tile{k}_ranges", [scale, periphery.input_range, periphery.adc_full_scale],
                     "mixed", f"tile {k}: weight scale (1), DAC input range (1), ADC full "
                     "scale (A)", group="network")
        w.static("training_loss", self.history.loss, "1", "float training loss per epoch",
                 group="network")
        n_seeds = len(net.device_seeds)
        for method in net.methods:
            w.declare_series(f"accuracy_{method}", (n_seeds,), "f8", "1",
                             f"test accuracy of the {method}-programmed network per device "
                             "seed, with global drift compensation", n=len(net.times))
            w.declare_series(f"weight_error_{method}", (n_seeds,), "f8", "1",
                             "|W_programmed - W_target| / |W_target| over all tiles, per "
                             "device seed, just after programming", n=1)
            w.declare_series(f"pulses_mean_{method}", (n_seeds,), "f8", "1",
                             "mean pulses per device, per device seed", n=1)
            for label in ("first", "last"):
                w.declare_metric(f"accuracy_{method}_{label}", "1",
                                 f"mean test accuracy over device seeds at the {label} time")
        w.declare_metric("float_accuracy", "1", "test accuracy of the float network")

    def run(self, progress=None):
        # BLAS stays on one thread: results must not depend on its thread count.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            self._run(progress)

    def _run(self, progress):
        net, w = self.net, self.writer
        w.set_metric("float_accuracy", self.float_accuracy)
        for method in net.methods:
            verify = net.verify.policy(self.periphery)
            gdp = net.gdp.policy()
            tiles_by_seed = []
            for device_seed in net.device_seeds:
                tiles = program_tiles(self.specs, method, verify, gdp, self.pulse, self.stat,
                                      device_seed)
                calibrate(tiles, self.stat, net.t_calibrate, 1, self.cal_inputs)
                tiles_by_seed.append(tiles)
                if progress is not None:
                    progress(1)
            w.append(f"weight_error_{method}", 0.0,
                     [weight_error(t, self.stat) for t in tiles_by_seed])
            w.append(f"pulses_mean_{method}", 0.0,
                     [float(np.mean(np.concatenate([tile.pulses for tile in t])))
                      for t in tiles_by_seed])
            for k, t in enumerate(net.times):
                accs = []
                for tiles in tiles_by_seed:
                    hook = analog_hook(tiles, self.stat, t, 10 + k, self.cal_inputs)
                    accs.append(digits.accuracy(self.params, self.data.x_test,
                                                self.data.y_test, matmul=hook))
                    if progress is not None:
                        progress(1)
                w.append(f"accuracy_{method}", t, accs)
                w.log_event(t, f"evaluate_{method}"[:16], 0, len(accs))
                if k == 0:
                    w.set_metric(f"accuracy_{method}_first", float(np.mean(accs)))
                w.set_metric(f"accuracy_{method}_last", float(np.mean(accs)))
            w.flush()
