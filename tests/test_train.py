"""``seqjax.train``: the optimizer chain, masked losses and metrics, and the train step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import train
from seqjax.tasks import adding
from seqjax.train import losses


def tree_norm(tree) -> float:
    """The global L2 norm, in NumPy."""
    return float(np.linalg.norm(np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])))


def test_clip_norm_rescales_to_the_threshold():
    opt = train.optimizer("sgd", learning_rate=1.0, clip_norm=2.0)
    params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
    grads = {"a": jnp.full(3, 10.0), "b": jnp.full(4, -10.0)}
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = math.sqrt(7 * 100.0)
    np.testing.assert_allclose(updates["a"], -10.0 * 2.0 / norm, rtol=1e-6)
    np.testing.assert_allclose(tree_norm(updates), 2.0, rtol=1e-6)
    small = {"a": jnp.full(3, 0.1), "b": jnp.zeros(4)}  # below the threshold: untouched
    updates, _ = opt.update(small, opt.init(params), params)
    np.testing.assert_allclose(updates["a"], -0.1, rtol=1e-6)


def test_clip_value():
    opt = train.optimizer("sgd", learning_rate=1.0, clip_value=0.5)
    params = jnp.zeros(3)
    updates, _ = opt.update(jnp.array([2.0, -0.2, -7.0]), opt.init(params), params)
    np.testing.assert_allclose(updates, [-0.5, 0.2, 0.5])


def test_nonfinite_step_is_skipped_and_counted():
    opt = train.optimizer("adam", learning_rate=0.1)
    params = jnp.ones(3)
    state = opt.init(params)
    updates, state = opt.update(jnp.array([1.0, jnp.nan, 1.0]), state, params)
    np.testing.assert_array_equal(updates, 0.0)
    assert int(state.total_notfinite) == 1
    updates, state = opt.update(jnp.ones(3), state, params)
    assert np.all(np.asarray(updates) < 0)
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1


def test_cosine_schedule_with_warmup():
    opt = train.optimizer(
        "sgd", learning_rate=1.0, schedule="cosine", warmup_steps=10, total_steps=110
    )
    params = jnp.zeros(())
    state = opt.init(params)
    step = jax.jit(opt.update)
    rates = []
    for _ in range(111):
        update, state = step(jnp.ones(()), state, params)
        rates.append(-float(update))
    assert rates[0] == 0.0
    np.testing.assert_allclose(rates[5], 0.5, rtol=1e-6)
    np.testing.assert_allclose(rates[10], 1.0, rtol=1e-6)
    np.testing.assert_allclose(rates[60], 0.5 * (1 + math.cos(math.pi * 0.5)), atol=1e-6)
    np.testing.assert_allclose(rates[110], 0.0, atol=1e-7)


def test_weight_decay_is_decoupled_for_adam():
    opt = train.optimizer("adam", learning_rate=0.1, weight_decay=0.5)
    params = jnp.full(2, 2.0)
    updates, _ = opt.update(jnp.zeros(2), opt.init(params), params)
    np.testing.assert_allclose(updates, -0.1 * 0.5 * 2.0, rtol=1e-6)  # decay alone


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "adamm"}, "unknown optimizer name"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_value": -1.0}, "clip_value"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"schedule": "cosine"}, "total_steps"),
        ({"schedule": "linear"}, "unknown schedule"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_optimizer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.optimizer(**kwargs)


def test_sequence_losses_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (3, 5))
    lengths = np.array([5, 2, 3])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    mask = np.arange(5)[None] < lengths[:, None]
    expected = picked[mask].mean()
    got = losses.sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), lengths)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(losses.bits_per_character(got), expected / np.log(2), rtol=1e-6)
    accuracy = (logits.argmax(-1) == labels)[mask].mean()
    np.testing.assert_allclose(
        losses.sequence_accuracy(jnp.asarray(logits), jnp.asarray(labels), lengths), accuracy
    )


def test_pooling_and_regression_losses_against_numpy():
    rng = np.random.default_rng(1)
    ys = rng.standard_normal((3, 6, 2)).astype(np.float32)
    lengths = np.array([6, 1, 4])
    np.testing.assert_allclose(
        losses.last_valid(jnp.asarray(ys), lengths), ys[np.arange(3), lengths - 1]
    )
    np.testing.assert_allclose(losses.last_valid(jnp.asarray(ys)), ys[:, -1])
    pooled = np.stack([ys[b, :n].mean(0) for b, n in enumerate(lengths)])
    np.testing.assert_allclose(losses.mean_pool(jnp.asarray(ys), lengths), pooled, rtol=1e-6)
    targets = rng.standard_normal((3, 6, 2)).astype(np.float32)
    mask = np.arange(6)[None] < lengths[:, None]
    expected = ((ys - targets) ** 2).mean(-1)[mask].mean()
    np.testing.assert_allclose(losses.mse(jnp.asarray(ys), targets, lengths), expected, rtol=1e-6)
    np.testing.assert_allclose(
        losses.rmse(jnp.asarray(ys), targets), np.sqrt(((ys - targets) ** 2).mean()), rtol=1e-6
    )


def _adding_model(hidden: int):
    layer = seqjax.rnn(seqjax.gru(hidden))

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"rnn": layer.init(k1, adding.INPUT_SIZE), "out": jax.random.normal(k2, (hidden,))}

    def model(params, batch, key):
        del key
        _, ys = layer.apply(params["rnn"], batch["inputs"])
        return ys[:, -1] @ params["out"] * 0.1 + 1.0

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    return init, model, loss


_YS = jnp.arange(10.0).reshape(2, 5, 1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: losses.mse(jnp.ones((3, 1)), jnp.ones(3)), ValueError,
         r"same shape; got \(3, 1\) and \(3,\)"),
        (lambda: losses.last_valid(_YS, jnp.array([0, 5])), ValueError,
         r"lengths must lie in \[1, 5\].*got a length of 0"),
        (lambda: losses.mean_pool(_YS, jnp.array([2, 9])), ValueError, "got a length of 9"),
        (lambda: losses.mean_pool(_YS, jnp.array([2.0, 3.0])), TypeError, "integer array"),
        (lambda: losses.last_valid(_YS, jnp.array([1, 2, 3])), ValueError, "batch shape"),
        (lambda: losses.sequence_cross_entropy(jnp.zeros((1, 2, 3)), jnp.array([[7, 1]])),
         ValueError, r"labels must lie in \[0, 3\).*got 7"),
        (lambda: losses.sequence_cross_entropy(jnp.zeros((1, 2, 3)), jnp.array([[0, -1]])),
         ValueError, "got -1"),
        (lambda: losses.sequence_cross_entropy(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2))),
         TypeError, "integer class indices"),
        (lambda: losses.sequence_accuracy(jnp.zeros((1, 2, 3)), jnp.zeros((2, 1), int)),
         ValueError, r"shape of logits without its class axis"),
        (lambda: losses.sequence_cross_entropy(jnp.zeros((1, 2, 3)), jnp.array([[0, 1]]),
                                               lengths=jnp.array([1.5])),
         TypeError, "lengths must be an integer array"),
        (lambda: losses.classification_cross_entropy(jnp.zeros((4, 3)), jnp.array([0, 1, 2, 3])),
         ValueError, r"\[0, 3\)"),
    ],
)  # fmt: skip
def test_losses_refuse_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_losses_check_only_shapes_under_jit():
    # values of traced labels and lengths cannot be read: shapes still are
    jitted = jax.jit(losses.sequence_cross_entropy)
    assert jnp.isfinite(jitted(jnp.zeros((1, 2, 3)), jnp.array([[0, 2]]), jnp.array([2])))
    with pytest.raises(ValueError, match="shape of logits"):
        jitted(jnp.zeros((1, 2, 3)), jnp.array([[0, 2, 1]]))


def test_train_step_reduces_loss_and_reports_gradient_norm():
    init, model, loss = _adding_model(16)
    opt = train.optimizer("adam", learning_rate=1e-2, clip_norm=0.5)
    step = train.make_train_step(model, loss, opt, clip_norm=0.5)
    state = train.TrainState.create(init(jax.random.key(0)), opt)
    xs, ys = adding.batch(jax.random.key(1), 64, 10)
    batch = {"inputs": xs, "targets": ys}
    grads = jax.grad(lambda p: loss(model(p, batch, None), batch))(state.params)
    expected_norm = tree_norm(grads)
    first_loss = float(loss(model(state.params, batch, None), batch))
    state, metrics = step(state, batch, None)
    np.testing.assert_allclose(metrics["grad_norm"], expected_norm, rtol=1e-5)
    assert float(metrics["clipped"]) == float(expected_norm > 0.5)
    np.testing.assert_allclose(metrics["loss"], first_loss, rtol=1e-6)
    for _ in range(60):
        state, metrics = step(state, batch, None)
    assert int(state.step) == 61
    assert float(metrics["loss"]) < 0.5 * first_loss
    assert float(metrics["nonfinite"]) == 0.0


def test_train_step_skips_a_nonfinite_batch():
    init, model, loss = _adding_model(8)
    opt = train.optimizer("adam", learning_rate=1e-2)
    step = train.make_train_step(model, loss, opt, donate=False)
    state = train.TrainState.create(init(jax.random.key(0)), opt)
    xs, ys = adding.batch(jax.random.key(1), 8, 6)
    bad = {"inputs": xs.at[0, 0, 0].set(jnp.nan), "targets": ys}
    new_state, metrics = step(state, bad, None)
    assert float(metrics["nonfinite"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)


def test_tbptt_carries_state_forward_but_cuts_gradients():
    """Chunks see the whole stream's state, and each update's gradient is that of its own chunk
    with the incoming carry held constant."""
    cell = seqjax.lstm(6)
    layer = seqjax.rnn(cell)
    params = {"rnn": layer.init(jax.random.key(0), 3), "out": jnp.ones(6)}
    stream = jax.random.normal(jax.random.key(1), (2, 12, 3))
    targets = jax.random.normal(jax.random.key(2), (2, 12))

    def model(params, carry, batch, key):
        carry, ys = layer.apply(params["rnn"], batch["inputs"], carry=carry)
        return carry, ys @ params["out"]

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    opt = train.optimizer("sgd", learning_rate=0.0)  # keep params fixed to compare gradients
    step = train.make_tbptt_step(model, loss, opt, donate=False)
    state = train.TrainState.create(params, opt)
    carry = cell.initial_carry(params["rnn"], (2,))
    full_carry, full_ys = layer.apply(params["rnn"], stream)
    for k in range(3):
        chunk = {"inputs": stream[:, 4 * k : 4 * k + 4], "targets": targets[:, 4 * k : 4 * k + 4]}
        expected_grads = jax.grad(lambda p, c=carry, b=chunk: loss(model(p, c, b, None)[1], b))(
            params
        )
        incoming = carry
        state, carry, metrics = step(state, carry, chunk, None)
        predictions = model(params, incoming, chunk, None)[1]
        np.testing.assert_allclose(predictions, full_ys[:, 4 * k : 4 * k + 4] @ params["out"],
                                   atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(metrics["grad_norm"], tree_norm(expected_grads), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), carry, full_carry)


@pytest.mark.parametrize("cell_name", ["rg_lru", "selective_ssm"])
def test_input_layer_cells_equal_the_cell_on_projected_inputs(cell_name):
    from seqjax.train import model as train_model

    wrapped = train_model.TRAIN_CELLS[cell_name](8)
    params = wrapped.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    inner = {"rg_lru": lambda: seqjax.rg_lru(8, num_heads=4),
             "selective_ssm": lambda: seqjax.selective_ssm(8)}[cell_name]()  # fmt: skip
    us = xs @ params["w_in"] + params["b_in"]
    want_carry, want = seqjax.unroll(inner, params["cell"], us)
    for parallel in (False, True):
        carry, ys = seqjax.unroll(wrapped, params, xs, parallel=parallel)
        np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(carry, want_carry, rtol=1e-5, atol=1e-6)
