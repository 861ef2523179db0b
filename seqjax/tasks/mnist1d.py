"""MNIST-1D (Greydanus 2020, "Scaling down deep learning", arXiv:2011.14439).

A procedurally generated stand-in for MNIST: ten hand-drawn 1-D templates, one per digit, each
passed through random padding, translation, scaling, shear, correlated and i.i.d. noise, then
resampled to 40 points. Each example is a sequence of 40 scalars and its digit label 0-9; the
whole set is centred to mean 0 and scaled to standard deviation 1 (one mean, one std for all
values).

Protocol: the ``mnist1d`` package's default arguments (``get_dataset_args()``: 5000 examples,
500 per digit, shuffled, seed 42) and its fixed split, the first 4000 for training and the last
1000 for testing. The data are regenerated here with ``mnist1d.data.make_dataset``, never
downloaded; generation takes a few seconds and is cached for the rest of the process.

Published test accuracies (the README table of github.com/greydanus/mnist1d and the paper):
logistic regression 32%, MLP 68%, CNN 94%, GRU 91% (human expert 96%). ``logistic_baseline``
recomputes the first of these here (about 33%).
"""

from __future__ import annotations

import functools
import random

import numpy as np

from seqjax.tasks._classification import Data, _read_only, logistic_baseline

__all__ = [
    "INPUT_SIZE",
    "NUM_CLASSES",
    "PUBLISHED",
    "SEQ_LEN",
    "Data",
    "dataset",
    "logistic_baseline",
]

NUM_CLASSES = 10
SEQ_LEN = 40
INPUT_SIZE = 1
PUBLISHED = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}  # test accuracy


@functools.lru_cache(maxsize=1)
def dataset() -> Data:
    """The default MNIST-1D split, regenerated locally (cached; the arrays are read-only).

    Returns:
      ``Data`` with ``train_inputs (4000, 40, 1)`` and ``test_inputs (1000, 40, 1)`` float32,
      ``train_labels (4000,)`` and ``test_labels (1000,)`` int32 in 0..9.

    Raises:
      ImportError: the ``mnist1d`` package is not installed.
    """
    try:  # `import mnist1d.data` checks the package itself, even with mnist1d.data cached
        import mnist1d.data
    except ImportError as err:
        raise ImportError(
            "the mnist1d task needs the mnist1d package: pip install 'seqjax[tasks]'"
        ) from err

    # make_dataset seeds numpy's and python's global generators: leave the caller's as they were.
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        raw = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)

    def inputs(x: np.ndarray) -> np.ndarray:
        return _read_only(np.asarray(x, dtype=np.float32)[:, :, None])

    def labels(y: np.ndarray) -> np.ndarray:
        return _read_only(np.asarray(y, dtype=np.int32))

    return Data(inputs(raw["x"]), labels(raw["y"]), inputs(raw["x_test"]), labels(raw["y_test"]))
