"""What the commands share: the usage error; the cells and the model live in
:mod:`seqjax.train.model`."""

from __future__ import annotations

from seqjax.train.model import CELLS, TRAIN_CELLS, Model, build_model

__all__ = ["CELLS", "TRAIN_CELLS", "Model", "UsageError", "build_model"]


class UsageError(Exception):
    """A bad command-line value: reported as one line on stderr, exit code 2."""
