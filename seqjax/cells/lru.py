"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for
Long Sequences"): a complex diagonal linear recurrence,

    h_t = lambda * h_(t-1) + gamma * (B x_t),      y_t = Re(C h_t) + D * x_t,

with ``lambda = exp(-exp(nu_log) + i exp(theta_log))`` (so ``|lambda| < 1`` for any parameters),
the normalisation ``gamma = sqrt(1 - |lambda|^2)`` kept as a parameter ``gamma_log``, and the
eigenvalues initialised uniformly on a ring ``r_min <= |lambda| <= r_max`` with phases in
``[0, max_phase]``. The state is linear in itself, so ``unroll(..., parallel=True)`` computes a
whole sequence with a parallel scan. There is no nonlinearity inside the cell: the paper puts
it between layers (an MLP or GLU on ``y``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.cell import Cell, LinearRecurrence, Params, linear_recur
from seqjax.cells import _common


def _wide(x: jax.Array) -> jax.Array:
    """At least float32: complex numbers need it (bfloat16/float16 models keep a complex64
    state; the carry and outputs stay in the model's dtype)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def lru(
    hidden_size: int,
    model_size: int,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    input_layer: bool = False,
) -> Cell:
    """An LRU cell with a complex state of ``hidden_size`` (N) and inputs and outputs of
    ``model_size`` (H): the skip term ``D * x_t`` is elementwise, so ``input_size`` must be H.

    With ``input_layer=True``, inputs of any size first go through ``u_t = gelu(x_t W_in +
    b_in)`` to H features, and the recurrence reads ``u_t``. The LRU itself is linear in its
    inputs, so a model needs a nonlinearity somewhere before the recurrence to compute, say,
    products of inputs (the paper puts MLPs between stacked LRU layers).

    Params: ``nu_log, theta_log, gamma_log (N,)``, ``b_re, b_im (H, N)``, ``c_re, c_im (N, H)``,
    ``d (H,)``; with ``input_layer`` also ``w_in (D, H)``, ``b_in (H,)``. Carry: the complex
    state as real ``[re, im]``, ``(batch..., 2N)``.
    """
    fn = "lru"
    N = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    H = _checks.check_positive_int(model_size, "model_size", fn)
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"{fn}: need 0 <= r_min < r_max <= 1; got r_min={r_min}, r_max={r_max}")
    if not max_phase > 0:
        raise ValueError(f"{fn}: max_phase must be > 0; got {max_phase}")
    input_layer = _checks.check_bool(input_layer, "input_layer", fn)

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        if input_size != H and not input_layer:
            raise ValueError(
                f"{fn}: input_size must equal model_size={H} (the skip term D * x is "
                f"elementwise); got input_size={input_size}. Put a linear layer in front, or "
                f"build lru(hidden_size, model_size={input_size}), or pass input_layer=True"
            )
        dtype = _common.float_dtype(dtype, fn)
        return lru_init(key, input_size, N, H, r_min, r_max, max_phase, input_layer, dtype)

    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(2 * N),
        project=lru_project,
        recur=linear_recur(LRU_RECURRENCE),
        output_size=H,
        name="lru",
        input_size=lambda params: params["w_in" if input_layer else "b_re"].shape[0],
        linear=LRU_RECURRENCE,
    )


def lru_init(
    key: jax.Array, input_size: int, N: int, H: int, r_min: float, r_max: float,
    max_phase: float, input_layer: bool, dtype,
) -> Params:  # fmt: skip
    """Fresh params: eigenvalues uniform on the ring ``r_min <= |lambda| <= r_max`` with phases
    in ``[0, max_phase]``, ``gamma`` normalising each state's gain, B and C Gaussian with
    variances 1/(2H) and 1/N."""
    k = jax.random.split(key, 8)
    u1 = jax.random.uniform(k[0], (N,), jnp.float32)
    u2 = jax.random.uniform(k[1], (N,), jnp.float32)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    magnitude = jnp.exp(-jnp.exp(nu_log))
    gamma_log = jnp.log(jnp.sqrt(1.0 - magnitude**2))
    params = {
        "nu_log": nu_log,
        "theta_log": theta_log,
        "gamma_log": gamma_log,
        "b_re": jax.random.normal(k[2], (H, N)) / math.sqrt(2 * H),
        "b_im": jax.random.normal(k[3], (H, N)) / math.sqrt(2 * H),
        "c_re": jax.random.normal(k[4], (N, H)) / math.sqrt(N),
        "c_im": jax.random.normal(k[5], (N, H)) / math.sqrt(N),
        "d": jax.random.normal(k[6], (H,)),
    }
    if input_layer:
        params["w_in"] = jax.random.normal(k[7], (input_size, H)) / math.sqrt(input_size)
        params["b_in"] = jnp.zeros((H,))
    return jax.tree.map(lambda p: p.astype(dtype), params)


def lru_project(params: Params, xs: jax.Array) -> jax.Array:
    """``[Re(B u), Im(B u), u]``: the drive and, for the skip term, the input itself (``u =
    gelu(x W_in + b_in)`` with the input layer, else ``x``)."""
    if "w_in" in params:
        xs = jax.nn.gelu(precision.matmul(xs, params["w_in"]) + params["b_in"])
    bx = precision.matmul(xs, jnp.concatenate([params["b_re"], params["b_im"]], axis=-1))
    return jnp.concatenate([bx, xs], axis=-1)


def lru_eigenvalues(params: Params) -> jax.Array:
    """``lambda = exp(-exp(nu_log) + i exp(theta_log))``, ``(N,)`` complex."""
    nu, theta = _wide(params["nu_log"]), _wide(params["theta_log"])
    return jnp.exp(jax.lax.complex(-jnp.exp(nu), jnp.exp(theta)))


def lru_coefficients(params: Params, px: jax.Array):
    """``(a, b)`` of ``h_t = a * h_(t-1) + b``: ``(lambda, gamma * B u_t)``."""
    N = params["nu_log"].shape[-1]
    drive = jax.lax.complex(_wide(px[..., :N]), _wide(px[..., N : 2 * N]))
    return lru_eigenvalues(params), jnp.exp(_wide(params["gamma_log"])) * drive


def lru_read_out(params: Params, h: jax.Array, px: jax.Array) -> jax.Array:
    """``y_t = Re(C h_t) + D * u_t``."""
    N = params["nu_log"].shape[-1]
    c_h = precision.matmul(jnp.real(h), params["c_re"]) - precision.matmul(
        jnp.imag(h), params["c_im"]
    )  # Re(C h)
    return (c_h + params["d"] * px[..., 2 * N :]).astype(px.dtype)


def _state_from_carry(carry: jax.Array) -> jax.Array:
    N = carry.shape[-1] // 2
    return jax.lax.complex(_wide(carry[..., :N]), _wide(carry[..., N:]))


def _carry_from_state(h: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.real(h), jnp.imag(h)], axis=-1)


LRU_RECURRENCE = LinearRecurrence(
    lru_coefficients,
    lru_read_out,
    state_from_carry=_state_from_carry,
    carry_from_state=_carry_from_state,
)
"""The LRU's recurrence, linear in its complex state (run sequentially or in parallel)."""
