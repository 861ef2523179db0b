"""seqjax.nn: NNX modules over the pure functions, against the functional layers, against
Flax's own nnx.RNN, and training a small NNX model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import seqjax
import seqjax.nn as snn
from seqjax import interop

D, H, B, T = 3, 5, 3, 7
LENGTHS = jnp.array([7, 4, 2])


def xs(seed=1):
    return jax.random.normal(jax.random.key(seed), (B, T, D))


MODULES = {
    "SimpleRNN": lambda: snn.SimpleRNN(D, H, rngs=nnx.Rngs(0)),
    "LSTM": lambda: snn.LSTM(D, H, rngs=nnx.Rngs(0), cell_options={"peephole": True}),
    "GRU": lambda: snn.GRU(D, H, rngs=nnx.Rngs(0)),
    "MinGRU": lambda: snn.MinGRU(D, H, rngs=nnx.Rngs(0)),
    "MinLSTM": lambda: snn.MinLSTM(D, H, rngs=nnx.Rngs(0), log_space=True),
    "LRU": lambda: snn.LRU(D, H, rngs=nnx.Rngs(0)),
}


CASES = [(name, True, False) for name in MODULES]  # reverse, keep_order: the most involved
CASES += [("LSTM", False, False), ("LSTM", True, True)]


@pytest.mark.parametrize("name, reverse, keep_order", CASES)
def test_module_equals_functional_unroll(name, reverse, keep_order):
    module = MODULES[name]()
    x = xs()
    carry0 = jax.tree.map(lambda c: c + 0.2, module.initialize_carry((B,)))
    final, ys = module(x, initial_carry=carry0, seq_lengths=LENGTHS, return_carry=True,
                       reverse=reverse, keep_order=keep_order)  # fmt: skip
    options = module.options.replace(reverse=reverse)
    want_final, want = seqjax.unroll(module.cell, module.params, x, carry=carry0,
                                     lengths=LENGTHS, options=options)  # fmt: skip
    if reverse and not keep_order:
        want = seqjax.reverse_sequences(want, LENGTHS, 1)
    np.testing.assert_allclose(ys, want, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), final, want_final)
    np.testing.assert_array_equal(module(x, lengths=LENGTHS), module(x, seq_lengths=LENGTHS))


@pytest.mark.parametrize("reverse, keep_order", [(False, False), (True, False), (True, True)])
def test_call_semantics_match_flax_nnx_rnn(reverse, keep_order):
    """Same weights in Flax's nnx.RNN(GRUCell) and seqjax.nn.GRU: same outputs at every valid
    step, for the forward and both reverse orders."""
    ours = snn.GRU(D, H, rngs=nnx.Rngs(0))
    params = dict(ours.params)
    params["b_hh"] = params["b_hh"].at[2 * H :].set(0.0)  # nnx.GRUCell has no hidden bias on n
    for k, v in params.items():
        getattr(ours, k).set_value(v)
    flax_cell = interop.to_flax(params, nnx.GRUCell(D, H, rngs=nnx.Rngs(1)))
    theirs = nnx.RNN(flax_cell)
    x = xs()
    kw = dict(seq_lengths=LENGTHS, reverse=reverse, keep_order=keep_order)
    got, want = ours(x, **kw), theirs(x, **kw)
    valid = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_bidirectional_and_stack_equal_the_functional_layers():
    fwd, bwd = snn.LSTM(D, H, rngs=nnx.Rngs(0)), snn.LSTM(D, H, rngs=nnx.Rngs(1))
    top = snn.GRU(2 * H, H, rngs=nnx.Rngs(2))
    model = snn.Stack(snn.Bidirectional(fwd, bwd), top)
    functional = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(seqjax.lstm(H)), seqjax.rnn(seqjax.lstm(H))),
        seqjax.rnn(seqjax.gru(H)),
    )
    params = ({"forward": fwd.params, "backward": bwd.params}, top.params)
    final, ys = model(xs(), seq_lengths=LENGTHS, return_carry=True)
    want_final, want = functional.apply(params, xs(), lengths=LENGTHS)
    np.testing.assert_allclose(ys, want, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), final, want_final)


def test_split_merge_jit_grad_and_scan_over_layers():
    module = snn.GRU(H, H, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    again = nnx.merge(graphdef, state)
    x = jax.random.normal(jax.random.key(3), (B, T, H))
    np.testing.assert_array_equal(again(x), module(x))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(module, x), module(x), rtol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(module)
    want = jax.grad(lambda p: jnp.sum(seqjax.unroll(module.cell, p, x)[1] ** 2))(module.params)
    for name in module.param_names:
        np.testing.assert_allclose(getattr(grads, name)[...], want[name], rtol=1e-5, atol=1e-6)

    # Four identical layers created with nnx.vmap and run with nnx.scan: a deep stack compiled
    # once, the way NNX users build them.
    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return snn.GRU(H, H, rngs=rngs)

    layers = make(nnx.Rngs(5))

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(layer, h):
        return layer(h)

    out = run(layers, x)
    h = x
    for i in range(4):  # the same layers, one by one
        params = jax.tree.map(lambda a, i=i: a[i], layers.params)
        h = seqjax.unroll(layers.cell, params, h)[1]
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-6)


class TinyLM(nnx.Module):
    def __init__(self, vocab: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, 8, rngs=rngs)
        self.lstm = snn.LSTM(8, 16, rngs=rngs)
        self.out = nnx.Linear(16, vocab, rngs=rngs)

    def __call__(self, tokens):
        return self.out(self.lstm(self.embed(tokens)))


def test_a_small_nnx_model_trains():
    """embedding -> seqjax LSTM -> linear learns to continue a repeating pattern."""
    vocab, pattern = 6, jnp.array([0, 3, 1, 4, 2, 5, 1, 3])
    tokens = jnp.stack([jnp.roll(jnp.tile(pattern, 3), -s) for s in range(8)])  # (8, 24)
    model = TinyLM(vocab, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, tokens):
        def loss_fn(model):
            logits = model(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, tokens)) for _ in range(60)]
    assert losses[0] > 1.5  # about log(6) = 1.79 at the start
    assert losses[-1] < 0.3 * losses[0], f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_errors():
    module = snn.GRU(D, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pass seq_lengths or lengths"):
        module(xs(), seq_lengths=LENGTHS, lengths=LENGTHS)
    with pytest.raises(ValueError, match="xs has 4 features"):
        module(jnp.ones((B, T, 4)))
    with pytest.raises(ValueError, match="Stack: need at least one layer"):
        snn.Stack()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"remt": True}, TypeError, "LSTM: unknown option 'remt'"),
        ({"reverse": True}, TypeError, "'reverse' \\(it is an argument of each call\\)"),
        ({"remat": "yes"}, TypeError, "LSTM: remat must be True or False; got 'yes'"),
        ({"unroll": 0}, ValueError, "LSTM: unroll must be a positive integer; got 0"),
    ],
)
def test_options_are_checked_when_the_module_is_built(options, error, match):
    with pytest.raises(error, match=match):
        snn.LSTM(D, H, rngs=nnx.Rngs(0), **options)


def test_bidirectional_needs_modules():
    with pytest.raises(TypeError, match=r"forward must be a seqjax\.nn recurrent module; got Cell"):
        snn.Bidirectional(seqjax.lstm(H), seqjax.lstm(H))


def test_recurrent_dropout_of_the_modules_equals_the_functional_layer():
    module = snn.GRU(3, 4, rngs=nnx.Rngs(0), recurrent_dropout=0.4, zoneout=0.2)
    xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
    layer = seqjax.rnn(seqjax.gru(4), recurrent_dropout=0.4, zoneout=0.2)
    trained = module(xs, rngs=nnx.Rngs(dropout=7))
    expected = layer.apply(module.params, xs, key=nnx.Rngs(dropout=7).dropout())[1]
    np.testing.assert_allclose(trained, expected, atol=1e-6)
    module.eval()
    np.testing.assert_allclose(module(xs), layer.apply(module.params, xs)[1], atol=1e-6)
    with pytest.raises(ValueError, match="zoneout must be a probability"):
        snn.LSTM(3, 4, rngs=nnx.Rngs(0), zoneout=1.5)
