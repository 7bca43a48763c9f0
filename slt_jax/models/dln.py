r"""Deep linear networks (DLNs): model, rank-``r`` true parameters, data, training.

**Model.** Widths :math:`(d_0, \dots, d_L)` and no biases:

.. math:: f(x) = W_L \cdots W_1 x = M(w)\,x,\qquad W_l \in \mathbb R^{d_l \times d_{l-1}}.

Layers are ``nnx.Linear(use_bias=False)``, whose kernel :math:`K_l = W_l^\top` acts on row
vectors (``x @ K_1 @ … @ K_L``), so :math:`M = (K_1 \cdots K_L)^\top` (:func:`product`).

**Data and loss.** :math:`x \sim N(0, I_{d_0})`, :math:`y = M^* x + \sigma\,\varepsilon`,
:math:`\varepsilon \sim N(0, I_{d_L})`, and the per-example loss
:math:`\tfrac12\lVert y - f(x)\rVert^2` (the negative log-likelihood of the unit-variance
Gaussian model, up to a constant). Its expectation is

.. math:: L(w) = \tfrac12 \lVert M(w) - M^*\rVert_F^2 + \tfrac12 \sigma^2 d_L

(:func:`population_loss`).

**Learning coefficient.** With :math:`\operatorname{rank} M^* = r`, Aoyagi (2024) gives the
learning coefficient of the DLN in closed form from the widths and ``r``
(:func:`slt_jax.theory.dln_learning_coefficient`; widths ``(5, 4, 5)`` and ``r = 0`` give
:math:`\lambda = 8`). It is the minimum of the local values over the true parameters;
:func:`true_parameters` builds a point where every layer has rank exactly ``r``, the most
degenerate kind of true parameter, where the local value is expected to attain it.

Example:
  >>> import jax
  >>> from slt_jax.models import dln
  >>> kernels = dln.true_parameters((5, 4, 5), 2, jax.random.key(0))
  >>> int(jax.numpy.linalg.matrix_rank(dln.product(kernels)))
  2
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax._src.io.adapters import nnx_loss
from slt_jax._src.training import minibatch_train


class DeepLinearNetwork(nnx.Module):
    """``x ↦ x @ K_1 @ … @ K_L`` for ``widths = (d_0, …, d_L)``: no biases, no activations.

    Kernels start from ``N(0, init_scale² / d_{l-1})`` entries (LeCun normal times
    ``init_scale``; a small ``init_scale`` gives the stage-wise learning of DLNs).
    """

    def __init__(self, widths: Sequence[int], *, rngs: nnx.Rngs, init_scale: float = 1.0):
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must be at least two positive integers, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        init = nnx.initializers.variance_scaling(init_scale**2, "fan_in", "normal")
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, use_bias=False, kernel_init=init, rngs=rngs)
                for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def matrix(self) -> jax.Array:
        """The end-to-end matrix :math:`M = W_L \\cdots W_1`, shape ``(d_L, d_0)``."""
        return product([layer.kernel[...] for layer in self.layers])

    @classmethod
    def from_kernels(cls, kernels: Sequence[jax.Array]) -> DeepLinearNetwork:
        """A network holding the given kernels (``K_l`` of shape ``(d_{l-1}, d_l)``)."""
        widths = [np.shape(kernels[0])[0], *(np.shape(k)[1] for k in kernels)]
        model = cls(widths, rngs=nnx.Rngs(0))
        for layer, kernel in zip(model.layers, kernels, strict=True):
            layer.kernel[...] = jnp.asarray(kernel, layer.kernel[...].dtype)
        return model


def product(kernels: Sequence[jax.Array]) -> jax.Array:
    """:math:`M = (K_1 \\cdots K_L)^\\top`, the ``(d_L, d_0)`` matrix the kernels compose to."""
    out = kernels[0]
    for kernel in kernels[1:]:
        out = out @ kernel
    return out.T


def true_parameters(
    widths: Sequence[int], rank: int, key, *, scale: float = 1.0
) -> list[jax.Array]:
    r"""Kernels whose product has rank exactly ``rank`` (``0 <= rank <= min(widths)``).

    With Haar-random orthogonal :math:`U_l \in O(d_l)` and :math:`V_l` its first ``r``
    columns, :math:`K_l = V_{l-1} D^{1/L} V_l^\top` where :math:`D = \operatorname{diag}(s)`,
    :math:`s_i` uniform on ``[0.5, 1.5]·scale``. Then
    :math:`K_1 \cdots K_L = V_0 D V_L^\top` (each :math:`V_l^\top V_l = I_r`): the product has
    the ``r`` non-zero singular values :math:`s`, every layer has rank ``r``, and the layers
    are balanced (:math:`K_l^\top K_l = K_{l+1} K_{l+1}^\top`). ``rank = 0`` gives zeros.
    """
    widths = [int(w) for w in widths]
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank must be in [0, min(widths)] = [0, {min(widths)}], got {rank}")
    keys = jax.random.split(key if not isinstance(key, int) else jax.random.key(key), len(widths))
    frames = [
        np.asarray(_haar(k, d), np.float64)[:, :rank] for k, d in zip(keys, widths, strict=True)
    ]
    uniform = jax.random.uniform(jax.random.fold_in(keys[0], 1), (min(widths),))
    values = scale * (np.asarray(uniform, np.float64)[:rank] + 0.5)
    root = values ** (1.0 / (len(widths) - 1))
    return [
        jnp.asarray((a * root) @ b.T, jnp.float32)
        for a, b in zip(frames[:-1], frames[1:], strict=True)
    ]


@functools.partial(jax.jit, static_argnums=1)
def _haar(key: jax.Array, d: int) -> jax.Array:
    """A Haar-distributed orthogonal ``d × d`` matrix (QR of a Gaussian, signs fixed)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, d)))
    return q * jnp.sign(jnp.diagonal(r))


def make_data(
    true_params_or_matrix, n: int, key, noise: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """``(x, y)`` with ``x ~ N(0, I)`` of shape ``(n, d_0)`` and ``y = M x + noise·N(0, I)``.

    ``true_params_or_matrix`` is a list of kernels (as from :func:`true_parameters`) or the
    ``(d_L, d_0)`` matrix ``M`` itself.
    """
    if isinstance(true_params_or_matrix, list | tuple):
        matrix = product(true_params_or_matrix)
    else:
        matrix = jnp.asarray(true_params_or_matrix)
    key = key if not isinstance(key, int) else jax.random.key(key)
    k_x, k_noise = jax.random.split(key)
    x = jax.random.normal(k_x, (n, matrix.shape[1]))
    return x, x @ matrix.T + noise * jax.random.normal(k_noise, (n, matrix.shape[0]))


def per_example_loss(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """``½‖y − f(x)‖²`` per example."""
    return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)


def population_loss(kernels: Sequence[jax.Array], true_matrix, noise: float = 1.0) -> jax.Array:
    """``E[½‖y − M(w)x‖²] = ½‖M(w) − M*‖²_F + ½·noise²·d_L`` under :func:`make_data`."""
    gap = product(list(kernels)) - true_matrix
    return 0.5 * jnp.sum(gap**2) + 0.5 * noise**2 * gap.shape[0]


def _default_data(widths, rank, n, noise, seed):
    """The truth and data set that :func:`train` and :func:`factory` share for a seed."""
    key = jax.random.key(seed)
    truth = true_parameters(widths, rank, jax.random.fold_in(key, 0))
    return make_data(truth, n, jax.random.fold_in(key, 1), noise)


def train(
    widths: Sequence[int] = (5, 4, 5),
    *,
    rank: int = 2,
    n: int = 10_000,
    noise: float = 1.0,
    num_steps: int = 5_000,
    batch_size: int = 128,
    learning_rate: float = 1e-2,
    optimizer: str = "sgd",
    init_scale: float = 0.05,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    num_checkpoints: int = 30,
    data: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[DeepLinearNetwork, dict[str, np.ndarray]]:
    """Train a :class:`DeepLinearNetwork` from a small random init.

    The data default to ``n`` samples of :func:`make_data` around a rank-``rank`` truth from
    :func:`true_parameters`, both drawn from ``seed`` exactly as :func:`factory` draws them.
    Minibatch SGD (``"sgd"``) or Adam (``"adam"``) on the mean of :func:`per_example_loss`.
    With ``checkpoint_dir``, the parameters before step ``s`` (``s = 0``: the init) are saved
    for ``s`` in ``log_spaced_steps(num_steps, num_checkpoints)`` with
    :func:`slt_jax.save_checkpoint`.

    Returns ``(model, history)``: the trained model and ``history["step"]``,
    ``history["loss"]``, the loss on the whole data set at those log-spaced steps.
    """
    data = _default_data(widths, rank, n, noise, seed) if data is None else data
    model = DeepLinearNetwork(widths, rngs=nnx.Rngs(seed), init_scale=init_scale)
    history = minibatch_train(
        model,
        per_example_loss,
        data,
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        key=jax.random.key(seed),
        checkpoint_dir=checkpoint_dir,
        num_checkpoints=num_checkpoints,
    )
    return model, history


def factory(
    widths: Sequence[int] = (5, 4, 5),
    rank: int = 2,
    n: int = 10_000,
    noise: float = 1.0,
    seed: int = 0,
):
    """A model factory for the command line: ``--model slt_jax.models.dln:factory``.

    Returns ``(loss_fn, data, like)``: the mean of :func:`per_example_loss` through a
    :class:`DeepLinearNetwork`, :func:`train`'s default data set for the same arguments, and
    the parameter template its checkpoints load into.
    """
    loss_fn, params = nnx_loss(DeepLinearNetwork(widths, rngs=nnx.Rngs(seed)), per_example_loss)
    return loss_fn, _default_data(widths, rank, n, noise, seed), params
