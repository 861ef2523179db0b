"""Writes recurrentgemma_rglru.npz: DeepMind's reference RG-LRU (``recurrentgemma.jax.layers.
RGLRU``) and Griffin recurrent block (``recurrentgemma.jax.modules.RecurrentBlock``), in float64,
for tests/test_rg_lru.py. The tests need only the npz, not recurrentgemma.

Made with recurrentgemma 1.0.1 (PyPI; with jaxtyping 0.3.11, typeguard 4.6.1, einops, and the main
environment's jax 0.10.2 / flax 0.12.8), from the repository root:

    python -m venv --system-site-packages /tmp/venv-b
    /tmp/venv-b/bin/pip install --no-deps recurrentgemma==1.0.1 jaxtyping wadler_lindig \
        typeguard einops
    /tmp/venv-b/bin/python tests/data/golden/make_recurrentgemma.py

recurrentgemma's ``scan.linear_scan`` accumulates in float32 unless told otherwise
(``acc_float_dtype``); the script passes float64 so that the whole reference runs in float64.
Nothing else of the reference is changed.

Keys (B=3 sequences, T=8 steps; ``<case>`` is ``cell``, ``cell_cont`` or ``block``):

* ``<case>/param/<path>``: the flax params, ``/``-joined paths, reference layout: RGLRU
  ``a_param (L,)``, ``input_gate/w (heads, L/heads, L/heads)``, ``input_gate/b (heads,
  L/heads)``, ``a_gate/w``, ``a_gate/b``; the block adds ``linear_x``, ``linear_y``,
  ``linear_out`` (``kernel (in, out)``, ``bias``) and ``conv_1d`` (``w (width, L)``, ``b (L,)``),
  with the RG-LRU under ``rg_lru/``.
* ``<case>/x`` (B, T, features), ``<case>/segment_pos`` (B, T) int: 0 marks a document start.
* ``<case>/y`` (B, T, out): outputs; ``<case>/h_last`` (B, L): the RG-LRU's final state;
  ``block/conv_last`` (B, width-1, L): the Conv1D cache (its last width-1 inputs).
* ``<case>/cot/<output>``: the fixed random weights of the scalar loss
  ``sum(y * cot/y) + sum(h_last * cot/h_last) (+ sum(conv_last * cot/conv_last))``.
* ``<case>/grad/x``, ``<case>/grad/h0`` (``cell_cont`` only), ``<case>/grad/param/<path>``: its
  gradients.
* ``cell``: width 8, 2 heads, ``segment_pos`` starting at 0 in every row and again at step 3 in
  row 1; no cache. ``cell_cont``: the same module and params, positions 4..11 (no document start)
  and a cache ``<case>/h0`` (B, L): the plain recurrence, continuing a state.
* ``block``: model width 6, lru_width 8, 2 heads, conv width 4; ``segment_pos`` as ``cell``; no
  cache. ``block/x_next`` (B, 3, 6), ``block/y_next`` (B, 3, 6): three more tokens decoded one
  at a time from the block's cache (the reference's decode path), and ``block/h_next``,
  ``block/conv_next``: the cache after them.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import flax  # noqa: E402
from recurrentgemma.jax import layers, modules, scan  # noqa: E402

B, T, WIDTH, HEADS, MODEL, CONV = 3, 8, 8, 2, 6, 4
F64 = jnp.float64

_linear_scan = scan.linear_scan
scan.linear_scan = lambda *a, **k: _linear_scan(*a, **{**k, "acc_float_dtype": F64})


def flat(tree, prefix: str) -> dict:
    out = {}
    for path, leaf in flax.traverse_util.flatten_dict(tree, sep="/").items():
        out[f"{prefix}/{path}"] = np.asarray(leaf)
    return out


def positions(start: int = 0) -> np.ndarray:
    pos = np.tile(np.arange(start, start + T), (B, 1))
    if start == 0:
        pos[1, 3:] = np.arange(T - 3)  # a second document starts at step 3 of row 1
    return jnp.asarray(pos)


def run_case(name, module, params, x, segment_pos, key, cache=None):
    """Outputs and gradients of ``module`` with ``params`` on one input, under ``name/``."""

    def outputs(params, x, cache):
        y, new_cache = module.apply({"params": params}, x, segment_pos, cache)
        if isinstance(new_cache, modules.RecurrentBlockCache):
            return {"y": y, "h_last": new_cache.rg_lru_state, "conv_last": new_cache.conv1d_state}
        return {"y": y, "h_last": new_cache}

    out = outputs(params, x, cache)
    cot_keys = jax.random.split(key, len(out))
    cot = {
        k: jax.random.normal(ck, v.shape, F64)
        for (k, v), ck in zip(out.items(), cot_keys, strict=True)
    }

    def loss(params, x, cache):
        got = outputs(params, x, cache)
        return sum(jnp.sum(got[k] * cot[k]) for k in got)

    grads = jax.grad(loss, argnums=(0, 1, 2))(params, x, cache)
    arrays = {f"{name}/x": np.asarray(x), f"{name}/segment_pos": np.asarray(segment_pos)}
    arrays |= flat(params, f"{name}/param") | flat(grads[0], f"{name}/grad/param")
    arrays |= {f"{name}/{k}": np.asarray(v) for k, v in out.items()}
    arrays |= {f"{name}/cot/{k}": np.asarray(v) for k, v in cot.items()}
    arrays[f"{name}/grad/x"] = np.asarray(grads[1])
    if cache is not None:
        arrays[f"{name}/h0"] = np.asarray(cache)
        arrays[f"{name}/grad/h0"] = np.asarray(grads[2])
    return arrays


def randomised(params, key):
    """Nonzero biases and spread-out decays, so every parameter's gradient says something."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            p + 0.3 * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys, strict=True)
        ],
    )


def decode_next(module, params, x_next, cache, start_pos: int):
    """The reference's decode path: one token at a time from a cache."""
    ys = []
    for t in range(x_next.shape[1]):
        pos = jnp.full((B, 1), start_pos + t)
        y, cache = module.apply({"params": params}, x_next[:, t : t + 1], pos, cache)
        ys.append(y)
    return jnp.concatenate(ys, axis=1), cache


def main() -> None:
    k = jax.random.split(jax.random.key(25), 10)
    cell = layers.RGLRU(width=WIDTH, num_heads=HEADS, dtype=F64, param_dtype=F64)
    x = jax.random.normal(k[0], (B, T, WIDTH), F64)
    cell_params = randomised(cell.init(k[1], x, positions(0))["params"], k[2])
    arrays = run_case("cell", cell, cell_params, x, positions(0), k[3])
    h0 = jax.random.normal(k[4], (B, WIDTH), F64)
    arrays |= run_case("cell_cont", cell, cell_params, x, positions(4), k[5], cache=h0)

    block = modules.RecurrentBlock(
        width=MODEL, num_heads=HEADS, lru_width=WIDTH, conv1d_temporal_width=CONV,
        dtype=F64, param_dtype=F64,
    )  # fmt: skip
    xb = jax.random.normal(k[6], (B, T, MODEL), F64)
    params = randomised(block.init(k[7], xb, positions(0))["params"], k[8])
    arrays |= run_case("block", block, params, xb, positions(0), k[9])
    _, cache = block.apply({"params": params}, xb, positions(0))
    x_next = jax.random.normal(jax.random.fold_in(k[9], 2), (B, 3, MODEL), F64)
    y_next, cache = decode_next(block, params, x_next, cache, T)
    arrays |= {"block/x_next": np.asarray(x_next), "block/y_next": np.asarray(y_next)}
    arrays |= {"block/h_next": np.asarray(cache.rg_lru_state)}
    arrays |= {"block/conv_next": np.asarray(cache.conv1d_state)}
    config = {"B": B, "T": T, "width": WIDTH, "num_heads": HEADS, "model_width": MODEL,
              "conv_width": CONV, "dtype": "float64", "c": 8.0,
              "recurrentgemma_version": "1.0.1",
              "jax_version": jax.__version__, "flax_version": flax.__version__}  # fmt: skip
    arrays["config"] = np.array(json.dumps(config))
    path = pathlib.Path(__file__).parent / "recurrentgemma_rglru.npz"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
