"""The selective state space of Mamba (S6; Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", Algorithm 2): a diagonal linear recurrence whose step size and
input and output maps depend on the input.

For inputs ``x_t`` of D channels and a state of N per channel:

    delta_t = softplus((x_t W_xdt) W_dt + b_dt)          (D,)   through a rank-R bottleneck
    B_t = x_t W_B,  C_t = x_t W_C                          (N,)   shared by all channels
    A = -exp(a_log)                                        (D, N)
    h_t = exp(delta_t A) * h_(t-1) + (delta_t x_t) B_t     (D, N) (zero-order hold of A; Euler B)
    y_t = h_t C_t + d * x_t                                (D,)

Every coefficient depends on ``x_t`` alone, never on the state, so the cell is a
:class:`~seqjax.cell.LinearRecurrence` and ``unroll(..., parallel=True)`` runs it by associative
scan. The initialisation is the paper's code's: ``A`` S4D-real (row ``-(1, ..., N)``), ``d``
ones, and ``b_dt`` so that ``softplus(b_dt)`` is log-uniform in ``[dt_min, dt_max]``.

The cell is the selective scan alone, NOT the Mamba block: around the scan the block has an
input projection to ``2E`` (a branch ``x`` and a gate ``z``), a short causal depthwise
``conv1d`` and a SiLU on the ``x`` branch before the scan, the gating ``y * silu(z)`` after it,
and an output projection. :func:`mamba_block` builds those around the cell as a
:class:`seqjax.layers.Layer` (without the norm and the residual of the model around it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.cell import Cell, LinearRecurrence, Params, linear_recur
from seqjax.cells import _common

if TYPE_CHECKING:
    from seqjax.layers import Layer

DT_INIT_FLOOR = 1e-4  # the smallest initial step size, as in the paper's code


def selective_ssm(
    model_size: int,
    state_size: int = 16,
    dt_rank: int | None = None,
    *,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
) -> Cell:
    """A selective SSM (S6) over ``model_size`` channels with ``state_size`` states each.

    Args:
      model_size: D, the channels of the inputs and outputs (the skip ``d * x`` is per channel,
        so ``input_size`` must be D).
      state_size: N, the states per channel (Mamba's ``d_state``, default 16).
      dt_rank: R, the rank of the step-size projection; ``None``: ``ceil(D / 16)``.
      dt_min: the smallest initial step size ``softplus(b_dt)`` (drawn log-uniformly).
      dt_max: the largest initial step size.

    Params: ``w_x (D, R + 2N)`` (blocks: the step's bottleneck, B, C; no bias), ``w_dt (R, D)``,
    ``b_dt (D,)``, ``a_log (D, N)``, ``d (D,)``. Carry: the state ``(batch..., D * N)``, channel
    major (state ``n`` of channel ``c`` at ``c * N + n``). Output: ``y (batch..., D)``.
    """
    fn = "selective_ssm"
    D = _checks.check_positive_int(model_size, "model_size", fn)
    N = _checks.check_positive_int(state_size, "state_size", fn)
    R = math.ceil(D / 16) if dt_rank is None else _checks.check_positive_int(dt_rank, "dt_rank", fn)
    dt_min = _checks.check_number(dt_min, "dt_min", fn, lambda v: v > 0, "a number > 0")
    dt_max = _checks.check_number(dt_max, "dt_max", fn, lambda v: v > dt_min,
                                  f"a number > dt_min ({dt_min})")  # fmt: skip

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        if input_size != D:
            raise ValueError(
                f"{fn}: input_size must equal model_size={D} (each channel is its own "
                f"recurrence, with the skip d * x per channel); got input_size={input_size}. "
                f"Put a linear layer in front, or build selective_ssm(model_size={input_size})"
            )
        return selective_ssm_init(key, D, N, R, dt_min, dt_max, _common.float_dtype(dtype, fn))

    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(D * N),
        project=selective_ssm_project,
        recur=linear_recur(SELECTIVE_SSM),
        output_size=D,
        name=fn,
        input_size=lambda params: params["w_x"].shape[0],
        linear=SELECTIVE_SSM,
    )


def selective_ssm_init(
    key: jax.Array, D: int, N: int, R: int, dt_min: float, dt_max: float, dtype
) -> Params:
    """Fresh params as in the paper's code: ``w_x`` U(+-1/sqrt(D)) (PyTorch's Linear),
    ``w_dt`` U(+-1/sqrt(R)), ``b_dt`` the inverse softplus of step sizes log-uniform in
    ``[dt_min, dt_max]`` (at least ``1e-4``), ``a_log = log(1, ..., N)`` in every row
    (S4D-real), ``d`` ones."""
    k_x, k_w, k_dt = jax.random.split(key, 3)
    bound_x, bound_dt = 1.0 / math.sqrt(D), 1.0 / math.sqrt(R)
    u = jax.random.uniform(k_dt, (D,), jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, DT_INIT_FLOOR)
    params = {
        "w_x": jax.random.uniform(k_x, (D, R + 2 * N), jnp.float32, -bound_x, bound_x),
        "w_dt": jax.random.uniform(k_w, (R, D), jnp.float32, -bound_dt, bound_dt),
        "b_dt": dt + jnp.log(-jnp.expm1(-dt)),  # softplus(b_dt) == dt
        "a_log": jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (D, N))),
        "d": jnp.ones((D,), jnp.float32),
    }
    return jax.tree.map(lambda p: p.astype(dtype), params)


def _sizes(params: Params) -> tuple[int, int, int]:
    """``(D, N, R)`` from the params' shapes."""
    R, D = params["w_dt"].shape
    return D, params["a_log"].shape[-1], R


def selective_ssm_project(params: Params, xs: jax.Array) -> jax.Array:
    """``[(x W_xdt) W_dt + b_dt, x W_B, x W_C, x]``, ``(..., 2D + 2N)`` for ``xs (..., D)``:
    the step size before its softplus, B, C and, for the update and the skip, the input."""
    R = params["w_dt"].shape[0]
    low_rank_bc = precision.matmul(xs, params["w_x"])
    dt = precision.matmul(low_rank_bc[..., :R], params["w_dt"]) + params["b_dt"]
    return jnp.concatenate([dt, low_rank_bc[..., R:], xs.astype(dt.dtype)], axis=-1)


def _parts(params: Params, px: jax.Array):
    """``(delta (..., D), B (..., N), C (..., N), x (..., D))`` of a projected step."""
    D, N, _ = _sizes(params)
    delta = jax.nn.softplus(px[..., :D])
    return delta, px[..., D : D + N], px[..., D + N : D + 2 * N], px[..., D + 2 * N :]


def selective_ssm_coefficients(params: Params, px: jax.Array):
    """``(a, b)`` of ``h_t = a * h_(t-1) + b``, each ``(..., D * N)``: ``a = exp(delta A)``
    and ``b = (delta x) B``, channel major."""
    D, N, _ = _sizes(params)
    delta, b_t, _, x = _parts(params, px)
    # the vectors' dtype: a_log is a matrix, which the mixed policy would keep in bfloat16
    a = -jnp.exp(params["a_log"].astype(px.dtype))
    decay = jnp.exp(delta[..., :, None] * a)
    drive = (delta * x)[..., :, None] * b_t[..., None, :]
    flat = (*px.shape[:-1], D * N)
    return decay.reshape(flat), drive.reshape(flat)


def selective_ssm_read_out(params: Params, h: jax.Array, px: jax.Array) -> jax.Array:
    """``y_t = h_t C_t + d * x_t``, ``(..., D)``, from the new state ``h (..., D * N)``."""
    D, N, _ = _sizes(params)
    _, _, c_t, x = _parts(params, px)
    state = h.reshape((*h.shape[:-1], D, N))
    y = jnp.sum(state * c_t[..., None, :], axis=-1) + params["d"] * x
    return y.astype(px.dtype)


SELECTIVE_SSM = LinearRecurrence(selective_ssm_coefficients, selective_ssm_read_out)
"""The S6 recurrence, linear in its state (run sequentially or by associative scan)."""


class MambaCarry(NamedTuple):
    """The Mamba block's state: the conv's last ``K - 1`` inputs ``(batch..., K - 1, E)`` and
    the selective SSM's state ``(batch..., E * N)`` (E the inner width)."""

    conv: jax.Array
    ssm: jax.Array


def mamba_block(
    model_size: int,
    *,
    expand: int = 2,
    state_size: int = 16,
    dt_rank: int | None = None,
    conv_size: int = 4,
    parallel: bool = True,
) -> Layer:
    """The Mamba block (Gu & Dao 2023, Figure 3) around the selective SSM, as a
    :class:`seqjax.layers.Layer`: for ``xs (batch..., time, features)``,

        x, z = split(xs W_in)                       each (..., E), E = expand * model_size
        u = silu(causal_depthwise_conv(x) + b_conv) kernel of conv_size steps
        y = selective_ssm(u) * silu(z)
        out = y W_out                               (..., model_size)

    without the norm and the residual of the model around it. ``dt_rank`` defaults to
    ``ceil(model_size / 16)``, as in the paper's code. ``parallel``: run the scan by
    associative scan (else step by step). Params: ``w_in (features, 2E)``, ``w_conv (K, E)``
    (tap ``K - 1`` reads the current step), ``b_conv (E,)``, ``ssm`` (the cell's),
    ``w_out (E, model_size)``; initialised as PyTorch's Linear and Conv1d. Carry:
    :class:`MambaCarry`, so a long sequence can be fed in chunks. ``lengths`` as for every
    layer (outputs past a length are zero, the carry is each sequence's at its own length);
    ``resets`` are refused: the conv window would have to restart too.
    """
    from seqjax.layers import Layer  # at call time: seqjax.layers imports the cells

    fn = "mamba_block"
    M = _checks.check_positive_int(model_size, "model_size", fn)
    E = M * _checks.check_positive_int(expand, "expand", fn)
    K = _checks.check_positive_int(conv_size, "conv_size", fn)
    R = math.ceil(M / 16) if dt_rank is None else _checks.check_positive_int(dt_rank, "dt_rank", fn)
    parallel = _checks.check_bool(parallel, "parallel", fn)
    ssm = selective_ssm(E, state_size, R)

    def init(key: jax.Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        dtype = _common.float_dtype(dtype, fn)
        k = jax.random.split(key, 5)
        uniform = lambda kk, shape, fan_in: jax.random.uniform(  # noqa: E731
            kk, shape, dtype, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in)
        )
        return {
            "w_in": uniform(k[0], (input_size, 2 * E), input_size),
            "w_conv": uniform(k[1], (K, E), K),
            "b_conv": uniform(k[2], (E,), K),
            "ssm": ssm.init(k[3], E, dtype),
            "w_out": uniform(k[4], (E, M), E),
        }

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> MambaCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        dtype = precision.state_dtype(params)
        conv = jnp.zeros((*batch_shape, K - 1, E), dtype)
        return MambaCarry(conv, ssm.initial_carry(params["ssm"], batch_shape))

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        del key  # no randomness
        if resets is not None or reset_carry is not None:
            raise ValueError(
                f"{fn}: resets are not supported (the conv window would have to restart with "
                "the state); run each segment on its own, or build the model from "
                "seqjax.rnn(selective_ssm(...)) layers"
            )
        xs = _checks.check_array(xs, "xs", fn, min_rank=2)
        _checks.check_features(xs, params["w_in"].shape[0], "xs", fn, "(batch..., time, {d})")
        if carry is None:
            carry = initial_carry(params, xs.shape[:-2])
        return _mamba_apply(ssm, parallel, params, xs, lengths, carry)

    return Layer(init=init, apply=apply, initial_carry=initial_carry, output_size=M)


def _mamba_apply(ssm: Cell, parallel: bool, params: Params, xs, lengths, carry: MambaCarry):
    """``(final MambaCarry, outputs (batch..., time, M))`` of the block, in the params' dtype."""
    from seqjax.unroll import unroll  # at call time: seqjax.unroll imports the cells

    dtype = precision.state_dtype(params)
    x, z = jnp.split(precision.matmul(xs.astype(dtype), params["w_in"]).astype(dtype), 2, -1)
    K, T = params["w_conv"].shape[0], xs.shape[-2]
    window = jnp.concatenate([carry.conv.astype(dtype), x], axis=-2)  # (..., K - 1 + T, E)
    w_conv = params["w_conv"].astype(dtype)
    conv = sum(w_conv[j] * window[..., j : j + T, :] for j in range(K)) + params["b_conv"]
    ssm_state, y = unroll(ssm, params["ssm"], jax.nn.silu(conv), carry=carry.ssm,
                          lengths=lengths, parallel=parallel)  # fmt: skip
    out = precision.matmul(y * jax.nn.silu(z), params["w_out"]).astype(dtype)
    # the conv's state: the K - 1 inputs before each sequence's end (its length, or T)
    ends = jnp.full(xs.shape[:-2], T) if lengths is None else jnp.asarray(lengths)
    taps = ends[..., None] + jnp.arange(K - 1)  # positions in the window
    conv_state = jnp.take_along_axis(window, taps[..., None], axis=-2)
    if lengths is not None:
        valid = jnp.arange(T) < ends[..., None]
        out = jnp.where(valid[..., None], out, jnp.zeros_like(out))
    return MambaCarry(conv_state, ssm_state), out
