"""Throughput of the imcsim PCM kernels, each row a ratio against a baseline run in this process.

Run from anywhere with imcsim installed::

    python benchmarks/bench_pcm.py [--quick] [--threads N] [--repeats R] [--json FILE]

Sections (see benchmarks/README.md for the columns):

1. partial-SET pulses, ``pcm.apply_set_pulses``, Numba with 1 and N threads, against
   (a) ``reference.set_pulses_numpy_generator`` (numpy at its best: in-place updates and the
   ziggurat normals of ``np.random.default_rng``) and (b) ``reference.set_pulses`` (numpy
   drawing the same counter-based normals as the kernel; its rare ziggurat slow path is a
   Python loop, so it runs fewer pulses; throughput is per device-pulse either way);
2. program-and-verify, ``pcm.program_verify``, to random differential targets as in the
   default scenario: devices/s and pulses/s, N threads against 1 thread;
3. drifted reads with 1/f read noise, ``pcm.read_drifted``, at 32 log-spaced times from 1 s
   to 1 year of devices programmed by program-and-verify (so t_prog spreads over
   microseconds), against ``reference.read_drifted`` (numpy, same random numbers, fewer read
   times), and the noise-free read against the noisy kernel;
4. trace writing: appending the conductance samples of a 1 s - 1 year drift run through
   ``imcsim.store.TraceWriter`` (gzip-compressed HDF5 in SWMR mode) into a temporary file,
   as a percentage of the time of the ``read_drifted`` call that produced the samples.

Methodology. The rows that are compared with each other (one section at one size) form a
group. Each row of a group first runs once untimed (compilation or loading of the cached
machine code, first touch of outputs and temporaries, thread-pool start-up); then the group
is timed in ``--repeats`` (>= 5) interleaved rounds, every round running each row once, with
``time.perf_counter`` and the garbage collector off, so a baseline and the rows compared with
it sample the same moments of a machine whose speed drifts. The table shows the best (min)
run and the median/min spread. Inputs that a kernel updates in place are restored, untimed,
before each run, so every run does the same work. Nothing here asserts on wall time. The
"other CPU" column is the share of the machine's CPU time that other processes (and
hypervisor steal) used during the timed rounds of the row's group (from /proc/stat, 10 ms
resolution): groups measured under load are not comparable.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numba
import numpy as np

from imcsim.physics import crossbar, pcm, reference, rng
from imcsim.store import TraceWriter

SEED = 2026
YEAR = 3.1536e7  # s, 365 days: the last read of the default scenario
MIN_REPEATS = 5
FULL_READ_TIMES = (1.0, 3600.0, 86400.0, YEAR)  # full-array samples of the default scenario


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode; shapes are (pair, rows, cols) of a differential array."""

    small: tuple[int, int, int]
    large: tuple[int, int, int]
    pulses: int  # SET pulses per device, Numba and numpy-generator rows
    pulses_ref: tuple[int, int]  # SET pulses per device of reference.set_pulses (small, large)
    n_times: int  # read times of the drift run
    ref_times: tuple[int, int]  # read times of reference.read_drifted (small, large)
    subset: int  # devices in the per-read subset sample of the trace


DEFAULT = Sizes(small=(2, 256, 256), large=(2, 512, 1024), pulses=64, pulses_ref=(16, 4),
                n_times=32, ref_times=(8, 4), subset=512)
QUICK = Sizes(small=(2, 64, 64), large=(2, 128, 256), pulses=16, pulses_ref=(4, 2),
              n_times=32, ref_times=(4, 2), subset=512)


@dataclass
class Row:
    """One measured throughput: ``per_run`` work units in ``best_s``; ``unit`` is per second."""

    id: str
    section: str
    label: str
    short: str  # name used when another row refers to this one as its baseline
    devices: int
    work: str  # what one timed run does
    threads: str  # Numba threads; "np": single-threaded numpy; "-": Python/h5py
    per_run: float  # work units per timed run (device-pulses, devices, reads, bytes)
    unit: str
    baseline: str  # id of the row this one is compared with (itself for a baseline)
    ratio_kind: str = "speed-up"  # "speed-up": throughput ratio; "overhead": time in % of it
    best_s: float = math.nan
    median_s: float = math.nan
    other_cpu: float | None = None
    throughput: float = math.nan
    ratio: float = math.nan

    def __post_init__(self):
        self.per_run = float(self.per_run)


@dataclass
class Case:
    """Something to time and the row(s) it reports (one run may feed several units)."""

    run: Callable[[object], object]
    rows: list[Row]
    threads: int | None = None  # Numba threads to set before each run
    setup: Callable[[], object] | None = None  # untimed, its result is passed to run
    teardown: Callable[[object], object] | None = None  # untimed
    samples: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# Machine and load


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


_CLK_TCK = _clock_ticks()


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy (not idle, not iowait), incl. steal; NaN if
    /proc/stat is not available."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return math.nan
    if not fields or fields[0] != "cpu":
        return math.nan
    v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(v) - v[3] - v[4]) / _CLK_TCK


def load_snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU time of this process, busy CPU time of the machine), s."""
    return time.perf_counter(), time.process_time(), _busy_cpu_seconds()


def other_share(wall: float, own: float, busy: float) -> float | None:
    """Share of the machine's CPU capacity used by others: (busy − own)/(wall·n_cpu)."""
    if not (math.isfinite(busy) and wall > 0.0):
        return None
    return min(max((busy - own) / (wall * (os.cpu_count() or 1)), 0.0), 1.0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(n_threads: int) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "not initialised"
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "affinity_cpus": affinity,
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_threads_used": n_threads,
        "numba_threading_layer": layer,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tmpdir": tempfile.gettempdir(),
    }


# ----------------------------------------------------------------------------------------
# Timing


class Bench:
    """Times groups of cases (see the module docstring) and collects their rows."""

    def __init__(self, repeats: int, n_threads: int, log=None):
        self.repeats = repeats
        self.n_threads = n_threads
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.log = log or (lambda msg: None)

    @staticmethod
    def _once(case: Case) -> float:
        if case.threads is not None:
            numba.set_num_threads(case.threads)
        ctx = case.setup() if case.setup is not None else None
        t0 = time.perf_counter()
        case.run(ctx)
        dt = time.perf_counter() - t0
        if case.teardown is not None:
            case.teardown(ctx)
        return dt

    def run_group(self, name: str, cases: list[Case]):
        """Warm every case up once, then time ``repeats`` interleaved rounds."""
        self.log(f"{name}: warm-up")
        for case in cases:
            self._once(case)
        gc.collect()
        gc_enabled = gc.isenabled()
        gc.disable()
        start = load_snapshot()
        try:
            for r in range(self.repeats):
                self.log(f"{name}: round {r + 1}/{self.repeats}")
                for case in cases:
                    case.samples.append(self._once(case))
        finally:
            if gc_enabled:
                gc.enable()
        other = other_share(*(e - s for e, s in zip(load_snapshot(), start)))
        for case in cases:
            best = min(case.samples)
            for row in case.rows:
                row.best_s = best
                row.median_s = statistics.median(case.samples)
                row.other_cpu = other
                row.throughput = row.per_run / best
                self.rows.append(row)

    def finalise(self):
        by_id = {r.id: r for r in self.rows}
        for r in self.rows:
            base = by_id[r.baseline]
            if r.ratio_kind == "overhead":
                r.ratio = 100.0 * r.best_s / base.best_s
            else:
                r.ratio = r.throughput / base.throughput


# ----------------------------------------------------------------------------------------
# Inputs


def _thr(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"


def n_of(shape) -> int:
    return int(np.prod(shape))


def fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape)


def random_targets(shape) -> np.ndarray:
    """Differential targets of weights U[-1, 1] as in the default scenario, flat, S."""
    _, rows, cols = shape
    w = 2.0 * rng.uniforms(SEED, rng.STREAM_TARGET, (rows, cols)) - 1.0
    gp, gm = crossbar.weights_to_conductances(w, 1.0, pcm.JOSHI_2020.g_max)
    return np.stack([gp, gm]).reshape(-1)


def run_program_verify(g_target, g, params, model, policy, n_pulses, ok):
    pcm.program_verify(g_target, g, params.dg0, params.g_sat, params.g_reset, model.dg0,
                       model.g_sat, model.sigma_c2c, model.sigma_reset, policy.tolerance,
                       policy.max_pulses, policy.read_noise, policy.read_resolution,
                       policy.step_fraction, policy.s_min, np.uint64(SEED), np.uint64(0),
                       n_pulses, ok)


def programmed_state(shape):
    """(g_prog, t_prog, nu, q_s) after program-and-verify at t = 0 as in the default scenario:
    t_prog = pulses used × t_pulse spreads over microseconds; ν and Q_s drawn from G_p."""
    n = n_of(shape)
    model, policy, stat = pcm.PulseModel(), pcm.VerifyPolicy(), pcm.JOSHI_2020
    params = pcm.draw_device_params(SEED, n, model)
    g = np.empty(n)
    n_pulses = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)
    run_program_verify(random_targets(shape), g, params, model, policy, n_pulses, ok)
    nu, q_s = np.empty(n), np.empty(n)
    pcm.draw_drift_state(g, g, stat.g_max, stat.model_id, stat.drift_scale, np.uint64(SEED),
                         np.uint64(0), nu, q_s)
    return g, n_pulses * model.t_pulse, nu, q_s


def read_times(n_times: int):
    """Log-spaced read times from 1 s to 1 year and their counters (event indices)."""
    times = np.logspace(0.0, np.log10(YEAR), n_times)
    counters = np.arange(1, n_times + 1, dtype=np.uint64)
    return times, counters


def read_kernel(state, times, counters, scale, out):
    """A run of ``pcm.read_drifted`` (Joshi 2020 model, clamped time) into ``out``."""
    g_prog, t_prog, nu, q_s = state
    stat = pcm.JOSHI_2020
    seed = np.uint64(SEED)

    def run(_):
        pcm.read_drifted(g_prog, t_prog, nu, q_s, times, counters, stat.t0, stat.t_read,
                         stat.shifted, scale, seed, out)
    return run


def max_rel_diff(a, b) -> float:
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b))) / scale


# ----------------------------------------------------------------------------------------
# Sections


def bench_set_pulses(b: Bench, tier: str, shape, pulses: int, pulses_ref: int):
    sec = "1. partial-SET pulses (pcm.apply_set_pulses)"
    n = n_of(shape)
    model = pcm.PulseModel()
    params = pcm.draw_device_params(SEED, n, model)
    seed, counter0 = np.uint64(SEED), np.uint64(0)
    g0 = np.empty(n)
    pcm.apply_reset(g0, params.g_reset, model.sigma_reset, seed, counter0)
    amplitude = 0.05 + 0.95 * rng.uniforms(SEED, rng.STREAM_INPUT, (n,), counter=7)
    g = np.empty(n)

    def restore():
        g[:] = g0

    def numba_run(_):
        pcm.apply_set_pulses(g, amplitude, pulses, params.dg0, params.g_sat, model.sigma_c2c,
                             seed, counter0)

    generator = np.random.default_rng(SEED)

    def numpy_generator_run(_):
        reference.set_pulses_numpy_generator(g, amplitude, pulses, params.dg0, params.g_sat,
                                             model.sigma_c2c, generator)

    ref_out = {}

    def numpy_counter_run(_):
        ref_out["g"] = reference.set_pulses(g0, amplitude, pulses_ref, params.dg0,
                                            params.g_sat, model.sigma_c2c, seed, counter0)

    p = f"set.{tier}."
    base = p + "numpy_generator"

    def row(key, label, short, threads, n_pulses):
        return Row(id=p + key, section=sec, label=label, short=short, devices=n,
                   work=f"{n_pulses} pulses/dev", threads=threads, per_run=n * n_pulses,
                   unit="device-pulses/s", baseline=base)

    cases = [Case(numba_run, [row(f"numba_{key}", f"numba, {_thr(t)}", f"numba {t} thr",
                                  str(t), pulses)], threads=t, setup=restore)
             for t, key in ((1, "1t"), (b.n_threads, "nt"))]
    cases.append(Case(numpy_generator_run, [row(
        "numpy_generator", "numpy (a): default_rng normals, in place", "numpy (a)", "np",
        pulses)], setup=restore))
    cases.append(Case(numpy_counter_run, [row(
        "numpy_counter", "numpy (b): counter-based RNG", "numpy (b)", "np", pulses_ref)]))
    b.run_group(f"[1] set pulses, {n} devices", cases)
    # Not a benchmark: confirm that (b) and the kernel compute the same thing.
    g[:] = g0
    pcm.apply_set_pulses(g, amplitude, pulses_ref, params.dg0, params.g_sat, model.sigma_c2c,
                         seed, counter0)
    b.notes.append(f"set pulses, {n} devices: numba vs reference.set_pulses "
                   f"({pulses_ref} pulses), max |dG|/max G = {max_rel_diff(g, ref_out['g']):.1e}")


def bench_program_verify(b: Bench, shape):
    sec = "2. program-and-verify (pcm.program_verify)"
    n = n_of(shape)
    model, policy = pcm.PulseModel(), pcm.VerifyPolicy()
    g_target = random_targets(shape)
    params = pcm.draw_device_params(SEED, n, model)
    g = np.empty(n)
    n_pulses = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)

    def run(_):
        run_program_verify(g_target, g, params, model, policy, n_pulses, ok)

    # Every run draws the same numbers (same seed and counters), so every run does this work.
    run(None)
    total = int(n_pulses.sum())
    cases = []
    for t, key in ((1, "1t"), (b.n_threads, "nt")):
        rows = [Row(id=f"pv.small.{what}_{key}", section=sec, label=f"numba, {_thr(t)}, {what}",
                    short=f"{what}, {t} thr", devices=n, work=f"{total / n:.2f} pulses/dev",
                    threads=str(t), per_run=per_run, unit=unit,
                    baseline=f"pv.small.{what}_1t")
                for what, per_run, unit in (("devices", n, "devices/s"),
                                            ("pulses", total, "pulses/s"))]
        cases.append(Case(run, rows, threads=t))
    b.run_group(f"[2] program-and-verify, {n} devices", cases)
    # Rows sorted devices first, then pulses.
    b.rows[-4:] = sorted(b.rows[-4:], key=lambda r: ("pulses" in r.id, r.id[-2:] == "nt"))
    b.notes.append(f"program-and-verify, {n} devices: {total / n:.2f} pulses/device on "
                   f"average, {ok.mean():.1%} within tolerance "
                   f"({policy.tolerance * 1e6:g} uS, budget {policy.max_pulses} pulses)")


def bench_read(b: Bench, tier: str, shape, n_times: int, n_ref_times: int):
    sec = "3. drifted read, 1/f noise (pcm.read_drifted)"
    n = n_of(shape)
    state = programmed_state(shape)
    times, counters = read_times(n_times)
    out = np.empty((n_times, n))
    noise = pcm.JOSHI_2020.read_noise_scale
    ref_idx = np.unique(np.linspace(0, n_times - 1, n_ref_times).round().astype(np.int64))
    ref_out = {}

    def numpy_run(_):
        stat = pcm.JOSHI_2020
        ref_out["g"] = reference.read_drifted(*state, times[ref_idx], counters[ref_idx],
                                              stat.t0, stat.t_read, stat.shifted, noise,
                                              np.uint64(SEED))

    p = f"read.{tier}."
    base = p + "numpy_counter"

    def row(key, label, short, threads, k_times, baseline):
        return Row(id=p + key, section=sec, label=label, short=short, devices=n,
                   work=f"{k_times} times", threads=threads, per_run=n * k_times,
                   unit="device-reads/s", baseline=baseline)

    cases = []
    for t, key in ((1, "1t"), (b.n_threads, "nt")):
        cases.append(Case(read_kernel(state, times, counters, noise, out), [row(
            f"numba_{key}", f"numba, {_thr(t)}", f"numba noisy {t} thr", str(t), n_times,
            base)], threads=t))
    cases.append(Case(numpy_run, [row("numpy_counter", "numpy: reference.read_drifted, same RNG",
                                      "numpy ref", "np", ref_idx.size, base)]))
    for t, key in ((1, "1t"), (b.n_threads, "nt")):
        cases.append(Case(read_kernel(state, times, counters, 0.0, out), [row(
            f"noise_free_{key}", f"numba noise-free, {_thr(t)}", f"noise-free {t} thr", str(t),
            n_times, p + f"numba_{key}")], threads=t))
    b.run_group(f"[3] drifted read, {n} devices", cases)
    read_kernel(state, times, counters, noise, out)(None)
    b.notes.append(f"drifted read, {n} devices: numba vs reference.read_drifted, "
                   f"max |dG|/max G = {max_rel_diff(out[ref_idx], ref_out['g']):.1e}; "
                   f"t_prog spans {state[1].min() * 1e6:.0f}-{state[1].max() * 1e6:.0f} us")


def bench_trace(b: Bench, shape, sizes: Sizes, tmpdir: Path):
    sec = "4. trace writing (TraceWriter, gzip HDF5)"
    n = n_of(shape)
    state = programmed_state(shape)
    times, counters = read_times(sizes.n_times)
    out = np.empty((sizes.n_times, n))
    kernel = read_kernel(state, times, counters, pcm.JOSHI_2020.read_noise_scale, out)
    kernel(None)  # the samples written below are real kernel output
    keys = rng.uniforms(SEED, rng.STREAM_SUBSET, (n,))
    subset = np.sort(np.argsort(keys, kind="stable")[:min(sizes.subset, n)])
    subset_samples = [out[k, subset].copy() for k in range(sizes.n_times)]
    log_t = np.log(times)
    full_at = sorted({int(np.argmin(np.abs(log_t - np.log(t)))) for t in FULL_READ_TIMES})
    full_samples = {k: out[k].reshape(shape).copy() for k in full_at}
    file_number = iter(range(1 << 30))

    def open_writer(with_subset: bool, with_full: bool):
        def setup():
            path = tmpdir / f"bench_trace_{next(file_number)}.h5"
            w = TraceWriter(path)
            if with_subset:
                w.declare_series("conductance_subset", (subset.size,), "f8", "S",
                                 "subset conductance", n=sizes.n_times)
            if with_full:
                w.declare_series("conductance", tuple(shape), "f8", "S",
                                 "full-array conductance", n=len(full_at))
            w.begin()
            return w
        return setup

    def close_writer(w):
        w.finish()
        w.path.unlink()

    def write(with_subset: bool, with_full: bool):
        def run(w):
            for k in range(sizes.n_times):
                if with_subset:
                    w.append("conductance_subset", times[k], subset_samples[k])
                if with_full and k in full_samples:
                    w.append("conductance", times[k], full_samples[k])
            w.flush()  # compresses and writes the chunks; the scenario flushes per batch
        return run

    kernel_row = Row(id="trace.kernel", section=sec,
                     label=f"read_drifted kernel, {_thr(b.n_threads)}", short="read_drifted",
                     devices=n, work=f"{sizes.n_times} times", threads=str(b.n_threads),
                     per_run=n * sizes.n_times, unit="device-reads/s", baseline="trace.kernel",
                     ratio_kind="overhead")
    cases = [Case(kernel, [kernel_row], threads=b.n_threads)]
    sub_bytes = sizes.n_times * subset.size * 8
    full_bytes = len(full_at) * n * 8
    for key, label, ws, wf, nbytes in (
            ("trace.subset", f"append {sizes.n_times} x {subset.size} subset samples",
             True, False, sub_bytes),
            ("trace.full", f"append {len(full_at)} x ({fmt_shape(shape)}) full samples",
             False, True, full_bytes),
            ("trace.run", "both, interleaved as in a drift run", True, True,
             sub_bytes + full_bytes)):
        cases.append(Case(write(ws, wf), [Row(
            id=key, section=sec, label=label, short=key, devices=n,
            work=f"{nbytes / 1e6:.2f} MB", threads="-", per_run=nbytes, unit="B/s",
            baseline=kernel_row.id, ratio_kind="overhead")],
            setup=open_writer(ws, wf), teardown=close_writer))
    b.run_group(f"[4] trace writing, {fmt_shape(shape)} array", cases)
    b.notes.append(f"trace: overhead = append+flush time / time of the read_drifted call "
                   f"({n} devices x {sizes.n_times} times); files in {tmpdir}")


# ----------------------------------------------------------------------------------------
# Output


def _fmt_throughput(r: Row) -> str:
    if r.unit == "B/s":
        return f"{r.throughput / 1e6:9.1f} MB/s"
    return f"{r.throughput / 1e6:9.2f} M {r.unit}"


def _fmt_ratio(r: Row, by_id) -> tuple[str, str]:
    if r.baseline == r.id:
        return "1.00x" if r.ratio_kind == "speed-up" else "100 %", "(baseline)"
    base = by_id[r.baseline].short
    if r.ratio_kind == "overhead":
        return f"{r.ratio:.1f} %", f"of {base}"
    return f"{r.ratio:.2f}x", f"vs {base}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100.0 * x:.0f} %"


def format_table(result: dict) -> str:
    rows = [Row(**r) for r in result["rows"]]
    by_id = {r.id: r for r in rows}
    lines = header_lines(result, "imcsim PCM kernel throughput",
                         f"h5py {result['machine']['h5py']}")
    head = (f"  {'benchmark':<44} {'devices':>8} {'work/run':>16} {'thr':>3} "
            f"{'best ms':>9} {'med/best':>8} {'throughput':>26} {'ratio':>8}  "
            f"{'baseline':<22} {'other CPU':>9}")
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines += ["", section, head]
        ratio, base = _fmt_ratio(r, by_id)
        lines.append(
            f"  {r.label:<44} {r.devices:>8} {r.work:>16} {r.threads:>3} "
            f"{r.best_s * 1e3:>9.2f} {r.median_s / r.best_s:>8.2f} {_fmt_throughput(r):>26} "
            f"{ratio:>8}  {base:<22} {_pct(r.other_cpu):>9}")
    return "\n".join(lines + footer_lines(result, rows))


def header_lines(result: dict, title: str, library: str) -> list[str]:
    """Title, machine and load lines shared by the benchmark tables."""
    m = result["machine"]
    cfg = result["config"]
    return [
        f"{title} ({cfg['mode']} sizes; best of {cfg['repeats']} "
        f"interleaved timed runs after 1 untimed warm-up; ratios measured in this process)",
        f"machine: {m['cpu_model']}, nproc {m['nproc']} (affinity {m['affinity_cpus']}); "
        f"numba {m['numba']} ({m['numba_threading_layer']}, max {m['numba_max_threads']} "
        f"threads, N = {m['numba_threads_used']}); numpy {m['numpy']}; {library}; "
        f"Python {m['python']}",
        f"load average at start {cfg['loadavg_start']}, at end {cfg['loadavg_end']}; "
        f"other processes used {_pct(cfg['other_cpu_total'])} of the CPU during the run",
    ]


def footer_lines(result: dict, rows) -> list[str]:
    """The notes, and a warning where other processes took the CPU during timing."""
    lines = ["", "notes:"] + [f"  {note}" for note in result["notes"]]
    if max((r.other_cpu or 0.0) for r in rows) > 0.1:
        lines.append("  WARNING: other processes used more than 10 % of the CPU while some groups "
                     "ran; those rows (see 'other CPU') are unreliable. Rerun on an idle "
                     "machine.")
    return lines


def run_stats(start, end, loadavg_start: str) -> dict:
    """Wall time (s), load averages and the CPU share of other processes between two
    :func:`load_snapshot` calls: the part of every benchmark's ``config`` that says how
    quiet the machine was."""
    return {"wall_time_s": end[0] - start[0], "loadavg_start": loadavg_start,
            "loadavg_end": _loadavg(),
            "other_cpu_total": other_share(*(e - s for e, s in zip(end, start)))}


def time_ratios(rows) -> None:
    """Set every row's ratio to its best time over its baseline row's."""
    by_id = {r.id: r for r in rows}
    for r in rows:
        r.ratio_kind = "time"
        r.ratio = r.best_s / by_id[r.baseline].best_s


def report(result: dict, table: str, json_path) -> None:
    """Print the table and the total wall time; write ``result`` as JSON when asked."""
    print(table)
    print(f"\n(total wall time {result['config']['wall_time_s']:.1f} s)")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False)
                                   + "\n")


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------
# Main


def parse_args(argv):
    max_threads = numba.config.NUMBA_NUM_THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes (whole script < 30 s); same rows")
    ap.add_argument("--threads", type=int, default=max_threads,
                    help=f"threads of the multi-threaded rows (1..{max_threads}, default all)")
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS,
                    help=f"timed runs per row, the best is reported (>= {MIN_REPEATS})")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.threads <= max_threads:
        ap.error(f"--threads must be between 1 and {max_threads} (NUMBA_NUM_THREADS)")
    if args.repeats < MIN_REPEATS:
        ap.error(f"--repeats must be at least {MIN_REPEATS}")
    return args


def main(argv=None) -> dict:
    """Run every benchmark, print the table, return the results (also as JSON if asked)."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    b = Bench(args.repeats, args.threads, log=log)
    threads_before = numba.get_num_threads()
    loadavg_start = _loadavg()
    start = load_snapshot()
    try:
        with tempfile.TemporaryDirectory(prefix="imcsim_bench_") as tmp:
            for tier, shape, k in (("small", sizes.small, 0), ("large", sizes.large, 1)):
                bench_set_pulses(b, tier, shape, sizes.pulses, sizes.pulses_ref[k])
            bench_program_verify(b, sizes.small)
            for tier, shape, k in (("small", sizes.small, 0), ("large", sizes.large, 1)):
                bench_read(b, tier, shape, sizes.n_times, sizes.ref_times[k])
            bench_trace(b, sizes.small, sizes, Path(tmp))
    finally:
        numba.set_num_threads(threads_before)
    end = load_snapshot()
    b.finalise()
    result = {
        "machine": machine_info(args.threads),
        "config": {
            "mode": "quick" if args.quick else "default",
            "repeats": args.repeats,
            "threads": args.threads,
            "sizes": asdict(sizes),
            **run_stats(start, end, loadavg_start),
        },
        "rows": [asdict(r) for r in b.rows],
        "notes": b.notes,
    }
    report(result, format_table(result), args.json)
    return result


if __name__ == "__main__":
    main()
