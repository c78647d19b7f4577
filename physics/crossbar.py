"""Crossbar tiles of differential device pairs: weight mapping and matrix-vector products.

A signed weight w is stored in a pair of devices, W = (G⁺ − G⁻)·w_scale/g_max: w ≥ 0 programs
G⁺ = |w|·g_max/w_scale and leaves G⁻ RESET (target 0 S), w < 0 the reverse. ``weight_scale``
is the |w| that maps to g_max; larger |w| is clipped. Arrays are indexed ``[row, col]`` with
rows the inputs (word lines) and columns the outputs (bit lines), so y = Wᵀ·x per column.
"""

import numpy as np
from numba import njit, prange


def weights_to_conductances(w, weight_scale: float, g_max: float):
    """Targets (G⁺, G⁻) in S for weights ``w``; |w| > weight_scale is clipped."""
    g = np.clip(np.abs(w) / weight_scale, 0.0, 1.0) * g_max
    return np.where(w > 0, g, 0.0), np.where(w < 0, g, 0.0)


def conductances_to_weights(g_plus, g_minus, weight_scale: float, g_max: float):
    """Weights represented by the pairs: (G⁺ − G⁻)·weight_scale/g_max."""
    return (g_plus - g_minus) * (weight_scale / g_max)


@njit(cache=True, parallel=True)
def mvm_differential(g_plus, g_minus, x, scale, out):
    """out[b, j] = scale·Σ_i (G⁺[i, j] − G⁻[i, j])·x[b, i], accumulated in float64.

    Each output row is summed by one thread in a fixed order over i, so the result does not
    depend on the thread count. With ``scale = weight_scale/g_max`` it is in weight units.
    """
    n_rows, n_cols = g_plus.shape
    for b in prange(x.shape[0]):
        acc = np.zeros(n_cols)
        for i in range(n_rows):
            xi = x[b, i]
            if xi == 0.0:
                continue
            for j in range(n_cols):
                acc[j] += (g_plus[i, j] - g_minus[i, j]) * xi
        for j in range(n_cols):
            out[b, j] = acc[j] * scale
