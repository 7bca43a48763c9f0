"""What the chains observe besides their own loss, declared once for every entry point.

:class:`Observation` gathers the options (observables, a probe set, how often, the probe
kernel and trace, per-token losses); :func:`observation_options` gives an entry point the
``observe=`` keyword (and, for the refined ones, the loose keywords ``observables=``,
``probe=``, ``observe_every=``, ``probe_kernel=``, ``probe_trace=``, ``per_token=`` that
fill one), so ``estimate_llc``, ``estimate_llc_checkpoints``, ``estimate_refined_llc`` and
``estimate_refined_llc_checkpoints`` take the same thing, declared here.
:meth:`Observation.plan` checks it against the loss and the data before anything is
compiled and builds the engine's observer plug-in (:class:`~slt_jax._src.observe.Observe`).

Example:
  >>> import jax.numpy as jnp, slt_jax as sj
  >>> obs = sj.Observation(observables={"half": jnp.ones((4, 1))}, every=5)
  >>> obs.every, list(obs.observables)
  (5, ['half'])
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from slt_jax._src import data as _data
from slt_jax._src import sources, validation
from slt_jax._src.config import spliced_signature
from slt_jax._src.observe import Observe, Observed

PyTree = Any

__all__ = ["Observation", "Plan", "observation_options"]


@dataclasses.dataclass(frozen=True, eq=False)  # data sets: compared by identity
class Observation:
    """What every chain observes, every ``every`` draws, besides its own loss.

    Attributes:
      observables: ``{name: data set}`` (pytrees like the sampling data): the mean loss of
        each on its whole, traced; their data-refined LLCs ``nβ (E[L_{D_k}] − L_{D_k}(w*))``.
      probe: a data set whose per-example losses are folded into streaming moments
        (Bayesian influence, susceptibilities: :class:`~slt_jax.influence.ProbeStatistics`).
      every: observe every this many draws.
      probe_kernel: also keep the ``P × P`` covariance of the probe losses.
      probe_trace: also keep every observed probe loss.
      per_token: observe a language model's per-token probe losses (``loss_fn.per_token``).

    Pass it as ``observe=`` to :func:`~slt_jax.estimate_llc`,
    :func:`~slt_jax.estimate_llc_checkpoints`, :func:`~slt_jax.estimate_refined_llc` or
    :func:`~slt_jax.estimate_refined_llc_checkpoints`.
    """

    observables: Mapping[str, PyTree] | None = None
    probe: PyTree = None
    every: int = 10
    probe_kernel: bool = False
    probe_trace: bool = False
    per_token: bool = False

    @property
    def empty(self) -> bool:
        """Nothing observed (no observables, no probe)."""
        return not self.observables and self.probe is None

    def plan(self, loss_fn, params, data, config) -> Plan:
        """The checked observation for this loss, centre, data and resolved config (errors
        before anything is compiled)."""
        names, observed = _check_observed(
            loss_fn, params, data, self.observables, self.probe, config.batch_size
        )
        tokens = _token_shape(loss_fn, params, observed.probe, self.per_token)
        observer = _observer(
            names, observed, self.every, self.probe_kernel, self.probe_trace, config, tokens
        )
        return Plan(
            names=names,
            observed=observed if observer is not None else None,
            observer=observer,
            tokens=tokens,
            token_fields=_token_fields(loss_fn, observed.probe, tokens),
        )


class Plan(NamedTuple):
    """A checked :class:`Observation`: the observable names, the observed data (``None``:
    nothing observed), the engine's observer plug-in, the probe's ``(P, T)`` token shape
    (``None``: per example) and the per-token fields of its statistics."""

    names: tuple[str, ...]
    observed: Observed | None
    observer: Observe | None
    tokens: tuple[int, int] | None
    token_fields: dict


# The loose keywords of the refined entry points, each an Observation field.
LOOSE = {
    "observables": "observables",
    "probe": "probe",
    "observe_every": "every",
    "probe_kernel": "probe_kernel",
    "probe_trace": "probe_trace",
    "per_token": "per_token",
}
_DEFAULT = Observation()


def observation_options(*, loose: bool = False):
    """Give an entry point ``fn(..., observe: Observation | None, ...)`` the observation
    keyword, declared once: ``observe=`` an :class:`Observation` (or ``None``); with
    ``loose``, also the keywords of :data:`LOOSE` (``observables=``, ``probe=``,
    ``observe_every=``, …) that fill one (giving both is a ``TypeError``). The wrapped
    function receives ``observe``: an :class:`Observation`, or ``None`` when nothing is
    observed."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, observe: Observation | None = None, **kwargs):
            given = {LOOSE[k]: kwargs.pop(k) for k in list(kwargs) if loose and k in LOOSE}
            if observe is not None and not isinstance(observe, Observation):
                raise TypeError(
                    f"`observe` must be an sj.Observation, got {type(observe).__name__}."
                )
            if given:
                if observe is not None:
                    raise TypeError(f"give `observe=` or the keywords {sorted(given)}, not both.")
                observe = Observation(**given)
            if (
                observe is not None
                and observe.empty
                and not (observe.probe_kernel or observe.probe_trace or observe.per_token)
            ):
                observe = None
            return fn(*args, observe=observe, **kwargs)

        shown = [
            inspect.Parameter(
                "observe",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation="Observation | None",
            )
        ]
        if loose:
            shown += [
                inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=getattr(_DEFAULT, f))
                for k, f in LOOSE.items()
            ]
        wrapper.__signature__ = spliced_signature(
            fn, "observe", shown, before=inspect.Parameter.VAR_KEYWORD
        )
        return wrapper

    return decorate


def _in_memory(data):
    """A host source's examples as host arrays (an observed set is held on the device)."""
    if data is not None and sources.is_source(data):
        return _data.rows(data, np.arange(len(data)))
    return data


def _check_observed(loss_fn, params, data, observables, probe, batch_size):
    """Names and data sets of the observables and the probe, checked against ``loss_fn``
    (a language model's token ids and masks by value, :func:`slt_jax._src.lm.check_tokens`)."""
    if observables is None:
        observables = {}
    if not isinstance(observables, Mapping):
        raise TypeError("`observables` must be a mapping {name: data set}.")
    observables = {k: _in_memory(v) for k, v in observables.items()}
    probe = _in_memory(probe)
    check_tokens = getattr(loss_fn, "check_tokens", None)
    if check_tokens is not None:
        named = {"`probe`": probe}  # `data` is checked by orchestrate.prepare
        named.update({f"observable {k!r}": v for k, v in observables.items()})
        for what, tokens in named.items():
            if tokens is None:
                continue
            try:
                check_tokens(tokens)
            except (ValueError, TypeError) as error:
                raise type(error)(f"{what}: {error}") from error
    names = tuple(str(k) for k in observables)
    structure = _data.structure(data)
    for name, obs in observables.items():
        if jax.tree.structure(obs) != structure:
            raise ValueError(
                f"observable {name!r} does not have the pytree structure of `data` "
                f"({jax.tree.structure(obs)} vs {structure})."
            )
        _data.num_examples(obs)
        validation.check_data(obs)
        rows = min(batch_size, _data.num_examples(obs))
        validation.check_loss_fn(loss_fn, params, validation.batch_like(obs, rows))
        validation.check_remainder(
            loss_fn, params, obs, batch_size, f"The loss on observable {name!r}"
        )
    if probe is not None:
        if jax.tree.structure(probe) != structure:
            raise ValueError("`probe` does not have the pytree structure of `data`.")
        _data.num_examples(probe)
        validation.check_data(probe)
        try:
            validation.check_loss_fn(loss_fn, params, validation.batch_like(probe, 1))
        except ValueError as error:
            raise ValueError(
                f"per-example losses of the probe set call loss_fn on batches of one example, "
                f"which failed: {error}"
            ) from error
    to_host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    observed = Observed(tuple(to_host(observables[k]) for k in observables), to_host(probe))
    return names, observed


def _token_shape(loss_fn, params, probe, per_token):
    """``(P, T)`` of a per-token probe (``None`` per example), checked before compiling."""
    if not per_token:
        return None
    if probe is None:
        raise ValueError("per_token=True observes the per-token losses of a `probe` data set.")
    if not callable(getattr(loss_fn, "per_token", None)):
        raise TypeError(
            "per_token=True needs a language model's loss with per-token losses "
            "(loss_fn.per_token(params, batch) -> (B, T)), as sj.lm.next_token_loss builds."
        )
    shape = jax.eval_shape(loss_fn.per_token, params, validation.batch_like(probe, 1)).shape
    if len(shape) != 2 or shape[0] != 1:
        raise ValueError(f"loss_fn.per_token must return (batch, T) losses, got {shape}.")
    return _data.num_examples(probe), int(shape[1])


def _observer(names, observed, observe_every, probe_kernel, probe_trace, config, tokens):
    """The observer plug-in for these observables and probe (``None``: nothing observed)."""
    probe = observed.probe
    if (probe_kernel or probe_trace) and probe is None:
        raise ValueError("probe_kernel and probe_trace need a `probe` data set.")
    if not names and probe is None:
        return None
    observe_every = validation.check_count("observe_every", observe_every, minimum=1)
    if observe_every > config.num_draws:
        raise ValueError(
            f"`observe_every` ({observe_every}) exceeds the number of draws "
            f"({config.num_draws}): no observation would be made."
        )
    num_probe = 0 if probe is None else _data.num_examples(probe)
    if tokens is not None:
        num_probe = tokens[0] * tokens[1]
    return Observe(
        observe_every,
        len(names),
        num_probe,
        bool(probe_kernel),
        bool(probe_trace),
        per_token=tokens is not None,
    )


def _token_fields(loss_fn, probe, tokens) -> dict:
    """The per-token view of the probe statistics (``{}`` per example)."""
    if tokens is None:
        return {}
    ids = probe["input_ids"] if isinstance(probe, Mapping) else probe
    mask = np.asarray(loss_fn.token_mask(probe), bool)
    return dict(token_shape=tokens, token_mask=mask, input_ids=np.asarray(ids))
