"""Streaming: a sequence fed in chunks, or one step at a time, with its state carried between
calls, giving exactly what one :func:`seqjax.unroll` over the whole sequence gives.

    streamer = seqjax.stream(layer)
    carry = streamer.start(params, batch_shape=(1,))
    for chunk in chunks:                     # (batch..., time_k, features), any time_k
        carry, ys = streamer.feed(params, carry, chunk)
    carry, y = streamer.step(params, carry, x_t)   # one step, (batch..., features)

``feed`` and ``step`` are compiled once per input shape, and ``step`` calls the cells directly
(no scan), which keeps a batch-1 step at the cost of its own arithmetic plus one dispatch.
Only layers that run forward in time can stream: a bidirectional layer, or one built with
``reverse=True``, needs the whole sequence first and is refused.

For training on a stream (truncated backpropagation through time), call ``layer.apply`` on
each chunk with the carry the last one returned, under ``jax.lax.stop_gradient``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax import native as seqjax_native
from seqjax.layers import BidirectionalSpec, Layer, RNNSpec, StackSpec
from seqjax.types import Carry, Params

Array = jax.Array
StepFn = Callable[[Params, Any, Carry, Array], tuple[Carry, Array]]


class Prepared(NamedTuple):
    """Params with what the fastest ``step`` needs made once: for each recurrent layer a native
    kernel can step, its weights packed in the kernel's layout (``None`` for the others)."""

    params: Params
    weights: Any


class Stream(NamedTuple):
    """A layer's streaming functions, from :func:`stream`. Each takes the layer's params, or
    the :class:`Prepared` ones that ``prepare`` returns (the same numbers, a faster ``step``).

    Attributes:
      start: ``start(params, batch_shape=()) -> carry``, the state before the first input
        (zeros, as ``layer.initial_carry``).
      feed: ``feed(params, carry, xs, *, lengths=None, resets=None) -> (carry, ys)``: the
        next chunk ``xs (batch..., time, features)`` (time first for a ``time_major`` layer),
        ``ys (batch..., time, output_size)``. ``lengths (batch...)``: how many of this chunk's
        steps are valid per row (a row whose stream has ended passes 0); its carry stays put
        past them. ``resets (batch..., time)``: where the carry restarts from zeros (episode
        starts); see :func:`seqjax.unroll`.
      step: ``step(params, carry, x_t, *, reset=None) -> (carry, y)``: one step,
        ``x_t (batch..., features)``, ``y (batch..., output_size)``; ``reset (batch...)``
        booleans restart the flagged rows from zeros before the step. ``carry=None`` starts
        from zeros.
      prepare: ``prepare(params) -> Prepared``. On the CPU in float32, ``step`` with prepared
        params runs the built-in LSTM, GRU and Elman RNN as one native kernel call per layer
        (:mod:`seqjax.native`), which at batch 1 takes a fraction of XLA's matrix-vector
        product; with plain params it runs the cells' XLA step.
      layer: the layer streamed.
    """

    start: Callable[..., Carry]
    feed: Callable[..., tuple[Carry, Array]]
    step: Callable[..., tuple[Carry, Array]]
    prepare: Callable[[Params], Prepared]
    layer: Layer


def stream(layer: Layer, *, pad_to: int | None = None) -> Stream:
    """The functions that run ``layer`` over a sequence given in pieces.

    Args:
      layer: a layer built by :func:`seqjax.rnn` or :func:`seqjax.stack` (of such layers),
        running forward in time; a layer built by hand streams through its ``apply``.
      pad_to: with an int ``k``, ``feed`` pads each chunk to the next multiple of ``k`` steps
        (the padding masked by ``lengths``), so chunks of varying size share a few compiled
        programs instead of one per size; ``None`` compiles one per chunk size.

    Returns:
      A :class:`Stream`. Chunks of any sizes, fed in order, give the outputs and final carry of
      one ``layer.apply`` over their concatenation (carry from zeros), to rounding.
    """
    fn = "stream"
    if not isinstance(layer, Layer):
        raise TypeError(
            f"{fn}: layer must be a seqjax Layer (seqjax.rnn(cell), seqjax.stack(...)); got "
            f"{type(layer).__name__}"
        )
    _check_streamable(layer, "layer", fn)
    if pad_to is not None:
        pad_to = _checks.check_positive_int(pad_to, "pad_to", fn)
    one_step = _step_fn(layer)

    @jax.jit
    def apply_chunk(params, carry, xs, lengths, resets):
        if resets is None:
            return layer.apply(params, xs, carry=carry, lengths=lengths)
        zeros = jax.tree.map(jnp.zeros_like, carry)  # an episode starts from zeros, not `carry`
        return layer.apply(
            params, xs, carry=carry, lengths=lengths, resets=resets, reset_carry=zeros
        )

    @jax.jit
    def step_jitted(params, weights, carry, x_t, reset):
        x_t = _checks.check_array(x_t, "x_t", "Stream.step", min_rank=1)
        if carry is None:
            carry = layer.initial_carry(params, x_t.shape[:-1])
        if reset is not None:
            if reset.dtype != jnp.bool_ or reset.shape != x_t.shape[:-1]:
                raise ValueError(
                    f"Stream.step: reset must be booleans of shape {x_t.shape[:-1]} (x_t's "
                    f"batch shape: True restarts that row); got {reset.dtype}{list(reset.shape)}"
                )
            carry = jax.tree.map(lambda c: jnp.where(reset[..., None], 0, c), carry)
        return one_step(params, weights, carry, x_t)

    def start(params: Params | Prepared, batch_shape: Any = ()) -> Carry:
        params = params.params if isinstance(params, Prepared) else params
        return layer.initial_carry(params, _checks.check_batch_shape(batch_shape, "Stream.start"))

    def feed(params, carry, xs, *, lengths=None, resets=None):
        params = params.params if isinstance(params, Prepared) else params
        return _feed(layer, pad_to, apply_chunk, params, carry, xs, lengths, resets)

    def step(params, carry, x_t, *, reset=None):
        reset = None if reset is None else jnp.asarray(reset)
        if isinstance(params, Prepared):
            return step_jitted(params.params, params.weights, carry, x_t, reset)
        return step_jitted(params, None, carry, x_t, reset)

    def prepare(params: Params) -> Prepared:
        return Prepared(params, _weights(layer, params))

    return Stream(start=start, feed=feed, step=step, prepare=prepare, layer=layer)


def _feed(layer, pad_to, apply_chunk, params, carry, xs, lengths, resets):
    """``Stream.feed``: the checks that need concrete shapes, the padding, one compiled call."""
    fn = "Stream.feed"
    xs = _checks.check_array(xs, "xs", fn, min_rank=2)
    time_axis = 0 if layer.time_major else xs.ndim - 2
    num_steps = xs.shape[time_axis]
    if num_steps == 0:
        raise ValueError(
            f"{fn}: xs has no time steps (shape {xs.shape}); feed a chunk of at least one step"
        )
    batch_shape = tuple(d for i, d in enumerate(xs.shape[:-1]) if i != time_axis)
    if lengths is not None:
        lengths = _checks.check_lengths(lengths, batch_shape, num_steps, fn, low=0)
    if resets is not None:
        resets = _checks.check_resets(resets, xs.shape[:-1], fn, layer.time_major)
    padded = num_steps if pad_to is None else pad_to * math.ceil(num_steps / pad_to)
    if pad_to is not None:  # lengths even when no padding is needed: one signature for all
        xs, resets = (_pad_time(a, padded, time_axis) for a in (xs, resets))
        if lengths is None:
            lengths = jnp.full(batch_shape, num_steps, jnp.int32)
        lengths = lengths.astype(jnp.int32)
    carry, ys = apply_chunk(params, carry, xs, lengths, resets)
    return carry, jax.lax.slice_in_dim(ys, 0, num_steps, axis=time_axis)


def _check_streamable(layer: Layer, name: str, fn: str) -> None:
    """A layer can stream when every recurrent layer in it runs forward in time."""
    spec = layer.spec
    if isinstance(spec, BidirectionalSpec):
        raise ValueError(
            f"{fn}: {name} is bidirectional: its backward half reads the sequence from the end, "
            "so no output is final before the whole sequence has come. Stream a forward layer "
            "(seqjax.rnn(cell)) or a stack of them; run bidirectional layers with layer.apply "
            "on whole sequences"
        )
    if isinstance(spec, RNNSpec) and spec.options.reverse:
        raise ValueError(
            f"{fn}: {name} was built with reverse=True and reads the sequence from the end; "
            "only layers that run forward in time can stream"
        )
    if isinstance(spec, StackSpec):
        for i, inner in enumerate(spec.layers):
            _check_streamable(inner, f"{name}.layers[{i}]", fn)


def _step_fn(layer: Layer) -> StepFn:
    """One time step of ``layer``, ``(params, weights, carry, x_t) -> (carry, y)``: the cells'
    own step, not a scan of length one; a native kernel where :func:`_weights` packed any."""
    spec = layer.spec
    if isinstance(spec, RNNSpec) and spec.dropouts.zoneout == 0:  # zoneout: through apply
        cell = spec.cell
        kernel = seqjax_native.kernel_for(cell.recur_split)

        def rnn_step(params, weights, carry, x_t):  # the checks run once, when jit traces
            fn = "Stream.step"
            expected = _checks.expected_input_size(cell, params, fn)
            _checks.check_features(x_t, expected, "x_t", fn, "(batch..., {d})")
            x_t = x_t.astype(_checks.params_dtype(params, fn))
            _checks.check_carry(cell, params, carry, x_t.shape[:-1], fn)
            if weights is None:
                return cell.recur(params, carry, cell.project(params, x_t))
            xs = x_t[..., None, :]  # one step, batch-major
            carry, ys, _ = seqjax_native.forward(
                kernel, params, weights, xs, carry, 0, None, False, False, batch_major=True
            )
            return carry, ys[..., 0, :]

        return rnn_step
    if isinstance(spec, StackSpec):
        steps = [_step_fn(inner) for inner in spec.layers]

        def stack_step(params, weights, carry, x_t):
            weights = (None,) * len(steps) if weights is None else weights
            finals = []
            for inner_step, p, w, c in zip(steps, params, weights, carry, strict=True):
                c, x_t = inner_step(p, w, c, x_t)
                finals.append(c)
            return tuple(finals), x_t

        return stack_step
    time_axis = 0 if layer.time_major else -2

    def apply_step(params, weights, carry, x_t):  # a layer built by hand: one step's sequence
        del weights
        carry, ys = layer.apply(params, jnp.expand_dims(x_t, time_axis), carry=carry)
        return carry, jnp.squeeze(ys, time_axis)

    return apply_step


def _weights(layer: Layer, params: Params) -> Any:
    """For each recurrent layer in ``layer`` that a native kernel can step, the kernel's packed
    weights (``None`` for the others), nested as the layer's params."""
    spec = layer.spec
    if isinstance(spec, StackSpec):
        return tuple(_weights(inner, p) for inner, p in zip(spec.layers, params, strict=True))
    if not isinstance(spec, RNNSpec) or spec.options.native is False or spec.dropouts.zoneout:
        return None
    kernel = seqjax_native.kernel_for(spec.cell.recur_split)
    like = jax.ShapeDtypeStruct((1, 1), jnp.float32)  # step casts x_t to the params' dtype
    if seqjax_native.unsupported_reason(kernel, params, like) is not None:
        return None
    return jax.jit(seqjax_native.pack_weights, static_argnums=0)(kernel, params)


def _pad_time(x: Array | None, size: int, time_axis: int) -> Array | None:
    """``x`` padded with zeros (``False``) to ``size`` steps along ``time_axis``."""
    if x is None or x.shape[time_axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[time_axis] = (0, size - x.shape[time_axis])
    return jnp.pad(x, widths)
