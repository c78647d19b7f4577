"""IR drop (:mod:`imcsim.physics.irdrop`): the exact nodal solve against Kirchhoff's laws and
closed forms, and the line Gauss–Seidel relaxation against the exact solve, a numpy
restatement of its sweeps and its own a-priori error bound.

Realistic arrays: g ~ U(0, 25 µS), v ~ U(0, 0.2 V), 0.5–2.5 Ω per wire segment. Errors of the
relaxation are reported as in the bound (*) of :class:`~imcsim.physics.irdrop.
RelaxedIRDropSolver`, relative to each column's full-scale current ‖v‖∞·Σ_i g[i, j], and as
plain relative errors |Δi_out|/|i_out|. The exact solve itself is good to ~1e-13 relative
(its rounding, not a model error), which is the floor ``FLOOR`` of every comparison.
"""

import functools

import numba
import numpy as np
import pytest
from scipy.linalg import solve_banded

from imcsim.physics.irdrop import (
    ExactIRDropSolver,
    RelaxedIRDropSolver,
    column_currents_approx,
    column_currents_exact,
    column_currents_vjp,
)

G_MAX = 25e-6  # S
V_MAX = 0.2  # V
FLOOR = 1e-12  # rounding of the exact solve, relative to full scale


def realistic(rows, cols, batch, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, G_MAX, (rows, cols)), rng.uniform(0.0, V_MAX, (batch, rows))


def full_scale(g, v):
    """‖v‖∞·Σ_i g[i, j] per batch entry and column (A)."""
    return np.abs(np.atleast_2d(v)).max(axis=1)[:, None] * g.sum(axis=0)[None, :]


@functools.cache
def exact_case(n, r_row, r_col, batch=4, seed=0):
    """(g, v, exact currents) of a realistic n × n array, shared by the tests."""
    g, v = realistic(n, n, batch, seed)
    return g, v, ExactIRDropSolver(g, r_row, r_col).solve(v)


def relax_numpy(g, v, r_row, r_col, sweeps):
    """Line Gauss–Seidel restated with LAPACK banded solves (one row, then one column at a
    time), KCL scaled by r: −x[k−1] + (2 + r·g) x[k] − x[k+1] = r·g·y (+ v next to a driver),
    diagonal 1 + r·g at an open end."""
    rows, cols = g.shape
    a = np.repeat(v[:, None], cols, axis=1).astype(float)
    b = np.zeros((rows, cols))
    for _ in range(sweeps):
        for i in range(rows):
            band = np.zeros((3, cols))
            band[0, 1:], band[2, :-1] = -1.0, -1.0
            band[1] = 2.0 + r_row * g[i]
            band[1, -1] -= 1.0  # open right end
            rhs = r_row * g[i] * b[i]
            rhs[0] += v[i]  # driver left of column 0
            a[i] = solve_banded((1, 1), band, rhs)
        for j in range(cols):
            band = np.zeros((3, rows))
            band[0, 1:], band[2, :-1] = -1.0, -1.0
            band[1] = 2.0 + r_col * g[:, j]
            band[1, 0] -= 1.0  # open top end; the amplifier (0 V) is below row rows − 1
            b[:, j] = solve_banded((1, 1), band, r_col * g[:, j] * a[:, j])
    return (g * (a - b)).sum(axis=0)


# ----------------------------------------------------------------------------------------
# (a) No wire resistance: the ideal product


@pytest.mark.parametrize("signed", [False, True])
def test_zero_resistance_is_ideal(signed):
    g, v = realistic(17, 23, 5, seed=1)
    if signed:
        v = v - V_MAX / 2
    ideal = v @ g
    # rtol 1e-12 per output, plus 1e-12·|v|·g for signed outputs that cancel (sum order).
    tol = 1e-12 * (np.abs(ideal) + np.abs(v) @ g)
    for out in (column_currents_exact(g, v, 0.0, 0.0),
                column_currents_approx(g, v, 0.0, 0.0),
                column_currents_approx(g, v, 0.0, 0.0, sweeps=3),
                RelaxedIRDropSolver(g, 1.0, 1.0).solve(v, sweeps=0)):
        assert out.shape == (5, 23)
        assert np.all(np.abs(out - ideal) <= tol)
    assert column_currents_exact(g, v[2], 0.0, 0.0).shape == (23,)
    assert np.all(np.abs(column_currents_approx(g, v[2], 0.0, 0.0) - ideal[2]) <= tol[2])
    assert np.allclose(ExactIRDropSolver(g, 0.0, 0.0).effective_conductance(), g,
                       rtol=1e-15, atol=0.0)


@pytest.mark.parametrize(("r_row", "r_col"), [(0.0, 2.0), (1.5, 0.0)])
def test_one_kind_of_wire_is_exact_after_one_sweep(r_row, r_col):
    """With r = 0 on one kind of line its nodes are known (v or 0 V): the other half-sweep
    is an exact solve, and the a-priori bound says so."""
    g, v = realistic(40, 30, 3, seed=2)
    exact = column_currents_exact(g, v, r_row, r_col)
    relaxed = RelaxedIRDropSolver(g, r_row, r_col)
    assert relaxed.error_bound(1) == 0.0
    assert relaxed.sweeps_for(1e-9) == 1
    assert np.allclose(relaxed.solve(v, sweeps=1), exact, rtol=1e-12, atol=0.0)
    assert np.all(exact < v @ g)


# ----------------------------------------------------------------------------------------
# (b) Kirchhoff and hand-solvable circuits


def test_kirchhoff_drivers_supply_what_the_amplifiers_take():
    r_row, r_col = 2.5, 1.0
    g, v = realistic(64, 48, 3, seed=3)
    solver = ExactIRDropSolver(g, r_row, r_col)
    i_out = solver.solve(v)
    a, b = solver.node_voltages(v)
    driver = ((v - a[:, :, 0]) / r_row).sum(axis=1)  # A, into the array from every driver
    assert np.allclose(driver, i_out.sum(axis=1), rtol=1e-10, atol=0.0)
    # Each amplifier's current is also the one through the last bit-line segment.
    assert np.allclose(b[:, -1, :] / r_col, i_out, rtol=1e-9, atol=0.0)
    # Maximum principle: every node lies between 0 V and the largest drive.
    assert a.min() >= 0.0 and b.min() >= 0.0 and max(a.max(), b.max()) <= v.max()


def one_by_one(g, v, r_row, r_col):
    """Driver, row segment, cell, column segment, amplifier in series."""
    return np.array([v * g / (1.0 + g * (r_row + r_col))])


def one_by_two(g0, g1, v, r_row, r_col):
    """One row, two cells; h_k = cell k in series with its one column segment."""
    h0, h1 = g0 / (1.0 + g0 * r_col), g1 / (1.0 + g1 * r_col)
    y0 = h0 + h1 / (1.0 + r_row * h1)  # load seen at row node 0
    a0 = v / (1.0 + r_row * y0)
    a1 = a0 / (1.0 + r_row * h1)
    return np.array([h0 * a0, h1 * a1])


def two_by_one(g0, g1, v0, v1, r_row, r_col):
    """Two rows, one column; h_i = row segment in series with cell i. Nodal equations of the
    column nodes solved by Cramer's rule (scaled by r_col²)."""
    h0, h1 = g0 / (1.0 + g0 * r_row), g1 / (1.0 + g1 * r_row)
    num = (1.0 + h0 * r_col) * h1 * v1 + h0 * v0
    return np.array([num / ((1.0 + h0 * r_col) * (2.0 + h1 * r_col) - 1.0)])


HAND_CASES = [  # (g in S, v in V, r_row, r_col in Ω, closed form); r·g from 1e-4 to 1
    (np.array([[20e-6]]), np.array([0.15]), 2.5, 1.0, lambda: one_by_one(20e-6, 0.15, 2.5, 1.0)),
    (np.array([[0.4]]), np.array([1.0]), 1.0, 2.0, lambda: one_by_one(0.4, 1.0, 1.0, 2.0)),
    (np.array([[0.3, 0.7]]), np.array([0.8]), 0.5, 1.5,
     lambda: one_by_two(0.3, 0.7, 0.8, 0.5, 1.5)),
    (np.array([[25e-6, 5e-6]]), np.array([0.2]), 2.5, 2.5,
     lambda: one_by_two(25e-6, 5e-6, 0.2, 2.5, 2.5)),
    (np.array([[0.3], [0.9]]), np.array([0.6, 0.2]), 1.2, 0.7,
     lambda: two_by_one(0.3, 0.9, 0.6, 0.2, 1.2, 0.7)),
    (np.array([[10e-6], [25e-6]]), np.array([0.1, 0.2]), 0.5, 2.5,
     lambda: two_by_one(10e-6, 25e-6, 0.1, 0.2, 0.5, 2.5)),
]


@pytest.mark.parametrize(("g", "v", "r_row", "r_col", "closed_form"), HAND_CASES,
                         ids=["1x1", "1x1-strong", "1x2-strong", "1x2", "2x1-strong", "2x1"])
def test_hand_solvable_circuits(g, v, r_row, r_col, closed_form):
    expected = closed_form()
    assert np.allclose(column_currents_exact(g, v, r_row, r_col), expected, rtol=1e-13, atol=0)
    relaxed = column_currents_approx(g, v, r_row, r_col, tol=1e-16)
    assert np.allclose(relaxed, expected, rtol=1e-13, atol=0.0)
    batched = column_currents_exact(g, np.stack([v, 2.0 * v]), r_row, r_col)
    assert np.allclose(batched, [expected, 2.0 * expected], rtol=1e-13, atol=0.0)


# ----------------------------------------------------------------------------------------
# (c) IR drop only loses current — where physics says it must


def test_uniform_drive_loses_current_in_every_column_and_more_for_larger_r():
    """All drivers at one V: the maximum principle gives 0 ≤ a ≤ V and b ≥ 0, so each
    column carries at most its ideal V·Σ_i g; Rayleigh's monotonicity law (all drivers form
    one terminal) makes the total fall whenever any wire resistance grows. Scaling r_row
    and r_col together, or r_row alone, also lowers every column (observed in thousands of
    random arrays; not proved, and false for r_col alone, see the next test)."""
    g, _ = realistic(48, 40, 1, seed=4)
    g[g < 0.2 * G_MAX] = 0.0  # some empty cells
    v = np.full(48, V_MAX)
    ideal = v @ g
    previous = ideal
    for r in (0.5, 1.0, 1.5, 2.5, 5.0):
        i_out = column_currents_exact(g, v, r, 0.6 * r)
        assert np.all(i_out > 0.0) and np.all(i_out < ideal)
        assert np.all(i_out < previous) and i_out.sum() < previous.sum()
        assert np.all(column_currents_exact(g, v, 1.3 * r, 0.6 * r) < i_out)
        assert column_currents_exact(g, v, r, 0.8 * r).sum() < i_out.sum()
        previous = i_out


def test_nonnegative_drive_loses_total_current():
    """v ≥ 0: with driver i at 1 V and the others at 0 V, the amplifiers take at most what
    driver i supplies, which Rayleigh bounds by its r = 0 value Σ_j g[i, j]; superposition
    gives Σ_j i_out ≤ Σ_j (gᵀv)_j."""
    for seed, (r_row, r_col) in enumerate([(0.5, 0.5), (2.5, 1.0), (1.0, 2.5)]):
        g, v = realistic(64, 64, 4, seed=10 + seed)
        v[:, ::3] = 0.0
        i_out = column_currents_exact(g, v, r_row, r_col)
        assert np.all(i_out.sum(axis=1) < (v @ g).sum(axis=1))
        assert np.all(i_out > 0.0)


def test_where_ir_drop_does_not_reduce_every_current():
    """Three small circuits where a current grows: the limits of the statements above."""
    # Sneak path: column 0's only powered cell is empty, yet current reaches its amplifier
    # through cell (0, 1), column 1, cell (1, 1), row 1 and cell (1, 0).
    g = np.array([[0.0, G_MAX], [G_MAX, G_MAX]])
    v = np.array([V_MAX, 0.0])
    assert (v @ g)[0] == 0.0 and column_currents_exact(g, v, 2.5, 2.5)[0] > 0.0
    assert ExactIRDropSolver(g, 2.5, 2.5).effective_conductance()[0, 0] > 0.0
    # Raising r_col alone: the heavy column draws less, the row drops less, and the light
    # column's cell sees more voltage (closed form of the 1 × 2 array).
    g = np.array([[1.0, 0.01]])
    low, high = one_by_two(1.0, 0.01, 1.0, 1.0, 1.0), one_by_two(1.0, 0.01, 1.0, 1.0, 2.0)
    assert high[1] > low[1]
    assert np.allclose(column_currents_exact(g, np.array([1.0]), 1.0, 2.0), high, rtol=1e-13)
    # Non-uniform drive, raising r_row: row 1 at 0 V sinks less of column current.
    low = two_by_one(0.01, 0.8, 0.5, 0.0, 0.2, 0.2)
    high = two_by_one(0.01, 0.8, 0.5, 0.0, 0.3, 0.2)
    assert high[0] > low[0]
    g = np.array([[0.01], [0.8]])
    assert np.allclose(column_currents_exact(g, np.array([0.5, 0.0]), 0.3, 0.2), high,
                       rtol=1e-13)


# ----------------------------------------------------------------------------------------
# (d) The relaxation against the exact solve and its bound


@pytest.mark.parametrize(("n", "r_row", "r_col"),
                         [(64, 0.5, 0.5), (64, 2.5, 2.5), (256, 0.5, 0.5), (256, 2.5, 2.5),
                          (256, 0.5, 2.5)])
def test_relaxation_error_within_its_bound(n, r_row, r_col):
    g, v, exact = exact_case(n, r_row, r_col)
    relaxed = RelaxedIRDropSolver(g, r_row, r_col)
    scale = full_scale(g, v)
    errors = []
    for k in range(1, 17):
        approx = relaxed.solve(v, sweeps=k)
        err = np.abs(approx - exact)
        errors.append((err / scale).max())
        # The a-priori bound (*), per column, for every K (plus the exact solve's rounding).
        assert np.all(err <= (relaxed.error_bound(k) + FLOOR) * scale)
    errors = np.array(errors)
    above_floor = errors > 10 * FLOOR
    assert np.all(np.diff(errors[above_floor]) < 0)  # each sweep helps until rounding
    assert errors[0] > 1e-6  # the IR drop is not negligible at K = 1 in any of these cases
    # Chosen from the bound for 1e-4 of full scale: every column within 1e-3 relative.
    k = relaxed.sweeps_for(1e-4)
    rel = np.abs(relaxed.solve(v, sweeps=k) / exact - 1.0).max()
    assert rel < 1e-3
    assert np.array_equal(relaxed.solve(v, tol=1e-4), relaxed.solve(v, sweeps=k))
    # Converged by default (tol = 1e-6 of full scale).
    assert np.all(np.abs(relaxed.solve(v) - exact) <= (1e-6 + FLOOR) * scale)


def test_relaxation_is_its_equations():
    """The kernel's sweeps equal the numpy restatement after each sweep, to rounding."""
    g, v = realistic(12, 9, 3, seed=5)
    g *= 1e3  # r·g ≈ 0.01–0.06: far from converged after one sweep
    for k in (1, 2, 3):
        approx = column_currents_approx(g, v, 1.0, 2.0, sweeps=k)
        for n in range(3):
            assert np.allclose(approx[n], relax_numpy(g, v[n], 1.0, 2.0, k), rtol=1e-12,
                               atol=0.0)


def test_contraction_factors_are_line_ir_drops():
    """q_r = worst far-end drop of a row driven at 1 V into grounded columns (exact solve
    with r_col = 0); q_c = worst top voltage of a column whose row nodes are held at 1 V
    (r_row = 0); both below the undepleted-current estimate r·g_max·N(N + 1)/2."""
    g, _ = realistic(30, 50, 1, seed=6)
    r_row, r_col = 2.0, 1.5
    relaxed = RelaxedIRDropSolver(g, r_row, r_col)
    ones = np.ones(30)
    a, _ = ExactIRDropSolver(g, r_row, 0.0).node_voltages(ones)
    _, b = ExactIRDropSolver(g, 0.0, r_col).node_voltages(ones)
    assert np.isclose(relaxed.q_row, (1.0 - a).max(), rtol=1e-10)
    assert np.isclose(relaxed.q_col, b.max(), rtol=1e-10)
    assert relaxed.q_row < r_row * g.max() * 50 * 51 / 2
    assert relaxed.q_col < r_col * g.max() * 30 * 31 / 2
    assert relaxed.rho == relaxed.q_row * relaxed.q_col < 1.0


# ----------------------------------------------------------------------------------------
# (e) Determinism


def test_relaxation_thread_independent(restore_threads):
    g, v = realistic(64, 64, 8, seed=7)
    out = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        out[threads] = column_currents_approx(g, v, 2.5, 2.5, sweeps=5)
    assert np.array_equal(out[1], out[2])


def test_relaxation_batch_independent():
    g, v = realistic(33, 20, 5, seed=8)
    relaxed = RelaxedIRDropSolver(g, 1.0, 2.0)
    batch = relaxed.solve(v, sweeps=4)
    for n in range(5):
        assert np.array_equal(relaxed.solve(v[n], sweeps=4), batch[n])


# ----------------------------------------------------------------------------------------
# (f) Scaling with r·g·N²


def test_ir_drop_to_first_order():
    """Uniform g, v: 1 − i_out[j]/i_ideal[j] ≈ r_row·g·[(j + 1)N − j(j + 1)/2]
    + r_col·g·(M + 1)(2M + 1)/6 (undepleted line currents), with an error of second order:
    halving both r halves the relative deviation."""
    rows, cols, g0 = 32, 48, 10e-6
    g, v = np.full((rows, cols), g0), np.full(rows, 0.1)
    j = np.arange(cols)
    deviation = []
    for r_row, r_col in ((0.3, 0.2), (0.15, 0.1)):
        drop = 1.0 - column_currents_exact(g, v, r_row, r_col) / (v @ g)
        first = r_row * g0 * ((j + 1) * cols - j * (j + 1) / 2) + r_col * g0 * (
            (rows + 1) * (2 * rows + 1) / 6)
        deviation.append(np.abs(drop / first - 1.0).max())
    assert deviation[0] < 0.3 * g0 * cols * cols  # O(r·g·N²) relative to the drop
    assert 0.45 < deviation[1] / deviation[0] < 0.55


def test_currents_depend_on_r_times_g_only():
    """KCL scaled by r involves only r·g: doubling r is doubling g, at half the current.
    Multiplying by 2 is exact in binary, so the relaxation agrees bitwise."""
    g, v = realistic(24, 31, 3, seed=9)
    assert np.array_equal(column_currents_approx(2 * g, v, 1.0, 0.5, sweeps=3),
                          2 * column_currents_approx(g, v, 2.0, 1.0, sweeps=3))
    assert np.allclose(column_currents_exact(2 * g, v, 1.0, 0.5),
                       2 * column_currents_exact(g, v, 2.0, 1.0), rtol=1e-12, atol=0.0)


def test_relaxation_error_grows_with_rgn2():
    """After K sweeps the error is ∝ ρ^K·q ~ (r·g·N²)^(2K) while r·g·N² ≪ 1: doubling r
    multiplies the one-sweep error by ≈ 4, the two-sweep error by ≈ 16, and doubling N
    multiplies the one-sweep error by ≈ 2⁴."""
    def err(n, r, k, seed=11):
        g, v = realistic(n, n, 4, seed)
        exact = column_currents_exact(g, v, r, r)
        return (np.abs(column_currents_approx(g, v, r, r, sweeps=k) - exact)
                / full_scale(g, v)).max()

    for k, exponent in ((1, 2.0), (2, 4.0)):
        e = [err(16, r, k) for r in (0.25, 0.5, 1.0)]
        slopes = np.log2(np.array(e[1:]) / e[:-1])
        assert np.all(np.abs(slopes - exponent) < 0.1 * exponent)
    e = [err(n, 0.5, 1) for n in (16, 32, 64)]
    assert np.all(np.diff(e) > 0)
    ratios = np.array(e[1:]) / e[:-1]
    assert np.all((ratios > 10.0) & (ratios < 20.0))


# ----------------------------------------------------------------------------------------
# (g) Gradients: the adjoint (reciprocal) read


def central_differences(f, x, h):
    """∂f/∂x by central differences of step h, entry by entry (shape of x)."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        out[idx] = (f(up) - f(down)) / (2 * h)
    return out


@pytest.mark.parametrize("solver", ["exact", "relaxed"])
@pytest.mark.parametrize(("r_row", "r_col"),
                         [(2.5, 1.0), (0.0, 800.0), (800.0, 0.0), (800.0, 800.0)])
def test_vjp_matches_central_differences_of_the_exact_solve(solver, r_row, r_col):
    """Σ_batch ∂L/∂g and ∂L/∂v for L = Σ ḡ·i_out (signed weights ḡ) on a non-square array
    against central differences of the exact solve; 800 Ω per segment puts r·g·N² of this
    7 × 5 array near 0.5, where the wires change the currents by tens of per cent. Steps
    of 1e-11 S and 1e-6 V are linear to ~1e-9 here (i_out is a rational function of g), so
    rtol 1e-6 is the test's rounding, not a tolerance for a model error. The relaxed solver
    runs to 1e-12."""
    g, v = realistic(7, 5, 3, seed=21)
    weights = np.random.default_rng(22).standard_normal((3, 5))

    def loss(g_, v_):
        return float(np.sum(weights * column_currents_exact(g_, v_, r_row, r_col)))

    i_out, grad_g, grad_v = column_currents_vjp(g, v, weights, r_row, r_col, solver=solver,
                                                tol=1e-12)
    np.testing.assert_allclose(i_out, column_currents_exact(g, v, r_row, r_col),
                               rtol=1e-10, atol=FLOOR * full_scale(g, v).max())
    fd_g = central_differences(lambda g_: loss(g_, v), g, 1e-11)
    fd_v = central_differences(lambda v_: loss(g, v_), v, 1e-6)
    np.testing.assert_allclose(grad_g, fd_g, rtol=1e-6, atol=1e-8 * np.abs(fd_g).max())
    np.testing.assert_allclose(grad_v, fd_v, rtol=1e-6, atol=1e-8 * np.abs(fd_v).max())
    if r_row == 800.0 and r_col == 800.0:  # the wires matter: the ideal gradient is far off
        assert np.abs(grad_g - v.T @ weights).max() > 0.1 * np.abs(fd_g).max()


@pytest.mark.parametrize("solver", ["exact", "relaxed"])
def test_vjp_without_wires_is_the_ideal_products(solver):
    g, v = realistic(6, 9, 4, seed=23)
    weights = np.random.default_rng(24).standard_normal((4, 9))
    i_out, grad_g, grad_v = column_currents_vjp(g, v, weights, 0.0, 0.0, solver=solver)
    np.testing.assert_allclose(i_out, v @ g, rtol=1e-14)
    np.testing.assert_allclose(grad_g, v.T @ weights, rtol=1e-14)
    np.testing.assert_allclose(grad_v, weights @ g.T, rtol=1e-14)


def test_vjp_in_the_inputs_is_the_effective_conductance():
    """i_out = G_effᵀ v is linear in v, so ∂i_out[j]/∂v = G_eff[:, j]: the reciprocal read
    driven at column j alone gives column j of G_eff (reciprocity), for every j."""
    g, v = realistic(12, 8, 1, seed=25)
    solver = ExactIRDropSolver(g, 2.5, 6.0)
    g_eff = solver.effective_conductance()
    for j in range(g.shape[1]):
        unit = np.zeros((1, g.shape[1]))
        unit[0, j] = 1.0
        _, _, grad_v = column_currents_vjp(g, v, unit, 2.5, 6.0)
        np.testing.assert_allclose(grad_v[0], g_eff[:, j], rtol=1e-10)


def test_vjp_thread_and_batch_independent(restore_threads):
    g, v = realistic(48, 40, 6, seed=26)
    weights = np.random.default_rng(27).standard_normal((6, 40))
    out = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        out[threads] = column_currents_vjp(g, v, weights, 2.5, 2.5, solver="relaxed")
    for a, b in zip(out[1], out[2]):
        assert np.array_equal(a, b)
    _, _, grad_v = out[1]
    for n in range(6):
        assert np.array_equal(
            column_currents_vjp(g, v[n], weights[n], 2.5, 2.5, solver="relaxed")[2], grad_v[n])


def test_vjp_bad_inputs_raise():
    g, v = realistic(4, 3, 2, seed=28)
    with pytest.raises(ValueError, match="grad_out"):
        column_currents_vjp(g, v, np.ones((2, 4)), 1.0, 1.0)
    with pytest.raises(ValueError, match="grad_out"):
        column_currents_vjp(g, v, np.full((2, 3), np.nan), 1.0, 1.0)
    with pytest.raises(ValueError, match="solver"):
        column_currents_vjp(g, v, np.ones((2, 3)), 1.0, 1.0, solver="spice")


# ----------------------------------------------------------------------------------------
# API


def test_effective_conductance_reproduces_solve():
    g, v = realistic(16, 24, 6, seed=12)
    solver = ExactIRDropSolver(g, 2.5, 1.0)
    g_eff = solver.effective_conductance()
    assert g_eff.shape == g.shape and np.all(g_eff > 0.0) and np.all(g_eff < g.sum())
    assert np.allclose(v @ g_eff, solver.solve(v), rtol=1e-10, atol=0.0)


@pytest.mark.parametrize(("g", "v", "r_row", "r_col"), [
    (np.full((2, 3), -1e-6), np.zeros(2), 1.0, 1.0),
    (np.full((2, 3), np.nan), np.zeros(2), 1.0, 1.0),
    (np.ones(3), np.zeros(3), 1.0, 1.0),
    (np.ones((2, 3)), np.zeros(3), 1.0, 1.0),
    (np.ones((2, 3)), np.zeros((4, 2, 2)), 1.0, 1.0),
    (np.ones((2, 3)), np.array([0.1, np.inf]), 1.0, 1.0),
    (np.ones((2, 3)), np.zeros(2), -1.0, 1.0),
    (np.ones((2, 3)), np.zeros(2), 1.0, float("nan")),
])
def test_bad_inputs_raise(g, v, r_row, r_col):
    for solve in (column_currents_exact, column_currents_approx):
        with pytest.raises(ValueError):
            solve(g, v, r_row, r_col)
