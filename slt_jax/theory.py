"""Closed-form learning coefficients, the known answers the estimators are tested against
(pure Python and NumPy, exact rational arithmetic)."""

from slt_jax._src.theory import dln_learning_coefficient as dln_learning_coefficient
from slt_jax._src.theory import monomial_learning_coefficient as monomial_learning_coefficient
from slt_jax._src.theory import (
    normal_crossing_learning_coefficient as normal_crossing_learning_coefficient,
)
from slt_jax._src.theory import quadratic_oracle_llc as quadratic_oracle_llc
from slt_jax._src.theory import (
    quadratic_oracle_stationary_variance as quadratic_oracle_stationary_variance,
)
from slt_jax._src.theory import quadratic_selection_bias as quadratic_selection_bias
from slt_jax._src.theory import regular_learning_coefficient as regular_learning_coefficient
from slt_jax._src.theory import rrr_learning_coefficient as rrr_learning_coefficient

__all__ = [
    "dln_learning_coefficient",
    "monomial_learning_coefficient",
    "normal_crossing_learning_coefficient",
    "quadratic_oracle_llc",
    "quadratic_oracle_stationary_variance",
    "quadratic_selection_bias",
    "regular_learning_coefficient",
    "rrr_learning_coefficient",
]
