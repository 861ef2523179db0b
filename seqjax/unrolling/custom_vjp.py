"""seqjax's own backward pass through a sequence, for cells with a ``RecurSplit``.

Autodiff of ``lax.scan`` accumulates each weight gradient inside the reverse loop as a thin
rank-batch update per step. Here the forward loop keeps each step's input carry and the
residuals of ``combine``'s VJP (its activations, so nothing is recomputed); the reverse loop
runs only that VJP and ``dh = dhh @ W_hh^T``, and emits the gate gradients. After it, the VJPs
of ``hidden_projection`` and ``project`` over all steps at once give ``dW_hh``, ``dW_ih``, the
biases and ``dxs`` as single large matmuls (a contraction over time and batch). The loops
themselves are a :class:`~seqjax.unrolling.backends.LoopBackend`: scans or native kernels.

With ``remat``, the forward and backward passes go chunk by chunk
(:mod:`seqjax.unrolling.remat`), in the caller's layout: no whole sequence is ever copied to
time-major, a chunk of ~sqrt(T) steps at a time is.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.types import Carry, Params
from seqjax.unrolling.backends import LoopBackend, Restarts
from seqjax.unrolling.remat import backward_by_chunks, forward_by_chunks
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
    has_resets: bool = False

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

    def restarts(self, resets: Array, carry: Carry) -> Restarts | None:
        """The loops' ``restarts`` for a whole sequence's ``resets`` (caller's layout)."""
        return Restarts(self.to_loops(resets), carry) if self.has_resets else None

    def chunk_restarts(self, resets: Array, start, size: int, carry: Carry) -> Restarts | None:
        """The ``restarts`` of one chunk, from ``resets`` in the caller's layout."""
        if not self.has_resets:
            return None
        return Restarts(self.chunks.take(resets, start, size), carry)


def unroll_custom_vjp(
    loops: LoopBackend,
    params: Params,
    xs: Array,
    time_axis: int,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    remat: bool,
    resets: Array | None = None,
    restart_carry: Carry | None = None,
) -> tuple[Carry, Array]:
    """``(final_carry, ys)`` for ``xs`` in the caller's layout (time on ``time_axis``), with
    the backward pass described in the module docstring. ``resets``: where the carry starts
    again from ``restart_carry``, ``xs.shape[:-1]`` booleans already masked to valid steps and
    shifted for a reversed run (the loops must take restarts)."""
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
        has_resets=resets is not None,
    )
    if lengths is None:
        lengths = jnp.zeros((), jnp.int32)  # unused; keeps one signature for custom_vjp
    bounds = (lengths,) if resets is None else (lengths, resets)

    # The carry a reset restarts from is an input of its own (its gradient is what reaches
    # the restarted steps); the caller passes ``carry`` again when the two are one.
    restart = None if resets is None else (carry if restart_carry is None else restart_carry)

    @jax.custom_vjp
    def run(params, xs, carry, restart, bounds):
        out, _ = _forward(plan, params, xs, carry, restart, bounds, keep=False)
        return out  # not differentiated

    def run_fwd(params, xs, carry, restart, bounds):
        out, saved = _forward(plan, params, xs, carry, restart, bounds, keep=True)
        return out, (params, xs if remat else None, bounds, restart, saved)

    def run_bwd(residuals, cotangents):
        params, xs, bounds, restart, saved = residuals
        d_bounds = tuple(np.zeros(np.shape(b), jax.dtypes.float0) for b in bounds)
        if remat:
            grads = backward_by_chunks(plan, params, xs, bounds, restart, saved, cotangents)
        else:
            grads = _backward_whole(plan, params, bounds, restart, saved, cotangents)
        return (*grads, d_bounds)

    run.defvjp(run_fwd, run_bwd)
    return run(params, xs, carry, restart, bounds)


def _forward(plan: Plan, params, xs, carry, restart, bounds, keep):
    """``((final_carry, ys), saved)``: with ``keep``, the inputs in the loops' layout and
    every step's residuals, or with ``remat`` only the carry at the start of each chunk;
    without ``keep``, nothing. ``restart``: the carry resets restart from."""
    if keep and plan.remat:
        return forward_by_chunks(plan, params, xs, carry, restart, bounds)
    lengths, resets = (*bounds, None)[:2]
    loops = plan.loops
    weights = loops.weights(params)
    xs_loop = plan.to_loops(xs)
    restarts = plan.restarts(resets, restart)
    final, (ys, saved) = loops.forward(
        params, weights, xs_loop, carry, jnp.arange(plan.num_steps), plan.lengths(lengths),
        keep, plan.batch_major, restarts,
    )  # fmt: skip
    return (final, plan.to_caller(ys)), (xs_loop, saved) if keep else None


def _backward_whole(plan: Plan, params, bounds, restart, saved, cotangents):
    """The reverse loop over the whole sequence, from what ``_forward`` kept of every step:
    ``(d_params, d_xs, d_carry0, d_restart)``, the last ``None`` without resets."""
    lengths, resets = (*bounds, None)[:2]
    d_final, d_ys = cotangents
    weights = plan.loops.weights(params)
    steps = jnp.arange(plan.num_steps)  # made here: the backward pass closes over no tracer
    xs_loop, step_saved = saved  # the forward pass's copy (if any), not a second one
    restarts = plan.restarts(resets, restart)
    d_carry0, d_params, d_xs, *d_restart = plan.loops.backward(
        params, weights, xs_loop, d_final, steps, plan.lengths(lengths), step_saved,
        plan.to_loops(d_ys), plan.batch_major, restarts,
    )  # fmt: skip
    return d_params, plan.to_caller(d_xs), d_carry0, (d_restart or [None])[0]
