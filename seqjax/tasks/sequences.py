"""Classifying a user's labelled sequences, from an NPZ file or a long-format CSV file.

An ``.npz`` file holds ``inputs (N, T, D)`` (numbers), ``labels (N,)`` (integers or strings)
and, for sequences shorter than ``T``, ``lengths (N,)`` (each in ``[1, T]``; the steps past a
sequence's length are padding and never read). A ``.csv`` file in long format has one row per
time step: a ``sequence_id`` column, an optional ``time`` column that orders each sequence's
rows, the feature columns (every other column, or those named), and a ``label`` column, the
same on every row of a sequence. Sequences may have different lengths.

The sequences are shuffled with the seed and split 70% train, 15% validation, 15% test. Features
are z-scored with the training steps' mean and spread. The baselines are the majority class
and a logistic regression on the flattened, zero-padded inputs.
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import numpy as np

from seqjax.tasks import _classification, files
from seqjax.tasks.files import DataFileError


class Sequences(NamedTuple):
    """Labelled sequences: ``inputs (N, T, D)`` float64 (zero past each length), ``labels
    (N,)`` as read (ints or strings), ``lengths (N,)`` int32, ``ids`` (one name per sequence),
    ``features`` (the feature names)."""

    inputs: np.ndarray
    labels: np.ndarray | None
    lengths: np.ndarray
    ids: list[str]
    features: list[str]


def read(path: str | os.PathLike, features: list[str] | None = None,
         need_labels: bool = True) -> Sequences:  # fmt: skip
    """The sequences of an ``.npz`` or long-format ``.csv`` file (see the module docstring);
    ``need_labels=False`` for a file to predict, whose labels may be missing."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".npz":
        if features:
            raise DataFileError("--features applies to a CSV file; an .npz file's features are "
                                "the last axis of its inputs")  # fmt: skip
        return _from_npz(path, need_labels)
    if suffix == ".csv":
        return _from_long_csv(path, features, need_labels)
    raise DataFileError(f"--data {str(path)!r}: expected a .npz or .csv file; got {suffix!r}")


def _from_npz(path: str | os.PathLike, need_labels: bool) -> Sequences:
    arrays = files.read_npz(path)
    if "inputs" not in arrays or (need_labels and "labels" not in arrays):
        raise DataFileError(f"{path}: expected arrays 'inputs' (N, T, D) and 'labels' (N,) "
                            f"(and optionally 'lengths' (N,)); found {sorted(arrays)}")  # fmt: skip
    xs = arrays["inputs"]
    if xs.ndim != 3 or not np.issubdtype(xs.dtype, np.number) or 0 in xs.shape:
        raise DataFileError(f"{path}: 'inputs' must be a numeric array (N, T, D) with no empty "
                            f"axis; got {xs.dtype} {list(xs.shape)}")  # fmt: skip
    n, t = xs.shape[:2]
    lengths = arrays.get("lengths", np.full(n, t))
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise DataFileError(f"{path}: 'lengths' must be integers of shape ({n},); got "
                            f"{lengths.dtype} {list(lengths.shape)}")  # fmt: skip
    if lengths.min() < 1 or lengths.max() > t:
        i = int(np.argmax((lengths < 1) | (lengths > t)))
        raise DataFileError(f"{path}: lengths[{i}] is {lengths[i]}; each length must be in "
                            f"[1, {t}] (T, the inputs' second axis)")  # fmt: skip
    labels = arrays.get("labels")
    if labels is not None and labels.shape != (n,):
        raise DataFileError(f"{path}: 'labels' must have shape ({n},), one per sequence; got "
                            f"{list(labels.shape)}")  # fmt: skip
    valid = np.arange(t)[None, :] < lengths[:, None]
    bad = ~np.isfinite(xs.astype(np.float64)) & valid[..., None]
    if bad.any():
        i, s, d = (int(v) for v in np.argwhere(bad)[0])
        raise DataFileError(f"{path}: inputs[{i}, {s}, {d}] is {xs[i, s, d]} (and "
                            f"{int(bad.sum()) - 1} more non-finite values); fill or drop "
                            "them first")  # fmt: skip
    xs = np.where(valid[..., None], xs.astype(np.float64), 0.0)
    features = [f"feature_{j}" for j in range(xs.shape[2])]
    return Sequences(xs, labels, lengths.astype(np.int32), [str(i) for i in range(n)], features)


def _from_long_csv(path, features: list[str] | None, need_labels: bool) -> Sequences:
    table = files.read_csv(path)
    ids = table.text_column("sequence_id")
    has_labels = "label" in table.header
    if need_labels and not has_labels:
        raise DataFileError(f"{path}: no 'label' column; a long-format file has columns "
                            "sequence_id, time (optional), the features, label")  # fmt: skip
    reserved = {"sequence_id", "time", "label"}
    features = features or [name for name in table.header if name not in reserved]
    if not features:
        raise DataFileError(f"{path}: no feature columns besides {sorted(reserved)}")
    values = np.stack([table.column(name, "feature") for name in features], axis=1)
    order = list(dict.fromkeys(ids))  # first appearance
    rows_of = {name: [] for name in order}
    for i, name in enumerate(ids):
        rows_of[name].append(i)
    if "time" in table.header:
        time = table.column("time", "time")
        rows_of = {k: sorted(v, key=lambda i: time[i]) for k, v in rows_of.items()}
    lengths = np.array([len(rows_of[k]) for k in order], np.int32)
    xs = np.zeros((len(order), int(lengths.max()), len(features)))
    for j, name in enumerate(order):
        xs[j, : lengths[j]] = values[rows_of[name]]
    labels = None
    if has_labels:
        cells = table.text_column("label")
        for name in order:
            seen = {cells[i] for i in rows_of[name]}
            if len(seen) > 1:
                line = table.lines[rows_of[name][0]]
                raise DataFileError(f"{path}: sequence {name!r} (from line {line}) has labels "
                                    f"{sorted(seen)}; a sequence has one label")  # fmt: skip
        labels = np.array([cells[rows_of[name][0]] for name in order])
    return Sequences(xs, labels, lengths, order, list(features))


def class_names(labels: np.ndarray, source: str) -> list[str]:
    """The distinct labels, sorted (numerically when they are numbers), as strings; refuses a
    single class."""
    unique = np.unique(labels)
    if len(unique) < 2:
        raise DataFileError(f"{source}: every sequence has the label {unique[0]!r}; a classifier "
                            "needs at least two classes")  # fmt: skip
    return [str(v) for v in unique]


def fit_spec(seqs: Sequences, source: str, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """``(spec, split)``: the settings and training scales :func:`inputs` uses (JSON), and the
    indices of each split's sequences."""
    n = len(seqs.lengths)
    if n < 10:
        raise DataFileError(f"{source}: {n} sequences are too few to split into train, "
                            "validation and test (at least 10)")  # fmt: skip
    names = class_names(seqs.labels, source)
    order = np.random.default_rng(seed).permutation(n)
    train_end, valid_end = files.split_bounds(n)
    split = {"train": order[:train_end], "validation": order[train_end:valid_end],
             "test": order[valid_end:]}  # fmt: skip
    train = split["train"]
    valid = np.arange(seqs.inputs.shape[1])[None, :] < seqs.lengths[train, None]
    steps = seqs.inputs[train][valid]  # (training steps, D)
    std = steps.std(0)
    spec = {"kind": "classify", "features": seqs.features, "classes": names,
            "mean": steps.mean(0).tolist(), "std": np.where(std > 0, std, 1.0).tolist(),
            "max_length": int(seqs.inputs.shape[1])}  # fmt: skip
    return spec, split


def inputs(seqs: Sequences, spec: dict) -> np.ndarray:
    """The model inputs ``(N, T, D)`` float32: z-scored with the training scales, zero past
    each length."""
    if seqs.inputs.shape[2] != len(spec["features"]):
        raise DataFileError(f"--data: the sequences have {seqs.inputs.shape[2]} features; the "
                            f"run was trained on {len(spec['features'])}")  # fmt: skip
    scaled = (seqs.inputs - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    valid = np.arange(seqs.inputs.shape[1])[None, :] < seqs.lengths[:, None]
    return np.where(valid[..., None], scaled, 0.0).astype(np.float32)


def class_ids(labels: np.ndarray, spec: dict, source: str) -> np.ndarray:
    """Each label's index among the run's classes; refuses a label the run never saw."""
    index = {name: i for i, name in enumerate(spec["classes"])}
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise DataFileError(f"{source}: labels {unknown[:5]} are not among the run's classes "
                            f"{spec['classes']}")  # fmt: skip
    return np.array([index[str(v)] for v in labels], np.int32)


def dataset(seqs: Sequences, spec: dict, split: dict, source: str) -> dict[str, dict]:
    """The three splits as batches: ``inputs``, ``targets`` (class ids), ``lengths``."""
    xs, ys = inputs(seqs, spec), class_ids(seqs.labels, spec, source)
    return {name: {"inputs": xs[rows], "targets": ys[rows], "lengths": seqs.lengths[rows]}
            for name, rows in split.items()}  # fmt: skip


def baselines(data: dict[str, dict]) -> dict[str, float]:
    """Test accuracy of the majority class (of the training labels) and of a logistic
    regression on the flattened, zero-padded inputs."""
    train, test = data["train"], data["test"]
    majority = np.bincount(train["targets"]).argmax()
    flat = _classification.Data(train["inputs"], train["targets"], test["inputs"], test["targets"])
    return {"majority class": float(np.mean(test["targets"] == majority)),
            "logistic regression": _classification.logistic_baseline(flat)}  # fmt: skip
