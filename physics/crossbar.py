"""Crossbar tiles of differential device pairs: weight mapping and matrix-vector products.

A signed weight w is stored in a pair of devices, W = (G⁺ − G⁻)·w_scale/g_max: w ≥ 0 programs
G⁺ = |w|·g_max/w_scale and leaves G⁻ RESET (target 0 S), w < 0 the reverse. ``weight_scale``
is the |w| that maps to g_max; larger |w| is clipped. Arrays are indexed ``[row, col]`` with
rows the inputs (word lines) and columns the outputs (bit lines), so y = Wᵀ·x per column.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit, prange


def weights_to_conductances(w, weight_scale: float, g_max: float):
    """Targets (G⁺, G⁻) in S for weights ``w``; |w| > weight_scale is clipped."""
    g = np.clip(np.abs(w) / weight_scale, 0.0, 1.0) * g_max
    return np.where(w > 0, g, 0.0), np.where(w < 0, g, 0.0)


def conductances_to_weights(g_plus, g_minus, weight_scale: float, g_max: float):
    """Weights represented by the pairs: (G⁺ − G⁻)·weight_scale/g_max."""
    return (g_plus - g_minus) * (weight_scale / g_max)


_BATCH_BLOCK = 4  # input vectors sharing each weight row load in matmul


@njit(cache=True, parallel=True)
def matmul(x, w, out):
    """out[b, j] = Σ_i x[b, i]·w[i, j] in float64, summed over i in index order.

    Blocks of input vectors share each row of w (register blocking), so the kernel runs
    near BLAS speed for tile sizes, while every output element is summed by one thread in a
    fixed order: the result does not depend on the thread count or the batch size.
    """
    n_rows, n_cols = w.shape
    n_batch = x.shape[0]
    for blk in prange((n_batch + _BATCH_BLOCK - 1) // _BATCH_BLOCK):
        b0 = blk * _BATCH_BLOCK
        m = min(_BATCH_BLOCK, n_batch - b0)
        acc = np.zeros((_BATCH_BLOCK, n_cols))
        for i in range(n_rows):
            for bb in range(m):
                xi = x[b0 + bb, i]
                for j in range(n_cols):
                    acc[bb, j] += w[i, j] * xi
        for bb in range(m):
            for j in range(n_cols):
                out[b0 + bb, j] = acc[bb, j]


_ROW_BLOCK = 8  # rows of xᵀ sharing each row load of e in matmul_tn


@njit(cache=True, parallel=True)
def matmul_tn(x, e, out):
    """out[i, j] = Σ_b x[b, i]·e[b, j] (xᵀ·e), summed over b in index order.

    Blocks of output rows share each row of e; every element is summed by one thread in a
    fixed order, so the result does not depend on the thread count.
    """
    n_batch, n_rows = x.shape
    n_cols = e.shape[1]
    for blk in prange((n_rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        i0 = blk * _ROW_BLOCK
        m = min(_ROW_BLOCK, n_rows - i0)
        acc = np.zeros((_ROW_BLOCK, n_cols))
        for b in range(n_batch):
            for ii in range(m):
                xi = x[b, i0 + ii]
                for j in range(n_cols):
                    acc[ii, j] += xi * e[b, j]
        for ii in range(m):
            for j in range(n_cols):
                out[i0 + ii, j] = acc[ii, j]


def mvm_differential(g_plus, g_minus, x, scale, out):
    """out[b, j] = scale·Σ_i (G⁺[i, j] − G⁻[i, j])·x[b, i] (deterministic, float64).

    With x in volts and ``scale = 1`` it gives column currents in A; with dimensionless x and
    ``scale = weight_scale/g_max``, outputs in weight units.
    """
    matmul(x, (g_plus - g_minus) * scale, out)


@dataclass(frozen=True)
class Periphery:
    """Input DAC and output ADC of a tile (SI units).

    Attributes:
        dac_bits: signed DAC resolution, 2^(b−1) − 1 levels per sign (0: ideal inputs).
        input_range: |x| mapped to the DAC's full scale; larger inputs saturate.
        encoding: "amplitude" (voltage levels) or "pwm" (fixed ±v_read for a time ∝ |x|).
            The cells' I–V is linear here and the wires are resistors, so the network is
            linear and, by superposition, the charge PWM integrates over its time slices
            equals the amplitude-encoded current times the read time, IR drop included: the
            two give identical outputs (tested). They would differ with a nonlinear cell
            I–V, which this model does not have.
        v_read: read voltage of a full-scale input, V.
        adc_bits: signed ADC resolution, 2^(b−1) − 1 codes per sign (0: ideal outputs).
        adc_full_scale: column current at the ADC's largest code, A; larger currents clip.
        r_wire_row, r_wire_col: word- and bit-line resistance per cell pitch, Ω (0: no IR
            drop). G⁺ and G⁻ of a pair sit on adjacent bit lines of one array, so a word
            line carries the current of both (see :mod:`.irdrop` for the circuit).
        ir_drop_solver: "relaxed" (line Gauss–Seidel to ``ir_drop_tolerance`` of full scale,
            a-priori bound) or "exact" (sparse LU of the nodal equations).
    """

    dac_bits: int = 8
    input_range: float = 1.0
    encoding: Literal["amplitude", "pwm"] = "amplitude"
    v_read: float = 0.2
    adc_bits: int = 8
    adc_full_scale: float = 1e-4
    r_wire_row: float = 0.0
    r_wire_col: float = 0.0
    ir_drop_solver: Literal["relaxed", "exact"] = "relaxed"
    ir_drop_tolerance: float = 1e-6

    @property
    def ir_drop(self) -> bool:
        return self.r_wire_row > 0.0 or self.r_wire_col > 0.0


def dac(x, periphery: Periphery):
    """Normalised DAC output x_q ∈ [−1, 1] for inputs ``x`` (the row voltage is v_read·x_q):
    x_q = round(clip(x/input_range, −1, 1)·Q)/Q with Q = 2^(bits−1) − 1."""
    x_n = np.clip(np.asarray(x, dtype=float) / periphery.input_range, -1.0, 1.0)
    if periphery.dac_bits <= 0:
        return x_n
    levels = 2 ** (periphery.dac_bits - 1) - 1
    return np.round(x_n * levels) / levels


def adc(current, periphery: Periphery):
    """Column currents (A) as the ADC reports them: round(I/LSB)·LSB clipped to ±Q·LSB,
    LSB = adc_full_scale/Q, Q = 2^(bits−1) − 1."""
    current = np.asarray(current, dtype=float)
    if periphery.adc_bits <= 0:
        return current
    levels = 2 ** (periphery.adc_bits - 1) - 1
    lsb = periphery.adc_full_scale / levels
    return np.clip(np.round(current / lsb), -levels, levels) * lsb


def _interleave(plus, minus):
    """[G⁺ | G⁻] with the bit lines interleaved (column j's G⁺ line at 2j, G⁻ at 2j + 1)."""
    out = np.empty((plus.shape[0], 2 * plus.shape[1]))
    out[:, 0::2] = plus
    out[:, 1::2] = minus
    return out


def column_currents(g_plus, g_minus, x_q, periphery: Periphery):
    """Differential column currents I⁺ − I⁻ (A) for normalised DAC outputs ``x_q``.

    Without wire resistance I = (G⁺ − G⁻)ᵀ·v_read·x_q. With it, the array [G⁺ | G⁻]
    (interleaved bit lines) is solved as a resistive network (:mod:`.irdrop`) with row
    voltages v_read·x_q. The network is linear, so this is also the time-averaged current of
    PWM inputs (superposition of their time slices).
    """
    if not periphery.ir_drop:
        current = np.empty((x_q.shape[0], g_plus.shape[1]))
        mvm_differential(g_plus, g_minus, periphery.v_read * x_q, 1.0, current)
        return current
    from imcsim.physics import irdrop

    g_lines = _interleave(g_plus, g_minus)
    volts = periphery.v_read * x_q
    if periphery.ir_drop_solver == "exact":
        lines = irdrop.ExactIRDropSolver(g_lines, periphery.r_wire_row,
                                         periphery.r_wire_col).solve(volts)
    else:
        lines = irdrop.RelaxedIRDropSolver(g_lines, periphery.r_wire_row,
                                           periphery.r_wire_col).solve(
            volts, tol=periphery.ir_drop_tolerance)
    return lines[:, 0::2] - lines[:, 1::2]


def column_currents_vjp(g_plus, g_minus, x_q, periphery: Periphery, grad_current):
    """:func:`column_currents` and its vector-Jacobian products, exact with or without wires.

    ``grad_current`` (batch, cols) is ∂L/∂(I⁺ − I⁻) in 1/A. Returns ``(current, grad_g_plus,
    grad_g_minus, grad_x_q)``: the differential currents (A), Σ_batch ∂L/∂G± (rows, cols) in
    1/S and ∂L/∂x_q (batch, rows). Without wire resistance these are the products of the
    ideal array; with it, the resistive array's through its adjoint (the reciprocal read of
    :func:`.irdrop.column_currents_vjp`, solved by the periphery's solver).
    """
    grad_current = np.asarray(grad_current, dtype=float)
    volts = periphery.v_read * x_q
    if not periphery.ir_drop:
        current = np.empty((x_q.shape[0], g_plus.shape[1]))
        mvm_differential(g_plus, g_minus, volts, 1.0, current)
        grad_g = volts.T @ grad_current
        grad_x = periphery.v_read * (grad_current @ (g_plus - g_minus).T)
        return current, grad_g, -grad_g, grad_x
    from imcsim.physics import irdrop

    lines, grad_g, grad_v = irdrop.column_currents_vjp(
        _interleave(g_plus, g_minus), volts, _interleave(grad_current, -grad_current),
        periphery.r_wire_row, periphery.r_wire_col, solver=periphery.ir_drop_solver,
        tol=periphery.ir_drop_tolerance)
    return (lines[:, 0::2] - lines[:, 1::2], grad_g[:, 0::2], grad_g[:, 1::2],
            periphery.v_read * grad_v)


def tile_mvm(g_plus, g_minus, x, periphery: Periphery, weight_scale: float, g_max: float):
    """Outputs of a differential tile for inputs ``x`` (batch, rows), in weight units.

    DAC -> row voltages V = v_read·x_q -> column currents I⁺ − I⁻ (A; with IR drop when the
    periphery has wire resistance) -> ADC -> digital rescale
    y = I_adc·(input_range/v_read)·(weight_scale/g_max). The conductances are whatever the
    device model reads at the MVM time (drift, read noise).
    """
    current = column_currents(g_plus, g_minus, dac(x, periphery), periphery)
    digital = periphery.input_range / periphery.v_read * weight_scale / g_max
    return adc(current, periphery) * digital
