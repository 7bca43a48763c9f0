"""PyTorch modules as pure JAX functions, through torchax: ``(forward, params)`` and
``(loss_fn, params)`` for any ``torch.nn.Module`` whose forward torchax can lower.

The module's trainable parameters become a dict of JAX arrays keyed by their state-dict
names (each tied weight once); buffers and frozen parameters are held fixed inside the
function, so the samplers never put noise on them. The forward runs in eval mode with a
fixed PRNG key, so it is a deterministic function of ``(params, inputs)`` that ``jit``,
``grad`` and ``vmap`` accept. See docs/torch.md.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.io.adapters import PerExampleLoss, _mean_loss

_INSTALL_HINT = 'pip install "slt-jax[torch]"'
_LOWERING_NOTE = (
    "(raised in the forward of {name} run by the slt_jax torch bridge, through torchax: "
    "docs/torch.md lists what cannot be lowered, e.g. .item()/.cpu() or Python control "
    "flow on tensor values under jit, ops without a torchax lowering, custom kernels)"
)

# The operator overloads torchax 0.0.13 names that this torch does not have, as
# "namespace::op.overload", filled by the import shim (empty when torchax imports as is).
_SKIPPED_OPS: list[str] = []
_IMPORT_LOCK = threading.Lock()  # one shim at a time: nested patches would not unwind


class _SkippedOverload:
    """Stands in for an operator overload torch no longer has, while torchax registers its
    op table: a unique, hashable key that no call dispatches to, so the registration is a
    no-op and every other op keeps its lowering."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<overload {self.name} missing from this torch; skipped by slt_jax>"


@contextlib.contextmanager
def _tolerate_missing_overloads():
    """While active, ``torch.ops.<ns>.<op>.<overload>`` for an overload this torch lacks
    gives a :class:`_SkippedOverload` (recorded in ``_SKIPPED_OPS``) instead of raising.

    torchax builds its tables (``amp.autocast_policy``, the ``@op(...)`` registrations of
    ``ops/jaten.py``, ``decompositions.DECOMPOSITIONS``) from such attribute lookups, at
    import and when its default environment loads its ops; torch 2.13 dropped the
    named-tensor (``Dimname``) overloads some of them name. Only the lookup of a missing
    *overload* is tolerated (a missing op, a dunder name, anything else still raises), and
    only inside this block: ``OpOverloadPacket.__getattr__`` is restored on exit.
    """
    import torch._ops

    packet = torch._ops.OpOverloadPacket
    original = packet.__getattr__

    def tolerant(self, key):
        try:
            return original(self, key)
        except AttributeError:
            if key.startswith("__"):
                raise
            name = f"{self._qualified_op_name}.{key}"
            if name not in _SKIPPED_OPS:
                _SKIPPED_OPS.append(name)
            return _SkippedOverload(name)

    packet.__getattr__ = tolerant
    try:
        yield
    finally:
        packet.__getattr__ = original


def import_torchax():
    """``torchax``, imported (and its default environment built, which loads its op
    tables) under the shim that lets torchax 0.0.13 load on torch 2.13; see
    :func:`skipped_ops` for what it skips. Import torchax through this (or through
    ``sj.torch_forward``) before any plain ``import torchax``, which fails on torch 2.13.

    Raises:
      ImportError: torch or torchax is not installed (``pip install "slt-jax[torch]"``).
    """
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise ImportError(f"The torch bridge needs PyTorch and torchax: {_INSTALL_HINT}") from error
    with _IMPORT_LOCK:
        torchax = sys.modules.get("torchax")
        if torchax is not None and getattr(torchax, "_env", None) is not None:
            return torchax
        with _tolerate_missing_overloads():
            try:
                torchax = importlib.import_module("torchax")
            except ImportError as error:
                raise ImportError(f"The torch bridge needs torchax: {_INSTALL_HINT}") from error
            torchax.default_env()
        return torchax


def skipped_ops() -> tuple[str, ...]:
    """The operator overloads (``"aten::prod.dim_Dimname"``, …) that torchax names and this
    torch lacks, which the import shim skipped: calls to them cannot be lowered (on torch
    2.13 they are all named-tensor overloads, which torch itself no longer has). Empty
    before the first import through :func:`import_torchax` or when nothing was missing."""
    return tuple(_SKIPPED_OPS)


def _require_module(module) -> None:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"Expected a torch.nn.Module, got {type(module).__name__}.")


@contextlib.contextmanager
def _eval_mode(module, enabled: bool):
    """``module`` and all its submodules in eval mode for the block, flags restored after."""
    if not enabled:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, training in flags:
            m.training = training


def _safe_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    env=None,
):
    """torchax's ``scaled_dot_product_attention`` with torch's treatment of a query that
    may attend to no key (a left-padded position): its output is zero, as torch's safe
    softmax gives, instead of the NaN of a softmax over ``-inf`` only (which the next
    layer spreads to every position of the sequence, in values and in gradients)."""
    import torch
    from torchax.ops import jtorch

    if attn_mask is None or is_causal:
        return jtorch._sdpa_reference(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
        )
    if attn_mask.dtype == torch.bool:
        empty = ~attn_mask.any(dim=-1, keepdim=True)
        safe_mask = attn_mask | empty
    else:
        empty = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)
        safe_mask = torch.where(empty, torch.zeros_like(attn_mask), attn_mask)
    out = jtorch._sdpa_reference(
        query, key, value, safe_mask, dropout_p, is_causal, scale, enable_gqa
    )
    return torch.where(empty, torch.zeros_like(out), out)


@contextlib.contextmanager
def _torch_attention_semantics(env):
    """Route ``scaled_dot_product_attention`` (the torch function and the aten op) to
    :func:`_safe_attention` for the block, restoring torchax's own lowering after."""
    import torch
    from torchax.ops import ops_registry

    ops = (
        torch.nn.functional.scaled_dot_product_attention,
        torch.ops.aten.scaled_dot_product_attention,
    )
    previous = {op: env._ops.get(op) for op in ops}
    for op in ops:
        env._ops[op] = ops_registry.Operator(
            op,
            _safe_attention,
            is_jax_function=False,
            is_user_defined=True,
            needs_env=True,
            is_view_op=False,
        )
    try:
        yield
    finally:
        for op, operator in previous.items():
            if operator is None:
                env._ops.pop(op, None)
            else:
                env._ops[op] = operator


def _select_output(result, output):
    """The JAX pytree to return from the module's (converted) output."""
    if callable(output):
        return output(result)
    if isinstance(output, str):
        if isinstance(result, Mapping) and output in result:
            return result[output]
        if not hasattr(result, output):
            raise AttributeError(
                f"The module's output ({type(result).__name__}) has no {output!r} to select."
            )
        return getattr(result, output)
    if output is not None:
        raise TypeError("`output` must be None, an attribute name or a callable.")
    if _is_model_output(result):
        if getattr(result, "logits", None) is None:
            raise ValueError(
                f"The module returned a {type(result).__name__} without logits: pass "
                "output= (an attribute name or a callable) to choose what to return."
            )
        return result.logits
    return result


def _is_model_output(value) -> bool:
    return any(cls.__name__ == "ModelOutput" for cls in type(value).__mro__)


def split_module(module):
    """``(params, fixed)``: the trainable parameters (each tied weight once, under its first
    state-dict name) and the buffers and frozen parameters, both as torch tensors by name."""
    params, fixed = {}, {}
    for name, value in module.named_parameters(remove_duplicate=True):
        (params if value.requires_grad else fixed)[name] = value
    for name, value in module.named_buffers(remove_duplicate=True):
        fixed[name] = value
    return params, fixed


def functional_forward(module, names, fixed: dict, *, eval_mode: bool, output=None, prepare=None):
    """The pure JAX ``forward(params, *args, **kwargs)`` of ``module``, ``params`` a dict
    with keys ``names``, with ``fixed`` (JAX arrays by name) held constant; ``prepare`` is
    an optional context-manager factory entered around each call (the TransformerLens
    adapter sets its device there)."""
    import torch

    torchax = import_torchax()
    env = torchax.default_env()
    key = jax.random.key(0)

    def to_jax(value):
        if isinstance(value, torch.Tensor):
            return jnp.asarray(value.detach().cpu().numpy())
        if isinstance(value, np.ndarray):
            return jnp.asarray(value)
        return value

    names = frozenset(names)

    def forward(params, *args, **kwargs):
        if not isinstance(params, Mapping):
            raise TypeError(
                f"`params` must be a dict of arrays by parameter name, got {type(params).__name__}."
            )
        if set(params) != names:
            raise ValueError(
                "`params` must have the keys of the params torch_forward returned; missing "
                f"{sorted(names - set(params))[:5]}, unexpected {sorted(set(params) - names)[:5]}."
            )
        tensors = {**fixed, **params}
        args, kwargs = jax.tree.map(to_jax, (args, kwargs))
        # A fixed key per call: random ops (dropout in train mode) never touch torchax's
        # global key, which under jit would leak a tracer into later calls.
        with (
            env.override_property(prng=key),
            _torch_attention_semantics(env),
            _eval_mode(module, eval_mode),
            prepare() if prepare is not None else contextlib.nullcontext(),
        ):
            tensors, args, kwargs = env.j2t_iso((tensors, args, kwargs))
            # torch.device("jax"): tensors the forward creates without a device are traced
            # too, instead of CPU tensors that torchax refuses to mix with traced ones.
            with env, torch.no_grad(), torch.device("jax"):
                try:
                    result = torch.func.functional_call(
                        module, tensors, tuple(args), kwargs, tie_weights=True, strict=False
                    )
                except Exception as error:
                    error.add_note(_LOWERING_NOTE.format(name=type(module).__name__))
                    raise
            result = env.t2j_iso(result)
        result = _select_output(result, output)
        if isinstance(result, Mapping) and not isinstance(result, dict):
            result = dict(result)
        return result

    return forward


def _to_jax_dict(env, tensors: dict) -> dict:
    return {name: env.t2j_copy(value.detach()) for name, value in tensors.items()}


def torch_forward(module, *, eval_mode: bool = True, output: str | Callable | None = None):
    """``(forward, params)``: a torch module's forward as a pure JAX function.

    ``forward(params, *args, **kwargs)`` runs ``module(*args, **kwargs)`` with its trainable
    parameters replaced by ``params`` — a dict ``{state-dict name: jax.Array}`` holding
    each ``nn.Parameter`` with ``requires_grad`` once (a tied weight under its first name:
    GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``). Buffers (rotary
    ``inv_freq``, causal masks) and frozen parameters are constants of the function, so an
    LLC estimate perturbs the parameters only. Arguments may be JAX or NumPy arrays (or
    torch tensors, copied once); outputs come back as JAX pytrees. The function can be
    ``jit``-ed, differentiated and ``vmap``-ed over a batch of parameter sets. Ops torchax
    cannot lower fail at trace time (docs/torch.md lists the common ones).

    A language model plugs into the token-window loss as
    ``sj.lm.next_token_loss(*sj.torch_forward(model))``.

    Args:
      module: a ``torch.nn.Module``; it is not modified (its parameters are swapped for
        traced values only during a call, its train/eval flags restored after).
      eval_mode: run the module in eval mode (Dropout off, BatchNorm on running
        statistics), as the estimators need a deterministic loss. With ``False`` the
        module's own flags are used and random ops draw from a fixed key (the same
        dropout mask at every call).
      output: what to return: ``None`` gives the module's output, or the ``.logits`` of a
        Hugging Face ``ModelOutput``; a string selects that attribute (or key); a callable
        is applied to the converted output and must return a JAX pytree.

    Returns:
      ``(forward, params)``.

    Raises:
      TypeError: ``module`` is not a ``torch.nn.Module``.
      ValueError: the module has no trainable parameters.
      ImportError: torch or torchax is missing (``pip install "slt-jax[torch]"``).

    Example:
      >>> import torch, jax.numpy as jnp, slt_jax as sj
      >>> forward, params = sj.torch_forward(torch.nn.Linear(3, 2))
      >>> sorted(params)
      ['bias', 'weight']
      >>> forward(params, jnp.ones((4, 3))).shape
      (4, 2)
    """
    import_torchax()
    _require_module(module)
    if is_tlens_module(module):
        raise TypeError(
            f"{type(module).__name__} is a TransformerLens model: use sj.tlens_forward (it "
            "keeps cfg.device from copying traced values to the host)."
        )
    return bridge(module, eval_mode=eval_mode, output=output)


def is_tlens_module(module) -> bool:
    """Whether ``module`` is a TransformerLens model (a ``transformer_lens`` class with a
    ``cfg``), without importing TransformerLens."""
    return type(module).__module__.startswith("transformer_lens") and hasattr(module, "cfg")


def bridge(module, *, eval_mode: bool, output=None, prepare=None):
    """``(forward, params)`` of :func:`torch_forward` for a checked ``module``; ``prepare``
    is an optional context-manager factory entered around each call."""
    torchax = import_torchax()
    _require_module(module)
    params, fixed = split_module(module)
    if not params:
        raise ValueError(
            f"{type(module).__name__} has no trainable parameters (nn.Parameter with "
            "requires_grad=True): there is nothing to estimate an LLC over."
        )
    env = torchax.default_env()
    forward = functional_forward(
        module,
        params,
        _to_jax_dict(env, fixed),
        eval_mode=eval_mode,
        output=output,
        prepare=prepare,
    )
    return forward, _to_jax_dict(env, params)


def call_with_inputs(forward, params, inputs):
    """``forward(params, **inputs)`` for a dict of inputs, else ``forward(params, inputs)``."""
    if isinstance(inputs, dict):
        return forward(params, **inputs)
    return forward(params, inputs)


def torch_loss(
    module,
    per_example_loss: PerExampleLoss,
    *,
    eval_mode: bool = True,
    output: str | Callable | None = None,
):
    """``(loss_fn, params)`` for a torch module, the contract of :func:`slt_jax.nnx_loss`.

    ``loss_fn(params, (inputs, targets)) = mean(per_example_loss(forward(params, inputs),
    targets))`` with ``forward, params = sj.torch_forward(module, eval_mode=eval_mode,
    output=output)``; ``per_example_loss`` is a JAX function returning one loss per
    example, shape ``(batch,)``. A dict of inputs is passed as keyword arguments
    (``{"input_ids": ..., "attention_mask": ...}``). For language models on token
    windows use ``sj.lm.next_token_loss(*sj.torch_forward(model))`` instead.

    Example:
      >>> import torch, jax.numpy as jnp, slt_jax as sj
      >>> loss_fn, params = sj.torch_loss(
      ...     torch.nn.Linear(3, 1), lambda out, y: 0.5 * (out[:, 0] - y) ** 2)
      >>> float(loss_fn(params, (jnp.zeros((8, 3)), jnp.zeros(8)))) >= 0
      True
    """
    forward, params = torch_forward(module, eval_mode=eval_mode, output=output)

    def loss_fn(params, batch):
        inputs, targets = batch
        return _mean_loss(per_example_loss, call_with_inputs(forward, params, inputs), targets)

    return loss_fn, params
