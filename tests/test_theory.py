"""Tests for slt_jax.theory: worked examples from the papers and independent derivations."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

from slt_jax import theory
from slt_jax._src.theory import _aoyagi_subset
from slt_jax.theory import (
    dln_learning_coefficient,
    monomial_learning_coefficient,
    normal_crossing_learning_coefficient,
    quadratic_oracle_llc,
    quadratic_oracle_stationary_variance,
    regular_learning_coefficient,
    rrr_learning_coefficient,
)

# (M, H, N, r) over a grid of small sizes: the strongest cross-check (RRR <-> DLN).
RRR_GRID = [
    (m, h, n, r)
    for m, h, n in itertools.product(range(1, 8), repeat=3)
    for r in range(min(m, h, n) + 1)
]


def test_docstring_examples():
    from slt_jax._src import theory as implementation

    result = doctest.testmod(implementation, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 9
    assert result.failed == 0


def test_public_names():
    assert set(theory.__all__) == {
        "regular_learning_coefficient",
        "monomial_learning_coefficient",
        "normal_crossing_learning_coefficient",
        "quadratic_oracle_llc",
        "quadratic_oracle_stationary_variance",
        "quadratic_selection_bias",
        "rrr_learning_coefficient",
        "dln_learning_coefficient",
    }


def test_selection_bias_limits():
    """Long epochs against the relaxation time: the reshuffled bias tends to nβ·d/n (S = H,
    γ → 0), i.e. 2λ/log n at nβ = n/log n; replaying an epoch adds the same-batch term; an
    independent minibatch has none."""
    n, d, b = 10**5, 4, 10
    nbeta = n / np.log(n)
    known = dict(nbeta=nbeta, localization=1e-6, step_size=1e-5, num_examples=n, batch_size=b)
    eye = np.eye(d)
    reshuffle = theory.quadratic_selection_bias(eye, eye, **known)
    # relaxation 2/(εnβ) ≈ 23 steps against a 10^4-step epoch: within 1% of the limit
    assert abs(reshuffle - nbeta * d / n) < 0.01 * nbeta * d / n
    assert abs(reshuffle - 2 * (d / 2) / np.log(n)) < 0.01 * reshuffle
    assert theory.quadratic_selection_bias(eye, eye, order="independent", **known) == 0.0
    replay = theory.quadratic_selection_bias(eye, eye, order="replay", **known)
    assert replay > reshuffle
    with pytest.raises(ValueError, match="unknown order"):
        theory.quadratic_selection_bias(eye, eye, order="cycle", **known)
    with pytest.raises(ValueError, match="batch_size < num_examples"):
        theory.quadratic_selection_bias(eye, eye, **{**known, "batch_size": n})


# ------------------------------------------------------------------ simple models


def test_regular():
    assert regular_learning_coefficient(1) == 0.5
    assert regular_learning_coefficient(np.int64(7)) == 3.5
    for bad in (0, -3, 2.0, True, "4"):
        with pytest.raises(ValueError):
            regular_learning_coefficient(bad)


def test_monomial():
    assert monomial_learning_coefficient([2] * 6) == regular_learning_coefficient(6)
    assert monomial_learning_coefficient([2, 4, 6]) == pytest.approx(1 / 2 + 1 / 4 + 1 / 6)
    assert monomial_learning_coefficient((4,)) == 0.25
    for bad in ([], [3], [2, 0], [-2], [2.0]):
        with pytest.raises(ValueError):
            monomial_learning_coefficient(bad)


def test_normal_crossing():
    assert normal_crossing_learning_coefficient([1]) == (0.5, 1)
    assert normal_crossing_learning_coefficient([1, 2, 2]) == (0.25, 2)
    assert normal_crossing_learning_coefficient([3, 1, 3, 3]) == (pytest.approx(1 / 6), 3)
    # k = 0: the coordinate is absent from K and does not change λ or m.
    assert normal_crossing_learning_coefficient([0, 2, 0]) == (0.25, 1)
    for bad in ([], [0, 0], [1, -1], [1.5]):
        with pytest.raises(ValueError):
            normal_crossing_learning_coefficient(bad)


# ------------------------------------------------------------------ quadratic oracle


def _variance_by_iteration(a: float, eps: float, iters: int = 20_000) -> float:
    """Fixed point of v <- (1 - eps*a/2)^2 v + eps, by plain iteration."""
    v = 0.0
    for _ in range(iters):
        v = (1.0 - eps * a / 2.0) ** 2 * v + eps
    return v


@pytest.mark.parametrize("eps", [1e-3, 0.01, 0.03])
def test_oracle_variance_matches_recursion(eps):
    h = np.array([0.0, 0.5, 1.0, 4.0])
    nbeta, gamma = 25.0, 3.0
    got = quadratic_oracle_stationary_variance(h, nbeta=nbeta, localization=gamma, step_size=eps)
    want = [_variance_by_iteration(nbeta * hi + gamma, eps) for hi in h]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    llc = quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps)
    assert llc == pytest.approx(0.5 * nbeta * float(np.sum(h * np.array(want))), rel=1e-9)


def test_oracle_matches_simulated_sgld():
    """Run the DESIGN.md §1 SGLD update in NumPy; the mean estimate must match the oracle."""
    rng = np.random.default_rng(0)
    h = np.array([0.5, 1.0, 2.0])
    nbeta, gamma, eps = 10.0, 5.0, 0.1  # eps*A = 1.0, 1.5, 2.5: a large step-size bias
    w_star = np.array([0.3, -1.0, 2.0])
    chains, burn, draws = 4000, 100, 200
    w = np.tile(w_star, (chains, 1))
    per_chain = np.zeros(chains)
    for t in range(burn + draws):
        grad = nbeta * h * (w - w_star) + gamma * (w - w_star)
        w = w - 0.5 * eps * grad + np.sqrt(eps) * rng.standard_normal(w.shape)
        if t >= burn:
            per_chain += nbeta * 0.5 * np.sum(h * (w - w_star) ** 2, axis=1)
    per_chain /= draws
    mean, se = per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(chains)
    want = quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps)
    assert abs(mean - want) < 5 * se
    # The test can tell the step-size bias apart: the ε = 0 value is far outside.
    exact = quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma)
    assert abs(mean - exact) > 20 * se


def test_oracle_limits():
    h = np.array([0.1, 1.0, 10.0, 100.0])
    nbeta = 50.0
    # γ = 0, ε = 0: every direction with h > 0 counts ½, the regular value.
    assert quadratic_oracle_llc(h, nbeta=nbeta, localization=0.0) == pytest.approx(
        regular_learning_coefficient(4), rel=1e-12
    )
    # ε -> 0 converges to the continuous-time value, from above.
    exact = quadratic_oracle_llc(h, nbeta=nbeta, localization=1.0)
    values = [
        quadratic_oracle_llc(h, nbeta=nbeta, localization=1.0, step_size=e)
        for e in (1e-4, 1e-6, 1e-8)
    ]
    assert all(v > exact for v in values)
    assert values[0] > values[1] > values[2]
    # First order in ε: (1 - εA/4)^{-1} ≈ 1 + εA/4, so the bias is ≈ ε·nβ·Σh/8.
    # The relative error of that first-order term is itself O(ε·max A) = O(ε·5000).
    for e, v, rel in zip((1e-4, 1e-6, 1e-8), values, (0.5, 1e-2, 1e-4), strict=True):
        assert (v - exact) / e == pytest.approx(nbeta * h.sum() / 8, rel=rel)
    # Localization only shrinks; as γ -> ∞ the estimate goes to 0.
    g = [quadratic_oracle_llc(h, nbeta=nbeta, localization=x) for x in (0.0, 1.0, 1e3, 1e9)]
    assert g[0] > g[1] > g[2] > g[3] and g[3] < 1e-5
    # Flat directions (h = 0) contribute nothing once localized.
    assert quadratic_oracle_llc([0.0, 1.0], nbeta=nbeta, localization=1.0) == pytest.approx(
        quadratic_oracle_llc([1.0], nbeta=nbeta, localization=1.0)
    )
    # Closed-form single-coordinate value.
    assert quadratic_oracle_llc([2.0], nbeta=10.0, localization=4.0, step_size=0.05) == (
        pytest.approx(20.0 / (2 * 24.0 * (1 - 0.05 * 24.0 / 4)))
    )


def test_oracle_bad_input():
    kw = dict(nbeta=10.0, localization=1.0)
    # ε·A = 0.4·(10·1 + 1) = 4.4 >= 4: unstable.
    for fn in (quadratic_oracle_llc, quadratic_oracle_stationary_variance):
        with pytest.raises(ValueError, match="unstable"):
            fn([1.0], step_size=0.4, **kw)
        with pytest.raises(ValueError, match="unstable"):
            fn([1.0], step_size=4.0 / 11.0, **kw)  # exactly at the edge
        with pytest.raises(ValueError):
            fn([0.0], nbeta=10.0, localization=0.0)  # flat and not localized: improper
        with pytest.raises(ValueError):
            fn([-1.0], **kw)  # A = -9 <= 0
        with pytest.raises(ValueError):
            fn([], **kw)
        with pytest.raises(ValueError):
            fn([np.nan], **kw)
        with pytest.raises(ValueError):
            fn([1.0], nbeta=0.0, localization=1.0)
        with pytest.raises(ValueError):
            fn([1.0], nbeta=1.0, localization=-1.0)
        with pytest.raises(ValueError):
            fn([1.0], step_size=-1e-3, **kw)
    # Just inside the edge is fine.
    assert quadratic_oracle_llc([1.0], step_size=0.36, **kw) > 0


# ------------------------------------------------------------------ reduced rank regression


@pytest.mark.parametrize(
    "mhn, case, expected",
    [
        # DESIGN.md §2 worked example.
        ((5, 4, 5), "1 even", (8.0, 1)),
        # The case labels are those of the RRR cases in the devinterp (timaeus-research)
        # test suite at r = 0; the values are worked by hand from Aoyagi & Watanabe (2005).
        ((5, 3, 5), "1 odd", (6.5, 2)),  # (2·3·10 - 0 - 9 + 1)/8
        ((2, 1, 2), "1 odd", (1.0, 2)),
        ((3, 2, 3), "1 even", (2.5, 1)),  # (2·2·6 - 0 - 4)/8
        ((4, 3, 8), "2", (6.0, 1)),  # HM/2
        ((2, 1, 4), "2", (1.0, 1)),
        ((8, 3, 4), "3", (6.0, 1)),  # HN/2
        ((4, 1, 2), "3", (1.0, 1)),
        ((3, 8, 4), "4", (6.0, 1)),  # MN/2
        ((1, 4, 2), "4", (1.0, 1)),
    ],
)
def test_rrr_worked_examples(mhn, case, expected):
    assert rrr_learning_coefficient(*mhn, 0) == expected


def test_rrr_worked_examples_with_rank():
    # Case 1 with r > 0, by hand: M=N=4, H=3, r=1 (sum 12, even): (2·4·8 - 0 - 16)/8 = 6.
    assert rrr_learning_coefficient(4, 3, 4, 1) == (6.0, 1)
    # Case 2 with r > 0: M=2, H=2, N=6, r=1: (HM - Hr + Nr)/2 = (4 - 2 + 6)/2 = 4.
    assert rrr_learning_coefficient(2, 2, 6, 1) == (4.0, 1)


@pytest.mark.parametrize("m", range(1, 7))
@pytest.mark.parametrize("n", range(1, 7))
def test_rrr_hidden_width_one_is_a_product_of_norms(m, n):
    """H = 1, r = 0: K ∝ |a|²|b|², in polar coordinates ρ_a²ρ_b² with Jacobian
    ρ_a^{M-1} ρ_b^{N-1}, so λ = min(M, N)/2 with multiplicity 2 iff M = N."""
    assert rrr_learning_coefficient(m, 1, n, 0) == (min(m, n) / 2, 2 if m == n else 1)


def test_rrr_properties_over_grid():
    assert len(RRR_GRID) > 1000
    for m, h, n, r in RRR_GRID:
        lam, mult = rrr_learning_coefficient(m, h, n, r)
        case = (m, h, n, r)
        assert mult in (1, 2), case
        # Transposing the model swaps input and output.
        assert rrr_learning_coefficient(n, h, m, r) == (lam, mult), case
        # Never above d/2, never below the regular value of the rank-r matrices it must fit.
        assert r * (m + n - r) / 2 <= lam <= h * (m + n) / 2, case
        if r == h:
            # The bottleneck is full rank at the truth: the map to rank-h matrices is a
            # submersion there, so K is Morse-Bott with normal dimension h(M + N - h).
            assert (lam, mult) == (h * (m + n - h) / 2, 1), case


@pytest.mark.parametrize(
    "args", [(5, 4, 5, 5), (2, 3, 4, -1), (0, 1, 1, 0), (1, 0, 1, 0), (2.0, 2, 2, 0)]
)
def test_rrr_bad_input(args):
    with pytest.raises(ValueError):
        rrr_learning_coefficient(*args)


# ------------------------------------------------------------------ deep linear networks


def test_dln_reduces_to_rrr_over_grid():
    mismatches = [
        (case, dln_learning_coefficient(case[:3], case[3]), rrr_learning_coefficient(*case))
        for case in RRR_GRID
        if dln_learning_coefficient(case[:3], case[3]) != rrr_learning_coefficient(*case)
    ]
    assert mismatches == []
    # The grid reaches every branch of the Aoyagi-Watanabe theorem, both parities included.
    branches = set()
    for m, h, n, r in RRR_GRID:
        if m + h < n + r:
            branches.add("2")
        elif n + h < m + r:
            branches.add("3")
        elif m + n < h + r:
            branches.add("4")
        else:
            branches.add(f"1{(m + h + n + r) % 2}")
    assert branches == {"10", "11", "2", "3", "4"}


def test_dln_worked_examples():
    assert dln_learning_coefficient((5, 4, 5), 0) == (8.0, 1)  # DESIGN.md §2
    # (2,2,2,2,2), r = 0: ℓ = 4, S = 10, a = 2, λ = 1/4 - 75/4 + 20 = 3/2, m = 2·2 + 1.
    # Third-party cross-checks of Aoyagi's theorem report the same λ = 3/2 and order 5.
    assert dln_learning_coefficient((2, 2, 2, 2, 2), 0) == (1.5, 5)
    # A single layer is a regular model with H_1·H_2 parameters.
    for h1, h2, r in [(1, 1, 0), (3, 5, 0), (3, 5, 2), (4, 4, 4)]:
        assert dln_learning_coefficient([h1, h2], r) == (h1 * h2 / 2, 1)
    # Every layer square and full rank at the truth: the fibre is GL(r)^{L-1}, so
    # λ = (L r² - (L - 1) r²)/2 = r²/2.
    assert dln_learning_coefficient([3, 3, 3, 3], 3) == (4.5, 1)


@pytest.mark.parametrize(
    "widths",
    [(m, *[1] * k, n) for m in (1, 2, 3, 5) for n in (1, 2, 4) for k in (1, 2, 3, 4)],
)
def test_dln_unit_bottlenecks_are_products_of_norms(widths):
    """Hidden widths 1, r = 0: K = |W_1|² Π c_j² |W_L|², blocks of dimensions
    (H_1, 1, …, 1, H_{L+1}); in polar coordinates the zeta function is
    Π_i 1/(2z + d_i), so λ = min_i d_i / 2 and m = #{i : d_i = min}."""
    blocks = [widths[0], *[1] * (len(widths) - 3), widths[-1]]
    want = (min(blocks) / 2, blocks.count(min(blocks)))
    assert dln_learning_coefficient(widths, 0) == want


@pytest.mark.parametrize("h", [1, 2, 3, 4])
def test_dln_equal_widths_bounded_in_depth(h):
    """Equal widths H, r = 0, depth L >= H: Σ is every layer, ℓ = L, a = H, and the
    formula collapses to λ = H(H+1)/4 for every such L (Aoyagi: λ stays bounded as the
    number of layers grows), while the order a(ℓ - a) + 1 = H(L - H) + 1 keeps growing."""
    for depth in range(max(h, 2), h + 8):
        widths = [h] * (depth + 1)
        assert dln_learning_coefficient(widths, 0) == (h * (h + 1) / 4, h * (depth - h) + 1)
    # And it is strictly below the value with fewer layers than H (when H >= 3).
    if h >= 3:
        assert dln_learning_coefficient([h] * 3, 0)[0] > h * (h + 1) / 4


def _brute_force_subsets(reduced):
    n = len(reduced)
    found = []
    for k in range(1, n + 1):
        for sub in itertools.combinations(range(n), k):
            rest = [reduced[i] for i in range(n) if i not in sub]
            vals = [reduced[i] for i in sub]
            ell = k - 1
            ok = sum(vals) >= ell * max(vals)
            if rest:
                ok = ok and max(vals) < min(rest) and sum(vals) < ell * min(rest)
            if ok:
                found.append(list(sub))
    return found


DLN_GRID = [
    (widths, r)
    for depth in (2, 3, 4, 5)
    for widths in itertools.product((1, 2, 3, 5), repeat=depth + 1)
    for r in range(min(widths) + 1)
]


def test_dln_subset_is_unique_over_all_subsets():
    for widths, r in DLN_GRID:
        reduced = [w - r for w in widths]
        assert _brute_force_subsets(reduced) == [_aoyagi_subset(reduced)], (widths, r)


def test_dln_properties_over_grid():
    assert len(DLN_GRID) > 1000
    for widths, r in DLN_GRID:
        lam, mult = dln_learning_coefficient(widths, r)
        d = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        assert 0 < lam <= d / 2, (widths, r)
        assert mult >= 1, (widths, r)
        # Transposing the network reverses the widths.
        assert dln_learning_coefficient(widths[::-1], r) == (lam, mult), (widths, r)
        if r == min(widths):
            # Every layer has rank >= r at the truth, so all factors are full rank: the
            # model is a submersion onto rank-r matrices near the truth (Morse-Bott).
            want = (r * (widths[0] + widths[-1] - r) / 2, 1)
            assert (lam, mult) == want, (widths, r)


@pytest.mark.parametrize(
    "widths, r",
    [
        ((3, 2, 3), 3),
        ((4, 4), 5),
        ((3,), 0),
        ((), 0),
        ((3, 0, 3), 0),
        ((3, 2, 3), -1),
        ((3, 2.0, 3), 0),
        ((3, 2, 3), 1.0),
    ],
)
def test_dln_bad_input(widths, r):
    with pytest.raises(ValueError):
        dln_learning_coefficient(widths, r)


@pytest.mark.parametrize("bad", [None, "100", True])
def test_oracle_rejects_settings_that_are_not_numbers(bad):
    for name in ("nbeta", "localization", "step_size"):
        kw = dict(nbeta=100.0, localization=1.0, step_size=0.0) | {name: bad}
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            theory.quadratic_oracle_llc([1.0], **kw)
