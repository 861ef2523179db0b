"""The sLSTM (Beck et al. 2024, xLSTM): an LSTM with an exponential input gate, a normaliser
state and block-diagonal (multi-head) recurrent weights.

With the gate pre-activations stacked in the order i, f, z, o (each H wide, heads contiguous
within a gate, as NX-AI's ``xlstm`` package lays them out):

    i~, f~, z~, o~ = split(x_t W + b + blockdiag(h_(t-1)) R)
    log f = log_sigmoid(f~)   (forget_gate="sigmoid", xlstm's only choice)  or  f~  ("exp")
    m_t = max(log f + m_(t-1), i~)            the stabiliser: the log of the largest gate
    i' = exp(i~ - m_t),  f' = exp(log f + m_(t-1) - m_t)
    c_t = f' c_(t-1) + i' tanh(z~),   n_t = f' n_(t-1) + i',   h_t = sigmoid(o~) c_t / n_t

``(c, n)`` are the cell and normaliser of the paper scaled by ``exp(-m)``: the exponential
gates would overflow, the scaled ones never exceed 1, and ``h`` is the same either way. A state
with ``n = 0`` holds nothing yet (the zero carry, or after a reset), and there ``m_t = i~``
(what ``xlstm`` does when the whole batch's ``n`` is zero; here each entry on its own, so a
sequence's numbers do not depend on its batch). After one step ``n >= 1`` stays so: one of
``f'``, ``i'`` is 1 at every step.

Heads: ``h`` is cut into ``num_heads`` blocks of ``d = H / num_heads``; each block feeds only
its own head's four gates (``R`` is ``(heads, d, 4d)``), so the recurrent product costs
``H * 4d`` per step instead of ``H * 4H``.

The step splits into the per-head product and parameter-free arithmetic, so ``unroll``'s custom
VJP takes the weight gradients out of the time loop (as for the LSTM).
"""

from __future__ import annotations

from typing import NamedTuple, Unpack

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks, precision
from seqjax import initializers as inits
from seqjax.cell import Cell, Params, RecurSplit, split_recur
from seqjax.cells import _common

FORGET_GATES = ("sigmoid", "exp")
GATES = 4  # i, f, z, o
FORGET_GATE = 1  # index in the i, f, z, o stacking
LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class SLSTMCarry(NamedTuple):
    """The sLSTM state, each ``(batch..., H)``: ``h`` (output), ``c`` (cell), ``n``
    (normaliser) and ``m`` (stabiliser, the log-scale ``c`` and ``n`` are kept at)."""

    h: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array


def mixed_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``jnp.einsum(spec, x, w)`` as :func:`seqjax.precision.matmul` runs a product: for a
    bfloat16/float16 ``w`` and a wider ``x`` (the mixed policy), the operands rounded to
    ``w``'s dtype and summed in float32.

    The rounded operands are multiplied in float32 rather than by a low-precision dot with a
    float32 result: the product of two bfloat16 (or float16) numbers is exact in float32, so
    the numbers are the same, and XLA:CPU has no batched dot of that kind.
    """
    if x.dtype == w.dtype or jnp.dtype(w.dtype) not in LOW_PRECISION:
        return jnp.einsum(spec, x, w)
    summed = jnp.promote_types(x.dtype, jnp.float32)
    return jnp.einsum(spec, x.astype(w.dtype).astype(summed), w.astype(summed))


def heads_matmul(h: jax.Array, r: jax.Array) -> jax.Array:
    """The block-diagonal product ``blockdiag(h) R`` in the gate-major layout.

    Args:
      h: ``(..., H)`` with ``H = heads * d``.
      r: ``(heads, d, 4d)``; the last axis is the head's i, f, z, o blocks of ``d``.

    Returns:
      ``(..., 4H)``: gate i of every head, then f, z, o (each gate ``(heads, d)`` flattened),
      under the mixed policy summed in float32 (:func:`mixed_einsum`).
    """
    heads, d, _ = r.shape
    hh = mixed_einsum("...nk,nkj->...nj", h.reshape(*h.shape[:-1], heads, d), r)
    hh = hh.reshape(*h.shape[:-1], heads, GATES, d)
    return jnp.swapaxes(hh, -3, -2).reshape(*h.shape[:-1], GATES * heads * d)


def slstm_hidden_projection(params: Params, carry: SLSTMCarry) -> jax.Array:
    """``blockdiag(h_(t-1)) R``: every head's recurrent contribution, ``(batch..., 4H)``."""
    return heads_matmul(carry.h, params["r"])


def slstm_gates(
    carry: SLSTMCarry, preactivations: jax.Array, forget_gate: str
) -> tuple[SLSTMCarry, jax.Array]:
    """One stabilised step (the module docstring's equations) from the summed pre-activations
    ``(batch..., 4H)``: ``(SLSTMCarry(h, c, n, m), h)``."""
    i, f, z, o = jnp.split(preactivations, GATES, axis=-1)
    log_f = jax.nn.log_sigmoid(f) if forget_gate == "sigmoid" else f
    log_fm = log_f + carry.m
    # An empty state (n = 0) has no stored scale to keep: start at the input gate's.
    m = jnp.where(carry.n == 0, i, jnp.maximum(log_fm, i))
    i_gate = jnp.exp(i - m)
    # <= 0 except for an empty state, where f' multiplies zeros and exp could overflow to inf.
    f_gate = jnp.exp(jnp.minimum(log_fm - m, 0.0))
    c = f_gate * carry.c + i_gate * jnp.tanh(z)
    n = f_gate * carry.n + i_gate
    h = jax.nn.sigmoid(o) * c / n
    return SLSTMCarry(h, c, n, m), h


def _split(forget_gate: str) -> RecurSplit:
    def combine(carry: SLSTMCarry, projected_x: jax.Array, hh: jax.Array):
        with jax.named_scope("seqjax.slstm"):
            return slstm_gates(carry, projected_x + hh, forget_gate)

    return RecurSplit(slstm_hidden_projection, combine, additive=True)


# One split per forget gate, built once: the splits are compared by identity elsewhere.
SLSTM_SPLITS = {gate: _split(gate) for gate in FORGET_GATES}


def powerlaw_forget_bias(head_dim: int, dtype=None) -> jax.Array:
    """xlstm's default forget-gate bias of one head (``powerlaw_blockdependent`` for a single
    block): ``5 - 12 x^0.3`` on ``x = 0, 1/(d-1), ..., 1``, from 5 (remember) down to -7."""
    x = np.linspace(0.0, 1.0, head_dim)
    return jnp.asarray(5.0 - 12.0 * x**0.3, dtype)


def slstm(
    hidden_size: int,
    *,
    num_heads: int = 4,
    forget_gate: str = "sigmoid",
    input_projection: bool = True,
    forget_bias: str | float | None = "powerlaw",
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """An sLSTM cell (xLSTM, Beck et al. 2024; NX-AI's ``xlstm`` ``sLSTMCell``).

    Args:
      hidden_size: H, divisible by ``num_heads``.
      num_heads: heads of the block-diagonal recurrence (xlstm's default 4).
      forget_gate: ``"sigmoid"`` (xlstm's) or ``"exp"`` (the paper's other choice).
      input_projection: ``True``: the cell projects inputs ``(..., D)`` with ``w (D, 4H)``.
        ``False``: the inputs are the gate pre-activations ``(..., 4H)`` themselves, as
        xlstm's ``sLSTMCell`` takes them (the sLSTM block makes them with its own projections).
      forget_bias: the forget gate's initial bias: ``"powerlaw"`` (xlstm's, per head, from 5
        down to -7 across the head), a number, or ``None`` to draw it like the other biases.
      **init: ``init="default"`` (Lecun-normal ``w``, zero ``r`` as xlstm starts, zero
        biases) or ``"pytorch"`` (U(+-1/sqrt(H)), xlstm's ``"standard"``), and
        ``input_init``, ``recurrent_init`` (drawn per head and gate, ``(d, d)`` blocks),
        ``bias_init``: see :class:`seqjax.initializers.InitOptions`.

    Params: ``w (D, 4H)`` (with ``input_projection`` only), ``r (heads, d, 4d)`` (each head's
    i, f, z, o blocks on the last axis), ``b (4H,)``; both stack the gates i, f, z, o, and
    within a gate the heads. Carry: ``SLSTMCarry(h, c, n, m)``, each ``(batch..., H)``.
    Output: ``h``.
    """
    fn = "slstm"
    H = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    heads = _checks.check_positive_int(num_heads, "num_heads", fn)
    if H % heads:
        raise ValueError(
            f"{fn}: num_heads must divide hidden_size ({H}) into equal heads; got {heads}"
        )
    _checks.check_choice(forget_gate, FORGET_GATES, "forget_gate", fn)
    input_projection = _checks.check_bool(input_projection, "input_projection", fn)
    if forget_bias is not None and forget_bias != "powerlaw" and not _checks.is_number(forget_bias):
        raise TypeError(
            f"{fn}: forget_bias must be 'powerlaw', a number or None; got {forget_bias!r}"
        )
    config = _common.resolve_init(init, fn)
    d = H // heads
    if init.get("recurrent_init") is None:
        # xlstm starts with R = 0, or draws it from U(+-1/sqrt(H)) (H, not the block's d).
        pytorch = init.get("init") == "pytorch"
        config = config._replace(recurrent_init=_uniform(H) if pytorch else inits.zeros)
    split = SLSTM_SPLITS[forget_gate]

    def init_fn(key: jax.Array, input_size: int | None = None, dtype=None) -> Params:
        dtype = _common.float_dtype(dtype, fn)
        k_w, k_r, k_b = jax.random.split(key, 3)
        head_keys = jax.random.split(k_r, heads)
        params = {
            "r": jnp.stack(
                [inits.gate_blocks(k, config.recurrent_init, d, d, GATES, dtype) for k in head_keys]
            ),
            "b": _bias(k_b, config.bias_init, forget_bias, H, d, dtype),
        }
        if input_projection:
            input_size = _checks.check_positive_int(input_size, "input_size", fn)
            params["w"] = inits.gate_blocks(k_w, config.input_init, input_size, H, GATES, dtype)
        elif input_size is not None and input_size != GATES * H:
            raise ValueError(
                f"{fn}: with input_projection=False the inputs are the {GATES * H} gate "
                f"pre-activations (4 * hidden_size); got input_size={input_size!r}"
            )
        return params

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> SLSTMCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        zeros = jnp.zeros((*batch_shape, H), precision.state_dtype(params))
        return SLSTMCarry(zeros, zeros, zeros, zeros)

    def project(params: Params, xs: jax.Array) -> jax.Array:
        if input_projection:
            return precision.matmul(xs, params["w"]) + params["b"]
        return xs.astype(precision.state_dtype(params)) + params["b"]

    def input_size(params: Params) -> int:
        return params["w"].shape[0] if input_projection else params["b"].shape[0]

    return Cell(
        init=init_fn,
        initial_carry=initial_carry,
        project=project,
        recur=split_recur(split),
        output_size=H,
        name=fn if forget_gate == "sigmoid" else "slstm_exp",
        input_size=input_size,
        recur_split=split,
    )


def _uniform(hidden_size: int) -> inits.Initializer:
    bound = 1.0 / np.sqrt(hidden_size)
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def _bias(key, bias_init, forget_bias, H: int, d: int, dtype) -> jax.Array:
    """``b (4H,)``: every gate from ``bias_init``, the forget gate as ``forget_bias`` says."""
    blocks = [bias_init(k, (H,), dtype) for k in jax.random.split(key, GATES)]
    if forget_bias == "powerlaw":
        blocks[FORGET_GATE] = jnp.tile(powerlaw_forget_bias(d, dtype), H // d)
    elif forget_bias is not None:
        blocks[FORGET_GATE] = jnp.full((H,), float(forget_bias), dtype)
    return jnp.concatenate(blocks)
