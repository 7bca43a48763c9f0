r"""Toy model of superposition (TMS): model, data, exact population loss, k-gon critical points.

**Model** (Elhage et al. 2022, "Toy models of superposition",
https://transformer-circuits.pub/2022/toy_model/index.html): ``c`` features squeezed through
``r = 2`` hidden dimensions and read out with the transposed weights,

.. math:: f(x) = \mathrm{ReLU}(W^\top W x + b),\qquad W\in\mathbb R^{2\times c},\ b\in\mathbb R^c.

**Data and loss** (the high-sparsity setting of Chen, Lau, Mendel, Wei & Murfet 2023,
"Dynamical versus Bayesian phase transitions in a toy model of superposition",
arXiv:2310.06301): each input has exactly one non-zero feature, :math:`x = \mu e_i` with
:math:`i` uniform on :math:`\{1,\dots,c\}` and :math:`\mu \sim U[0, 1]`; the per-example loss is
:math:`\lVert x - f(x)\rVert^2` (a sum over the ``c`` outputs, not halved) and
:math:`L(W, b) = E\lVert x - f(x)\rVert^2`.

**Exact population loss.** For :math:`x = \mu e_i` output ``j`` is
:math:`\mathrm{ReLU}(\mu G_{ij} + b_j)` with :math:`G = W^\top W`, so

.. math:: L(W, b) = \frac1c \sum_{i,j} \int_0^1 \bigl(\delta_{ij}\mu
    - \mathrm{ReLU}(\mu G_{ij} + b_j)\bigr)^2 \,d\mu,

each integrand a polynomial on the sub-interval of :math:`[0, 1]` where :math:`\mu G_{ij}+b_j>0`
(:func:`population_loss`; no quadrature).

**k-gons** (:func:`kgon`): ``k`` columns of ``W`` of length :math:`l` at the angles
:math:`2\pi m/k` with bias :math:`b^*`, the other columns zero. The family is the set fixed by
rotating ``W`` by :math:`2\pi/k` while permuting the ``k`` columns cyclically, so (principle of
symmetric criticality) a stationary point of ``L`` in :math:`(l, b^*)` is a critical point.

Example:
  >>> from slt_jax.models import tms
  >>> hexagon = tms.kgon(6, 6)
  >>> round(hexagon.length, 4), round(hexagon.bias, 4), round(hexagon.loss, 5)
  (1.3205, -0.6181, 0.04819)
  >>> tms.kgon_learning_coefficient(6, 6)
  8.5
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax._src.io.adapters import nnx_loss
from slt_jax._src.training import minibatch_train


class TMS(nnx.Module):
    """``f(x) = ReLU(WᵀW x + b)``; ``W`` (hidden × features) starts ``N(0, init_scale²)``."""

    def __init__(
        self, num_features: int = 6, hidden_dim: int = 2, *, rngs: nnx.Rngs, init_scale=0.5
    ):
        shape = (hidden_dim, num_features)
        self.W = nnx.Param(init_scale * jax.random.normal(rngs.params(), shape))
        self.b = nnx.Param(jnp.zeros(num_features))

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.W[...]
        return jax.nn.relu((x @ w.T) @ w + self.b[...])


def from_parameters(W, b) -> TMS:
    """A :class:`TMS` holding the given ``W`` (2 × c) and ``b`` (c,), e.g. a :func:`kgon`."""
    model = TMS(np.shape(W)[1], np.shape(W)[0], rngs=nnx.Rngs(0))
    model.W[...] = jnp.asarray(W, jnp.float32)
    model.b[...] = jnp.asarray(b, jnp.float32)
    return model


def make_data(n: int, c: int = 6, key=0) -> tuple[jax.Array, jax.Array]:
    """``(inputs, targets) = (x, x)``: ``n`` rows ``x = μ e_i``, ``i ~ U{0..c-1}``, ``μ ~ U[0, 1]``.

    ``key``: a JAX key or an integer seed.
    """
    x = _inputs(jax.random.key(key) if isinstance(key, int | np.integer) else key, n, c)
    return x, x


@functools.partial(jax.jit, static_argnums=(1, 2))
def _inputs(key: jax.Array, n: int, c: int) -> jax.Array:
    k_index, k_size = jax.random.split(key)
    index = jax.random.randint(k_index, (n,), 0, c)
    return jax.nn.one_hot(index, c) * jax.random.uniform(k_size, (n, 1))


def per_example_loss(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """``‖x − f(x)‖²`` per example (Chen et al. 2023's normalisation: summed, not halved)."""
    return jnp.sum((targets - outputs) ** 2, axis=-1)


def _relu_moments(a, beta):
    """``∫₀¹ ReLU(aμ+β)² dμ`` and ``∫₀¹ μ·ReLU(aμ+β) dμ``, elementwise and differentiable."""
    pos, neg = a > 0, a < 0
    root = -beta / jnp.where(pos | neg, a, 1.0)  # where aμ + β crosses zero
    lo = jnp.where(pos, jnp.clip(root, 0.0, 1.0), 0.0)
    hi = jnp.where(neg, jnp.clip(root, 0.0, 1.0), jnp.where(pos | (beta > 0), 1.0, 0.0))
    d1, d2, d3 = hi - lo, hi**2 - lo**2, hi**3 - lo**3
    return a * a * d3 / 3 + a * beta * d2 + beta * beta * d1, a * d3 / 3 + beta * d2 / 2


@jax.jit
def population_loss(W: jax.Array, b: jax.Array) -> jax.Array:
    r"""The exact :math:`L(W, b) = E\lVert x - f(x)\rVert^2` under :func:`make_data`.

    Expanding :math:`(\delta_{ij}\mu - R)^2` with :math:`R = \mathrm{ReLU}(\mu G_{ij}+b_j)`:
    :math:`L = \frac1c\sum_{ij}[\delta_{ij}/3 - 2\delta_{ij}\int\mu R + \int R^2]`, both
    integrals in closed form. Differentiable in ``(W, b)`` (twice, away from the kinks
    :math:`G_{ij} = b_j = 0` and :math:`G_{ii} + b_i = 0`); works in float32 and float64.
    """
    return population_loss_from_gram(W.T @ W, b)


def population_loss_from_gram(gram: jax.Array, b: jax.Array) -> jax.Array:
    """:func:`population_loss` as a function of ``G = WᵀW`` (c × c) and ``b``."""
    eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
    squared, cross = _relu_moments(gram, b[None, :])
    return jnp.sum(eye / 3 - 2 * eye * cross + squared) / gram.shape[0]


@functools.partial(jax.jit, static_argnums=1)
def _flat_hessian(flat: jax.Array, c: int) -> jax.Array:
    return jax.hessian(lambda v: population_loss(v[: 2 * c].reshape(2, c), v[2 * c :]))(flat)


def population_hessian(W, b) -> np.ndarray:
    """The Hessian of :func:`population_loss` in float64, over ``[W.ravel(), b]`` (3c × 3c)."""
    with jax.enable_x64(True):
        flat = jnp.concatenate([jnp.ravel(jnp.asarray(W)), jnp.asarray(b)]).astype(jnp.float64)
        return np.asarray(_flat_hessian(flat, np.shape(W)[1]))


class KGon(NamedTuple):
    """A k-gon critical point: ``W`` (2 × c) and ``b`` (c,) in float64, with its summary."""

    W: np.ndarray
    b: np.ndarray
    length: float  #: the common length l of the k represented columns
    bias: float  #: their common bias b*
    loss: float  #: L(W, b)


def _kgon_arrays(k, c, squared_length, bias, num_positive, negative_bias, rotation):
    angles = rotation + 2 * np.pi * np.arange(k) / k
    W = np.zeros((2, c))
    W[:, :k] = np.sqrt(squared_length) * np.stack([np.cos(angles), np.sin(angles)])
    dead = [1.0 / (2 * c)] * num_positive + [negative_bias] * (c - k - num_positive)
    return W, np.concatenate([np.full(k, bias), dead])


def kgon(
    k: int, c: int, *, num_positive: int = 0, negative_bias: float = -1.0, rotation: float = 0.0
) -> KGon:
    r"""The regular ``k``-gon critical point of the TMS with ``c`` features.

    Columns ``0..k-1`` of ``W`` are :math:`l(\cos\theta_m, \sin\theta_m)`,
    :math:`\theta_m = \text{rotation} + 2\pi m/k`, with bias :math:`b^*`; of the ``c - k`` zero
    columns the first ``num_positive`` get bias :math:`1/(2c)` (where a dead column's
    :math:`\partial L/\partial b_j = \tfrac2c(c\,b_j - \tfrac12)` vanishes), the others
    ``negative_bias`` (any negative value is critical). :math:`(l^2, b^*)` solve
    :math:`\nabla_{(l^2, b^*)} L = 0` (Newton's method in float64, the lowest-loss root over a
    few starts). ``k <= 4``: :math:`l = 1, b^* = 0` exactly (``L`` is only once differentiable
    there; the loss is :math:`(c-k)/(3c)`, less :math:`1/(4c^2)` per positive dead bias).
    ``k >= 5``: :math:`b^* < 0`; ``c = 6``: :math:`(l, b^*) = (1.17046, -0.28230)` for the
    pentagon, :math:`(1.32053, -0.61814)` for the hexagon, losses 0.06874 and 0.04819. (More
    sides need not mean lower loss: for ``c = 8`` the 7-gon's 0.11453 beats the 8-gon's 0.11555.)

    Args:
      k: number of represented features, ``2 <= k <= c``.
      c: number of features.
      num_positive: dead columns with the positive bias ``1/(2c)``.
      negative_bias: the bias of the other dead columns (must be < 0).
      rotation: a global angle (the loss is invariant under rotating ``W``).
    """
    if not 2 <= k <= c:
        raise ValueError(f"need 2 <= k <= c, got k={k}, c={c}")
    if not 0 <= num_positive <= c - k:
        raise ValueError(f"num_positive must be in [0, c - k] = [0, {c - k}], got {num_positive}")
    if not negative_bias < 0:
        raise ValueError(f"negative_bias must be < 0, got {negative_bias}")
    squared_length, bias = _solve_kgon(k, c, num_positive)
    W, b = _kgon_arrays(k, c, squared_length, bias, num_positive, negative_bias, rotation)
    with jax.enable_x64(True):
        loss = float(population_loss(W, b))
    return KGon(W, b, squared_length**0.5, bias, loss)


@jax.jit
def _newton(starts, cosines, active, dead_bias):
    """Newton's method from each start on ``L(G = l²·cosines, b = b* on active)`` in ``(l², b*)``.

    Returns the roots, their losses and gradient residuals."""

    def restricted(p):
        return population_loss_from_gram(p[0] * cosines, jnp.where(active, p[1], dead_bias))

    def solve(p):
        def step(_, p):
            move = jnp.linalg.solve(jax.hessian(restricted)(p), jax.grad(restricted)(p))
            return jnp.clip(p - move, jnp.array([1e-6, -10.0]), jnp.array([100.0, 10.0]))

        p = jax.lax.fori_loop(0, 50, step, p)
        return p, restricted(p), jnp.max(jnp.abs(jax.grad(restricted)(p)))

    return jax.vmap(solve)(starts)


@functools.cache
def _solve_kgon(k: int, c: int, num_positive: int) -> tuple[float, float]:
    """``(l², b*)`` of the k-gon in float64 (the lowest-loss root over a few starts)."""
    with jax.enable_x64(True):
        unit, dead = _kgon_arrays(k, c, 1.0, 0.0, num_positive, -1.0, 0.0)  # W at l = 1
        starts = jnp.array([[1.0, 0.0], [1.5, -0.3], [2.0, -0.8], [2.5, -1.3]])
        out = _newton(starts, unit.T @ unit, jnp.arange(c) < k, dead)
        roots, values, residuals = map(np.asarray, out)
    ok = residuals < 1e-12  # NaN (a singular Newton system) fails too
    if not ok.any():  # pragma: no cover - every (k, c) tried converges from some start
        raise RuntimeError(f"Newton's method did not converge for the {k}-gon, c={c}")
    squared_length, bias = roots[ok][np.argmin(values[ok])]
    return float(squared_length), 0.0 if abs(bias) < 1e-12 else float(bias)


def kgon_learning_coefficient(k: int, c: int, *, num_positive: int = 0) -> float:
    r"""The learning coefficient of a :func:`kgon` where it is a minimally singular minimum.

    If ``L`` is twice differentiable near :math:`w^*`, its Hessian :math:`H` is positive
    semi-definite, and :math:`w^*` lies on a manifold of constant loss whose dimension equals
    the nullity of :math:`H`, then ``L`` is Morse–Bott at :math:`w^*` and
    :math:`\lambda = \operatorname{rank}(H)/2` with multiplicity 1: in Morse–Bott coordinates
    :math:`L - L(w^*) = \sum_{i \le \operatorname{rank} H} y_i^2` (Watanabe 2009, *Algebraic
    Geometry and Statistical Learning Theory*; the "minimally singular" case of Murfet, Wei et
    al., "Deep learning is singular, and that's good", arXiv:2010.11560). The constant-loss
    manifold here is the rotation orbit of ``W`` (dimension 1) times, when :math:`b^* < 0`, the
    weights and biases of the ``φ = c - k - num_positive`` dead columns with negative bias
    (``3φ`` dimensions: the loss does not depend on them near :math:`w^*`). The three
    conditions are checked on the float64 Hessian; where they hold,
    :math:`\operatorname{rank} H = 3(k + \sigma) - 1` (:math:`\sigma` = ``num_positive``):

    .. math:: \lambda = \bigl(3(k + \sigma) - 1\bigr)/2

    (``c = 6``: pentagon 7, pentagon with one positive dead bias 8.5, hexagon 8.5).

    This is derived from the Hessian, not copied from a table of Chen et al. 2023.

    Raises:
      ValueError: where the criterion does not apply: ``k <= 4`` (:math:`b^* = 0`, a kink of
        the ReLU), a saddle (dead columns of both bias signs give a negative eigenvalue), or
        extra degenerate directions.
    """
    point = kgon(k, c, num_positive=num_positive)
    if point.bias == 0.0:
        raise ValueError(f"the {k}-gon has b* = 0: L is not twice differentiable there")
    eig = np.linalg.eigvalsh(population_hessian(point.W, point.b))
    tol = 1e-9 * np.max(np.abs(eig))
    if eig.min() < -tol:
        raise ValueError(f"the {k}-gon (c={c}, {num_positive} positive) is a saddle point")
    rank = int(np.sum(eig > tol))
    flat = 1 + (3 * (c - k - num_positive) if point.bias < 0 else 0)
    if rank + flat != eig.size:
        raise ValueError(f"the {k}-gon has {eig.size - rank} null directions, {flat} explained")
    return rank / 2


def train(
    c: int = 6,
    *,
    n: int = 1000,
    num_steps: int = 20_000,
    batch_size: int = 20,
    learning_rate: float = 5e-3,
    optimizer: str = "sgd",
    init_scale: float = 0.5,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    num_checkpoints: int = 30,
    data: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[TMS, dict[str, np.ndarray]]:
    """Train a :class:`TMS` from a random init on ``n`` samples.

    Minibatch SGD (``optimizer="sgd"``) or Adam (``"adam"``) on the mean of
    :func:`per_example_loss`. With ``checkpoint_dir``, the parameters before step ``s``
    (``s = 0``: the init, ``s = num_steps``: the end) are saved for ``s`` in
    ``log_spaced_steps(num_steps, num_checkpoints)`` with :func:`slt_jax.save_checkpoint`,
    a set that ``factory(c)``'s template loads. (With the defaults, seeds 0 and 1 end near the
    pentagon with one positive dead bias: population losses 0.0619 and 0.0620 against the
    pentagon's 0.0618.)

    Returns ``(model, history)``: the trained model and ``history["step"]``,
    ``history["loss"]``, the loss on all ``n`` training samples at the log-spaced steps
    (the init and the end included), whether or not checkpoints are written.
    """
    key = jax.random.key(seed)
    model = TMS(c, rngs=nnx.Rngs(seed), init_scale=init_scale)
    data = make_data(n, c, jax.random.fold_in(key, 1)) if data is None else data
    history = minibatch_train(
        model,
        per_example_loss,
        data,
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        key=key,
        checkpoint_dir=checkpoint_dir,
        num_checkpoints=num_checkpoints,
    )
    return model, history


def factory(c: int = 6, n: int = 1000, seed: int = 0):
    """A model factory for the command line: ``--model slt_jax.models.tms:factory``.

    Returns ``(loss_fn, data, like)``: the mean of :func:`per_example_loss` through a
    :class:`TMS` with ``c`` features, the ``n`` samples of :func:`make_data` that
    :func:`train` draws for ``seed``, and the parameter template its checkpoints load into.
    """
    loss_fn, params = nnx_loss(TMS(c, rngs=nnx.Rngs(seed)), per_example_loss)
    return loss_fn, make_data(n, c, jax.random.fold_in(jax.random.key(seed), 1)), params
