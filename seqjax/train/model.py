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
    # The recurrences since 2023 (issue 25), as cells in the same stack: xLSTM's mLSTM (4 heads,
    # its parallel form when unrolled with parallel=True) and sLSTM, Griffin's RG-LRU and Mamba's
    # selective SSM (both read as many features as their width: a linear input layer first),
    # and the MGU.
    "mgu": lambda h: seqjax.mgu(h),
    "slstm": lambda h: seqjax.slstm(h, num_heads=4),
    "mlstm": lambda h: seqjax.mlstm(h, num_heads=4),
    "rg_lru": lambda h: with_input_layer(seqjax.rg_lru(h, num_heads=4)),
    "selective_ssm": lambda h: with_input_layer(seqjax.selective_ssm(h)),
}


def _wrapped_linear(linear: seqjax.LinearRecurrence | None):
    if linear is None:
        return None
    return linear._replace(
        coefficients=lambda p, px: linear.coefficients(p["cell"], px),
        read_out=lambda p, h, px: linear.read_out(p["cell"], h, px),
        log_coefficients=None
        if linear.log_coefficients is None
        else (lambda p, px: linear.log_coefficients(p["cell"], px)),
    )


def with_input_layer(cell: seqjax.Cell) -> seqjax.Cell:
    """``cell`` behind a linear input layer ``u = x W_in + b_in`` to the cell's own input size
    (its ``output_size``), for cells that read as many features as they are wide. Params:
    ``{"w_in" (D, H), "b_in" (H,), "cell": the cell's}``; a linear recurrence stays linear."""

    def init(key, input_size, dtype=None):
        k_in, k_cell = jax.random.split(key)
        H = cell.output_size
        w_in = jax.random.normal(k_in, (input_size, H)) / jnp.sqrt(input_size)
        dtype = dtype or w_in.dtype
        return {"w_in": w_in.astype(dtype), "b_in": jnp.zeros((H,), dtype),
                "cell": cell.init(k_cell, H, dtype)}  # fmt: skip

    def project(params, xs):
        return cell.project(params["cell"], precision.matmul(xs, params["w_in"]) + params["b_in"])

    linear = _wrapped_linear(cell.linear)
    return cell._replace(
        init=init,
        initial_carry=lambda params, batch_shape=(): cell.initial_carry(
            params["cell"], batch_shape
        ),
        project=project,
        recur=lambda params, carry, px: cell.recur(params["cell"], carry, px),
        name=f"{cell.name} (input layer)",
        input_size=lambda params: params["w_in"].shape[0],
        recur_split=None,
        linear=linear,
    )


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
    rnns = [seqjax.rnn(c, **_unroll_options(c, cell_name)) for c in cells]
    stack = seqjax.stack(*rnns, dropout=dropout)

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


def _unroll_options(cell: seqjax.Cell, cell_name: str) -> dict:
    """How a training run unrolls ``cell``: a parallel form where it has one (not where the
    loop is faster here), and whole-sequence forms (the mLSTM's) in chunks of 64 steps: faster
    than the quadratic form from T = 256 on (``python -m benchmarks.recurrences``), and its
    memory grows with the chunk, not with T squared."""
    if not _parallel(cell) or _sequential_here(cell_name):
        return {}
    return {"parallel": True, "chunk_size": 64} if cell.sequence_forms() else {"parallel": True}


def _sequential_here(cell_name: str) -> bool:
    """Cells whose associative scan is slower than their step loop on this backend: on the CPU,
    the selective SSM's scan over its (batch, time, D * N) coefficients takes about twice the
    loop's time at every T to 16k (``python -m benchmarks.recurrences``)."""
    return cell_name == "selective_ssm" and jax.default_backend() == "cpu"


def _parallel(cell: seqjax.Cell) -> bool:
    """Unroll with ``parallel=True`` where the cell has a parallel form: a linear recurrence's
    associative scan, or whole-sequence forms (the mLSTM's quadratic one)."""
    return cell.linear is not None or cell.sequence_forms() is not None
