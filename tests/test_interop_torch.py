"""PyTorch interop against live torch modules; skipped when torch is not installed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import interop

torch = pytest.importorskip("torch", reason="torch is optional; install seqjax[torch]")


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True),
        lambda: torch.nn.GRU(5, 7, num_layers=3, batch_first=True),
        lambda: torch.nn.RNN(5, 7, nonlinearity="relu", bidirectional=True, batch_first=True),
        lambda: torch.nn.LSTM(5, 7, bias=False, batch_first=True),
    ],
    ids=["lstm_2layer_bi_time_major", "gru_3layer", "rnn_relu_bi", "lstm_no_bias"],
)
def test_live_module_with_packed_sequences(make):
    torch.manual_seed(0)
    module = make().double()
    batch, steps = 4, 6
    lengths = np.array([6, 2, 5, 3])
    x = torch.randn(batch, steps, 5, dtype=torch.float64)
    x_in = x if module.batch_first else x.transpose(0, 1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_in, torch.tensor(lengths), batch_first=module.batch_first, enforce_sorted=False
    )
    dirs = 2 if module.bidirectional else 1
    h0 = torch.randn(module.num_layers * dirs, batch, 7, dtype=torch.float64)
    is_lstm = isinstance(module, torch.nn.LSTM)
    state = (h0, torch.randn_like(h0)) if is_lstm else h0
    out, final = module(packed, state)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(
        out, batch_first=module.batch_first, total_length=steps
    )
    with jax.enable_x64(True):
        layer, params = interop.from_torch(module)
        carry = interop.carry_from_torch(params, h0.numpy(), state[1].numpy() if is_lstm else None)
        got_final, got_y = layer.apply(
            params, jnp.asarray(x_in.numpy()), lengths=jnp.asarray(lengths), carry=carry
        )
        h_n, c_n = interop.carry_to_torch(got_final)
        np.testing.assert_allclose(got_y, y.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(h_n, (final[0] if is_lstm else final).detach().numpy(),
                                   atol=1e-12)  # fmt: skip
        if is_lstm:
            np.testing.assert_allclose(c_n, final[1].detach().numpy(), atol=1e-12)


def test_to_torch_loads_into_a_module():
    torch.manual_seed(0)
    cell_layer = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(seqjax.gru(6)), seqjax.rnn(seqjax.gru(6)))
    )
    params = cell_layer.init(jax.random.key(0), 4)
    module = torch.nn.GRU(4, 6, bidirectional=True, batch_first=True)
    module.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in interop.to_torch(cell_layer, params).items()}
    )
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    expected, _ = module(torch.from_numpy(x))
    _, got = cell_layer.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-5)
