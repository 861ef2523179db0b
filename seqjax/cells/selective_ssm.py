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

What this module is NOT: the Mamba block. Around the selective scan the block has an input
projection to ``2 * D`` (a branch ``x`` and a gate ``z``), a short causal depthwise ``conv1d`` and
a SiLU on the ``x`` branch before the scan, the gating ``y * silu(z)`` after it, and an output
projection. None of those are here; a model builds them around this cell (the scan's inputs
are the conv's SiLU outputs, its outputs go into the gate).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.cell import Cell, LinearRecurrence, Params, linear_recur
from seqjax.cells import _common

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
      dt_min, dt_max: the range the initial step sizes ``softplus(b_dt)`` are drawn from,
        log-uniformly.

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
