"""Throughput of an imcsim crossbar tile: MVM, periphery, IR drop and programming, each row a
ratio against a baseline measured in this process.

Run as a script (its folder must be on ``sys.path``, which running it as a script does: the
timing helpers are imported from ``bench_pcm.py`` next to it)::

    python benchmarks/bench_tile.py [--quick] [--threads N] [--repeats R] [--json FILE]

Sections (see benchmarks/README.md for the columns):

1. ideal tile MVM, noise- and quantisation-free: ``crossbar.matmul(x, w, out)`` against numpy
   ``x @ w`` (BLAS at its best: ``np.matmul`` into a preallocated output, BLAS limited to the
   same thread count with threadpoolctl), 1 and N threads, in GMAC/s and as the ratio kernel
   time / numpy time (the project's goal is within 3x); the same for ``crossbar.matmul_tn``
   against ``x.T @ e``. Shapes are batch x rows x cols;
2. the full tile MVM with 8-bit DAC and ADC, ``crossbar.tile_mvm``, against the ideal
   ``crossbar.matmul`` of the same shape (N threads), with its parts (DAC, the G+ - G-
   difference that every call forms, ADC) as % of the ideal product;
3. IR drop of a 256 x 256 array (r = 2.5 Ohm per segment on rows and columns, g ~ U(0, 25 uS),
   v ~ U(0, 0.2 V)): ``irdrop.ExactIRDropSolver`` (sparse LU factorisation once, then one
   solve of a batch of 64 vectors) against ``irdrop.RelaxedIRDropSolver`` (set-up and
   the sweeps its ``sweeps_for(1e-4)`` picks), 1 and N threads, in vectors/s;
4. programming a 256 x 256 and a 1024 x 1024 tile to weights U[-1, 1]: GDP
   (``scenarios.programming.program_gdp``; 60 iterations of batch 1024 at 256 x 256; at
   1024 x 1024 batch 2048 and 10 timed iterations, the 60-iteration total extrapolated)
   against differential program-and-verify (``pcm.program_verify_pairs``, 40-pulse budget),
   as seconds per tile and per iteration.

Methodology: that of ``bench_pcm.py`` (same ``Bench``: one untimed warm-up run per row, then
``--repeats`` interleaved timed rounds of each group, best run reported, garbage collector
off, "other CPU" from /proc/stat). Nothing here asserts on wall time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass

import numba
import numpy as np
from bench_pcm import (
    MIN_REPEATS,
    SEED,
    Bench,
    Case,
    Row,
    _loadavg,
    _pct,
    _thr,
    fmt_shape,
    footer_lines,
    header_lines,
    load_snapshot,
    machine_info,
    report,
    run_stats,
)
from threadpoolctl import threadpool_info, threadpool_limits

from imcsim.physics import crossbar, irdrop, pcm, rng
from imcsim.scenarios.programming import GDPPolicy, TileState, program_gdp

GOAL_RATIO = 3.0  # matmul kernels: the project's goal is a time within 3x of numpy's
GDP_ITERATIONS = 60  # iterations of a full GDP programming (the extrapolation target)
MIN_LOAD_WALL_S = 0.25  # s, shorter groups report "other CPU" as n/a
SETTLE_BLAS_S = 0.15  # s, untimed sleep after OpenBLAS calls (its workers spin ~0.1 s)
SETTLE_OMP_S = 0.01  # s, untimed sleep after Numba's OpenMP calls (they spin a few ms)
PRIME_S = 0.002  # s, least time of the untimed priming calls after a settle
IR_R = 2.5  # Ohm per wire segment, rows and columns
IR_G_MAX = 25e-6  # S, g ~ U(0, IR_G_MAX)
IR_V_MAX = 0.2  # V, v ~ U(0, IR_V_MAX)
IR_TOL = 1e-4  # relaxation: error bound relative to full scale
VERIFY_BUDGET = 40  # pulses per device of program-and-verify (RESETs included)
PYTORCH_150_S = 43 * 60.0  # issue note: a PyTorch-based simulator, 150 x 150, ~43 min
MVM_TIERS = ("small", "batch", "large")

SEC_MVM = "1. ideal tile MVM, float64 (crossbar.matmul, matmul_tn) vs numpy BLAS"
SEC_PERIPHERY = "2. tile MVM with 8-bit DAC and ADC (crossbar.tile_mvm) vs ideal matmul"
SEC_IR = "3. IR drop (irdrop.ExactIRDropSolver vs RelaxedIRDropSolver)"
SEC_PROG = "4. programming a tile: GDP (program_gdp) vs program-and-verify (pairs)"


@dataclass(frozen=True)
class Prog:
    """One programming size: a square tile of ``rows`` x ``rows`` weights (2·rows² devices),
    GDP with ``batch`` inputs per iteration, ``iterations`` of them timed."""

    rows: int
    batch: int
    iterations: int


@dataclass(frozen=True)
class Sizes:
    mvm: tuple[tuple[int, int, int], ...]  # (batch, rows, cols) of the tiers MVM_TIERS
    ir_shape: tuple[int, int]  # (rows, cols)
    ir_batch: int
    prog: tuple[Prog, Prog]  # tiers "small", "large"


DEFAULT = Sizes(mvm=((64, 256, 256), (1024, 256, 256), (256, 1024, 1024)),
                ir_shape=(256, 256), ir_batch=64,
                prog=(Prog(256, 1024, GDP_ITERATIONS), Prog(1024, 2048, 10)))
QUICK = Sizes(mvm=((16, 64, 64), (256, 64, 64), (64, 256, 256)),
              ir_shape=(128, 128), ir_batch=16,
              prog=(Prog(64, 256, 20), Prog(128, 512, 5)))


@dataclass
class TileRow(Row):
    """A row of this benchmark: ``shape`` is shown in the table; ``extrapolate`` multiplies
    the run time to the time of the whole task (GDP timed on fewer iterations than it runs);
    ratio_kind "time" is time x extrapolate over the baseline's (a slowdown, lower is better).
    ``devices``: the simulated array's devices (2 per weight; IR drop: its cells)."""

    shape: str = ""
    extrapolate: float = 1.0


class TileBench(Bench):
    """``Bench`` that leaves "other CPU" unknown (n/a) for groups too short to measure it:
    /proc/stat counts in clock ticks (10 ms), so a group of a few ms reads 0 or 100 %."""

    def run_group(self, name: str, cases: list[Case]):
        first = len(self.rows)
        t0 = time.perf_counter()
        super().run_group(name, cases)
        if time.perf_counter() - t0 < MIN_LOAD_WALL_S:
            for r in self.rows[first:]:
                r.other_cpu = None


def finalise(b: Bench):
    """Ratios of every row; the "time" kind (not known to Bench) as a time ratio."""
    b.finalise()
    by_id = {r.id: r for r in b.rows}
    for r in b.rows:
        if r.ratio_kind == "time":
            base = by_id[r.baseline]
            r.ratio = (r.best_s * r.extrapolate) / (base.best_s * base.extrapolate)


def settled(prime, delay: float, blas: int | None = None):
    """Case set-up (untimed): limit BLAS to ``blas`` threads if given, sleep ``delay`` s so
    the worker threads of the other library (OpenBLAS spin-waits ~0.1 s after a call, GNU
    OpenMP a few ms) stop competing for the cores, then call ``prime()`` at least twice and
    for at least PRIME_S so this library's own pool (and an idle virtual CPU) is awake.
    Returns the BLAS limiter for :func:`restore_blas`."""
    def setup():
        limiter = None if blas is None else threadpool_limits(limits=blas, user_api="blas")
        if delay > 0.0:
            time.sleep(delay)
        t0 = time.perf_counter()
        calls = 0
        while calls < 2 or time.perf_counter() - t0 < PRIME_S:
            prime()
            calls += 1
        return limiter

    return setup


def restore_blas(limiter):
    if limiter is not None:
        limiter.restore_original_limits()


def aligned_copy(a, offset: int = 0, align: int = 64) -> np.ndarray:
    """C-ordered copy of ``a`` whose data starts ``offset`` bytes past an ``align``-byte
    boundary (numpy itself guarantees 16 bytes only, so large arrays land on either side of a
    32-byte boundary depending on the allocator)."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + align + offset, dtype=np.uint8)
    start = (-buf.ctypes.data) % align + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def blas_info() -> str:
    libs = [f"{i['internal_api']} {i['version']} ({i.get('architecture', '?')}, "
            f"{i['num_threads']} threads)" for i in threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(libs) or "none found"


def uniform_weights(rows: int, cols: int, counter: int = 0) -> np.ndarray:
    """Weights U[-1, 1] (counter-based, as the scenarios' random targets)."""
    return 2.0 * rng.uniforms(SEED, rng.STREAM_TARGET, (rows, cols), counter=counter) - 1.0


def periphery_for(rows: int) -> crossbar.Periphery:
    """8-bit DAC and ADC; ADC full scale 1e-4 A at 256 rows (about 4 sigma of a column
    current for uniform weights and inputs), scaled with sqrt(rows)."""
    return crossbar.Periphery(dac_bits=8, adc_bits=8, adc_full_scale=1e-4 * math.sqrt(rows / 256))


# ----------------------------------------------------------------------------------------
# 1. Ideal MVM


def _mvm_group(b: Bench, tier: str, shape, op: str, kernel_name: str, numpy_expr: str,
               kernel, numpy_op, out_shape, kernel_off, streamed: str):
    """One group: ``numpy_op(out)`` with BLAS at 1 and N threads, ``kernel(out)`` at 1 and N
    Numba threads, each kernel row a time ratio against numpy at its thread count, and
    ``kernel_off(out)`` (the ``streamed`` operand 16 bytes off a 32-byte boundary) at N."""
    batch, rows, cols = shape
    macs = batch * rows * cols
    p = f"{op}.{tier}."
    out_k, out_n = aligned_copy(np.empty(out_shape)), aligned_copy(np.empty(out_shape))

    def row(key, label, short, threads, baseline):
        return TileRow(id=p + key, section=SEC_MVM, label=label, short=short,
                       devices=2 * rows * cols, work=f"{macs / 1e6:.1f} M MAC", threads=threads,
                       per_run=macs, unit="MAC/s", baseline=baseline, ratio_kind="time",
                       shape=fmt_shape(shape))

    def run_numpy(_):
        numpy_op(out_n)

    def run_kernel(_):
        kernel(out_k)

    # Round order: numba N, numba 1, numpy 1, numpy N threads. A round switches library
    # twice; the first row after each switch waits (untimed) for the other library's
    # spinning threads to sleep, so each library is timed at its best.
    threads = ((b.n_threads, "nt"), (1, "1t"))
    cases = [Case(run_kernel, [row(f"numba_{key}", f"{kernel_name}, {_thr(t)}",
                                   f"{kernel_name} {t} thr", str(t), p + f"numpy_{key}")],
                  threads=t,
                  setup=settled(lambda: kernel(out_k), SETTLE_BLAS_S if i == 0 else 0.0))
             for i, (t, key) in enumerate(threads)]
    cases.insert(1, Case(lambda _: kernel_off(out_k), [row(
        "numba_nt_off16", f"{kernel_name}, {_thr(b.n_threads)}, {streamed} +16 B",
        f"{kernel_name} off16", str(b.n_threads), p + "numpy_nt")], threads=b.n_threads,
        setup=settled(lambda: kernel_off(out_k), 0.0)))
    cases += [Case(run_numpy, [row(f"numpy_{key}", f"numpy {numpy_expr} (BLAS), {_thr(t)}",
                                   f"numpy {t} thr", str(t), p + f"numpy_{key}")],
                   setup=settled(lambda: numpy_op(out_n), SETTLE_OMP_S if i == 0 else 0.0,
                                 blas=t),
                   teardown=restore_blas)
              for i, (t, key) in enumerate(threads[::-1])]
    b.run_group(f"[1] {kernel_name}, {fmt_shape(shape)}", cases)
    b.rows[-5:] = sorted(b.rows[-5:], key=lambda r: ("numba" in r.id, "off16" in r.id,
                                                     r.id.endswith("nt")))
    scale = float(np.max(np.abs(out_n))) or 1.0
    b.notes.append(f"{kernel_name} {fmt_shape(shape)}: max |kernel - numpy| / max |numpy| "
                   f"= {float(np.max(np.abs(out_k - out_n))) / scale:.1e}")


def bench_mvm(b: Bench, tier: str, shape):
    batch, rows, cols = shape
    gen = np.random.default_rng(SEED)
    # Operands 64-byte aligned, so that the timings do not depend on where the allocator
    # puts them; the "+16 B" rows move the kernel's streamed operand off that alignment.
    x = aligned_copy(gen.uniform(-1.0, 1.0, (batch, rows)))
    w = aligned_copy(gen.uniform(-1.0, 1.0, (rows, cols)))
    e = aligned_copy(gen.standard_normal((batch, cols)))
    w_off, e_off = aligned_copy(w, offset=16), aligned_copy(e, offset=16)
    _mvm_group(b, tier, shape, "mvm", "crossbar.matmul", "x @ w",
               lambda out: crossbar.matmul(x, w, out), lambda out: np.matmul(x, w, out=out),
               (batch, cols), lambda out: crossbar.matmul(x, w_off, out), "w")
    _mvm_group(b, tier, shape, "mvm_tn", "crossbar.matmul_tn", "x.T @ e",
               lambda out: crossbar.matmul_tn(x, e, out),
               lambda out: np.matmul(x.T, e, out=out), (rows, cols),
               lambda out: crossbar.matmul_tn(x, e_off, out), "e")


# ----------------------------------------------------------------------------------------
# 2. Periphery


def bench_periphery(b: Bench, tier: str, shape):
    batch, rows, cols = shape
    gen = np.random.default_rng(SEED + 1)
    w = aligned_copy(uniform_weights(rows, cols))
    stat = pcm.JOSHI_2020
    g_plus, g_minus = map(aligned_copy, crossbar.weights_to_conductances(w, 1.0, stat.g_max))
    x = aligned_copy(gen.uniform(-1.0, 1.0, (batch, rows)))
    periphery = periphery_for(rows)
    out = aligned_copy(np.empty((batch, cols)))
    currents = aligned_copy(periphery.v_read * (x @ (g_plus - g_minus)))
    macs = batch * rows * cols
    p = f"periph.{tier}."
    base = p + "ideal"
    nt = b.n_threads

    def row(key, label, short, per_run, unit, kind):
        return TileRow(id=p + key, section=SEC_PERIPHERY, label=label, short=short,
                       devices=2 * rows * cols, work=f"{macs / 1e6:.1f} M MAC", threads=str(nt),
                       per_run=per_run, unit=unit, baseline=base, ratio_kind=kind,
                       shape=fmt_shape(shape))

    def ideal(_):
        crossbar.matmul(x, w, out)

    def full(_):
        crossbar.tile_mvm(g_plus, g_minus, x, periphery, 1.0, stat.g_max)

    cases = [
        Case(ideal, [row("ideal", f"ideal crossbar.matmul, {_thr(nt)}", "ideal matmul", macs,
                         "MAC/s", "time")], threads=nt),
        Case(full, [row("tile_mvm", "tile_mvm, 8-bit DAC + ADC", "tile_mvm", macs,
                        "MAC/s", "time")], threads=nt),
        Case(lambda _: crossbar.dac(x, periphery), [row(
            "dac", "  part: crossbar.dac (numpy)", "dac", x.size, "values/s", "overhead")]),
        Case(lambda _: np.subtract(g_plus, g_minus), [row(
            "diff", "  part: G+ - G- (numpy, every call)", "G+ - G-", g_plus.size, "values/s",
            "overhead")]),
        Case(lambda _: crossbar.adc(currents, periphery), [row(
            "adc", "  part: crossbar.adc (numpy)", "adc", currents.size, "values/s",
            "overhead")]),
    ]
    b.run_group(f"[2] tile_mvm, {fmt_shape(shape)}", cases)
    if tier == MVM_TIERS[0]:
        b.notes.append(f"tile_mvm: {periphery.dac_bits}-bit DAC, {periphery.adc_bits}-bit ADC "
                       f"(full scale 1e-4 A x sqrt(rows/256)), no wire resistance; parts as % "
                       f"of the ideal matmul time (the rest: scaling, temporaries)")


# ----------------------------------------------------------------------------------------
# 3. IR drop


def bench_ir_drop(b: Bench, shape, batch: int):
    rows, cols = shape
    gen = np.random.default_rng(SEED + 2)
    g = gen.uniform(0.0, IR_G_MAX, (rows, cols))
    v = gen.uniform(0.0, IR_V_MAX, (batch, rows))
    relaxed = irdrop.RelaxedIRDropSolver(g, IR_R, IR_R)
    sweeps = relaxed.sweeps_for(IR_TOL)
    exact = irdrop.ExactIRDropSolver(g, IR_R, IR_R)
    results = {}

    def run_exact(_):
        results["exact"] = irdrop.ExactIRDropSolver(g, IR_R, IR_R).solve(v)

    def run_exact_solve(_):
        exact.solve(v)

    def run_relaxed(_):
        results["relaxed"] = irdrop.RelaxedIRDropSolver(g, IR_R, IR_R).solve(v, tol=IR_TOL)

    p = "ir."
    base = p + "exact"
    work = f"{batch} vectors"

    def row(key, label, short, threads):
        return TileRow(id=p + key, section=SEC_IR, label=label, short=short,
                       devices=rows * cols, work=work, threads=threads, per_run=batch,
                       unit="vectors/s", baseline=base, shape=fmt_shape(shape))

    cases = [
        Case(run_exact, [row("exact", "exact: splu factorisation + solve", "exact", "sp")]),
        Case(run_exact_solve, [row("exact_solve", "exact: solve only (factorised once)",
                                   "exact solve", "sp")]),
    ]
    for t, key in ((1, "1t"), (b.n_threads, "nt")):
        cases.append(Case(run_relaxed, [row(
            f"relaxed_{key}", f"relaxed, K = {sweeps} sweeps, {_thr(t)}",
            f"relaxed {t} thr", str(t))], threads=t))
    b.run_group(f"[3] IR drop, {fmt_shape(shape)}", cases)
    full_scale = np.max(v, axis=1, keepdims=True) * g.sum(axis=0)[None, :]
    err = float(np.max(np.abs(results["relaxed"] - results["exact"]) / full_scale))
    drop = float(np.max(1.0 - results["exact"] / (v @ g)))
    b.notes.append(f"IR drop {fmt_shape(shape)}, r = {IR_R} Ohm, g ~ U(0, {IR_G_MAX * 1e6:g} uS), "
                   f"v ~ U(0, {IR_V_MAX} V): q_r = {relaxed.q_row:.3f}, q_c = "
                   f"{relaxed.q_col:.3f}, rho = {relaxed.rho:.3f}; sweeps_for({IR_TOL:g}) = "
                   f"{sweeps} (bound {relaxed.error_bound(sweeps):.1e}); measured max "
                   f"|relaxed - exact| / full scale = {err:.1e}; largest column-current loss "
                   f"vs ideal {drop:.1%}")


# ----------------------------------------------------------------------------------------
# 4. Programming


def bench_programming(b: Bench, tier: str, prog: Prog, summary: dict):
    rows = prog.rows
    n = rows * rows
    pulse, stat = pcm.PulseModel(), pcm.JOSHI_2020
    verify = pcm.VerifyPolicy(max_pulses=VERIFY_BUDGET)
    w = uniform_weights(rows, rows, counter=1)
    params = pcm.draw_device_params(SEED, 2 * n, pulse)
    periphery = periphery_for(rows)
    policy = GDPPolicy(iterations=prog.iterations, batch=prog.batch)
    nt = b.n_threads

    state = TileState(np.empty(2 * n), np.zeros(2 * n), np.zeros(2 * n), np.zeros(2 * n), params)
    gdp_pulses = np.zeros(2 * n, dtype=np.int64)
    gdp_out = {}

    def run_gdp(_):
        gdp_out["trace"] = program_gdp(state, w, pulse=pulse, stat=stat, periphery=periphery,
                                       weight_scale=1.0, policy=policy, seed=SEED, counter0=1,
                                       t_start=0.0, pulses_out=gdp_pulses)

    gp, gm = crossbar.weights_to_conductances(w, 1.0, stat.g_max)
    target = (gp - gm).ravel()
    g_verify = np.empty(2 * n)
    pv_pulses = np.zeros(2 * n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)

    def run_verify(_):
        pcm.program_verify_pairs(target, g_verify, params.dg0, params.g_sat, params.g_reset,
                                 pulse.dg0, pulse.g_sat, pulse.sigma_c2c, pulse.sigma_reset,
                                 verify.tolerance, verify.max_pulses, verify.read_noise,
                                 verify.read_resolution, verify.step_fraction, verify.s_min,
                                 np.uint64(SEED), np.uint64(0), pv_pulses, ok)

    # Every run draws the same numbers, so every run does this work: count it once.
    run_verify(None)
    # A verify iteration reads a pair and pulses one of its devices, so a pair's iterations
    # are its pulses after the two initial RESETs, plus the final read (a rare re-RESET of
    # both devices counts as two).
    verify_steps = float(pv_pulses.reshape(2, n).sum(axis=0).mean()) - 1.0
    p = f"prog.{tier}."
    base = p + "verify"
    extrapolate = GDP_ITERATIONS / prog.iterations
    shape = f"{rows}x{rows}"
    cases = [
        Case(run_verify, [TileRow(
            id=base, section=SEC_PROG,
            label=f"program-and-verify pairs, {VERIFY_BUDGET}-pulse budget",
            short="verify", devices=2 * n, work=f"{verify_steps:.2f} it/pair", threads=str(nt),
            per_run=verify_steps, unit="iterations/s", baseline=base, ratio_kind="time",
            shape=shape)], threads=nt),
        Case(run_gdp, [TileRow(
            id=p + "gdp", section=SEC_PROG,
            label=(f"GDP, {prog.iterations} iterations" if extrapolate == 1.0 else
                   f"GDP, {prog.iterations} of {GDP_ITERATIONS} it. (total x{extrapolate:g})"),
            short="GDP", devices=2 * n, work=f"{prog.iterations} it x {prog.batch}",
            threads=str(nt), per_run=prog.iterations, unit="iterations/s", baseline=base,
            ratio_kind="time", shape=shape, extrapolate=extrapolate)], threads=nt),
    ]
    b.run_group(f"[4] programming, {shape}", cases)
    gdp_row, verify_row = b.rows[-1], b.rows[-2]
    trace = gdp_out["trace"]
    w_gdp = crossbar.conductances_to_weights(state.g[:n], state.g[n:], 1.0, stat.g_max)
    w_pv = crossbar.conductances_to_weights(g_verify[:n], g_verify[n:], 1.0, stat.g_max)
    norm = np.linalg.norm(w)
    summary[tier] = {
        "shape": shape,
        "gdp_batch": prog.batch,
        "gdp_iterations_timed": prog.iterations,
        "gdp_s_per_iteration": gdp_row.best_s / prog.iterations,
        "gdp_s_per_tile": gdp_row.best_s * extrapolate,
        "gdp_extrapolated": extrapolate != 1.0,
        "verify_s_per_tile": verify_row.best_s,
        "verify_s_per_iteration": verify_row.best_s / verify_steps,
    }
    b.notes.append(
        f"programming {shape}: GDP after {prog.iterations} iterations (batch {prog.batch}, "
        f"8-bit DAC/ADC): MVM error {trace.mvm_error[-1]:.1%}, weight error "
        f"{np.linalg.norm(w_gdp - w.ravel()) / norm:.1%}, {gdp_pulses.mean():.1f} pulses/device; "
        f"verify: weight error {np.linalg.norm(w_pv - w.ravel()) / norm:.1%}, "
        f"{pv_pulses.mean():.2f} pulses/device, {ok.mean():.2%} pairs within "
        f"{verify.tolerance * 1e6:g} uS")


# ----------------------------------------------------------------------------------------
# Output


def _fmt_rate(r: TileRow) -> str:
    if r.unit == "MAC/s":
        return f"{r.throughput / 1e9:8.2f} GMAC/s"
    if r.unit == "values/s":
        return f"{r.throughput / 1e6:8.1f} M val/s"
    if r.unit == "vectors/s":
        return f"{r.throughput:8.1f} vec/s"
    if r.unit == "iterations/s":
        return f"{1e3 / r.throughput:8.2f} ms/it"
    return f"{r.throughput:.3g} {r.unit}"


def _fmt_ratio(r: TileRow, by_id) -> tuple[str, str]:
    if r.baseline == r.id:
        return ("100 %" if r.ratio_kind == "overhead" else "1.00x"), "(baseline)"
    base = by_id[r.baseline].short
    if r.ratio_kind == "overhead":
        return f"{r.ratio:.1f} %", f"of {base}"
    if r.ratio_kind == "time":
        return f"{r.ratio:.2f}x", f"time / {base}"
    return f"{r.ratio:.2f}x", f"speed-up vs {base}"


def summary_lines(result: dict) -> list[str]:
    rows = {r["id"]: r for r in result["rows"]}
    lines = ["summary:"]
    for op, name, expr in (("mvm", "crossbar.matmul", "x @ w"),
                           ("mvm_tn", "crossbar.matmul_tn", "x.T @ e")):
        parts = []
        for tier, shape in zip(MVM_TIERS, result["config"]["sizes"]["mvm"]):
            for key in ("1t", "nt"):
                r = rows[f"{op}.{tier}.numba_{key}"]
                parts.append(f"{fmt_shape(shape)} {r['threads']} thr {r['ratio']:.2f}x")
        met = sum(rows[f"{op}.{t}.numba_{k}"]["ratio"] <= GOAL_RATIO
                  for t in MVM_TIERS for k in ("1t", "nt"))
        off = [f"{rows[f'{op}.{t}.numba_nt_off16']['ratio']:.2f}x" for t in MVM_TIERS]
        lines.append(f"  {name} time / numpy {expr} (goal <= {GOAL_RATIO:g}x, met {met} of "
                     f"{len(parts)}): " + ", ".join(parts)
                     + f"; {result['config']['threads']} thr with the streamed operand +16 B: "
                     + ", ".join(off))
    prog = result["programming"]
    for tier in ("small", "large"):
        s = prog[tier]
        total = (f"{s['gdp_s_per_tile']:.1f} s per tile"
                 + (f" (extrapolated from {s['gdp_iterations_timed']} timed iterations)"
                    if s["gdp_extrapolated"] else ""))
        lines.append(f"  programming {s['shape']}: GDP ({GDP_ITERATIONS} iterations, batch "
                     f"{s['gdp_batch']}) {total}, {s['gdp_s_per_iteration'] * 1e3:.1f} ms per "
                     f"iteration; program-and-verify {s['verify_s_per_tile']:.3f} s per tile, "
                     f"{s['verify_s_per_iteration'] * 1e3:.2f} ms per iteration")
    s = prog["small"]
    lines.append(f"  for scale: a PyTorch-based simulator is reported (issue note) to need "
                 f"~{PYTORCH_150_S / 60:.0f} min ({PYTORCH_150_S:.0f} s) for iterative "
                 f"programming of a 150x150 tile; imcsim GDP of a {s['shape']} tile "
                 f"({GDP_ITERATIONS} iterations, batch {s['gdp_batch']}): "
                 f"{s['gdp_s_per_tile']:.2f} s in total"
                 + (" (extrapolated)" if s["gdp_extrapolated"] else ""))
    return lines


def format_table(result: dict) -> str:
    rows = [TileRow(**r) for r in result["rows"]]
    by_id = {r.id: r for r in rows}
    lines = header_lines(result, "imcsim crossbar tile throughput",
                         f"BLAS {result['machine']['blas']}")
    head = (f"  {'benchmark':<46} {'shape':>14} {'work/run':>16} {'thr':>3} {'best ms':>10} "
            f"{'med/best':>8} {'throughput':>16} {'ratio':>8}  {'baseline':<30} "
            f"{'other CPU':>9}")
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines += ["", section, head]
        ratio, base = _fmt_ratio(r, by_id)
        lines.append(
            f"  {r.label:<46} {r.shape:>14} {r.work:>16} {r.threads:>3} "
            f"{r.best_s * 1e3:>10.2f} {r.median_s / r.best_s:>8.2f} {_fmt_rate(r):>16} "
            f"{ratio:>8}  {base:<30} {_pct(r.other_cpu):>9}")
    lines += [*footer_lines(result, rows), "", *summary_lines(result)]
    return "\n".join(lines)


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
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
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

    b = TileBench(args.repeats, args.threads, log=log)
    programming = {}
    threads_before = numba.get_num_threads()
    loadavg_start = _loadavg()
    blas = blas_info()
    start = load_snapshot()
    try:
        for tier, shape in zip(MVM_TIERS, sizes.mvm):
            bench_mvm(b, tier, shape)
        for tier, shape in zip(MVM_TIERS, sizes.mvm):
            bench_periphery(b, tier, shape)
        bench_ir_drop(b, sizes.ir_shape, sizes.ir_batch)
        for tier, prog in zip(("small", "large"), sizes.prog):
            bench_programming(b, tier, prog, programming)
    finally:
        numba.set_num_threads(threads_before)
    end = load_snapshot()
    finalise(b)
    result = {
        "machine": {**machine_info(args.threads), "blas": blas},
        "config": {
            "mode": "quick" if args.quick else "default",
            "repeats": args.repeats,
            "threads": args.threads,
            "sizes": asdict(sizes),
            **run_stats(start, end, loadavg_start),
        },
        "rows": [asdict(r) for r in b.rows],
        "programming": programming,
        "notes": b.notes,
    }
    report(result, format_table(result), args.json)
    return result


if __name__ == "__main__":
    main()
