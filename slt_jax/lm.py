"""Language models: native Flax ports of GPT-2, GPT-NeoX (Pythia) and the Llama family
(Llama 3, Mistral, Qwen2/2.5) and Gemma 2 that read and write
Hugging Face model directories, a training run's checkpoint directories as a checkpoint
set, the next-token loss over token windows, and the layout that names their heads
(``"l0h1"``, ``"l1 mlp"``) for refined LLCs. PyTorch modules come in through
:func:`slt_jax.torch_forward`, TransformerLens models through
:func:`slt_jax.tlens_forward` (the ``torch`` and ``tlens`` extras).
"""

from slt_jax._src.io.export import to_netcdf as to_netcdf
from slt_jax._src.io.export import to_zarr as to_zarr
from slt_jax._src.lm import check_tokens as check_tokens
from slt_jax._src.lm import next_token_loss as next_token_loss
from slt_jax.models.gemma2 import Gemma2 as Gemma2
from slt_jax.models.gemma2 import Gemma2Config as Gemma2Config
from slt_jax.models.gpt2 import GPT2 as GPT2
from slt_jax.models.gpt2 import GPT2Config as GPT2Config
from slt_jax.models.gpt_neox import GPTNeoX as GPTNeoX
from slt_jax.models.gpt_neox import GPTNeoXConfig as GPTNeoXConfig
from slt_jax.models.hf_lm import layout as layout
from slt_jax.models.hf_lm import load_checkpoints as load_checkpoints
from slt_jax.models.hf_lm import load_model as load_model
from slt_jax.models.hf_lm import save_model as save_model
from slt_jax.models.llama import Llama as Llama
from slt_jax.models.llama import LlamaConfig as LlamaConfig

__all__ = [
    "GPT2",
    "GPT2Config",
    "Gemma2",
    "Gemma2Config",
    "GPTNeoX",
    "GPTNeoXConfig",
    "Llama",
    "LlamaConfig",
    "check_tokens",
    "layout",
    "load_checkpoints",
    "load_model",
    "next_token_loss",
    "save_model",
    "to_netcdf",
    "to_zarr",
]
