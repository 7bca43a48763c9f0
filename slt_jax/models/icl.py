r"""In-context linear regression: the data, a small transformer, Bayesian baselines, training.

The setting of Hoogland et al. 2024 ("The developmental landscape of in-context learning",
arXiv:2402.02364) and Carroll et al. 2025 ("Dynamics of transient structure in in-context
linear regression transformers", arXiv:2501.17745), after Raventós et al. 2023
("Pretraining task diversity and the emergence of non-Bayesian in-context learning for
regression", arXiv:2306.15063).

**Data.** Each sequence has its own task :math:`t\in\mathbb R^D` and :math:`K` examples
:math:`x_k \sim N(0, I_D)`, :math:`y_k = t^\top x_k + \varepsilon_k`,
:math:`\varepsilon_k \sim N(0, \sigma^2)`, with :math:`D = 4`, :math:`K = 16`,
:math:`\sigma^2 = 0.125`. Tasks come from :math:`N(0, I_D)` (infinite task diversity) or
uniformly from :math:`M` tasks drawn once from :math:`N(0, I_D)` (:func:`task_set`). The
model reads :math:`2K` tokens of dimension :math:`D+1`, alternating :math:`(0, x_k)` and
:math:`(y_k, 0_D)`; its output at the token of :math:`x_k` predicts :math:`y_k` from
:math:`x_{<k}, y_{<k}, x_k`. The per-sequence loss is :math:`\frac1K\sum_k (\hat y_k -
y_k)^2`; predicting 0 costs :math:`D + \sigma^2` on average.

**Baselines.** Under Gaussian tasks the Bayes-optimal predictor is ridge regression
(:func:`ridge_predictions`); under :math:`M` tasks it is the discrete minimum mean squared
error predictor (:func:`dmmse_predictions`). Transformers trained at intermediate :math:`M`
first approach ridge, then move to dMMSE (the *transient ridge*, Carroll et al. 2025).

Example: the baselines at task diversity ``M = 8`` (dMMSE knows the 8 tasks; ridge does not)
  >>> from slt_jax.models import icl
  >>> tasks = icl.task_set(8)
  >>> xs, ys, _ = icl.sample(jax.random.key(1), 512, tasks=tasks)
  >>> def loss(predictions):
  ...     return float(icl.per_example_loss(predictions, ys).mean())
  >>> dmmse, ridge = icl.dmmse_predictions(xs, ys, tasks), icl.ridge_predictions(xs, ys)
  >>> loss(dmmse) < loss(ridge) < loss(0 * ys)
  True

Training and the LLC of its checkpoints (a few minutes on a CPU)::

  model, history = icl.train(num_tasks=8, num_steps=5000, checkpoint_dir="icl_M8")
  loss_fn, data, like = icl.factory(num_tasks=8)
  checkpoints = sj.load_checkpoint_set("icl_M8", like=like)
  results = sj.estimate_llc_checkpoints(loss_fn, checkpoints, data)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slt_jax.models import _init

DIM = 4
NUM_EXAMPLES = 16
NOISE_VARIANCE = 0.125


class Sequences(NamedTuple):
    """A batch of regression sequences: ``xs`` (B, K, D), ``ys`` (B, K), ``tasks`` (B, D)."""

    xs: jax.Array
    ys: jax.Array
    tasks: jax.Array


def task_set(num_tasks: int, *, dim: int = DIM, seed: int = 0) -> jax.Array:
    """The ``(M, D)`` fixed tasks of task diversity ``M``, drawn once from ``N(0, I_D)``."""
    if num_tasks < 1:
        raise ValueError(f"`num_tasks` must be at least 1, got {num_tasks}.")
    return jax.random.normal(jax.random.key(seed), (num_tasks, dim))


@functools.partial(jax.jit, static_argnames=("batch_size", "dim", "num_examples"))
def sample(
    key: jax.Array,
    batch_size: int,
    *,
    tasks: jax.Array | None = None,
    dim: int = DIM,
    num_examples: int = NUM_EXAMPLES,
    noise_variance: float = NOISE_VARIANCE,
) -> Sequences:
    """``batch_size`` fresh sequences; tasks from ``N(0, I)`` or uniformly from ``tasks``."""
    key_t, key_x, key_e = jax.random.split(key, 3)
    if tasks is None:
        ts = jax.random.normal(key_t, (batch_size, dim))
    else:
        ts = tasks[jax.random.randint(key_t, (batch_size,), 0, tasks.shape[0])]
        dim = tasks.shape[-1]
    xs = jax.random.normal(key_x, (batch_size, num_examples, dim))
    noise = jnp.sqrt(noise_variance) * jax.random.normal(key_e, (batch_size, num_examples))
    return Sequences(xs, jnp.einsum("bkd,bd->bk", xs, ts) + noise, ts)


@jax.jit
def tokens(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """``(..., 2K, D+1)``: the tokens ``(0, x_1), (y_1, 0), …, (0, x_K), (y_K, 0)``."""
    x_tokens = jnp.concatenate([jnp.zeros_like(xs[..., :1]), xs], -1)
    y_tokens = jnp.concatenate([ys[..., None], jnp.zeros_like(xs)], -1)
    paired = jnp.stack([x_tokens, y_tokens], axis=-2)  # (..., K, 2, D+1)
    return paired.reshape(*xs.shape[:-2], 2 * xs.shape[-2], xs.shape[-1] + 1)


@jax.jit
def per_example_loss(predictions: jax.Array, ys: jax.Array) -> jax.Array:
    """``(B,)``: the squared error of the predictions of ``y_k``, averaged over the K positions."""
    return jnp.mean((predictions - ys) ** 2, axis=-1)


def _before(x: jax.Array, axis: int) -> jax.Array:
    """Exclusive cumulative sum along ``axis``: entry ``k`` sums entries ``j < k``."""
    total = jnp.cumsum(x, axis=axis)
    zero = jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
    return jnp.concatenate([zero, jax.lax.slice_in_dim(total, 0, -1, axis=axis)], axis=axis)


@jax.jit
def ridge_predictions(
    xs: jax.Array,
    ys: jax.Array,
    *,
    noise_variance: float = NOISE_VARIANCE,
    prior_variance: float = 1.0,
) -> jax.Array:
    r"""``(..., K)``: the posterior-mean prediction of every ``y_k`` under a Gaussian prior.

    With prior :math:`t\sim N(0, s^2 I)` and noise :math:`\sigma^2`, the posterior mean of
    :math:`t` given the prefix :math:`X_{<k}, y_{<k}` is the ridge estimate

    .. math:: \hat t_k = \bigl(X_{<k}^\top X_{<k} + \tfrac{\sigma^2}{s^2} I\bigr)^{-1}
        X_{<k}^\top y_{<k},\qquad \hat y_k = x_k^\top \hat t_k,

    the Bayes-optimal predictor for Gaussian tasks (:math:`s^2 = 1`); :math:`\hat y_1 = 0`.
    As :math:`s^2\to\infty` it becomes least squares once :math:`k - 1 \ge D`.
    """
    gram = _before(xs[..., :, None] * xs[..., None, :], axis=-3)  # (..., K, D, D)
    moment = _before(xs * ys[..., None], axis=-2)  # (..., K, D)
    eye = jnp.eye(xs.shape[-1], dtype=xs.dtype)
    t_hat = jnp.linalg.solve(gram + (noise_variance / prior_variance) * eye, moment[..., None])
    return jnp.sum(t_hat[..., 0] * xs, axis=-1)


@jax.jit
def dmmse_predictions(
    xs: jax.Array, ys: jax.Array, tasks: jax.Array, *, noise_variance: float = NOISE_VARIANCE
) -> jax.Array:
    r"""``(..., K)``: the posterior-mean prediction of every ``y_k`` under a uniform prior on
    ``tasks`` (the discrete minimum mean squared error predictor of Raventós et al. 2023).

    .. math:: w_{k,m} = \operatorname{softmax}_m\Bigl(-\tfrac{1}{2\sigma^2}
        \sum_{j<k} (y_j - t_m^\top x_j)^2\Bigr),\qquad
        \hat y_k = \sum_m w_{k,m}\, t_m^\top x_k.

    Memory is ``batch × K × M`` floats.
    """
    per_task = jnp.einsum("...kd,md->...km", xs, tasks)
    misfit = _before((ys[..., None] - per_task) ** 2, axis=-2)
    weights = jax.nn.softmax(-misfit / (2.0 * noise_variance), axis=-1)
    return jnp.sum(weights * per_task, axis=-1)


@jax.jit
def distance_to(model_predictions: jax.Array, baseline_predictions: jax.Array) -> jax.Array:
    """The mean squared difference of two predictors' outputs on the same probe batch."""
    return jnp.mean((model_predictions - baseline_predictions) ** 2)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention with a fused ``(d_model, 3, H, d_head)`` QKV kernel
    and an ``(H, d_head, d_model)`` output kernel: the head axis is explicit in both."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide d_model={d_model}.")
        d_head = d_model // num_heads
        # lecun_normal(in_axis=0, out_axis=(1, 2, 3)) and (in_axis=(0, 1), out_axis=2): the
        # same values, drawn as matrices (compiled faster)
        qkv_init = _init.as_matrix(jax.nn.initializers.lecun_normal())
        out_init = _init.as_matrix(jax.nn.initializers.lecun_normal(), num_in_axes=2)
        self.qkv = nnx.Param(qkv_init(rngs.params(), (d_model, 3, num_heads, d_head)))
        self.out = nnx.Param(out_init(rngs.params(), (num_heads, d_head, d_model)))

    def __call__(self, h: jax.Array) -> jax.Array:
        q, k, v = jnp.moveaxis(jnp.einsum("...td,dche->...tche", h, self.qkv[...]), -3, 0)
        scores = jnp.einsum("...qhe,...khe->...hqk", q, k) / jnp.sqrt(q.shape[-1])
        length = h.shape[-2]
        causal = jnp.tril(jnp.ones((length, length), bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        mixed = jnp.einsum("...hqk,...khe->...qhe", jax.nn.softmax(scores, axis=-1), v)
        return jnp.einsum("...qhe,hed->...qd", mixed, self.out[...])


class Block(nnx.Module):
    """A pre-LayerNorm transformer block: ``h + attn(LN h)``, then ``h + MLP(LN h)``."""

    def __init__(self, d_model: int, num_heads: int, d_mlp: int, *, rngs: nnx.Rngs):
        self.ln_attn = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs)
        self.ln_mlp = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, d_mlp, rngs=rngs)
        self.mlp_out = nnx.Linear(d_mlp, d_model, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        h = h + self.attn(self.ln_attn(h))
        return h + self.mlp_out(jax.nn.relu(self.mlp_in(self.ln_mlp(h))))


class ICLTransformer(nnx.Module):
    """A pre-LayerNorm causal transformer for in-context regression (Hoogland et al. 2024).

    Tokens ``(..., 2K, D+1)`` (see :func:`tokens`) are embedded linearly, a learned
    positional embedding is added, ``num_layers`` :class:`Block` s follow, then a final
    LayerNorm and a scalar head read at the x-token positions: the output ``(..., K)`` is
    the prediction of every ``y_k``. Defaults follow the papers at their smallest scale:
    2 layers, 4 heads, width 64, MLP width 64. Parameter paths: ``embed``, ``position``,
    ``blocks/{i}/attn/qkv`` (head axis -2), ``blocks/{i}/attn/out`` (head axis 0), …
    """

    def __init__(
        self,
        *,
        dim: int = DIM,
        num_examples: int = NUM_EXAMPLES,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        d_mlp: int = 64,
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Linear(dim + 1, d_model, rngs=rngs)
        init = jax.nn.initializers.normal(0.02)
        self.position = nnx.Param(init(rngs.params(), (2 * num_examples, d_model)))
        self.blocks = nnx.List(
            [Block(d_model, num_heads, d_mlp, rngs=rngs) for _ in range(num_layers)]
        )
        self.ln_final = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, 1, rngs=rngs)

    def __call__(self, toks: jax.Array) -> jax.Array:
        h = self.embed(toks) + self.position[: toks.shape[-2]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_final(h))[..., 0::2, 0]


@nnx.jit
def predict(model: ICLTransformer, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """``(..., K)``: the model's prediction of every ``y_k`` (``model(tokens(xs, ys))``)."""
    return model(tokens(xs, ys))


def head_refinements(params) -> dict:
    """``{"layer{i}/head{h}": mask}``: one weight refinement per attention head (its slice
    of the fused QKV and output kernels), for :func:`slt_jax.estimate_refined_llc`
    (Wang et al. 2024, arXiv:2410.02984). Built with :func:`slt_jax.refine.head_masks`."""
    from slt_jax._src.refine import head_masks

    _, config = _architecture(params)
    result = {}
    for i in range(config["num_layers"]):
        weights = {f"blocks/{i}/attn/qkv": -2, f"blocks/{i}/attn/out": 0}
        result.update(head_masks(params, weights, config["num_heads"], prefix=f"layer{i}/head"))
    return result


def _architecture(params) -> tuple[dict, dict]:
    """``({path: leaf}, ICLTransformer keyword arguments)`` read off a parameter pytree."""
    from slt_jax._src.refine import path_string

    flat = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    qkv = np.shape(flat["blocks/0/attn/qkv"])
    config = dict(
        dim=np.shape(flat["embed/kernel"])[0] - 1,
        num_examples=np.shape(flat["position"])[0] // 2,
        d_model=qkv[0],
        num_heads=qkv[2],
        num_layers=sum(name.endswith("/attn/qkv") for name in flat),
        d_mlp=np.shape(flat["blocks/0/mlp_in/kernel"])[1],
    )
    return flat, config


@functools.lru_cache(maxsize=16)
def _skeleton(config: tuple) -> tuple:
    """The graph definition and abstract parameter state of one architecture."""
    model = nnx.eval_shape(lambda: ICLTransformer(**dict(config), rngs=nnx.Rngs(0)))
    return nnx.split(model, nnx.Param)


def apply_fn(params, probe: jax.Array) -> jax.Array:
    """``(B, K)`` outputs of the transformer with ``params`` on the probe tokens ``(B, 2K,
    D+1)``: the ``apply_fn`` of :mod:`slt_jax.dynamics` (essential dynamics).

    ``params`` holds an :class:`ICLTransformer`'s parameters: an ``nnx.State`` (e.g. a
    checkpoint loaded with ``like=factory()[2]``) or any pytree with the same ``/``-joined
    leaf paths (e.g. loaded without ``like``). The architecture is read off the shapes.
    """
    from slt_jax._src.refine import path_string

    flat, config = _architecture(params)
    graphdef, template = _skeleton(tuple(config.items()))
    paths = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
    state = jax.tree.unflatten(jax.tree.structure(template), [flat[p] for p in paths])
    return nnx.merge(graphdef, state)(probe)


def _build(seed: int, num_tasks: int | None, task_seed: int, model_config: dict):
    """A fresh model and ``draw(key, batch_size)``, the sampler of its training sequences."""
    model = ICLTransformer(rngs=nnx.Rngs(seed), **model_config)
    dim, num_examples = model.embed.in_features - 1, model.position.shape[0] // 2
    tasks = None if num_tasks is None else task_set(num_tasks, dim=dim, seed=task_seed)
    return model, functools.partial(sample, tasks=tasks, dim=dim, num_examples=num_examples)


def train(
    num_tasks: int | None = None,
    num_steps: int = 5000,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    num_checkpoints: int = 50,
    *,
    checkpoint_steps: Sequence[int] | None = None,
    task_seed: int = 0,
    **model_config,
) -> tuple[ICLTransformer, dict[str, np.ndarray]]:
    """Train an :class:`ICLTransformer` with Adam on fresh sequences at every step.

    The papers' recipe (Hoogland et al. 2024, Carroll et al. 2025) at laptop scale: every
    step draws ``batch_size`` new sequences, tasks from ``N(0, I)`` (``num_tasks=None``) or
    from :func:`task_set` ``(num_tasks, seed=task_seed)``, and takes one Adam step on the
    mean of :func:`per_example_loss`. With ``checkpoint_dir``, the parameters before step
    ``s`` (``nnx.state(model, nnx.Param)``) are saved for ``s`` in
    :func:`slt_jax.examples.log_spaced_steps` ``(num_steps, num_checkpoints)``, or in
    ``checkpoint_steps`` if given, the end included. ``model_config`` goes to
    :class:`ICLTransformer`.

    Returns ``(model, history)``: the trained model and ``history["step"]``,
    ``history["loss"]``, the training loss of every step's batch (before its update).
    """
    from slt_jax._src.io.checkpoints import save_checkpoint
    from slt_jax._src.training import checkpoint_schedule

    model, draw = _build(seed, num_tasks, task_seed, model_config)
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    data_key = jax.random.fold_in(jax.random.key(seed), 1)

    @jax.jit
    def step(params, opt_state, s):
        xs, ys, _ = draw(jax.random.fold_in(data_key, s), batch_size)

        def loss_fn(p):
            predictions = nnx.merge(graphdef, p)(tokens(xs, ys))
            return jnp.mean(per_example_loss(predictions, ys))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    schedule = checkpoint_schedule(num_steps, num_checkpoints, checkpoint_steps)
    saves = set(schedule) if checkpoint_dir else set()
    losses = []
    for s in range(num_steps + 1):
        if s in saves:
            save_checkpoint(checkpoint_dir, s, params)
        if s < num_steps:
            params, opt_state, loss = step(params, opt_state, s)
            losses.append(loss)
    nnx.update(model, params)
    history = {
        "step": np.arange(num_steps),
        "loss": np.asarray(jnp.stack(losses)) if losses else np.zeros(0),
    }
    return model, history


def factory(
    num_tasks: int | None = None,
    n: int = 2048,
    seed: int = 0,
    *,
    task_seed: int = 0,
    **model_config,
):
    """``(loss_fn, data, like)`` for the LLC: ``--model slt_jax.models.icl:factory``.

    ``data = (tokens, ys)`` holds ``n`` fixed sequences from the training distribution
    (tasks from ``N(0, I)``, or from :func:`task_set` ``(num_tasks, seed=task_seed)`` as
    in :func:`train`); ``loss_fn(params, batch)`` is the mean of :func:`per_example_loss`
    for an :class:`ICLTransformer` built with ``model_config`` (pass the one given to
    :func:`train`); ``like`` is its parameter template, e.g. for
    ``sj.load_checkpoint_set(directory, like=like)``.
    """
    from slt_jax._src.io.adapters import nnx_loss

    model, draw = _build(seed, num_tasks, task_seed, model_config)
    xs, ys, _ = draw(jax.random.fold_in(jax.random.key(seed), 2), n)
    loss_fn, like = nnx_loss(model, per_example_loss)
    return loss_fn, (np.asarray(tokens(xs, ys)), np.asarray(ys)), like
