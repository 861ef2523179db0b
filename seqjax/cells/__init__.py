"""The built-in recurrent cells."""

from seqjax.cells.gru import gru
from seqjax.cells.lru import lru
from seqjax.cells.lstm import LSTMCarry, lstm
from seqjax.cells.mgu import mgu
from seqjax.cells.minimal import min_gru, min_lstm
from seqjax.cells.mlstm import MLSTMCarry, mlstm
from seqjax.cells.rg_lru import rg_lru
from seqjax.cells.rnn import indrnn, irnn, simple_rnn
from seqjax.cells.selective_ssm import selective_ssm
from seqjax.cells.slstm import SLSTMCarry, slstm

__all__ = [
    "LSTMCarry",
    "MLSTMCarry",
    "SLSTMCarry",
    "gru",
    "indrnn",
    "irnn",
    "lru",
    "lstm",
    "mgu",
    "min_gru",
    "min_lstm",
    "mlstm",
    "rg_lru",
    "selective_ssm",
    "simple_rnn",
    "slstm",
]
