"""The built-in recurrent cells."""

from seqjax.cells.gru import gru
from seqjax.cells.lru import lru
from seqjax.cells.lstm import LSTMCarry, lstm
from seqjax.cells.minimal import min_gru, min_lstm
from seqjax.cells.rnn import indrnn, irnn, simple_rnn

__all__ = ["LSTMCarry", "gru", "indrnn", "irnn", "lru", "lstm", "min_gru", "min_lstm", "simple_rnn"]
