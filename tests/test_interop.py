"""PyTorch interop beyond the golden files: live modules (when torch is installed) and the
round trip of state dicts (always)."""

from __future__ import annotations

import jax
import numpy as np
from conftest import load_golden

from seqjax import interop


def test_state_dict_round_trip_is_exact():
    _, data = load_golden("torch_gru_2layer_bidirectional_lengths.npz")
    state = {k.removeprefix("param/"): v for k, v in data.items() if k.startswith("param/")}
    layer, params = interop.from_torch(state, mode="GRU", dtype=np.float32)
    back = interop.to_torch(layer, params)
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value.astype(np.float32))


def test_mapping_infers_layers_and_direction():
    _, data = load_golden("torch_rnn_tanh_3layer_lengths.npz")
    state = {k.removeprefix("param/"): v for k, v in data.items() if k.startswith("param/")}
    _, params = interop.from_torch(state, mode="RNN_TANH", dtype=np.float32)
    assert isinstance(params, tuple) and len(params) == 3
    assert params[0]["w_ih"].shape == (3, 5)  # (input, H): PyTorch's transposed


def test_carry_round_trip():
    _, data = load_golden("torch_lstm_2layer_bidirectional_lengths.npz")
    state = {k.removeprefix("param/"): v for k, v in data.items() if k.startswith("param/")}
    layer, params = interop.from_torch(state, mode="LSTM", dtype=np.float32)
    carry = interop.carry_from_torch(params, data["h0"], data["c0"])
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a.shape, b.shape),
        carry,
        layer.initial_carry(params, (4,)),
    )
    h, c = interop.carry_to_torch(carry)
    np.testing.assert_array_equal(h, data["h0"].astype(np.float32))
    np.testing.assert_array_equal(c, data["c0"].astype(np.float32))
