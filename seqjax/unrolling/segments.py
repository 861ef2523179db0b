"""Cutting a sequence into chunks of ~sqrt(T) steps and visiting them in order, the
bookkeeping that ``remat`` (plain and in the custom VJP) and the chunked parallel scan share."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def chunk_size(num_steps: int) -> int:
    """A chunk length near sqrt(T), preferring one that divides T (no tail chunk) but never 1
    for T > 1 (one step a chunk would store every carry)."""
    root = math.sqrt(num_steps)
    divisors = [d for d in range(max(2, int(root / 2)), int(2 * root) + 1) if num_steps % d == 0]
    return min(divisors, key=lambda d: abs(d - root)) if divisors else max(1, round(root))


def time_major(x: Array, time_axis: int) -> Array:
    """``x`` with its time axis first."""
    return jnp.moveaxis(x, time_axis, 0)


class Segments(NamedTuple):
    """The steps ``0 .. num_steps - 1`` as ``num_steps // size`` whole chunks (one scan) and a
    shorter tail chunk (run on its own); ``reverse``: the recurrence visits them last to first.
    ``take`` and ``put`` move one chunk, time-major, out of and into an array in the caller's
    layout (time on ``time_axis``); ``split`` and ``join`` cut time-major arrays into, and
    glue them back from, (whole chunks, tail)."""

    num_steps: int
    size: int
    time_axis: int
    reverse: bool

    @property
    def count(self) -> int:
        return self.num_steps // self.size

    @property
    def tail(self) -> int:
        return self.num_steps - self.count * self.size

    def take(self, x: Array, start: Array | int, size: int) -> Array:
        """Steps ``start .. start + size - 1`` of ``x``, time-major."""
        return time_major(
            jax.lax.dynamic_slice_in_dim(x, start, size, self.time_axis), self.time_axis
        )

    def put(self, x: Array, chunk: Array, start: Array | int) -> Array:
        """``x`` with the time-major ``chunk`` written at steps ``start ..``."""
        chunk = jnp.moveaxis(chunk, 0, self.time_axis)
        return jax.lax.dynamic_update_slice_in_dim(x, chunk, start, self.time_axis)

    def split(self, tree):
        """Time-major leaves ``(time, ...) -> ((count, size, ...), (tail, ...))``."""
        whole = self.count * self.size
        return (
            jax.tree.map(lambda x: x[:whole].reshape(self.count, self.size, *x.shape[1:]), tree),
            jax.tree.map(lambda x: x[whole:], tree),
        )

    def join(self, parts):
        """``split`` undone: ``((count, size, ...), (tail, ...)) -> (time, ...)``."""
        whole, tail = parts
        glued = jax.tree.map(lambda w: w.reshape(self.count * self.size, *w.shape[2:]), whole)
        if not self.tail:
            return glued
        return jax.tree.map(lambda w, t: jnp.concatenate([w, t]), glued, tail)

    def visit(self, chunk_fn, state, per_chunk=(None, None), backward=False):
        """Runs ``chunk_fn(state, start, size, data) -> (state, out)`` on every chunk, in the
        recurrence's order, or in the opposite one with ``backward``. ``per_chunk`` is
        ``(whole, tail)``: leaves ``(count, ...)`` handed out one slice a whole chunk, and the
        tail chunk's data. Returns the state and ``(outs of the whole chunks, stacked; the
        tail's out)``."""
        whole_data, tail_data = per_chunk

        def body(state, inp):
            index, data = inp
            return chunk_fn(state, index * self.size, self.size, data)

        def run_tail(state):
            if not self.tail:
                return state, None
            return chunk_fn(state, self.count * self.size, self.tail, tail_data)

        inputs = (jnp.arange(self.count), whole_data)
        if self.reverse == backward:  # first chunk to last
            state, outs = jax.lax.scan(body, state, inputs)
            state, tail_out = run_tail(state)
        else:
            state, tail_out = run_tail(state)
            state, outs = jax.lax.scan(body, state, inputs, reverse=True)
        return state, (outs, tail_out)
