"""Blocks built around the cells, as layers."""

from seqjax.blocks.griffin import GriffinCarry, griffin_block

__all__ = ["GriffinCarry", "griffin_block"]
