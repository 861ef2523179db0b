"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that see the input
only, so the state evolves linearly, ``h_t = a_t * h_(t-1) + b_t``, and a whole sequence can be
computed with a parallel scan (``seqjax.unroll(..., parallel=True)``).

minGRU:  ``z = sigmoid(x W_z + b_z)``, ``h~ = x W_h + b_h``, ``h_t = (1 - z) h_(t-1) + z h~``.
minLSTM: ``f = sigmoid(x W_f + b_f)``, ``i = sigmoid(x W_i + b_i)``, ``h~ = x W_h + b_h``,
``h_t = f/(f+i) h_(t-1) + i/(f+i) h~`` (the paper's length-independent normalisation).

With ``log_space=True`` the candidate goes through the paper's positive ``g(x) = x + 1/2`` for
``x >= 0``, ``sigmoid(x)`` below, so ``b_t > 0`` and the parallel scan can run on ``log a`` and
``log b`` (every gate's log is a softplus, exact far into saturation). The sequential step
computes the same recurrence in ordinary arithmetic.
"""

from __future__ import annotations

import functools
from typing import Unpack

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax import initializers as inits
from seqjax.cell import Cell, LinearRecurrence, Params, linear_recur
from seqjax.cells import _common


def _positive(x: jax.Array) -> jax.Array:
    """The paper's ``g``: continuous, increasing and > 0, so its log exists."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def _log_positive(x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0.0) + 0.5), -jax.nn.softplus(-x))


def _init(name: str, num_gates: int, hidden_size: int, config: _common.InitConfig):
    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", name)
        dtype = _common.float_dtype(dtype, name)
        k_w, k_b = jax.random.split(key)
        w = inits.gate_blocks(k_w, config.input_init, input_size, hidden_size, num_gates, dtype)
        b = inits.bias_blocks(k_b, [config.bias_init] * num_gates, hidden_size, dtype)
        return {"w_ih": w, "b_ih": b}

    return init_fn


def _cell(name, hidden_size, num_gates, config, linear) -> Cell:
    return Cell(
        init=_init(name, num_gates, hidden_size, config),
        initial_carry=_common.zeros_carry(hidden_size),
        project=_common.project,
        recur=linear_recur(linear),
        output_size=hidden_size,
        name=name,
        input_size=_common.input_size,
        linear=linear,
    )


def _state_is_output(params: Params, h: jax.Array, projected_x: jax.Array) -> jax.Array:
    del params, projected_x
    return h


def min_gru(
    hidden_size: int,
    *,
    log_space: bool = False,
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """A minGRU cell: ``h_t = (1 - z_t) h_(t-1) + z_t h~_t`` with ``z_t``, ``h~_t`` from ``x_t``.

    Args:
      hidden_size: H, the size of the state and of the output.
      log_space: use the positive candidate ``g(h~)`` and run the parallel scan in log space.
      **init: ``init="default"`` (Lecun-normal weights, zero biases) or ``"pytorch"``,
        ``input_init``, ``bias_init``: see :class:`seqjax.initializers.InitOptions` (there
        are no recurrent weights).

    Params: ``w_ih (D, 2H)`` (blocks z, h~), ``b_ih (2H,)``. Carry: ``h (batch..., H)``.
    """
    fn = "min_gru"
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    log_space = _checks.check_bool(log_space, "log_space", fn)
    config = _common.resolve_init(init, fn, recurrent=False)
    linear = MIN_GRU_LOG if log_space else MIN_GRU
    return _cell(fn, hidden_size, 2, config, linear)


def min_lstm(
    hidden_size: int,
    *,
    log_space: bool = False,
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """A minLSTM cell: ``h_t = f'_t h_(t-1) + i'_t h~_t`` with ``f' = f/(f+i)``, ``i' = i/(f+i)``.

    Args: as :func:`min_gru`.

    Params: ``w_ih (D, 3H)`` (blocks f, i, h~), ``b_ih (3H,)``. Carry: ``h (batch..., H)``.
    """
    fn = "min_lstm"
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    log_space = _checks.check_bool(log_space, "log_space", fn)
    config = _common.resolve_init(init, fn, recurrent=False)
    linear = MIN_LSTM_LOG if log_space else MIN_LSTM
    return _cell(fn, hidden_size, 3, config, linear)


def min_gru_coefficients(params: Params, px: jax.Array, *, log_space: bool = False):
    """``(a, b) = (1 - z, z h~)`` of ``h_t = a h_(t-1) + b``, from ``px = [x W_z + b_z,
    x W_h + b_h]``; with ``log_space`` the candidate is ``g(h~)``."""
    del params
    k, h_tilde = jnp.split(px, 2, axis=-1)
    a = jax.nn.sigmoid(-k)
    return a, jax.nn.sigmoid(k) * (_positive(h_tilde) if log_space else h_tilde)


def min_gru_log_coefficients(params: Params, px: jax.Array):
    """``(log a, log b)`` of the log-space minGRU, each a softplus: exact in saturation."""
    del params
    k, h_tilde = jnp.split(px, 2, axis=-1)
    return -jax.nn.softplus(k), -jax.nn.softplus(-k) + _log_positive(h_tilde)


def _log_odds(k_f: jax.Array, k_i: jax.Array) -> jax.Array:
    """``log(i/f)``, so that ``f' = sigmoid(-d)`` and ``i' = sigmoid(d)``."""
    return jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)


def min_lstm_coefficients(params: Params, px: jax.Array, *, log_space: bool = False):
    """``(a, b) = (f', i' h~)`` with ``f' = f/(f+i)``, ``i' = i/(f+i)``, from ``px = [x W_f +
    b_f, x W_i + b_i, x W_h + b_h]``; with ``log_space`` the candidate is ``g(h~)``."""
    del params
    k_f, k_i, h_tilde = jnp.split(px, 3, axis=-1)
    d = _log_odds(k_f, k_i)
    a = jax.nn.sigmoid(-d)
    return a, jax.nn.sigmoid(d) * (_positive(h_tilde) if log_space else h_tilde)


def min_lstm_log_coefficients(params: Params, px: jax.Array):
    """``(log a, log b)`` of the log-space minLSTM."""
    del params
    k_f, k_i, h_tilde = jnp.split(px, 3, axis=-1)
    d = _log_odds(k_f, k_i)
    return -jax.nn.softplus(d), -jax.nn.softplus(-d) + _log_positive(h_tilde)


MIN_GRU = LinearRecurrence(min_gru_coefficients, _state_is_output)
MIN_GRU_LOG = LinearRecurrence(
    functools.partial(min_gru_coefficients, log_space=True), _state_is_output,
    min_gru_log_coefficients,
)  # fmt: skip
MIN_LSTM = LinearRecurrence(min_lstm_coefficients, _state_is_output)
MIN_LSTM_LOG = LinearRecurrence(
    functools.partial(min_lstm_coefficients, log_space=True), _state_is_output,
    min_lstm_log_coefficients,
)  # fmt: skip
