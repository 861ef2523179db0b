"""Built-in tasks: their data match their definitions, and their baselines the analytic values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.tasks import adding, copy, sunspots
from seqjax.train import losses


def test_adding_problem_definition():
    xs, targets = adding.batch(jax.random.key(0), 256, 30)
    xs, targets = np.asarray(xs), np.asarray(targets)
    assert xs.shape == (256, 30, 2) and targets.shape == (256,)
    markers = xs[..., 1]
    assert np.all(markers.sum(1) == 2)
    assert np.all(markers[:, :15].sum(1) == 1) and np.all(markers[:, 15:].sum(1) == 1)
    np.testing.assert_allclose(targets, (xs[..., 0] * markers).sum(1), rtol=1e-6)
    assert 0.0 <= xs[..., 0].min() and xs[..., 0].max() < 1.0


def test_adding_baseline_is_one_sixth():
    _, targets = adding.batch(jax.random.key(1), 200_000, 4)
    mse = float(jnp.mean((targets - 1.0) ** 2))
    assert abs(mse - adding.BASELINE_MSE) < 0.003  # sampling error ~0.0004
    with pytest.raises(ValueError, match="length"):
        adding.batch(jax.random.key(0), 2, 1)


def test_copy_task_definition():
    T = 7
    inputs, targets = copy.batch(jax.random.key(0), 16, T)
    symbols = np.asarray(inputs).argmax(-1)
    targets = np.asarray(targets)
    assert inputs.shape == (16, T + 20, copy.NUM_SYMBOLS)
    data = symbols[:, :10]
    assert data.min() >= 1 and data.max() <= 8
    np.testing.assert_array_equal(symbols[:, 10 : 10 + T - 1], copy.BLANK)
    np.testing.assert_array_equal(symbols[:, 10 + T - 1], copy.DELIMITER)
    np.testing.assert_array_equal(targets[:, -10:], data)
    np.testing.assert_array_equal(targets[:, :-10], copy.BLANK)


def test_copy_baseline_matches_the_memoryless_strategy():
    T = 50
    _, targets = copy.batch(jax.random.key(2), 32, T)
    total = T + 20
    # blank with certainty, then uniform over the 8 data symbols for the last 10 steps
    probs = np.zeros((32, total, copy.NUM_SYMBOLS))
    probs[:, :-10, copy.BLANK] = 1.0
    probs[:, -10:, 1:9] = 1.0 / 8
    logits = jnp.log(jnp.asarray(probs) + 1e-30)
    ce = float(losses.sequence_cross_entropy(logits, targets))
    np.testing.assert_allclose(ce, copy.baseline_cross_entropy(T), rtol=1e-5)
    np.testing.assert_allclose(copy.baseline_cross_entropy(T), 10 * math.log(8) / 70)


def test_sunspots_data_and_published_baselines():
    years, values = sunspots.load()
    assert years[0] == 1700 and years[-1] == 2008 and len(values) == 309
    # Zhang (2003): persistence 30.3, AR(9) 17.5 on the one-step forecasts of 1921-1987
    assert abs(sunspots.persistence_rmse() - 30.3) < 0.05
    assert abs(sunspots.ar_rmse(9) - 17.5) < 0.05


def test_sunspots_task_is_judged_against_its_strongest_baseline():
    from seqjax.tasks import registry

    task = registry.get("sunspots", None, 0)
    # Zhang (2003): AR(9) at 17.5 is stronger than persistence at 30.3, so it is the bar
    assert task.baseline_name == "AR(9)" and abs(task.baseline - 17.5) < 0.05
    assert set(task.all_baselines()) == {"persistence", "AR(9)"}
    assert abs(task.all_baselines()["persistence"] - 30.3) < 0.05
    assert task.verdict(17.0) == "beats AR(9), the strongest baseline"
    assert task.verdict(20.0).startswith("beats persistence but not AR(9)")
    assert task.verdict(31.0) == "no better than persistence"


def test_charlm_baselines_are_uniform_and_unigram():
    from seqjax.tasks import registry

    task = registry.get("charlm", 64, 0)
    baselines = task.all_baselines()
    vocab = task.extras["vocab"]
    assert baselines["uniform"] == pytest.approx(math.log2(vocab.size))
    assert baselines["unigram model"] < baselines["uniform"]  # letters are not equally common
    assert task.baseline == baselines["unigram model"]


def test_sunspots_windows_forecast_the_next_year():
    data = sunspots.dataset(window=12)
    years, values = sunspots.load()
    assert data.test.years[0] == 1921 and data.test.years[-1] == 1987
    assert data.train.years.max() == 1920 and len(data.test.targets) == 67
    first = data.test
    np.testing.assert_allclose(
        data.denormalise(first.targets), values[years >= 1921][:67], rtol=1e-5
    )
    # the window ends the year before the target
    np.testing.assert_allclose(
        data.denormalise(first.inputs[0, -1, 0]), values[years == 1920], rtol=1e-5
    )
    assert first.inputs.shape == (67, 12, 1)
    with pytest.raises(ValueError, match="window"):
        sunspots.dataset(window=0)


def test_tasks_and_train_reachable_after_a_plain_import():
    import subprocess
    import sys

    code = (  # as the README writes it: no import of the subpackages first
        "import seqjax\n"
        "task = seqjax.tasks.registry.get('adding', seq_len=10)\n"
        "assert callable(seqjax.train.fit) and task.name == 'adding T=10'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
