r"""Optimizer inductive bias: classifiers trained by different optimizers, and their LLCs.

Lau et al. 2023 ("Quantifying degeneracy in singular models via the learning coefficient",
arXiv:2308.12108, §6) trained the same MNIST network with different stochastic optimizers
and found that the local learning coefficient at the end of training separates them:
optimizers differ in how degenerate the minima they find are, which the loss and the
accuracy alone do not show. This module is that experiment at laptop scale: a ReLU MLP on
scikit-learn's digits (shipped) or MNIST (:func:`slt_jax.examples.load_mnist_idx`), trained
with

- ``"sgd"``: minibatch SGD;
- ``"momentum"``: SGD with heavy-ball momentum 0.9;
- ``"adam"``: Adam (Kingma & Ba 2015);
- ``"entropy-sgd"``: Entropy-SGD (Chaudhari et al. 2017, "Entropy-SGD: biasing gradient
  descent into wide valleys", arXiv:1611.01838), :func:`entropy_sgd_step`.

Every optimizer gets the same number of minibatch gradients (``num_gradients``): Entropy-SGD
spends ``inner_steps`` of them per outer step.

**Entropy-SGD.** For the loss :math:`f`, the coupling :math:`\gamma` and the temperature
:math:`\tau`, the *local entropy* of :math:`x` is :math:`F(x) = \tau\log\int
\exp(-[f(x') + \tfrac\gamma2\|x - x'\|^2]/\tau)\,dx'`; its gradient is
:math:`-\gamma(x - \mu(x))` where :math:`\mu(x)` is the mean of the Gibbs measure
:math:`\propto \exp(-[f(x') + \tfrac\gamma2\|x - x'\|^2]/\tau)`. Each outer step estimates
:math:`\mu` by ``inner_steps`` of SGLD on that measure, started at :math:`x`, with the
exponential average :math:`\mu \leftarrow (1 - \alpha)\mu + \alpha x'`, then moves
:math:`x \leftarrow x - \eta\gamma(x - \mu)`. Maximising local entropy prefers wide
valleys: more degenerate minima, hence (the hypothesis of Lau et al.) lower LLC.

Example: on :math:`f(x) = \tfrac a2 x^2` the Gibbs measure is Gaussian with mean
:math:`\gamma x/(a + \gamma)`, which the inner loop estimates
  >>> import jax, jax.numpy as jnp
  >>> from slt_jax.models import optimizer_bias as ob
  >>> a, gamma, x = 4.0, 1.0, jnp.array([1.0])
  >>> def grad(w, key):
  ...     return a * w
  >>> mu = ob.gibbs_mean(grad, x, jax.random.key(0), steps=20_000, step_size=0.01,
  ...                    coupling=gamma, temperature=1e-3, average=1e-3)
  >>> round(float(mu[0]), 2), gamma * float(x[0]) / (a + gamma)
  (0.2, 0.2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slt_jax._src.io.adapters import nnx_loss
from slt_jax._src.training import log_spaced_steps
from slt_jax.models.digits import MLP, load_digits

PyTree = Any
OPTIMIZERS = ("sgd", "momentum", "adam", "entropy-sgd")


def split(
    data: tuple[np.ndarray, np.ndarray] | None = None, *, test_fraction: float = 0.25, seed=0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(train, test)``: a seeded random split of ``data`` (default: the digits)."""
    x, y = load_digits() if data is None else data
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(test_fraction * len(x)))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of integer labels, per example."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def accuracy(model: nnx.Module, data: tuple[np.ndarray, np.ndarray]) -> float:
    """The fraction of ``data`` the classifier ``model`` labels correctly."""
    x, y = data
    return float(jnp.mean(jnp.argmax(model(jnp.asarray(x)), -1) == jnp.asarray(y)))


def gibbs_mean(
    grad: Callable[[PyTree, jax.Array], PyTree],
    x: PyTree,
    key: jax.Array,
    *,
    steps: int,
    step_size: float,
    coupling: float,
    temperature: float,
    average: float,
) -> PyTree:
    r"""Estimate the mean of :math:`\propto \exp(-[f(x') + \frac\gamma2\|x - x'\|^2]/\tau)`.

    ``steps`` SGLD steps on :math:`x'` from :math:`x`:
    :math:`x' \leftarrow x' - \eta'(\nabla f(x') + \gamma(x' - x)) + \sqrt{2\eta'\tau}\,\xi`
    (the Langevin discretisation of the measure above), with ``grad(w,
    key)`` a (minibatch) gradient of :math:`f`, ``step_size`` :math:`\eta'`, ``coupling``
    :math:`\gamma`, ``temperature`` :math:`\tau`; returns the exponential average
    :math:`\mu \leftarrow (1 - \alpha)\mu + \alpha x'` with ``average`` :math:`\alpha`,
    started at :math:`\mu = x`. Jittable.
    """

    def step(carry, k):
        xp, mu = carry
        k_grad, k_noise = jax.random.split(k)
        g = grad(xp, k_grad)
        leaves, tree = jax.tree.flatten(xp)
        keys = jax.random.split(k_noise, len(leaves))
        noise = jax.tree.unflatten(
            tree,
            [jax.random.normal(kk, a.shape, a.dtype) for kk, a in zip(keys, leaves, strict=True)],
        )
        xp = jax.tree.map(
            lambda w, gw, c, z: (
                w
                - step_size * (gw + coupling * (w - c))
                + jnp.sqrt(2 * step_size * temperature) * z
            ),
            xp,
            g,
            x,
            noise,
        )
        mu = jax.tree.map(lambda m, w: (1 - average) * m + average * w, mu, xp)
        return (xp, mu), None

    (_, mu), _ = jax.lax.scan(step, (x, x), jax.random.split(key, steps))
    return mu


def entropy_sgd_step(
    grad: Callable[[PyTree, jax.Array], PyTree],
    x: PyTree,
    key: jax.Array,
    *,
    learning_rate: float,
    inner_steps: int,
    inner_step_size: float,
    coupling: float,
    temperature: float,
    average: float,
) -> PyTree:
    r"""One outer step of Entropy-SGD: :math:`x - \eta\gamma(x - \mu(x))`, :math:`\mu` from
    :func:`gibbs_mean`. With :math:`\eta\gamma = 1` the step moves :math:`x` to :math:`\mu`."""
    mu = gibbs_mean(
        grad,
        x,
        key,
        steps=inner_steps,
        step_size=inner_step_size,
        coupling=coupling,
        temperature=temperature,
        average=average,
    )
    return jax.tree.map(lambda w, m: w - learning_rate * coupling * (w - m), x, mu)


def train(
    optimizer: str,
    *,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    widths: tuple[int, ...] = (64, 32, 10),
    num_gradients: int = 4000,
    batch_size: int = 64,
    learning_rate: float | None = None,
    seed: int = 0,
    inner_steps: int = 5,
    coupling: float = 1.0,
    temperature: float = 1e-4,
    num_records: int = 12,
) -> tuple[MLP, dict[str, np.ndarray]]:
    r"""Train an :class:`slt_jax.examples.MLP` with ``optimizer`` (one of :data:`OPTIMIZERS`).

    ``data`` is the training set and ``test`` the held-out set, both or neither (default:
    the two parts of :func:`split` of the digits). ``learning_rate`` defaults to 0.1 for SGD and
    Entropy-SGD's inner steps, 0.01 for momentum and 3e-3 for Adam. Each of the
    ``num_gradients`` minibatch gradients (batch ``batch_size``, drawn with replacement from
    ``fold_in(seed key, step)``) is one step of SGD, momentum or Adam; Entropy-SGD takes
    ``num_gradients // inner_steps`` outer steps (:func:`entropy_sgd_step` with outer rate
    ``1/coupling``, so that each outer step moves to the estimated :math:`\mu`, and
    ``average = 0.75``, the given ``coupling`` and ``temperature``).

    Returns ``(model, history)``: ``history["gradients"]`` (gradients spent),
    ``history["loss"]`` (full training loss) and ``history["test_accuracy"]`` at
    ``num_records`` log-spaced points (``history["step"]``: the optimizer steps there).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.")
    if (data is None) != (test is None):
        raise ValueError(
            "give both `data` and `test` (e.g. from `split(your_data)`), or neither for the "
            "digits split: a default test set would not match your training data."
        )
    if data is None:
        data, test = split()
    if optimizer == "entropy-sgd" and num_gradients < inner_steps:
        raise ValueError(
            f"num_gradients {num_gradients} < inner_steps {inner_steps}: Entropy-SGD would "
            "take no step."
        )
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
    model = MLP(tuple(widths), rngs=nnx.Rngs(seed))
    loss_fn, params = nnx_loss(model, per_example_loss)
    # nnx.Rngs(seed) draws the initialisation from fold_in(key(seed), count): keep the
    # minibatch keys on a separate branch so they never repeat an initialiser's key.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2**31 - 1), 1)
    default_rate = {"sgd": 0.1, "momentum": 0.01, "adam": 3e-3, "entropy-sgd": 0.1}
    rate = default_rate[optimizer] if learning_rate is None else learning_rate

    def minibatch_grad(p, k):
        idx = jax.random.randint(k, (batch_size,), 0, len(x))
        return jax.grad(loss_fn)(p, (x[idx], y[idx]))

    if optimizer == "entropy-sgd":
        per_step = inner_steps

        def update(p, state, step):
            p = entropy_sgd_step(
                minibatch_grad,
                p,
                jax.random.fold_in(key, step),
                learning_rate=1.0 / coupling,
                inner_steps=inner_steps,
                inner_step_size=rate,
                coupling=coupling,
                temperature=temperature,
                average=0.75,
            )
            return p, state

        state = ()
    else:
        per_step = 1
        transform = {
            "sgd": lambda: optax.sgd(rate),
            "momentum": lambda: optax.sgd(rate, momentum=0.9),
            "adam": lambda: optax.adam(rate),
        }[optimizer]()

        def update(p, state, step):
            grads = minibatch_grad(p, jax.random.fold_in(key, step))
            updates, state = transform.update(grads, state, p)
            return optax.apply_updates(p, updates), state

        state = transform.init(params)

    @jax.jit
    def run(p, state, start, stop):
        return jax.lax.fori_loop(start, stop, lambda s, c: update(*c, s), (p, state))

    num_steps = num_gradients // per_step
    history: dict[str, list] = {"step": [], "gradients": [], "loss": [], "test_accuracy": []}
    full_loss, done = jax.jit(loss_fn), 0
    for stop in log_spaced_steps(num_steps, num_records):
        params, state = run(params, state, done, stop)
        done = stop
        nnx.update(model, params)
        history["step"].append(stop)
        history["gradients"].append(stop * per_step)
        history["loss"].append(float(full_loss(params, (x, y))))
        history["test_accuracy"].append(accuracy(model, test))
    return model, {name: np.asarray(values) for name, values in history.items()}


def factory(
    data: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    widths: tuple[int, ...] = (64, 32, 10),
    seed: int = 0,
):
    """``(loss_fn, data, like)`` for the LLC of :func:`train`'s models on their training
    data (default: the train part of :func:`split`): ``--model
    slt_jax.models.optimizer_bias:factory``."""
    data = split()[0] if data is None else data
    loss_fn, like = nnx_loss(MLP(tuple(widths), rngs=nnx.Rngs(seed)), per_example_loss)
    return loss_fn, data, like
