"""What the gated cells (Elman RNN, LSTM, GRU) share: the parameter layout and its initialisation.

Layout, PyTorch's transposed for ``x @ W``: ``w_ih (input, gates*H)``, ``w_hh (H, gates*H)``,
``b_ih (gates*H,)``, ``b_hh (gates*H,)``, gates stacked in PyTorch's order. Both biases are kept
(as PyTorch and cuDNN do) because the GRU needs ``b_hn`` inside the reset product, and so that
import and export are transposes only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax import initializers as inits
from seqjax.cell import Params, default_float_dtype

SCHEMES = ("default", "pytorch")


class InitConfig(NamedTuple):
    input_init: inits.Initializer
    recurrent_init: inits.Initializer
    bias_init: inits.Initializer


def resolve_init(options: dict[str, Any], fn: str, *, recurrent: bool = True) -> InitConfig:
    """The initializers that ``options`` (:class:`seqjax.initializers.InitOptions`) ask for,
    unset ones filled from the named scheme: ``"default"`` (Lecun-normal input weights,
    orthogonal recurrent weights, zero biases) or ``"pytorch"`` (U(+-1/sqrt(H)) everywhere).
    ``recurrent=False``: a cell with no recurrent weights, which refuses ``recurrent_init``."""
    known = tuple(
        n for n in inits.InitOptions.__annotations__ if recurrent or n != "recurrent_init"
    )
    for name in options:
        if name not in known:
            raise TypeError(f"{fn}: unknown keyword argument {name!r}; the initialisation "
                            f"keywords are {', '.join(known)}")  # fmt: skip
    scheme = options.get("init", "default")
    input_init, recurrent_init, bias_init = (
        options.get(name) for name in ("input_init", "recurrent_init", "bias_init")
    )
    _checks.check_choice(scheme, SCHEMES, "init scheme", fn)
    if scheme == "pytorch":
        base = InitConfig(inits.pytorch_uniform(), inits.pytorch_uniform(), inits.pytorch_uniform())
    else:
        base = InitConfig(inits.lecun_normal(), inits.orthogonal(), inits.zeros)
    return InitConfig(
        input_init or base.input_init,
        recurrent_init or base.recurrent_init,
        bias_init or base.bias_init,
    )


def float_dtype(dtype: Any, fn: str) -> Any:
    """``dtype`` as a floating dtype (None: float32, or float64 in x64 mode), or a clear error."""
    try:
        dtype = default_float_dtype() if dtype is None else jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn}: dtype must be a floating dtype; got {dtype!r}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: dtype must be a floating dtype; got {dtype}")
    return dtype


def init_params(
    key: jax.Array,
    input_size: int,
    hidden_size: int,
    num_gates: int,
    config: InitConfig,
    dtype: Any,
    fn: str,
    *,
    bias_ih_overrides: dict[int, inits.Initializer] | None = None,
    bias_hh_overrides: dict[int, inits.Initializer] | None = None,
) -> Params:
    """Parameters in the shared layout; ``bias_*_overrides`` maps a gate index to its own
    initializer (the LSTM forget-gate bias)."""
    input_size = _checks.check_positive_int(input_size, "input_size", fn)
    dtype = float_dtype(dtype, fn)
    k_ih, k_hh, k_bih, k_bhh = jax.random.split(key, 4)

    def biases(k: jax.Array, overrides: dict[int, inits.Initializer] | None) -> jax.Array:
        per_gate = [config.bias_init] * num_gates
        for gate, init in (overrides or {}).items():
            per_gate[gate] = init
        return inits.bias_blocks(k, per_gate, hidden_size, dtype)

    return {
        "w_ih": inits.gate_blocks(
            k_ih, config.input_init, input_size, hidden_size, num_gates, dtype
        ),
        "w_hh": inits.gate_blocks(
            k_hh, config.recurrent_init, hidden_size, hidden_size, num_gates, dtype
        ),
        "b_ih": biases(k_bih, bias_ih_overrides),
        "b_hh": biases(k_bhh, bias_hh_overrides),
    }


def input_size(params: Params) -> int:
    return params["w_ih"].shape[0]


def project(params: Params, xs: jax.Array) -> jax.Array:
    """``xs @ W_ih + b_ih`` on the last axis: every gate's input contribution in one matmul
    (in ``W_ih``'s dtype, summed in float32 under the mixed policy: :mod:`seqjax.precision`)."""
    return precision.matmul(xs, params["w_ih"]) + params["b_ih"]


def hidden_projection(params: Params, h: jax.Array) -> jax.Array:
    """``h @ W_hh + b_hh``: every gate's recurrent contribution in one matmul."""
    return precision.matmul(h, params["w_hh"]) + params["b_hh"]


def zeros_carry(size: int):
    """An ``initial_carry`` for cells whose state is one vector of ``size``, in the params'
    state dtype (:func:`seqjax.precision.state_dtype`: float32 under the mixed policy)."""

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        return jnp.zeros((*batch_shape, size), precision.state_dtype(params))

    return initial_carry
