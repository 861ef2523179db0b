"""Writes tests/data/golden/xlstm_slstm.npz: golden vectors of NX-AI's sLSTM (``xlstm`` 2.0.6
from PyPI, torch 2.13 CPU), its pure-PyTorch "vanilla" backend, in float64.

Run (in a venv that has xlstm; it needs no CUDA for the vanilla backend):

    python -m venv --system-site-packages /tmp/venv-d
    /tmp/venv-d/bin/pip install --no-deps xlstm==2.0.6 einops omegaconf dacite
    /tmp/venv-d/bin/python tests/data/golden/make_slstm.py

Every array is float64 and in the reference's own layout; tests/test_slstm.py maps it to
seqjax's. Sizes: batch B=2, time T=8, input D=5, hidden H=8, 2 heads of d=4.

Cell (``sLSTMCell``, ``backend="vanilla"``, ``function="slstm"``, input and output ``BSH``),
fed by a bias-free ``torch.nn.Linear(D, 4H)`` (the cell itself takes the 4H gate
pre-activations; seqjax's ``slstm`` does that product itself, with ``w = cell_w.T``):

* ``cell_w (4H, D)``: the Linear's weight; rows are gates i, f, z, o, each H wide.
* ``cell_r (heads, d_in, 4, d_out)``: ``sLSTMCell.recurrent_kernel`` (its external layout).
* ``cell_b (heads, 4, d)``: ``sLSTMCell.bias`` (external layout).
* ``cell_x (B, T, D)``; ``cell_y (B, T, H)``: the outputs h.
* ``cell_final (4, B, H)``: the final state h, c, n, m from the zero state.
* ``cell_loss_y (B, T, H)``, ``cell_loss_final (4, B, H)``: the loss is
  ``sum(cell_loss_y * y) + sum(cell_loss_final * final)``.
* ``cell_grad_x``, ``cell_grad_w``, ``cell_grad_r``, ``cell_grad_b``: its gradients (layouts as
  above).
* ``cell_s0 (4, B, H)``: a non-zero initial state (h, c, n > 0, m); ``cell_s0_y``,
  ``cell_s0_final``, ``cell_s0_grad_s0``, ``cell_s0_grad_r``: the same run and loss from it.

Block (``sLSTMBlock``: pre-LayerNorm, causal conv of width 4 + SiLU into the i and f gates,
headwise gate projections, sLSTM, multi-head group norm, residual; then LayerNorm, gated GeLU
feed-forward with ``proj_factor=4/3`` rounded up to a multiple of 64 (64 here), residual),
embedding D=H=8, 2 heads, every parameter drawn at random (the norms' weights too):

* ``block_<name>``: each entry of ``sLSTMBlock.state_dict()`` with dots as ``__``, except the
  cell's recurrent kernel and bias, stored in their external layouts as ``block_r`` and
  ``block_b`` (as ``cell_r``, ``cell_b``). NB: xlstm's layer computes the i pre-activation
  with the module named ``fgate`` and f with the one named ``igate``.
* ``block_x (B, T, 8)``; ``block_y (B, T, 8)``; ``block_final (4, B, 8)``: the sLSTM state at
  the end; ``block_conv_state (B, 3, 8)``: the last three conv inputs.
* ``block_loss_y``: the loss is ``sum(block_loss_y * y)``; ``block_grad_x`` and
  ``block_grad_<name>`` (and ``block_grad_r``, ``block_grad_b``): its gradients.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig
from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig
from xlstm.blocks.slstm.layer import sLSTMLayerConfig
from xlstm.components.feedforward import FeedForwardConfig

B, T, D, H, HEADS = 2, 8, 5, 8, 2
OUT = pathlib.Path(__file__).with_name("xlstm_slstm.npz")


def randomise(cell, gen: torch.Generator) -> None:
    """Random recurrent kernel and bias, set through xlstm's external-layout proxies."""
    cell.recurrent_kernel[:] = 0.4 * torch.randn(cell.recurrent_kernel.shape, generator=gen,
                                                 dtype=torch.float64)  # fmt: skip
    cell.bias[:] = torch.randn(cell.bias.shape, generator=gen, dtype=torch.float64)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def cell_case(gen: torch.Generator) -> dict[str, np.ndarray]:
    config = sLSTMCellConfig(
        hidden_size=H, num_heads=HEADS, backend="vanilla", input_shape="BSGNH",
        output_shape="BSH", dtype="float32", enable_automatic_mixed_precision=False,
    )  # fmt: skip
    cell = sLSTMCell(config).double()
    randomise(cell, gen)
    linear = torch.nn.Linear(D, 4 * H, bias=False).double()
    with torch.no_grad():
        shape = linear.weight.shape
        linear.weight[:] = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64, requires_grad=True)
    y, final = cell(linear(x))
    loss_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    loss_final = torch.randn(final.shape, generator=gen, dtype=torch.float64)
    (y * loss_y).sum().add((final * loss_final).sum()).backward()
    out = {
        "cell_w": np64(linear.weight), "cell_r": np64(cell.recurrent_kernel.clone()),
        "cell_b": np64(cell.bias.clone()), "cell_x": np64(x), "cell_y": np64(y),
        "cell_final": np64(final), "cell_loss_y": np64(loss_y),
        "cell_loss_final": np64(loss_final), "cell_grad_x": np64(x.grad),
        "cell_grad_w": np64(linear.weight.grad), "cell_grad_r": np64(cell.recurrent_kernel.grad),
        "cell_grad_b": np64(cell.bias.grad),
    }  # fmt: skip
    # From a non-zero state, where the stabiliser takes the max from the first step on.
    cell.zero_grad()
    s0 = torch.randn(4, B, H, generator=gen, dtype=torch.float64)
    s0[2] = s0[2].abs() + 0.5  # n > 0
    s0.requires_grad_(True)
    y, final = cell(linear(x), state=s0)
    (y * loss_y).sum().add((final * loss_final).sum()).backward()
    out |= {
        "cell_s0": np64(s0), "cell_s0_y": np64(y), "cell_s0_final": np64(final),
        "cell_s0_grad_s0": np64(s0.grad), "cell_s0_grad_r": np64(cell.recurrent_kernel.grad),
    }  # fmt: skip
    return out


def block_case(gen: torch.Generator) -> dict[str, np.ndarray]:
    layer = sLSTMLayerConfig(
        embedding_dim=H, num_heads=HEADS, conv1d_kernel_size=4, backend="vanilla",
        dtype="float32", enable_automatic_mixed_precision=False,
    )  # fmt: skip
    config = sLSTMBlockConfig(
        slstm=layer, feedforward=FeedForwardConfig(proj_factor=4 / 3, act_fn="gelu"),
        _num_blocks=1, _block_idx=0,
    )  # fmt: skip
    block = sLSTMBlock(config).double()
    cell = block.xlstm.slstm_cell
    randomise(cell, gen)
    inner = {"xlstm.slstm_cell._recurrent_kernel_", "xlstm.slstm_cell._bias_"}
    named = {k: p for k, p in block.named_parameters() if k not in inner}
    with torch.no_grad():
        for p in named.values():
            p[:] = 0.4 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    x = torch.randn(B, T, H, generator=gen, dtype=torch.float64, requires_grad=True)
    y = block(x)
    # The block's forward returns no state; the layer's, on the same normalised input, does.
    _, state = block.xlstm(block.xlstm_norm(x), return_last_state=True)
    loss_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * loss_y).sum().backward()
    out = {
        "block_x": np64(x), "block_y": np64(y), "block_final": np64(state["slstm_state"]),
        "block_conv_state": np64(state["conv_state"]), "block_loss_y": np64(loss_y),
        "block_grad_x": np64(x.grad), "block_r": np64(cell.recurrent_kernel.clone()),
        "block_b": np64(cell.bias.clone()), "block_grad_r": np64(cell.recurrent_kernel.grad),
        "block_grad_b": np64(cell.bias.grad),
    }  # fmt: skip
    for name, p in named.items():
        key = name.replace(".", "__")
        out[f"block_{key}"] = np64(p)
        out[f"block_grad_{key}"] = np64(p.grad)
    return out


def main() -> None:
    gen = torch.Generator().manual_seed(2024)
    arrays = cell_case(gen) | block_case(gen)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(sorted(arrays))}")


if __name__ == "__main__":
    main()
