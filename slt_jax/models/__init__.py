"""The models of the papers slt_jax serves, each with its data generator and a training
script that writes a checkpoint set (Flax NNX).

Import the submodule you need, e.g. ``from slt_jax.models import tms``.
"""
