"""One time step of a cell: :func:`step` runs ``recur(params, carry, project(params, x_t))``.

The Cell protocol itself lives in :mod:`seqjax.types`; its names are re-exported here, where
they have always been importable from.
"""

from __future__ import annotations

from seqjax import _checks
from seqjax.types import (
    Array,
    Carry,
    Cell,
    CombineVJP,
    InitFn,
    InitialCarryFn,
    LinearRecurrence,
    Params,
    ProjectFn,
    RecurFn,
    RecurSplit,
    default_float_dtype,
    identity_projection,
    linear_recur,
    split_recur,
)

__all__ = [
    "Array",
    "Carry",
    "Cell",
    "CombineVJP",
    "InitFn",
    "InitialCarryFn",
    "LinearRecurrence",
    "Params",
    "ProjectFn",
    "RecurFn",
    "RecurSplit",
    "default_float_dtype",
    "identity_projection",
    "linear_recur",
    "split_recur",
    "step",
]


def step(cell: Cell, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
    """Runs one time step: ``recur(params, carry, project(params, x_t))``.

    Args:
      cell: the cell.
      params: its parameters.
      carry: the state, leaves of shape ``(batch..., hidden)``.
      x_t: the input at this step, shape ``(batch..., input_size)``.

    Returns:
      ``(new_carry, y)``, ``y`` of shape ``(batch..., cell.output_size)``.
    """
    _checks.check_cell(cell, "step")
    x_t = _checks.check_array(x_t, "x_t", "step", min_rank=1)
    dtype = _checks.params_dtype(params, "step")
    expected = _checks.expected_input_size(cell, params, "step")
    _checks.check_features(x_t, expected, "x_t", "step", "(batch..., {d})")
    x_t = x_t.astype(dtype)
    _checks.check_carry(cell, params, carry, x_t.shape[:-1], "step")
    return cell.recur(params, carry, cell.project(params, x_t))
