"""seqjax: recurrent sequence models in JAX, as pure functions.

Cells (one step, :mod:`seqjax.cells`) -> ``unroll`` (a whole sequence: a scan, seqjax's own
backward pass over scans or native CPU kernels, or a parallel scan; :mod:`seqjax.unroll`) ->
layers (``rnn``, ``bidirectional``, ``stack``; :mod:`seqjax.layers`). The documentation site
(``mkdocs serve`` in a checkout, sources in ``docs/``) has the concepts and the API.
"""

from seqjax import blocks, diagnostics, host_memory, initializers, interop, precision
from seqjax.cell import Cell, CombineVJP, LinearRecurrence, RecurSplit, step
from seqjax.cells import (
    LSTMCarry,
    gru,
    indrnn,
    irnn,
    lru,
    lstm,
    mgu,
    min_gru,
    min_lstm,
    mlstm,
    rg_lru,
    selective_ssm,
    simple_rnn,
    slstm,
)
from seqjax.layers import Layer, bidirectional, reverse_sequences, rnn, stack
from seqjax.streaming import Stream, stream
from seqjax.unroll import unroll
from seqjax.unrolling.options import UnrollOptions

__version__ = "0.1.0"


def __getattr__(name: str):
    # seqjax.nn (the Flax NNX modules), seqjax.train and seqjax.tasks are imported on first use:
    # the functional API needs none of them, and flax.nnx and optax take a moment to import.
    if name in ("nn", "tasks", "train"):
        import importlib

        return importlib.import_module(f"seqjax.{name}")
    raise AttributeError(f"module 'seqjax' has no attribute {name!r}")


__all__ = [
    "Cell",
    "CombineVJP",
    "LSTMCarry",
    "Layer",
    "LinearRecurrence",
    "RecurSplit",
    "Stream",
    "UnrollOptions",
    "bidirectional",
    "blocks",
    "diagnostics",
    "gru",
    "host_memory",
    "indrnn",
    "initializers",
    "interop",
    "irnn",
    "lru",
    "lstm",
    "mgu",
    "min_gru",
    "min_lstm",
    "mlstm",
    "precision",
    "reverse_sequences",
    "rg_lru",
    "rnn",
    "selective_ssm",
    "simple_rnn",
    "slstm",
    "stack",
    "step",
    "stream",
    "unroll",
]
