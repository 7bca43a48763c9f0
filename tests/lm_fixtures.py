"""Tiny Hugging Face language models for the tests: built from configs with random weights
(no hub), perturbed so that every parameter matters, saved to local directories."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB, LENGTH = 97, 16
GPT2 = dict(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=4)
NEOX = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=LENGTH,
)
LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=LENGTH,
)
# Token ids none of which is transformers' GPT-2 default 50256 (a warning otherwise).
_QUIET = dict(bos_token_id=0, eos_token_id=0)


def gpt2(seed: int = 0, **overrides) -> transformers.GPT2LMHeadModel:
    """A 2-layer GPT-2, d=32, 4 heads, vocab 97, 16 positions, in eval mode."""
    config = transformers.GPT2Config(**(GPT2 | _QUIET | overrides))
    return perturb(transformers.GPT2LMHeadModel(config), seed)


def neox(seed: int = 0, **overrides) -> transformers.GPTNeoXForCausalLM:
    """A 2-layer GPT-NeoX, d=32, 4 heads, MLP 64, vocab 97, in eval mode."""
    config = transformers.GPTNeoXConfig(**(NEOX | _QUIET | overrides))
    return perturb(transformers.GPTNeoXForCausalLM(config), seed)


_LLAMAS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def llama(seed: int = 0, family: str = "llama", **overrides):
    """A 2-layer Llama-family model (``family``: llama, mistral or qwen2), d=32, 4 query
    heads sharing 2 key/value heads (grouped-query attention), MLP 64, vocab 97, in eval
    mode."""
    config_cls, model_cls = (getattr(transformers, name) for name in _LLAMAS[family])
    config = config_cls(**(LLAMA | _QUIET | overrides))
    return perturb(model_cls(config), seed)


def perturb(model, seed: int, scale: float = 0.2):
    """Add N(0, scale²) noise to every parameter (LayerNorms and biases too), so that a
    wrong layout or a missing term shows in the logits; the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return model.eval()


def save(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    return path


def torch_logits(model, input_ids, attention_mask=None) -> np.ndarray:
    with torch.no_grad():
        mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask))
        return model(torch.as_tensor(np.asarray(input_ids)), attention_mask=mask).logits.numpy()


def tokens(seed: int = 0, batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``: random tokens, one row right-padded and one left-padded."""
    ids = np.random.default_rng(seed).integers(0, VOCAB, (batch, LENGTH)).astype(np.int32)
    mask = np.ones((batch, LENGTH), np.int32)
    mask[1, 11:] = 0
    mask[2, :5] = 0
    return ids, mask
