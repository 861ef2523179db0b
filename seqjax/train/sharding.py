"""Data parallelism with JAX's own machinery: a ``jax.sharding.Mesh`` with a ``data`` axis.

Each batch is split along its first axis over the mesh's ``data`` axis (``NamedSharding``), the
parameters and optimizer state are replicated on every device, and the jitted train step is
left to XLA, which inserts the all-reduce of the gradients. Nothing here runs its own
communication.

    mesh = seqjax.train.data_mesh()            # every device, one "data" axis
    params, history = seqjax.train.fit(..., mesh=mesh)

Several hosts: call ``jax.distributed.initialize()`` first in every process (see the README);
``jax.devices()`` then lists the devices of all hosts, and each process passes the batches of
its own share of the data, which become one global batch
(``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: Any = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all of them)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh: need at least one device; got none")
    return Mesh(np.array(devices), (DATA_AXIS,))


def check_mesh(mesh: Any, batch_size: int, fn: str) -> int:
    """The number of data shards; errors name what is wrong with the mesh or the batch size."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{fn}: mesh must have an axis named {DATA_AXIS!r} to split batches over; got axes "
            f"{mesh.axis_names}. Build one with seqjax.train.data_mesh()"
        )
    shards = mesh.shape[DATA_AXIS]
    global_batch = batch_size * jax.process_count()
    if global_batch % shards:
        raise ValueError(
            f"{fn}: the batch of {global_batch} examples does not split evenly over the "
            f"{shards} devices of the mesh's {DATA_AXIS!r} axis; pick a batch_size that is a "
            f"multiple of {shards // np.gcd(shards, jax.process_count())}"
        )
    return shards


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` on every device of ``mesh`` (parameters, optimizer state, eval data)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """``batch`` split along its first axis over the mesh's ``data`` axis: with D devices,
    each holds 1/D of the examples. Under several processes, each passes its own examples and
    the result is the global batch they make together."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
