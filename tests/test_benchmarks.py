"""The benchmark scripts compare like with like: each pair of variants computes the same values."""

import chex
import jax
import jax.numpy as jnp

import seqjax
from benchmarks import cpu_findings


def test_cpu_findings_variants_agree():
    T, B, H = 5, 3, 4
    keys = jax.random.split(jax.random.key(0), 4)
    residuals = jax.nn.sigmoid(jax.random.normal(keys[0], (T, B, 5 * H)))
    c_prev = jax.random.normal(keys[1], (T, B, H))
    w_hh = jax.random.normal(keys[2], (H, 4 * H))
    d_gates = jax.random.normal(keys[3], (T, B, 4 * H))

    stacked = cpu_findings.stacked(residuals, c_prev)
    separate = cpu_findings.separate(tuple(jnp.split(residuals, 5, axis=-1)), c_prev)
    chex.assert_trees_all_close(stacked, separate, rtol=1e-6)
    assert float(jnp.abs(stacked[1]).max()) > 0  # the loop did real work

    contracted = cpu_findings.contract_last_axis(w_hh, d_gates)
    transposed = cpu_findings.transposed_copy(w_hh, d_gates)
    chex.assert_trees_all_close(contracted, transposed, rtol=1e-5, atol=1e-6)
    # and both equal dG @ W_hh^T written out step by step in NumPy-style JAX
    dh = jnp.zeros((B, H))
    for t in range(T):
        dh = jnp.tanh((d_gates[t] + jnp.tile(dh, (1, 4))) @ w_hh.T)
    chex.assert_trees_all_close(contracted[0], dh, rtol=1e-5, atol=1e-6)


def test_cpu_findings_rnn_gradient_same_either_way():
    params = seqjax.simple_rnn(4).init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    in_step = cpu_findings.rnn_gradient(4, False)(params, xs)
    hoisted = cpu_findings.rnn_gradient(4, True)(params, xs)
    chex.assert_trees_all_close(in_step, hoisted, rtol=1e-5, atol=1e-6)
