"""The LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

With gates stacked in PyTorch's order i, f, g, o:

    i, f, g, o = split(x_t W_ih + b_ih + h_(t-1) W_hh + b_hh)
    c_t = sigmoid(f) * c_(t-1) + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax import initializers as inits
from seqjax.cell import Cell, Params, RecurSplit, split_recur
from seqjax.cells import _common

FORGET_GATE = 1  # index in the i, f, g, o stacking


class LSTMCarry(NamedTuple):
    """The LSTM state: ``h`` (output) and ``c`` (cell), each ``(batch..., H)``."""

    h: jax.Array
    c: jax.Array


def lstm(
    hidden_size: int,
    *,
    forget_bias: float | None = 1.0,
    init: str = "default",
    input_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    """An LSTM cell (PyTorch ``nn.LSTM``).

    Args:
      hidden_size: H.
      forget_bias: the initial total forget-gate bias (put in ``b_ih``; ``b_hh``'s forget block
        starts at 0); ``None`` draws it like the other biases. Default 1.0, so the cell starts
        by keeping its memory; the ``"pytorch"`` scheme sets it to ``None`` unless given.
      init: ``"default"`` or ``"pytorch"``, as for :func:`seqjax.simple_rnn`.

    Params: ``w_ih (D, 4H)``, ``w_hh (H, 4H)``, ``b_ih (4H,)``, ``b_hh (4H,)``.
    Carry: ``LSTMCarry(h, c)``, each ``(batch..., H)``. Output: ``h``.
    """
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", "lstm")
    if forget_bias is not None and (
        isinstance(forget_bias, bool) or not isinstance(forget_bias, int | float | np.number)
    ):
        raise TypeError(f"lstm: forget_bias must be a number or None; got {forget_bias!r}")
    config = _common.resolve_init(init, input_init, recurrent_init, bias_init, "lstm")
    if init == "pytorch" and forget_bias == 1.0:
        forget_bias = None
    ih_override = hh_override = None
    if forget_bias is not None:
        ih_override = {FORGET_GATE: inits.constant(float(forget_bias))}
        hh_override = {FORGET_GATE: inits.zeros}
    H = hidden_size

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        return _common.init_params(
            key, input_size, H, 4, config, dtype, "lstm",
            bias_ih_overrides=ih_override, bias_hh_overrides=hh_override,
        )  # fmt: skip

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
        zeros = jnp.zeros((*batch_shape, H), params["w_hh"].dtype)
        return LSTMCarry(zeros, zeros)

    def hidden_projection(params: Params, carry: LSTMCarry) -> jax.Array:
        return _common.hidden_projection(params, carry.h)

    def combine(carry: LSTMCarry, projected_x: jax.Array, hh: jax.Array):
        with jax.named_scope("seqjax.lstm"):
            i, f, g, o = jnp.split(projected_x + hh, 4, axis=-1)
            c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return LSTMCarry(h, c), h

    split = RecurSplit(hidden_projection, combine, additive=True)

    return Cell(
        init=init_fn,
        initial_carry=initial_carry,
        project=_common.project,
        recur=split_recur(split),
        output_size=H,
        name="lstm",
        input_size=_common.input_size,
        recur_split=split,
    )
