"""Closed-form learning coefficients, used as known answers for the estimators.

Everything here is pure Python / NumPy (no JAX). Values are computed in exact rational
arithmetic (:class:`fractions.Fraction`) and returned as ``float``; the multiplicities
(orders of the largest pole of the zeta function) are returned as ``int``.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from fractions import Fraction
from math import ceil

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "regular_learning_coefficient",
    "monomial_learning_coefficient",
    "normal_crossing_learning_coefficient",
    "quadratic_oracle_llc",
    "quadratic_oracle_stationary_variance",
    "rrr_learning_coefficient",
    "dln_learning_coefficient",
]


def _as_int(value: object, name: str, *, minimum: int) -> int:
    """Return ``value`` as an int (ints and NumPy integers only), checking ``>= minimum``."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def _int_list(values: Sequence[int], name: str, *, minimum: int) -> list[int]:
    out = [_as_int(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(values)]
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def regular_learning_coefficient(num_params: int) -> float:
    """Learning coefficient of a regular model: ``λ = d / 2``.

    Holds when the Fisher information at the true parameter is positive definite
    (Watanabe 2009, *Algebraic Geometry and Statistical Learning Theory*; this is the
    BIC penalty of Schwarz 1978).

    >>> regular_learning_coefficient(10)
    5.0
    """
    return _as_int(num_params, "num_params", minimum=1) / 2


def monomial_learning_coefficient(powers: Sequence[int]) -> float:
    """Sum of independent monomials ``K(w) = ½ Σ_i w_i^{p_i}`` (even ``p_i >= 2``).

    ``λ = Σ_i 1/p_i`` (the integral factorises over coordinates and each coordinate
    contributes ``∫ exp(-n w^p / 2) dw ∝ n^{-1/p}``); see Watanabe 2009 and the
    examples in Lau et al. 2023, https://arxiv.org/abs/2308.12108. Multiplicity is 1.

    >>> monomial_learning_coefficient([2, 4, 4])
    1.0
    """
    ps = _int_list(powers, "powers", minimum=2)
    if any(p % 2 for p in ps):
        raise ValueError(f"powers must be even, got {ps}")
    return float(sum(Fraction(1, p) for p in ps))


def normal_crossing_learning_coefficient(exponents: Sequence[int]) -> tuple[float, int]:
    """Normal crossing ``K(w) = Π_i w_i^{2 k_i}``: ``λ = min_i 1/(2 k_i)``.

    The multiplicity ``m`` is the number of ``i`` attaining the minimum (the standard form
    of ``K`` after resolution of singularities: Watanabe 2009, *Algebraic Geometry and
    Statistical Learning Theory*). A ``k_i = 0`` coordinate does not appear in ``K`` and does not
    constrain. Realised by ``y = x · Π_i w_i^{k_i} + noise`` with truth ``f ≡ 0``.

    >>> normal_crossing_learning_coefficient([1, 2, 2])
    (0.25, 2)
    """
    ks = _int_list(exponents, "exponents", minimum=0)
    positive = [k for k in ks if k > 0]
    if not positive:
        raise ValueError("at least one exponent must be positive")
    kmax = max(positive)
    return 1 / (2 * kmax), positive.count(kmax)


def _oracle_rates(
    curvatures: ArrayLike, nbeta: float, localization: float, step_size: float
) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(curvatures, dtype=np.float64)
    if h.size == 0 or not np.all(np.isfinite(h)):
        raise ValueError("curvatures must be a non-empty array of finite numbers")
    for name, value in (("nbeta", nbeta), ("localization", localization), ("step_size", step_size)):
        real = np.ndim(value) == 0 and np.asarray(value).dtype.kind in "fiu"  # jax scalars too
        if isinstance(value, bool) or not (isinstance(value, numbers.Real) or real):
            raise TypeError(f"{name} must be a real number, got {value!r}")
    if not (np.isfinite(nbeta) and nbeta > 0):
        raise ValueError(f"nbeta must be positive, got {nbeta}")
    if not (np.isfinite(localization) and localization >= 0):
        raise ValueError(f"localization must be >= 0, got {localization}")
    if not (np.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    a = nbeta * h + localization
    if np.any(a <= 0):
        raise ValueError("nbeta*h_i + localization must be > 0 for every i (improper posterior)")
    if np.any(step_size * a >= 4):
        raise ValueError(
            f"unstable: step_size*A_i = {float(np.max(step_size * a)):.4g} >= 4 "
            "(the SGLD chain diverges)"
        )
    return h, a


def quadratic_oracle_stationary_variance(
    curvatures: ArrayLike, *, nbeta: float, localization: float, step_size: float = 0.0
) -> np.ndarray:
    """Per-coordinate stationary variance of SGLD on ``L(w) = ½ Σ h_i (w_i - w*_i)²``.

    For ``w_{t+1} = w_t - (ε/2)(nβ h (w_t - w*) + γ (w_t - w*)) + N(0, ε)`` (DESIGN.md §1,
    the convention of Lau et al. 2023, https://arxiv.org/abs/2308.12108) each coordinate is
    an AR(1) process ``x' = (1 - εA/2) x + √ε ξ`` with ``A_i = nβ h_i + γ``, whose stationary
    variance is ``ε / (1 - (1 - εA/2)²) = 1 / (A_i (1 - ε A_i / 4))``; ``ε = 0`` gives the
    exact (continuous-time) posterior variance ``1/A_i``. Raises ValueError if
    ``ε A_i >= 4`` (unstable) or ``A_i <= 0``.

    >>> quadratic_oracle_stationary_variance([1.0, 3.0], nbeta=1.0, localization=1.0)
    array([0.5 , 0.25])
    """
    _, a = _oracle_rates(curvatures, nbeta, localization, step_size)
    return 1.0 / (a * (1.0 - step_size * a / 4.0))


def quadratic_oracle_llc(
    curvatures: ArrayLike, *, nbeta: float, localization: float, step_size: float = 0.0
) -> float:
    """Exact expectation of the SGLD LLC estimate for a quadratic loss, at stationarity.

    ``L(w) = ½ Σ_i h_i (w_i - w*_i)²`` with exact gradients and ``λ̂ = nβ (E[L] - L(w*))``:

        E[λ̂] = Σ_i nβ h_i / (2 A_i (1 - ε A_i / 4)),   A_i = nβ h_i + γ,

    (``nβ/2 · Σ h_i Var_i`` with the variance of
    :func:`quadratic_oracle_stationary_variance`). It shows the shrinkage from
    localization (``γ > 0`` lowers it) and the bias of a finite step (``ε > 0`` raises it);
    with ``γ = ε = 0`` it is ``d/2``, the regular value. Raises ValueError if
    ``ε A_i >= 4``.

    >>> quadratic_oracle_llc([1.0, 1.0], nbeta=100.0, localization=0.0)
    1.0
    >>> round(quadratic_oracle_llc([1.0], nbeta=100.0, localization=0.0, step_size=0.01), 6)
    0.666667
    """
    h, _ = _oracle_rates(curvatures, nbeta, localization, step_size)
    var = quadratic_oracle_stationary_variance(
        h, nbeta=nbeta, localization=localization, step_size=step_size
    )
    return float(0.5 * nbeta * np.sum(h * var))


#: Minibatch orders of :func:`quadratic_selection_bias`.
BATCH_ORDERS = ("reshuffle", "replay", "independent")


def quadratic_selection_bias(
    hessian: ArrayLike,
    gradient_covariance: ArrayLike,
    *,
    nbeta: float,
    localization: float,
    step_size: float,
    num_examples: int,
    batch_size: int,
    order: str = "reshuffle",
) -> float:
    r"""First-order bias of the step-minibatch λ̂ of SGLD on a quadratic model.

    Per-example losses with gradients ``g_i`` at the minimum ``w*`` (``Σ g_i = 0``,
    covariance ``S = Σ g_i g_iᵀ / n``) and mean Hessian ``H``. With ``u = w − w*``,
    ``A = nβH + γ`` and ``M = I − εA/2``, the loss recorded on the step's own minibatch,
    ``L_B(w_t) − L_n(w*) = ½uᵀHu + ḡ_{B_t}ᵀu_t``, has a cross term whose mean is not zero
    when the choice of ``B_t`` depends on the chain's past: ``u_t`` holds
    ``−(ε/2)nβ Σ_k M^{k−1} ḡ_{B_{t−k}}``, so

        bias(λ̂) = nβ²(ε/2) Σ_k ρ_k tr(M^{k−1} S),

    ``ρ_k = −E[ḡ_{B_t}ᵀ ḡ_{B_{t−k}}] / tr(S)``-normalized: ``1/(n−1)`` for a disjoint minibatch
    (an earlier step of the same epoch, without replacement), ``−(n−b)/(b(n−1))`` for the same
    minibatch, ``0`` for an independent one. ``order``:

    * ``"reshuffle"`` (slt_jax: a new permutation every epoch): only the ``j`` earlier steps
      of the epoch count, ``j`` uniform on ``0 … P−1`` with ``P = n // b``;
    * ``"replay"`` (devinterp 2.0.1's ``itertools.cycle`` over its ``DataLoader``: the first
      epoch's order every epoch): every earlier step, the same minibatch every ``P`` steps;
    * ``"independent"`` (the loss read on a minibatch drawn apart from the steps'): 0.

    For a well-specified regular model (``S = H``) at small ``γ`` with epochs much longer
    than the chain's relaxation time ``2/(εnβh)``, the reshuffled bias tends to
    ``(nβ/n)·d = 2λ/log n`` at the default ``nβ = n/log n``. Checked against float64
    chains in ``benchmarks/multipass_bias.py`` and ``tests/test_loss_batch.py``.

    >>> round(quadratic_selection_bias(np.eye(2), np.eye(2), nbeta=100.0, localization=1.0,
    ...       step_size=1e-3, num_examples=1000, batch_size=10), 4)
    0.1592
    """
    if order not in BATCH_ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {BATCH_ORDERS}.")
    n, b = int(num_examples), int(batch_size)
    if not 1 <= b < n:
        raise ValueError(f"need 1 <= batch_size < num_examples, got {b} and {n}.")
    if order == "independent":
        return 0.0
    h, v = np.linalg.eigh(np.asarray(hessian, np.float64))
    s_diag = np.einsum("ij,jk,ki->i", v.T, np.asarray(gradient_covariance, np.float64), v)
    m = 1.0 - 0.5 * step_size * (nbeta * h + localization)
    if np.any(np.abs(m) >= 1):
        raise ValueError("the step size is beyond SGLD's stability (|1 − εA/2| >= 1).")
    per = n // b
    lags = np.arange(1, per)
    powers = m[None, :] ** (lags[:, None] - 1)
    disjoint = 1.0 / (n - 1)
    if order == "reshuffle":
        total = np.sum(((per - lags) / per)[:, None] * powers * disjoint * s_diag)
    else:
        period = np.sum(powers * disjoint, axis=0) - m ** (per - 1) * (n - b) / (b * (n - 1))
        total = np.sum(period / (1.0 - m**per) * s_diag)
    return float(nbeta**2 * step_size / 2 * total)


def rrr_learning_coefficient(
    input_dim: int, hidden_dim: int, output_dim: int, rank: int
) -> tuple[float, int]:
    """Reduced rank regression ``y = B A x`` (A: H×M, B: N×H), true matrix of rank r.

    Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in
    Bayesian estimation", Neural Networks 18(7). With M = input, H = hidden,
    N = output dims, returns ``(λ, m)``:

    1. ``N+r <= M+H``, ``M+r <= N+H``, ``H+r <= M+N``:
       ``λ = [2(H+r)(M+N) - (M-N)² - (H+r)²] / 8`` and ``m = 1`` if ``M+H+N+r`` is even;
       ``λ = [2(H+r)(M+N) - (M-N)² - (H+r)² + 1] / 8`` and ``m = 2`` if it is odd.
    2. ``M+H < N+r``: ``λ = (HM - Hr + Nr)/2``, ``m = 1``.
    3. ``N+H < M+r``: ``λ = (HN - Hr + Mr)/2``, ``m = 1``.
    4. ``M+N < H+r``: ``λ = MN/2``, ``m = 1``.

    (Cases 2-4 exclude each other; case 1 is what is left.)

    >>> rrr_learning_coefficient(5, 4, 5, 0)
    (8.0, 1)
    """
    m_ = _as_int(input_dim, "input_dim", minimum=1)
    h = _as_int(hidden_dim, "hidden_dim", minimum=1)
    n = _as_int(output_dim, "output_dim", minimum=1)
    r = _as_int(rank, "rank", minimum=0)
    if r > min(m_, h, n):
        raise ValueError(f"rank {r} exceeds min(input_dim, hidden_dim, output_dim)")
    if m_ + h < n + r:
        return (h * m_ - h * r + n * r) / 2, 1
    if n + h < m_ + r:
        return (h * n - h * r + m_ * r) / 2, 1
    if m_ + n < h + r:
        return m_ * n / 2, 1
    core = 2 * (h + r) * (m_ + n) - (m_ - n) ** 2 - (h + r) ** 2
    if (m_ + h + n + r) % 2 == 0:
        return core / 8, 1
    return (core + 1) / 8, 2


def _aoyagi_subset(reduced: Sequence[int]) -> list[int]:
    """Indices Σ of Aoyagi's theorem for reduced widths ``M_j = H_j - r``.

    Σ (with ``|Σ| = ℓ + 1``) satisfies ``max_{Σ} M < min_{not Σ} M``,
    ``Σ_{Σ} M >= ℓ max_{Σ} M`` and ``Σ_{Σ} M < ℓ min_{not Σ} M``. The first condition
    forces Σ to be the ``k`` smallest values (ties all in or all out), so only those
    candidates are searched; exactly one of them qualifies.
    """
    order = sorted(range(len(reduced)), key=lambda i: reduced[i])
    vals = [reduced[i] for i in order]
    found = []
    for k in range(2, len(vals) + 1):
        ell, total, top = k - 1, sum(vals[:k]), vals[k - 1]
        rest = vals[k:]
        if rest and not (top < rest[0] and total < ell * rest[0]):
            continue
        if total >= ell * top:
            found.append(sorted(order[:k]))
    if len(found) != 1:  # pragma: no cover - excluded by the argument in the docstring
        raise RuntimeError(f"expected exactly one Aoyagi subset for {list(reduced)}, got {found}")
    return found[0]


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> tuple[float, int]:
    """Deep linear network ``y = W_L ⋯ W_1 x`` at a true product matrix of rank r.

    Aoyagi (2024), "Consideration on the learning efficiency of multiple-layered neural
    networks with linear units", Neural Networks 172:106132
    (doi:10.1016/j.neunet.2024.106132; preprint SSRN 4404877); restated in Aoyagi (2025),
    https://arxiv.org/abs/2501.12747. ``widths = (H_1, ..., H_{L+1})`` (input first).
    With ``M_j = H_j - r`` and the unique subset Σ of :func:`_aoyagi_subset`,
    ``ℓ = |Σ| - 1``, ``S = Σ_{j∈Σ} M_j``, ``M = ⌈S/ℓ⌉ - 1``, ``a = S - ℓM`` (``1 <= a <= ℓ``):

        λ = [r(H_1 + H_{L+1}) - r²]/2 + a(ℓ-a)/(4ℓ) - (ℓ-1) S²/(4ℓ) + ½ Σ_{i<j∈Σ} M_i M_j,
        m = a(ℓ - a) + 1.

    For three widths this is :func:`rrr_learning_coefficient`; for one layer it is
    ``H_1 H_2 / 2``. The value is Aoyagi's (minimum over the true set); at a less singular
    true parameter the local value can be larger.

    >>> dln_learning_coefficient([5, 4, 5], 0)
    (8.0, 1)
    >>> dln_learning_coefficient([2, 2, 2, 2, 2], 0)
    (1.5, 5)
    """
    hs = _int_list(widths, "widths", minimum=1)
    if len(hs) < 2:
        raise ValueError("widths needs at least two entries (input and output)")
    r = _as_int(rank, "rank", minimum=0)
    if r > min(hs):
        raise ValueError(f"rank {r} exceeds the narrowest width {min(hs)}")
    reduced = [h - r for h in hs]
    sub = [reduced[i] for i in _aoyagi_subset(reduced)]
    ell, total = len(sub) - 1, sum(sub)
    big_m = ceil(Fraction(total, ell)) - 1
    a = total - ell * big_m
    pairs = sum(sub[i] * sub[j] for i in range(len(sub)) for j in range(i + 1, len(sub)))
    lam = (
        Fraction(r * (hs[0] + hs[-1]) - r * r, 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction((ell - 1) * total * total, 4 * ell)
        + Fraction(pairs, 2)
    )
    return float(lam), a * (ell - a) + 1
