"""The plain path: one ``lax.scan`` of ``cell.recur``, differentiated by JAX's autodiff, with
``lengths`` as a mask and ``remat`` as ``jax.checkpoint`` over chunks. The custom VJP
(:mod:`seqjax.unrolling.custom_vjp`) and the parallel scan (:mod:`seqjax.parallel`) are the
other paths; all give the same numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax.types import Carry, Cell, Params
from seqjax.unrolling.remat import chunked_scan

Array = jax.Array


def scan(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    unroll: int,
    remat: bool,
    hoist_projection: bool,
    resets: Array | None = None,
    restart_carry: Carry | None = None,
) -> tuple[Carry, Array]:
    """``cell`` over time-major ``xs (time, batch..., features)``; ``resets (time, batch...)``
    (masked and shifted by ``unroll``) set the carry back to ``restart_carry`` (default: the
    initial one) before a step.

    ``lengths`` become a mask ``t < length``: a masked step keeps the carry and emits zeros.
    Running forward, that freezes each sequence at its end; running in reverse, it makes each
    sequence start from its own last valid step, with no flipping of the data.
    """
    inputs = project_all(cell.project, params, xs) if hoist_projection else xs
    steps = jnp.arange(xs.shape[0])
    initial = carry if restart_carry is None else restart_carry

    def body(carry: Carry, inp: tuple[Array, tuple]) -> tuple[Carry, Array]:
        t, (x_t, flag) = inp
        if flag is not None:  # gradients stop here: the old carry is not used
            carry = jax.tree.map(lambda c0, c: where(flag, c0, c), initial, carry)
        projected = x_t if hoist_projection else cell.project(params, x_t)
        return mask(cell.recur(params, carry, projected), carry, t, lengths)

    inputs = (inputs, resets)
    if not remat:
        return jax.lax.scan(body, carry, (steps, inputs), reverse=reverse, unroll=unroll)
    return chunked_scan(body, carry, steps, inputs, reverse, unroll)


def project_all(project, params: Params, xs: Array) -> Array:
    """``project`` on every step at once, as one 2-D matmul over (time x batch) rows."""
    projected = project(params, as_rows(xs))
    return projected.reshape(*xs.shape[:-1], projected.shape[-1])


def as_rows(x: Array) -> Array:
    """``(time, batch..., k) -> (time * batch, k)``."""
    return x.reshape(-1, x.shape[-1])


def mask(step_out: tuple[Carry, Array], carry: Carry, t: Array, lengths: Array | None):
    """Past a sequence's length (``t >= length``) a step keeps the old carry and emits zeros.
    ``t`` is a step index, or an array of them that broadcasts against ``lengths``."""
    return keep_valid(step_out, carry, None if lengths is None else t < lengths)


def keep_valid(step_out: tuple[Carry, Array], carry: Carry, valid: Array | None):
    """Where ``valid`` is false, the step keeps the old carry and emits zeros."""
    new_carry, y = step_out
    if valid is None:
        return new_carry, y
    new_carry = jax.tree.map(lambda new, old: where(valid, new, old), new_carry, carry)
    return new_carry, where(valid, y, jnp.zeros_like(y))


def where(mask: Array, a: Array, b: Array) -> Array:
    """``where`` with ``mask (batch...)`` broadcast over the trailing feature axes of ``a``."""
    mask = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(mask, a, b)
