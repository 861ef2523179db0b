"""The LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

With gates stacked in PyTorch's order i, f, g, o:

    i, f, g, o = split(x_t W_ih + b_ih + h_(t-1) W_hh + b_hh)
    c_t = sigmoid(f) * c_(t-1) + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Variants, combinable, as keyword options of :func:`lstm`:

* ``proj_size=P`` (PyTorch's LSTMP, Sak et al. 2014): ``h_t = (sigmoid(o) * tanh(c_t)) W_hr``,
  a ``(H, P)`` projection, so the state fed back and the output have size P.
* ``peephole=True`` (Gers & Schmidhuber 2000): the gates also see the cell,
  ``i += w_ci * c_(t-1)``, ``f += w_cf * c_(t-1)``, ``o += w_co * c_t``.
* ``layer_norm=True`` (Ba et al. 2016): ``x W_ih`` and ``h W_hh`` are each layer-normalised
  over all 4H gate pre-activations (with a learned scale; ``b_ih``/``b_hh`` are the shifts),
  and so is ``c_t`` before the output ``tanh``.

The plain LSTM splits into an affine recurrent product and parameter-free arithmetic, which
``unroll``'s fast custom VJP uses; the variants put parameters inside the step and are
differentiated by plain autodiff.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Unpack

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks, precision
from seqjax import initializers as inits
from seqjax.cell import Cell, CombineVJP, Params, RecurSplit, split_recur
from seqjax.cells import _common

FORGET_GATE = 1  # index in the i, f, g, o stacking


class LSTMCarry(NamedTuple):
    """The LSTM state: ``h`` (output) and ``c`` (cell), each ``(batch..., H)``."""

    h: jax.Array
    c: jax.Array


def lstm_hidden_projection(params: Params, carry: LSTMCarry) -> jax.Array:
    """``h_(t-1) W_hh + b_hh``: the recurrent product, ``(batch..., 4H)``."""
    return _common.hidden_projection(params, carry.h)


def lstm_step_with_residuals(carry: LSTMCarry, projected_x: jax.Array, hh: jax.Array):
    """One LSTM step from its two products (the equations above), and what its derivative
    needs: ``((LSTMCarry(h, c), h), (i, f, g, o, tanh(c)))``, the gates after activation."""
    with jax.named_scope("seqjax.lstm"):
        i, f, g, o = jnp.split(projected_x + hh, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * carry.c + i * g
        tanh_c = jnp.tanh(c)
        h = o * tanh_c
        # Five (batch, H) arrays, not one (batch, 5H): XLA:CPU runs the backward step's
        # arithmetic ~2.5x slower when it slices gate columns out of a per-step slice.
        return (LSTMCarry(h, c), h), (i, f, g, o, tanh_c)


def lstm_step(carry: LSTMCarry, projected_x: jax.Array, hh: jax.Array):
    """One LSTM step: ``(LSTMCarry(h, c), h)`` from the carry, ``x W_ih + b_ih`` and
    ``h W_hh + b_hh`` (each ``(batch..., 4H)``)."""
    return lstm_step_with_residuals(carry, projected_x, hh)[0]  # residuals dropped by XLA


def lstm_step_backward(carry: LSTMCarry, residuals: tuple[jax.Array, ...], d_out):
    """The derivative of :func:`lstm_step`: ``(d_carry, d_gates, d_gates)`` for
    ``d_out = (d_new_carry, d_h)``, from the residuals of :func:`lstm_step_with_residuals`.
    The gates' gradient serves both products (the split is additive)."""
    with jax.named_scope("seqjax.lstm_backward"):
        d_new, dy = d_out
        i, f, g, o, tanh_c = residuals
        dh = d_new.h + dy
        dc = d_new.c + dh * o * (1.0 - tanh_c * tanh_c)
        d_gates = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * carry.c * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )
        return LSTMCarry(jnp.zeros_like(dh), dc * f), d_gates, d_gates


LSTM_SPLIT = RecurSplit(
    lstm_hidden_projection, lstm_step, additive=True,
    combine_vjp=CombineVJP(lstm_step_with_residuals, lstm_step_backward),
)  # fmt: skip
"""The plain LSTM's step as ``unroll``'s custom VJP and the native kernel take it."""


def lstm(
    hidden_size: int,
    *,
    forget_bias: float | None = 1.0,
    proj_size: int = 0,
    peephole: bool = False,
    layer_norm: bool = False,
    **init: Unpack[inits.InitOptions],
) -> Cell:
    """An LSTM cell (PyTorch ``nn.LSTM``).

    Args:
      hidden_size: H.
      forget_bias: the initial total forget-gate bias (put in ``b_ih``; ``b_hh``'s forget block
        starts at 0); ``None`` draws it like the other biases. Default 1.0, so the cell starts
        by keeping its memory; the ``"pytorch"`` scheme sets it to ``None`` unless given.
      proj_size: P > 0 projects the output (PyTorch ``proj_size``); 0, the default, does not.
      peephole: add peephole connections from the cell to the gates.
      layer_norm: layer-normalise the gate pre-activations and the cell (Ba et al. 2016).
      **init: ``init="default"`` or ``"pytorch"``, ``input_init``, ``recurrent_init``,
        ``bias_init``: see :class:`seqjax.initializers.InitOptions`.

    Params: ``w_ih (D, 4H)``, ``w_hh (R, 4H)``, ``b_ih (4H,)``, ``b_hh (4H,)`` with R = P if
    ``proj_size`` else H; with ``proj_size`` also ``w_hr (H, P)``; with ``peephole`` also
    ``w_ci, w_cf, w_co (H,)`` (zeros at init: the cell starts as a plain LSTM); with
    ``layer_norm`` also ``ln_ih_scale, ln_hh_scale (4H,)``, ``ln_c_scale, ln_c_bias (H,)``.
    Carry: ``LSTMCarry(h, c)``, ``h (batch..., R)``, ``c (batch..., H)``. Output: ``h``.
    """
    hidden_size = _checks.check_positive_int(hidden_size, "hidden_size", "lstm")
    proj_size = _checks.check_int(proj_size, "proj_size", "lstm", low=0)
    if proj_size >= hidden_size:
        raise ValueError(
            f"lstm: proj_size must be smaller than hidden_size ({hidden_size}), as in PyTorch "
            f"(it projects h down); got {proj_size}"
        )
    peephole = _checks.check_bool(peephole, "peephole", "lstm")
    layer_norm = _checks.check_bool(layer_norm, "layer_norm", "lstm")
    if proj_size or peephole or layer_norm:
        return _lstm_variant(hidden_size, proj_size, peephole, layer_norm, forget_bias, init)
    if forget_bias is not None and not _checks.is_number(forget_bias):
        raise TypeError(f"lstm: forget_bias must be a number or None; got {forget_bias!r}")
    config = _common.resolve_init(init, "lstm")
    if init.get("init") == "pytorch" and forget_bias == 1.0:
        forget_bias = None
    ih_override = hh_override = None
    if forget_bias is not None:
        ih_override = {FORGET_GATE: inits.constant(float(forget_bias))}
        hh_override = {FORGET_GATE: inits.zeros}
    H = hidden_size

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        return _common.init_params(
            key, input_size, H, 4, config, dtype, "lstm",
            bias_ih_overrides=ih_override, bias_hh_overrides=hh_override,
        )  # fmt: skip

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        zeros = jnp.zeros((*batch_shape, H), precision.state_dtype(params))
        return LSTMCarry(zeros, zeros)

    return Cell(
        init=init_fn,
        initial_carry=initial_carry,
        project=_common.project,
        recur=split_recur(LSTM_SPLIT),
        output_size=H,
        name="lstm",
        input_size=_common.input_size,
        recur_split=LSTM_SPLIT,
    )


LN_EPSILON = 1e-5


def _normalized(x: jax.Array) -> jax.Array:
    """Zero mean, unit variance over the last axis (no scale or shift)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPSILON)


def _lstm_variant(H, P, peephole, layer_norm, forget_bias, init: dict) -> Cell:
    """The LSTM with any of a projection, peepholes and layer normalisation."""
    plain = lstm(H, forget_bias=forget_bias, **init)
    config = _common.resolve_init(init, "lstm")
    R = P or H
    name = "lstm" + "".join(
        f"_{tag}" for tag, on in (("proj", P), ("peephole", peephole), ("ln", layer_norm)) if on
    )

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        k_plain, k_hh, k_hr = jax.random.split(key, 3)
        params = plain.init(k_plain, input_size, dtype)
        dtype = params["w_ih"].dtype
        if P:
            params["w_hh"] = inits.gate_blocks(k_hh, config.recurrent_init, P, H, 4, dtype)
            if init.get("init") == "pytorch":  # PyTorch draws W_hr from U(+-1/sqrt(H)) too
                bound = 1.0 / np.sqrt(H)
                params["w_hr"] = jax.random.uniform(k_hr, (H, P), dtype, -bound, bound)
            else:
                params["w_hr"] = inits.lecun_normal()(k_hr, (H, P), dtype)
        if peephole:
            params |= {k: jnp.zeros((H,), dtype) for k in ("w_ci", "w_cf", "w_co")}
        if layer_norm:
            params |= {
                "ln_ih_scale": jnp.ones((4 * H,), dtype),
                "ln_hh_scale": jnp.ones((4 * H,), dtype),
                "ln_c_scale": jnp.ones((H,), dtype),
                "ln_c_bias": jnp.zeros((H,), dtype),
            }
        return params

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        dtype = precision.state_dtype(params)
        return LSTMCarry(jnp.zeros((*batch_shape, R), dtype), jnp.zeros((*batch_shape, H), dtype))

    def project(params: Params, xs: jax.Array) -> jax.Array:
        if not layer_norm:
            return _common.project(params, xs)
        return (
            _normalized(precision.matmul(xs, params["w_ih"])) * params["ln_ih_scale"]
            + params["b_ih"]
        )

    recur = functools.partial(
        lstm_variant_step, peephole=peephole, layer_norm=layer_norm, name=name
    )

    return Cell(
        init=init_fn,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
        output_size=R,
        name=name,
        input_size=_common.input_size,
    )


def lstm_variant_step(
    params: Params,
    carry: LSTMCarry,
    projected_x: jax.Array,
    *,
    peephole: bool,
    layer_norm: bool,
    name: str = "lstm_variant",
) -> tuple[LSTMCarry, jax.Array]:
    """One step of the LSTM with its variants (module docstring): the peepholes, the layer
    norms and the output projection (``w_hr`` in ``params``) put parameters inside the step,
    so it is one ``recur`` differentiated by plain autodiff."""
    with jax.named_scope(f"seqjax.{name}"):
        hh = precision.matmul(carry.h, params["w_hh"])
        if layer_norm:
            hh = _normalized(hh) * params["ln_hh_scale"]
        i, f, g, o = jnp.split(projected_x + hh + params["b_hh"], 4, axis=-1)
        if peephole:
            i = i + params["w_ci"] * carry.c
            f = f + params["w_cf"] * carry.c
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        if peephole:
            o = o + params["w_co"] * c
        shown = _normalized(c) * params["ln_c_scale"] + params["ln_c_bias"] if layer_norm else c
        h = jax.nn.sigmoid(o) * jnp.tanh(shown)
        if "w_hr" in params:
            h = precision.matmul(h, params["w_hr"])
        return LSTMCarry(h, c), h
