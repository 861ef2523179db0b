"""The causal depthwise convolution over time that Griffin's, xLSTM's and Mamba-style blocks put
before their recurrences, with document restarts and a history carried between chunks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def causal_conv(conv_w, conv_b, u, restarts, lengths, history, reset_history):
    """The depthwise causal conv ``sum_j conv_w[W-1-j] * v_(t-j) + conv_b`` over ``u
    (batch..., T, D)``, where ``v`` reads, before step 0, the ``history (batch..., W-1, D)``
    (oldest first) and, before the latest restart (``restarts (batch..., T)``), the
    ``reset_history`` instead of the earlier steps. Returns the outputs and the last ``W-1``
    inputs as the step after each sequence's length would read them, ``(batch..., W-1, D)``.
    """
    W, T = conv_w.shape[0], u.shape[-2]
    t = np.arange(T + 1)  # T + 1: the final window is the one the next step would read
    flags = jnp.concatenate([restarts, jnp.zeros_like(restarts[..., :1])], axis=-1)
    latest = jax.lax.cummax(jnp.where(flags, t, -1), axis=flags.ndim - 1)[..., None]
    # Rows of one table per sequence: reset history, history, the T inputs.
    table = jnp.concatenate([reset_history.astype(u.dtype), history.astype(u.dtype), u], axis=-2)
    source = t[:, None] - np.arange(W)  # (T + 1, W): the step that lag j reads
    restarted = (latest >= 0) & (source < latest)
    row = jnp.where(restarted, (W - 1) - (latest - source), 2 * (W - 1) + source)
    row = jnp.clip(row, 0, table.shape[-2] - 1)  # the spare step T reads nothing used
    taken = jnp.take_along_axis(table, row.reshape(*row.shape[:-2], -1, 1), axis=-2)
    windows = taken.reshape(*row.shape, u.shape[-1])  # (batch..., T + 1, W, D), lag j
    taps = conv_w[::-1].astype(u.dtype)  # taps[j] multiplies the input j steps back
    out = jnp.einsum("...tjd,jd->...td", windows[..., :T, :, :], taps) + conv_b
    at_end = jnp.take_along_axis(windows, lengths[..., None, None, None], axis=-3)[..., 0, :, :]
    return out, at_end[..., :0:-1, :]  # lags W-1 .. 1, oldest first
