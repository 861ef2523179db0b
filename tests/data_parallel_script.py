"""Data-parallel checks on simulated CPU devices, run by tests/test_data_parallel.py as

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/data_parallel_script.py DIR

(the flag must be set before JAX starts, hence a process of its own). Prints one line per check
and exits non-zero on the first failure."""

import sys

import chex
import jax
import numpy as np

import seqjax
from seqjax import train
from seqjax.tasks import adding
from seqjax.train import losses

TOL = dict(rtol=2e-5, atol=2e-6)  # float32 round-off: the all-reduce sums in another order


def setup():
    layer = seqjax.rnn(seqjax.lstm(16))
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"rnn": layer.init(k1, 2), "out": 0.1 * jax.random.normal(k2, (16,))}
    xs, ys = adding.batch(jax.random.key(1), 256, 12)
    data = {"inputs": np.asarray(xs), "targets": np.asarray(ys)}

    def model(params, batch, key):
        _, out = layer.apply(params["rnn"], batch["inputs"], key=key)
        return out[:, -1] @ params["out"] + 1.0

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    return model, loss, params, data


def run(run_dir, steps, mesh=None, resume=False):
    model, loss, params, data = setup()
    return train.fit(
        model, loss, params, train.optimizer(learning_rate=1e-2, clip_norm=1.0), data,
        steps=steps, batch_size=32, eval_every=4, checkpoint_every=4, run_dir=run_dir,
        resume=resume, seed=3, log=lambda line: None, mesh=mesh,
    )  # fmt: skip


def main(tmp: str) -> None:
    assert jax.device_count() == 4, f"expected 4 simulated devices, got {jax.device_count()}"
    mesh = train.data_mesh()

    # 1. One sharded train step gives the single-device loss and params.
    model, loss, params, data = setup()
    optimizer = train.optimizer(learning_rate=1e-2, clip_norm=1.0)
    step = train.make_train_step(model, loss, optimizer, clip_norm=1.0, donate=False)
    batch = {k: v[:32] for k, v in data.items()}
    state = train.TrainState.create(params, optimizer)
    single_state, single_metrics = step(state, batch, jax.random.key(0))
    sharded_batch = train.shard_batch(batch, mesh)
    shard_rows = sorted({s.data.shape[0] for s in sharded_batch["inputs"].addressable_shards})
    devices = {s.device for s in sharded_batch["inputs"].addressable_shards}
    assert shard_rows == [8] and len(devices) == 4, (shard_rows, devices)
    print("batch of 32 split into 4 shards of 8 rows, one per device")
    replicated = train.sharding.replicate(state, mesh)
    sharded_state, sharded_metrics = step(replicated, sharded_batch, jax.random.key(0))
    chex.assert_trees_all_close(sharded_metrics["loss"], single_metrics["loss"], **TOL)
    chex.assert_trees_all_close(sharded_state.params, single_state.params, **TOL)
    leaf = jax.tree.leaves(sharded_state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    print(
        f"one step: loss {float(sharded_metrics['loss']):.6f} sharded vs "
        f"{float(single_metrics['loss']):.6f} on one device; params agree, replicated"
    )

    # 2. fit with mesh= shards every batch, and matches fit on one device.
    recorded = []
    original = train.sharding.shard_batch

    def recording(batch, mesh):
        out = original(batch, mesh)
        recorded.append(out["inputs"].addressable_shards[0].data.shape[0])
        return out

    train.sharding.shard_batch = recording
    sharded_final, sharded_history = run(f"{tmp}/sharded", 8, mesh)
    train.sharding.shard_batch = original
    assert recorded == [8] * 8, recorded
    single_final, single_history = run(f"{tmp}/single", 8)
    chex.assert_trees_all_close(sharded_final, single_final, **TOL)
    np.testing.assert_allclose(sharded_history[-1]["loss"], single_history[-1]["loss"], **TOL)
    print(
        f"fit, 8 steps: loss {sharded_history[-1]['loss']:.6f} (4 devices) vs "
        f"{single_history[-1]['loss']:.6f} (1 device); params agree"
    )

    # 3. Checkpoints cross over: sharded -> one device, and one device -> sharded.
    run(f"{tmp}/a", 4, mesh)  # stops at step 4 with a checkpoint
    resumed_single, _ = run(f"{tmp}/a", 8, resume=True)
    chex.assert_trees_all_close(resumed_single, single_final, **TOL)
    run(f"{tmp}/b", 4)
    resumed_sharded, _ = run(f"{tmp}/b", 8, mesh, resume=True)
    chex.assert_trees_all_close(resumed_sharded, single_final, **TOL)
    leaf = jax.tree.leaves(resumed_sharded)[0]
    assert len(leaf.sharding.device_set) == 4
    print(
        "checkpoint from 4 devices resumed on 1, and from 1 on 4: both end where the "
        "uninterrupted run ends"
    )

    # 4. A batch size that does not split is refused up front.
    try:
        model, loss, params, data = setup()
        train.fit(model, loss, params, optimizer, data, steps=1, batch_size=30, mesh=mesh)
    except ValueError as err:
        assert "does not split evenly over the 4 devices" in str(err), err
        print(f"refused: {err}")
    else:
        raise AssertionError("batch_size=30 on 4 devices was accepted")
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
