"""The model ``seqjax train`` builds and a trained run holds: a stack of recurrent layers and a
linear read-out, and the cells it offers by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import seqjax
from seqjax import precision

CELLS: dict[str, Callable[[int], seqjax.Cell]] = {
    "rnn": lambda h: seqjax.simple_rnn(h),
    "gru": lambda h: seqjax.gru(h),
    "lstm": lambda h: seqjax.lstm(h),
}
# `seqjax train` also offers the IRNN (Le et al. 2015): relu, identity recurrent init, the
# IndRNN (Li et al. 2018), and recurrences linear in the state, trained with a parallel scan:
# minGRU and minLSTM in log space (Feng et al. 2024), and the LRU (Orvieto et al. 2023) with a
# GELU input layer in front (it is linear in its inputs otherwise).
TRAIN_CELLS = {
    **CELLS,
    "irnn": lambda h: seqjax.irnn(h),
    "indrnn": lambda h: seqjax.indrnn(h),
    "min_gru": lambda h: seqjax.min_gru(h, log_space=True),
    "min_lstm": lambda h: seqjax.min_lstm(h, log_space=True),
    "lru": lambda h: seqjax.lru(h, h, r_min=0.4, r_max=0.99, input_layer=True),
}


class Model(NamedTuple):
    """A ``stack`` of recurrent layers and a linear read-out: ``init(key) -> params``,
    ``apply(params, batch, key) -> predictions``, and ``step(params, carry, ids) -> (carry,
    logits)``, one step at a time for sampling a language model."""

    init: Callable
    apply: Callable
    step: Callable
    stack: seqjax.Layer
    encode: Callable  # batch["inputs"] -> what the stack reads (one-hot for token ids)
    read_out: Callable  # (params, ys, lengths=None) -> predictions


class ModelShape(NamedTuple):
    """What a model needs to know of its data: ``input_size`` (features, or vocabulary size
    when ``token_inputs``: integer ids the model one-hot encodes), ``output_size``, and
    ``per_step`` (a prediction at every step, else one from each sequence's last step). A
    :class:`seqjax.tasks.registry.Task` has these fields too."""

    input_size: int
    output_size: int
    per_step: bool
    token_inputs: bool = False

    @classmethod
    def of(cls, task: Any) -> ModelShape:
        return cls(int(task.input_size), int(task.output_size), bool(task.per_step),
                   bool(task.token_inputs))  # fmt: skip


def build_model(
    task: Any, cell_name: str, hidden: int, layers: int, dropout: float,
    make_cell: Callable[[int], seqjax.Cell] | None = None,
) -> Model:  # fmt: skip
    """``layers`` stacked ``rnn`` layers of the cell ``cell_name`` (one of ``TRAIN_CELLS``, or
    ``make_cell(hidden)``), ``dropout`` between them, and a linear read-out, for the data that
    ``task`` (a ``Task`` or a :class:`ModelShape`) describes.

    ``apply(params, batch, key)`` reads ``batch["inputs"]`` and, when present,
    ``batch["lengths"] (batch,)``: each sequence is read out at its own last step."""
    make_cell = make_cell or TRAIN_CELLS[cell_name]
    cells = [make_cell(hidden) for _ in range(layers)]
    stack = seqjax.stack(*[seqjax.rnn(c, parallel=c.linear is not None) for c in cells],
                         dropout=dropout)  # fmt: skip

    def init(key):
        k_rnn, k_out = jax.random.split(key)
        out = jax.random.normal(k_out, (hidden, task.output_size)) / jnp.sqrt(hidden)
        return {"rnn": stack.init(k_rnn, task.input_size), "w_out": out,
                "b_out": jnp.zeros(task.output_size)}  # fmt: skip

    def encode(inputs):
        return jax.nn.one_hot(inputs, task.input_size) if task.token_inputs else inputs

    def read_out(params, ys, lengths=None):
        if task.per_step:
            features = ys
        elif lengths is None:
            features = ys[:, -1]
        else:
            features = jnp.take_along_axis(ys, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return precision.matmul(features, params["w_out"]) + params["b_out"]

    def apply(params, batch, key):
        lengths = batch.get("lengths")
        _, ys = stack.apply(params["rnn"], encode(batch["inputs"]), lengths=lengths, key=key)
        return read_out(params, ys, lengths)

    def step(params, carry, ids):
        carry, ys = stack.apply(params["rnn"], encode(ids[:, None]), carry=carry)
        return carry, precision.matmul(ys[:, 0], params["w_out"]) + params["b_out"]

    return Model(init, apply, step, stack, encode, read_out)
