"""A crossbar of differential PCM pairs over time: program, drift, read, multiply.

Device state is lazy: each device keeps its programmed conductance G_p, the time t_p of its
last pulse, its drift exponent ν and its 1/f amplitude Q_s; every read evaluates the closed
form of :mod:`imcsim.physics.pcm` at the read time. Devices are indexed ``[pair, row, col]``
with pair 0 = G⁺ and 1 = G⁻; the flat C-order index is the device index of the random draws.

Global drift compensation (Le Gallo et al.; Joshi et al. 2020): a ``calibrate`` event runs a
fixed set of random calibration inputs through the tile and stores ref = mean|y|; every later
MVM runs the same inputs again and scales its outputs by α = ref/mean|y(t)|. Errors are
relative Frobenius norms over the input batch, ‖y − W_T·x‖/‖W_T·x‖, with W_T the (clipped)
target weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imcsim.config import MAX_PULSES, LoadedScenario, Step, resolve_path
from imcsim.engine import STATE_CHANGING, Event, run_events
from imcsim.errors import InputError
from imcsim.physics import crossbar, pcm, rng
from imcsim.scenarios import programming
from imcsim.store import TraceWriter

# Counter layout: an event owns counters [index·2^20, (index+1)·2^20) for its pulses
# (MAX_PULSES bounds the budget); the as-fabricated state uses one no event reaches.
_COUNTERS_PER_EVENT = MAX_PULSES
_INITIAL_COUNTER = np.uint64(1 << 63)
_INPUT_MVM = 0
_INPUT_CALIBRATION = 1


def make_targets(loaded: LoadedScenario, seed: int) -> np.ndarray:
    """Target weight matrix (rows, cols) of the scenario, dimensionless."""
    sc = loaded.scenario
    shape = (sc.array.rows, sc.array.cols)
    t = sc.targets
    if t.distribution == "file":
        path = resolve_path(t.file, loaded.path)
        try:
            w = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"targets.file: cannot load {path} ({exc})") from None
        if w.shape != shape:
            raise InputError(f"targets.file: {path} has shape {w.shape}, array is {shape}")
        if not np.all(np.isfinite(w)):
            raise InputError(f"targets.file: {path} holds NaN or infinite weights")
        return np.asarray(w, dtype=float)
    if t.distribution == "uniform":
        u = rng.uniforms(seed, rng.STREAM_TARGET, shape)
        return t.low + (t.high - t.low) * u
    w = t.std * rng.normals(seed, rng.STREAM_TARGET, shape)
    return np.clip(w, -sc.array.weight_scale, sc.array.weight_scale)


def random_inputs(seed: int, batch: int, rows: int, which: int) -> np.ndarray:
    """Fixed random MVM inputs x ~ U[−1, 1], shape (batch, rows)."""
    return 2.0 * rng.uniforms(seed, rng.STREAM_INPUT, (batch, rows), counter=which) - 1.0


@dataclass
class _Programmed:
    """What the last programming step did (for refresh)."""

    step: Step
    g_target: np.ndarray


class PCMArraySimulation:
    """Event handlers of a PCM crossbar scenario; writes its traces as it goes."""

    def __init__(self, loaded: LoadedScenario, seed: int, events: list[Event]):
        sc = loaded.scenario
        self.sc = sc
        self.seed = np.uint64(seed)
        self.events = events
        self.writer: TraceWriter | None = None
        self.stat = sc.device.statistical_model()
        self.pulse = sc.device.pulse_model()
        rows, cols = sc.array.rows, sc.array.cols
        self.shape = (2, rows, cols)
        n = 2 * rows * cols
        self.w_target = make_targets(loaded, seed)
        gp, gm = crossbar.weights_to_conductances(self.w_target, sc.array.weight_scale,
                                                  self.stat.g_max)
        self.g_target = np.stack([gp, gm]).reshape(-1)
        self.w_mapped = crossbar.conductances_to_weights(gp, gm, sc.array.weight_scale,
                                                         self.stat.g_max)
        self.periphery = sc.periphery.periphery()
        self.params = pcm.draw_device_params(seed, n, self.pulse)
        # Devices start RESET at t = 0 with the drift state of the amorphous phase.
        self.g_prog = np.empty(n)
        pcm.apply_reset(self.g_prog, self.params.g_reset, self.pulse.sigma_reset, self.seed,
                        _INITIAL_COUNTER)
        self.t_prog = np.zeros(n)
        self.nu = np.empty(n)
        self.q_s = np.empty(n)
        self._draw_drift_state(self.g_prog, self.g_prog, _INITIAL_COUNTER)
        self.pulses_total = np.zeros(n, dtype=np.int64)
        self.last_program: _Programmed | None = None
        self.subset = self._choose_subset(sc.record.subset, n)
        mvm_batch = max((s.batch for s in sc.timeline if s.kind == "mvm"), default=1)
        cal_batch = max((s.batch for s in sc.timeline if s.kind == "calibrate"), default=1)
        self.x_mvm = random_inputs(seed, mvm_batch, rows, _INPUT_MVM)
        self.x_cal = random_inputs(seed, cal_batch, rows, _INPUT_CALIBRATION)
        self.y_ideal = np.empty((self.x_mvm.shape[0], cols))
        crossbar.matmul(self.x_mvm, self.w_mapped, self.y_ideal)
        self.gdc_reference = np.nan
        self.gdc_batch = 0
        self.first_program_error = np.nan
        self.n_mvm_done = 0
        # Observations read together hold n_events × n_devices conductances: ≤ 256 MiB.
        self.max_batch = max(1, (1 << 25) // n)

    # -- set-up -------------------------------------------------------------------------
    def _choose_subset(self, k: int, n: int) -> np.ndarray:
        keys = rng.uniforms(self.seed, rng.STREAM_SUBSET, (n,))
        return np.sort(np.argsort(keys, kind="stable")[:k])

    def _draw_drift_state(self, g_for_nu, g_for_qs, counter):
        pcm.draw_drift_state(g_for_nu, g_for_qs, self.stat.g_max, self.stat.model_id,
                             self.stat.drift_scale, self.seed, counter, self.nu, self.q_s)

    def declare(self, writer: TraceWriter):
        """Create every dataset of the run in ``writer`` (before ``writer.begin()``)."""
        self.writer = w = writer
        events = self.events
        count = {k: sum(e.kind == k for e in events) for k in
                 ("program", "refresh", "reset", "read", "mvm", "calibrate")}
        n_state = count["program"] + count["refresh"] + count["reset"]
        n_full = sum(e.kind == "read" and e.full for e in events)
        shape = self.shape
        w.static("w_target", self.w_target, "1", "target weights [row, col] (weight units)")
        w.static("g_target", self.g_target.reshape(shape), "S",
                 "target conductances [pair, row, col], pair 0 = G+, 1 = G-")
        w.static("dg0", self.params.dg0.reshape(shape), "S",
                 "device-to-device partial-SET increment of a fresh cell at full amplitude")
        w.static("g_sat", self.params.g_sat.reshape(shape), "S",
                 "device-to-device saturation conductance of partial-SET")
        w.static("g_reset", self.params.g_reset.reshape(shape), "S",
                 "device-to-device median RESET (amorphous) conductance")
        w.static("subset_index", self.subset, "1",
                 "flat [pair, row, col] indices of the devices in conductance_subset")
        w.static("mvm_inputs", self.x_mvm, "1", "MVM input vectors [batch, row], U[-1, 1]")
        w.static("calibration_inputs", self.x_cal, "1",
                 "global-drift-compensation calibration inputs [batch, row]")
        for name, units, desc in (
                ("g_programmed", "S", "conductance just after programming (G_p)"),
                ("t_programmed", "s", "time of each device's last programming pulse (t_p)"),
                ("nu", "1", "drift exponent drawn at programming"),
                ("q_s", "1", "1/f read-noise amplitude Q_s"),
                ("pulses", "1", "pulses spent by each device in this step"),
                ("converged", "1", "1 where program-and-verify ended within tolerance")):
            w.declare_series(name, shape, "f8", units,
                             f"{desc}, after each program/refresh/reset [event, pair, row, col]",
                             n=n_state)
        w.declare_series("conductance_subset", (self.subset.size,), "f8", "S",
                         "conductance of the recorded subset read at each read time "
                         "(drift + 1/f read noise)", n=count["read"])
        w.declare_series("conductance", shape, "f8", "S",
                         "conductance of every device at the reads listed in full_times",
                         n=n_full)
        for name, desc in (("mvm_error", "relative MVM error |y - W x| / |W x|, raw outputs"),
                           ("mvm_error_gdc",
                            "relative MVM error with global drift compensation"),
                           ("gdc_alpha", "global drift compensation factor alpha")):
            w.declare_series(name, (), "f8", "1", desc, n=count["mvm"])
        n_rounds = sum(self._verify_rounds(e) for e in events)
        if n_rounds:
            w.declare_series("verify_mvm_error", (), "f8", "1",
                             "relative MVM error through the ADC (read noise included) of "
                             "program-and-verify stopped at a per-device budget of 1, 2, ... "
                             "pulses (the same draws as the full run)", n=n_rounds)
            w.declare_series("verify_pulses_mean", (), "f8", "1",
                             "mean pulses per device spent at that budget", n=n_rounds)
        n_gdp = sum(self._gdp_iterations(e) for e in events)
        every = self.sc.record.snapshot_every
        n_snap = sum((self._gdp_iterations(e) or self._verify_rounds(e)) // every
                     for e in events) if every else 0
        if n_snap:
            w.declare_series("programming_snapshot", self.shape, "f8", "S",
                             "every device's conductance during programming, every "
                             "snapshot_every GDP iterations or verify budgets "
                             "[sample, pair, row, col]", n=n_snap)
        if n_gdp:
            w.declare_series("gdp_mvm_error", (), "f8", "1",
                             "relative MVM error seen through the ADC at each GDP iteration",
                             n=n_gdp)
            w.declare_series("gdp_pulses_mean", (), "f8", "1",
                             "mean pulses per device so far, at each GDP iteration", n=n_gdp)
        if self.sc.record.store_outputs:
            w.declare_series("mvm_output", self.y_ideal.shape, "f8", "1",
                             "raw MVM outputs [batch, col] in weight units", n=count["mvm"])
        for name, units, desc in (
                ("programming_error_rms", "S",
                 "rms over pairs of (G+ - G-) - (G+_T - G-_T) after the first programming step"),
                ("weight_error_relative", "1",
                 "|W_programmed - W_target| / |W_target| (Frobenius) after the first "
                 "programming step"),
                ("pulses_mean", "1", "mean pulses per device over all programming steps"),
                ("converged_fraction", "1",
                 "fraction of devices within tolerance after the first programming step"),
                ("mvm_error_first", "1", "relative MVM error at the first MVM"),
                ("mvm_error_last", "1", "relative MVM error at the last MVM"),
                ("mvm_error_gdc_last", "1", "compensated relative MVM error at the last MVM")):
            w.declare_metric(name, units, desc)

    @property
    def n_steps(self) -> int:
        return len(self.events)

    def run(self, progress=None):
        """All events in time order (``progress(n)`` after each batch)."""
        run_events(self, self.events, progress)

    def _program_step(self, e: Event):
        """The program step an event runs (refreshes repeat the last one before them)."""
        if e.kind not in ("program", "refresh"):
            return None
        step = None
        for k, st in enumerate(self.sc.timeline):
            if st.kind == "program" and k <= e.step:
                step = st
        return step

    def _verify_rounds(self, e: Event) -> int:
        """Budgets recorded for a differential verify event (0 unless curves are on)."""
        step = self._program_step(e)
        if (not self.sc.record.programming_curves or step is None or step.method != "verify"
                or not step.verify.differential):
            return 0
        return step.verify.max_pulses

    def _gdp_iterations(self, e: Event) -> int:
        """GDP iterations an event will run (refreshes repeat the last program step)."""
        step = self._program_step(e)
        return step.gdp.iterations if step is not None and step.method == "gdp" else 0

    # -- dispatch -----------------------------------------------------------------------
    def handle(self, batch: list[Event]):
        """A state change alone, or observations: one read of all devices at all their
        times, then each observation in time order."""
        if batch[0].kind in STATE_CHANGING:
            getattr(self, f"_on_{batch[0].kind}")(batch)
        else:
            for e, g in zip(batch, self.read_at(batch)):
                getattr(self, f"_observe_{e.kind}")(e, g)
        for e in batch:
            self.writer.log_event(e.t, e.kind, e.step, self.g_prog.size)
        self.writer.flush()

    def _on_program(self, batch):
        (e,) = batch
        step = self.sc.timeline[e.step]
        self.last_program = _Programmed(step, self.g_target)
        self._program(e, self.last_program)

    def _on_refresh(self, batch):
        self._program(batch[0], self.last_program)

    def _on_reset(self, batch):
        (e,) = batch
        counter = np.uint64(e.index * _COUNTERS_PER_EVENT)
        pcm.apply_reset(self.g_prog, self.params.g_reset, self.pulse.sigma_reset, self.seed,
                        counter)
        self.t_prog[:] = e.t + self.pulse.t_pulse
        self._draw_drift_state(self.g_prog, self.g_prog, counter)
        pulses = np.ones(self.g_prog.size)
        self.pulses_total += 1
        self._record_state(e.t, pulses, np.zeros(self.g_prog.size))

    def _program(self, e: Event, prog: _Programmed):
        counter = np.uint64(e.index * _COUNTERS_PER_EVENT)
        method = {"statistical": self._program_statistical, "gdp": self._program_gdp,
                  "verify": self._program_verify}[prog.step.method]
        pulses, converged = method(e, prog, counter)
        self.pulses_total += pulses.astype(np.int64)
        if np.isnan(self.first_program_error):
            n = self.g_prog.size // 2
            diff = self.g_prog[:n] - self.g_prog[n:]
            target = prog.g_target[:n] - prog.g_target[n:]
            self.first_program_error = float(np.sqrt(np.mean((diff - target) ** 2)))
            self.writer.set_metric("programming_error_rms", self.first_program_error)
            self.writer.set_metric("weight_error_relative",
                                   programming.relative_error(diff, target))
            self.writer.set_metric("converged_fraction", float(converged.mean()))
        self._record_state(e.t, pulses, converged)

    def _program_statistical(self, e, prog, counter):
        n = self.g_prog.size
        pcm.program_statistical(prog.g_target, self.g_prog, self.stat.g_max,
                                np.asarray(self.stat.prog_coeff, dtype=float),
                                self.stat.prog_coeff_g_ref, self.stat.prog_noise_scale,
                                self.seed, counter)
        self.t_prog[:] = e.t + self.pulse.t_pulse
        g_qs = prog.g_target if self.stat.model_id == pcm.MODEL_JOSHI else self.g_prog
        self._draw_drift_state(prog.g_target, g_qs, counter)
        return np.ones(n), np.ones(n)

    def _program_verify(self, e, prog, counter):
        p = prog.step.verify.policy(self.periphery)
        n = self.g_prog.size
        n_pulses = np.zeros(n, dtype=np.int64)
        common = (self.params.dg0, self.params.g_sat, self.params.g_reset, self.pulse.dg0,
                  self.pulse.g_sat, self.pulse.sigma_c2c, self.pulse.sigma_reset, p.tolerance,
                  p.max_pulses, p.read_noise, p.read_resolution, p.step_fraction, p.s_min,
                  self.seed, counter, n_pulses)
        if p.differential:
            ok = np.zeros(n // 2, dtype=np.bool_)
            target = prog.g_target[:n // 2] - prog.g_target[n // 2:]
            if self._verify_rounds(e):
                self._record_verify_rounds(e, p, target, counter)
            pcm.program_verify_pairs(target, self.g_prog, *common, ok)
            ok = np.concatenate([ok, ok])  # a pair's verdict, for both its devices
        else:
            ok = np.zeros(n, dtype=np.bool_)
            pcm.program_verify(prog.g_target, self.g_prog, *common, ok)
        self.t_prog[:] = e.t + n_pulses * self.pulse.t_pulse
        self._draw_drift_state(self.g_prog, self.g_prog, counter)
        return n_pulses.astype(float), ok.astype(float)

    def _record_verify_rounds(self, e, p, target, counter):
        """The run stopped at budgets 1..max_pulses: draws are keyed on each device's pulse
        number, so budget k reproduces the full run's first k pulses of every device."""
        n = self.g_prog.size
        every = self.sc.record.snapshot_every
        for k in range(1, p.max_pulses + 1):
            g = np.empty(n)
            pulses = np.zeros(n, dtype=np.int64)
            ok = np.zeros(n // 2, dtype=np.bool_)
            pcm.program_verify_pairs(target, g, self.params.dg0, self.params.g_sat,
                                     self.params.g_reset, self.pulse.dg0, self.pulse.g_sat,
                                     self.pulse.sigma_c2c, self.pulse.sigma_reset, p.tolerance,
                                     k, p.read_noise, p.read_resolution, p.step_fraction,
                                     p.s_min, self.seed, counter, pulses, ok)
            t = e.t + k * self.pulse.t_pulse
            state = programming.TileState(g, e.t + pulses * self.pulse.t_pulse, np.empty(n),
                                          np.empty(n), self.params)
            pcm.draw_drift_state(g, g, self.stat.g_max, self.stat.model_id,
                                 self.stat.drift_scale, self.seed, counter, state.nu,
                                 state.q_s)
            err = programming.mvm_error(state, self.w_mapped, t, stat=self.stat,
                                        periphery=self.periphery,
                                        weight_scale=self.sc.array.weight_scale,
                                        seed=int(self.seed), counter=int(counter) + k)
            self.writer.append("verify_mvm_error", t, err)
            self.writer.append("verify_pulses_mean", t, float(pulses.mean()))
            if every and k % every == 0:
                self.writer.append("programming_snapshot", t, g.reshape(self.shape))

    def _program_gdp(self, e, prog, counter):
        n = self.g_prog.size
        state = programming.TileState(self.g_prog, self.t_prog, self.nu, self.q_s, self.params)
        n_pulses = np.zeros(n, dtype=np.int64)
        every = self.sc.record.snapshot_every

        def snapshot(k, t, tile):
            if every and (k + 1) % every == 0:
                self.writer.append("programming_snapshot", t, tile.g.reshape(self.shape))

        trace = programming.program_gdp(
            state, self.w_mapped, pulse=self.pulse, stat=self.stat, periphery=self.periphery,
            weight_scale=self.sc.array.weight_scale, policy=prog.step.gdp.policy(),
            seed=int(self.seed), counter0=int(counter), t_start=e.t, pulses_out=n_pulses,
            on_iteration=snapshot)
        for t, err, pulses in zip(trace.t, trace.mvm_error, trace.pulses_mean):
            self.writer.append("gdp_mvm_error", t, err)
            self.writer.append("gdp_pulses_mean", t, pulses)
        return n_pulses.astype(float), np.ones(n)

    def _record_state(self, t, pulses, converged):
        w = self.writer
        for name, value in (("g_programmed", self.g_prog), ("t_programmed", self.t_prog),
                            ("nu", self.nu), ("q_s", self.q_s), ("pulses", pulses),
                            ("converged", converged)):
            w.append(name, t, value.reshape(self.shape))
        w.set_metric("pulses_mean", float(self.pulses_total.mean()))

    # -- observations -------------------------------------------------------------------
    def read_at(self, batch: list[Event], read_noise: bool = True) -> np.ndarray:
        """Conductances of all devices at each event of ``batch``: (len(batch), n_devices)."""
        times = np.array([e.t for e in batch])
        counters = np.array([e.index for e in batch], dtype=np.uint64)
        out = np.empty((times.size, self.g_prog.size))
        scale = self.stat.read_noise_scale if read_noise else 0.0
        pcm.read_drifted(self.g_prog, self.t_prog, self.nu, self.q_s, times, counters,
                         self.stat.t0, self.stat.t_read, self.stat.shifted, scale, self.seed,
                         out)
        return out

    def _mvm(self, g_flat, x):
        """Tile outputs in weight units through the scenario's DAC and ADC."""
        g = g_flat.reshape(self.shape)
        return crossbar.tile_mvm(g[0], g[1], x, self.periphery, self.sc.array.weight_scale,
                                 self.stat.g_max)

    def _observe_read(self, e: Event, g):
        self.writer.append("conductance_subset", e.t, g[self.subset])
        if e.full:
            self.writer.append("conductance", e.t, g.reshape(self.shape))

    def _observe_calibrate(self, e: Event, g):
        step = self.sc.timeline[e.step]
        y_cal = self._mvm(g, self.x_cal[:step.batch])
        self.gdc_reference = float(np.mean(np.abs(y_cal)))
        self.gdc_batch = step.batch

    def _observe_mvm(self, e: Event, g):
        w = self.writer
        b = self.sc.timeline[e.step].batch
        y = self._mvm(g, self.x_mvm[:b])
        err = programming.relative_error(y, self.y_ideal[:b])
        alpha = np.nan
        if np.isfinite(self.gdc_reference):
            y_cal = self._mvm(g, self.x_cal[:self.gdc_batch])
            level = float(np.mean(np.abs(y_cal)))
            # A tile whose outputs all read 0 (e.g. below one ADC step) cannot be rescaled.
            alpha = self.gdc_reference / level if level > 0.0 else np.nan
        err_gdc = (programming.relative_error(alpha * y, self.y_ideal[:b])
                   if np.isfinite(alpha) else err)
        w.append("mvm_error", e.t, err)
        w.append("mvm_error_gdc", e.t, err_gdc)
        w.append("gdc_alpha", e.t, alpha)
        if self.sc.record.store_outputs:
            out = np.full(self.y_ideal.shape, np.nan)
            out[:b] = y
            w.append("mvm_output", e.t, out)
        if self.n_mvm_done == 0:
            w.set_metric("mvm_error_first", err)
        self.n_mvm_done += 1
        w.set_metric("mvm_error_last", err)
        w.set_metric("mvm_error_gdc_last", err_gdc)
