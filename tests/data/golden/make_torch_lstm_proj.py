"""Writes torch_lstm_proj_2layer_bidirectional_lengths.npz: PyTorch's LSTM with ``proj_size``,
in the format of the other torch_*.npz files (see README.md), plus ``proj_size`` in the config
and ``weight_hr_l{k}`` (P, H) among the params. ``h0``/``h_n`` are (layers*dirs, B, P), ``c0``/
``c_n`` (layers*dirs, B, H). Needs torch; run from the repository root:

    python tests/data/golden/make_torch_lstm_proj.py
"""

import json
import pathlib

import numpy as np
import torch

D, H, P, LAYERS, B, T = 5, 7, 3, 2, 4, 6
LENGTHS = [6, 4, 2, 1]


def main() -> None:
    torch.manual_seed(7)
    module = torch.nn.LSTM(
        D, H, num_layers=LAYERS, bidirectional=True, batch_first=True, proj_size=P
    ).double()
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * LAYERS, B, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * LAYERS, B, H, dtype=torch.float64, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False
    )
    out, (h_n, c_n) = module(packed, (h0, c0))
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    cot = {name: torch.randn_like(t) for name, t in (("y", y), ("h_n", h_n), ("c_n", c_n))}
    loss = (y * cot["y"]).sum() + (h_n * cot["h_n"]).sum() + (c_n * cot["c_n"]).sum()
    loss.backward()
    config = {
        "mode": "LSTM", "nonlinearity": None, "input_size": D, "hidden_size": H,
        "proj_size": P, "num_layers": LAYERS, "bidirectional": True, "batch_first": True,
        "batch": B, "time": T, "lengths": LENGTHS, "dtype": "float64",
        "torch_version": torch.__version__,
    }  # fmt: skip
    arrays = {"config": np.array(json.dumps(config)), "lengths": np.array(LENGTHS)}
    for name, value in module.state_dict().items():
        arrays[f"param/{name}"] = value.numpy()
    for name, param in module.named_parameters():
        arrays[f"grad/{name}"] = param.grad.numpy()
    arrays |= {"x": x.detach().numpy(), "h0": h0.detach().numpy(), "c0": c0.detach().numpy()}
    arrays |= {"y": y.detach().numpy(), "h_n": h_n.detach().numpy(), "c_n": c_n.detach().numpy()}
    arrays |= {f"cotangent_{k}": v.numpy() for k, v in cot.items()}
    arrays |= {"grad/x": x.grad.numpy(), "grad/h0": h0.grad.numpy(), "grad/c0": c0.grad.numpy()}
    path = pathlib.Path(__file__).parent / "torch_lstm_proj_2layer_bidirectional_lengths.npz"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
