"""Results out as files: the one owner of netCDF and Zarr writing.

Every result type's ``to_netcdf`` / ``to_zarr`` (``LLCResult``, ``RefinedLLCResult``,
``RefinedCheckpointsResult``, ``ProbeStatistics``) and the results store's chunk files go
through :func:`to_netcdf` and :func:`to_zarr`; ``xarray.open_dataset`` /
``xarray.open_zarr`` read them back. Public as ``sj.lm.to_netcdf`` and ``sj.lm.to_zarr``.

Example::

  import slt_jax as sj
  sj.lm.to_netcdf(result.to_xarray(), "llc.nc")   # or result.to_netcdf("llc.nc")
  sj.lm.to_zarr(result.to_xarray(), "llc.zarr")   # the lm extra: pip install "slt-jax[lm]"
"""

from __future__ import annotations

import os
import warnings

from slt_jax._src.io.atomic import write_atomic

__all__ = ["to_netcdf", "to_zarr"]

ZARR_HINT = 'Zarr export needs the zarr package: pip install "slt-jax[lm]" (or zarr>=2.18).'


def _zarr():
    try:
        import zarr
    except ImportError as error:
        raise ImportError(ZARR_HINT) from error
    return zarr


def to_zarr(dataset, path: str | os.PathLike) -> None:
    """Write an ``xarray.Dataset`` (a result's ``to_xarray()``) to a Zarr store at ``path``
    (replaced if it exists), with consolidated metadata: ``xarray.open_zarr(path)`` reads it
    back. Names (refinements, observables) are stored as variable-length strings, which
    Zarr format 3 specifies (fixed-width ones it does not).

    Zarr is optional: ``pip install "slt-jax[lm]"``.
    """
    _zarr()
    strings = {
        name: dataset[name].astype(object)
        for name in dataset.variables
        if dataset[name].dtype.kind == "U"
    }
    dataset = dataset.assign_coords(
        {k: v for k, v in strings.items() if k in dataset.coords}
    ).assign({k: v for k, v in strings.items() if k not in dataset.coords})
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension to v3
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        dataset.to_zarr(os.fspath(path), mode="w", consolidated=True)


def to_netcdf(dataset, path: str | os.PathLike) -> None:
    """Write an ``xarray.Dataset`` to a netCDF-4 file (h5netcdf, a dependency), atomically
    (:func:`~slt_jax._src.io.atomic.write_atomic`: a reader never sees part of a file);
    read it back with ``xarray.open_dataset(path)``."""
    write_atomic(path, lambda tmp: dataset.to_netcdf(tmp, engine="h5netcdf"))
