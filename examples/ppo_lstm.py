"""PPO with an LSTM policy on CartPole-v1 with the velocities hidden, episode boundaries as
seqjax ``resets``.

The agent sees only the cart position and the pole angle (``obs[[0, 2]]``), so it must infer
the velocities from the last few observations: a small memory benchmark. Acting runs the LSTM
one step at a time over ``N`` environments for ``T`` steps, zeroing the carry of every
environment whose episode just ended. The update re-runs the LSTM over the whole ``(N, T)``
rollout in one :func:`seqjax.unroll` call, from the carry saved at the rollout's start, with
``resets`` = "this step starts a new episode", so training sees exactly the states acting saw
(checked every update: the recomputed log-probs equal the acting ones).

``--no-memory`` is the same agent with a reset before every step: an LSTM that always starts
from the zero carry is a feed-forward network of the current observation.

Run ``python examples/ppo_lstm.py --help`` for the options; ``examples/README.md`` has results.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import seqjax

OBSERVED = jnp.array([0, 2])  # cart position, pole angle: no velocities
OBS_SCALE = jnp.array([2.4, 0.21])  # the termination thresholds, so inputs lie in [-1, 1]
NUM_ACTIONS = 2


class Config(NamedTuple):
    """The hyperparameters. ``total_steps`` counts environment steps over all environments."""

    memory: bool = True
    num_envs: int = 32
    num_steps: int = 128
    total_steps: int = 1_048_576  # 256 updates of 32 x 128
    hidden: int = 64
    lr: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    epochs: int = 4
    minibatches: int = 4
    max_grad_norm: float = 0.5
    log_every: int = 16

    @property
    def num_updates(self) -> int:
        return max(1, self.total_steps // (self.num_envs * self.num_steps))


class Rollout(NamedTuple):
    """One rollout, batch-major: leaves ``(N, T, ...)`` except ``carry0`` and ``last_value``.

    ``start[n, t]``: step ``t`` starts a new episode (the episode ended at ``t - 1``; always
    true without memory): the carry was zeroed before it. ``carry0``: the carry before step 0
    (before its reset), as acting had it."""

    obs: jax.Array
    start: jax.Array
    action: jax.Array
    logp: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array  # the episode ended at this step (terminated or truncated)
    truncated: jax.Array  # it ended at the time limit only
    episode_return: jax.Array  # the episode's return where ``done``, else 0
    carry0: Any
    last_value: jax.Array


class Runner(NamedTuple):
    """What the training loop carries from one update to the next."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array  # (N, 2), the observed part
    start: jax.Array  # (N,) the next step starts an episode
    carry: Any  # the LSTM carry after the last step
    running_return: jax.Array  # (N,) return so far of each current episode
    key: jax.Array


# --------------------------------------------------------------------------- the network


def observe(obs: jax.Array) -> jax.Array:
    """The partially observed, scaled observation: ``(..., 4) -> (..., 2)``."""
    return obs[..., OBSERVED] / OBS_SCALE


def _dense(key: jax.Array, n_in: int, n_out: int, scale: float) -> dict:
    w = jax.nn.initializers.orthogonal(scale)(key, (n_in, n_out))
    return {"w": w, "b": jnp.zeros((n_out,))}


def _apply_dense(p: dict, x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def init_params(key: jax.Array, cfg: Config) -> dict:
    """Encoder (2 -> H, tanh), LSTM (H), policy and value heads (H -> H -> out)."""
    keys = jax.random.split(key, 6)
    h, s2 = cfg.hidden, float(np.sqrt(2.0))
    return {
        "enc": _dense(keys[0], 2, h, s2),
        "lstm": seqjax.lstm(h).init(keys[1], h),
        "pi1": _dense(keys[2], h, h, s2),
        "pi2": _dense(keys[3], h, NUM_ACTIONS, 0.01),
        "v1": _dense(keys[4], h, h, s2),
        "v2": _dense(keys[5], h, 1, 1.0),
    }


def encode(params: dict, obs: jax.Array) -> jax.Array:
    return jnp.tanh(_apply_dense(params["enc"], obs))


def heads(params: dict, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Policy logits ``(..., 2)`` and value ``(...)`` from the LSTM output."""
    logits = _apply_dense(params["pi2"], jnp.tanh(_apply_dense(params["pi1"], h)))
    value = _apply_dense(params["v2"], jnp.tanh(_apply_dense(params["v1"], h)))[..., 0]
    return logits, value


def zero_where(start: jax.Array, carry: Any) -> Any:
    """The carry with the rows where ``start (N,)`` is true set to zeros."""
    return jax.tree.map(lambda c: jnp.where(start[:, None], jnp.zeros_like(c), c), carry)


def act_step(cfg: Config, params: dict, carry: Any, obs: jax.Array, start: jax.Array):
    """One acting step for ``N`` environments: the carry is zeroed where ``start``, then one
    LSTM step (``seqjax.step``). Returns ``(carry, logits, value)``."""
    cell = seqjax.lstm(cfg.hidden)
    carry = zero_where(start, carry)
    carry, h = seqjax.step(cell, params["lstm"], carry, encode(params, obs))
    logits, value = heads(params, h)
    return carry, logits, value


def sequence_forward(cfg: Config, params: dict, carry0: Any, obs: jax.Array, start: jax.Array):
    """The network over whole rollouts, ``obs (N, T, 2)``, ``start (N, T)``, in one
    :func:`seqjax.unroll` call. Returns logits ``(N, T, 2)`` and values ``(N, T)``.

    The rollout goes on from ``carry0`` (each environment's state in mid-episode), and each
    new episode starts from zeros: ``resets`` flag the episode starts and ``reset_carry`` is
    the carry they restart from. No gradient crosses a reset."""
    cell = seqjax.lstm(cfg.hidden)
    xs = encode(params, obs)
    zeros = cell.initial_carry(params["lstm"], (obs.shape[0],))
    _, h = seqjax.unroll(cell, params["lstm"], xs, carry=carry0, resets=start, reset_carry=zeros)
    return heads(params, h)


def log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(logp, action[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------- acting


def make_env():
    env, env_params = gymnax.make("CartPole-v1")
    return env, env_params


def reset_envs(key: jax.Array, cfg: Config, num: int | None = None):
    """``num`` (default ``cfg.num_envs``) fresh environments: ``(env_state, observed obs)``."""
    env, env_params = make_env()
    keys = jax.random.split(key, num or cfg.num_envs)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
    return env_state, observe(obs)


def collect(cfg: Config, runner: Runner) -> tuple[Runner, Rollout]:
    """``T`` steps in ``N`` environments (which auto-reset) with the current policy."""
    env, env_params = make_env()
    params = runner.params

    def one_step(state, _):
        env_state, obs, start, carry, running, key = state
        key, k_act, k_env = jax.random.split(key, 3)
        start = start | (not cfg.memory)  # without memory every step starts afresh
        carry, logits, value = act_step(cfg, params, carry, obs, start)
        action = jax.random.categorical(k_act, logits)
        env_keys = jax.random.split(k_env, cfg.num_envs)
        next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(
            env.step, in_axes=(0, 0, 0, None)
        )(env_keys, env_state, action, env_params)
        done = terminated | truncated
        running = running + reward
        step = dict(
            obs=obs, start=start, action=action, logp=log_prob(logits, action),
            value=value, reward=reward, done=done, truncated=truncated & ~terminated,
            episode_return=jnp.where(done, running, 0.0),
        )  # fmt: skip
        running = jnp.where(done, 0.0, running)
        return (env_state, observe(next_obs), done, carry, running, key), step

    init = (runner.env_state, runner.obs, runner.start, runner.carry, runner.running_return)
    state, steps = jax.lax.scan(one_step, (*init, runner.key), None, length=cfg.num_steps)
    env_state, obs, start, carry, running, key = state
    _, _, last_value = act_step(cfg, params, carry, obs, start | (not cfg.memory))
    steps = {k: jnp.swapaxes(v, 0, 1) for k, v in steps.items()}  # (T, N) -> (N, T)
    rollout = Rollout(**steps, carry0=runner.carry, last_value=last_value)
    runner = runner._replace(
        env_state=env_state, obs=obs, start=start, carry=carry, running_return=running, key=key
    )
    return runner, rollout


def gae(cfg: Config, ro: Rollout) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and returns, ``(N, T)`` each. A terminal step does not
    bootstrap; a step cut by the 500-step limit bootstraps from its own value (the next
    observation's value would need one more LSTM step); the advantages stop at both."""

    def back(carry, inp):
        next_adv, next_value = carry
        reward, value, done, truncated = inp
        bootstrap = jnp.where(truncated, value, jnp.where(done, 0.0, next_value))
        delta = reward + cfg.gamma * bootstrap - value
        adv = delta + cfg.gamma * cfg.gae_lambda * (1.0 - done) * next_adv
        return (adv, value), adv

    inputs = (ro.reward.T, ro.value.T, ro.done.T.astype(jnp.float32), ro.truncated.T)
    init = (jnp.zeros_like(ro.last_value), ro.last_value)
    _, adv = jax.lax.scan(back, init, inputs, reverse=True)
    adv = adv.T
    return adv, adv + ro.value


# --------------------------------------------------------------------------- learning


def ppo_loss(cfg: Config, params: dict, batch: tuple) -> tuple[jax.Array, dict]:
    """Clipped surrogate + clipped value loss - entropy bonus over whole sequences."""
    ro, adv, ret = batch
    logits, value = sequence_forward(cfg, params, ro.carry0, ro.obs, ro.start)
    logp = log_prob(logits, ro.action)
    ratio = jnp.exp(logp - ro.logp)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
    policy_loss = -jnp.minimum(ratio * adv, clipped * adv).mean()
    value_clipped = ro.value + jnp.clip(value - ro.value, -cfg.clip_eps, cfg.clip_eps)
    value_loss = 0.5 * jnp.maximum((value - ret) ** 2, (value_clipped - ret) ** 2).mean()
    log_all = jax.nn.log_softmax(logits)
    entropy = -(jnp.exp(log_all) * log_all).sum(-1).mean()
    loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    steps = cfg.num_updates * cfg.epochs * cfg.minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, steps) if cfg.anneal_lr else cfg.lr
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))


def logp_mismatch(cfg: Config, params: dict, ro: Rollout) -> jax.Array:
    """Largest ``|recomputed log-prob - acting log-prob|`` over the rollout, with the params
    that acted: zero up to round-off when the resets reproduce the acting-time states."""
    logits, _ = sequence_forward(cfg, params, ro.carry0, ro.obs, ro.start)
    return jnp.max(jnp.abs(log_prob(logits, ro.action) - ro.logp))


def learn(cfg: Config, runner: Runner, ro: Rollout) -> tuple[Runner, dict]:
    """``epochs`` passes over the rollout in minibatches of whole environments (sequences)."""
    optimizer = make_optimizer(cfg)
    adv, ret = gae(cfg, ro)
    grad_fn = jax.grad(lambda p, b: ppo_loss(cfg, p, b), has_aux=True)
    per_batch = cfg.num_envs // cfg.minibatches

    def minibatch(state, idx):
        params, opt_state = state
        batch = jax.tree.map(lambda x: x[idx], (ro, adv, ret))
        grads, stats = grad_fn(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), stats

    def epoch(state, key):
        order = jax.random.permutation(key, cfg.num_envs)
        return jax.lax.scan(minibatch, state, order.reshape(cfg.minibatches, per_batch))

    key, sub = jax.random.split(runner.key)
    state = (runner.params, runner.opt_state)
    (params, opt_state), stats = jax.lax.scan(epoch, state, jax.random.split(sub, cfg.epochs))
    runner = runner._replace(params=params, opt_state=opt_state, key=key)
    return runner, jax.tree.map(jnp.mean, stats)


def update(cfg: Config, runner: Runner) -> tuple[Runner, dict]:
    """One PPO iteration: a rollout, the resets check, the learning epochs."""
    runner, ro = collect(cfg, runner)
    mismatch = logp_mismatch(cfg, runner.params, ro)
    runner, stats = learn(cfg, runner, ro)
    stats |= {
        "logp_mismatch": mismatch,
        "return_sum": ro.episode_return.sum(),
        "episodes": ro.done.sum(),
    }
    return runner, stats


def init_runner(key: jax.Array, cfg: Config) -> Runner:
    k_params, k_env, k_run = jax.random.split(key, 3)
    params = init_params(k_params, cfg)
    env_state, obs = reset_envs(k_env, cfg)
    carry = seqjax.lstm(cfg.hidden).initial_carry(params["lstm"], (cfg.num_envs,))
    return Runner(
        params=params, opt_state=make_optimizer(cfg).init(params), env_state=env_state,
        obs=obs, start=jnp.ones((cfg.num_envs,), bool), carry=carry,
        running_return=jnp.zeros((cfg.num_envs,)), key=k_run,
    )  # fmt: skip


def make_update_chunk(cfg: Config):
    """A jitted function running ``n`` updates in one ``lax.scan`` (``n`` static)."""

    def chunk(runner: Runner, n: int):
        return jax.lax.scan(lambda r, _: update(cfg, r), runner, None, length=n)

    return jax.jit(chunk, static_argnums=1)


# --------------------------------------------------------------------------- evaluation


def evaluate(cfg: Config, params: dict, key: jax.Array, episodes: int = 100) -> jax.Array:
    """Greedy (argmax) returns of ``episodes`` fresh episodes, one per environment."""
    env, env_params = make_env()
    k_reset, k_run = jax.random.split(key)
    env_state, obs = reset_envs(k_reset, cfg, episodes)
    carry = seqjax.lstm(cfg.hidden).initial_carry(params["lstm"], (episodes,))
    start = jnp.full((episodes,), not cfg.memory)

    def one_step(state, key):
        env_state, obs, carry, alive, total = state
        carry, logits, _ = act_step(cfg, params, carry, obs, start)
        action = jnp.argmax(logits, axis=-1)
        keys = jax.random.split(key, episodes)
        next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(
            env.step, in_axes=(0, 0, 0, None)
        )(keys, env_state, action, env_params)
        done = terminated | truncated
        total = total + reward * alive
        return (env_state, observe(next_obs), carry, alive & ~done, total), None

    alive = jnp.ones((episodes,), bool)
    init = (env_state, obs, carry, alive, jnp.zeros((episodes,)))
    limit = env_params.max_steps_in_episode
    (_, _, _, _, total), _ = jax.lax.scan(one_step, init, jax.random.split(k_run, limit))
    return total


# --------------------------------------------------------------------------- the CLI


def train(cfg: Config, seed: int, verbose: bool = True) -> dict:
    """Trains, printing progress; returns the per-update statistics (numpy) and the params."""
    runner = init_runner(jax.random.key(seed), cfg)
    update_chunk = make_update_chunk(cfg)
    history: dict[str, list] = {}
    done_updates, start_time = 0, time.perf_counter()
    while done_updates < cfg.num_updates:
        n = min(cfg.log_every, cfg.num_updates - done_updates)
        runner, stats = update_chunk(runner, n)
        stats = jax.device_get(stats)
        for k, v in stats.items():
            history.setdefault(k, []).append(np.asarray(v))
        done_updates += n
        mismatch = float(np.max(stats["logp_mismatch"]))
        assert mismatch < 1e-4, f"training states differ from acting states: {mismatch:.2e}"
        if verbose:
            episodes = stats["episodes"].sum()
            mean = stats["return_sum"].sum() / max(episodes, 1)
            print(
                f"update {done_updates:4d}/{cfg.num_updates}  "
                f"env steps {done_updates * cfg.num_envs * cfg.num_steps:8d}  "
                f"mean return {mean:6.1f} ({episodes} episodes)  "
                f"entropy {float(stats['entropy'].mean()):.3f}  "
                f"max |dlogp| at update start {mismatch:.1e}  "
                f"{time.perf_counter() - start_time:6.1f} s",
                flush=True,
            )
    history = {k: np.concatenate(v) for k, v in history.items()}
    history["wall_s"] = time.perf_counter() - start_time
    return {"history": history, "params": runner.params}


def final_training_return(history: dict, fraction: float = 0.1) -> float:
    """Mean return of the episodes completed in the last ``fraction`` of the updates."""
    n = max(1, round(len(history["episodes"]) * fraction))
    episodes = history["episodes"][-n:].sum()
    return float(history["return_sum"][-n:].sum() / max(episodes, 1))


def parse_args(argv=None) -> tuple[Config, int]:
    default = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-memory", action="store_true", help="reset the LSTM every step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=default.total_steps, help="env steps")
    parser.add_argument("--envs", type=int, default=default.num_envs)
    parser.add_argument("--rollout", type=int, default=default.num_steps, help="steps T")
    parser.add_argument("--hidden", type=int, default=default.hidden)
    parser.add_argument("--lr", type=float, default=default.lr)
    parser.add_argument("--ent-coef", type=float, default=default.ent_coef)
    parser.add_argument("--epochs", type=int, default=default.epochs)
    parser.add_argument("--minibatches", type=int, default=default.minibatches)
    parser.add_argument("--log-every", type=int, default=default.log_every, help="updates")
    args = parser.parse_args(argv)
    cfg = Config(
        memory=not args.no_memory, num_envs=args.envs, num_steps=args.rollout,
        total_steps=args.steps, hidden=args.hidden, lr=args.lr, ent_coef=args.ent_coef,
        epochs=args.epochs, minibatches=args.minibatches, log_every=args.log_every,
    )  # fmt: skip
    return cfg, args.seed


def main(argv=None) -> None:
    cfg, seed = parse_args(argv)
    name = "LSTM (memory)" if cfg.memory else "LSTM reset every step (no memory)"
    print(f"PPO, {name}, CartPole-v1 without velocities, seed {seed}: {cfg}")
    out = train(cfg, seed)
    history = out["history"]
    greedy = evaluate(cfg, out["params"], jax.random.key(seed + 10_000))
    steps = cfg.num_updates * cfg.num_envs * cfg.num_steps
    print(
        f"final: memory={cfg.memory} seed={seed} env_steps={steps} "
        f"train_return_last10%={final_training_return(history):.1f} "
        f"greedy_return_100_episodes={float(greedy.mean()):.1f} "
        f"wall_s={history['wall_s']:.0f}"
    )


if __name__ == "__main__":
    main()
