"""Writes tests/data/golden/mlstm_kernels.npz: the mLSTM of mlstm_kernels 2.0.6 (NX-AI, the
xLSTM authors' kernel package), its pure-PyTorch reference functions, in float64; and
mlstm_xlstm_block.npz, xlstm 2.0.6's mLSTMBlock (see ``block``).

Run in a venv that has the reference (torch 2.13 CPU, mlstm_kernels 2.0.6, einops):

    python -m venv --system-site-packages /tmp/venv-c
    /tmp/venv-c/bin/pip install --no-deps torch mlstm_kernels==2.0.6 xlstm==2.0.6 einops \
        omegaconf dacite filelock
    /tmp/venv-c/bin/python tests/data/golden/make_mlstm.py

Reference functions (all plain torch ops, differentiated by torch autograd):
  mlstm_kernels.torch.recurrent.native_sequence.mlstm_recurrent_sequence__native_fw  (step form)
  mlstm_kernels.torch.chunkwise.native.fw.mlstm_chunkwise                           (chunk 4)
  mlstm_kernels.torch.parallel.native.fw.mlstm_parallel_fw                          (quadratic)

The inputs are made from ``x`` and seqjax's projection params: ``px = x @ w_ih + b_ih``, split
into q, k, v (H each), i, f (NH each), o (H), heads ``(B, NH, T, d)`` of ``d = H / NH``. The
reference has no output gate; this script multiplies its output by ``sigmoid(o)``. The
reference scales ``q`` by ``1/sqrt(d)``, seqjax scales ``k``: ``h`` is the same, and the
stored states are the reference's, ``C_ref = sqrt(d) * C_seqjax``, ``n_ref = sqrt(d) *
n_seqjax``, ``m`` equal. Gate biases are drawn wide (i ~ N(0, 3^2), f ~ N(1, 3^2)) so that the
stabiliser ``m`` moves both ways.

Keys (B=2, T=16, D=5, H=8, NH=2, d=4, eps=1e-6):
  x (B, T, D); w_ih (D, 4H + 2NH); b_ih (4H + 2NH,)   seqjax's layout, blocks q, k, v, i, f, o
  c0 (B, NH, d, d), n0 (B, NH, d), m0 (B, NH)          initial state, reference layout
  zero/*: from the zero state: y (B, T, H) step form; c, n (B, NH, d, d), (B, NH, d), m
          (B, NH) its final state; y_chunkwise, c_chunkwise, n_chunkwise, m_chunkwise from
          the chunkwise form; y_parallel from the quadratic form (which has no initial state
          and stabilises with max_s log D_ts alone: it differs from the others by eps terms)
  init/*: from (c0, n0, m0): y, c, n, m (step form), y_chunkwise, c_chunkwise, n_chunkwise,
          m_chunkwise; cot_y, cot_c, cot_n, cot_m the weights of the scalar loss
          sum(y cot_y) + sum(c cot_c) + sum(n cot_n) + sum(m cot_m) (reference layout), and
          grad_x, grad_w_ih, grad_b_ih, grad_c0, grad_n0, grad_m0 its gradients (step form;
          grad_c0 and grad_n0 with respect to the reference-layout c0, n0)
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from mlstm_kernels.torch.chunkwise.native.fw import mlstm_chunkwise
from mlstm_kernels.torch.parallel.native.fw import mlstm_parallel_fw
from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

B, T, D, H, NH, CHUNK, EPS = 2, 16, 5, 8, 2, 4, 1e-6
d = H // NH
OUT = pathlib.Path(__file__).with_name("mlstm_kernels.npz")


def inputs(x, w, b):
    """q, k, v (B, NH, T, d), i, f (B, NH, T), o (B, T, H) from seqjax's layout."""
    px = x @ w + b
    heads = lambda a: a.reshape(B, T, NH, d).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(px[..., j * H : (j + 1) * H]) for j in range(3))
    i = px[..., 3 * H : 3 * H + NH].transpose(1, 2)
    f = px[..., 3 * H + NH : 3 * H + 2 * NH].transpose(1, 2)
    return q, k, v, i, f, px[..., 3 * H + 2 * NH :]


def gated(h, o):
    return h.transpose(1, 2).reshape(B, T, H) * torch.sigmoid(o)


def run(x, w, b, state, form):
    q, k, v, i, f, o = inputs(x, w, b)
    c0, n0, m0 = state if state is not None else (None, None, None)
    m0 = None if m0 is None else m0[..., None]
    if form == "step":
        h, (c, n, m) = mlstm_recurrent_sequence__native_fw(
            q, k, v, i, f, c_initial=c0, n_initial=n0, m_initial=m0,
            return_last_states=True, eps=EPS, dtype_state=torch.float64,
        )  # fmt: skip
    elif form == "chunkwise":
        h, (c, n, m) = mlstm_chunkwise(
            q, k, v, i, f, matC_initial=c0, vecN_initial=n0, scaM_initial=m0,
            return_last_states=True, chunk_size=CHUNK, eps=EPS,
        )  # fmt: skip
    else:
        h, _, _ = mlstm_parallel_fw(q, k, v, i, f, eps=EPS)
        return gated(h, o), None
    return gated(h, o), (c, n, m.reshape(B, NH))


def main() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2024)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    P = 4 * H + 2 * NH
    x = rand(B, T, D)
    w = rand(D, P) / np.sqrt(D)
    b = 0.3 * rand(P)
    b[3 * H : 3 * H + NH] = 3.0 * rand(NH)
    b[3 * H + NH : 3 * H + 2 * NH] = 1.0 + 3.0 * rand(NH)
    state0 = (rand(B, NH, d, d), rand(B, NH, d), rand(B, NH))
    out = {"x": x, "w_ih": w, "b_ih": b, "c0": state0[0], "n0": state0[1], "m0": state0[2]}

    y, (c, n, m) = run(x, w, b, None, "step")
    out.update({"zero/y": y, "zero/c": c, "zero/n": n, "zero/m": m})
    y, (c, n, m) = run(x, w, b, None, "chunkwise")
    out.update({"zero/y_chunkwise": y, "zero/c_chunkwise": c, "zero/n_chunkwise": n,
                "zero/m_chunkwise": m})  # fmt: skip
    out["zero/y_parallel"] = run(x, w, b, None, "parallel")[0]

    y, (c, n, m) = run(x, w, b, state0, "chunkwise")
    out.update({"init/y_chunkwise": y, "init/c_chunkwise": c, "init/n_chunkwise": n,
                "init/m_chunkwise": m})  # fmt: skip
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, *state0)]
    y, (c, n, m) = run(*leaves[:3], tuple(leaves[3:]), "step")
    cots = [rand(*a.shape) for a in (y, c, n, m)]
    loss = sum((a * ct).sum() for a, ct in zip((y, c, n, m), cots, strict=True))
    grads = torch.autograd.grad(loss, leaves)
    out.update({"init/y": y, "init/c": c, "init/n": n, "init/m": m})
    for name, ct in zip(("y", "c", "n", "m"), cots, strict=True):
        out[f"init/cot_{name}"] = ct
    for name, gr in zip(("x", "w_ih", "b_ih", "c0", "n0", "m0"), grads, strict=True):
        out[f"init/grad_{name}"] = gr
    arrays = {k: v.detach().numpy() for k, v in out.items()}
    gap = np.abs(arrays["zero/y_parallel"] - arrays["zero/y"]).max()
    print(f"reference parallel vs step: max |dy| = {gap:.2e}")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


BLOCK_OUT = pathlib.Path(__file__).with_name("mlstm_xlstm_block.npz")


def block() -> None:
    """mlstm_xlstm_block.npz: xlstm 2.0.6's ``mLSTMBlock`` (embedding_dim 8, 2 heads,
    proj_factor 2 with the inner size rounded to a multiple of 4, so I = 16, conv width 4,
    qkv blocks of 4, context 12) in float64, every parameter drawn at random (gate weights
    included). Keys: ``param/<name>`` the module's state_dict (torch layout: Linear weights
    ``(out, in)``, the norms' ``weight`` is the scale minus 1, conv ``(I, 1, 4)``, headwise
    ``(blocks, out, in)``); ``x (2, 12, 8)``; ``y`` the block's output; ``cot_y`` the weights of
    the loss ``sum(y cot_y)``; ``grad/x`` and ``grad/<name>`` its gradients."""
    from xlstm import mLSTMBlock, mLSTMBlockConfig
    from xlstm.blocks.mlstm.layer import mLSTMLayerConfig

    torch.manual_seed(1)
    config = mLSTMLayerConfig(embedding_dim=8, num_heads=2, proj_factor=2.0,
                              conv1d_kernel_size=4, qkv_proj_blocksize=4, context_length=12,
                              round_proj_up_to_multiple_of=4)  # fmt: skip
    module = mLSTMBlock(mLSTMBlockConfig(mlstm=config, _num_blocks=1, _block_idx=0)).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            if name.endswith("fgate.bias"):
                p.add_(2.0)
    x = torch.randn(2, 12, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    y = module(x)
    cot = torch.randn(y.shape, generator=g, dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad((y * cot).sum(), [x, *module.parameters()])
    out = {"x": x, "y": y, "cot_y": cot, "grad/x": grads[0]}
    for name, p, gr in zip(names, module.parameters(), grads[1:], strict=True):
        out[f"param/{name}"], out[f"grad/{name}"] = p, gr
    np.savez_compressed(BLOCK_OUT, **{k: v.detach().numpy() for k, v in out.items()})
    print(f"wrote {BLOCK_OUT} ({BLOCK_OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
    block()
