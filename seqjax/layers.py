"""Layers: whole-sequence maps built from cells, and combinators that build bigger layers.

A layer is a NamedTuple of pure functions, like a cell one level up:

    layer = seqjax.stack(seqjax.bidirectional(seqjax.rnn(seqjax.lstm(64)),
                                              seqjax.rnn(seqjax.lstm(64))),
                         seqjax.rnn(seqjax.gru(64)), dropout=0.1)
    params = layer.init(key, input_size=32)
    final_carry, ys = layer.apply(params, xs, lengths=lengths, key=dropout_key)

``bidirectional`` and ``stack`` take layers and return a layer, so they nest freely.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax import dropout as recurrent_dropout_
from seqjax.dropout import Dropouts, Masked
from seqjax.types import Carry, Cell, Params
from seqjax.unroll import unroll
from seqjax.unrolling.options import UnrollOptions, merged_options, options_argument

Array = jax.Array


class ApplyFn(Protocol):
    def __call__(
        self,
        params: Params,
        xs: Array,
        *,
        lengths: Array | None = None,
        carry: Carry | None = None,
        key: Array | None = None,
        resets: Array | None = None,
        reset_carry: Carry | None = None,
    ) -> tuple[Carry, Array]:
        """Maps ``xs (batch..., time, features)`` to ``(final_carry, ys (batch..., time, out))``.
        ``key`` enables the layer's randomness (dropout); without it the layer is deterministic.
        ``resets (batch..., time)``: where the carry restarts, from ``reset_carry`` (shaped
        like the carry) or else the initial carry (see :func:`seqjax.unroll`); the built-in
        layers take them, a layer built by hand may leave them out."""


class RNNSpec(NamedTuple):
    """A layer built by :func:`rnn`: its cell, the options it unrolls it with and its dropout
    rates (the cell is the one given, without the dropout masks)."""

    cell: Cell
    options: UnrollOptions
    dropouts: Dropouts = Dropouts()

    @property
    def dropouts_kw(self) -> dict[str, float]:
        """The dropout rates as :func:`rnn`'s keywords."""
        rates = self.dropouts
        return {
            "recurrent_dropout": rates.recurrent,
            "input_dropout": rates.input,
            "zoneout": rates.zoneout,
        }


class BidirectionalSpec(NamedTuple):
    """A layer built by :func:`bidirectional` from these two layers."""

    forward: Layer
    backward: Layer


class StackSpec(NamedTuple):
    """A layer built by :func:`stack` from these layers, with this dropout between them."""

    layers: tuple[Layer, ...]
    dropout: float


LayerSpec = RNNSpec | BidirectionalSpec | StackSpec


class Layer(NamedTuple):
    """A sequence-to-sequence layer.

    Attributes:
      init: ``init(key, input_size, dtype=None) -> params``.
      apply: see :class:`ApplyFn`.
      initial_carry: ``initial_carry(params, batch_shape=()) -> carry`` (zeros).
      output_size: features of the outputs.
      time_major: whether ``xs`` and ``ys`` have time first.
      spec: how the layer was built, for code that inspects a model (``seqjax.diagnostics``):
        an :class:`RNNSpec`, :class:`BidirectionalSpec` or :class:`StackSpec`; ``None`` for a
        layer built by hand.
    """

    init: Callable[..., Params]
    apply: ApplyFn
    initial_carry: Callable[..., Carry]
    output_size: int
    time_major: bool = False
    spec: LayerSpec | None = None

    @property
    def parts(self) -> tuple | None:
        """Deprecated: ``spec`` as the string-tagged tuple of earlier versions."""
        warnings.warn(
            "Layer.parts is deprecated; use Layer.spec (RNNSpec, BidirectionalSpec, StackSpec)",
            DeprecationWarning,
            stacklevel=2,
        )
        spec = self.spec
        if isinstance(spec, RNNSpec):
            return ("rnn", spec.cell, tuple(dataclasses.asdict(spec.options).items()))
        if isinstance(spec, BidirectionalSpec):
            return ("bidirectional", spec.forward, spec.backward)
        if isinstance(spec, StackSpec):
            return ("stack", spec.layers, spec.dropout)
        return None


def rnn(
    cell: Cell,
    *,
    options: UnrollOptions | None = None,
    recurrent_dropout: float = 0.0,
    input_dropout: float = 0.0,
    zoneout: float = 0.0,
    **unroll_options: Any,
) -> Layer:
    """The layer that runs ``cell`` over a sequence with :func:`seqjax.unroll`.

    Args:
      cell: the cell.
      options: the unroll options as one :class:`~seqjax.UnrollOptions`, or
      **unroll_options: the same as keywords (``reverse``, ``time_major``, ``unroll``,
        ``remat``, ``hoist_projection``, ``custom_vjp``, ``parallel``, ``chunk_size``,
        ``native``).
      recurrent_dropout: variational dropout (Gal & Ghahramani 2016) of the state entering the
        recurrent product: one mask per sequence, the same at every step. With a ``key`` only.
      input_dropout: variational dropout of the inputs, one mask per sequence. With a ``key``
        only.
      zoneout: zoneout (Krueger et al. 2017): each unit of the state keeps its previous value
        with this probability at each step; without a ``key``, the expectation.

    Params are the cell's; the carry is the cell's carry. The dropouts are described in
    :mod:`seqjax.dropout`; a layer with zoneout, or with recurrent dropout and a key, runs
    the scan (the native kernels take no masks).
    """
    _checks.check_cell(cell, "rnn")
    options = merged_options(options, unroll_options, "rnn")
    options.check_cell(cell, "rnn")
    dropouts = Dropouts(*(
        _checks.check_number(rate, name, "rnn", lambda p: 0 <= p < 1, "a probability in [0, 1)")
        for rate, name in ((recurrent_dropout, "recurrent_dropout"),
                           (input_dropout, "input_dropout"), (zoneout, "zoneout"))
    ))  # fmt: skip
    recurrent_dropout_.check_cell(cell, dropouts, "rnn")
    if (dropouts.recurrent > 0 or dropouts.zoneout > 0) and options.native:
        raise ValueError(
            "rnn: native=True, but the native kernels take no dropout masks: recurrent_dropout "
            "(with a key) and zoneout run on the scan. Pass native=None to use the kernels "
            "wherever no mask is drawn"
        )
    if dropouts.any and options.parallel:
        raise ValueError(
            "rnn: dropout and zoneout run step by step, and parallel=True is the associative "
            "scan of a linear recurrence; pass parallel=False, or no dropout"
        )

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        if dropouts.any:
            _check_key(key, "rnn")
            return _apply_with_dropout(
                cell, dropouts, options, params, xs, lengths, carry, key, resets, reset_carry
            )
        del key  # a plain recurrent layer has no randomness
        return unroll(
            cell, params, xs, carry=carry, lengths=lengths, resets=resets,
            reset_carry=reset_carry, options=options,
        )  # fmt: skip

    return Layer(
        init=cell.init,
        apply=apply,
        initial_carry=cell.initial_carry,
        output_size=cell.output_size,
        time_major=options.time_major,
        spec=RNNSpec(cell, options, dropouts),
    )


def _apply_with_dropout(cell, dropouts, options, params, xs, lengths, carry, key, resets,
                        reset_carry):  # fmt: skip
    """``rnn``'s apply with masks: the input mask applied, the zoneout masks appended to the
    inputs, the variational mask carried along with the carry (:mod:`seqjax.dropout`)."""
    xs = _checks.check_array(xs, "xs", "rnn", min_rank=2)
    dtype = _checks.params_dtype(params, "rnn")
    time_axis = 0 if options.time_major else xs.ndim - 2
    batch_shape = tuple(d for i, d in enumerate(xs.shape[:-1]) if i != time_axis)
    keys = jax.random.split(key, 3) if key is not None else (None,) * 3
    if dropouts.input > 0 and key is not None:
        shape = list(xs.shape)
        shape[time_axis] = 1  # one mask per sequence, the same at every step
        xs = xs * recurrent_dropout_.bernoulli_scaled(keys[0], dropouts.input, tuple(shape), dtype)
    run_cell = cell
    if dropouts.zoneout > 0:
        run_cell = recurrent_dropout_.zoneout_cell(run_cell)
        shape = (*xs.shape[:-1], recurrent_dropout_.zoneout_width(cell, params))
        if key is None:  # the expectation, as at test time in the paper
            keep_old = jnp.full(shape, dropouts.zoneout, dtype)
        else:
            keep_old = jax.random.bernoulli(keys[1], dropouts.zoneout, shape).astype(dtype)
        xs = jnp.concatenate([xs.astype(dtype), keep_old], axis=-1)
    masked = dropouts.recurrent > 0 and key is not None
    if masked:
        run_cell = recurrent_dropout_.variational_cell(run_cell)
        carry = cell.initial_carry(params, batch_shape) if carry is None else carry
        leaves, tree = jax.tree.flatten(carry)
        leaf_keys = jax.random.split(keys[2], len(leaves))
        mask = jax.tree.unflatten(tree, [
            recurrent_dropout_.bernoulli_scaled(k, dropouts.recurrent, leaf.shape, dtype)
            for k, leaf in zip(leaf_keys, leaves, strict=True)
        ])  # fmt: skip
        carry = Masked(carry, mask)
        reset_carry = None if reset_carry is None else Masked(reset_carry, mask)
    final, ys = unroll(
        run_cell, params, xs, carry=carry, lengths=lengths, resets=resets,
        reset_carry=reset_carry, options=options,
    )  # fmt: skip
    return (final.carry if masked else final), ys


def bidirectional(forward: Layer, backward: Layer) -> Layer:
    """Runs ``forward`` over the sequence and ``backward`` over it reversed (each sequence
    reversed within its own length), and concatenates their outputs, forward first.

    Pass two forward-running layers: ``bidirectional`` does the reversing. Params are
    ``{"forward": ..., "backward": ...}``; the carry is ``(forward_carry, backward_carry)``.
    """
    for name, layer in (("forward", forward), ("backward", backward)):
        _check_layer(layer, name, "bidirectional")
        if _runs_in_reverse(layer):
            raise ValueError(
                f"bidirectional: {name} was built with reverse=True; bidirectional reverses "
                "the sequences for the backward layer itself (so that one would run forward "
                f"again). Build {name} with reverse=False: seqjax.rnn(cell)"
            )
    if forward.time_major != backward.time_major:
        raise ValueError(
            "bidirectional: forward and backward must share a layout; got time_major="
            f"{forward.time_major} and {backward.time_major}"
        )
    time_major = forward.time_major

    def init(key, input_size, dtype=None):
        k_fwd, k_bwd = jax.random.split(key)
        return {
            "forward": forward.init(k_fwd, input_size, dtype),
            "backward": backward.init(k_bwd, input_size, dtype),
        }

    def initial_carry(params, batch_shape=()):
        return (
            forward.initial_carry(params["forward"], batch_shape),
            backward.initial_carry(params["backward"], batch_shape),
        )

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(
                "bidirectional: params must be a dict with keys ['backward', 'forward'], as "
                f"layer.init returns; got {got}"
            )
        carry_fwd, carry_bwd = _split_carry(carry, 2, "bidirectional")
        restart_fwd, restart_bwd = _split_carry(reset_carry, 2, "bidirectional", "reset_carry")
        _check_key(key, "bidirectional")
        key_fwd, key_bwd = jax.random.split(key) if key is not None else (None, None)
        xs = _checks.check_array(xs, "xs", "bidirectional", min_rank=2)
        time_axis = 0 if time_major else xs.ndim - 2
        carry_fwd, ys_fwd = forward.apply(
            params["forward"], xs, lengths=lengths, carry=carry_fwd, key=key_fwd,
            **_with_resets(resets, restart_fwd),
        )  # fmt: skip
        carry_bwd, ys_bwd = backward.apply(
            params["backward"], reverse_sequences(xs, lengths, time_axis), lengths=lengths,
            carry=carry_bwd, key=key_bwd,
            **_with_resets(_reversed_resets(resets, lengths, time_axis), restart_bwd),
        )  # fmt: skip
        ys_bwd = reverse_sequences(ys_bwd, lengths, time_axis)
        return (carry_fwd, carry_bwd), jnp.concatenate([ys_fwd, ys_bwd], axis=-1)

    return Layer(
        init=init,
        apply=apply,
        initial_carry=initial_carry,
        output_size=forward.output_size + backward.output_size,
        time_major=time_major,
        spec=BidirectionalSpec(forward, backward),
    )


def stack(*layers: Layer, dropout: float = 0.0, options: UnrollOptions | None = None) -> Layer:
    """Layers applied one after another, each taking the previous one's outputs.

    Args:
      *layers: one or more layers sharing a layout.
      dropout: probability in [0, 1) of zeroing an output between two layers (not after the
        last), as PyTorch's ``dropout`` argument. Active only when ``apply`` gets a ``key``.
      options: an :class:`~seqjax.UnrollOptions` that every recurrent layer inside (built by
        ``rnn``, also within ``bidirectional`` and nested stacks) unrolls with instead of its
        own, keeping its own ``reverse`` and ``time_major``; say ``remat=True`` once for a
        whole model.

    Params and carry are tuples with one entry per layer.
    """
    if not layers:
        raise ValueError("stack: layers must hold at least one layer (stack(layer, ...)); got none")
    for i, layer in enumerate(layers):
        _check_layer(layer, f"layers[{i}]", "stack")
    if options is not None:
        layers = tuple(
            _unrolled_with(layer, options_argument(options, "stack"), f"layers[{i}]")
            for i, layer in enumerate(layers)
        )
    layouts = {layer.time_major for layer in layers}
    if len(layouts) > 1:
        raise ValueError("stack: all layers must share a layout; got mixed time_major values")
    dropout = _checks.check_number(
        dropout, "dropout", "stack", lambda p: 0 <= p < 1, "a probability in [0, 1)"
    )
    count = len(layers)

    def init(key, input_size, dtype=None):
        params = []
        for layer, k in zip(layers, jax.random.split(key, count), strict=True):
            params.append(layer.init(k, input_size, dtype))
            input_size = layer.output_size
        return tuple(params)

    def initial_carry(params, batch_shape=()):
        return tuple(
            layer.initial_carry(p, batch_shape) for layer, p in zip(layers, params, strict=True)
        )

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        if not isinstance(params, tuple | list) or len(params) != count:
            raise ValueError(
                f"stack: params must be a tuple of {count} entries (one per layer), as "
                f"layer.init returns; got {type(params).__name__}"
                + (f" of {len(params)}" if isinstance(params, tuple | list) else "")
            )
        carries = _split_carry(carry, count, "stack")
        restarts = _split_carry(reset_carry, count, "stack", "reset_carry")
        _check_key(key, "stack")
        keys = jax.random.split(key, 2 * count) if key is not None else [None] * (2 * count)
        finals = []
        for i, (layer, p, c, r) in enumerate(zip(layers, params, carries, restarts, strict=True)):
            c, xs = layer.apply(
                p, xs, lengths=lengths, carry=c, key=keys[2 * i], **_with_resets(resets, r)
            )
            finals.append(c)
            if i < count - 1 and key is not None and dropout > 0:
                xs = _dropout(keys[2 * i + 1], xs, dropout)
        return tuple(finals), xs

    return Layer(
        init=init,
        apply=apply,
        initial_carry=initial_carry,
        output_size=layers[-1].output_size,
        time_major=layers[0].time_major,
        spec=StackSpec(tuple(layers), dropout),
    )


def reverse_sequences(xs: Array, lengths: Array | None, time_axis: int) -> Array:
    """Reverses each sequence along ``time_axis`` within its own length; padding stays put.

    ``xs`` is ``(..., time, features)`` with the batch axes ``lengths`` indexes; applying it twice
    gives ``xs`` back.
    """
    fn = "reverse_sequences"
    if not hasattr(xs, "shape"):
        xs = jnp.asarray(xs)
    if xs.ndim < 2:
        raise ValueError(
            f"{fn}: xs must have at least 2 axes (time, features); got shape {xs.shape}"
        )
    if (
        not _checks.is_int(time_axis)
        or not -xs.ndim <= time_axis < xs.ndim
        or int(time_axis) % xs.ndim == xs.ndim - 1
    ):
        raise ValueError(
            f"{fn}: time_axis must be an axis of xs other than the last (features) one; got "
            f"{time_axis!r} for xs of shape {xs.shape}"
        )
    time_axis = int(time_axis) % xs.ndim
    if lengths is None:
        return jnp.flip(xs, axis=time_axis)
    num_steps = xs.shape[time_axis]
    batch_shape = tuple(d for i, d in enumerate(xs.shape[:-1]) if i != time_axis)
    lengths = _checks.check_lengths(lengths, batch_shape, num_steps, fn)
    xs_tm = jnp.moveaxis(xs, time_axis, 0)  # (time, batch..., features)
    t = jnp.arange(num_steps).reshape((num_steps,) + (1,) * lengths.ndim)
    source = jnp.where(t < lengths, lengths - 1 - t, t)  # (time, batch...)
    flipped = jnp.take_along_axis(xs_tm, source[..., None], axis=0)
    return jnp.moveaxis(flipped, 0, time_axis)


def _with_resets(resets: Array | None, reset_carry: Carry | None = None) -> dict:
    """``resets=`` (and ``reset_carry=``) for an inner layer's ``apply``, left out when there
    are none (a layer built by hand need not take them)."""
    extra = {} if resets is None else {"resets": resets}
    return extra if reset_carry is None else {**extra, "reset_carry": reset_carry}


def _reversed_resets(resets: Array | None, lengths: Array | None, time_axis: int):
    """The resets of the sequences ``reverse_sequences`` makes: a segment ``[s, e)`` of a
    length-L row becomes ``[L - e, L - s)``, so the reversed row restarts at ``L - s`` for each
    original start ``s``: the original flags reversed within the length, one step later."""
    if resets is None:
        return None
    flipped = reverse_sequences(resets[..., None], lengths, time_axis)[..., 0]
    num_steps = resets.shape[time_axis]
    earlier = jax.lax.slice_in_dim(flipped, 0, num_steps - 1, axis=time_axis)
    none = jnp.zeros_like(jax.lax.slice_in_dim(flipped, 0, 1, axis=time_axis))
    return jnp.concatenate([none, earlier], axis=time_axis)


def _dropout(key: Array, xs: Array, rate: float) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, xs.shape)
    return jnp.where(keep, xs / (1.0 - rate), jnp.zeros_like(xs))


def _split_carry(carry: Any, count: int, fn: str, name: str = "carry") -> tuple[Any, ...]:
    if carry is None:
        return (None,) * count
    # A NamedTuple (such as LSTMCarry) is one cell's carry, never the per-layer tuple.
    if not isinstance(carry, tuple) or hasattr(carry, "_fields") or len(carry) != count:
        raise ValueError(
            f"{fn}: {name} must be a tuple of {count} entries (None for zeros, or as "
            f"layer.initial_carry returns); got {type(carry).__name__}"
            + (f" of {len(carry)}" if isinstance(carry, tuple) else "")
        )
    return carry


def _check_layer(layer: Any, name: str, fn: str) -> None:
    if isinstance(layer, Cell):
        raise TypeError(f"{fn}: {name} is a Cell; wrap it in a layer first: seqjax.rnn(cell)")
    if not isinstance(layer, Layer):
        raise TypeError(f"{fn}: {name} must be a seqjax Layer; got {type(layer).__name__}")


def _unrolled_with(layer: Layer, options: UnrollOptions, name: str) -> Layer:
    """``layer`` rebuilt so that each of its recurrent layers unrolls with ``options`` (and
    its own direction and layout)."""
    spec = layer.spec
    if isinstance(spec, RNNSpec):
        own = options.replace(reverse=spec.options.reverse, time_major=spec.options.time_major)
        return rnn(spec.cell, options=own, **spec.dropouts_kw)
    if isinstance(spec, BidirectionalSpec):
        return bidirectional(
            _unrolled_with(spec.forward, options, f"{name}.forward"),
            _unrolled_with(spec.backward, options, f"{name}.backward"),
        )
    if isinstance(spec, StackSpec):
        return stack(*spec.layers, dropout=spec.dropout, options=options)
    raise TypeError(
        f"stack: options= applies to layers built by seqjax.rnn, bidirectional and stack; {name} "
        "was built by hand (its .spec is None): build it with seqjax.rnn(cell), or leave out "
        "options"
    )


def _runs_in_reverse(layer: Layer) -> bool:
    """Whether ``layer`` (or a layer stacked in it) was built with ``rnn(..., reverse=True)``."""
    if isinstance(layer.spec, RNNSpec):
        return layer.spec.options.reverse
    if isinstance(layer.spec, StackSpec):
        return any(_runs_in_reverse(inner) for inner in layer.spec.layers)
    return False


def _check_key(key: Any, fn: str) -> None:
    """``key``: ``None`` or one PRNG key (``jax.random.key`` or a raw ``PRNGKey``)."""
    if key is None:
        return
    if isinstance(key, jax.Array | np.ndarray):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return
        if key.dtype == np.uint32 and key.shape == (2,):
            return
    described = f"{type(key).__name__}"
    if hasattr(key, "dtype"):
        described += f" of dtype {key.dtype} and shape {tuple(key.shape)}"
    raise TypeError(
        f"{fn}: key must be one PRNG key (jax.random.key(seed)) or None; got {described}"
    )
