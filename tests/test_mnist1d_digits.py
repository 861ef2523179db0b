"""The registry-backed classification tasks: MNIST-1D (regenerated) and scikit-learn's digits."""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys

import numpy as np
import pytest

from seqjax.tasks import _classification, digits
from seqjax.tasks import mnist1d as mnist1d_task

needs_mnist1d = pytest.mark.skipif(
    importlib.util.find_spec("mnist1d") is None, reason="needs the mnist1d package"
)
needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn"
)


def _assert_classification_data(data, train_shape, test_shape):
    assert isinstance(data, _classification.Data)
    assert data.train_inputs.shape == train_shape and data.test_inputs.shape == test_shape
    assert data.train_labels.shape == train_shape[:1] and data.test_labels.shape == test_shape[:1]
    assert data.train_inputs.dtype == np.float32 and data.test_inputs.dtype == np.float32
    assert data.train_labels.dtype == np.int32 and data.test_labels.dtype == np.int32
    for labels in (data.train_labels, data.test_labels):
        assert labels.min() >= 0 and labels.max() <= 9
        assert set(np.unique(labels)) == set(range(10))  # every class in both splits


# MNIST-1D


@needs_mnist1d
def test_mnist1d_shapes_dtypes_and_standardisation():
    data = mnist1d_task.dataset()
    _assert_classification_data(data, (4000, 40, 1), (1000, 40, 1))
    assert mnist1d_task.SEQ_LEN == 40 and mnist1d_task.NUM_CLASSES == 10
    both = np.concatenate([data.train_inputs, data.test_inputs]).astype(np.float64)
    assert abs(both.mean()) < 1e-5 and abs(both.std() - 1.0) < 1e-5
    assert abs(data.train_inputs.mean()) > 1e-4  # standardised as a whole, not per split
    with pytest.raises(ValueError):  # the cached arrays cannot be corrupted by a caller
        data.train_inputs[0, 0, 0] = 1.0
    assert mnist1d_task.PUBLISHED["gru"] == 0.91 and mnist1d_task.PUBLISHED["cnn"] == 0.94


@needs_mnist1d
def test_mnist1d_is_deterministic_cached_and_leaves_global_rng_alone():
    first = mnist1d_task.dataset()
    assert mnist1d_task.dataset() is first  # cached in-process

    np.random.seed(1234)  # noqa: NPY002  (the legacy global state is what is checked)
    random.seed(1234)
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    mnist1d_task.dataset.cache_clear()
    second = mnist1d_task.dataset()  # regenerated: make_dataset reseeds the globals inside
    assert second is not first
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)

    after_numpy, after_python = np.random.get_state(), random.getstate()  # noqa: NPY002
    assert after_python == python_state
    assert after_numpy[0] == numpy_state[0] and after_numpy[2:] == numpy_state[2:]
    np.testing.assert_array_equal(after_numpy[1], numpy_state[1])
    expected = np.random.RandomState(1234).rand(3)
    np.testing.assert_array_equal(np.random.rand(3), expected)  # noqa: NPY002


@needs_mnist1d
def test_mnist1d_logistic_baseline_near_published():
    accuracy = mnist1d_task.logistic_baseline(mnist1d_task.dataset())
    assert accuracy > 0.2  # chance is 0.1
    assert abs(accuracy - mnist1d_task.PUBLISHED["logistic"]) < 0.05


def test_mnist1d_without_package(monkeypatch):
    if importlib.util.find_spec("mnist1d") is not None:
        importlib.import_module("mnist1d.data")  # a cached submodule must not hide the block
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # what `import mnist1d` sees when absent
    mnist1d_task.dataset.cache_clear()
    try:
        with pytest.raises(
            ImportError, match=r"mnist1d task needs the mnist1d package.*seqjax\[tasks\]"
        ):
            mnist1d_task.dataset()
    finally:
        mnist1d_task.dataset.cache_clear()


# digits


@needs_sklearn
def test_digits_shapes_values_and_modes_agree():
    rows = digits.dataset("rows")
    pixels = digits.dataset("pixels")
    _assert_classification_data(rows, (1438, 8, 8), (359, 8, 8))
    _assert_classification_data(pixels, (1438, 64, 1), (359, 64, 1))
    for r, p in zip(rows, pixels, strict=True):
        np.testing.assert_array_equal(p.reshape(r.shape), r)
    for x in (rows.train_inputs, rows.test_inputs):
        assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(rows.train_inputs * 16), np.arange(17))
    # raster order: pixel step 8 * i + j is row i, column j
    np.testing.assert_array_equal(pixels.train_inputs[:, 8 * 3 + 5, 0], rows.train_inputs[:, 3, 5])


@needs_sklearn
def test_digits_split_is_stratified_disjoint_and_seeded():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = digits.stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    expected = 0.2 * np.bincount(labels, minlength=10)
    assert np.all(np.abs(np.bincount(labels[test], minlength=10) - expected) <= 1)

    data = digits.dataset(seed=0)
    np.testing.assert_array_equal(data.test_labels, labels[test])
    images = (load_digits().images / 16).astype(np.float32)
    np.testing.assert_array_equal(data.test_inputs, images[test])
    np.testing.assert_array_equal(data.train_inputs, images[train])

    for fraction in (0.1, 0.5):
        counts = np.bincount(digits.dataset("pixels", fraction).test_labels, minlength=10)
        assert np.all(np.abs(counts - fraction * np.bincount(labels, minlength=10)) <= 1)

    again = digits.dataset(seed=0)
    for a, b in zip(data, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = digits.dataset(seed=1)
    assert not np.array_equal(other.test_labels, data.test_labels)
    assert not np.array_equal(digits.stratified_split(labels, 0.2, seed=1)[1], test)


@needs_sklearn
def test_digits_logistic_baseline():
    assert digits.logistic_baseline(digits.dataset("rows")) > 0.9
    # the baseline sees the same 64 numbers whatever the sequence layout
    assert digits.logistic_baseline(digits.dataset("pixels")) == digits.logistic_baseline(
        digits.dataset("rows")
    )


@needs_sklearn
def test_digits_bad_arguments():
    with pytest.raises(ValueError, match=r"mode.*'rows'.*'pixels'.*'columns'"):
        digits.dataset("columns")
    for fraction in (0.0, 1.0, -0.2, 1.5, float("nan"), "0.2", True):
        with pytest.raises(ValueError, match="test_fraction"):
            digits.dataset(test_fraction=fraction)
    with pytest.raises(ValueError, match=r"test_fraction.*no test example"):
        digits.dataset(test_fraction=0.001)
    with pytest.raises(ValueError, match=r"test_fraction.*no training example"):
        digits.dataset(test_fraction=0.999)


def test_digits_without_sklearn(monkeypatch):
    if importlib.util.find_spec("sklearn") is not None:
        importlib.import_module("sklearn.datasets")  # a cached submodule must not hide the block
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what `import sklearn` sees when absent
    with pytest.raises(ImportError, match=r"digits task needs scikit-learn.*seqjax\[tasks\]"):
        digits.dataset()


@needs_sklearn
def test_logistic_baseline_rejects_no_steps():
    with pytest.raises(ValueError, match="steps"):
        _classification.logistic_baseline(digits.dataset(), steps=0)
