"""Training: optax optimizers with clipping, masked losses and metrics, a jitted train step,
and checkpoints."""

from seqjax.train import checkpoint, losses, rundir, sharding
from seqjax.train.loop import batch_for_step, fit, plot_curve
from seqjax.train.optim import optimizer
from seqjax.train.sharding import data_mesh, shard_batch
from seqjax.train.signals import Interrupted
from seqjax.train.step import TrainState, make_tbptt_step, make_train_step

__all__ = [
    "Interrupted",
    "TrainState",
    "batch_for_step",
    "checkpoint",
    "data_mesh",
    "fit",
    "losses",
    "make_tbptt_step",
    "make_train_step",
    "optimizer",
    "plot_curve",
    "rundir",
    "shard_batch",
    "sharding",
]
