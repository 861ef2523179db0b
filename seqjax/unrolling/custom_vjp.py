"""seqjax's own backward pass through a sequence, for cells with a ``RecurSplit``.

Autodiff of ``lax.scan`` accumulates each weight gradient inside the reverse loop as a thin
rank-batch update per step. Here the forward loop keeps each step's input carry and the
residuals of ``combine``'s VJP (its activations, so nothing is recomputed); the reverse loop
runs only that VJP and ``dh = dhh @ W_hh^T``, and emits the gate gradients. After it, the VJPs
of ``hidden_projection`` and ``project`` over all steps at once give ``dW_hh``, ``dW_ih``, the
biases and ``dxs`` as single large matmuls (a contraction over time and batch). The loops
themselves are a :class:`~seqjax.unrolling.backends.LoopBackend`: scans or native kernels.

With ``remat``, the forward pass keeps only the carry at the start of each chunk of ~sqrt(T)
steps. The backward pass takes the chunks in the opposite order to the recurrence: it reruns a
chunk's forward steps (keeping their residuals), runs the reverse loop over it, and adds the
chunk's weight gradients; memory holds one chunk's residuals. Chunks are sliced from, and
written into, arrays in the caller's layout, so no whole sequence is ever copied to
time-major: a chunk of ~sqrt(T) steps at a time is.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.types import Carry, Params
from seqjax.unrolling.backends import LoopBackend
from seqjax.unrolling.segments import Segments, chunk_size, time_major

Array = jax.Array


class Plan(NamedTuple):
    """What one call differentiates: the loops, the chunks, the layout and the options."""

    loops: LoopBackend
    chunks: Segments
    time_axis: int
    remat: bool
    has_lengths: bool
    batch_major: bool  # the loops read and write whole sequences in the caller's layout

    @property
    def num_steps(self) -> int:
        return self.chunks.num_steps

    def to_loops(self, a: Array) -> Array:
        """A whole sequence in the layout the loops take it in."""
        return a if self.batch_major else time_major(a, self.time_axis)

    def to_caller(self, a: Array) -> Array:
        return a if self.batch_major else jnp.moveaxis(a, 0, self.time_axis)

    def lengths(self, lengths: Array) -> Array | None:
        return lengths if self.has_lengths else None


def unroll_custom_vjp(
    loops: LoopBackend,
    params: Params,
    xs: Array,
    time_axis: int,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    remat: bool,
) -> tuple[Carry, Array]:
    """``(final_carry, ys)`` for ``xs`` in the caller's layout (time on ``time_axis``), with
    the backward pass described in the module docstring."""
    num_steps = xs.shape[time_axis]
    plan = Plan(
        loops=loops,
        chunks=Segments(num_steps, chunk_size(num_steps), time_axis, reverse),
        time_axis=time_axis,
        remat=remat,
        has_lengths=lengths is not None,
        # The native kernels read and write (batch..., T, .) arrays as they are: no
        # time-major copies of the inputs, outputs and their gradients.
        batch_major=loops.takes_batch_major and 0 < time_axis == xs.ndim - 2,
    )
    if lengths is None:
        lengths = jnp.zeros((), jnp.int32)  # unused; keeps one signature for custom_vjp

    @jax.custom_vjp
    def run(params, xs, carry, lengths):
        return _forward(plan, params, xs, carry, lengths, keep=False)[0]  # not differentiated

    def run_fwd(params, xs, carry, lengths):
        out, saved = _forward(plan, params, xs, carry, lengths, keep=True)
        return out, (params, xs if remat else None, lengths, saved)

    def run_bwd(residuals, cotangents):
        params, xs, lengths, saved = residuals
        d_lengths = np.zeros(np.shape(lengths), jax.dtypes.float0)
        if remat:
            d_params, d_xs, d_carry0 = _backward_by_chunks(plan, params, xs, lengths, saved,
                                                           cotangents)  # fmt: skip
        else:
            d_params, d_xs, d_carry0 = _backward_whole(plan, params, lengths, saved, cotangents)
        return d_params, d_xs, d_carry0, d_lengths

    run.defvjp(run_fwd, run_bwd)
    return run(params, xs, carry, lengths)


def _forward(plan: Plan, params, xs, carry, lengths, keep):
    """``((final_carry, ys), saved)``: with ``keep``, the inputs in the loops' layout and
    every step's residuals, or with ``remat`` only the carry at the start of each chunk;
    without ``keep``, nothing."""
    loops, chunks = plan.loops, plan.chunks
    weights = loops.weights(params)
    if not (keep and plan.remat):
        xs_loop = plan.to_loops(xs)
        final, (ys, saved) = loops.forward(
            params, weights, xs_loop, carry, jnp.arange(plan.num_steps), plan.lengths(lengths),
            keep, plan.batch_major,
        )  # fmt: skip
        return (final, plan.to_caller(ys)), (xs_loop, saved) if keep else None

    def forward_chunk(state, start, size, _):
        carry, ys = state
        steps = start + jnp.arange(size)
        new_carry, (ys_chunk, _) = loops.forward(
            params, weights, chunks.take(xs, start, size), carry, steps, plan.lengths(lengths),
            keep=False,
        )  # fmt: skip
        return (new_carry, chunks.put(ys, ys_chunk, start)), carry

    first_y = jax.eval_shape(
        lambda: loops.forward(
            params, weights, chunks.take(xs, 0, 1), carry, jnp.arange(1), plan.lengths(lengths),
            False,
        )
    )[1][0]  # fmt: skip
    ys = jnp.zeros((*xs.shape[:-1], first_y.shape[-1]), first_y.dtype)
    (final, ys), starts = chunks.visit(forward_chunk, (carry, ys))
    return (final, ys), starts


def _backward_whole(plan: Plan, params, lengths, saved, cotangents):
    """The reverse loop over the whole sequence, from what ``_forward`` kept of every step."""
    d_final, d_ys = cotangents
    weights = plan.loops.weights(params)
    steps = jnp.arange(plan.num_steps)  # made here: the backward pass closes over no tracer
    xs_loop, step_saved = saved  # the forward pass's copy (if any), not a second one
    d_carry0, d_params, d_xs = plan.loops.backward(
        params, weights, xs_loop, d_final, steps, plan.lengths(lengths), step_saved,
        plan.to_loops(d_ys), plan.batch_major,
    )  # fmt: skip
    return d_params, plan.to_caller(d_xs), d_carry0


def _backward_by_chunks(plan: Plan, params, xs, lengths, starts, cotangents):
    """The reverse loop chunk by chunk, last chunk of the recurrence first, each chunk's
    forward steps rerun from its start carry to get its residuals."""
    loops, chunks = plan.loops, plan.chunks
    d_final, d_ys = cotangents
    weights = loops.weights(params)
    # Every chunk reads its d_ys before it writes its d_xs, and the chunks cover every
    # step once: when the shapes agree (stacked layers: input size = hidden size), the
    # loop state starts as d_ys and each chunk swaps its d_ys for its d_xs in place, so
    # the backward pass holds one such sequence instead of two (d_ys is read from the
    # state, never from the original, which would force XLA to keep a copy).
    reuse = d_ys.shape == xs.shape and d_ys.dtype == xs.dtype

    def backward_chunk(state, start, size, start_carry):
        d_carry, d_params, d_xs = state
        steps = start + jnp.arange(size)
        xs_chunk = chunks.take(xs, start, size)
        _, (_, chunk_saved) = loops.forward(
            params, weights, xs_chunk, start_carry, steps, plan.lengths(lengths), keep=True
        )
        # With reuse, this chunk's d_ys is still in the state: no earlier chunk wrote here.
        d_ys_chunk = chunks.take(d_xs if reuse else d_ys, start, size)
        d_carry, chunk_d_params, d_xs_chunk = loops.backward(
            params, weights, xs_chunk, d_carry, steps, plan.lengths(lengths), chunk_saved,
            d_ys_chunk,
        )  # fmt: skip
        d_params = jax.tree.map(jnp.add, d_params, chunk_d_params)
        return (d_carry, d_params, chunks.put(d_xs, d_xs_chunk, start)), None

    d_xs = d_ys if reuse else jnp.zeros_like(xs)
    start = (d_final, jax.tree.map(jnp.zeros_like, params), d_xs)
    (d_carry0, d_params, d_xs), _ = chunks.visit(backward_chunk, start, starts, backward=True)
    return d_params, d_xs, d_carry0
