"""The built-in recurrent cells."""

from seqjax.cells.gru import gru
from seqjax.cells.lstm import LSTMCarry, lstm
from seqjax.cells.rnn import irnn, simple_rnn

__all__ = ["LSTMCarry", "gru", "irnn", "lstm", "simple_rnn"]
