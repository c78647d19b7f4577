"""Slow, vectorised numpy twins of the Numba kernels, for tests and benchmarks only.

Each function restates the equations of its kernel in array form (see :mod:`.rng` and
:mod:`.pcm` for the physics and sources) and draws the same counter-based random numbers, so
tests can demand agreement to rounding, and benchmarks measure the kernels against numpy
doing the same work. ``set_pulses_numpy_generator`` is the baseline at its fastest: the same
pulse model with numpy's own ziggurat normals instead of the counter-based ones.
"""

import math

import numpy as np

from imcsim.physics import rng

_U64 = np.uint64
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
    return z ^ (z >> _U64(31))


def stream_key(seed, stream):
    with np.errstate(over="ignore"):
        return mix64(mix64(_U64(seed) + _U64(0x9E3779B97F4A7C15))
                     ^ (_U64(stream) * _U64(0xDB4F0B9175AE2165)))


def index_origin(key, index):
    with np.errstate(over="ignore"):
        return mix64(key ^ mix64(np.asarray(index, dtype=np.uint64)
                                 + _U64(0xD1B54A32D192ED03)))


def origin_uniform(origin, counter):
    with np.errstate(over="ignore"):
        bits = mix64(origin + (np.asarray(counter, dtype=np.uint64) + _U64(1))
                     * _U64(0x9E3779B97F4A7C15))
    return _uniform(bits)


def _uniform(bits):
    return ((np.asarray(bits, dtype=np.uint64) >> _U64(12)).astype(np.float64) + 0.5) * 2.0**-52


def _retry_word(bits, j):
    with np.errstate(over="ignore"):
        return mix64(_U64(bits) + _U64(j) * _U64(0xC2B2AE3D27D4EB4F))


def _ziggurat_slow(bits, i, u):
    """Scalar restatement of rng._ziggurat_slow (math.log/exp: the C library's, as Numba's)."""
    x_tab, f_tab, ratio, r = rng._ZIG_X, rng._ZIG_F, rng._ZIG_RATIO, rng._ZIG_R
    j = 1
    while True:
        if i == 0:
            while True:
                u1 = float(_uniform(_retry_word(bits, j)))
                u2 = float(_uniform(_retry_word(bits, j + 1)))
                j += 2
                x = -math.log(u1) / r
                if -2.0 * math.log(u2) > x * x:
                    return r + x if u > 0.0 else -r - x
        x = u * x_tab[i]
        u2 = float(_uniform(_retry_word(bits, j)))
        j += 1
        if f_tab[i] + u2 * (f_tab[i + 1] - f_tab[i]) < math.exp(-0.5 * x * x):
            return x
        w = _retry_word(bits, j)
        j += 1
        i = int(w & _U64(255))
        u = 2.0 * float(_uniform(w)) - 1.0
        if abs(u) < ratio[i]:
            return u * x_tab[i]


def ziggurat_normal(bits):
    """Vectorised rng.ziggurat_normal: the fast path in numpy, the rare rest one by one."""
    bits = np.asarray(bits, dtype=np.uint64)
    layer = (bits & _U64(255)).astype(np.int64)
    u = 2.0 * _uniform(bits) - 1.0
    out = u * rng._ZIG_X[layer]
    for k in np.flatnonzero(~(np.abs(u) < rng._ZIG_RATIO[layer])):
        out.flat[k] = _ziggurat_slow(bits.flat[k], int(layer.flat[k]), float(u.flat[k]))
    return out


def origin_normal(origin, counter):
    with np.errstate(over="ignore"):
        bits = mix64(origin + (np.asarray(counter, dtype=np.uint64) + _U64(1))
                     * _U64(0x9E3779B97F4A7C15))
    return ziggurat_normal(bits)


def normals(seed, stream, n, counter=0):
    return origin_normal(index_origin(stream_key(seed, stream), np.arange(n)), counter)


def set_pulses(g, amplitude, n_pulses, dg0_d, g_sat_d, sigma_c2c, seed, counter0):
    """numpy version of :func:`pcm.apply_set_pulses` (returns the new conductances, S)."""
    origin = index_origin(stream_key(seed, rng.STREAM_SET), np.arange(g.size))
    g = g.copy()
    for k in range(n_pulses):
        xi = origin_normal(origin, counter0 + k)
        g = np.maximum(g + amplitude * dg0_d * ((1.0 - g / g_sat_d) + sigma_c2c * xi), 0.0)
    return g


def set_pulses_numpy_generator(g, amplitude, n_pulses, dg0_d, g_sat_d, sigma_c2c, generator):
    """The same pulse model with numpy's fastest normals; in-place updates, no copies."""
    step = amplitude * dg0_d
    decay = step / g_sat_d
    noise_step = sigma_c2c * step
    xi = np.empty_like(g)
    for _ in range(n_pulses):
        generator.standard_normal(out=xi)
        xi *= noise_step
        xi += step
        g -= decay * g
        g += xi
        np.maximum(g, 0.0, out=g)
    return g


def programming_noise_std(g_target, g_max, coeff, coeff_g_ref):
    g_r = g_target / g_max
    poly = sum(c * g_r**k for k, c in enumerate(coeff))
    return np.maximum(poly, 0.0) * g_max / coeff_g_ref


def drift_mean_std_joshi(g_r):
    ln_g = np.log(np.maximum(g_r, 1e-7))
    return (np.clip(-0.0155 * ln_g + 0.0244, 0.049, 0.1),
            np.clip(-0.0125 * ln_g - 0.0059, 0.008, 0.045))


def read_noise_qs_joshi(g_r):
    return np.minimum(0.0088 / np.maximum(g_r**0.65, 1e-3), 0.2)


def read_drifted(g_prog, t_prog, nu, q_s, times, counters, t0, t_read, shifted,
                 read_noise_scale, seed):
    """numpy version of :func:`pcm.read_drifted`: array (len(times), n_devices) in S."""
    origin = index_origin(stream_key(seed, rng.STREAM_READ), np.arange(g_prog.size))
    out = np.empty((len(times), g_prog.size))
    for k, (t, c) in enumerate(zip(times, counters)):
        tau = t - t_prog
        tau_eff = tau + t0 if shifted else np.maximum(tau, t0)
        with np.errstate(invalid="ignore"):  # τ_eff < 0 before programming: masked below
            g = g_prog * (tau_eff / t0) ** (-nu)
        tau_noise = tau + t0 if shifted else tau
        arg = (tau_noise + t_read) / (2 * t_read)
        growth = np.sqrt(np.log(np.maximum(arg, 1.0)))
        g = g + g * q_s * read_noise_scale * growth * origin_normal(origin, c)
        out[k] = np.where(tau > 0, np.maximum(g, 0.0), g_prog)
    return out
