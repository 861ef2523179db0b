"""``remat``: keep the carry only every ~sqrt(T) steps and recompute each chunk of steps
when the backward pass needs it, memory growing with sqrt(T) instead of T for about one more
forward pass.

Two drivers over the same chunks (:mod:`seqjax.unrolling.segments`): ``chunked_scan`` for the
plain path (each chunk's scan under ``jax.checkpoint``, differentiated by autodiff), and
``forward_by_chunks``/``backward_by_chunks`` for seqjax's own backward pass, which reruns a
chunk's forward loop (keeping its residuals), runs the reverse loop over it and adds the chunk's
weight gradients, last chunk of the recurrence first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax.unrolling.segments import Segments, chunk_size


def chunked_scan(body, carry, steps, inputs, reverse, unroll):
    """``lax.scan(body, ...)`` that keeps the carry only every ~sqrt(T) steps for the backward
    pass, and recomputes each chunk of steps from its first carry when it is needed.

    Each chunk, a scan over its steps, is ``jax.checkpoint``-ed: the backward pass then holds
    ~sqrt(T) chunk carries plus one chunk's intermediates, instead of every step's, at the
    price of one more forward pass.
    """
    chunks = Segments(steps.shape[0], chunk_size(steps.shape[0]), 0, reverse)

    @jax.checkpoint
    def run_chunk(carry, chunk_inputs):
        return jax.lax.scan(body, carry, chunk_inputs, reverse=reverse, unroll=unroll)

    carry, ys = chunks.visit(
        lambda carry, start, size, chunk_inputs: run_chunk(carry, chunk_inputs),
        carry, chunks.split((steps, inputs)),
    )  # fmt: skip
    return carry, chunks.join(ys)


def forward_by_chunks(plan, params, xs, carry, restart, bounds):
    """The custom VJP's forward pass with ``remat``: ``((final_carry, ys), starts)``, keeping
    only the carry at the start of each chunk; resets restart from ``restart``."""
    loops, chunks = plan.loops, plan.chunks
    lengths, resets = (*bounds, None)[:2]
    weights = loops.weights(params)
    initial = restart

    def forward_chunk(state, start, size, _):
        carry, ys = state
        steps = start + jnp.arange(size)
        restarts = plan.chunk_restarts(resets, start, size, initial)
        new_carry, (ys_chunk, _) = loops.forward(
            params, weights, chunks.take(xs, start, size), carry, steps, plan.lengths(lengths),
            False, False, restarts,
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


def backward_by_chunks(plan, params, xs, bounds, initial, starts, cotangents):
    """The reverse loop chunk by chunk, last chunk of the recurrence first, each chunk's
    forward steps rerun from its start carry to get its residuals; ``initial`` is the carry
    the restarts read (with resets). ``(d_params, d_xs, d_carry0, d_initial)``, the last
    ``None`` without resets."""
    loops, chunks = plan.loops, plan.chunks
    lengths, resets = (*bounds, None)[:2]
    d_final, d_ys = cotangents
    weights = loops.weights(params)
    # Every chunk reads its d_ys before it writes its d_xs, and the chunks cover every
    # step once: when the shapes agree (stacked layers: input size = hidden size), the
    # loop state starts as d_ys and each chunk swaps its d_ys for its d_xs in place, so
    # the backward pass holds one such sequence instead of two (d_ys is read from the
    # state, never from the original, which would force XLA to keep a copy).
    reuse = d_ys.shape == xs.shape and d_ys.dtype == xs.dtype

    def backward_chunk(state, start, size, start_carry):
        d_carry, d_params, d_xs, d_initial = state
        steps = start + jnp.arange(size)
        xs_chunk = chunks.take(xs, start, size)
        restarts = plan.chunk_restarts(resets, start, size, initial)
        _, (_, chunk_saved) = loops.forward(
            params, weights, xs_chunk, start_carry, steps, plan.lengths(lengths), True, False,
            restarts,
        )  # fmt: skip
        # With reuse, this chunk's d_ys is still in the state: no earlier chunk wrote here.
        d_ys_chunk = chunks.take(d_xs if reuse else d_ys, start, size)
        d_carry, chunk_d_params, d_xs_chunk, *d_restart = loops.backward(
            params, weights, xs_chunk, d_carry, steps, plan.lengths(lengths), chunk_saved,
            d_ys_chunk, False, restarts,
        )  # fmt: skip
        d_params = jax.tree.map(jnp.add, d_params, chunk_d_params)
        if d_restart:
            d_initial = jax.tree.map(jnp.add, d_initial, d_restart[0])
        return (d_carry, d_params, chunks.put(d_xs, d_xs_chunk, start), d_initial), None

    d_xs = d_ys if reuse else jnp.zeros_like(xs)
    d_initial = jax.tree.map(jnp.zeros_like, initial) if plan.has_resets else None
    start = (d_final, jax.tree.map(jnp.zeros_like, params), d_xs, d_initial)
    (d_carry0, d_params, d_xs, d_initial), _ = chunks.visit(
        backward_chunk, start, starts, backward=True
    )
    return d_params, d_xs, d_carry0, d_initial
