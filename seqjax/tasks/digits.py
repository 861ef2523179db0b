"""scikit-learn's 8x8 handwritten digits, read as sequences.

The data are the test part of the UCI "Optical Recognition of Handwritten Digits" set (Alpaydin &
Kaynak 1998), shipped inside scikit-learn as ``sklearn.datasets.load_digits`` (no download): 1797
images of the digits 0-9 written by 13 people, about 180 per digit. Each 32x32 bitmap was cut into
4x4 blocks and the set pixels of each block counted, giving 8x8 images of integers 0..16; here
they are divided by 16 to lie in [0, 1].

Two ways to make a sequence of an image: ``mode="rows"`` feeds one row of 8 pixels per step
(``T = 8``, 8 features), ``mode="pixels"`` one pixel per step in raster order (``T = 64``, 1
feature), the small cousin of pixel-by-pixel MNIST. The set has no official split; this module
draws a stratified one (each digit contributes ``test_fraction`` of its images to the test set,
rounded) from ``seed``, so a seed always names the same split.

There is no published figure for these sequence versions. The baseline to beat is computed here:
``logistic_baseline``, a multinomial logistic regression on the 64 pixels, scores 95.5% on the
default split (seed 0, 20% test) and 97.5% with seeds 1 and 2: 359 test images give a spread of a
couple of points between splits.
"""

from __future__ import annotations

import numpy as np

from seqjax import _checks
from seqjax.tasks._classification import Data, _read_only, logistic_baseline

__all__ = [
    "INPUT_SIZE",
    "MODES",
    "NUM_CLASSES",
    "SEQ_LEN",
    "Data",
    "dataset",
    "logistic_baseline",
    "stratified_split",
]

NUM_CLASSES = 10
MODES = ("rows", "pixels")
SEQ_LEN = {"rows": 8, "pixels": 64}
INPUT_SIZE = {"rows": 8, "pixels": 1}


def _load() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float32 in [0, 1], labels (1797,) int32)``."""
    try:
        import sklearn.datasets
    except ImportError as err:
        raise ImportError(
            "the digits task needs scikit-learn: pip install 'seqjax[tasks]'"
        ) from err
    bunch = sklearn.datasets.load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int32)


def stratified_split(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train (N - M,), test (M,))`` of a stratified random split of ``labels (N,)``.

    Each class gives ``round(test_fraction * its count)`` of its examples, chosen at random, to
    the test set and the rest to the training set; both index arrays are then shuffled. The split
    depends only on ``labels``, ``test_fraction`` and ``seed`` (a private generator is used).

    Raises:
      ValueError: ``test_fraction`` is not strictly between 0 and 1, or leaves some class with
        no training or no test example.
    """
    _checks.check_number(test_fraction, "test_fraction", "digits", lambda f: 0.0 < f < 1.0,
                         "a number strictly between 0 and 1")  # fmt: skip
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(np.rint(test_fraction * len(members)))
        if n_test == 0 or n_test == len(members):
            side = "test" if n_test == 0 else "training"
            raise ValueError(
                f"digits: test_fraction={test_fraction!r} leaves class {label} "
                f"({len(members)} examples) with no {side} example"
            )
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def dataset(mode: str = "rows", test_fraction: float = 0.2, seed: int = 0) -> Data:
    """The digits as sequences, split by ``stratified_split(labels, test_fraction, seed)``.

    Returns:
      ``Data`` with inputs float32 in [0, 1], ``(N, 8, 8)`` for ``mode="rows"`` (step t is image
      row t) or ``(N, 64, 1)`` for ``mode="pixels"`` (raster order), and labels ``(N,)`` int32 in
      0..9; 1438 train / 359 test examples for the default ``test_fraction=0.2``.

    Raises:
      ValueError: unknown ``mode``, or a bad ``test_fraction`` (see ``stratified_split``).
      ImportError: scikit-learn is not installed.
    """
    if mode not in MODES:
        raise ValueError(f"digits: mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    images, labels = _load()
    train, test = stratified_split(labels, test_fraction, seed)
    inputs = images if mode == "rows" else images.reshape(len(images), 64, 1)
    return Data(
        _read_only(inputs[train]),
        _read_only(labels[train]),
        _read_only(inputs[test]),
        _read_only(labels[test]),
    )
