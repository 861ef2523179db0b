"""The GRU (Cho et al. 2014), in both of its published forms.

Gates stacked in PyTorch's order r, z, n. Reset *after* the hidden matmul (PyTorch, cuDNN, Flax;
the default, ``reset_after=True``):

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

Reset *before* the matmul (the original paper, Keras ``reset_after=False``):

    n = tanh(x W_in + b_in + (r * h) W_hn + b_hn)

The first lets one matmul ``h W_hh`` serve all three gates; the second needs two, in sequence.
"""

from __future__ import annotations

from typing import Unpack

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax import initializers as inits
from seqjax.cell import Cell, CombineVJP, Params, RecurSplit, split_recur
from seqjax.cells import _common


def gru(
    hidden_size: int,
    *,
    reset_after: bool = True,
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """A GRU cell (PyTorch ``nn.GRU`` by default).

    Args:
      hidden_size: H.
      reset_after: apply the reset gate after the hidden matmul (default, PyTorch/cuDNN/Flax);
        ``False`` gives the original Cho et al. GRU (Keras ``reset_after=False``).
      **init: ``init="default"`` or ``"pytorch"``, ``input_init``, ``recurrent_init``,
        ``bias_init``: see :class:`seqjax.initializers.InitOptions`.

    Params: ``w_ih (D, 3H)``, ``w_hh (H, 3H)``, ``b_ih (3H,)``, ``b_hh (3H,)``.
    Carry: ``h (batch..., H)``. Output: ``h``.
    """
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", "gru")
    reset_after = _checks.check_bool(reset_after, "reset_after", "gru")
    config = _common.resolve_init(init, "gru")
    H = hidden_size

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        return _common.init_params(key, input_size, H, 3, config, dtype, "gru")

    split = GRU_SPLIT if reset_after else None

    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(H),
        project=_common.project,
        recur=split_recur(split) if reset_after else gru_reset_before_step,
        output_size=H,
        name="gru" if reset_after else "gru_reset_before",
        input_size=_common.input_size,
        recur_split=split,
    )


def gru_step_with_residuals(h_prev: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One GRU step (reset after the matmul) from ``x W_ih + b_ih`` and ``h W_hh + b_hh``
    (each ``(batch..., 3H)``), and what its derivative needs: ``((h, h), (r, z, n, hh_n))``."""
    H = h_prev.shape[-1]
    with jax.named_scope("seqjax.gru"):
        r, z = jnp.split(jax.nn.sigmoid(projected_x[..., : 2 * H] + hh[..., : 2 * H]), 2, -1)
        hh_n = hh[..., 2 * H :]
        n = jnp.tanh(projected_x[..., 2 * H :] + r * hh_n)
        h = (1.0 - z) * n + z * h_prev
        return (h, h), (r, z, n, hh_n)  # separate arrays: see lstm.lstm_step_with_residuals


def gru_step(h_prev: jax.Array, projected_x: jax.Array, hh: jax.Array):
    """One GRU step (reset after the matmul): ``(h, h)``."""
    return gru_step_with_residuals(h_prev, projected_x, hh)[0]  # residuals dropped by XLA


def gru_step_backward(h_prev: jax.Array, residuals: tuple[jax.Array, ...], d_out):
    """The derivative of :func:`gru_step`: ``(d_h_prev, d_px, d_hh)`` for
    ``d_out = (d_new_h, d_y)``. The two products get different gradients: the candidate's
    block of ``hh`` is scaled by the reset gate."""
    with jax.named_scope("seqjax.gru_backward"):
        d_new, dy = d_out
        r, z, n, hh_n = residuals
        dh = d_new + dy
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dr = dn * hh_n * r * (1.0 - r)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        d_px = jnp.concatenate([dr, dz, dn], axis=-1)
        d_hh = jnp.concatenate([dr, dz, dn * r], axis=-1)
        return dh * z, d_px, d_hh


GRU_SPLIT = RecurSplit(
    _common.hidden_projection, gru_step,
    combine_vjp=CombineVJP(gru_step_with_residuals, gru_step_backward),
)  # fmt: skip
"""The GRU's step (reset after) as ``unroll``'s custom VJP and the native kernel take it."""


def gru_reset_before_step(params: Params, h: jax.Array, projected_x: jax.Array):
    """One step of the original GRU (reset before the matmul): ``(h, h)``. The reset gate
    enters before the second matmul, so the step has two matmuls in sequence and no
    parameter-free tail: it is differentiated by plain autodiff."""
    H = h.shape[-1]
    with jax.named_scope("seqjax.gru_reset_before"):
        w_hh, b_hh = params["w_hh"], params["b_hh"]
        hh_rz = precision.matmul(h, w_hh[:, : 2 * H]) + b_hh[: 2 * H]
        r, z = jnp.split(jax.nn.sigmoid(projected_x[..., : 2 * H] + hh_rz), 2, axis=-1)
        n = jnp.tanh(
            projected_x[..., 2 * H :] + precision.matmul(r * h, w_hh[:, 2 * H :]) + b_hh[2 * H :]
        )
        h = (1.0 - z) * n + z * h
        return h, h
