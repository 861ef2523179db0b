"""Forecasting a user's time series from a CSV file: windows, a chronological split, and the
baselines a forecast has to beat.

A series is a CSV file with a header row and one row per time step, in time order. One column
is the ``target``; ``features`` are further columns read as inputs; a column named like a date
(``date``, ``time``, ``month``, ... see :data:`seqjax.tasks.files.DATE_COLUMNS`) labels the rows
and is otherwise ignored, as is every other column.

Each example is a ``window`` of rows and the ``horizon`` target values after it. The rows are
split in time order, 70% train, 15% validation, 15% test; an example belongs to a split when all
of its target values do (an example across a boundary is dropped, so no target is seen in two
splits). Scales are fitted on the training rows only.

The network predicts the change of the target from the window's last value, in units of the
training changes' spread; its inputs at each step are the target's change from the window's
last value (same units as the outputs) and the z-scored features. Changes keep the network in
range on a trending series, whose test values lie outside the training range; with
``level_input`` the target's z-scored level is an input too, which helps a series that returns
to a mean (sunspots) and hurts one with a trend.

Baselines, on the test split, in the series' own units: persistence (every future value equals
the last one), seasonal-naive when a ``period`` is given (each future value equals the one a
period before), and a linear autoregression on the window's target values with an intercept,
fitted by least squares on the training windows, one output per horizon step.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from seqjax.tasks import files
from seqjax.tasks.files import DataFileError


def read(
    path: str | os.PathLike, target: str, features: list[str] | tuple[str, ...] = (),
) -> tuple[np.ndarray, list[str] | None]:  # fmt: skip
    """``(values (n, 1 + F), dates)`` from a CSV file: the target column first, then the
    features; ``dates`` is the date-like column's cells, or None."""
    table = files.read_csv(path)
    if target in features:
        raise DataFileError(f"--features: {target!r} is the target; list only other columns")
    columns = [table.column(target, "--target")]
    columns += [table.column(name, "--features") for name in features]
    date = table.date_column()
    used = date is not None and date not in (target, *features)
    dates = table.text_column(date) if used else None
    return np.stack(columns, axis=1), dates


def minimum_rows(window: int, horizon: int) -> int:
    """The fewest rows that give every split at least one example."""
    n = window + horizon
    while not _splits_nonempty(n, window, horizon):
        n += 1
    return n


def _splits_nonempty(n: int, window: int, horizon: int) -> bool:
    train_end, valid_end = files.split_bounds(n)
    return (train_end >= window + horizon and valid_end - train_end >= horizon
            and n - valid_end >= horizon)  # fmt: skip


def _starts(n: int, window: int, horizon: int) -> dict[str, np.ndarray]:
    """Each split's example starts ``t``: the window is rows ``t - window .. t - 1``, the targets
    rows ``t .. t + horizon - 1``."""
    train_end, valid_end = files.split_bounds(n)
    t = np.arange(window, n - horizon + 1)
    last = t + horizon - 1
    return {"train": t[last < train_end],
            "validation": t[(t >= train_end) & (last < valid_end)],
            "test": t[t >= valid_end]}  # fmt: skip


def fit_spec(
    values: np.ndarray, target: str, features: list[str], window: int, horizon: int,
    period: int | None, source: str = "", level_input: bool = False,
) -> dict:  # fmt: skip
    """The settings and training-row scales that :func:`inputs` and :func:`to_values` use."""
    n = len(values)
    if n < minimum_rows(window, horizon):
        raise DataFileError(
            f"{source or 'the series'} has {n} rows: a window of {window} and a horizon of "
            f"{horizon} need at least {minimum_rows(window, horizon)} (70% train, 15% validation, "
            "15% test, each with at least one full example); pass a smaller --window or "
            "--horizon, or a longer series"
        )
    if period is not None and not 1 <= period < files.split_bounds(n)[0]:
        raise DataFileError(f"--period {period} must be between 1 and the number of training "
                            f"rows ({files.split_bounds(n)[0]})")  # fmt: skip
    train = values[: files.split_bounds(n)[0]]
    mean, std = train.mean(0), train.std(0)
    starts = _starts(n, window, horizon)["train"]
    changes = values[starts[:, None] + np.arange(horizon), 0] - values[starts - 1, 0][:, None]
    change_scale = float(changes.std()) or 1.0
    return {"kind": "forecast", "target": target, "features": list(features), "window": window,
            "horizon": horizon, "period": period, "mean": mean.tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(), "change_scale": change_scale,
            "level_input": bool(level_input)}  # fmt: skip


def inputs(values: np.ndarray, starts: np.ndarray, spec: dict) -> np.ndarray:
    """The model inputs ``(N, window, 1 + F)`` float32 of the examples starting at ``starts``
    (``(N, window, 2 + F)`` with ``spec["level_input"]``: the z-scored level first)."""
    window = spec["window"]
    rows = values[starts[:, None] + np.arange(-window, 0)]  # (N, window, 1 + F)
    scaled = (rows - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    change = (rows[..., :1] - rows[:, -1:, :1]) / spec["change_scale"]
    parts = [scaled[..., :1]] if spec.get("level_input") else []
    return np.concatenate([*parts, change, scaled[..., 1:]], axis=-1).astype(np.float32)


def targets(values: np.ndarray, starts: np.ndarray, spec: dict) -> np.ndarray:
    """The training targets ``(N, horizon)``: the changes from the window's last value."""
    future = values[starts[:, None] + np.arange(spec["horizon"]), 0]
    return ((future - values[starts - 1, :1]) / spec["change_scale"]).astype(np.float32)


def to_values(outputs: Any, last: Any, spec: dict) -> np.ndarray:
    """The network's outputs ``(N, horizon)`` as forecasts in the series' units, from each
    window's last target value ``last (N,)``."""
    last = np.asarray(last, np.float64)
    return last[:, None] + np.asarray(outputs, np.float64) * spec["change_scale"]


def errors(forecast: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over every example and horizon step."""
    diff = np.asarray(forecast, np.float64) - truth
    return {"rmse": float(np.sqrt(np.mean(diff**2))), "mae": float(np.mean(np.abs(diff)))}


def baselines(values: np.ndarray, spec: dict) -> dict[str, dict[str, float]]:
    """Each baseline's test RMSE and MAE, in the series' units (see the module docstring)."""
    window, horizon, period = spec["window"], spec["horizon"], spec["period"]
    split = _starts(len(values), window, horizon)
    test, y = split["test"], values[:, 0]
    steps = np.arange(horizon)
    truth = y[test[:, None] + steps]
    found = {"persistence": errors(np.repeat(y[test - 1, None], horizon, 1), truth)}
    if period is not None:
        back = period * ((steps // period) + 1)  # the same phase, one or more periods back
        found[f"seasonal naive (period {period})"] = errors(y[test[:, None] + steps - back], truth)

    def lags(starts: np.ndarray) -> np.ndarray:
        values = y[starts[:, None] - 1 - np.arange(window)]
        return np.concatenate([np.ones((len(starts), 1)), values], axis=1)

    train = split["train"]
    coef, *_ = np.linalg.lstsq(lags(train), y[train[:, None] + steps], rcond=None)
    found[f"linear AR({window})"] = errors(lags(test) @ coef, truth)
    return found


def dataset(values: np.ndarray, spec: dict) -> dict[str, dict[str, np.ndarray]]:
    """The three splits as arrays: ``inputs``, ``targets`` (changes) and ``last``, each
    window's last target value (to turn outputs back into values)."""
    split = _starts(len(values), spec["window"], spec["horizon"])
    return {name: {"inputs": inputs(values, t, spec), "targets": targets(values, t, spec),
                   "last": values[t - 1, 0].astype(np.float32)}
            for name, t in split.items()}  # fmt: skip
