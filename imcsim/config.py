"""Scenario files: TOML -> validated, frozen dataclasses.

The tree below mirrors the TOML tables one to one. Every field's unit is in its docstring (SI);
unknown keys, wrong types, NaN/inf, negative or non-increasing times and missing files raise
:class:`~imcsim.errors.InputError` with the dotted path of the field, e.g.
``scenario.toml: timeline[2].times: times must be strictly increasing``.
The validated tree is what the engine sees and what the trace stores (``scenario_resolved``);
``to_dict`` of it loads back to an equal tree.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from imcsim.errors import InputError
from imcsim.physics import crossbar, pcm
from imcsim.scenarios.mixed_precision import TrainingConfig
from imcsim.scenarios.programming import GDPPolicy
from imcsim.scenarios.spiking import SpikingConfig

# ----------------------------------------------------------------------------------------
# Generic validation


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if _is_dataclass_type(tp):
        return "a table"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false",
            type(None): "absent"}.get(tp, str(tp))


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        alts = [a for a in typing.get_args(tp) if a is not type(None)]
        # A list or a table can only mean the alternative of that shape: report its error.
        for alt in alts:
            shape = typing.get_origin(alt)
            if ((isinstance(value, list) and shape in (tuple, list))
                    or (isinstance(value, dict) and _is_dataclass_type(alt))):
                return _convert(alt, value, where)
        for alt in alts:
            try:
                return _convert(alt, value, where)
            except InputError:
                continue
        raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise InputError(f"{where}: must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{where}[{k}]") for k, v in enumerate(value))
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp}")


def from_dict(cls, data: dict, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, then ``validate()``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(names))})"
                         if where else f"{unknown[0]}: unknown key")
    kwargs = {}
    for name in names:
        sub = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub)
        else:
            f = next(f for f in dataclasses.fields(cls) if f.name == name)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{sub}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def to_dict(obj) -> dict:
    """Plain-data form of a validated tree (loads back through :func:`from_dict`)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        if v is not None:
            out[f.name] = v
    return out


def _positive(where, name, value, strict=True):
    if value is not None and (value <= 0 if strict else value < 0):
        raise InputError(f"{where}.{name}: must be {'> 0' if strict else '≥ 0'}, got {value}")


# ----------------------------------------------------------------------------------------
# Scenario schema


@dataclass(frozen=True)
class TimeRange:
    """Times ``start..stop`` (s) with ``num`` points, ``spacing`` "log" or "linear"."""

    start: float
    stop: float
    num: int
    spacing: Literal["log", "linear"] = "log"

    def validate(self, where):
        _positive(where, "start", self.start, strict=self.spacing == "log")
        _positive(where, "num", self.num)
        if self.stop <= self.start and self.num > 1:
            raise InputError(f"{where}.stop: must be greater than start ({self.start})")

    def values(self) -> np.ndarray:
        if self.spacing == "log":
            return np.geomspace(self.start, self.stop, self.num)
        return np.linspace(self.start, self.stop, self.num)


Times = tuple[float, ...] | TimeRange


def time_values(times: Times | None) -> np.ndarray:
    if times is None:
        return np.zeros(0)
    return times.values() if isinstance(times, TimeRange) else np.asarray(times, dtype=float)


def _check_times(where: str, times: Times | None):
    values = time_values(times)
    if np.any(values < 0):
        raise InputError(f"{where}: times must be ≥ 0 (relative to the step), got "
                         f"{values[values < 0][0]}")
    if np.any(np.diff(values) <= 0):
        raise InputError(f"{where}: times must be strictly increasing")


@dataclass(frozen=True)
class RunSection:
    """Identity of the run. ``seed`` keys every random draw (overridden by ``--seed``)."""

    name: str = "run"
    seed: int = 0
    description: str = ""

    def validate(self, where):
        if not 0 <= self.seed < 2**63:
            raise InputError(f"{where}.seed: must be in [0, 2^63), got {self.seed}")


@dataclass(frozen=True)
class StatisticalSection:
    """Overrides of the statistical PCM model preset (fields of pcm.StatisticalModel)."""

    g_max: float | None = None
    prog_coeff: tuple[float, ...] | None = None
    prog_coeff_g_ref: float | None = None
    t0: float | None = None
    t_read: float | None = None
    drift_time: Literal["clamped", "shifted"] | None = None
    prog_noise_scale: float | None = None
    drift_scale: float | None = None
    read_noise_scale: float | None = None

    def validate(self, where):
        for name in ("g_max", "prog_coeff_g_ref", "t0", "t_read"):
            _positive(where, name, getattr(self, name))
        for name in ("prog_noise_scale", "drift_scale", "read_noise_scale"):
            _positive(where, name, getattr(self, name), strict=False)


@dataclass(frozen=True)
class PulseSection:
    """Overrides of the per-pulse PCM model (fields of pcm.PulseModel), SI units."""

    g_reset: float | None = None
    sigma_reset: float | None = None
    sigma_reset_d2d: float | None = None
    dg0: float | None = None
    g_sat: float | None = None
    sigma_c2c: float | None = None
    sigma_d2d_dg0: float | None = None
    sigma_d2d_gsat: float | None = None
    i_threshold: float | None = None
    i_reference: float | None = None
    t_pulse: float | None = None

    def validate(self, where):
        for name in ("g_reset", "dg0", "g_sat", "t_pulse", "i_reference"):
            _positive(where, name, getattr(self, name))
        for name in ("sigma_reset", "sigma_reset_d2d", "sigma_c2c", "sigma_d2d_dg0",
                     "sigma_d2d_gsat", "i_threshold"):
            _positive(where, name, getattr(self, name), strict=False)


@dataclass(frozen=True)
class DeviceSection:
    """Device model: a statistical preset plus overrides, and the per-pulse model."""

    model: Literal["joshi2020", "hermes2023"] = "joshi2020"
    statistical: StatisticalSection = field(default_factory=StatisticalSection)
    pulse: PulseSection = field(default_factory=PulseSection)

    def statistical_model(self) -> pcm.StatisticalModel:
        base = pcm.STATISTICAL_PRESETS[self.model]
        changes = {k: v for k, v in to_dict(self.statistical).items()}
        if "prog_coeff" in changes:
            changes["prog_coeff"] = tuple(changes["prog_coeff"])
        return dataclasses.replace(base, **changes)

    def pulse_model(self) -> pcm.PulseModel:
        return dataclasses.replace(pcm.PulseModel(), **to_dict(self.pulse))


@dataclass(frozen=True)
class ArraySection:
    """Crossbar geometry: ``rows`` inputs × ``cols`` outputs of differential pairs;
    ``weight_scale`` is the |weight| mapped to g_max (dimensionless weight units)."""

    rows: int = 256
    cols: int = 256
    weight_scale: float = 1.0

    def validate(self, where):
        _positive(where, "rows", self.rows)
        _positive(where, "cols", self.cols)
        _positive(where, "weight_scale", self.weight_scale)


@dataclass(frozen=True)
class TargetsSection:
    """Target weights: ``uniform`` in [low, high], ``normal`` (mean 0, std) clipped to
    ±weight_scale, or ``file``: a .npy array of shape (rows, cols), path relative to the
    scenario file."""

    distribution: Literal["uniform", "normal", "file"] = "uniform"
    low: float = -1.0
    high: float = 1.0
    std: float = 0.3
    file: str = ""

    def validate(self, where):
        if self.distribution == "uniform" and self.high <= self.low:
            raise InputError(f"{where}.high: must be greater than low ({self.low})")
        if self.distribution == "normal":
            _positive(where, "std", self.std)
        if self.distribution == "file" and not self.file:
            raise InputError(f"{where}.file: required when distribution = 'file'")


MAX_PULSES = 1 << 20  # random-number counters reserved per programming event


@dataclass(frozen=True)
class VerifySection:
    """Program-and-verify settings (pcm.VerifyPolicy): tolerance, read_noise and
    read_resolution in S, max_pulses per device, step_fraction and s_min dimensionless;
    ``differential`` verifies pairs and corrects overshoots on the partner device;
    ``read_through_adc`` reads each cell through the core's own ADC, so the read resolution
    becomes one ADC step referred to a cell, LSB/v_read (S), and the tolerance at least half
    of it (a verify loop cannot resolve finer)."""

    tolerance: float = pcm.VerifyPolicy.tolerance
    max_pulses: int = pcm.VerifyPolicy.max_pulses
    read_noise: float = pcm.VerifyPolicy.read_noise
    read_resolution: float = pcm.VerifyPolicy.read_resolution
    step_fraction: float = pcm.VerifyPolicy.step_fraction
    s_min: float = pcm.VerifyPolicy.s_min
    differential: bool = pcm.VerifyPolicy.differential
    read_through_adc: bool = False

    def validate(self, where):
        _positive(where, "tolerance", self.tolerance)
        _positive(where, "max_pulses", self.max_pulses)
        if self.max_pulses >= MAX_PULSES:
            raise InputError(f"{where}.max_pulses: must be below {MAX_PULSES}, "
                             f"got {self.max_pulses}")
        _positive(where, "read_noise", self.read_noise, strict=False)
        _positive(where, "read_resolution", self.read_resolution, strict=False)
        _positive(where, "step_fraction", self.step_fraction)
        if not 0.0 <= self.s_min <= 1.0:
            raise InputError(f"{where}.s_min: must be in [0, 1], got {self.s_min}")

    def policy(self, periphery: crossbar.Periphery | None = None) -> pcm.VerifyPolicy:
        """The controller settings; with ``read_through_adc``, those the ADC allows."""
        settings = {k: v for k, v in to_dict(self).items() if k != "read_through_adc"}
        if self.read_through_adc and periphery is not None and periphery.adc_bits > 0:
            lsb = periphery.adc_full_scale / (2 ** (periphery.adc_bits - 1) - 1)
            settings["read_resolution"] = lsb / periphery.v_read
            settings["tolerance"] = max(self.tolerance, 0.5 * settings["read_resolution"])
        return pcm.VerifyPolicy(**settings)


@dataclass(frozen=True)
class GDPSection:
    """Gradient-descent programming (scenarios.programming.GDPPolicy): iterations, batch of
    random inputs per iteration, learning rate lr decaying to lr_final, s_min smallest pulse
    amplitude, max_pulses per device (RESET included), t_iteration (s) per iteration,
    input_scale of the random inputs in (0, 1] (0: the largest the ADC reads unsaturated)."""

    iterations: int = GDPPolicy.iterations
    batch: int = GDPPolicy.batch
    lr: float = GDPPolicy.lr
    lr_final: float = GDPPolicy.lr_final
    s_min: float = GDPPolicy.s_min
    max_pulses: int = GDPPolicy.max_pulses
    t_iteration: float = GDPPolicy.t_iteration
    input_scale: float = GDPPolicy.input_scale

    def validate(self, where):
        for name in ("iterations", "batch", "lr", "lr_final", "max_pulses", "t_iteration"):
            _positive(where, name, getattr(self, name))
        if self.max_pulses >= MAX_PULSES or self.iterations >= MAX_PULSES - 2:
            raise InputError(f"{where}: iterations and max_pulses must be below {MAX_PULSES}")
        if not 0.0 <= self.s_min <= 1.0:
            raise InputError(f"{where}.s_min: must be in [0, 1], got {self.s_min}")
        if not 0.0 <= self.input_scale <= 1.0:
            raise InputError(f"{where}.input_scale: must be in [0, 1], got {self.input_scale}")

    def policy(self) -> GDPPolicy:
        return GDPPolicy(**to_dict(self))


@dataclass(frozen=True)
class PeripherySection:
    """Tile periphery used by MVMs and by GDP (physics.crossbar.Periphery). Defaults are an
    ideal periphery (0 bits: no quantisation, no wire resistance); ``dac_bits``, ``adc_bits``
    signed resolutions, ``input_range`` the |x| at full scale, ``v_read`` (V),
    ``adc_full_scale`` (A), ``r_wire_row`` / ``r_wire_col`` (Ω per cell pitch),
    ``ir_drop_solver`` "relaxed" | "exact", ``ir_drop_tolerance`` (relative to full scale)."""

    dac_bits: int = 0
    input_range: float = 1.0
    encoding: Literal["amplitude", "pwm"] = "amplitude"
    v_read: float = 0.2
    adc_bits: int = 0
    adc_full_scale: float = 1e-4
    r_wire_row: float = 0.0
    r_wire_col: float = 0.0
    ir_drop_solver: Literal["relaxed", "exact"] = "relaxed"
    ir_drop_tolerance: float = 1e-6

    def validate(self, where):
        for name in ("r_wire_row", "r_wire_col"):
            _positive(where, name, getattr(self, name), strict=False)
        _positive(where, "ir_drop_tolerance", self.ir_drop_tolerance)
        for name in ("dac_bits", "adc_bits"):
            value = getattr(self, name)
            if not 0 <= value <= 24:
                raise InputError(f"{where}.{name}: must be 0 (ideal) to 24, got {value}")
        for name in ("input_range", "v_read", "adc_full_scale"):
            _positive(where, name, getattr(self, name))

    def periphery(self) -> crossbar.Periphery:
        return crossbar.Periphery(**to_dict(self))


@dataclass(frozen=True)
class Step:
    """One step of the timeline, in file order.

    Time is kept by a cursor that starts at 0 s. ``program``, ``refresh`` and ``reset`` start
    at the cursor and move it by their duration (the pulse budget × t_pulse for
    program-and-verify, one t_pulse otherwise); ``wait`` moves it by ``duration`` (s).
    ``read``, ``mvm`` and ``calibrate`` happen at ``times`` / ``t`` (s) after the cursor
    where they stand and do not move it; the engine runs all events in time order.

    Fields by kind:
        program: ``method`` ("verify" | "statistical" | "gdp"), ``verify`` / ``gdp`` table.
        refresh: re-programs the last programmed targets with the same method.
        read: ``times``; ``full_times`` where every device is recorded, not only the subset.
        mvm: ``times``, ``batch`` random inputs x ~ U[−1, 1] (the same set at every time).
        calibrate: ``t``, ``batch`` calibration inputs for global drift compensation.
    """

    kind: Literal["program", "refresh", "reset", "wait", "read", "mvm", "calibrate"]
    method: Literal["verify", "statistical", "gdp"] = "verify"
    verify: VerifySection = field(default_factory=VerifySection)
    gdp: GDPSection = field(default_factory=GDPSection)
    duration: float = 0.0
    t: float = 0.0
    times: Times | None = None
    full_times: Times | None = None
    batch: int = 64

    def validate(self, where):
        if self.kind in ("read", "mvm") and self.times is None:
            raise InputError(f"{where}.times: required for a '{self.kind}' step")
        if self.kind == "wait" and not self.duration > 0:
            raise InputError(f"{where}.duration: a wait needs a duration > 0 s, "
                             f"got {self.duration}")
        _positive(where, "duration", self.duration, strict=False)
        _positive(where, "t", self.t, strict=False)
        _positive(where, "batch", self.batch)
        _check_times(f"{where}.times", self.times)
        _check_times(f"{where}.full_times", self.full_times)


@dataclass(frozen=True)
class RecordSection:
    """What goes to the trace: ``subset`` devices recorded at every read (chosen at random
    by the seed), ``store_outputs`` keeps every MVM output vector, ``programming_curves``
    records program-and-verify's MVM error after each pulse budget 1..max_pulses (GDP always
    records its error per iteration), ``snapshot_every`` > 0 keeps every device's conductance
    every that many GDP iterations or verify budgets."""

    subset: int = 256
    store_outputs: bool = False
    programming_curves: bool = False
    snapshot_every: int = 0

    def validate(self, where):
        _positive(where, "subset", self.subset)
        _positive(where, "snapshot_every", self.snapshot_every, strict=False)


@dataclass(frozen=True)
class NetworkSection:
    """Network-level check (scenarios.network): a float MLP trained on ``dataset`` ("digits":
    scikit-learn's bundled 8x8 digits; "mnist": IDX files in ``mnist_dir``), every layer
    mapped onto tiles of at most ``tile_rows × tile_cols`` pairs and programmed by each of
    ``methods`` on the devices of each of ``device_seeds``; test accuracy at ``times`` (s)
    after programming, with global drift compensation calibrated at ``t_calibrate`` (s) on
    ``calibration_images`` training images. ``verify`` and ``gdp`` set the programming."""

    dataset: Literal["digits", "mnist"] = "digits"
    mnist_dir: str = ""
    hidden: tuple[int, ...] = (64,)
    epochs: int = 40
    train_seed: int = 0
    methods: tuple[Literal["verify", "gdp"], ...] = ("verify", "gdp")
    device_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    times: tuple[float, ...] = (1.0, 3600.0, 86400.0, 2.592e6)
    t_calibrate: float = 1.0
    calibration_images: int = 256
    tile_rows: int = 256
    tile_cols: int = 256
    verify: VerifySection = field(default_factory=lambda: VerifySection(differential=True))
    gdp: GDPSection = field(default_factory=GDPSection)

    def validate(self, where):
        for name in ("epochs", "calibration_images", "tile_rows", "tile_cols", "t_calibrate"):
            _positive(where, name, getattr(self, name))
        if not self.methods:
            raise InputError(f"{where}.methods: needs at least one method")
        if not self.device_seeds:
            raise InputError(f"{where}.device_seeds: needs at least one seed")
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"{where}.hidden: layer sizes must be > 0")
        _check_times(f"{where}.times", self.times)
        if not self.times or self.times[0] <= 0:
            raise InputError(f"{where}.times: needs increasing times > 0 s")
        if self.dataset == "mnist" and not self.mnist_dir:
            raise InputError(f"{where}.mnist_dir: required when dataset = 'mnist'")


@dataclass(frozen=True)
class MemristorSection:
    """Overrides of the bulk-switching memristor model (physics.memristor), SI units."""

    g_min: float | None = None
    g_max: float | None = None
    pulses_full: int | None = None
    a_potentiation: float | None = None
    a_depression: float | None = None
    sigma_c2c: float | None = None
    sigma_d2d_a: float | None = None
    sigma_d2d_window: float | None = None
    sigma_read: float | None = None

    def validate(self, where):
        for name in ("g_min", "g_max", "pulses_full", "a_potentiation", "a_depression"):
            _positive(where, name, getattr(self, name))
        for name in ("sigma_c2c", "sigma_d2d_a", "sigma_d2d_window", "sigma_read"):
            _positive(where, name, getattr(self, name), strict=False)
        if self.g_min is not None and self.g_max is not None and self.g_max <= self.g_min:
            raise InputError(f"{where}.g_max: must be above g_min")

    def model(self):
        from imcsim.physics import memristor

        return dataclasses.replace(memristor.BulkSwitchingModel(), **to_dict(self))


_TRAINING_DEFAULTS = TrainingConfig()


@dataclass(frozen=True)
class TrainingSection:
    """On-device training study (scenarios.mixed_precision): an MLP with ``hidden`` layers on
    scikit-learn's digits, trained for ``epochs`` with minibatch ``batch`` and learning rate
    ``lr`` by each of ``rules`` ("float", "analog", "mixed") for each of ``seeds``; weights
    span ±``w_max`` of the memristor window; at most ``max_pulses`` per device and update;
    ``dac_bits``/``adc_bits`` of the tiles; ``dataset`` "digits" (bundled) or "mnist" (IDX
    files in ``mnist_dir``, relative to the scenario); ``architecture`` "mlp" or "lenet" (3×3
    convolution with ``channels`` filters as an im2col MVM, pooling, dense layer of
    hidden[0]); ``memristor`` overrides the device model."""

    # Training settings default to those of scenarios.mixed_precision.TrainingConfig (one
    # source).
    hidden: tuple[int, ...] = _TRAINING_DEFAULTS.hidden
    epochs: int = _TRAINING_DEFAULTS.epochs
    batch: int = _TRAINING_DEFAULTS.batch
    lr: float = _TRAINING_DEFAULTS.lr
    w_max: float = _TRAINING_DEFAULTS.w_max
    max_pulses: int = _TRAINING_DEFAULTS.max_pulses
    dac_bits: int = _TRAINING_DEFAULTS.dac_bits
    adc_bits: int = _TRAINING_DEFAULTS.adc_bits
    rules: tuple[Literal["float", "analog", "mixed"], ...] = ("float", "analog", "mixed")
    seeds: tuple[int, ...] = (0, 1, 2)
    architecture: Literal["mlp", "lenet"] = _TRAINING_DEFAULTS.architecture
    channels: int = _TRAINING_DEFAULTS.channels
    dataset: Literal["digits", "mnist"] = "digits"
    mnist_dir: str = ""
    memristor: MemristorSection = field(default_factory=MemristorSection)

    def validate(self, where):
        for name in ("epochs", "batch", "lr", "w_max", "max_pulses", "channels"):
            _positive(where, name, getattr(self, name))
        if self.dataset == "mnist" and not self.mnist_dir:
            raise InputError(f"{where}.mnist_dir: required when dataset = 'mnist'")
        if self.architecture == "lenet" and len(self.hidden) != 1:
            raise InputError(f"{where}.hidden: the lenet architecture takes one hidden size")
        if not self.rules:
            raise InputError(f"{where}.rules: needs at least one rule")
        if not self.seeds:
            raise InputError(f"{where}.seeds: needs at least one seed")
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"{where}.hidden: layer sizes must be > 0")

    def config(self, seed: int):
        """The training settings of one seed (the study-level fields left out)."""
        study_only = ("rules", "seeds", "memristor", "dataset", "mnist_dir")
        settings = {k: v for k, v in to_dict(self).items() if k not in study_only}
        settings["hidden"] = tuple(settings["hidden"])
        return TrainingConfig(**settings, seed=seed, model=self.memristor.model())


# ----------------------------------------------------------------------------------------
# Spiking core studies (issue 5): scenarios.spiking

_SPIKING_DEFAULTS = SpikingConfig()


@dataclass(frozen=True)
class SpikingSection:
    """Charge-domain spiking IMC core study (scenarios.spiking, Sakemi et al., arXiv
    2412.09010): an RC-Spike network 16-``hidden``-10 (``hidden = []``: one layer 16-10) on
    scikit-learn's digits (8×8 averaged over ``pool``×``pool`` blocks, split by
    ``split_seed``), time-coded t = τ_in·(1 − x),
    trained for each of ``models`` ("bottom_up": synapses with reversal potentials
    ``e_plus`` > 0 > ``e_minus`` and a discharger with ``e_dis`` > 1; "top_down": the ideal
    core, all β = 0) by each of ``methods`` ("dstd" with ``dstd_steps`` M; "exact") for each
    of ``seeds``; every trained network is also evaluated on the other model.

    Normalised units: time in phase lengths T, potential in reset-to-threshold swings
    V_swing, weights w = g·T·E/(C_m·V_swing) (1: a synapse on for a whole phase charges the
    ideal membrane from reset to threshold). ``tau_in``, ``tau_soft``, ``t_ref`` and
    ``spike_noise`` (std) in T; ``leak`` α in 1/T; ``e_plus``, ``e_minus``, ``e_dis`` in
    V_swing (their sky130 circuit: 2.80, −1.53, 6.44); ``fire_rate`` of the firing phase's
    discharge, "unit" (rate 1 at the reset level) or "calibrated" (their App. A.2: a neuron
    at v(1) = 0 fires at the end of the phase); ``lr`` (Adam), ``gamma1`` (temporal
    penalty), ``init_mean``, ``init_std`` (v(1) at initialisation) dimensionless; ``batch``
    samples per minibatch."""

    # Training settings default to those of scenarios.spiking.SpikingConfig (one source).
    hidden: tuple[int, ...] = _SPIKING_DEFAULTS.hidden
    epochs: int = _SPIKING_DEFAULTS.epochs
    batch: int = _SPIKING_DEFAULTS.batch
    lr: float = _SPIKING_DEFAULTS.lr
    tau_in: float = _SPIKING_DEFAULTS.tau_in
    tau_soft: float = _SPIKING_DEFAULTS.tau_soft
    gamma1: float = _SPIKING_DEFAULTS.gamma1
    t_ref: float = _SPIKING_DEFAULTS.t_ref
    dstd_steps: int = _SPIKING_DEFAULTS.dstd_steps
    spike_noise: float = _SPIKING_DEFAULTS.spike_noise
    e_plus: float = _SPIKING_DEFAULTS.e_plus
    e_minus: float = _SPIKING_DEFAULTS.e_minus
    e_dis: float = _SPIKING_DEFAULTS.e_dis
    fire_rate: Literal["unit", "calibrated"] = _SPIKING_DEFAULTS.fire_rate
    leak: float = _SPIKING_DEFAULTS.leak
    init_mean: float = _SPIKING_DEFAULTS.init_mean
    init_std: float = _SPIKING_DEFAULTS.init_std
    pool: Literal[1, 2, 4] = _SPIKING_DEFAULTS.pool
    split_seed: int = _SPIKING_DEFAULTS.split_seed
    models: tuple[Literal["bottom_up", "top_down"], ...] = ("bottom_up", "top_down")
    methods: tuple[Literal["dstd", "exact"], ...] = ("dstd", "exact")
    seeds: tuple[int, ...] = (0, 1, 2)

    def validate(self, where):
        for name in ("epochs", "batch", "lr", "tau_soft", "dstd_steps"):
            _positive(where, name, getattr(self, name))
        for name in ("gamma1", "spike_noise", "leak", "init_std"):
            _positive(where, name, getattr(self, name), strict=False)
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"{where}.hidden: layer sizes must be > 0 ([] for no hidden "
                             "layer)")
        if not 0.0 < self.tau_in <= 1.0:
            raise InputError(f"{where}.tau_in: must be in (0, 1] (T), got {self.tau_in}")
        if not 0.0 <= self.t_ref <= 1.0:
            raise InputError(f"{where}.t_ref: must be in [0, 1] (T), got {self.t_ref}")
        if not self.e_plus > 0.0:
            raise InputError(f"{where}.e_plus: must be > 0, got {self.e_plus}")
        if not self.e_minus < 0.0:
            raise InputError(f"{where}.e_minus: must be < 0, got {self.e_minus}")
        if not self.e_dis > 1.0:
            raise InputError(f"{where}.e_dis: must be > 1 (else the discharger never "
                             f"reaches threshold), got {self.e_dis}")
        for name in ("models", "methods", "seeds"):
            values = getattr(self, name)
            if not values:
                raise InputError(f"{where}.{name}: needs at least one entry")
            if len(set(values)) != len(values):
                raise InputError(f"{where}.{name}: an entry is listed twice")

    def config(self, seed: int):
        """The training settings of one seed (the study-level fields left out)."""
        settings = {k: v for k, v in to_dict(self).items()
                    if k not in ("models", "methods", "seeds")}
        settings["hidden"] = tuple(settings["hidden"])
        return SpikingConfig(**settings, seed=seed)


# ----------------------------------------------------------------------------------------
# Inference-robustness studies (issue 7): scenarios.inference


INFERENCE_METHODS = ("float", "sgd_maxabs", "sgd_maxabs_tile", "sgd_percentile", "sgd_fixed2",
                     "noise", "hasgd",
                     "afp", "afp_hasgd", "pto_sgd", "pto_noise", "sgd_mse_clip",
                     "pto_sgd_oracle", "pto_sgd_chip_oracle")


@dataclass(frozen=True)
class PTOSection:
    """Post-training range optimisation (scenarios.pto): Adam on the logarithms of the column
    scales and DAC ranges, ``iterations`` steps of learning rate ``lr`` (decayed to 0 on a
    half cosine, ``schedule`` "cosine", or "constant"), each on the mean gradient of
    ``draws_per_step`` fresh device draws at the deployment time ``t_target`` (s); the best
    of the start and every ``check_every``-th step on ``eval_draws`` fixed draws (common to
    all candidates) is kept, and ``holdout_draws`` further draws (0: none) estimate its gain
    without the selection's bias. ``loss``: "cross_entropy" (labels of the calibration set)
    or "logit_mse" (output error against the float network); ``parameters``: "both",
    "columns" (column scales) or "dac" (DAC ranges only), for ablations; ``wires``: PTO's
    tile model solves the resistive array of [periphery] r_wire_row / r_wire_col (false: it
    optimises for an ideal array whatever the chip has)."""

    iterations: int = 150
    lr: float = 0.03
    t_target: float = 86400.0
    draws_per_step: int = 4
    schedule: Literal["cosine", "constant"] = "cosine"
    eval_draws: int = 128
    holdout_draws: int = 128
    check_every: int = 25
    loss: Literal["cross_entropy", "logit_mse"] = "cross_entropy"
    parameters: Literal["both", "columns", "dac"] = "both"
    wires: bool = False

    def validate(self, where):
        for name in ("iterations", "lr", "t_target", "draws_per_step", "eval_draws",
                     "check_every"):
            _positive(where, name, getattr(self, name))
        _positive(where, "holdout_draws", self.holdout_draws, strict=False)

    def settings(self):
        from imcsim.scenarios.pto import PTOSettings

        return PTOSettings(**to_dict(self))


@dataclass(frozen=True)
class InferenceSection:
    """Inference under device non-idealities (scenarios.inference): networks of each of
    ``architectures`` ("mlp": 64-hidden-10; "cnn": 3×3 convolution with ``channels``
    filters, pooling, a dense layer of hidden[0]) trained on scikit-learn's digits
    (``train_seed``: initial weights, batch order, and the train/test split unless
    ``split_seed`` is given — set it to compare trainings from several seeds on one test
    set; ``epochs``, ``lr``, ``batch`` of
    minibatch SGD with momentum) by plain SGD, noise injection and HA-SGD (device noise at
    ``t_train`` s after programming; ``hessian``, ``probes``, ``penalty_mode`` of HA-SGD),
    mapped onto tiles of at most ``tile_rows × tile_cols`` PCM pairs ([device] model,
    [periphery] DAC/ADC bits, v_read and ADC full scale), and evaluated by each of
    ``methods`` on the devices of every one of ``device_seeds`` at ``times`` (s after
    programming) with global drift compensation referenced at ``t_calibrate`` (s) on
    ``calibration_images`` training images (also PTO's calibration set; with
    ``calibration_source`` "holdout" they are withheld from every training, with "train" the
    networks are trained on them too). ``percentile``: the
    DAC range of "sgd_percentile" (percentile of |input|); ``afp_gain``: γ of the analog
    floating-point mapping; ``pto``: the range optimiser. ``programming``: "statistical"
    (one step to the preset's fitted programming noise) or "verify" (pulse by pulse with the
    [device.pulse] model under the ``verify`` program-and-verify controller) or "gdp"
    (gradient-descent programming, ``gdp``). ``noise_model``: the programming noise that
    noise injection, HA-SGD and PTO assume — "preset", the device model's fit, or
    "characterised", refitted (with the common-mode conductance of a pair) to copies of the
    SGD network's tiles programmed by the chip's own ``programming``
    (scenarios.inference.characterise_programming)."""

    architectures: tuple[Literal["mlp", "cnn"], ...] = ("mlp", "cnn")
    hidden: tuple[int, ...] = (64,)
    channels: int = 8
    epochs: int = 30
    lr: float = 0.05
    batch: int = 32
    train_seed: int = 0
    split_seed: int | None = None
    t_train: float = 86400.0
    hessian: Literal["hutchinson", "gauss_newton"] = "hutchinson"
    penalty_mode: Literal["full", "frozen"] = "full"
    probes: int = 1
    methods: tuple[Literal[INFERENCE_METHODS], ...] = INFERENCE_METHODS
    device_seeds: tuple[int, ...] = tuple(range(1, 21))
    times: tuple[float, ...] = (1.0, 3600.0, 86400.0, 3.1536e7)
    t_calibrate: float = 1.0
    calibration_images: int = 256
    calibration_source: Literal["train", "holdout"] = "train"
    tile_rows: int = 256
    tile_cols: int = 256
    percentile: float = 99.9
    afp_gain: float = 4.0
    programming: Literal["statistical", "verify", "gdp"] = "statistical"
    noise_model: Literal["preset", "characterised"] = "preset"
    verify: VerifySection = field(default_factory=lambda: VerifySection(differential=True))
    gdp: GDPSection = field(default_factory=GDPSection)
    pto: PTOSection = field(default_factory=PTOSection)

    def validate(self, where):
        if not self.architectures:
            raise InputError(f"{where}.architectures: needs at least one architecture")
        if not self.methods:
            raise InputError(f"{where}.methods: needs at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"{where}.methods: a method is listed twice")
        if not self.device_seeds:
            raise InputError(f"{where}.device_seeds: needs at least one seed")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise InputError(f"{where}.hidden: needs layer sizes > 0")
        if "cnn" in self.architectures and len(self.hidden) != 1:
            raise InputError(f"{where}.hidden: the cnn architecture takes one hidden size")
        for name in ("channels", "epochs", "lr", "batch", "t_train", "probes", "t_calibrate",
                     "calibration_images", "tile_rows", "tile_cols"):
            _positive(where, name, getattr(self, name))
        if not 0.0 < self.percentile <= 100.0:
            raise InputError(f"{where}.percentile: must be in (0, 100], got {self.percentile}")
        if not self.afp_gain > 1.0:
            raise InputError(f"{where}.afp_gain: must be > 1, got {self.afp_gain}")
        if self.tile_cols < 2:
            raise InputError(f"{where}.tile_cols: the two-column mappings need at least 2")
        if self.programming != "statistical" and "pto_sgd_chip_oracle" in self.methods:
            raise InputError(f"{where}.methods: pto_sgd_chip_oracle replays the statistical "
                             "model's draws and needs programming = 'statistical'")
        _check_times(f"{where}.times", self.times)
        if not self.times or self.times[0] <= 0:
            raise InputError(f"{where}.times: needs increasing times > 0 s")


# Scenario kinds other than the PCM-array timeline: the table that selects each, in the
# order they are checked. Exactly one (or none, for a timeline scenario) may be present.
STUDY_KINDS = ("network", "training", "spiking", "inference")


@dataclass(frozen=True)
class Scenario:
    """A PCM crossbar scenario (tables: run, device, array, targets, record, periphery,
    timeline)."""

    run: RunSection = field(default_factory=RunSection)
    device: DeviceSection = field(default_factory=DeviceSection)
    array: ArraySection = field(default_factory=ArraySection)
    targets: TargetsSection = field(default_factory=TargetsSection)
    record: RecordSection = field(default_factory=RecordSection)
    periphery: PeripherySection = field(default_factory=PeripherySection)
    network: NetworkSection | None = None
    training: TrainingSection | None = None
    spiking: SpikingSection | None = None
    inference: InferenceSection | None = None
    timeline: tuple[Step, ...] = ()

    @property
    def kind(self) -> str:
        """'pcm_array' for a timeline scenario, else the name of its study table."""
        present = [k for k in STUDY_KINDS if getattr(self, k) is not None]
        return present[0] if present else "pcm_array"

    def validate(self, where):
        present = [k for k in STUDY_KINDS if getattr(self, k) is not None]
        if len(present) > 1:
            raise InputError(f"{where}{present[1]}: a scenario holds one study table, not "
                             f"both [{present[0]}] and [{present[1]}]")
        if present:
            return
        if not self.timeline:
            raise InputError(f"{where}timeline: needs at least one step")
        programmed = False
        for k, step in enumerate(self.timeline):
            if step.kind == "program":
                programmed = True
            if step.kind in ("refresh",) and not programmed:
                raise InputError(f"timeline[{k}]: 'refresh' needs an earlier 'program' step")
        n_dev = 2 * self.array.rows * self.array.cols
        if self.record.subset > n_dev:
            raise InputError(f"record.subset: {self.record.subset} is more than the "
                             f"{n_dev} devices of the array")


@dataclass(frozen=True)
class LoadedScenario:
    """A validated scenario with its source text and the folder relative paths start from.

    A study file also lists ``variants``: (name, overrides, scenario) for each run, every one
    the base scenario with its dotted-path overrides applied and validated again.
    """

    scenario: Scenario
    text: str
    path: Path | None
    variants: tuple[tuple[str, dict, Scenario], ...] = ()

    def runs(self) -> list[tuple[str, dict, Scenario]]:
        """The runs this file asks for: the variants, or the scenario itself."""
        return list(self.variants) or [(self.scenario.run.name, {}, self.scenario)]


def load_scenario(path: str | Path, seed: int | None = None) -> LoadedScenario:
    """Read and validate a scenario file; ``seed`` overrides ``run.seed``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such scenario file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    return parse_scenario(text, path, seed)


def parse_scenario(text: str, path: Path | None = None, seed: int | None = None
                   ) -> LoadedScenario:
    label = str(path) if path else "<scenario>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{label}: malformed TOML: {exc}") from None
    if seed is not None:
        if not isinstance(data.get("run", {}), dict):
            raise InputError(f"{label}: run: expected a table, got {data['run']!r}")
        data = {**data, "run": {**data.get("run", {}), "seed": seed}}
    try:
        study = _study_runs(data)
        base = {k: v for k, v in data.items() if k not in ("variant", "study")}
        scenario = from_dict(Scenario, base, "")
        _check_files(scenario, path)
        variants = []
        for name, overrides, where in study:
            try:
                varied = from_dict(Scenario, apply_overrides(base, overrides), "")
                _check_files(varied, path)
            except InputError as exc:
                raise InputError(f"{where} ({name}): {exc}") from None
            variants.append((name, overrides, varied))
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None
    return LoadedScenario(scenario, text, path, tuple(variants))


# ----------------------------------------------------------------------------------------
# Studies: variants of one scenario in one file


def _parse_path(path: str, where: str) -> list:
    """'timeline[0].gdp.lr' -> ['timeline', 0, 'gdp', 'lr']."""
    parts: list = []
    for token in path.split("."):
        name, *indices = token.split("[")
        if not name:
            raise InputError(f"{where}: bad parameter path '{path}'")
        parts.append(name)
        for idx in indices:
            if not idx.endswith("]") or not idx[:-1].isdigit():
                raise InputError(f"{where}: bad index in parameter path '{path}'")
            parts.append(int(idx[:-1]))
    return parts


def apply_overrides(data: dict, overrides: dict) -> dict:
    """A copy of the TOML tree ``data`` with each dotted path of ``overrides`` set."""
    out = copy.deepcopy(data)
    for path, value in overrides.items():
        parts = _parse_path(path, path)
        node = out
        for here, nxt in itertools.pairwise(parts):
            if isinstance(here, int):
                if not isinstance(node, list) or here >= len(node):
                    raise InputError(f"{path}: index {here} is out of range")
                node = node[here]
            else:
                if not isinstance(node, dict):
                    raise InputError(f"{path}: '{here}' is not inside a table")
                node = node.setdefault(here, [] if isinstance(nxt, int) else {})
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise InputError(f"{path}: index {last} is out of range")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise InputError(f"{path}: '{last}' is not inside a table")
    return out


def _study_runs(data: dict) -> list[tuple[str, dict, str]]:
    """(name, overrides, where) of every run a study asks for.

    ``[[variant]]`` tables give a ``name`` and dotted-path overrides; ``[study] cross`` maps
    dotted paths to lists of values, crossed with each other and with every variant.
    """
    variants = data.get("variant", [])
    study = data.get("study", {})
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise InputError("variant: expected [[variant]] tables")
    if not isinstance(study, dict):
        raise InputError("study: expected a table")
    unknown = sorted(set(study) - {"cross"})
    if unknown:
        raise InputError(f"study.{unknown[0]}: unknown key (allowed: cross)")
    cross = study.get("cross", {})
    if not isinstance(cross, dict):
        raise InputError("study.cross: expected a table of parameter paths to value lists")
    for path, values in cross.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"study.cross.'{path}': expected a non-empty list of values")
    base = []
    for k, v in enumerate(variants):
        name = v.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"variant[{k}].name: required, a string without '/'")
        base.append((name, {p: x for p, x in v.items() if p != "name"}, f"variant[{k}]"))
    runs = base or ([("", {}, "study")] if cross else [])
    for path, values in cross.items():
        label = _parse_path(path, f"study.cross.'{path}'")[-1]
        runs = [("-".join(filter(None, [name, f"{label}={value}"])), {**over, path: value},
                 where) for name, over, where in runs for value in values]
    names = [r[0] for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"variant: run name '{duplicated[0]}' is used twice")
    return runs


def _check_files(scenario: Scenario, path: Path | None):
    for table, section in (("network", scenario.network), ("training", scenario.training)):
        if section is not None and section.dataset == "mnist":
            folder = resolve_path(section.mnist_dir, path)
            if not folder.is_dir():
                raise InputError(f"{table}.mnist_dir: no such folder {folder}")
    if scenario.targets.distribution == "file":
        target = resolve_path(scenario.targets.file, path)
        if not target.exists():
            raise InputError(f"targets.file: no such file {target}")


def resolve_path(name: str, scenario_path: Path | None) -> Path:
    p = Path(name)
    if not p.is_absolute() and scenario_path is not None:
        p = scenario_path.parent / p
    return p
