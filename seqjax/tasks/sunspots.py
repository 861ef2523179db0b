"""Yearly sunspot numbers, 1700-2008, and the classical one-step forecasting protocol.

Zhang (2003) and many before: fit on 1700-1920, forecast each year of 1921-1987 from the years
before it. Two baselines come with the task, computed here rather than copied: persistence
(next year = this year), RMSE 30.3, and a least-squares AR(9) with intercept, RMSE 17.5.
"""

from __future__ import annotations

import importlib.resources
from typing import NamedTuple

import numpy as np

from seqjax import _checks

TRAIN_END = 1920
TEST_YEARS = (1921, 1987)


def load() -> tuple[np.ndarray, np.ndarray]:
    """``(years, values)``: 309 years (int) and sunspot numbers (float32)."""
    text = importlib.resources.files("seqjax.tasks").joinpath("data/sunspots.csv").read_text()
    rows = np.loadtxt(text.splitlines()[1:], delimiter=",")
    return rows[:, 0].astype(int), rows[:, 1].astype(np.float32)


def _test_indices(years: np.ndarray) -> np.ndarray:
    return np.where((years >= TEST_YEARS[0]) & (years <= TEST_YEARS[1]))[0]


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predictions, np.float64) - targets) ** 2)))


def persistence_rmse() -> float:
    """RMSE over 1921-1987 of predicting each year by the year before."""
    years, values = load()
    test = _test_indices(years)
    return rmse(values[test - 1], values[test])


def ar_rmse(order: int = 9) -> float:
    """RMSE over 1921-1987 of an AR(order) with intercept, least squares on years <= 1920."""
    years, values = load()
    values = values.astype(np.float64)
    last_train = int(np.where(years == TRAIN_END)[0][0])

    def lags(t: int) -> np.ndarray:
        return np.concatenate([[1.0], values[t - order : t][::-1]])

    design = np.stack([lags(t) for t in range(order, last_train + 1)])
    coef, *_ = np.linalg.lstsq(design, values[order : last_train + 1], rcond=None)
    test = _test_indices(years)
    return rmse(np.stack([lags(t) for t in test]) @ coef, values[test])


class Split(NamedTuple):
    """Windows for a sequence model: ``inputs (N, window, 1)`` (normalised), ``targets (N,)``
    (normalised), and ``years (N,)``, the year each target belongs to."""

    inputs: np.ndarray
    targets: np.ndarray
    years: np.ndarray


class Data(NamedTuple):
    train: Split
    test: Split
    mean: float
    std: float

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values) * self.std + self.mean


def dataset(window: int = 20) -> Data:
    """One-step forecasting windows: each target year's value, from the ``window`` years before
    it. Training targets are the years <= 1920 that have a full window; test targets are
    1921-1987. Values are normalised by the training years' mean and standard deviation."""
    window = _checks.check_int(window, "window", "sunspots.dataset", low=1, high=200)
    years, values = load()
    last_train = int(np.where(years == TRAIN_END)[0][0])
    mean = float(values[: last_train + 1].mean())
    std = float(values[: last_train + 1].std())
    normalised = (values - mean) / std

    def split(indices: np.ndarray) -> Split:
        inputs = np.stack([normalised[t - window : t] for t in indices])[..., None]
        return Split(inputs.astype(np.float32), normalised[indices], years[indices])

    return Data(split(np.arange(window, last_train + 1)), split(_test_indices(years)), mean, std)
