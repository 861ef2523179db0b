"""``seqjax.diagnostics``: gradient norms through time and Jacobian norms, against independent
references (one perturbed step at a time in a Python loop, closed forms, NumPy SVDs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import diagnostics

D, H, T, B = 3, 4, 5, 3
LENGTHS = np.array([5, 2, 4])
CELLS = {
    "simple_rnn": lambda: seqjax.simple_rnn(H),
    "irnn": lambda: seqjax.irnn(H),
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "gru_reset_before": lambda: seqjax.gru(H, reset_after=False),
    "min_gru": lambda: seqjax.min_gru(H, log_space=True),
    "lru": lambda: seqjax.lru(H, H, input_layer=True),  # output read from a (2H) state
}


def inputs(batch=B, steps=T, features=D, seed=1, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), (batch, steps, features))


def make_loss(steps=T, width=H, seed=5):
    """A loss that reads every output (weighted per step) and the whole final carry."""
    weights = jax.random.normal(jax.random.key(seed), (B, steps, width))

    def loss(ys, final):
        carry_term = sum(jnp.sum(jnp.tanh(leaf) ** 2) for leaf in jax.tree.leaves(final))
        return jnp.sum(jnp.sin(ys) * weights) + 0.5 * carry_term

    return loss


# --- The reference: a Python loop over time, perturbed at one step -------------------------------


def ref_run(cell, params, xs, lengths, reverse, bump):
    """Runs ``cell`` step by step; ``bump(t)`` returns ``(dh, dc)`` added to the new state (and
    to the output, which is h) before the length mask, as the definition says."""
    steps = xs.shape[1]
    carry = cell.initial_carry(params, (xs.shape[0],))
    ys = [None] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        new, _ = cell.recur(params, carry, cell.project(params, xs[:, t]))
        dh, dc = bump(t)
        if isinstance(new, seqjax.LSTMCarry):
            new = seqjax.LSTMCarry(new.h + dh, new.c + dc)
            y = new.h
        elif cell.name == "lru":  # the output is Re(C h) + D u of the perturbed state
            new = new + dh
            px = cell.project(params, xs[:, t])
            state = new[:, :H] + 1j * new[:, H:]
            y = (
                jnp.real(state @ (params["c_re"] + 1j * params["c_im"]))
                + params["d"] * px[:, 2 * H :]
            )
        else:
            new = new + dh
            y = new
        valid = (t < lengths)[:, None]
        new = jax.tree.map(lambda a, b, valid=valid: jnp.where(valid, a, b), new, carry)
        carry, ys[t] = new, jnp.where(valid, y, 0.0)
    return carry, jnp.stack(ys, axis=1)


def ref_model(levels, params, xs, lengths, target, delta):
    """``levels``: a list of lists of cells (one, or forward and backward). ``delta`` is added
    at ``target = (level, direction, kind, step)``, kind 0 for h and 1 for c, and nowhere else."""
    finals = []
    for i, cells in enumerate(levels):
        outs = []
        for j, cell in enumerate(cells):
            p = params[i] if len(cells) == 1 else params[i][("forward", "backward")[j]]

            def bump(t, i=i, j=j):
                here = (target[0] == i) & (target[1] == j) & (target[3] == t)
                zero = jnp.zeros_like(delta)
                return (
                    jnp.where(here & (target[2] == 0), delta, zero),
                    jnp.where(here & (target[2] == 1), delta, zero),
                )

            outs.append(ref_run(cell, p, xs, lengths, reverse=j == 1, bump=bump))
        finals.append(outs[0][0] if len(outs) == 1 else (outs[0][0], outs[1][0]))
        xs = jnp.concatenate([ys for _, ys in outs], axis=-1)
    return xs, finals


def ref_norms(levels, params, xs, lengths, loss, stacked, width=H):
    """``(h, c)``, each ``(levels, batch, time)``: per-example norms of dL/dh_t and dL/dc_t, from
    one ``jax.grad`` per (level, direction, kind, step) with respect to a perturbation of the
    state at that one step (the grads vmapped over the targets, to compile once)."""
    batch, steps = xs.shape[:2]
    lengths = jnp.full((batch,), steps) if lengths is None else jnp.asarray(lengths)
    targets = np.array(
        [(i, j, kind, t) for i, cells in enumerate(levels) for j in range(len(cells))
         for kind in (0, 1) for t in range(steps)]
    )  # fmt: skip

    def of_delta(delta, target):
        ys, finals = ref_model(levels, params, xs, lengths, target, delta)
        return loss(ys, tuple(finals) if stacked else finals[0])

    grads = jax.jit(jax.vmap(jax.grad(of_delta), in_axes=(None, 0)))(
        jnp.zeros((batch, width)), jnp.asarray(targets)
    )
    squares = np.zeros((2, len(levels), batch, steps))
    for (i, _, kind, t), g in zip(targets, np.asarray(grads, np.float64), strict=True):
        squares[kind, i, :, t] += np.sum(g**2, axis=-1)
    return np.sqrt(squares)


def batch_mean(per_example, lengths):
    valid = np.ones(per_example.shape[-2:], bool)
    if lengths is not None:
        valid = np.arange(per_example.shape[-1])[None, :] < np.asarray(lengths)[:, None]
    return (per_example * valid).sum(-2) / np.maximum(valid.sum(0), 1)


def assert_close(got, want, tol=2e-5):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)


# --- gradient_through_time against the reference -----------------------------------------------


@pytest.mark.parametrize(
    "name, with_lengths",
    [("simple_rnn", True), ("irnn", False), ("lstm", True), ("gru", False),
     ("gru_reset_before", True), ("min_gru", True), ("lru", True)],
)  # fmt: skip
def test_cell_matches_per_step_grad(name, with_lengths):
    cell = CELLS[name]()
    params = cell.init(jax.random.key(0), D)
    xs, loss = inputs(), make_loss()
    lengths = jnp.asarray(LENGTHS) if with_lengths else None
    flow = diagnostics.gradient_through_time(cell, params, xs, loss, lengths=lengths)
    width = 2 * H if name == "lru" else H  # the LRU's complex state as [re, im]
    want, want_c = ref_norms([[cell]], [params], xs, lengths, loss, False, width)[:, 0]
    assert flow.norms.shape == (T,) and flow.per_example.shape == (B, T)
    assert_close(flow.per_example, want)
    assert_close(flow.norms, batch_mean(want, lengths))
    final, ys = seqjax.unroll(cell, params, xs, lengths=lengths)
    assert_close(flow.loss, loss(ys, final))
    if with_lengths:  # steps past a sequence's end: exactly zero
        past = np.arange(T)[None, :] >= LENGTHS[:, None]
        assert np.all(np.asarray(flow.per_example)[past] == 0.0)
        assert np.all(np.asarray(flow.per_example)[~past] > 0.0)
    if name == "lstm":
        assert_close(flow.c_per_example, want_c)
        assert_close(flow.c_norms, batch_mean(want_c, lengths))
    else:
        assert flow.c_norms is None and flow.c_per_example is None


def test_two_layer_time_major_stack_with_lengths():
    cells = [seqjax.lstm(H), seqjax.gru(H)]
    model = seqjax.stack(
        seqjax.rnn(cells[0], time_major=True, remat=True),
        seqjax.rnn(cells[1], time_major=True, unroll=2),
        dropout=0.3,  # not applied: no key
    )
    params = model.init(jax.random.key(0), D)
    xs, loss, lengths = inputs(), make_loss(), jnp.asarray(LENGTHS)
    flow = diagnostics.gradient_through_time(
        model,
        params,
        jnp.swapaxes(xs, 0, 1),
        lambda ys, final: loss(jnp.swapaxes(ys, 0, 1), final),
        lengths=lengths,
    )
    want, want_c = ref_norms([[c] for c in cells], params, xs, lengths, loss, stacked=True)
    assert flow.norms.shape == (2, T) and flow.per_example.shape == (2, B, T)
    assert_close(flow.per_example, want)
    assert_close(flow.norms, batch_mean(want, lengths))
    assert_close(flow.c_per_example[0], want_c[0])
    assert_close(flow.c_norms[0], batch_mean(want_c[0], lengths))
    assert np.all(np.isnan(np.asarray(flow.c_norms[1])))  # the GRU has no memory cell
    assert "layer 1: " in flow.summary()


def test_stack_with_bidirectional_level():
    cells = [[seqjax.gru(H), seqjax.lstm(H)], [seqjax.simple_rnn(H)]]
    model = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(cells[0][0]), seqjax.rnn(cells[0][1])),
        seqjax.rnn(cells[1][0]),
    )
    params = model.init(jax.random.key(0), D)
    xs, loss, lengths = inputs(), make_loss(), jnp.asarray(LENGTHS)
    flow = diagnostics.gradient_through_time(model, params, xs, loss, lengths=lengths)
    want, want_c = ref_norms(cells, params, xs, lengths, loss, stacked=True)
    assert_close(flow.per_example, want)
    assert_close(flow.c_per_example[0], want_c[0])  # the backward LSTM's c alone


def test_initial_carry_is_used():
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs, loss = inputs(), make_loss()
    carry = seqjax.LSTMCarry(jnp.full((B, H), 0.5), jnp.full((B, H), -1.0))
    flow = diagnostics.gradient_through_time(cell, params, xs, loss, carry=carry)
    final, ys = seqjax.unroll(cell, params, xs, carry=carry)
    assert_close(flow.loss, loss(ys, final))


# --- Closed forms and what they show -----------------------------------------------------------


def linear_recur(params, h, x):
    h = h @ params["w"] + x
    return h, h


# h_t = h_(t-1) W + x_t, W in the params: a user cell with no recur_split and no input_size.
LINEAR_CELL = seqjax.Cell(
    init=None,
    initial_carry=lambda params, batch_shape=(): jnp.zeros((*batch_shape, params["w"].shape[0])),
    project=seqjax.cell.identity_projection,
    recur=linear_recur,
    output_size=6,
    name="linear",
)


def project_on_v(ys, h):
    return jnp.sum(h @ jnp.arange(1.0, 7.0))


@pytest.mark.parametrize("a", [0.8, 1.1])
def test_linear_rnn_is_analytic(a):
    """With W = a * orthogonal and L = sum_b h_T . v, dL/dh_t = v (W^T)^(T-t): norm a^(T-t)|v|."""
    steps, width = 20, 6
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((width, width)))
    w = jnp.asarray(a * q, jnp.float32)
    xs = inputs(steps=steps, features=width)
    flow = diagnostics.gradient_through_time(LINEAR_CELL, {"w": w}, xs, project_on_v)
    want = a ** np.arange(steps - 1, -1, -1) * np.linalg.norm(np.arange(1.0, 7.0))  # v = 1..6
    np.testing.assert_allclose(np.asarray(flow.per_example), np.tile(want, (B, 1)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(flow.norms), want, rtol=1e-5)
    fit = flow.decay_fit()
    assert fit.rate == pytest.approx(a, rel=1e-5)
    assert fit.log_residual < 1e-5
    assert fit.last == pytest.approx(want[-1], rel=1e-5)
    assert fit.middle == pytest.approx(want[steps // 2], rel=1e-5)
    assert fit.first == pytest.approx(want[0], rel=1e-5)
    assert f"{a:.4f}" in flow.summary()


def test_tanh_rnn_vanishes_lstm_keeps_its_gradient():
    """At initialisation with small inputs, a tanh RNN whose recurrent matrix has spectral radius
    0.9 loses ~10% per step, cleanly exponentially; an LSTM with forget bias 1 much less."""
    steps, width = 60, 32
    xs = inputs(batch=8, steps=steps, features=4, scale=0.01)
    v = jax.random.normal(jax.random.key(2), (width,))

    def loss(ys, final):
        return jnp.sum(ys[:, -1] @ v)

    rnn = seqjax.simple_rnn(width)
    params = rnn.init(jax.random.key(0), 4)
    params = {**params, "w_hh": 0.9 * params["w_hh"]}
    assert float(jnp.max(jnp.abs(jnp.linalg.eigvals(params["w_hh"])))) == pytest.approx(0.9, 1e-4)
    tanh_fit = diagnostics.gradient_through_time(rnn, params, xs, loss).decay_fit()
    lstm = seqjax.lstm(width, forget_bias=1.0)
    lstm_fit = diagnostics.gradient_through_time(
        lstm, lstm.init(jax.random.key(0), 4), xs, loss
    ).decay_fit()
    print(f"\ntanh radius 0.9: {tanh_fit}\nlstm forget bias 1: {lstm_fit}")
    assert 0.85 < tanh_fit.rate < 0.92
    assert tanh_fit.log_residual < 0.05
    assert tanh_fit.first / tanh_fit.last < 0.9 ** (steps - 2)
    assert lstm_fit.rate > tanh_fit.rate + 0.04
    assert lstm_fit.first / lstm_fit.last > 5 * tanh_fit.first / tanh_fit.last


# --- Compilation and input errors --------------------------------------------------------------


def test_compiles_once_per_shapes():
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    traces = []

    def loss(ys, final):
        traces.append(ys.shape)
        return jnp.sum(ys**2)

    for seed in range(3):
        diagnostics.gradient_through_time(cell, params, inputs(seed=seed), loss)
    assert len(traces) == 1
    jitted = jax.jit(lambda p, x: diagnostics.gradient_through_time(cell, p, x, loss).norms)
    assert jitted(params, inputs()).shape == (T,)


def test_bad_input_is_refused_with_named_errors():
    cell = seqjax.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs = inputs()
    run = diagnostics.gradient_through_time
    with pytest.raises(
        ValueError, match=rf"xs must have 3 axes .*got shape \({T}, {D}\).*xs\[None\]"
    ):
        run(cell, params, xs[0], make_loss())
    with pytest.raises(TypeError, match=r"loss_fn must be a function.*got int"):
        run(cell, params, xs, 3)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar.*got shape \(3,\)"):
        run(cell, params, xs, lambda ys, final: jnp.sum(ys, axis=(1, 2)))
    with pytest.raises(ValueError, match="xs has 5 features"):
        run(cell, params, inputs(features=5), make_loss())
    with pytest.raises(ValueError, match=rf"lengths must lie in \[1, {T}\]"):
        run(cell, params, xs, make_loss(), lengths=jnp.array([7, 1, 1]))
    hand_made = seqjax.Layer(init=cell.init, apply=None, initial_carry=None, output_size=H)
    with pytest.raises(TypeError, match=r"built by hand.*seqjax.rnn"):
        run(hand_made, params, xs, make_loss())
    nested = seqjax.stack(seqjax.stack(seqjax.rnn(cell)))
    with pytest.raises(TypeError, match=r"stack layer 0 must be a seqjax.Cell.*got a stack layer"):
        run(nested, nested.init(jax.random.key(0), D), xs, make_loss())
    with pytest.raises(TypeError, match="model must be"):
        run("lstm", params, xs, make_loss())


# --- jacobian_norms ----------------------------------------------------------------------------


def numpy_tanh_jacobians(params, xs):
    """J_t = diag(1 - h_t^2) W_hh^T along the trajectory, in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.zeros(p["w_hh"].shape[0])
    jacs = []
    for x in np.asarray(xs, np.float64):
        h = np.tanh(x @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"])
        jacs.append((1 - h**2)[:, None] * p["w_hh"].T)
    return np.stack(jacs)


def numpy_lstm_jacobians(params, xs, eps=1e-6):
    """d [h_t, c_t] / d [h_(t-1), c_(t-1)] by central differences of a hand-written step."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n = p["w_hh"].shape[0]

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    def step(s, x):
        h, c = s[:n], s[n:]
        i, f, g, o = np.split(x @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"], 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        return np.concatenate([sigmoid(o) * np.tanh(c), c])

    s = np.zeros(2 * n)
    jacs = []
    for x in np.asarray(xs, np.float64):
        basis = np.eye(2 * n) * eps
        jacs.append(np.stack([(step(s + e, x) - step(s - e, x)) / (2 * eps) for e in basis], 1))
        s = step(s, x)
    return np.stack(jacs)


def numpy_norms(jacs, spans):
    def norm(m):
        return np.linalg.svd(m, compute_uv=False)[0]

    steps, n, _ = jacs.shape
    products = np.full((len(spans), steps), np.nan)
    for i, k in enumerate(spans):
        for t in range(k - 1, steps):
            m = np.eye(n)
            for s in range(t - k + 1, t + 1):
                m = jacs[s] @ m
            products[i, t] = norm(m)
    start, m = [], np.eye(n)
    for j in jacs:
        m = j @ m
        start.append(norm(m))
    return np.array([norm(j) for j in jacs]), products, np.array(start)


@pytest.mark.parametrize("name", ["simple_rnn", "lstm"])
def test_exact_jacobians_match_numpy(x64, name):
    steps, spans = 9, (1, 2, 4, 12)
    cell = {"simple_rnn": seqjax.simple_rnn(5), "lstm": seqjax.lstm(3)}[name]
    params = cell.init(jax.random.key(0), D, jnp.float64)
    xs = np.asarray(inputs(batch=1, steps=steps)[0], np.float64)
    result = diagnostics.jacobian_norms(cell, params, xs, spans=spans, method="exact")
    jacs = (numpy_tanh_jacobians if name == "simple_rnn" else numpy_lstm_jacobians)(params, xs)
    step, products, start = numpy_norms(jacs, spans)
    tol = 1e-10 if name == "simple_rnn" else 1e-7
    np.testing.assert_allclose(np.asarray(result.step), step, rtol=tol)
    np.testing.assert_allclose(np.asarray(result.products), products, rtol=tol)  # NaNs agree
    np.testing.assert_allclose(np.asarray(result.from_start), start, rtol=tol)
    assert result.method == "exact" and result.spans == spans
    assert result.state_size == (5 if name == "simple_rnn" else 6)
    assert np.all(np.isnan(np.asarray(result.products[3])))  # span 12 > 9 steps


def test_power_iteration_matches_exact(monkeypatch):
    cell = seqjax.lstm(6)
    params = cell.init(jax.random.key(0), D)
    xs = inputs(batch=2, steps=8)
    kwargs = dict(spans=(1, 3), from_start=True)
    exact = diagnostics.jacobian_norms(cell, params, xs, method="exact", **kwargs)
    monkeypatch.setattr(diagnostics, "EXACT_MAX_STATE", 11)  # "auto" on a state of 12: power
    power = diagnostics.jacobian_norms(cell, params, xs, method="auto", **kwargs)
    assert exact.method == "exact" and power.method == "power" and power.state_size == 12
    assert power.step.shape == (2, 8) and power.from_start.shape == (2, 8)
    assert power.products.shape == (2, 2, 8)
    for a, b in [(power.step, exact.step), (power.products, exact.products),
                 (power.from_start, exact.from_start)]:  # fmt: skip
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3)
    for result in (exact, power):  # a window of one step is the step itself
        np.testing.assert_allclose(
            np.asarray(result.products[:, 0]), np.asarray(result.step), rtol=1e-6
        )


def test_batched_is_per_sequence():
    cell = seqjax.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs = inputs()
    batched = diagnostics.jacobian_norms(cell, params, xs, spans=(2,))
    assert batched.method == "exact" and batched.step.shape == (B, T)
    for b in range(B):
        one = diagnostics.jacobian_norms(cell, params, xs[b], spans=(2,))
        assert one.step.shape == (T,) and one.products.shape == (1, T)
        np.testing.assert_allclose(np.asarray(batched.step[b]), np.asarray(one.step), rtol=1e-5)
        np.testing.assert_allclose(
            np.asarray(batched.products[b]), np.asarray(one.products), rtol=1e-5
        )


def test_jacobian_norms_errors():
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    run = diagnostics.jacobian_norms
    with pytest.raises(ValueError, match="unknown method 'svd'"):
        run(cell, params, inputs(), method="svd")
    with pytest.raises(ValueError, match="each of spans must be a positive integer; got 0"):
        run(cell, params, inputs(), spans=(1, 0))
    with pytest.raises(ValueError, match=r"xs must be \(time, features\).*got shape"):
        run(cell, params, jnp.zeros((2, 2, T, D)))
    with pytest.raises(TypeError, match=r"got a Layer. For seqjax.rnn"):
        run(seqjax.rnn(cell), params, inputs())
    with pytest.raises(ValueError, match="carry has a leaf of shape"):
        run(cell, params, inputs(), carry=cell.initial_carry(params, (2,)))


def test_tiny_gradients_do_not_underflow_in_float32():
    # A linear RNN shrinking by 0.3 per step: after 60 steps the gradient is ~4e-32, whose
    # square underflows float32; the norm must still follow 0.3 ** (T - t).
    hidden, steps = 4, 60
    cell = seqjax.simple_rnn(hidden)
    params = cell.init(jax.random.key(0), 1)
    params = {**params, "w_hh": 0.3 * jnp.eye(hidden)}
    xs = jnp.zeros((1, steps, 1))
    v = jnp.ones(hidden) / 2.0  # |v| = 1

    def loss_fn(ys, carry):
        return jnp.sum(ys[:, -1] @ v)

    # tanh'(0) = 1 along the zero trajectory, so the chain is exactly linear there.
    flow = diagnostics.gradient_through_time(cell, params, xs, loss_fn)
    expected = 0.3 ** np.arange(steps - 1, -1, -1, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(flow.norms, np.float64), expected, rtol=1e-4)


def sum_of_outputs(ys, final_carry):
    del final_carry
    return jnp.sum(jnp.sin(ys))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradient_flow_with_resets_is_each_segment_alone(x64, bidirectional):
    """No gradient crosses a reset: the per-example norms over ``[0, r)`` and ``[r, T)`` are
    those of each segment run alone."""
    make = lambda: seqjax.rnn(seqjax.lstm(4))  # noqa: E731
    model = seqjax.bidirectional(make(), make()) if bidirectional else make()
    params = model.init(jax.random.key(0), 3, jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (2, 9, 3), jnp.float64)
    r = 4
    resets = np.zeros((2, 9), bool)
    resets[:, r] = True
    flow = seqjax.diagnostics.gradient_through_time(
        model, params, xs, sum_of_outputs, resets=resets
    )
    first = seqjax.diagnostics.gradient_through_time(model, params, xs[:, :r], sum_of_outputs)
    second = seqjax.diagnostics.gradient_through_time(model, params, xs[:, r:], sum_of_outputs)
    expected = np.concatenate([first.per_example, second.per_example], axis=-1)
    np.testing.assert_allclose(flow.per_example, expected, rtol=1e-10, atol=1e-12)


def test_jacobian_norms_with_resets_are_zero_at_the_reset():
    cell = seqjax.gru(4)
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (8, 3))
    resets = np.zeros(8, bool)
    resets[5] = True
    got = seqjax.diagnostics.jacobian_norms(cell, params, xs, spans=(2,), resets=resets)
    plain = seqjax.diagnostics.jacobian_norms(cell, params, xs[:5], spans=(2,))
    after = seqjax.diagnostics.jacobian_norms(cell, params, xs[5:], spans=(2,))
    assert got.step[5] == 0
    np.testing.assert_allclose(got.step[:5], plain.step, rtol=1e-5)
    np.testing.assert_allclose(got.step[6:], after.step[1:], rtol=1e-5)
    assert got.products[0, 5] == 0 and got.products[0, 6] == 0  # windows across the reset
    with pytest.raises(ValueError, match="jacobian_norms: resets must have the shape"):
        seqjax.diagnostics.jacobian_norms(cell, params, xs, resets=np.zeros(7, bool))
