"""TransformerLens ``HookedTransformer`` models as pure JAX functions (through the torch
bridge): ``(forward, params)`` and ``(loss_fn, params)``.

Two things keep ``torchax.extract_jax`` from taking a ``HookedTransformer`` as is, and
both are handled here:

- it collects tensors by scanning ``dir(module)``, so TransformerLens's tensor-valued
  properties (``model.W_E``, the stacked ``model.W_Q`` of all layers, ``W_E_pos``, …) come
  back as extra "buffers"; the bridge takes the module's registered parameters and buffers
  instead, the state dict's names (``blocks.0.attn.W_Q``, shape ``(n_heads, d_model,
  d_head)``) and no property is ever evaluated;
- the forward moves its tokens to ``cfg.device`` when they live elsewhere, and
  ``cfg.device = "cpu"`` copies traced values to the host (which fails under ``jit``); the
  bridge sets ``cfg.device`` to torchax's ``"jax"`` device for the duration of each call
  (and restores it), so the whole computation stays traced.

Buffers (the ``IGNORE`` constant, rotary tables) are held fixed. See docs/torch.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from slt_jax._src.io import torch_bridge
from slt_jax._src.io.adapters import PerExampleLoss, _mean_loss

_INSTALL_HINT = 'pip install "slt-jax[tlens]"'


def _require_tlens_module(model) -> None:
    try:
        import transformer_lens  # noqa: F401
    except ImportError as error:
        raise ImportError(f"tlens_forward needs TransformerLens 3.x: {_INSTALL_HINT}") from error
    torch_bridge._require_module(model)
    if not torch_bridge.is_tlens_module(model):
        raise TypeError(
            f"Expected a TransformerLens model (HookedTransformer), got "
            f"{type(model).__name__}; for other torch modules use sj.torch_forward."
        )
    if getattr(model.cfg, "n_devices", 1) != 1:
        raise ValueError(
            f"The model is split over cfg.n_devices = {model.cfg.n_devices} devices; the "
            "bridge runs it as one JAX function: build it with n_devices=1."
        )


@contextlib.contextmanager
def _on_jax_device(model):
    """``model.cfg.device = "jax"`` for the block (torchax's device), so that the
    forward's ``tokens.to(cfg.device)`` keeps traced values traced."""
    previous = model.cfg.device
    model.cfg.device = "jax"
    try:
        yield
    finally:
        model.cfg.device = previous


def tlens_forward(model, *, output: str | Callable | None = None):
    """``(forward, params)``: a TransformerLens ``HookedTransformer`` as a pure JAX function.

    ``forward(params, tokens, **kwargs)`` is ``model(tokens, **kwargs)`` (logits ``(B, T,
    d_vocab)`` by default; TransformerLens's own keywords such as ``return_type`` and
    ``attention_mask`` pass through) with the parameters replaced by ``params``: a dict
    ``{state-dict name: jax.Array}`` of the model's trainable parameters
    (``embed.W_E``, ``pos_embed.W_pos``, ``blocks.0.attn.W_Q`` of shape ``(n_heads,
    d_model, d_head)``, …). Buffers (``IGNORE``, causal masks, rotary tables) are held
    fixed; the tensor-valued properties (``model.W_Q`` stacked over layers, ``W_E_pos``)
    are not parameters and never evaluated. It can be ``jit``-ed, differentiated and
    ``vmap``-ed; the model runs on torchax's ``"jax"`` device during each call
    (``cfg.device`` is restored after). Hooks added to the model run on traced values.

    Written for TransformerLens 3.x (4.x dropped ``HookedTransformer``), e.g. the two-layer
    attention-only transformers of the refined LLC paper (Wang et al. 2024, "Differentiation
    and specialization of attention heads via the refined local learning coefficient",
    arXiv:2410.02984). With a language-model loss:
    ``sj.lm.next_token_loss(*sj.tlens_forward(model))``.

    Args:
      model: a ``HookedTransformer`` (``n_devices=1``).
      output: as in :func:`torch_forward`: ``None`` returns the model's output, a string
        or callable selects from it.

    Example:
      >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
      >>> import numpy as np, slt_jax as sj
      >>> model = HookedTransformer(HookedTransformerConfig(
      ...     n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=10,
      ...     attn_only=True, act_fn=None, device="cpu"))
      >>> forward, params = sj.tlens_forward(model)
      >>> params["blocks.0.attn.W_Q"].shape
      (4, 16, 4)
      >>> forward(params, np.zeros((2, 8), int)).shape
      (2, 8, 10)
    """
    _require_tlens_module(model)
    return torch_bridge.bridge(
        model, eval_mode=True, output=output, prepare=lambda: _on_jax_device(model)
    )


def tlens_loss(model, per_example_loss: PerExampleLoss, *, output: str | Callable | None = None):
    """``(loss_fn, params)`` for a ``HookedTransformer``, the contract of
    :func:`sj.nnx_loss`: ``loss_fn(params, (tokens, targets))`` is the mean of
    ``per_example_loss(forward(params, tokens), targets)`` (a JAX function, one loss per
    example) with ``forward, params = sj.tlens_forward(model, output=output)``.

    For next-token losses on token windows use
    ``sj.lm.next_token_loss(*sj.tlens_forward(model))``.
    """
    forward, params = tlens_forward(model, output=output)

    def loss_fn(params, batch):
        inputs, targets = batch
        outputs = torch_bridge.call_with_inputs(forward, params, inputs)
        return _mean_loss(per_example_loss, outputs, targets)

    return loss_fn, params
