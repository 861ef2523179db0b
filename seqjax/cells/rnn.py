"""The Elman RNN: ``h_t = act(x_t W_ih + b_ih + h_(t-1) W_hh + b_hh)``, act tanh or ReLU."""

from __future__ import annotations

from typing import Unpack

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax import initializers as inits
from seqjax.cell import Cell, CombineVJP, Params, RecurSplit, split_recur
from seqjax.cells import _common


def tanh_step(h: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One Elman step, ``h = tanh(x W_ih + b_ih + h W_hh + b_hh)``: ``(h, h)``."""
    with jax.named_scope("seqjax.rnn_tanh"):
        h = jnp.tanh(projected_x + hh)
        return h, h


def relu_step(h: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One Elman step with ReLU, ``h = max(0, x W_ih + b_ih + h W_hh + b_hh)``: ``(h, h)``."""
    with jax.named_scope("seqjax.rnn_relu"):
        h = jax.nn.relu(projected_x + hh)
        return h, h


def tanh_step_backward(h: jax.Array, new_h: jax.Array, d_out):
    """The derivative of :func:`tanh_step` from its output alone: ``tanh' = 1 - h^2``."""
    d_new, dy = d_out
    d_z = (d_new + dy) * (1.0 - new_h * new_h)
    return jnp.zeros_like(h), d_z, d_z


def relu_step_backward(h: jax.Array, new_h: jax.Array, d_out):
    """The derivative of :func:`relu_step` from its output alone: ``relu' = [h > 0]``."""
    d_new, dy = d_out
    d_z = (d_new + dy) * (new_h > 0).astype(new_h.dtype)
    return jnp.zeros_like(h), d_z, d_z


ACTIVATIONS = {"tanh": (tanh_step, tanh_step_backward), "relu": (relu_step, relu_step_backward)}


def _keeping_output(step):
    """``step`` as a ``CombineVJP.forward`` whose residual is the new state itself."""

    def step_with_residuals(h: jax.Array, projected_x: jax.Array, hh: jax.Array):
        new_h, y = step(h, projected_x, hh)
        return (new_h, y), new_h

    return step_with_residuals


def _activation_split(hidden_projection, activation: str) -> RecurSplit:
    """The split ``h = act(px + hh)`` of the Elman RNN and the IndRNN."""
    step, backward = ACTIVATIONS[activation]
    vjp = CombineVJP(_keeping_output(step), backward)
    return RecurSplit(hidden_projection, step, additive=True, combine_vjp=vjp)


RNN_SPLITS = {name: _activation_split(_common.hidden_projection, name) for name in ACTIVATIONS}
"""The Elman RNN's steps, by activation, as ``unroll``'s custom VJP and the kernels take them."""


def simple_rnn(
    hidden_size: int,
    *,
    activation: str = "tanh",
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """An Elman RNN cell (PyTorch ``nn.RNN``).

    Args:
      hidden_size: H, the size of the state and of the output.
      activation: ``"tanh"`` (default) or ``"relu"``.
      **init: ``init="default"`` or ``"pytorch"``, ``input_init``, ``recurrent_init``,
        ``bias_init``: see :class:`seqjax.initializers.InitOptions`.

    Params: ``w_ih (D, H)``, ``w_hh (H, H)``, ``b_ih (H,)``, ``b_hh (H,)``.
    Carry: ``h (batch..., H)``.
    """
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", "simple_rnn")
    _checks.check_choice(activation, tuple(ACTIVATIONS), "activation", "simple_rnn")
    config = _common.resolve_init(init, "simple_rnn")

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        return _common.init_params(key, input_size, hidden_size, 1, config, dtype, "simple_rnn")

    split = RNN_SPLITS[activation]

    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(hidden_size),
        project=_common.project,
        recur=split_recur(split),
        output_size=hidden_size,
        name=f"simple_rnn_{activation}",
        input_size=_common.input_size,
        recur_split=split,
    )


def irnn(hidden_size: int, *, scale: float = 1.0, input_std: float = 1e-3) -> Cell:
    """The IRNN of Le, Jaitly and Hinton (2015): a ReLU RNN whose recurrent matrix starts as
    ``scale`` times the identity and whose biases start at zero, with small Gaussian input
    weights (std ``input_std``), so that at initialisation the state is carried unchanged."""
    return simple_rnn(
        hidden_size,
        activation="relu",
        input_init=inits.normal(input_std),
        recurrent_init=inits.identity(scale),
        bias_init=inits.zeros,
    )


def indrnn(
    hidden_size: int,
    *,
    activation: str = "relu",
    recurrent_max: float | None = None,
    recurrent_range: tuple[float, float] = (0.0, 1.0),
    input_init: inits.Initializer | None = None,
) -> Cell:
    """The independently recurrent network of Li et al. (2018):
    ``h_t = act(x_t W_ih + b_ih + u * h_(t-1))``, with a recurrent *vector* ``u``: each unit
    feeds back only to itself, so its gradient through time is a product of scalars
    ``u_j act'(.)`` that can be kept near 1 by bounding ``|u_j|``.

    Args:
      hidden_size: H.
      activation: ``"relu"`` (default, as in the paper) or ``"tanh"``.
      recurrent_max: if given, ``u`` is clipped to ``[-recurrent_max, recurrent_max]`` in the
        step (the paper's constraint, for example ``2 ** (1 / T)`` for a length-T memory).
      recurrent_range: ``u`` starts uniform in this range.
      input_init: initializer of ``w_ih``; default Lecun normal.

    Params: ``w_ih (D, H)``, ``b_ih (H,)``, ``u (H,)``. Carry: ``h (batch..., H)``.
    """
    fn = "indrnn"
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    _checks.check_choice(activation, tuple(ACTIVATIONS), "activation", fn)
    if recurrent_max is not None and not recurrent_max > 0:
        raise ValueError(f"{fn}: recurrent_max must be > 0 or None; got {recurrent_max!r}")
    low, high = recurrent_range
    if not low <= high:
        raise ValueError(
            f"{fn}: recurrent_range must be (low, high) with low <= high; got {recurrent_range}"
        )
    input_init = input_init or inits.lecun_normal()

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        dtype = _common.float_dtype(dtype, fn)
        k_w, k_u = jax.random.split(key)
        return {
            "w_ih": input_init(k_w, (input_size, hidden_size), dtype),
            "b_ih": jnp.zeros((hidden_size,), dtype),
            "u": jax.random.uniform(k_u, (hidden_size,), dtype, low, high),
        }

    def hidden_projection(params: Params, h: jax.Array) -> jax.Array:
        u = params["u"]
        if recurrent_max is not None:
            u = jnp.clip(u, -recurrent_max, recurrent_max)
        return u * h

    split = _activation_split(hidden_projection, activation)

    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(hidden_size),
        project=_common.project,
        recur=split_recur(split),
        output_size=hidden_size,
        name=f"indrnn_{activation}",
        input_size=_common.input_size,
        recur_split=split,
    )
