"""The operands the native kernels' custom calls share, float32 and bfloat16 alike: the
layout of the per-step arrays, the biases, the packed weights, lengths, start and restart flags,
and the call itself."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.native import _build

Array = jax.Array


def _layout(xs: Array, batch_major: bool) -> tuple[int, tuple[int, ...], int, tuple[int, int]]:
    """``T``, the batch shape, the number of rows (batch flattened) and the shape of a per-step
    array's leading axes: ``(T, rows)``, or with ``batch_major`` ``(rows, T)``."""
    T, batch = (xs.shape[-2], xs.shape[:-2]) if batch_major else (xs.shape[0], xs.shape[1:-1])
    rows = int(np.prod(batch))
    return T, batch, rows, (rows, T) if batch_major else (T, rows)


def _bias(kernel: str, params: Any, H: int) -> Array:
    """The bias the forward kernel adds: ``b_ih + b_hh``; for the GRU, whose ``b_hn`` enters
    inside the reset gate's product, ``b_ir + b_hr, b_iz + b_hz, b_in, b_hn``."""
    b_ih, b_hh = params["b_ih"], params["b_hh"]
    if kernel != "gru":
        return b_ih + b_hh
    return jnp.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])


def _pack(w: Array, gates: int) -> Array:
    """``w (K, gates * H) -> (U, K, gates, 16)``: for each block of 16 hidden units, the
    columns of all gates for those units, row after row, zero-padded past H."""
    K, H = w.shape[0], w.shape[1] // gates
    U = -(-H // 16)
    w = jnp.pad(w.reshape(K, gates, H), ((0, 0), (0, 0), (0, U * 16 - H)))
    return w.reshape(K, gates, U, 16).transpose(2, 0, 1, 3)


def _restart_operands(restarts, rows: int, H: int, per_step: tuple[int, int]):
    """``(suffix, restart_carry, flags)`` for a call with ``restarts``: the suffix of its
    targets, the leaves of the restart carry as ``(rows, H)`` and the flags laid out as the
    per-step arrays; for a call without, the plain targets and no operands."""
    if restarts is None:
        return "", (), ()
    flags, carry = restarts
    leaves = tuple(c.reshape(rows, H) for c in jax.tree.leaves(carry))
    return "_restarting", leaves, (jnp.asarray(flags, jnp.bool_).reshape(per_step),)


def _common_operands(lengths: Array | None, rows: int, start: Array | int) -> tuple[Array, Array]:
    lengths = jnp.zeros((rows,), jnp.int32) if lengths is None else lengths.reshape(rows)
    return lengths.astype(jnp.int32), jnp.asarray(start, jnp.int32)


def _previous_outputs(ys, h0, lengths, rows, start, reverse, batch_major) -> Array:
    """``h_(t-1)`` for every step, in the recurrence's order: the previous step's output, or
    the initial ``h0`` where there is none (the first step, or in reverse, a later step past
    the sequence's length, which left the carry as it was). ``ys`` is ``(T, rows, H)``, or
    with ``batch_major`` ``(rows, T, H)``."""
    axis = 1 if batch_major else 0
    T = ys.shape[axis]
    first = jnp.expand_dims(h0, axis)
    if not reverse:  # a step that ran follows one that ran
        return jnp.concatenate([first, jax.lax.slice_in_dim(ys, 0, T - 1, axis=axis)], axis)
    shifted = jnp.concatenate([jax.lax.slice_in_dim(ys, 1, T, axis=axis), first], axis)
    if lengths is None:
        return shifted
    later_ran = (start + jnp.arange(1, T + 1))[:, None] < lengths.reshape(1, rows)
    return jnp.where((later_ran.T if batch_major else later_ran)[..., None], shifted, first)


def _call(target: str, results, *operands, **attributes):
    _build.load()  # registers the kernels with XLA (once); raises Unavailable saying why not
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*operands, **attributes)
