"""Writes ``flax_mgu.npz``: Flax's ``flax.linen.MGUCell`` run over short sequences in float64.

Made with flax 0.12.8 and jax 0.10.2 (the main environment; flax 0.12.1's MGUCell has the same
source), by

    python tests/data/golden/make_flax_mgu.py

from the repository root. Two cases, each under its own key prefix: ``reset/`` (Flax's default,
``reset_gate=True``) and ``no_reset/`` (``reset_gate=False``). Every parameter is drawn from a
normal distribution (not Flax's init, whose zero biases would hide terms). Keys, per prefix:

* ``x (B, T, D)``, ``h0 (B, H)``: the inputs and the initial state.
* ``param/<dense>/kernel (in, H)``, ``param/<dense>/bias (H,)``: Flax's Dense layers ``if``,
  ``in`` (input, with bias), ``hf`` (recurrent, no bias) and ``hn`` (recurrent, with a bias
  only under ``reset/``).
* ``y (B, T, H)``: the outputs of every step; ``h_n (B, H)``: the final state.
* ``cotangent_y``, ``cotangent_h_n``: fixed random weights of the scalar loss
  ``sum(y * cotangent_y) + sum(h_n * cotangent_h_n)``.
* ``grad/x``, ``grad/h0``, ``grad/param/<dense>/<kernel|bias>``: its gradients.

``config`` is a JSON string with the sizes and the versions.
"""

from __future__ import annotations

import json
import pathlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

B, T, D, H = 2, 7, 3, 4
OUT = pathlib.Path(__file__).with_name("flax_mgu.npz")


def run(reset_gate: bool, seed: int) -> dict[str, np.ndarray]:
    cell = nn.MGUCell(features=H, reset_gate=reset_gate, param_dtype=jnp.float64)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D))
    h0 = rng.normal(size=(B, H))
    variables = cell.init(jax.random.key(0), jnp.asarray(h0), jnp.asarray(x[:, 0]))
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), variables["params"])
    cot_y = rng.normal(size=(B, T, H))
    cot_h = rng.normal(size=(B, H))

    def forward(params, x, h0):
        h, ys = h0, []
        for t in range(T):  # a plain loop: nothing of seqjax's scan machinery
            h, y = cell.apply({"params": params}, h, x[:, t])
            ys.append(y)
        return jnp.stack(ys, axis=1), h

    def loss(params, x, h0):
        y, h_n = forward(params, x, h0)
        return jnp.sum(y * cot_y) + jnp.sum(h_n * cot_h)

    y, h_n = forward(params, jnp.asarray(x), jnp.asarray(h0))
    g_params, g_x, g_h0 = jax.grad(loss, argnums=(0, 1, 2))(params, jnp.asarray(x), jnp.asarray(h0))
    out = {"x": x, "h0": h0, "y": y, "h_n": h_n, "cotangent_y": cot_y, "cotangent_h_n": cot_h,
           "grad/x": g_x, "grad/h0": g_h0}  # fmt: skip
    for dense, leaves in params.items():
        for name, value in leaves.items():
            out[f"param/{dense}/{name}"] = value
            out[f"grad/param/{dense}/{name}"] = g_params[dense][name]
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def main() -> None:
    arrays = {}
    for prefix, reset_gate, seed in (("reset", True, 1), ("no_reset", False, 2)):
        arrays.update({f"{prefix}/{k}": v for k, v in run(reset_gate, seed).items()})
    config = {"batch": B, "time": T, "input_size": D, "hidden_size": H,
              "flax": flax.__version__, "jax": jax.__version__}  # fmt: skip
    np.savez_compressed(OUT, config=np.asarray(json.dumps(config)), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
