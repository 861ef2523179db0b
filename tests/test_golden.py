"""Outputs, final states and gradients against PyTorch and Keras reference vectors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_DIR, load_golden

import seqjax
from seqjax import interop

TORCH_CASES = sorted(p.name for p in GOLDEN_DIR.glob("torch_*.npz"))
MODE = {("RNN", "tanh"): "RNN_TANH", ("RNN", "relu"): "RNN_RELU"}


def _torch_mode(config: dict) -> str:
    return MODE.get((config["mode"], config["nonlinearity"]), config["mode"])


def _run(name: str, dtype, hoist: bool | None = None):
    """seqjax's outputs and gradients for one golden case, in ``dtype``."""
    config, data = load_golden(name)
    state = {k.removeprefix("param/"): v for k, v in data.items() if k.startswith("param/")}
    layer, params = interop.from_torch(
        state,
        mode=_torch_mode(config),
        num_layers=config["num_layers"],
        bidirectional=config["bidirectional"],
        batch_first=True,
        dtype=dtype,
    )
    if hoist is not None:  # rebuild the same stack with an explicit projection placement
        layer = _with_hoist(config, hoist)
    lengths = data.get("lengths")
    is_lstm = config["mode"] == "LSTM"
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731

    def loss(params, x, h0, c0):
        carry = interop.carry_from_torch(params, h0, c0 if is_lstm else None)
        final, y = layer.apply(params, x, lengths=lengths, carry=carry)
        h_n, c_n = interop.carry_to_torch(final)
        value = jnp.sum(y * cast(data["cotangent_y"])) + jnp.sum(h_n * cast(data["cotangent_h_n"]))
        if is_lstm:
            value = value + jnp.sum(c_n * cast(data["cotangent_c_n"]))
        return value, (y, h_n, c_n)

    c0 = cast(data["c0"]) if is_lstm else cast(np.zeros_like(data["h0"]))
    grads, (y, h_n, c_n) = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        params, cast(data["x"]), cast(data["h0"]), c0
    )
    out = {"y": y, "h_n": h_n, "grad/x": grads[1], "grad/h0": grads[2]}
    if is_lstm:
        out.update({"c_n": c_n, "grad/c0": grads[3]})
    for key, value in interop.to_torch(layer, grads[0]).items():
        out[f"grad/{key}"] = value
    return data, out


def _with_hoist(config: dict, hoist: bool):
    def make_cell():
        H = config["hidden_size"]
        return {
            "LSTM": lambda: seqjax.lstm(H, proj_size=config.get("proj_size", 0)),
            "GRU": lambda: seqjax.gru(H),
            "RNN": lambda: seqjax.simple_rnn(H, activation=config["nonlinearity"]),
        }[config["mode"]]()

    def level():
        if config["bidirectional"]:
            return seqjax.bidirectional(
                seqjax.rnn(make_cell(), hoist_projection=hoist),
                seqjax.rnn(make_cell(), hoist_projection=hoist),
            )
        return seqjax.rnn(make_cell(), hoist_projection=hoist)

    return seqjax.stack(*[level() for _ in range(config["num_layers"])])


def max_abs_diff(data: dict, out: dict) -> dict[str, float]:
    return {k: float(np.max(np.abs(np.asarray(v, np.float64) - data[k]))) for k, v in out.items()}


@pytest.mark.parametrize("hoist", [False, True], ids=["in_step", "hoisted"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_matches_pytorch_float64(x64, name, hoist):
    data, out = _run(name, jnp.float64, hoist)
    expected_keys = {k for k in data if k in ("y", "h_n", "c_n") or k.startswith("grad/")}
    assert set(out) == expected_keys  # every output and every gradient is compared
    for key, diff in max_abs_diff(data, out).items():
        assert diff < 1e-10, f"{name}: {key} differs from PyTorch by {diff:.2e}"


@pytest.mark.parametrize("name", TORCH_CASES)
def test_matches_pytorch_float32(name):
    data, out = _run(name, jnp.float32)
    for key, value in out.items():
        assert value.dtype == jnp.float32
        scale = max(1.0, float(np.max(np.abs(data[key]))))
        diff = float(np.max(np.abs(np.asarray(value, np.float64) - data[key])))
        assert diff < 1e-5 * scale, f"{name}: {key} differs from PyTorch by {diff:.2e}"


def test_padding_past_lengths_is_zero_in_pytorch_and_here(x64):
    data, out = _run("torch_lstm_2layer_bidirectional_lengths.npz", jnp.float64)
    lengths = data["lengths"]
    for b, length in enumerate(lengths):
        assert np.all(np.asarray(out["y"])[b, length:] == 0.0)
        assert np.all(np.asarray(out["grad/x"])[b, length:] == 0.0)


def test_gru_reset_before_matches_keras():
    config, data = load_golden("keras_gru_reset_before.npz")
    H = config["hidden_size"]
    z, r, h = (slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H))

    def to_rzn(a):  # Keras stacks z, r, h; seqjax stacks r, z, n
        return np.concatenate([a[..., r], a[..., z], a[..., h]], axis=-1)

    params = {
        "w_ih": jnp.asarray(to_rzn(data["param/kernel"])),
        "w_hh": jnp.asarray(to_rzn(data["param/recurrent_kernel"])),
        "b_ih": jnp.asarray(to_rzn(data["param/bias"])),
        "b_hh": jnp.zeros(3 * H, jnp.float32),
    }
    cell = seqjax.gru(H, reset_after=False)
    h_n, y = seqjax.unroll(cell, params, data["x"], carry=jnp.asarray(data["h0"]))
    np.testing.assert_allclose(y, data["y"], atol=1e-5)
    np.testing.assert_allclose(h_n, data["h_n"], atol=1e-5)
    # The default (reset after) is a different function: the reference must tell them apart.
    _, y_after = seqjax.unroll(seqjax.gru(H), params, data["x"], carry=jnp.asarray(data["h0"]))
    assert np.max(np.abs(np.asarray(y_after) - data["y"])) > 1e-3


def report() -> None:
    """Prints the largest difference to PyTorch per golden case, over outputs, final states and
    every gradient: ``python tests/test_golden.py``."""
    print(f"{'case':<45}{'float64':>12}{'float32':>12}")
    for name in TORCH_CASES:
        with jax.enable_x64(True):
            worst64 = max(max_abs_diff(*_run(name, jnp.float64)).values())
        worst32 = max(max_abs_diff(*_run(name, jnp.float32)).values())
        print(f"{name:<45}{worst64:>12.2e}{worst32:>12.2e}")


if __name__ == "__main__":
    report()
