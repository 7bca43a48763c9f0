"""The user's loss traced once per input shape for the checks, centres and probes of a run.

A job evaluates ``loss_fn`` outside its chain programs in several places: the checks of the
run (``jax.eval_shape`` on a minibatch and on the last short chunk of a full-data loss),
the centre losses ``L_n(w*)`` (a program of the same shapes), the calibration's scale
probes. Traced where it is called, the loss's Python body runs at every one of them, and
each trace of a billion-parameter model costs seconds.

:func:`shared` gives the run a ``jax.jit`` of the loss instead: JAX traces a jitted function
once per signature (shapes, dtypes, weak types and the tracing context) and inserts the
cached jaxpr wherever it is called, under ``eval_shape``, ``jit``, ``vmap``, ``grad`` and
``scan`` alike; XLA inlines the nested call, so the compiled programs compute the same
thing (bit for bit). The wrapper is cached per loss function (so the compiled programs
keyed by it are reused) and forwards every other attribute (``vocab_size``,
``check_tokens``, ``per_token``, …) to the loss itself; :func:`unwrap` (or
``inspect.unwrap``) gives the loss back: a results directory fingerprints the loss's own
jaxpr.

The chain programs take the user's loss itself (:func:`unwrap`): one compilation traces it
at each of its call sites (the gradient of the burn-in and of the recorded steps, the
paired estimator's loss at ``w*``, the diagnostics' extra gradient), and the engine's
one-compilation-per-shape test counts those traces to see a recompilation.

Example:
  >>> import jax, jax.numpy as jnp
  >>> traces = []
  >>> def loss(w, batch):
  ...     traces.append(1)
  ...     return jnp.mean((batch @ w) ** 2)
  >>> once = shared(loss)
  >>> batch = jax.ShapeDtypeStruct((8, 2), jnp.float32)
  >>> _ = jax.eval_shape(once, jnp.ones(2), batch)
  >>> _ = jax.jit(jax.vmap(jax.grad(once), in_axes=(0, None)))(jnp.ones((3, 2)), jnp.ones((8, 2)))
  >>> len(traces), shared(loss) is once
  (1, True)
"""

from __future__ import annotations

import collections
import weakref

import jax

#: The most wrapped loss functions kept (least recently used dropped first); above the
#: compiled-program cache's size, so a cached program's loss keeps its wrapper.
MAX_LOSSES = 64

_SHARED: collections.OrderedDict = collections.OrderedDict()


class SharedLoss:
    """``loss_fn`` jitted (traced once per input signature), its attributes forwarded."""

    def __init__(self, loss_fn):
        self.__wrapped__ = loss_fn
        self._jitted = jax.jit(loss_fn)

    def __call__(self, params, batch):
        return self._jitted(params, batch)

    def __getattr__(self, name):
        if name.startswith("__") or name == "_jitted":
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"shared({self.__wrapped__!r})"


def shared(loss_fn):
    """The run's loss: ``loss_fn`` traced once per input signature (the same object for the
    same ``loss_fn``, so compiled programs keyed by it are reused). A loss that cannot be
    wrapped (not callable, unhashable, not weakly referenceable) is returned as it is."""
    if isinstance(loss_fn, SharedLoss) or not callable(loss_fn):
        return loss_fn
    try:
        weakref.ref(loss_fn)
        hash(loss_fn)
    except TypeError:
        return loss_fn
    if loss_fn in _SHARED:
        _SHARED.move_to_end(loss_fn)
        return _SHARED[loss_fn]
    _SHARED[loss_fn] = wrapper = SharedLoss(loss_fn)
    while len(_SHARED) > MAX_LOSSES:
        _SHARED.popitem(last=False)
    return wrapper


def unwrap(loss_fn):
    """The user's loss behind :func:`shared` (itself if it is not wrapped)."""
    return loss_fn.__wrapped__ if isinstance(loss_fn, SharedLoss) else loss_fn
