"""What the sequence-classification tasks share: their data container and a linear baseline.

``Data`` holds a fixed train/test split. ``logistic_baseline`` fits a multinomial logistic
regression to the flattened inputs (every time step's features side by side, no recurrence) and
reports its test accuracy: the figure a sequence model has to beat to show it uses more than a
linear read-out of the raw values.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Data(NamedTuple):
    """A classification split: ``train_inputs (N, T, F)`` float32, ``train_labels (N,)`` int32,
    and the same for the test set (``M`` examples)."""

    train_inputs: np.ndarray
    train_labels: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def logistic_baseline(
    data: Data, steps: int = 500, learning_rate: float = 1.0, l2: float = 1e-4
) -> float:
    """Test accuracy of a multinomial logistic regression on the flattened inputs.

    Every input ``(T, F)`` becomes a vector of ``T * F`` features, standardised with the training
    set's per-feature mean and standard deviation (constant features are left at 0), plus a bias.
    The weights start at zero and take ``steps`` full-batch gradient-descent steps on the mean
    cross-entropy plus ``l2 / 2 * |W|^2`` (bias not penalised), in float64. Deterministic: no
    random numbers are drawn.
    """
    if steps < 1:
        raise ValueError(f"logistic_baseline: steps must be at least 1; got {steps}")
    train = data.train_inputs.reshape(len(data.train_inputs), -1).astype(np.float64)
    test = data.test_inputs.reshape(len(data.test_inputs), -1).astype(np.float64)
    labels = np.asarray(data.train_labels, dtype=np.int64)
    num_classes = int(max(labels.max(), np.max(data.test_labels))) + 1

    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    train, test = (train - mean) / std, (test - mean) / std

    one_hot = np.eye(num_classes)[labels]
    weights = np.zeros((train.shape[1], num_classes))
    bias = np.zeros(num_classes)
    # einsum, not `@`: the matrices are small, and a multithreaded BLAS can be slower on them
    # than one core (badly so on a busy machine); single-threaded also keeps the sums' order fixed.
    for _ in range(steps):
        logits = np.einsum("nf,fc->nc", train, weights) + bias
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(1, keepdims=True)
        error = (probs - one_hot) / len(train)  # d(mean cross-entropy) / d(logits)
        weights -= learning_rate * (np.einsum("nf,nc->fc", train, error) + l2 * weights)
        bias -= learning_rate * error.sum(0)
    predictions = (np.einsum("nf,fc->nc", test, weights) + bias).argmax(1)
    return float(np.mean(predictions == data.test_labels))
