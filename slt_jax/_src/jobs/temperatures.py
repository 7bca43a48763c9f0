r"""The two-temperature LLC estimate (Watanabe 2013, JMLR 14, "A widely applicable Bayesian
information criterion", §4).

Since ``E_β[n L_n] = n L_n(w_0) + λ/β + o(1)`` at every inverse temperature ``β`` near the
WBIC one, two temperatures give ``λ`` without reference to ``L_n(w*)``:

.. math::

    \hat\lambda_{2T} = \frac{E_{\beta_1}[n L_n] - E_{\beta_2}[n L_n]}{1/\beta_1 - 1/\beta_2}
    = \frac{\hat\lambda_1/(n\beta_1) - \hat\lambda_2/(n\beta_2)}{1/(n\beta_1) - 1/(n\beta_2)},

where ``λ̂_k = nβ_k (E_{β_k}[L_n] − L_n(w*))`` are the one-temperature estimates of the same
machinery (``L_n(w*)`` cancels). Useful when ``w*`` is not exactly a minimum.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from slt_jax._src.config import LLCConfig, resolve_nbeta, run_options
from slt_jax._src.data import num_examples
from slt_jax._src.jobs.grid import run_grid
from slt_jax._src.jobs.orchestrate import prepare_run
from slt_jax._src.results import LLCResult

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TwoTemperatureResult:
    """``llc`` and its Monte-Carlo ``llc_stderr``; ``results`` at the two ``nβ``."""

    llc: float
    llc_stderr: float
    results: tuple[LLCResult, LLCResult]

    @property
    def wbic(self) -> tuple[float, float]:
        """``E_β[n L_n]`` at each of the two temperatures."""
        return tuple(float(r.wbic) for r in self.results)


@run_options(exclude=("nbeta",))
def estimate_llc_two_temperature(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    nbetas: tuple[float | None, float],
    config: LLCConfig,
    mesh=None,
    devices=None,
) -> TwoTemperatureResult:
    """The two-temperature estimate from chains at ``nβ₁`` and ``nβ₂`` run in one program.

    Args:
      nbetas: the two ``nβ`` (``None``: ``n / log n``); they must differ.
      Other arguments (the run options, ``config``): as in :func:`~slt_jax.estimate_llc`,
        shared by both temperatures; the step size must be a number.

    The two temperatures use independent chains, so the standard error combines theirs;
    ``L_n(w*)`` (one value, exact or sampled: ``init_loss_batches``) cancels from ``λ̂``, and
    its error from the standard error.

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 512)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> tt = sj.estimate_llc_two_temperature(loss, jnp.array([2.0]), (x, y),
      ...     nbetas=(50.0, 100.0), step_size=2e-3, localization=0.1, num_steps=16000,
      ...     batch_size=512)
      >>> abs(tt.llc - 0.5) < 3 * tt.llc_stderr  # d/2, within the Monte-Carlo error
      True
    """
    if len(nbetas) != 2:
        raise ValueError(f"`nbetas` must hold two values, got {nbetas!r}.")
    n = num_examples(data)
    resolved = [resolve_nbeta(b, n) for b in nbetas]
    if resolved[0] == resolved[1]:
        raise ValueError(f"the two temperatures must differ, got nβ = {resolved[0]:g} twice.")
    if callable(config.step_size) or isinstance(config.step_size, str):
        raise TypeError("the two-temperature estimate takes a numeric step size.")
    cells = [
        dict(step_size=config.step_size, localization=config.localization, nbeta=b) for b in nbetas
    ]
    prepared = prepare_run(
        loss_fn, params, data, dataclasses.replace(config, **cells[0]), mesh=mesh, devices=devices
    )
    first, second = run_grid(prepared, cells, config=config, common_keys=False)
    b1, b2 = first.config.nbeta, second.config.nbeta
    denominator = 1 / b1 - 1 / b2
    llc = (first.llc_mean / b1 - second.llc_mean / b2) / denominator
    # Both share one L_n(w*) (a sampled one cancels): the chains' Monte-Carlo errors only.
    stderr = np.hypot(first.llc_mcse / b1, second.llc_mcse / b2) / abs(denominator)
    return TwoTemperatureResult(float(llc), float(stderr), (first, second))
