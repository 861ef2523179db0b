"""seqjax's cells and layers as Flax NNX modules.

Each module holds a cell's parameters as ``nnx.Param`` (one per entry of the cell's params dict)
and calls the same pure functions as the rest of seqjax: ``seqjax.unroll`` does the work, so
no equation is written twice. They compose with any NNX model and work under ``nnx.jit``,
``nnx.grad``, ``nnx.split``/``nnx.merge``, ``nnx.scan`` and ``nnx.Optimizer``::

    from flax import nnx
    import seqjax.nn

    lstm = seqjax.nn.LSTM(16, 64, rngs=nnx.Rngs(0))
    ys = lstm(xs)                                   # xs: (batch, time, 16) -> (batch, time, 64)
    carry, ys = lstm(xs, seq_lengths=lengths, return_carry=True)

The call mirrors ``flax.nnx.RNN``: ``initial_carry``, ``seq_lengths`` (``lengths`` is accepted
as an alias), ``return_carry``, ``time_major``, ``reverse`` and ``keep_order``. Unlike Flax's,
outputs past a sequence's length are zero. With ``reverse=True`` each sequence runs from its
own last valid step; ``keep_order=False`` (Flax's default) then returns the outputs in the
order they were produced, reversed within each length, and ``keep_order=True`` aligned with
the inputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax import _checks, layers
from seqjax import precision as precision_lib
from seqjax.cell import Carry, Cell
from seqjax.cells import gru, lru, lstm, min_gru, min_lstm, simple_rnn
from seqjax.unroll import unroll
from seqjax.unrolling.options import options_from

Array = jax.Array


# The unroll options fixed when a module is built; reverse and time_major go with each call.
MODULE_OPTIONS = (
    "unroll", "remat", "parallel", "chunk_size", "hoist_projection", "custom_vjp", "native",
)  # fmt: skip


class Recurrent(nnx.Module):
    """Any seqjax cell as an NNX module: its params as ``nnx.Param``, run by ``seqjax.unroll``.

    Args:
      cell: the cell (``seqjax.lstm(64)`` and friends).
      in_features: the input size.
      rngs: ``nnx.Rngs``; the ``params`` stream draws the initial weights.
      dtype: the params' dtype (default float32).
      precision: ``None`` (default): compute in the params' dtype; ``"bfloat16"`` or
        ``"float16"``: the mixed policy (:mod:`seqjax.precision`): the params stay float32
        master weights and each call casts their matrices, so matmuls run in that dtype with
        float32 sums and the carry and outputs are float32.
      recurrent_dropout: variational dropout of the recurrent state, as in
        :func:`seqjax.rnn` (:mod:`seqjax.dropout`). The masks are drawn from ``rngs``'s
        ``dropout`` stream (or a call's ``rngs``) while the module trains; after
        ``model.eval()`` (``deterministic=True``) dropout is off.
      input_dropout: variational dropout of the inputs, likewise.
      zoneout: zoneout, likewise; after ``model.eval()`` each step takes its expectation.
      **options: fixed options of :func:`seqjax.unroll` (``unroll``, ``remat``, ``parallel``,
        ``chunk_size``, ``hoist_projection``, ``custom_vjp``, ``native``).
    """

    def __init__(
        self, cell: Cell, in_features: int, *, rngs: nnx.Rngs, dtype: Any = None,
        precision: str | None = None, recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0, zoneout: float = 0.0, **options: Any,
    ):  # fmt: skip
        _checks.check_cell(cell, type(self).__name__)
        precision_lib.compute_dtype(precision, type(self).__name__)  # a clear error now
        self.precision = nnx.static(precision)
        self.cell = nnx.static(cell)
        self.options = nnx.static(
            options_from(
                options, type(self).__name__, allowed=MODULE_OPTIONS,
                elsewhere="it is an argument of each call",
            )
        )  # fmt: skip
        rates = dict(recurrent_dropout=recurrent_dropout, input_dropout=input_dropout,
                     zoneout=zoneout)  # fmt: skip
        if any(rates.values()):
            layers.rnn(cell, options=self.options, **rates)  # checks the rates and the cell
        self.dropout_rates = nnx.static(rates if any(rates.values()) else None)
        self.deterministic = False
        self.rngs = rngs if any(rates.values()) else None
        params = cell.init(rngs.params(), in_features, dtype)
        self.param_names = nnx.static(tuple(params))
        for name, value in params.items():
            setattr(self, name, nnx.Param(value))
        self.in_features, self.out_features = in_features, cell.output_size

    @property
    def params(self) -> dict[str, Array]:
        """The cell's params as the plain dict the functional API takes."""
        return {name: getattr(self, name)[...] for name in self.param_names}

    def _compute_params(self) -> dict[str, Array]:
        """The params a call runs: cast to the module's ``precision``."""
        return precision_lib.cast(self.params, self.precision)

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> Carry:
        return self.cell.initial_carry(self._compute_params(), tuple(batch_shape))

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: Array | None = None,
        lengths: Array | None = None,
        return_carry: bool = False,
        time_major: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        resets: Array | None = None,
        rngs: nnx.Rngs | None = None,
    ):
        """``inputs (batch..., time, in_features)`` (time first with ``time_major``) ->
        outputs ``(batch..., time, out_features)``, or ``(final_carry, outputs)`` with
        ``return_carry``; ``resets`` restart the carry (:func:`seqjax.unroll`); ``rngs``
        draws this call's dropout masks instead of the module's own."""
        lengths = _lengths(seq_lengths, lengths)
        options = self.options.replace(reverse=reverse, time_major=time_major)
        params = self._compute_params()
        if self.dropout_rates is not None:
            layer = layers.rnn(self.cell, options=options, **self.dropout_rates)
            key = None if self.deterministic else (rngs or self.rngs).dropout()
            final, ys = layer.apply(
                params, inputs, carry=initial_carry, lengths=lengths, resets=resets, key=key
            )
        else:
            final, ys = unroll(
                self.cell, params, inputs, carry=initial_carry, lengths=lengths,
                resets=resets, options=options,
            )  # fmt: skip
        if reverse and not keep_order:
            time_axis = 0 if time_major else ys.ndim - 2
            ys = layers.reverse_sequences(ys, lengths, time_axis)
        return (final, ys) if return_carry else ys


def _lengths(seq_lengths: Array | None, lengths: Array | None) -> Array | None:
    if seq_lengths is not None and lengths is not None:
        raise ValueError("pass seq_lengths or lengths (its alias), not both")
    return seq_lengths if lengths is None else lengths


class SimpleRNN(Recurrent):
    """An Elman RNN (``seqjax.simple_rnn``): ``SimpleRNN(in_features, hidden_features, rngs=)``."""

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 activation: str = "tanh", dtype: Any = None, **options):  # fmt: skip
        super().__init__(simple_rnn(hidden_features, activation=activation), in_features,
                         rngs=rngs, dtype=dtype, **options)  # fmt: skip


class LSTM(Recurrent):
    """An LSTM (``seqjax.lstm``); keyword options of the cell (``forget_bias``, ``proj_size``,
    ``peephole``, ``layer_norm``, ``init``) go in ``cell_options``."""

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 dtype: Any = None, cell_options: dict | None = None, **options):  # fmt: skip
        super().__init__(lstm(hidden_features, **(cell_options or {})), in_features,
                         rngs=rngs, dtype=dtype, **options)  # fmt: skip


class GRU(Recurrent):
    """A GRU (``seqjax.gru``), reset after the hidden matmul unless ``reset_after=False``."""

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 reset_after: bool = True, dtype: Any = None, **options):  # fmt: skip
        super().__init__(gru(hidden_features, reset_after=reset_after), in_features,
                         rngs=rngs, dtype=dtype, **options)  # fmt: skip


class MinGRU(Recurrent):
    """A minGRU (``seqjax.min_gru``), unrolled with the parallel scan unless ``parallel=False``."""

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 log_space: bool = False, parallel: bool = True, dtype: Any = None,
                 **options):  # fmt: skip
        super().__init__(min_gru(hidden_features, log_space=log_space), in_features,
                         rngs=rngs, dtype=dtype, parallel=parallel, **options)  # fmt: skip


class MinLSTM(Recurrent):
    """A minLSTM (``seqjax.min_lstm``), unrolled with the parallel scan by default."""

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 log_space: bool = False, parallel: bool = True, dtype: Any = None,
                 **options):  # fmt: skip
        super().__init__(min_lstm(hidden_features, log_space=log_space), in_features,
                         rngs=rngs, dtype=dtype, parallel=parallel, **options)  # fmt: skip


class LRU(Recurrent):
    """An LRU (``seqjax.lru``) with ``state_features`` complex states and outputs of
    ``in_features`` (or ``out_features`` with ``input_layer=True``), parallel by default."""

    def __init__(self, in_features: int, state_features: int, *, rngs: nnx.Rngs,
                 out_features: int | None = None, parallel: bool = True, dtype: Any = None,
                 cell_options: dict | None = None, **options):  # fmt: skip
        model = in_features if out_features is None else out_features
        super().__init__(lru(state_features, model, **(cell_options or {})), in_features,
                         rngs=rngs, dtype=dtype, parallel=parallel, **options)  # fmt: skip


class Bidirectional(nnx.Module):
    """Runs ``forward`` over the sequence and ``backward`` over it reversed within each length,
    and concatenates their outputs (forward first). The carry is ``(forward, backward)``."""

    def __init__(self, forward: Recurrent, backward: Recurrent):
        for name, layer in (("forward", forward), ("backward", backward)):
            if not isinstance(layer, Recurrent):
                hint = (" (a cell: wrap it, e.g. seqjax.nn.Recurrent(cell, in_features, "
                        "rngs=rngs))" if isinstance(layer, Cell) else "")  # fmt: skip
                raise TypeError(f"Bidirectional: {name} must be a seqjax.nn recurrent module; "
                                f"got {type(layer).__name__}{hint}")  # fmt: skip
        self.forward, self.backward = forward, backward

    def __call__(self, inputs: Array, *, initial_carry=None, seq_lengths=None, lengths=None,
                 return_carry: bool = False, time_major: bool = False, resets=None):  # fmt: skip
        lengths = _lengths(seq_lengths, lengths)
        carries = (None, None) if initial_carry is None else initial_carry
        common = dict(seq_lengths=lengths, return_carry=True, time_major=time_major,
                      resets=resets)  # fmt: skip
        f_final, f_ys = self.forward(inputs, initial_carry=carries[0], **common)
        b_final, b_ys = self.backward(inputs, initial_carry=carries[1], reverse=True,
                                      keep_order=True, **common)  # fmt: skip
        ys = jnp.concatenate([f_ys, b_ys], axis=-1)
        return ((f_final, b_final), ys) if return_carry else ys


class Stack(nnx.Module):
    """Layers run one after another, with optional dropout between them (active when called
    with ``rngs`` or after ``model.train()``; off after ``model.eval()``)."""

    def __init__(self, *layers_: nnx.Module, dropout: float = 0.0, rngs: nnx.Rngs | None = None):
        if not layers_:
            raise ValueError("Stack: need at least one layer; got none")
        self.layers = nnx.List(layers_)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None

    def __call__(self, inputs: Array, *, initial_carry=None, seq_lengths=None, lengths=None,
                 return_carry: bool = False, time_major: bool = False, resets=None):  # fmt: skip
        lengths = _lengths(seq_lengths, lengths)
        carries = [None] * len(self.layers) if initial_carry is None else initial_carry
        finals, ys = [], inputs
        for i, (layer, carry) in enumerate(zip(self.layers, carries, strict=True)):
            if i and self.dropout is not None:
                ys = self.dropout(ys)
            final, ys = layer(ys, initial_carry=carry, seq_lengths=lengths, return_carry=True,
                              time_major=time_major, resets=resets)  # fmt: skip
            finals.append(final)
        return (tuple(finals), ys) if return_carry else ys
