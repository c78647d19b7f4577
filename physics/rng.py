"""Counter-based random numbers for Numba kernels.

Every draw is a pure function of ``(seed, stream, index, counter)``: no generator state is
carried between draws, so a kernel gives the same numbers whatever the thread count, the order
in which ``prange`` visits devices, or how a run is cut into batches.

Construction (SplitMix64 used as a keyed hash, after Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014):

    key    = mix(mix(seed + γ) ^ (stream · C_s))          per (seed, stream)
    origin = mix(key ^ mix(index + γ_i))                  per device (hoisted out of pulse loops)
    bits   = mix(origin + (counter + 1) · γ)               the draw

``mix`` is the SplitMix64 finaliser (a bijection of 64-bit words with full avalanche);
``origin + k·γ`` is exactly the SplitMix64 state sequence, so each (seed, stream, index)
triple owns a SplitMix64 stream whose position is ``counter``. Different triples start at
independent pseudo-random positions of the 2^64-long Weyl sequence; the chance that two of
them overlap within 2^40 draws is below 2^-24 even for 2^20 devices.

Uniforms take the top 52 bits, offset by half a unit: ``u = (bits >> 12 + 0.5)·2^-52`` is
exact in float64 (53 significant bits) and lies strictly inside (0, 1), from 2^-53 to
1 − 2^-53. Normals come from the 256-layer ziggurat of Marsaglia & Tsang (J. Stat.
Softw. 5(8), 2000), in the form of Doornik (2005): the low 8 bits of a counter's word pick the
layer and its top 52 bits the abscissa, so about 99 % of normals cost one hash, one table
look-up and one compare. The rare wedge and tail cases draw further words
``mix(bits + j·γ_retry)``, j = 1, 2, …, so a normal is still a pure function of its counter,
and one counter gives exactly one normal. (``inverse_normal_cdf`` (AS 241) is kept for
quantile maps.)

A slow numpy twin of every function lives in :mod:`imcsim.physics.reference` and is tested
to give the same numbers.
"""

import numpy as np
from numba import njit, prange

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_GAMMA_INDEX = np.uint64(0xD1B54A32D192ED03)
_STREAM_MULT = np.uint64(0xDB4F0B9175AE2165)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S12 = np.uint64(12)
_ONE = np.uint64(1)
_TWO_M52 = 1.0 / 4503599627370496.0
_GAMMA_RETRY = np.uint64(0xC2B2AE3D27D4EB4F)
_LAYER_MASK = np.uint64(255)


def _ziggurat_tables(n_layers=256, r=3.654152885361009, area=0.004928673233974658):
    """Layer edges x_i (x_0 = area/f(r) is the base strip's equivalent width, x_1 = r,
    x_n = 0), f(x_i) and x_{i+1}/x_i for f(x) = exp(−x²/2). r and the common layer area are
    the 256-layer solution (area = r·f(r) + ∫_r^∞ f)."""
    x = np.empty(n_layers + 1)
    x[0] = area / np.exp(-0.5 * r * r)
    x[1] = r
    for i in range(1, n_layers - 1):
        x[i + 1] = np.sqrt(-2.0 * np.log(area / x[i] + np.exp(-0.5 * x[i] * x[i])))
    x[n_layers] = 0.0
    return x, np.exp(-0.5 * x * x), x[1:] / x[:-1]


_ZIG_X, _ZIG_F, _ZIG_RATIO = _ziggurat_tables()
_ZIG_R = 3.654152885361009

# Named streams: one per physical source of randomness, so adding a draw to one effect
# never shifts the numbers of another.
STREAM_D2D = 1  # device-to-device parameters, drawn once per device
STREAM_RESET = 2  # amorphous-state conductance after a RESET pulse
STREAM_SET = 3  # cycle-to-cycle noise of partial-SET increments
STREAM_VERIFY = 4  # read noise of the verify reads inside program-and-verify
STREAM_PROG = 5  # programming noise of the statistical (Joshi) model
STREAM_NU = 6  # drift exponent drawn at each programming event
STREAM_READ = 7  # 1/f read noise of drifted reads
STREAM_INPUT = 8  # random MVM input vectors
STREAM_TARGET = 9  # random target weights
STREAM_SUBSET = 10  # choice of the recorded device subset


@njit(cache=True, inline="always")
def mix64(z):
    """SplitMix64 finaliser: a bijective avalanche of a uint64."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def stream_key(seed, stream):
    """Key of one (seed, stream) pair; compute once per kernel call."""
    return mix64(mix64(np.uint64(seed) + _GAMMA) ^ (np.uint64(stream) * _STREAM_MULT))


@njit(cache=True, inline="always")
def index_origin(key, index):
    """Start of the SplitMix64 sequence owned by one index (device) under ``key``."""
    return mix64(key ^ mix64(np.uint64(index) + _GAMMA_INDEX))


@njit(cache=True, inline="always")
def origin_bits(origin, counter):
    """64 random bits at position ``counter`` of the sequence starting at ``origin``."""
    return mix64(origin + (np.uint64(counter) + _ONE) * _GAMMA)


@njit(cache=True, inline="always")
def bits_to_uniform(bits):
    """Map 64 bits to a float64 strictly inside (0, 1)."""
    return (np.float64(bits >> _S12) + 0.5) * _TWO_M52


@njit(cache=True, inline="always")
def inverse_normal_cdf(p):
    """Φ^-1(p) for 0 < p < 1 by Wichura's AS 241 (PPND16), |relative error| < 1e-15."""
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        num = (((((((2509.0809287301226727 * r + 33430.575583588128105) * r
                    + 67265.770927008700853) * r + 45921.953931549871457) * r
                  + 13731.693765509461125) * r + 1971.5909503065514427) * r
                + 133.14166789178437745) * r + 3.387132872796366608)
        den = (((((((5226.495278852545925 * r + 28729.085735721942674) * r
                    + 39307.89580009271061) * r + 21213.794301586595867) * r
                  + 5394.1960214247511077) * r + 687.1870074920579083) * r
                + 42.313330701600911252) * r + 1.0)
        return q * num / den
    r = p if q < 0.0 else 1.0 - p
    r = np.sqrt(-np.log(r))
    if r <= 5.0:
        r -= 1.6
        num = (((((((7.7454501427834140764e-4 * r + 0.0227238449892691845833) * r
                    + 0.24178072517745061177) * r + 1.27045825245236838258) * r
                  + 3.64784832476320460504) * r + 5.7694972214606914055) * r
                + 4.6303378461565452959) * r + 1.42343711074968357734)
        den = (((((((1.05075007164441684324e-9 * r + 5.475938084995344946e-4) * r
                    + 0.0151986665636164571966) * r + 0.14810397642748007459) * r
                  + 0.68976733498510000455) * r + 1.6763848301838038494) * r
                + 2.05319162663775882187) * r + 1.0)
    else:
        r -= 5.0
        num = (((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r
                    + 0.0012426609473880784386) * r + 0.026532189526576123093) * r
                  + 0.29656057182850489123) * r + 1.7848265399172913358) * r
                + 5.4637849111641143699) * r + 6.6579046435011037772)
        den = (((((((2.04426310338993978564e-15 * r + 1.4215117583164458887e-7) * r
                    + 1.8463183175100546818e-5) * r + 7.868691311456132591e-4) * r
                  + 0.0148753612908506148525) * r + 0.13692988092273580531) * r
                + 0.59983220655588793769) * r + 1.0)
    z = num / den
    return -z if q < 0.0 else z


@njit(cache=True)
def _ziggurat_slow(bits, i, u):
    """Wedge and tail cases of the ziggurat (about 1 % of draws)."""
    j = np.uint64(1)
    while True:
        if i == 0:
            # Marsaglia's tail: x = −ln(U1)/r, y = −ln(U2), accept when 2y > x².
            while True:
                u1 = bits_to_uniform(mix64(bits + j * _GAMMA_RETRY))
                u2 = bits_to_uniform(mix64(bits + (j + _ONE) * _GAMMA_RETRY))
                j += np.uint64(2)
                x = -np.log(u1) / _ZIG_R
                if -2.0 * np.log(u2) > x * x:
                    return _ZIG_R + x if u > 0.0 else -_ZIG_R - x
        x = u * _ZIG_X[i]
        u2 = bits_to_uniform(mix64(bits + j * _GAMMA_RETRY))
        j += _ONE
        if _ZIG_F[i] + u2 * (_ZIG_F[i + 1] - _ZIG_F[i]) < np.exp(-0.5 * x * x):
            return x
        w = mix64(bits + j * _GAMMA_RETRY)
        j += _ONE
        i = np.int64(w & _LAYER_MASK)
        u = 2.0 * bits_to_uniform(w) - 1.0
        if abs(u) < _ZIG_RATIO[i]:
            return u * _ZIG_X[i]


@njit(cache=True, inline="always")
def ziggurat_fast_path(bits):
    """(value, accepted) of the ziggurat's fast path for one 64-bit word.

    Branch-free, so loops over it vectorise; where ``accepted`` is False (about 1 % of
    words) the draw is ``ziggurat_normal(bits)``, which then takes the slow path.
    """
    i = np.int64(bits & _LAYER_MASK)
    u = 2.0 * bits_to_uniform(bits) - 1.0
    return u * _ZIG_X[i], abs(u) < _ZIG_RATIO[i]


@njit(cache=True, inline="always")
def ziggurat_normal(bits):
    """N(0, 1) from one 64-bit word (and, rarely, words derived from it)."""
    z, accepted = ziggurat_fast_path(bits)
    if accepted:
        return z
    return _ziggurat_slow(bits, np.int64(bits & _LAYER_MASK), 2.0 * bits_to_uniform(bits) - 1.0)


@njit(cache=True, inline="always")
def origin_normal(origin, counter):
    """Standard-normal draw at position ``counter`` of one index's sequence."""
    return ziggurat_normal(origin_bits(origin, counter))


@njit(cache=True, inline="always")
def origin_uniform(origin, counter):
    """Uniform (0, 1) draw at position ``counter`` of one index's sequence."""
    return bits_to_uniform(origin_bits(origin, counter))


@njit(cache=True)
def uniform(seed, stream, index, counter):
    """U(0, 1) as a pure function of (seed, stream, index, counter)."""
    return origin_uniform(index_origin(stream_key(seed, stream), index), counter)


@njit(cache=True)
def normal(seed, stream, index, counter):
    """N(0, 1) as a pure function of (seed, stream, index, counter)."""
    return origin_normal(index_origin(stream_key(seed, stream), index), counter)


@njit(cache=True, parallel=True)
def fill_normal(seed, stream, index_start, counter, out):
    """Fill ``out.ravel()`` with N(0,1) draws for indices ``index_start + k`` at one counter."""
    flat = out.reshape(-1)
    key = stream_key(seed, stream)
    for k in prange(flat.size):
        flat[k] = origin_normal(index_origin(key, index_start + k), counter)


@njit(cache=True, parallel=True)
def fill_uniform(seed, stream, index_start, counter, out):
    """Fill ``out.ravel()`` with U(0,1) draws for indices ``index_start + k`` at one counter."""
    flat = out.reshape(-1)
    key = stream_key(seed, stream)
    for k in prange(flat.size):
        flat[k] = origin_uniform(index_origin(key, index_start + k), counter)


def normals(seed, stream, shape, counter=0, index_start=0):
    """Array of N(0,1) draws, element k using index ``index_start + k`` (C order)."""
    out = np.empty(shape, dtype=np.float64)
    fill_normal(np.uint64(seed), np.uint64(stream), np.uint64(index_start), np.uint64(counter),
                out)
    return out


def uniforms(seed, stream, shape, counter=0, index_start=0):
    """Array of U(0,1) draws, element k using index ``index_start + k`` (C order)."""
    out = np.empty(shape, dtype=np.float64)
    fill_uniform(np.uint64(seed), np.uint64(stream), np.uint64(index_start),
                 np.uint64(counter), out)
    return out

