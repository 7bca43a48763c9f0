"""Weight refinements: selectors of the coordinates that move in a weight-refined LLC
(:func:`slt_jax.estimate_refined_llc`). See :mod:`slt_jax._src.refine` for the selector
forms and the fused-head layout of :func:`head_masks`."""

from slt_jax._src.layouts import Layout as Layout
from slt_jax._src.layouts import components as components
from slt_jax._src.layouts import heads as heads
from slt_jax._src.refine import Selector as Selector
from slt_jax._src.refine import head_masks as head_masks
from slt_jax._src.refine import leaf_paths as leaf_paths
from slt_jax._src.refine import mask as mask
from slt_jax._src.refine import masks as masks
from slt_jax._src.refine import num_selected as num_selected
from slt_jax._src.refine import path_string as path_string

__all__ = [
    "Layout",
    "Selector",
    "components",
    "head_masks",
    "heads",
    "leaf_paths",
    "mask",
    "masks",
    "num_selected",
    "path_string",
]
