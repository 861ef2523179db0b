"""Blocks built around the cells, as layers: what the papers put around a recurrence (Griffin's
recurrent block, xLSTM's mLSTM and sLSTM blocks, Mamba's block around the selective SSM)."""

from seqjax.blocks.griffin import GriffinCarry, griffin_block
from seqjax.blocks.mlstm_block import MLSTMBlockCarry, mlstm_block
from seqjax.blocks.slstm_block import SLSTMBlockCarry, slstm_block
from seqjax.cells.selective_ssm import MambaCarry, mamba_block

__all__ = [
    "GriffinCarry",
    "MLSTMBlockCarry",
    "MambaCarry",
    "SLSTMBlockCarry",
    "griffin_block",
    "mamba_block",
    "mlstm_block",
    "slstm_block",
]
