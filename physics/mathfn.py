"""Branch-free elementary functions that let Numba loops vectorise.

Numba lowers ``np.exp`` to a call into the C library, which LLVM cannot turn into SIMD code (no
vector math library is linked), so a loop with an exponential runs one element at a time.
The exponential below is plain arithmetic and a table look-up, so LLVM vectorises loops
over it (AVX2/AVX-512 with gathers), and it gives the same bits in a vector lane as in scalar
code: no fused multiply-adds are formed without ``fastmath``.
"""

import math

import numpy as np
from numba import njit

_INV_LN2 = 1.4426950408889634
# ln 2 split so that n·_LN2_HI is exact for |n| < 2^11 (Cody & Waite reduction).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_POW2 = np.array([math.ldexp(1.0, k) for k in range(-1074, 1024)])
_X_MIN = -744.0  # exp(-744) ≈ 1e-323, the bottom of the subnormals
_X_MAX = 709.0
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = (
    1.0 / math.factorial(k) for k in range(14))


@njit(cache=True, inline="always")
def exp(x):
    """e^x for −744 ≤ x ≤ 709 (saturating outside) without branches, ≤ 1 ulp from libm.

    x = n·ln 2 + r with n = round(x/ln 2), |r| ≤ ln 2 / 2 (Cody–Waite two-part ln 2), e^r by
    its Taylor polynomial to degree 13 (truncation < 2e-17 relative) in Estrin's scheme (short
    dependency chains), and e^x = e^r·2^n from a table of powers of 2.
    """
    x = min(max(x, _X_MIN), _X_MAX)
    n = np.floor(x * _INV_LN2 + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    # e^r = 1 + (r + r²·q(r)): the leading 1 is added last, so the rounding error of the
    # polynomial is scaled by |s| ≤ 0.42 and the result is within about 1 ulp.
    q = ((_C2 + r * _C3) + r2 * (_C4 + r * _C5)
         + r4 * ((_C6 + r * _C7) + r2 * (_C8 + r * _C9))
         + r4 * r4 * ((_C10 + r * _C11) + r2 * (_C12 + r * _C13)))
    return (1.0 + (r + r2 * q)) * _POW2[np.int64(n) + 1074]
