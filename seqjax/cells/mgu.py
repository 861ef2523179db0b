"""The Minimal Gated Unit (Zhou et al. 2016, "Minimal Gated Unit for Recurrent Neural
Networks"): a GRU whose update and reset gates are one gate ``f``.

seqjax follows Flax's ``flax.linen.MGUCell`` (the form the golden vectors check), with the
gates stacked f, n and the gate applied after the hidden matmul, as in the GRU:

    f  = sigmoid(x W_if + b_if + h W_hf + b_hf)
    n  = tanh(x W_in + b_in + f * (h W_hn + b_hn))
    h' = (1 - f) * n + f * h

With ``reset_gate=False`` (Flax's flag of the same name) ``f`` only interpolates:
``n = tanh(x W_in + b_in + h W_hn + b_hn)``.

The paper writes the cell differently: its candidate reads ``(f * h) W_hn`` (the gate before
the matmul), and its ``f`` weighs the candidate, ``h' = (1 - f) * h + f * n``. Flax's form is
not a relabelling of it; it is the MGU as Flax (and so most JAX code) runs it, and the form
whose one recurrent matmul ``h W_hh`` serves both gates.
"""

from __future__ import annotations

from typing import Unpack

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax import initializers as inits
from seqjax.cell import Cell, CombineVJP, Params, RecurSplit, split_recur
from seqjax.cells import _common

FORGET_GATE = 0  # index in the f, n stacking


def mgu(
    hidden_size: int,
    *,
    reset_gate: bool = True,
    forget_bias: float | None = 1.0,
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """An MGU cell (Flax ``nn.MGUCell``).

    Args:
      hidden_size: H.
      reset_gate: let ``f`` also scale the candidate's recurrent product (Flax's default);
        ``False`` leaves the candidate ``tanh(x W_in + b_in + h W_hn + b_hn)``.
      forget_bias: the initial bias of ``f`` (put in ``b_ih``; ``b_hh``'s f block starts at
        0). Default 1.0, Flax's ``forget_bias_init``, so the cell starts by keeping its state;
        ``None`` draws it like the other biases; the ``"pytorch"`` scheme sets it to ``None``
        unless given.
      **init: ``init="default"`` (Lecun-normal input weights, orthogonal recurrent blocks,
        zero biases: Flax's defaults) or ``"pytorch"``, ``input_init``, ``recurrent_init``,
        ``bias_init``: see :class:`seqjax.initializers.InitOptions`.

    Params: ``w_ih (D, 2H)``, ``w_hh (H, 2H)``, ``b_ih (2H,)``, ``b_hh (2H,)``, blocks f, n.
    Flax keeps no ``b_hf`` (and no ``b_hn`` without the reset gate): import puts zeros there.
    Carry: ``h (batch..., H)``. Output: ``h``.
    """
    fn = "mgu"
    H = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    reset_gate = _checks.check_bool(reset_gate, "reset_gate", fn)
    if forget_bias is not None and not _checks.is_number(forget_bias):
        raise TypeError(f"{fn}: forget_bias must be a number or None; got {forget_bias!r}")
    config = _common.resolve_init(init, fn)
    if init.get("init") == "pytorch" and forget_bias == 1.0:
        forget_bias = None
    ih_override = hh_override = None
    if forget_bias is not None:
        ih_override = {FORGET_GATE: inits.constant(float(forget_bias))}
        hh_override = {FORGET_GATE: inits.zeros}

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        return _common.init_params(
            key, input_size, H, 2, config, dtype, fn,
            bias_ih_overrides=ih_override, bias_hh_overrides=hh_override,
        )  # fmt: skip

    split = MGU_SPLIT if reset_gate else MGU_NO_RESET_SPLIT
    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(H),
        project=_common.project,
        recur=split_recur(split),
        output_size=H,
        name=fn if reset_gate else "mgu_no_reset",
        input_size=_common.input_size,
        recur_split=split,
    )


def mgu_step_with_residuals(h_prev: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One MGU step from ``x W_ih + b_ih`` and ``h W_hh + b_hh`` (each ``(batch..., 2H)``),
    and what its derivative needs: ``((h, h), (f, n, hh_n))``."""
    H = h_prev.shape[-1]
    with jax.named_scope("seqjax.mgu"):
        f = jax.nn.sigmoid(projected_x[..., :H] + hh[..., :H])
        hh_n = hh[..., H:]
        n = jnp.tanh(projected_x[..., H:] + f * hh_n)
        h = (1.0 - f) * n + f * h_prev
        return (h, h), (f, n, hh_n)  # separate arrays: see lstm.lstm_step_with_residuals


def mgu_step(h_prev: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One MGU step (with the reset gate): ``(h, h)``."""
    return mgu_step_with_residuals(h_prev, projected_x, hh)[0]


def mgu_step_backward(h_prev: jax.Array, residuals: tuple[jax.Array, ...], d_out):
    """The derivative of :func:`mgu_step`: ``(d_h_prev, d_px, d_hh)`` for ``d_out = (d_new_h,
    d_y)``. ``f`` reaches the output three ways: the interpolation, ``h_prev`` and, through
    the candidate, the scaled recurrent product."""
    with jax.named_scope("seqjax.mgu_backward"):
        d_new, dy = d_out
        f, n, hh_n = residuals
        dh = d_new + dy
        dn = dh * (1.0 - f) * (1.0 - n * n)
        df = (dh * (h_prev - n) + dn * hh_n) * f * (1.0 - f)
        d_px = jnp.concatenate([df, dn], axis=-1)
        d_hh = jnp.concatenate([df, dn * f], axis=-1)
        return dh * f, d_px, d_hh


def mgu_no_reset_step_with_residuals(h_prev: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One MGU step without the reset gate: ``((h, h), (f, n))``. Both products enter only
    through their sum."""
    H = h_prev.shape[-1]
    with jax.named_scope("seqjax.mgu_no_reset"):
        gates = projected_x + hh
        f = jax.nn.sigmoid(gates[..., :H])
        n = jnp.tanh(gates[..., H:])
        h = (1.0 - f) * n + f * h_prev
        return (h, h), (f, n)


def mgu_no_reset_step(h_prev: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One MGU step without the reset gate: ``(h, h)``."""
    return mgu_no_reset_step_with_residuals(h_prev, projected_x, hh)[0]


def mgu_no_reset_step_backward(h_prev: jax.Array, residuals: tuple[jax.Array, ...], d_out):
    """The derivative of :func:`mgu_no_reset_step`; the split is additive, so the gate
    gradient serves both products."""
    with jax.named_scope("seqjax.mgu_no_reset_backward"):
        d_new, dy = d_out
        f, n = residuals
        dh = d_new + dy
        dn = dh * (1.0 - f) * (1.0 - n * n)
        df = dh * (h_prev - n) * f * (1.0 - f)
        d_gates = jnp.concatenate([df, dn], axis=-1)
        return dh * f, d_gates, d_gates


MGU_SPLIT = RecurSplit(
    _common.hidden_projection, mgu_step,
    combine_vjp=CombineVJP(mgu_step_with_residuals, mgu_step_backward),
)  # fmt: skip
"""The MGU's step (Flax's form) as ``unroll``'s custom VJP takes it."""

MGU_NO_RESET_SPLIT = RecurSplit(
    _common.hidden_projection, mgu_no_reset_step, additive=True,
    combine_vjp=CombineVJP(mgu_no_reset_step_with_residuals, mgu_no_reset_step_backward),
)  # fmt: skip
"""The MGU's step without the reset gate (Flax's ``reset_gate=False``)."""
