"""Training: optax optimizers with clipping, masked losses and metrics, a jitted train step,
checkpoints, and a trained run loaded back (``load_run``) and exported."""

from seqjax.train import checkpoint, export, losses, rundir, runs, sharding
from seqjax.train.loop import batch_for_step, fit, plot_curve
from seqjax.train.optim import optimizer
from seqjax.train.runs import LoadedRun, load_run
from seqjax.train.sharding import data_mesh, shard_batch
from seqjax.train.signals import Interrupted
from seqjax.train.step import TrainState, make_tbptt_step, make_train_step

__all__ = [
    "Interrupted",
    "LoadedRun",
    "TrainState",
    "batch_for_step",
    "checkpoint",
    "data_mesh",
    "export",
    "fit",
    "load_run",
    "losses",
    "make_tbptt_step",
    "make_train_step",
    "optimizer",
    "plot_curve",
    "rundir",
    "runs",
    "shard_batch",
    "sharding",
]
