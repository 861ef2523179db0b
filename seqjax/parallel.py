"""Running a linear recurrence over a whole sequence at once: ``jax.lax.associative_scan``.

For a cell whose state evolves as ``h_t = a_t * h_(t-1) + b_t`` (a :class:`LinearRecurrence`),
the pairs ``(a_t, b_t)`` compose associatively,

    (a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2),

so all prefixes come out of a parallel scan of depth O(log T) instead of T dependent steps. The
initial state enters at the end: ``h_t = A_t * h_0 + B_t`` with ``(A_t, B_t)`` the prefix up to
``t``. Steps past a sequence's length become the identity ``(1, 0)``, which freezes its state
and, running in reverse, starts it at its own last valid step: the same semantics as the
sequential scan in :mod:`seqjax.unroll`.

``unroll(..., parallel=True)`` is the entry point; this module holds the scan itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqjax.cell import Carry, Cell, Params

Array = jax.Array


def parallel_scan(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    chunk_size: int | None,
    remat: bool,
    resets: Array | None = None,
    restart_carry: Carry | None = None,
) -> tuple[Carry, Array]:
    """``(final_carry, ys)`` for time-major ``xs (time, batch..., features)``; ``resets
    (time, batch...)`` (masked and shifted by ``unroll``) restart the state from
    ``restart_carry`` (default: ``carry``).

    With ``chunk_size``, a sequential ``lax.scan`` over chunks of that many steps runs the
    associative scan inside each chunk, so the scan's intermediates are per chunk rather than
    for the whole sequence; ``remat`` also recomputes each chunk in the backward pass.
    """
    linear = cell.linear
    num_steps = xs.shape[0]
    chunk = num_steps if chunk_size is None else min(chunk_size, num_steps)
    h0 = linear.state(carry)
    restart = None  # the state a reset goes back to
    if resets is not None:
        restart = h0 if restart_carry is None else linear.state(restart_carry)
    if chunk == num_steps and not remat:
        h_final, ys = _run_chunk(cell, params, h0, jnp.arange(num_steps), (xs, resets),
                                 lengths, reverse, restart)  # fmt: skip
        return linear.carry(h_final, carry), ys

    num_chunks = -(-num_steps // chunk)
    pad = num_chunks * chunk - num_steps
    if pad:  # padding steps are masked like steps past every length: they change nothing
        xs = jnp.pad(xs, [(0, pad)] + [(0, 0)] * (xs.ndim - 1))
        if resets is not None:
            resets = jnp.pad(resets, [(0, pad)] + [(0, 0)] * (resets.ndim - 1))
        if lengths is None:
            lengths = jnp.full(xs.shape[1:-1], num_steps)

    def body(h, inputs):
        t, x = inputs
        return _run_chunk(cell, params, h, t, x, lengths, reverse, restart)

    body = jax.checkpoint(body) if remat else body
    split = lambda a: None if a is None else a.reshape((num_chunks, chunk, *a.shape[1:]))  # noqa: E731
    steps = jnp.arange(num_chunks * chunk)
    chunks = (split(steps), (split(xs), split(resets)))
    h_final, ys = jax.lax.scan(body, h0, chunks, reverse=reverse)
    ys = ys.reshape((num_chunks * chunk, *ys.shape[2:]))[:num_steps]
    return linear.carry(h_final, carry), ys


def _run_chunk(cell, params, h0, t, inputs, lengths, reverse, restart=None):
    """The final state and the outputs for the steps ``t`` with ``inputs = (xs (steps, ...),
    resets (steps, batch...) or None)``; ``restart`` is the state a reset goes back to."""
    linear = cell.linear
    xs, resets = inputs
    px = cell.project(params, xs)
    valid = None if lengths is None else t.reshape(t.shape + (1,) * lengths.ndim) < lengths
    hs = _prefix_states(linear, params, px, h0, valid, reverse, resets, restart)
    ys = linear.read_out(params, hs, px)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return (hs[0] if reverse else hs[-1]), ys


def _prefix_states(linear, params, px, h0, valid, reverse, resets=None, restart=None):
    """Every step's state ``h_t`` for the steps in ``px (steps, batch..., P)`` from ``h0``.

    With ``resets``, a segmented scan: each element carries a flag, and a flagged element
    drops everything composed before it, so the prefix since the last reset ``(A_t, B_t)``
    gives ``h_t = A_t * restart + B_t`` (or ``A_t * h0 + B_t`` before any reset).
    """
    log_space = linear.log_coefficients is not None
    a, b = _masked_coefficients(linear, params, px, valid)  # logs of them in log space
    if resets is None:
        compose = _compose_log if log_space else _compose
        prefix_a, prefix_b = _prefix_scan(compose, (a, b), reverse)
        start = h0
    else:
        compose = _compose_log_segments if log_space else _compose_segments
        flags = jnp.broadcast_to(resets[..., None], b.shape)
        prefix_a, prefix_b, restarted = _prefix_scan(compose, (a, b, flags), reverse)
        start = jnp.where(restarted, restart, h0)
    if log_space:
        return jnp.exp(prefix_a) * start + jnp.exp(prefix_b)
    return prefix_a * start + prefix_b


def _masked_coefficients(linear, params, px, valid):
    """``(a, b)`` (``(log a, log b)`` for a log-space cell), with steps past a length made
    the identity ``(1, 0)``."""
    if linear.log_coefficients is None:
        a, b = linear.coefficients(params, px)
        a = jnp.broadcast_to(a, b.shape)
        if valid is not None:
            a = jnp.where(valid[..., None], a, jnp.ones_like(a))
            b = jnp.where(valid[..., None], b, jnp.zeros_like(b))
        return a, b
    log_a, log_b = linear.log_coefficients(params, px)
    log_a = jnp.broadcast_to(log_a, log_b.shape)
    if valid is not None:
        # log 0 would be -inf, whose logaddexp with itself has a NaN gradient; a very negative
        # finite number is exactly 0 after exp and keeps every gradient finite.
        nothing = jnp.asarray(jnp.finfo(log_b.dtype).min / 4, log_b.dtype)
        log_a = jnp.where(valid[..., None], log_a, jnp.zeros_like(log_a))
        log_b = jnp.where(valid[..., None], log_b, nothing)
    return log_a, log_b


@functools.partial(jax.jit, static_argnames=("compose", "reverse"))
def _prefix_scan(compose, elems, reverse: bool):
    """``associative_scan`` as one compiled program: called eagerly, the scan's O(log T) levels
    of slices and concatenations would each be dispatched on their own (16 s against 0.8 s for
    the step loop at T = 1024, the parallel.md example). Inside a caller's jit it is inlined."""
    return jax.lax.associative_scan(compose, elems, reverse=reverse)


def _compose_segments(first, second):
    a1, b1, f1 = first
    a2, b2, f2 = second
    return jnp.where(f2, a2, a1 * a2), jnp.where(f2, b2, a2 * b1 + b2), f1 | f2


def _compose_log_segments(first, second):
    log_a1, log_b1, f1 = first
    log_a2, log_b2, f2 = second
    joined_b = jnp.logaddexp(log_a2 + log_b1, log_b2)
    return jnp.where(f2, log_a2, log_a1 + log_a2), jnp.where(f2, log_b2, joined_b), f1 | f2


def _compose(first, second):
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def _compose_log(first, second):
    log_a1, log_b1 = first
    log_a2, log_b2 = second
    return log_a1 + log_a2, jnp.logaddexp(log_a2 + log_b1, log_b2)
