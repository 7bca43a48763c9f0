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
thing (bit for bit). The wrapper is kept for as long as the loss function lives (so
the compiled programs keyed by it are reused; it holds the loss weakly) and forwards
every other attribute (``vocab_size``, ``check_tokens``, ``per_token``, …) to the loss;
:func:`unwrap` (or ``inspect.unwrap``) gives the loss back: a results directory
fingerprints the loss's own jaxpr.

The chain programs take the user's loss itself (:func:`unwrap`): one compilation traces it
at each of its call sites (the gradient of the kernel's step, shared by burn-in and draws;
the paired estimator's loss at ``w*``; the diagnostics' extra gradient), and the engine's
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

import weakref

import jax

_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SharedLoss:
    """``loss_fn`` jitted (traced once per input signature), its attributes forwarded.

    It refers to ``loss_fn`` weakly (the caller and the chain programs hold it), so that a
    loss dropped by the user and by the program cache is freed, with its wrapper."""

    def __init__(self, loss_fn):
        ref = weakref.ref(loss_fn)

        def call(params, batch):
            return ref()(params, batch)

        self._ref = ref
        self._jitted = jax.jit(call)

    @property
    def __wrapped__(self):
        return self._ref()

    def __call__(self, params, batch):
        return self._jitted(params, batch)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_ref", "_jitted"):
            raise AttributeError(name)
        return getattr(self._ref(), name)

    def __repr__(self) -> str:
        return f"shared({self._ref()!r})"


def shared(loss_fn):
    """The run's loss: ``loss_fn`` traced once per input signature (the same object for the
    same live ``loss_fn``, so compiled programs keyed by it are reused). A loss that cannot
    be wrapped (not callable, unhashable, not weakly referenceable) is returned as it is."""
    if isinstance(loss_fn, SharedLoss) or not callable(loss_fn):
        return loss_fn
    try:
        wrapper = _SHARED.get(loss_fn)
        if wrapper is None:
            _SHARED[loss_fn] = wrapper = SharedLoss(loss_fn)
    except TypeError:  # unhashable, or no weak reference to it
        return loss_fn
    return wrapper


def unwrap(loss_fn):
    """The user's loss behind :func:`shared` (itself if it is not wrapped)."""
    return loss_fn.__wrapped__ if isinstance(loss_fn, SharedLoss) else loss_fn
