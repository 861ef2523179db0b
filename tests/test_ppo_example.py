"""The PPO example (examples/ppo_lstm.py) on a tiny config: the update's one-call unroll with
``resets`` reproduces the states the agent acted with, and ``--no-memory`` resets every step."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gymnax")

import seqjax

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "ppo_lstm.py"


@pytest.fixture(scope="module")
def ppo():
    spec = importlib.util.spec_from_file_location("ppo_lstm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(ppo, memory=True):
    # Random CartPole episodes last ~20 steps: a 48-step rollout holds several boundaries.
    return ppo.Config(
        memory=memory, num_envs=4, num_steps=48, total_steps=2 * 4 * 48, hidden=8,
        epochs=1, minibatches=2, log_every=2,
    )  # fmt: skip


def test_resets_reproduce_acting_states(ppo):
    cfg = tiny(ppo)
    runner = ppo.init_runner(jax.random.key(0), cfg)
    # Two updates (rollout + learning) in the jitted scan; each checks itself before learning.
    runner, stats = ppo.make_update_chunk(cfg)(runner, 2)
    assert stats["logp_mismatch"].shape == (2,)
    assert float(stats["logp_mismatch"].max()) < 1e-5
    assert int(stats["episodes"].sum()) > 0
    # A third rollout, by hand: it starts mid-episode, with a carry from the last one.
    runner, ro = jax.jit(ppo.collect, static_argnums=0)(cfg, runner)
    start = np.asarray(ro.start)
    assert start[:, 1:].any(), "the rollout should hold episode boundaries"
    mid_episode = ~start[:, 0]
    assert mid_episode.any(), "some environment should be mid-episode at the rollout start"
    assert float(jnp.abs(ro.carry0.h[mid_episode]).min()) > 0
    logits, values = ppo.sequence_forward(cfg, runner.params, ro.carry0, ro.obs, ro.start)
    np.testing.assert_allclose(ppo.log_prob(logits, ro.action), ro.logp, atol=1e-5)
    np.testing.assert_allclose(values, ro.value, atol=1e-5)
    # Why the example passes reset_carry: without it, resets restart from the given carry
    # (here carry0), not from zeros, and new episodes come out wrong.
    cell = seqjax.lstm(cfg.hidden)
    xs = ppo.encode(runner.params, ro.obs)
    _, ys = seqjax.unroll(cell, runner.params["lstm"], xs, carry=ro.carry0, resets=ro.start)
    naive = ppo.log_prob(ppo.heads(runner.params, ys)[0], ro.action)
    assert float(jnp.abs(naive - ro.logp).max()) > 1e-3


def test_no_memory_resets_every_step(ppo):
    cfg = tiny(ppo, memory=False)
    runner = ppo.init_runner(jax.random.key(1), cfg)
    collect = jax.jit(ppo.collect, static_argnums=0)
    runner, _ = collect(cfg, runner)
    runner, ro = collect(cfg, runner)
    assert bool(ro.start.all())
    logits, values = ppo.sequence_forward(cfg, runner.params, ro.carry0, ro.obs, ro.start)
    np.testing.assert_allclose(ppo.log_prob(logits, ro.action), ro.logp, atol=1e-5)
    # Every step's output is that of one step from the zero carry: no memory at all.
    cell = seqjax.lstm(cfg.hidden)
    zero = cell.initial_carry(runner.params["lstm"], ro.obs.shape[:2])
    _, h = seqjax.step(cell, runner.params["lstm"], zero, ppo.encode(runner.params, ro.obs))
    alone_logits, alone_values = ppo.heads(runner.params, h)
    np.testing.assert_allclose(logits, alone_logits, atol=1e-5)
    np.testing.assert_allclose(values, alone_values, atol=1e-5)
    # And the learning step runs on it.
    _, stats = ppo.learn(cfg, runner, ro)
    assert np.isfinite(float(stats["policy_loss"]))
