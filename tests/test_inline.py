"""``llc_function``: bad inputs get the library's clear errors at trace time."""

import jax
import jax.numpy as jnp
import pytest

import slt_jax as sj

X = jnp.linspace(-1, 1, 256)[:, None]
DATA = (X, 2 * X[:, 0])


def loss(w, batch):
    return 0.5 * jnp.mean((batch[0] @ w - batch[1]) ** 2)


def test_a_loss_that_is_not_a_scalar_is_named():
    per_example = sj.llc_function(lambda w, b: (b[0] @ w - b[1]) ** 2, num_steps=10, batch_size=64)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        jax.jit(per_example)(jax.random.key(0), jnp.array([2.0]), DATA)


@pytest.mark.parametrize(
    "key", [0, jnp.uint32(3), jax.random.split(jax.random.key(0), 2)], ids=["int", "u32", "two"]
)
def test_the_key_must_be_one_typed_key(key):
    llc = sj.llc_function(loss, num_steps=10, batch_size=64)
    with pytest.raises(TypeError, match="`key` must be one typed JAX key"):
        llc(key, jnp.array([2.0]), DATA)


def test_keys_vmapped_are_single_keys_inside():
    llc = sj.llc_function(loss, num_steps=20, step_size=1e-3, localization=1.0, batch_size=64)
    keys = jax.random.split(jax.random.key(0), 3)
    many = jax.jit(jax.vmap(llc, in_axes=(0, None, None)))(keys, jnp.array([2.0]), DATA)
    one = jax.jit(llc)(keys[1], jnp.array([2.0]), DATA)
    assert many.llc_per_chain.shape == (3, 4)
    assert jnp.allclose(many.llc_per_chain[1], one.llc_per_chain, rtol=1e-5)
