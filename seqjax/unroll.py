"""Running any cell over a whole sequence: one ``lax.scan``, for every cell and every option."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cell import Carry, Cell, Params

Array = jax.Array


def unroll(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    lengths: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: bool = False,
    hoist_projection: bool | None = None,
) -> tuple[Carry, Array]:
    """Runs ``cell`` over the time axis of ``xs``.

    Args:
      cell: the cell (``seqjax.lstm(...)`` and friends).
      params: its parameters, from ``cell.init``. The computation runs in their dtype; ``xs``
        is cast to it.
      xs: inputs of shape ``(batch..., time, features)``, or ``(time, batch..., features)`` with
        ``time_major=True``. Any number of batch axes, including none.
      carry: the initial state, leaves ``(batch..., hidden)``; zeros when ``None``.
      lengths: optional integers of shape ``(batch...)`` in ``[1, time]``. Each sequence stops at
        its own length: its carry is frozen there and its outputs past it are zero.
      reverse: run from the last step to the first. With ``lengths``, each sequence starts at its
        own last valid step (PyTorch's packed-sequence semantics); outputs stay aligned with
        the inputs.
      time_major: whether time is the first axis of ``xs`` and of the outputs.
      unroll: how many steps one iteration of the scan loop runs (``lax.scan``'s ``unroll``).
      remat: recompute each step in the backward pass instead of storing its intermediates
        (``jax.checkpoint``): less memory on long sequences for about one more forward pass.
      hoist_projection: apply ``cell.project`` to all steps at once before the scan (one large
        matmul, a ``(time, batch..., P)`` buffer) instead of inside each step. ``None`` picks per
        backend: hoisted on GPU/TPU, inside the step on CPU, where it measured faster and lighter.
        Both give the same numbers up to float round-off.

    Returns:
      ``(final_carry, ys)``: the carry after each sequence's last step (for ``reverse``, after
      its first), and outputs ``(batch..., time, output_size)`` (time first if ``time_major``).
    """
    fn = "unroll"
    _checks.check_cell(cell, fn)
    xs = _checks.check_array(xs, "xs", fn, min_rank=2)
    reverse = _checks.check_bool(reverse, "reverse", fn)
    time_major = _checks.check_bool(time_major, "time_major", fn)
    remat = _checks.check_bool(remat, "remat", fn)
    unroll = _checks.check_positive_int(unroll, "unroll", fn)
    if hoist_projection is not None:
        hoist_projection = _checks.check_bool(hoist_projection, "hoist_projection", fn)

    time_axis = 0 if time_major else xs.ndim - 2
    num_steps = xs.shape[time_axis]
    layout = "(time, batch..., {d})" if time_major else "(batch..., time, {d})"
    if num_steps == 0:
        raise ValueError(
            f"{fn}: xs has an empty time axis (shape {xs.shape}); need at least 1 step"
        )
    dtype = _checks.params_dtype(params, fn)
    expected = _checks.expected_input_size(cell, params, fn)
    _checks.check_features(xs, expected, "xs", fn, layout)

    batch_shape = xs.shape[1:-1] if time_major else xs.shape[:-2]
    lengths = _checks.check_lengths(lengths, batch_shape, num_steps, fn)
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        _checks.check_carry(cell, params, carry, batch_shape, fn)
    x_t = jax.ShapeDtypeStruct((*batch_shape, xs.shape[-1]), dtype)
    _checks.check_step(cell, params, carry, x_t, fn)

    xs_tm = jnp.moveaxis(xs, time_axis, 0).astype(dtype)  # (time, batch..., features)
    if hoist_projection is None:
        hoist_projection = jax.default_backend() != "cpu"
    carry, ys = _scan(cell, params, xs_tm, carry, lengths, reverse, unroll, remat, hoist_projection)
    return carry, jnp.moveaxis(ys, 0, time_axis)


def _scan(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    unroll: int,
    remat: bool,
    hoist_projection: bool,
) -> tuple[Carry, Array]:
    """The one scan. ``xs`` is time-major ``(time, batch..., features)``.

    ``lengths`` become a mask ``t < length``: a masked step keeps the carry and emits zeros.
    Running forward, that freezes each sequence at its end; running in reverse, it makes each
    sequence start from its own last valid step, with no flipping of the data.
    """
    inputs = cell.project(params, xs) if hoist_projection else xs
    steps = jnp.arange(xs.shape[0])

    def body(carry: Carry, inp: tuple[Array, Array]) -> tuple[Carry, Array]:
        t, x_t = inp
        projected = x_t if hoist_projection else cell.project(params, x_t)
        new_carry, y = cell.recur(params, carry, projected)
        if lengths is not None:
            valid = t < lengths  # (batch...)
            new_carry = jax.tree.map(lambda new, old: _where(valid, new, old), new_carry, carry)
            y = _where(valid, y, jnp.zeros_like(y))
        return new_carry, y

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, (steps, inputs), reverse=reverse, unroll=unroll)


def _where(mask: Array, a: Array, b: Array) -> Array:
    """``where`` with ``mask (batch...)`` broadcast over the trailing feature axes of ``a``."""
    mask = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(mask, a, b)
