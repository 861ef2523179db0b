"""Every public function checks its inputs before any tracing work.

A mistake in a call must surface as a ValueError or TypeError whose message names the function,
the argument and what came, never as an XLA or ``lax.scan`` traceback. The shapes are tiny (hidden
4, input 3, batch 2, time 5) and almost nothing here runs a scan, so the file stays fast.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import interop

H, D, B, T = 4, 3, 2, 5


def _msg(*parts: str) -> str:
    """A regex matching the literal ``parts`` in this order, anything in between."""
    return ".*".join(re.escape(part) for part in parts)


@pytest.fixture(scope="module")
def lstm_cell():
    return seqjax.lstm(H)


@pytest.fixture(scope="module")
def lstm_params(lstm_cell):
    return lstm_cell.init(jax.random.key(0), D)


@pytest.fixture(scope="module")
def gru_cell():
    return seqjax.gru(H)


@pytest.fixture(scope="module")
def gru_params(gru_cell):
    return gru_cell.init(jax.random.key(1), D)


@pytest.fixture(scope="module")
def xs():
    return jnp.ones((B, T, D), jnp.float32)


# --------------------------------------------------------------------------------------- unroll


@pytest.mark.parametrize("shape", [(D,), ()])
def test_unroll_xs_rank_too_small(lstm_cell, lstm_params, shape):
    with pytest.raises(ValueError, match=_msg("unroll: xs must have at least 2 axes", str(shape))):
        seqjax.unroll(lstm_cell, lstm_params, jnp.ones(shape))


@pytest.mark.parametrize(
    ("shape", "time_major", "got"),
    [((B, T, 7), False, 7), ((B, T, 1), False, 1), ((T, B, 5), True, 5), ((T, 2), False, 2)],
)
def test_unroll_xs_feature_size(lstm_cell, lstm_params, shape, time_major, got):
    with pytest.raises(ValueError, match=_msg(f"unroll: xs has {got} features", f"expect {D}")):
        seqjax.unroll(lstm_cell, lstm_params, jnp.ones(shape), time_major=time_major)


@pytest.mark.parametrize(("shape", "time_major"), [((B, 0, D), False), ((0, B, D), True)])
def test_unroll_empty_time_axis(lstm_cell, lstm_params, shape, time_major):
    with pytest.raises(ValueError, match=_msg("unroll: xs has an empty time axis", str(shape))):
        seqjax.unroll(lstm_cell, lstm_params, jnp.ones(shape), time_major=time_major)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_unroll_integer_xs(lstm_cell, lstm_params, dtype):
    bad = jnp.ones((B, T, D), dtype)
    with pytest.raises(
        TypeError, match=_msg("unroll: xs must have a floating dtype", str(bad.dtype))
    ):
        seqjax.unroll(lstm_cell, lstm_params, bad)


@pytest.mark.parametrize("shape", [(3,), (B, 1), ()])
def test_unroll_lengths_wrong_shape(lstm_cell, lstm_params, xs, shape):
    lengths = jnp.full(shape, 2, jnp.int32)
    with pytest.raises(ValueError, match=_msg("unroll: lengths", f"{(B,)}", f"got shape {shape}")):
        seqjax.unroll(lstm_cell, lstm_params, xs, lengths=lengths)


@pytest.mark.parametrize(
    ("lengths", "dtype"),
    [(jnp.array([5.0, 3.0]), "float32"), ([1.5, 2.0], "float64"), (np.array([True, True]), "bool")],
)
def test_unroll_float_lengths(lstm_cell, lstm_params, xs, lengths, dtype):
    with pytest.raises(
        TypeError, match=_msg("unroll: lengths must be an integer", f"got dtype {dtype}")
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, lengths=lengths)


@pytest.mark.parametrize(("lengths", "bad"), [([0, 2], 0), ([-1, 2], -1), ([3, -4], -4)])
def test_unroll_lengths_not_positive(lstm_cell, lstm_params, xs, lengths, bad):
    with pytest.raises(
        ValueError, match=_msg(f"unroll: lengths must lie in [1, {T}]", f"got a length of {bad}")
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, lengths=jnp.array(lengths))


@pytest.mark.parametrize(("lengths", "bad"), [([T + 1, 2], T + 1), ([5, 90], 90)])
def test_unroll_lengths_longer_than_time(lstm_cell, lstm_params, xs, lengths, bad):
    with pytest.raises(
        ValueError, match=_msg(f"unroll: lengths must lie in [1, {T}]", f"got a length of {bad}")
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, lengths=np.array(lengths, np.int32))


@pytest.mark.parametrize(
    ("make_carry", "got"),
    [
        (lambda: jnp.zeros((B, H)), "PyTreeDef(*)"),  # a bare array for an LSTM
        (lambda: (jnp.zeros((B, H)), jnp.zeros((B, H))), "PyTreeDef((*, *))"),  # not LSTMCarry
        (lambda: [jnp.zeros((B, H))], "PyTreeDef([*])"),
    ],
)
def test_unroll_carry_wrong_structure(lstm_cell, lstm_params, xs, make_carry, got):
    with pytest.raises(
        ValueError, match=_msg("unroll: carry has the wrong structure", "LSTMCarry", f"got {got}")
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, carry=make_carry())


def test_unroll_lstm_carry_for_a_gru(gru_cell, gru_params, xs):
    carry = seqjax.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H)))
    with pytest.raises(
        ValueError, match=_msg("unroll: carry has the wrong structure", "got", "LSTMCarry")
    ):
        seqjax.unroll(gru_cell, gru_params, xs, carry=carry)


@pytest.mark.parametrize("bad_shape", [(B, H + 1), (B + 1, H), (H,)])
def test_unroll_carry_leaf_wrong_shape(lstm_cell, lstm_params, xs, bad_shape):
    carry = seqjax.LSTMCarry(jnp.zeros((B, H)), jnp.zeros(bad_shape))
    with pytest.raises(
        ValueError,
        match=_msg("unroll: carry has a leaf of shape", str(bad_shape), f"where {(B, H)}"),
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, carry=carry)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.int32])
def test_unroll_carry_wrong_dtype(lstm_cell, lstm_params, xs, dtype):
    carry = seqjax.LSTMCarry(jnp.zeros((B, H), dtype), jnp.zeros((B, H)))
    name = jnp.dtype(dtype).name
    with pytest.raises(TypeError, match=_msg("unroll: carry has a leaf of dtype", name, "float32")):
        seqjax.unroll(lstm_cell, lstm_params, xs, carry=carry)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_unroll_unroll_not_positive(lstm_cell, lstm_params, xs, value):
    with pytest.raises(
        ValueError, match=_msg("unroll: unroll must be a positive integer", f"got {value!r}")
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, unroll=value)


@pytest.mark.parametrize("name", ["reverse", "time_major", "remat", "hoist_projection"])
@pytest.mark.parametrize("value", ["yes", 1])
def test_unroll_flags_must_be_bool(lstm_cell, lstm_params, xs, name, value):
    with pytest.raises(
        TypeError, match=_msg(f"unroll: {name} must be True or False", f"got {value!r}")
    ):
        seqjax.unroll(lstm_cell, lstm_params, xs, **{name: value})


@pytest.mark.parametrize(
    ("make", "got"),
    [(lambda c: "lstm", "str"), (lambda c: None, "NoneType"), (seqjax.rnn, "Layer")],
)
def test_unroll_cell_not_a_cell(lstm_cell, lstm_params, xs, make, got):
    with pytest.raises(TypeError, match=_msg("unroll: cell must be a seqjax.Cell", f"got {got}")):
        seqjax.unroll(make(lstm_cell), lstm_params, xs)


def test_unroll_params_none(lstm_cell, xs):
    with pytest.raises(TypeError, match=_msg("unroll: params", "cell.init", "got NoneType")):
        seqjax.unroll(lstm_cell, None, xs)


def test_unroll_params_of_a_stack(lstm_cell, lstm_params, xs):
    with pytest.raises(TypeError, match=_msg("unroll: params do not fit cell 'lstm'", "got tuple")):
        seqjax.unroll(lstm_cell, (lstm_params,), xs)


def test_unroll_params_of_another_hidden_size(lstm_cell, xs):
    params = seqjax.lstm(2 * H).init(jax.random.key(0), D)
    with pytest.raises(
        ValueError, match=_msg("unroll: params do not fit cell 'lstm'", "dot_general")
    ):
        seqjax.unroll(lstm_cell, params, xs)


# ----------------------------------------------------------------------------------------- step


@pytest.mark.parametrize(("shape", "got"), [((B, 7), 7), ((1,), 1)])
def test_step_x_t_wrong_features(lstm_cell, lstm_params, shape, got):
    carry = lstm_cell.initial_carry(lstm_params, shape[:-1])
    with pytest.raises(ValueError, match=_msg(f"step: x_t has {got} features", f"expect {D}")):
        seqjax.step(lstm_cell, lstm_params, carry, jnp.ones(shape))


def test_step_x_t_scalar(lstm_cell, lstm_params):
    carry = lstm_cell.initial_carry(lstm_params)
    with pytest.raises(ValueError, match=_msg("step: x_t must have at least 1 axes", "()")):
        seqjax.step(lstm_cell, lstm_params, carry, jnp.float32(1.0))


@pytest.mark.parametrize("bad_shape", [(B + 1, H), (B, H + 1), (H,)])
def test_step_carry_wrong_shape(gru_cell, gru_params, bad_shape):
    with pytest.raises(
        ValueError, match=_msg("step: carry has a leaf of shape", str(bad_shape), f"where {(B, H)}")
    ):
        seqjax.step(gru_cell, gru_params, jnp.zeros(bad_shape), jnp.ones((B, D)))


def test_step_cell_not_a_cell(lstm_params):
    with pytest.raises(TypeError, match=_msg("step: cell must be a seqjax.Cell", "got dict")):
        seqjax.step({}, lstm_params, jnp.zeros((B, H)), jnp.ones((B, D)))


# -------------------------------------------------------------------------------- cell builders

BUILDERS = [seqjax.lstm, seqjax.gru, seqjax.simple_rnn, seqjax.irnn]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4", None])
def test_cell_hidden_size(builder, value):
    with pytest.raises(
        ValueError, match=_msg("hidden_size must be a positive integer", f"got {value!r}")
    ):
        builder(value)


@pytest.mark.parametrize("activation", ["sigmoid", "TANH", None])
def test_simple_rnn_activation(activation):
    with pytest.raises(
        ValueError, match=_msg(f"simple_rnn: unknown activation {activation!r}", "tanh, relu")
    ):
        seqjax.simple_rnn(H, activation=activation)


@pytest.mark.parametrize(
    "builder", [seqjax.lstm, seqjax.gru, seqjax.simple_rnn], ids=lambda b: b.__name__
)
@pytest.mark.parametrize("scheme", ["xavier", "Default"])
def test_cell_init_scheme(builder, scheme):
    with pytest.raises(
        ValueError,
        match=_msg(f"{builder.__name__}: unknown init scheme {scheme!r}", "default, pytorch"),
    ):
        builder(H, init=scheme)


def test_lstm_forget_bias_not_a_number():
    with pytest.raises(
        TypeError, match=_msg("lstm: forget_bias must be a number or None", "got 'one'")
    ):
        seqjax.lstm(H, forget_bias="one")


def test_gru_reset_after_not_bool():
    with pytest.raises(
        TypeError, match=_msg("gru: reset_after must be True or False", "got 'yes'")
    ):
        seqjax.gru(H, reset_after="yes")


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("input_size", [0, -1, 2.5])
def test_cell_init_input_size(builder, input_size):
    cell = builder(H)
    with pytest.raises(
        ValueError, match=_msg("input_size must be a positive integer", f"got {input_size!r}")
    ):
        cell.init(jax.random.key(0), input_size)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize(
    ("dtype", "got"), [(jnp.int32, "int32"), (jnp.bool_, "bool"), ("xyz", "'xyz'")]
)
def test_cell_init_dtype_not_floating(builder, dtype, got):
    cell = builder(H)
    with pytest.raises(TypeError, match=_msg("dtype must be a floating dtype", f"got {got}")):
        cell.init(jax.random.key(0), D, dtype)


# --------------------------------------------------------------------------------------- layers


def test_stack_needs_a_layer():
    with pytest.raises(ValueError, match=_msg("stack: layers", "at least one layer", "got none")):
        seqjax.stack()


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, float("nan"), True, "0.1", None])
def test_stack_dropout(lstm_cell, dropout):
    with pytest.raises(
        ValueError, match=_msg("stack: dropout must be a probability in [0, 1)", f"got {dropout!r}")
    ):
        seqjax.stack(seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell), dropout=dropout)


@pytest.mark.parametrize("dropout", [0, 0.0, 0.5, np.float32(0.25), np.float64(0.9)])
def test_stack_dropout_valid_values(lstm_cell, dropout):
    layer = seqjax.stack(seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell), dropout=dropout)
    assert layer.output_size == H


@pytest.mark.parametrize("position", [0, 1])
def test_stack_of_a_raw_cell(lstm_cell, position):
    layers = [seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell)]
    layers[position] = lstm_cell
    with pytest.raises(
        TypeError, match=_msg(f"stack: layers[{position}] is a Cell", "seqjax.rnn(cell)")
    ):
        seqjax.stack(*layers)


def test_stack_of_something_else(lstm_cell):
    with pytest.raises(TypeError, match=_msg("stack: layers[1] must be a seqjax Layer", "got str")):
        seqjax.stack(seqjax.rnn(lstm_cell), "gru")


@pytest.mark.parametrize("side", ["forward", "backward"])
def test_bidirectional_of_a_raw_cell(lstm_cell, side):
    layers = {"forward": seqjax.rnn(lstm_cell), "backward": seqjax.rnn(lstm_cell)}
    layers[side] = lstm_cell
    with pytest.raises(
        TypeError, match=_msg(f"bidirectional: {side} is a Cell", "seqjax.rnn(cell)")
    ):
        seqjax.bidirectional(**layers)


@pytest.mark.parametrize(("fwd_tm", "bwd_tm"), [(False, True), (True, False)])
def test_bidirectional_mixed_time_major(lstm_cell, fwd_tm, bwd_tm):
    forward = seqjax.rnn(lstm_cell, time_major=fwd_tm)
    backward = seqjax.rnn(lstm_cell, time_major=bwd_tm)
    with pytest.raises(
        ValueError, match=_msg("bidirectional:", f"time_major={fwd_tm} and {bwd_tm}")
    ):
        seqjax.bidirectional(forward, backward)


def test_stack_mixed_time_major(lstm_cell):
    with pytest.raises(ValueError, match=_msg("stack:", "mixed time_major")):
        seqjax.stack(seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell, time_major=True))


@pytest.fixture(scope="module")
def two_layer_stack(lstm_cell, gru_cell):
    layer = seqjax.stack(seqjax.rnn(lstm_cell), seqjax.rnn(gru_cell))
    return layer, layer.init(jax.random.key(2), D)


@pytest.mark.parametrize(
    ("make_carry", "got"),
    [
        (lambda p: (None,), "tuple of 1"),
        (lambda p: (None, None, None), "tuple of 3"),
        (lambda p: [None, None], "list"),
        (lambda p: jnp.zeros((B, H)), "ArrayImpl"),
    ],
)
def test_stack_carry_wrong_length(two_layer_stack, xs, make_carry, got):
    layer, params = two_layer_stack
    with pytest.raises(
        ValueError, match=_msg("stack: carry must be a tuple of 2 entries", f"got {got}")
    ):
        layer.apply(params, xs, carry=make_carry(params))


def test_stack_inner_carry_wrong_shape(two_layer_stack, xs):
    layer, params = two_layer_stack
    carry = layer.initial_carry(params, (B,))
    carry = (carry[0], jnp.zeros((B, H + 1)))
    with pytest.raises(
        ValueError, match=_msg("unroll: carry has a leaf of shape", str((B, H + 1)))
    ):
        layer.apply(params, xs, carry=carry)


@pytest.mark.parametrize(
    ("params_of", "got"), [(lambda p: p[:1], "tuple of 1"), (lambda p: p[0], "dict")]
)
def test_stack_params_wrong_length(two_layer_stack, xs, params_of, got):
    layer, params = two_layer_stack
    with pytest.raises(
        ValueError, match=_msg("stack: params must be a tuple of 2 entries", f"got {got}")
    ):
        layer.apply(params_of(params), xs)


def test_bidirectional_carry_wrong_length(lstm_cell, lstm_params, xs):
    layer = seqjax.bidirectional(seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell))
    params = {"forward": lstm_params, "backward": lstm_params}
    carry = lstm_cell.initial_carry(lstm_params, (B,))  # one LSTMCarry, not one per direction
    with pytest.raises(
        ValueError, match=_msg("bidirectional: carry must be a tuple of 2 entries", "got LSTMCarry")
    ):
        layer.apply(params, xs, carry=carry)


@pytest.mark.parametrize("side", ["forward", "backward"])
def test_bidirectional_of_a_reversed_layer(lstm_cell, side):
    layers = {"forward": seqjax.rnn(lstm_cell), "backward": seqjax.rnn(lstm_cell)}
    layers[side] = seqjax.stack(seqjax.rnn(lstm_cell, reverse=True))  # found inside a stack too
    with pytest.raises(
        ValueError, match=_msg(f"bidirectional: {side} was built with reverse=True", "rnn(cell)")
    ):
        seqjax.bidirectional(**layers)


@pytest.mark.parametrize(
    ("params_of", "got"),
    [(lambda p: {"forward": p}, "got ['forward']"), (lambda p: [p, p], "got list")],
)
def test_bidirectional_params_wrong_structure(lstm_cell, lstm_params, xs, params_of, got):
    layer = seqjax.bidirectional(seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell))
    with pytest.raises(
        ValueError, match=_msg("bidirectional: params must be a dict with keys", got)
    ):
        layer.apply(params_of(lstm_params), xs)


@pytest.mark.parametrize("fn", ["stack", "bidirectional"])
@pytest.mark.parametrize(("key", "got"), [(1, "got int"), (jnp.ones(3), "float32 and shape (3,)")])
def test_layer_key_not_a_prng_key(lstm_cell, lstm_params, xs, fn, key, got):
    if fn == "stack":
        layer, params = seqjax.stack(seqjax.rnn(lstm_cell)), (lstm_params,)
    else:
        layer = seqjax.bidirectional(seqjax.rnn(lstm_cell), seqjax.rnn(lstm_cell))
        params = {"forward": lstm_params, "backward": lstm_params}
    with pytest.raises(TypeError, match=_msg(f"{fn}: key must be one PRNG key", got)):
        layer.apply(params, xs, key=key)
    layer.apply(params, xs, key=jax.random.PRNGKey(0))  # raw keys stay accepted


def test_rnn_checks_its_options(lstm_cell):
    with pytest.raises(TypeError, match=_msg("rnn: cell must be a seqjax.Cell", "got str")):
        seqjax.rnn("lstm")
    with pytest.raises(ValueError, match=_msg("rnn: unroll must be a positive integer", "got 0")):
        seqjax.rnn(lstm_cell, unroll=0)
    with pytest.raises(TypeError, match=_msg("rnn: reverse must be True or False", "got 'yes'")):
        seqjax.rnn(lstm_cell, reverse="yes")
    with pytest.raises(
        TypeError, match=_msg("rnn: hoist_projection must be True or False", "got 'yes'")
    ):
        seqjax.rnn(lstm_cell, hoist_projection="yes")


@pytest.mark.parametrize("time_axis", [2, -1, 3, -4, 1.0, True])
def test_reverse_sequences_time_axis(xs, time_axis):
    with pytest.raises(
        ValueError, match=_msg("reverse_sequences: time_axis", f"got {time_axis!r}", str(xs.shape))
    ):
        seqjax.reverse_sequences(xs, None, time_axis)


def test_reverse_sequences_lengths(xs):
    with pytest.raises(
        ValueError, match=_msg("reverse_sequences: lengths", f"{(B,)}", "got shape (3,)")
    ):
        seqjax.reverse_sequences(xs, jnp.array([1, 2, 3]), 1)
    with pytest.raises(
        ValueError,
        match=_msg(f"reverse_sequences: lengths must lie in [1, {T}]", "got a length of 9"),
    ):
        seqjax.reverse_sequences(xs, jnp.array([1, 9]), 1)
    with pytest.raises(
        TypeError, match=_msg("reverse_sequences: lengths must be an integer", "float32")
    ):
        seqjax.reverse_sequences(xs, jnp.array([1.0, 2.0]), 1)


# -------------------------------------------------------------------------------------- interop

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def torch_state(mode: str, num_layers: int = 1, bidirectional: bool = False) -> dict:
    """A state_dict like ``nn.<mode>(D, H, num_layers, bidirectional=...)``'s, as NumPy arrays."""
    rng = np.random.default_rng(0)
    gates = GATES[mode]
    state = {}
    for k in range(num_layers):
        for suffix in ["", "_reverse"] if bidirectional else [""]:
            fan_in = D if k == 0 else H * (2 if bidirectional else 1)
            state[f"weight_ih_l{k}{suffix}"] = rng.standard_normal((gates * H, fan_in), np.float32)
            state[f"weight_hh_l{k}{suffix}"] = rng.standard_normal((gates * H, H), np.float32)
            state[f"bias_ih_l{k}{suffix}"] = rng.standard_normal(gates * H, np.float32)
            state[f"bias_hh_l{k}{suffix}"] = rng.standard_normal(gates * H, np.float32)
    return state


def test_from_torch_valid_state_dict_builds():
    layer, params = interop.from_torch(torch_state("GRU", 2, True), mode="GRU", batch_first=True)
    assert layer.output_size == 2 * H and len(params) == 2


def test_from_torch_mapping_needs_mode():
    with pytest.raises(ValueError, match=_msg("from_torch: mode is required", "LSTM", "got None")):
        interop.from_torch(torch_state("LSTM"))


@pytest.mark.parametrize("mode", ["LSTMX", "lstm", "RNN"])
def test_from_torch_unknown_mode(mode):
    with pytest.raises(
        ValueError,
        match=_msg(f"from_torch: unknown mode {mode!r}", "RNN_TANH, RNN_RELU, LSTM, GRU"),
    ):
        interop.from_torch(torch_state("LSTM"), mode=mode)


@pytest.mark.parametrize(
    ("weights_of", "mode"),
    [("GRU", "LSTM"), ("LSTM", "GRU"), ("RNN_TANH", "LSTM"), ("GRU", "RNN_RELU")],
)
def test_from_torch_mode_disagrees_with_weights(weights_of, mode):
    got = (GATES[weights_of] * H, H)
    with pytest.raises(
        ValueError, match=_msg(f"from_torch: mode {mode} needs weight_hh_l0", f"got {got}")
    ):
        interop.from_torch(torch_state(weights_of), mode=mode)


@pytest.mark.parametrize(("held", "given"), [(1, 2), (2, 1), (2, 3)])
def test_from_torch_num_layers_disagrees(held, given):
    with pytest.raises(
        ValueError, match=_msg(f"from_torch: num_layers={given}", f"holds {held} layer")
    ):
        interop.from_torch(torch_state("LSTM", held), mode="LSTM", num_layers=given)


@pytest.mark.parametrize("num_layers", [0, -1, 1.0])
def test_from_torch_num_layers_not_positive(num_layers):
    with pytest.raises(
        ValueError,
        match=_msg("from_torch: num_layers must be a positive integer", f"got {num_layers!r}"),
    ):
        interop.from_torch(torch_state("LSTM"), mode="LSTM", num_layers=num_layers)


@pytest.mark.parametrize(("held", "given", "has"), [(False, True, "has no"), (True, False, "has")])
def test_from_torch_bidirectional_disagrees(held, given, has):
    with pytest.raises(
        ValueError, match=_msg(f"from_torch: bidirectional={given}", f"{has} _reverse")
    ):
        interop.from_torch(torch_state("GRU", bidirectional=held), mode="GRU", bidirectional=given)


def test_from_torch_projection_only_for_lstm_and_of_the_right_shape():
    state = {**torch_state("GRU"), "weight_hr_l0": np.zeros((2, H), np.float32)}
    with pytest.raises(ValueError, match=_msg("weight_hr (proj_size) exists only for LSTMs")):
        interop.from_torch(state, mode="GRU")
    state = {**torch_state("LSTM"), "weight_hr_l0": np.zeros((2, H + 1), np.float32)}
    with pytest.raises(ValueError, match=_msg("from_torch: mode LSTM needs weight_hh_l0")):
        interop.from_torch(state, mode="LSTM")


def test_from_torch_bidirectional_not_bool():
    with pytest.raises(
        TypeError, match=_msg("from_torch: bidirectional must be True or False", "got 'yes'")
    ):
        interop.from_torch(torch_state("GRU"), mode="GRU", bidirectional="yes")


@pytest.mark.parametrize("key", ["foo", "weight_xy_l0", "module.weight_ih_l0", "weight_ih_l0_rev"])
def test_from_torch_unexpected_key(key):
    state = {**torch_state("LSTM"), key: np.zeros((4, 4), np.float32)}
    with pytest.raises(
        ValueError, match=_msg("from_torch: source has an unexpected state_dict key", repr(key))
    ):
        interop.from_torch(state, mode="LSTM")


def test_from_torch_missing_or_misnumbered_tensors():
    state = torch_state("LSTM")
    del state["weight_hh_l0"]
    with pytest.raises(
        ValueError, match=_msg("from_torch: source must hold weight_hh_l0", "got none")
    ):
        interop.from_torch(state, mode="LSTM")
    state = torch_state("LSTM", 2)
    del state["weight_ih_l1"]
    with pytest.raises(ValueError, match=_msg("from_torch: source has no weight_ih_l1")):
        interop.from_torch(state, mode="LSTM")
    state = {k.replace("_l1", "_l2"): v for k, v in torch_state("LSTM", 2).items()}
    with pytest.raises(
        ValueError, match=_msg("from_torch: source's state_dict layers", "got [0, 2]")
    ):
        interop.from_torch(state, mode="LSTM")
    with pytest.raises(ValueError, match=_msg("from_torch: source is an empty state_dict")):
        interop.from_torch({}, mode="LSTM")


@pytest.mark.parametrize(
    ("source", "got"), [(3, "int"), ([np.zeros(3)], "list"), (None, "NoneType")]
)
def test_from_torch_source_type(source, got):
    with pytest.raises(TypeError, match=_msg("from_torch: source must be", f"got {got}")):
        interop.from_torch(source, mode="LSTM")


def test_from_torch_dtype_and_options():
    state = torch_state("LSTM", 2)
    with pytest.raises(
        TypeError, match=_msg("from_torch: dtype must be a floating dtype", "got int32")
    ):
        interop.from_torch(state, mode="LSTM", dtype=jnp.int32)
    with pytest.raises(
        TypeError, match=_msg("from_torch: batch_first must be True or False", "got 1")
    ):
        interop.from_torch(state, mode="LSTM", batch_first=1)
    with pytest.raises(
        ValueError, match=_msg("dropout must be a probability in [0, 1)", "got 1.5")
    ):
        interop.from_torch(state, mode="LSTM", dropout=1.5)


@pytest.fixture(scope="module")
def torch_params():
    return {
        "LSTM": interop.from_torch(torch_state("LSTM"), mode="LSTM")[1],
        "GRU": interop.from_torch(torch_state("GRU"), mode="GRU")[1],
        "LSTM2bi": interop.from_torch(torch_state("LSTM", 2, True), mode="LSTM")[1],
    }


@pytest.mark.parametrize(
    ("which", "h0_shape", "expected"),
    [
        ("LSTM", (2, B, H), f"(1, batch..., {H})"),  # too many layers*directions
        ("LSTM", (1, B, H + 1), f"(1, batch..., {H})"),  # wrong hidden size
        ("GRU", (H,), f"(1, batch..., {H})"),  # no layers axis
        ("LSTM2bi", (2, B, H), f"(4, batch..., {H})"),  # 2 layers x 2 directions
    ],
)
def test_carry_from_torch_h0_wrong_shape(torch_params, which, h0_shape, expected):
    h0 = np.zeros(h0_shape, np.float32)
    with pytest.raises(
        ValueError,
        match=_msg(f"carry_from_torch: h0 must have shape {expected}", f"got {h0_shape}"),
    ):
        interop.carry_from_torch(torch_params[which], h0)


def test_carry_from_torch_c0_for_a_gru(torch_params):
    h0 = np.zeros((1, B, H), np.float32)
    with pytest.raises(
        ValueError,
        match=_msg("carry_from_torch: c0 is only for LSTMs", f"got an array of shape {h0.shape}"),
    ):
        interop.carry_from_torch(torch_params["GRU"], h0, h0)


def test_carry_from_torch_c0_wrong_shape(torch_params):
    h0, c0 = np.zeros((1, B, H), np.float32), np.zeros((1, B + 1, H), np.float32)
    with pytest.raises(
        ValueError,
        match=_msg(f"carry_from_torch: c0 must have shape {(1, B, H)}", f"got {c0.shape}"),
    ):
        interop.carry_from_torch(torch_params["LSTM"], h0, c0)


def test_carry_from_torch_params():
    h0 = np.zeros((1, B, H), np.float32)
    with pytest.raises(
        ValueError, match=_msg("carry_from_torch: params must hold at least one layer", "got none")
    ):
        interop.carry_from_torch((), h0)
    with pytest.raises(
        ValueError,
        match=_msg("carry_from_torch: params must be the params of a built-in cell", "got str"),
    ):
        interop.carry_from_torch(("lstm",), h0)


@pytest.mark.parametrize(
    ("carry", "got"),
    [
        (jnp.zeros((B, H)), "ArrayImpl"),
        (seqjax.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H))), "LSTMCarry"),
        ((), "tuple"),
    ],
)
def test_carry_to_torch_not_a_layer_carry(carry, got):
    with pytest.raises(TypeError, match=_msg("carry_to_torch: carry must be", f"got {got}")):
        interop.carry_to_torch(carry)


def test_to_torch_layer_not_a_layer(lstm_cell, lstm_params):
    with pytest.raises(TypeError, match=_msg("to_torch: layer must be a seqjax Layer", "got Cell")):
        interop.to_torch(lstm_cell, lstm_params)


# ----------------------------------------------------------------------- before any tracing work


def _spy(cell):
    """``cell`` with ``project`` and ``recur`` that count their calls (traces included)."""
    calls = {"project": 0, "recur": 0}

    def project(params, xs):
        calls["project"] += 1
        return cell.project(params, xs)

    def recur(params, carry, x):
        calls["recur"] += 1
        return cell.recur(params, carry, x)

    return cell._replace(project=project, recur=recur), calls


@pytest.mark.parametrize(
    "bad",
    [
        {"xs": jnp.ones((B, T, D + 1))},
        {"xs": jnp.ones((B, 0, D))},
        {"lengths": jnp.array([0, 2])},
        {"lengths": jnp.array([1, 2, 3])},
        {"carry": jnp.zeros((B, H))},
        {"carry": seqjax.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B + 1, H)))},
        {"reverse": "yes"},
        {"unroll": 0},
    ],
    ids=[
        "features",
        "empty",
        "length0",
        "lengths_shape",
        "carry_tree",
        "carry_shape",
        "reverse",
        "unroll",
    ],
)
def test_unroll_never_calls_the_cell_on_bad_input(lstm_cell, lstm_params, xs, bad):
    cell, calls = _spy(lstm_cell)
    kwargs = {"xs": xs, **bad}
    with pytest.raises((ValueError, TypeError), match="unroll: "):
        seqjax.unroll(cell, lstm_params, **kwargs)
    assert calls == {"project": 0, "recur": 0}


def test_bad_features_under_jit_is_our_error(lstm_cell, lstm_params):
    run = jax.jit(lambda xs: seqjax.unroll(lstm_cell, lstm_params, xs))
    with pytest.raises(ValueError, match=_msg("unroll: xs has 7 features", f"expect {D}")):
        run(jnp.ones((B, T, 7)))


def test_bad_carry_under_jit_is_our_error(lstm_cell, lstm_params, xs):
    run = jax.jit(lambda xs, carry: seqjax.unroll(lstm_cell, lstm_params, xs, carry=carry))
    carry = seqjax.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H + 1)))
    with pytest.raises(
        ValueError, match=_msg("unroll: carry has a leaf of shape", str((B, H + 1)))
    ):
        run(xs, carry)


def test_float_lengths_under_jit_is_our_error(lstm_cell, lstm_params, xs):
    run = jax.jit(lambda xs, lengths: seqjax.unroll(lstm_cell, lstm_params, xs, lengths=lengths))
    with pytest.raises(TypeError, match=_msg("unroll: lengths must be an integer", "float32")):
        run(xs, jnp.array([5.0, 3.0]))


def test_traced_lengths_do_not_raise(lstm_cell, lstm_params, xs):
    run = jax.jit(lambda xs, lengths: seqjax.unroll(lstm_cell, lstm_params, xs, lengths=lengths))
    lengths = jnp.array([T, 2], jnp.int32)
    (h, c), ys = run(xs, lengths)
    assert ys.shape == (B, T, H) and h.shape == c.shape == (B, H)
    np.testing.assert_array_equal(np.asarray(ys[1, 2:]), 0.0)  # outputs past a length are zero
    np.testing.assert_allclose(np.asarray(h[1]), np.asarray(ys[1, 1]), rtol=1e-6)


def test_traced_lengths_in_a_jitted_stack_do_not_raise(two_layer_stack, xs):
    layer, params = two_layer_stack
    run = jax.jit(lambda params, xs, lengths: layer.apply(params, xs, lengths=lengths))
    _, ys = run(params, xs, jnp.array([1, T], jnp.int32))
    assert ys.shape == (B, T, H)


def test_lstm_proj_size_must_be_smaller_than_hidden():
    with pytest.raises(ValueError, match=_msg("lstm: proj_size must be smaller", "got 4")):
        seqjax.lstm(4, proj_size=4)


@pytest.mark.parametrize("bad", ["x", 2.5, (2, -1), (True,)])
def test_initial_carry_batch_shape(lstm_cell, lstm_params, bad):
    assert lstm_cell.initial_carry(lstm_params, 3).h.shape == (3, H)  # one int: one batch axis
    with pytest.raises(TypeError, match=_msg("initial_carry: batch_shape must be a tuple")):
        lstm_cell.initial_carry(lstm_params, bad)
