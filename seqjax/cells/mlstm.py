"""The mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): an LSTM whose
memory is a matrix per head, written with an outer product and read with a query,

    C_t = f_t C_(t-1) + i_t k_t v_t^T,     n_t = f_t n_(t-1) + i_t k_t,
    h~_t = C_t^T q_t / max(|n_t^T q_t|, 1),     h_t = o_t * h~_t,

with ``k_t`` scaled by ``1/sqrt(d)`` (d the head size), a scalar exponential input gate
``i_t = exp(i~_t)`` and sigmoid forget gate ``f_t = sigmoid(f~_t)`` per head, and an output gate
``o_t = sigmoid(o~_t)``. Exponential gates overflow, so the state is kept scaled by
``exp(-m_t)``, a running maximum of the log gates,

    m_t = max(log f_t + m_(t-1), i~_t),
    f'_t = exp(log f_t + m_(t-1) - m_t),   i'_t = exp(i~_t - m_t),

and ``max(|n^T q|, 1)`` becomes ``max(|n^T q|, exp(-m_t)) + eps`` (the conventions of
``mlstm_kernels`` 2.0.6 and ``xlstm`` 2.0.6; see ``docs/concepts/mlstm.md``).

The state enters the step only through sums of decayed outer products, so a whole sequence has
two more forms that give the same numbers: the quadratic (attention-like) form, ``h_t`` from
``sum_s exp(log D_ts - m_t) (q_t . k_s) v_s`` with ``log D_ts = sum_(s<r<=t) log f_r + i~_s``, and
the chunkwise form, the quadratic form inside chunks and the recurrence between them.
``unroll(..., parallel=True)`` runs the first, ``parallel=True, chunk_size=K`` the second.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.cells import _common
from seqjax.types import Cell, Params, SequenceForms, default_float_dtype

Array = jax.Array


class MLSTMCarry(NamedTuple):
    """The mLSTM's state, every leaf flat on its last axis (so masks and resets apply as to any
    carry): ``c (batch..., heads*d*d)`` the memories ``C`` (row-major ``(heads, d_k, d_v)``),
    ``n (batch..., heads*d)`` the normalisers, ``m (batch..., heads)`` the stabilisers. ``c``
    and ``n`` are stored scaled by ``exp(-m)``. ``m`` is kept in at least float32: a log-scale
    value rounded to bfloat16 (steps of 0.5 near 100) would no longer match the scale of ``c``
    and ``n``, and the error would compound over the steps."""

    c: Array
    n: Array
    m: Array


class _Layout(NamedTuple):
    hidden: int  # H = heads * d
    heads: int
    output_gate: bool
    eps: float

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads

    @property
    def projected(self) -> int:
        """Features of ``project``'s output: blocks q, k, v (H each), i, f (heads each), o."""
        return 3 * self.hidden + 2 * self.heads + (self.hidden if self.output_gate else 0)


def mlstm(
    hidden_size: int,
    num_heads: int,
    *,
    output_gate: bool = True,
    project_inputs: bool = True,
    eps: float = 1e-6,
) -> Cell:
    """An mLSTM cell with ``num_heads`` matrix memories of ``d = hidden_size / num_heads``.

    Args:
      hidden_size: H, the size of q, k, v and of the output; a multiple of ``num_heads``.
      num_heads: NH, heads with a ``(d, d)`` memory each and one input and forget gate each.
      output_gate: multiply the output by ``sigmoid(x W_o + b_o)`` (the paper's cell). The
        xLSTM block gates outside the cell instead (:func:`seqjax.blocks.mlstm_block`).
      project_inputs: ``False`` for a cell that reads ``[q, k, v, i~, f~]`` (``3H + 2NH``
        features per step, made by the caller, as the block does) and has no params.
      eps: added to the denominator (1e-6 in the references).

    Params: ``w_ih (D, P)``, ``b_ih (P,)`` with the blocks q, k, v (H each), i, f (NH each), o
    (H, with the output gate) in that order. The forget-gate biases start linearly spaced in
    [3, 6] over the heads, the input-gate biases at N(0, 0.1^2) (as ``xlstm`` does).
    Carry: :class:`MLSTMCarry`. Output: ``h (batch..., H)``.
    """
    fn = "mlstm"
    H = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    NH = _checks.check_positive_int(num_heads, "num_heads", fn)
    if H % NH:
        raise ValueError(
            f"{fn}: num_heads must divide hidden_size (each head has hidden_size/num_heads "
            f"features); got hidden_size={H}, num_heads={NH}"
        )
    output_gate = _checks.check_bool(output_gate, "output_gate", fn)
    project_inputs = _checks.check_bool(project_inputs, "project_inputs", fn)
    if project_inputs is False and output_gate:
        output_gate = False  # the caller gates the output
    if not (isinstance(eps, int | float) and not isinstance(eps, bool) and eps >= 0):
        raise ValueError(f"{fn}: eps must be a number >= 0; got {eps!r}")
    layout = _Layout(H, NH, output_gate, float(eps))
    recur = _step_fn(layout)
    forms = SequenceForms(run=_sequence_fn(layout, project_inputs), step=recur)
    return Cell(
        init=_init_fn(layout, project_inputs),
        initial_carry=_initial_carry_fn(layout),
        project=_common.project if project_inputs else _no_projection,
        recur=recur,
        output_size=H,
        name=fn,
        input_size=_common.input_size if project_inputs else (lambda p: layout.projected),
        sequence=forms,
    )


def _no_projection(params: Params, xs: Array) -> Array:
    del params
    return xs


def _init_fn(layout: _Layout, project_inputs: bool):
    fn = "mlstm"

    def init(key: Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        dtype = _common.float_dtype(dtype, fn)
        if not project_inputs:
            if input_size != layout.projected:
                raise ValueError(
                    f"{fn}: with project_inputs=False the inputs are [q, k, v, i, f], "
                    f"{layout.projected} features; got input_size={input_size}"
                )
            return {}
        H, NH = layout.hidden, layout.heads
        k_w, k_i = jax.random.split(key)
        w = jax.random.normal(k_w, (input_size, layout.projected)) / math.sqrt(input_size)
        gates = jnp.concatenate([0.1 * jax.random.normal(k_i, (NH,)), jnp.linspace(3.0, 6.0, NH)])
        b = jnp.zeros((layout.projected,)).at[3 * H : 3 * H + 2 * NH].set(gates)
        return {"w_ih": w.astype(dtype), "b_ih": b.astype(dtype)}

    return init


def _initial_carry_fn(layout: _Layout):
    H, NH, d = layout.hidden, layout.heads, layout.head_size

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> MLSTMCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        has_floats = any(
            jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating) for p in jax.tree.leaves(params)
        )
        dtype = precision.state_dtype(params) if has_floats else default_float_dtype()
        zeros = lambda n: jnp.zeros((*batch_shape, n), dtype)  # noqa: E731
        m = jnp.zeros((*batch_shape, NH), _wide(dtype))  # see MLSTMCarry
        return MLSTMCarry(zeros(NH * d * d), zeros(H), m)

    return initial_carry


def _wide(dtype) -> jnp.dtype:
    """The dtype of the gate and stabiliser arithmetic: at least float32, whose range keeps
    sums of thousands of log gates exact enough where bfloat16's 8 bits would not."""
    return jnp.promote_types(dtype, jnp.float32)


def split_projected(layout: _Layout, px: Array, dtype) -> tuple[Array, ...]:
    """``px (..., P)`` as per-head ``q, k, v (..., NH, d)`` (``k`` scaled by ``1/sqrt(d)``),
    gate pre-activations ``i, f (..., NH)`` in the wide dtype, and ``o (..., H)`` or None."""
    H, NH, d = layout.hidden, layout.heads, layout.head_size
    heads = lambda a: a.reshape(*a.shape[:-1], NH, d).astype(dtype)  # noqa: E731
    q, k, v = (heads(px[..., j * H : (j + 1) * H]) for j in range(3))
    gates = px[..., 3 * H : 3 * H + 2 * NH].astype(_wide(dtype))
    o = px[..., 3 * H + 2 * NH :].astype(dtype) if layout.output_gate else None
    return q, k / math.sqrt(d), v, gates[..., :NH], gates[..., NH:], o


def _read_out(layout: _Layout, h: Array, o: Array | None) -> Array:
    """Heads ``(..., NH, d)`` back to ``(..., H)``, times the output gate."""
    h = h.reshape(*h.shape[:-2], layout.hidden)
    return h if o is None else h * jax.nn.sigmoid(o)


def _step_fn(layout: _Layout):
    NH, d, eps = layout.heads, layout.head_size, layout.eps

    def recur(params: Params, carry: MLSTMCarry, px: Array) -> tuple[MLSTMCarry, Array]:
        """One stabilised step: ``px (batch..., P)``, carry leaves ``(batch..., ...)``."""
        del params
        dtype = carry.c.dtype
        with jax.named_scope("seqjax.mlstm"):
            q, k, v, i, f, o = split_projected(layout, px, dtype)
            c = carry.c.reshape(*carry.c.shape[:-1], NH, d, d)
            n = carry.n.reshape(*carry.n.shape[:-1], NH, d)
            m_old = carry.m.astype(_wide(dtype))
            log_f = jax.nn.log_sigmoid(f)
            m = jnp.maximum(log_f + m_old, i)
            f_gate = jnp.exp(log_f + m_old - m).astype(dtype)[..., None]
            i_gate = jnp.exp(i - m).astype(dtype)[..., None]
            c = f_gate[..., None] * c + i_gate[..., None] * (k[..., :, None] * v[..., None, :])
            n = f_gate * n + i_gate * k
            num = jnp.einsum("...k,...kv->...v", q, c)
            den = jnp.einsum("...k,...k->...", q, n)
            floor = jnp.exp(-m).astype(dtype)
            h = num / (jnp.maximum(jnp.abs(den), floor) + eps)[..., None]
            new = MLSTMCarry(
                c.reshape(carry.c.shape), n.reshape(carry.n.shape), m.astype(carry.m.dtype)
            )
            return new, _read_out(layout, h, o)

    return recur


class _State(NamedTuple):
    """A carry per head: ``c (..., NH, d, d)``, ``n (..., NH, d)``, ``m (..., NH)`` (wide)."""

    c: Array
    n: Array
    m: Array


def _heads_state(layout: _Layout, carry: MLSTMCarry) -> _State:
    NH, d = layout.heads, layout.head_size
    batch = carry.m.shape[:-1]
    return _State(
        carry.c.reshape(*batch, NH, d, d),
        carry.n.reshape(*batch, NH, d),
        carry.m.astype(_wide(carry.m.dtype)),
    )


def _flat_carry(state: _State, like: MLSTMCarry) -> MLSTMCarry:
    return MLSTMCarry(
        state.c.reshape(like.c.shape).astype(like.c.dtype),
        state.n.reshape(like.n.shape).astype(like.n.dtype),
        state.m.astype(like.m.dtype),
    )


def _log_weights(log_f: Array, i: Array, valid: Array | None, resets: Array | None):
    """The log weights of a chunk of ``L`` steps, all ``(..., NH, L[, L])``:

    ``log_d[t, s] = sum_(s<r<=t) log f_r + i~_s`` for ``s <= t`` in the same segment (else a
    huge negative number), the weight of step ``s``'s outer product in the state after step
    ``t``; ``log_g[t] = sum_(r<=t, same segment) log f_r``, the decay of the state the segment
    started from; ``restarted[t]``, whether a reset came before ``t`` in this chunk. A step
    past its length has ``log f = 0`` and no input: the identity.

    The sums are masked cumulative sums of same-sign terms, not differences of one running
    sum, so they stay exact to rounding over long chunks where ``cumsum(t) - cumsum(s)`` would
    cancel catastrophically in float32.
    """
    steps = log_f.shape[-1]
    never = jnp.asarray(jnp.finfo(log_f.dtype).min / 4, log_f.dtype)
    if valid is not None:
        log_f = jnp.where(valid, log_f, 0.0)
        i = jnp.where(valid, i, never)
    t = jnp.arange(steps)
    causal = t[:, None] >= t[None, :]
    if resets is None:
        same, restarted = causal, jnp.zeros((*log_f.shape[:-2], 1, steps), bool)
    else:
        segment = jnp.cumsum(resets.astype(jnp.int32), axis=-1)  # (..., 1, L)
        same = causal & (segment[..., :, None] == segment[..., None, :])
        restarted = segment > 0
    after = t[:, None] > t[None, :]  # step r = row contributes to the sums for columns s < r
    log_sum = jnp.cumsum(jnp.where(after, log_f[..., :, None], 0.0), axis=-2)
    log_d = jnp.where(same, log_sum + i[..., None, :], never)
    log_g = jnp.sum(jnp.where(same, log_f[..., None, :], 0.0), axis=-1)
    return log_d, log_g, restarted


def _read_state(q: Array, state: _State, guarded: bool = True) -> tuple[Array, Array]:
    """``q (..., L, d)`` read from a state: ``q @ C (..., L, d)`` and ``q . n (..., L)``.

    ``guarded``: under a ``lax.cond`` that skips a zero state. A state from outside the chunk
    loop is often zeros made under the caller's jit, and XLA:CPU (jaxlib 0.10) puts a dot with
    such a broadcast operand into a YNNPACK fusion that returns garbage in some compilations
    and not others (benchmarks/xla_ynn_dot_repro.py shows it without seqjax). A zero state
    folds the condition away with the dot; any other state is read in a branch of its own,
    where it is an operand, not a broadcast. The state a chunk loop carries is a loop variable,
    never a broadcast, and is read directly (the cond in every chunk would cost 40% at T=1024);
    the restart state is the same in every chunk, so it is read once for all steps."""

    def read():
        return q @ state.c, jnp.sum(q * state.n[..., None, :], -1)

    def zero():
        return jnp.zeros_like(q), jnp.zeros(q.shape[:-1], q.dtype)

    if not guarded:
        return read()
    nonzero = jnp.any(state.c != 0) | jnp.any(state.n != 0)
    return jax.lax.cond(nonzero, read, zero)


def _chunk(layout: _Layout, qkv_if, start: _State, restart, masks, carried: bool = False):
    """The quadratic form over one chunk: ``q, k, v (..., NH, L, d)``, ``i, f (..., NH, L)``,
    ``masks = (valid, resets)``, each ``(..., 1, L)`` or None, from ``start``. After a reset,
    from ``restart = (state, (q @ C, q . n))``, its reads made for all steps at once, or None.
    ``carried``: ``start`` is the state a chunk loop carries (see :func:`_read_state`).
    Returns the state after the chunk's last step and ``h (..., NH, L, d)``."""
    q, k, v, i, f = qkv_if
    dtype = q.dtype
    log_d, log_g, restarted = _log_weights(jax.nn.log_sigmoid(f), i, *masks)
    (q_c, q_n), m0 = _read_state(q, start, guarded=not carried), start.m[..., None]
    c0, n0 = start.c, start.n
    if restart is not None:  # a step after a reset starts from the restart state instead
        restart, (r_c, r_n) = restart
        q_c = jnp.where(restarted[..., None], r_c, q_c)
        q_n = jnp.where(restarted, r_n, q_n)
        m0 = jnp.where(restarted, restart.m[..., None], m0)
        last_restarted = restarted[..., -1]
        c0 = jnp.where(last_restarted[..., None, None], restart.c, c0)
        n0 = jnp.where(last_restarted[..., None], restart.n, n0)
    log_w0 = log_g + m0  # (..., NH, L): the log weight of the state the segment started from
    m = jnp.maximum(log_w0, jnp.max(log_d, axis=-1))
    weights = jnp.exp(log_d - m[..., None]).astype(dtype)  # <= 1: finite
    w0 = jnp.exp(log_w0 - m).astype(dtype)
    scores = (q @ jnp.swapaxes(k, -1, -2)) * weights
    num = w0[..., None] * q_c + scores @ v
    den = w0 * q_n + jnp.sum(scores, axis=-1)
    floor = jnp.exp(-m).astype(dtype)
    h = num / (jnp.maximum(jnp.abs(den), floor) + layout.eps)[..., None]
    last = weights[..., -1, :]  # the state after the last step: the last row's weights
    c = w0[..., -1, None, None] * c0 + jnp.swapaxes(k * last[..., None], -1, -2) @ v
    n = w0[..., -1, None] * n0 + jnp.sum(k * last[..., None], axis=-2)
    return _State(c, n, m[..., -1]), h


def _sequence_fn(layout: _Layout, project_inputs: bool):
    def run(params, xs, carry, *, chunk_size=None, valid=None, resets=None,
            restart_carry=None, remat=False):  # fmt: skip
        """The quadratic form (``chunk_size=None``) or the chunkwise form over time-major
        ``xs (time, batch..., D)``; see :class:`seqjax.types.SequenceForms`."""
        dtype = carry.c.dtype
        with jax.named_scope("seqjax.mlstm"):
            px = _common.project(params, xs) if project_inputs else xs
            q, k, v, i, f, o = split_projected(layout, px, dtype)
            # (batch..., NH, time, d) and (batch..., NH, time): time next to the features
            qkv_if = (*(jnp.moveaxis(a, 0, -2) for a in (q, k, v)),
                      *(jnp.moveaxis(a, 0, -1) for a in (i, f)))  # fmt: skip
            masks = tuple(None if a is None else jnp.moveaxis(a, 0, -1)[..., None, :]
                          for a in (valid, resets))  # fmt: skip
            start = _heads_state(layout, carry)
            restart = None
            if resets is not None:
                restart = start if restart_carry is None else _heads_state(layout, restart_carry)
            state, h = _chunks(layout, qkv_if, start, restart, masks, chunk_size, remat)
            h = jnp.moveaxis(h, -2, 0)  # (time, batch..., NH, d)
            ys = _read_out(layout, h, o)
            if valid is not None:
                ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
            return _flat_carry(state, carry), ys

    return run


def _chunks(layout, qkv_if, start, restart, masks, chunk_size, remat):
    """``_chunk`` over the whole sequence at once, or over chunks of ``chunk_size`` steps in a
    ``lax.scan`` that carries the state between them (padding steps are invalid: identity)."""
    steps = qkv_if[0].shape[-2]
    valid, resets = masks
    read = None if restart is None else _read_state(qkv_if[0], restart)  # (q @ C, q . n)

    def over(carried: bool):
        def body(state, chunk):
            piece, piece_masks, piece_read = chunk
            again = None if piece_read is None else (restart, piece_read)
            return _chunk(layout, piece, state, again, piece_masks, carried=carried)

        return jax.checkpoint(body) if remat else body

    if chunk_size is None or chunk_size >= steps:
        return over(False)(start, (qkv_if, masks, read))
    num = -(-steps // chunk_size)
    pad = num * chunk_size - steps
    if pad and valid is None:
        valid = jnp.ones((*qkv_if[3].shape[:-2], 1, steps), bool)

    def split(a, time_axis):  # (..., T, ...) -> (chunks, ..., L, ...)
        if a is None:
            return None
        axis = time_axis % a.ndim
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, pad)
        a = jnp.pad(a, widths) if pad else a
        shape = (*a.shape[:axis], num, chunk_size, *a.shape[axis + 1 :])
        return jnp.moveaxis(a.reshape(shape), axis, 0)

    q, k, v, i, f = qkv_if
    read = None if read is None else (split(read[0], -2), split(read[1], -1))
    chunks = ((split(q, -2), split(k, -2), split(v, -2), split(i, -1), split(f, -1)),
              (split(valid, -1), split(resets, -1)), read)  # fmt: skip
    state, h = jax.lax.scan(over(True), start, chunks)
    h = jnp.moveaxis(h, 0, -3)  # (..., NH, chunks, L, d)
    h = h.reshape(*h.shape[:-3], num * chunk_size, h.shape[-1])
    return state, h[..., :steps, :]
