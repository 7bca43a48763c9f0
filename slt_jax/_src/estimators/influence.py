r"""Estimators on what chains observe: data-refined LLCs, Bayesian influence, susceptibilities.

All expectations are over the (localized, tempered, possibly weight-refined) posterior

.. math:: p(w) \propto \exp\bigl(-n\beta L_n(w) - \tfrac\gamma2\lVert w - w^*\rVert^2\bigr)

that the chains sample, estimated from the draws at which the chains observed (every
``observe_every`` draws). Notation: ``φ_k(w) = L_{D_k}(w)`` is the mean loss of the
observable data set ``D_k``; ``ℓ_p(w)`` the loss of probe example ``p`` alone.

**Data-refined LLC** of ``D_k`` (Wang et al. 2024, arXiv:2410.02984, §3):
``λ̂_k = nβ (E[φ_k] − φ_k(w*))``, sampled with the loss of the data set the chains were
run on and measured with ``D_k``. (Sampling with ``D_k`` itself is ``estimate_llc`` on
``D_k``.)

**Bayesian influence function** (Kreer et al. 2025, "Bayesian influence functions for
Hessian-free data attribution", arXiv:2509.26544):
``BIF(z_p, φ) = −Cov[ℓ_p, φ]``. Up-weighting example ``p`` in the tempered likelihood
``exp(−β Σ_i ℓ_i)`` by ``1 + h`` moves ``E[φ]`` at the rate ``−β Cov[ℓ_p, φ]`` with
``β = nβ / n``; the BIF drops the constant ``β``. With ``φ = ℓ_q`` it is the loss kernel
``−Cov[ℓ_p, ℓ_q]`` between probe examples. ``normalize=True`` divides by the standard
deviations (a correlation, in ``[−1, 1]``).

**Susceptibility** (Baker et al. 2025, "Structural inference: interpreting small language
models with susceptibilities", arXiv:2504.18274): shift the data distribution
``q → q_h = (1−h) q + h q'``; the posterior's expectation of an observable moves at

.. math:: \chi = \frac{d}{dh} E_h[\phi]\Big|_{h=0} = -n\beta\,\mathrm{Cov}[\phi,\; L_{q'} - L_q].

For a point mass ``q' = δ_{z_p}`` this is the per-example susceptibility
``χ_{k,p} = −nβ Cov[φ_k, ℓ_p − L_q]``. ``L_q`` is the probe's mean loss (the probe taken
as a sample of ``q``) unless ``reference=`` names an observable that is (e.g. the training
data passed as an observable). Combined with a weight refinement (only a component's
weights move) and ``φ`` the loss, it is the component's susceptibility of that paper.

**Per token** (a language model's loss, ``estimate_refined_llc(..., per_token=True)``):
every probe "example" is a target token in context, ``z_{p,t}`` (position ``t`` of window
``p`` predicting token ``t + 1``), with loss ``ℓ_{p,t}``. The per-token LLC is
``λ̂_{p,t} = nβ (E[ℓ_{p,t}] − ℓ_{p,t}(w*))``; the BIF between tokens is
``−Cov[ℓ_{p,t}, ℓ_{q,s}]`` (devinterp 2.x's token-wise ``bif``, up to its sign and
normalisation: it reports correlations); the susceptibility of ``φ_k`` to token ``(p, t)``
is ``−nβ Cov[φ_k, ℓ_{p,t} − L_q]`` (Baker et al., appendix C.4, per target position), with
``L_q`` the probe's sequence-level loss ``Σ_{p,t} ω_{p,t} ℓ_{p,t}``
(:meth:`ProbeStatistics.token_weights`). Targets that do not count (padding) have
``ℓ ≡ 0``: every moment, LLC and covariance there is 0 (their correlations NaN).

Standard errors are the spread of the per-chain estimates over ``sqrt(chains)`` (chains
are independent, so this accounts for the autocorrelation within them).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from slt_jax._src.estimators import diagnostics
from slt_jax._src.io import export


def _stderr(per_chain: np.ndarray) -> np.ndarray:
    c = per_chain.shape[0]
    if c < 2:
        return np.full(per_chain.shape[1:], np.nan)
    return per_chain.std(axis=0, ddof=1) / np.sqrt(c)


@dataclasses.dataclass(frozen=True)
class ObservableLLCs:
    """Data-refined LLCs of the observable data sets (leading axis of the arrays: ``K``).

    Attributes:
      names: the observables' names.
      llc_mean, llc_stderr: ``(K,)`` ``λ̂_k`` over non-diverged chains and its standard error
        (``sd / sqrt(ESS)`` of the per-observation trace).
      llc_per_chain: ``(chains, K)`` (NaN for diverged chains).
      rhat, ess: ``(K,)`` of the per-observation traces.
      loss_trace: ``(chains, K, observations)`` ``φ_k(w_t)`` every ``observe_every`` draws.
      init_loss: ``(K,)`` ``φ_k(w*)``.
      nbeta: ``nβ``.
    """

    names: tuple[str, ...]
    llc_mean: np.ndarray
    llc_stderr: np.ndarray
    llc_per_chain: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    loss_trace: np.ndarray
    init_loss: np.ndarray
    nbeta: float

    @classmethod
    def from_trace(cls, names, loss_trace, init_loss, nbeta, diverged) -> ObservableLLCs:
        loss_trace = np.asarray(loss_trace, np.float64)
        init_loss = np.asarray(init_loss, np.float64)
        llc_trace = nbeta * (loss_trace - init_loss[None, :, None])
        per_chain = llc_trace.mean(axis=2)
        per_chain[diverged] = np.nan
        healthy = llc_trace[~diverged]
        stats = [
            diagnostics.chain_diagnostics(healthy[:, k])
            if healthy.shape[0]
            else diagnostics.ChainDiagnostics(np.nan, np.nan, np.nan)
            for k in range(len(names))
        ]
        return cls(
            names=tuple(names),
            llc_mean=healthy.mean(axis=(0, 2)) if healthy.shape[0] else np.full(len(names), np.nan),
            llc_stderr=np.array([s.stderr for s in stats]),
            llc_per_chain=per_chain,
            rhat=np.array([s.rhat for s in stats]),
            ess=np.array([s.ess for s in stats]),
            loss_trace=loss_trace,
            init_loss=init_loss,
            nbeta=float(nbeta),
        )

    def as_dict(self) -> dict[str, tuple[float, float]]:
        """``{name: (λ̂, stderr)}``."""
        return {
            n: (float(m), float(s))
            for n, m, s in zip(self.names, self.llc_mean, self.llc_stderr, strict=True)
        }


@dataclasses.dataclass(frozen=True)
class ProbeStatistics:
    """Streaming posterior moments of the probe's per-example losses (non-diverged chains).

    Arrays have a leading chain axis; ``P`` probe examples, ``K`` observables.

    Attributes:
      count: ``(chains,)`` observations per chain.
      probe_mean: ``(chains, P)``; ``observable_mean``: ``(chains, K)``.
      probe_sq, observable_sq, cross, kernel: per-chain sums of centred products (Welford's
        ``M2``): ``(chains, P)``, ``(chains, K, K)``, ``(chains, P, K)`` and ``(chains, P, P)``
        (``kernel`` only with ``probe_kernel=True``, else ``None``).
      probe_at_center: ``(P,)`` ``ℓ_p(w*)``.
      observable_names: the observables' names; ``nbeta``: ``nβ``.
      probe_trace: ``(chains, P, observations)`` with ``probe_trace=True``, else ``None``.
      token_shape: per token, ``(examples, T)``; the stored moments are then flat over
        ``P = examples·T`` (example-major) and the methods below return ``(examples, T)``
        in place of each ``P`` axis. ``None`` per example.
      token_mask: per token, ``(examples, T)`` bool, the targets that count.
      input_ids: per token, ``(examples, T + 1)`` the probe's token ids.

    Example (per token, ``loss_fn`` from ``sj.lm.next_token_loss``, ``windows`` ``(n, T+1)``)::

      res = sj.estimate_refined_llc(loss_fn, params, windows, probe=windows[:8],
                                    per_token=True, probe_trace=True, step_size=1e-4)
      stats = res.probes["all"]
      stats.llc().shape                  # (8, T): nβ (E[ℓ_{p,t}] − ℓ_{p,t}(w*))
      stats.to_xarray().loss_trace.dims  # ('chain', 'draw', 'batch', 'token_pos')
      stats.to_zarr("probe.zarr")
    """

    count: np.ndarray
    probe_mean: np.ndarray
    observable_mean: np.ndarray
    probe_sq: np.ndarray
    observable_sq: np.ndarray
    cross: np.ndarray
    kernel: np.ndarray | None
    probe_at_center: np.ndarray
    observable_names: tuple[str, ...]
    nbeta: float
    probe_trace: np.ndarray | None = None
    token_shape: tuple[int, int] | None = None
    token_mask: np.ndarray | None = None
    input_ids: np.ndarray | None = None

    # ---- the per-token view -----------------------------------------------------------------

    def _tokens(self, x: np.ndarray, *axes: int) -> np.ndarray:
        """``x`` with each of its flat probe ``axes`` split into ``(examples, T)``."""
        if self.token_shape is None:
            return x
        for axis in sorted((a % x.ndim for a in axes), reverse=True):
            x = x.reshape(*x.shape[:axis], *self.token_shape, *x.shape[axis + 1 :])
        return x

    def token_weights(self) -> np.ndarray:
        """``(P,)`` or ``(examples, T)`` weights ``ω`` with ``Σ ω ℓ = L_q``, the probe's
        loss as its loss function defines it: ``1/P`` per example; per token
        ``c_{p,t} / (examples · Σ_s c_{p,s})`` (each window's mean over its counted targets,
        then the mean over windows), ``1/(examples·T)`` without padding."""
        if self.token_shape is None:
            p = self.probe_mean.shape[1]
            return np.full(p, 1.0 / p)
        mask = np.asarray(self.token_mask, np.float64)
        return mask / (mask.shape[0] * np.maximum(mask.sum(axis=1, keepdims=True), 1))

    # ---- pooled moments (every observation of every chain) --------------------------------

    def _pooled(self, sums, mean_a, mean_b):
        """Chan et al.'s combination of per-chain centred sums into one covariance: the
        within-chain sums plus the spread of the chain means around the grand mean."""
        n = self.count.astype(np.float64)
        total = n.sum()
        if total < 2:  # no healthy chain (all diverged): nothing to estimate
            return np.full(sums.shape[1:], np.nan)
        da = mean_a - np.einsum("c,ca->a", n, mean_a) / total
        db = mean_b - np.einsum("c,cb->b", n, mean_b) / total
        if sums.ndim == 2:  # per-element variances (chains, P)
            between = np.einsum("c,ca,ca->a", n, da, db)
        else:  # (chains, A, B)
            between = np.einsum("c,ca,cb->ab", n, da, db)
        return (sums.sum(axis=0) + between) / (total - 1)

    def _loss_mean(self):
        n = self.count.astype(np.float64)
        return np.einsum("c,cp->p", n, self.probe_mean) / n.sum()

    def _variance(self):
        return self._pooled(self.probe_sq, self.probe_mean, self.probe_mean)

    def _covariance(self):
        return self._pooled(self.cross, self.probe_mean, self.observable_mean)

    def _kernel(self):
        if self.kernel is None:
            raise ValueError("the loss kernel was not recorded; run with probe_kernel=True.")
        return self._pooled(self.kernel, self.probe_mean, self.probe_mean)

    def init_loss(self) -> np.ndarray:
        """``(P,)`` ``ℓ_p(w*)`` (per token ``(examples, T)``)."""
        return self._tokens(self.probe_at_center, 0)

    def loss_mean(self) -> np.ndarray:
        """``(P,)`` ``E[ℓ_p]``."""
        return self._tokens(self._loss_mean(), 0)

    def loss_gain(self) -> np.ndarray:
        """``(P,)`` ``E[ℓ_p] − ℓ_p(w*)``: how much each example's loss rises under the
        posterior (large for hard, atypical or memorised examples)."""
        return self._tokens(self._loss_mean() - self.probe_at_center, 0)

    def loss_variance(self) -> np.ndarray:
        """``(P,)`` ``Var[ℓ_p]``."""
        return self._tokens(self._variance(), 0)

    def covariance(self) -> np.ndarray:
        """``(P, K)`` ``Cov[ℓ_p, φ_k]``."""
        return self._tokens(self._covariance(), 0)

    def observable_covariance(self) -> np.ndarray:
        """``(K, K)`` ``Cov[φ_j, φ_k]``."""
        return self._pooled(self.observable_sq, self.observable_mean, self.observable_mean)

    def loss_kernel(self) -> np.ndarray:
        """``(P, P)`` ``Cov[ℓ_p, ℓ_q]`` (needs ``probe_kernel=True``)."""
        return self._tokens(self._kernel(), 0, 1)

    def loss_trace(self) -> np.ndarray:
        """``(chains, observations, P)`` the probe's losses at every observation (needs
        ``probe_trace=True``); per token ``(chains, draw, batch, token_pos)`` as devinterp."""
        if self.probe_trace is None:
            raise ValueError("the probe trace was not recorded; run with probe_trace=True.")
        return self._tokens(np.swapaxes(np.asarray(self.probe_trace), 1, 2), 2)

    # ---- local learning coefficients of the probe's examples (tokens) ----------------------

    def llc_per_chain(self) -> np.ndarray:
        """``(chains, P)`` each chain's ``nβ (mean_t ℓ_p(w_t) − ℓ_p(w*))``."""
        return self._tokens(self.nbeta * (self.probe_mean - self.probe_at_center), 1)

    def llc(self) -> np.ndarray:
        """``(P,)`` ``λ̂_p = nβ (E[ℓ_p] − ℓ_p(w*))``, the data-refined LLC of each probe
        example (per token: of each target token, ``(examples, T)``). Their ``ω``-weighted
        sum (:meth:`token_weights`) is the data-refined LLC of the probe set as a whole."""
        return self.nbeta * self.loss_gain()

    def llc_stderr(self) -> np.ndarray:
        """Standard error of :meth:`llc` across the chains."""
        return self._tokens(_stderr(self.nbeta * (self.probe_mean - self.probe_at_center)), 0)

    # ---- per-chain estimates, for standard errors ------------------------------------------

    def _per_chain(self, sums):
        return sums / (self.count.astype(np.float64) - 1).reshape(-1, *([1] * (sums.ndim - 1)))

    # ---- Bayesian influence -----------------------------------------------------------------

    def influence(self, *, normalize: bool = False) -> np.ndarray:
        """``(P, K)`` ``BIF(z_p, φ_k) = −Cov[ℓ_p, φ_k]`` (``normalize``: a correlation)."""
        bif = -self._covariance()
        if normalize:
            sd_p = np.sqrt(self._variance())
            sd_k = np.sqrt(np.diag(self.observable_covariance()))
            with np.errstate(divide="ignore", invalid="ignore"):
                bif = bif / np.outer(sd_p, sd_k)
        return self._tokens(bif, 0)

    def influence_stderr(self) -> np.ndarray:
        """``(P, K)`` standard error of :meth:`influence` (unnormalised)."""
        return self._tokens(_stderr(-self._per_chain(self.cross)), 0)

    def kernel_influence(self, *, normalize: bool = False) -> np.ndarray:
        """``(P, P)`` ``BIF(z_p, z_q) = −Cov[ℓ_p, ℓ_q]`` between probe examples (per token
        ``(examples, T, examples, T)``: ``[p, t, q, s]`` between tokens ``(p, t)`` and
        ``(q, s)``)."""
        bif = -self._kernel()
        if normalize:
            sd = np.sqrt(np.diag(-bif))
            with np.errstate(divide="ignore", invalid="ignore"):
                bif = bif / np.outer(sd, sd)
        return self._tokens(bif, 0, 1)

    def kernel_influence_stderr(self) -> np.ndarray:
        """``(P, P)`` standard error of :meth:`kernel_influence` (unnormalised)."""
        if self.kernel is None:
            raise ValueError("the loss kernel was not recorded; run with probe_kernel=True.")
        return self._tokens(_stderr(-self._per_chain(self.kernel)), 0, 1)

    # ---- susceptibilities -------------------------------------------------------------------

    def _reference_index(self, reference: str | None) -> int | None:
        if reference is None:
            return None
        if reference not in self.observable_names:
            raise ValueError(
                f"reference {reference!r} is not an observable; observables are "
                f"{list(self.observable_names)}."
            )
        return self.observable_names.index(reference)

    def _susceptibility(self, cross, observable_sq, reference):
        # cross: (..., P, K); observable_sq: (..., K, K). Returns (..., K, P).
        cov = np.swapaxes(cross, -1, -2)  # Cov[φ_k, ℓ_p]
        j = self._reference_index(reference)
        if j is None:  # Cov[φ_k, L_q] with L_q = Σ_p ω_p ℓ_p, the probe's own loss
            base = (cov @ self.token_weights().reshape(-1))[..., None]
        else:
            base = observable_sq[..., :, j : j + 1]  # Cov[φ_k, φ_j]
        return -self.nbeta * (cov - base)

    def susceptibility(self, reference: str | None = None) -> np.ndarray:
        """``(K, P)`` ``χ_{k,p} = −nβ Cov[φ_k, ℓ_p − L_q]``: the rate at which ``E[φ_k]``
        moves as the data distribution shifts towards example ``p``. ``L_q`` is the probe's
        mean loss, or the observable named ``reference``. Per token ``(K, examples, T)``."""
        chi = self._susceptibility(self._covariance(), self.observable_covariance(), reference)
        return self._tokens(chi, -1)

    def susceptibility_stderr(self, reference: str | None = None) -> np.ndarray:
        """``(K, P)`` standard error of :meth:`susceptibility`."""
        per_chain = self._susceptibility(
            self._per_chain(self.cross), self._per_chain(self.observable_sq), reference
        )
        return self._tokens(_stderr(per_chain), -1)

    # ---- export -----------------------------------------------------------------------------

    def to_xarray(self):
        """An ``xarray.Dataset`` of these statistics, with devinterp 2.x's dimension names.

        Per token: ``loss_trace`` ``(chain, draw, batch, token_pos)`` (with
        ``probe_trace=True``; ``draw`` counts observations, every ``observe_every`` draws),
        ``init_loss`` ``(batch, token_pos)``, ``llc_mean``/``llc_stderr`` ``(batch,
        token_pos)``, ``llc_per_chain`` ``(chain, batch, token_pos)``, ``input_ids`` ``(batch,
        token)`` with ``token = T + 1`` and ``token_mask`` ``(batch, token_pos)``; with
        observables ``bif`` ``(batch, token_pos, observable)`` and ``susceptibility``
        ``(observable, batch, token_pos)``; with ``probe_kernel=True`` ``bif_kernel``
        ``(batch_1, batch_2, target_position, target_position_T)`` (devinterp's token-wise
        BIF layout; here ``−Cov``, not a correlation). Per example the same without
        ``token_pos``.

        devinterp stores ``init_loss`` as ``(chain, token_pos)``: each chain's loss at ``w*``
        on its own sampling minibatches, averaged over their examples. Here every chain
        starts from the same ``w*`` and the probe set is fixed, so the loss at ``w*`` is one
        number per probe token: ``init_loss.mean("batch")`` is devinterp's row (the same for
        every chain).
        """
        import xarray as xr

        ex = ("batch", "token_pos") if self.token_shape is not None else ("batch",)
        data = {
            "init_loss": (ex, self.init_loss()),
            "loss_mean": (ex, self.loss_mean()),
            "llc_mean": (ex, self.llc()),
            "llc_stderr": (ex, self.llc_stderr()),
            "llc_per_chain": (("chain", *ex), self.llc_per_chain()),
            "count": ("chain", self.count),
        }
        if self.probe_trace is not None:
            data["loss_trace"] = (("chain", "draw", *ex), self.loss_trace())
        if self.token_shape is not None:
            data["token_mask"] = (ex, np.asarray(self.token_mask, bool))
            if self.input_ids is not None:
                data["input_ids"] = (("batch", "token"), np.asarray(self.input_ids))
        coords = {}
        if self.observable_names:
            coords["observable"] = list(self.observable_names)
            data["bif"] = ((*ex, "observable"), self.influence())
            data["bif_stderr"] = ((*ex, "observable"), self.influence_stderr())
            data["susceptibility"] = (("observable", *ex), self.susceptibility())
            data["susceptibility_stderr"] = (("observable", *ex), self.susceptibility_stderr())
        if self.kernel is not None:
            kernel = self.kernel_influence()
            if self.token_shape is not None:
                dims = ("batch_1", "batch_2", "target_position", "target_position_T")
                kernel = kernel.transpose(0, 2, 1, 3)
            else:
                dims = ("batch_1", "batch_2")
            data["bif_kernel"] = (dims, kernel)
        return xr.Dataset(data, coords=coords, attrs={"nbeta": float(self.nbeta)})

    def to_zarr(self, path) -> None:
        """:meth:`to_xarray` written to a Zarr store (``xarray.open_zarr(path)`` reads it);
        needs ``pip install "slt-jax[lm]"``."""
        export.to_zarr(self.to_xarray(), path)

    def to_netcdf(self, path) -> None:
        """:meth:`to_xarray` written to a netCDF-4 file (``xarray.open_dataset(path)``)."""
        export.to_netcdf(self.to_xarray(), path)
