"""A trained run out of seqjax: its parameters as safetensors, and as a PyTorch module.

safetensors is a plain format (a JSON header of names, dtypes, shapes and offsets, then the raw
little-endian bytes) that PyTorch, NumPy, Hugging Face and others read without running code.
:func:`save_safetensors` writes a params pytree under dotted names (``rnn.0.w_ih``, ``w_out``)
atomically; :func:`load_safetensors` reads it back into the same structure, checking each name,
shape and dtype.

:func:`to_torch` turns a run of an Elman RNN (tanh or ReLU), GRU or LSTM into an equivalent
``torch.nn.Module``: ``torch.nn.RNN``/``GRU``/``LSTM`` (``batch_first``) and a ``Linear``
read-out, taking the same inputs as the seqjax model (token ids are one-hot encoded, and
``lengths`` picks each sequence's last step).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from seqjax import interop
from seqjax.train import rundir, runs

TORCH_CELLS = {"rnn": ("RNN", "tanh"), "irnn": ("RNN", "relu"), "gru": ("GRU", None),
               "lstm": ("LSTM", None)}  # fmt: skip


class ExportError(ValueError):
    """A run or file that cannot be exported or read back as asked."""


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise ExportError("safetensors is not installed: pip install safetensors") from None
    return safetensors.numpy


def flat_names(params: Any) -> dict[str, np.ndarray]:
    """Every leaf of ``params`` under its dotted path (dict keys and sequence indices)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        parts = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        flat[".".join(parts)] = np.ascontiguousarray(np.asarray(leaf))
    return flat


def save_safetensors(path: str | os.PathLike, params: Any, metadata: dict | None = None,
                     overwrite: bool = False) -> pathlib.Path:  # fmt: skip
    """Writes ``params`` to ``path`` as safetensors (see :func:`flat_names`), with ``metadata``
    (JSON-serialisable) as the header's ``__metadata__["seqjax"]``. Written to a temporary file
    and renamed, so a reader never sees half a file; an existing file is refused unless
    ``overwrite``."""
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"--out {str(path)!r} exists; pass another path, or --overwrite")
    st = _safetensors()
    text = {"seqjax": json.dumps(metadata or {})}
    tensors = flat_names(params)
    rundir.write_atomically(path, lambda temporary: st.save_file(tensors, str(temporary),
                                                                 metadata=text))  # fmt: skip
    return path


def load_safetensors(path: str | os.PathLike, template: Any) -> Any:
    """The safetensors file at ``path`` as a pytree of the structure of ``template``; refuses
    a file with other names, shapes or dtypes."""
    st = _safetensors()
    try:
        stored = st.load_file(str(path))
    except Exception as err:  # the package's own errors name no common class
        raise ExportError(f"{path}: not a readable safetensors file ({err})") from None
    want = flat_names(template)
    if set(stored) != set(want):
        raise ExportError(f"{path}: holds {sorted(stored)}, expected {sorted(want)}")
    for name, leaf in want.items():
        if stored[name].shape != leaf.shape or stored[name].dtype != leaf.dtype:
            raise ExportError(f"{path}: {name} is {stored[name].dtype}{list(stored[name].shape)}, "
                              f"expected {leaf.dtype}{list(leaf.shape)}")  # fmt: skip
    leaves = [stored[name] for name in want]
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def _torch_kind(config: dict) -> tuple[str, str | None]:
    cell = config.get("cell")
    if cell not in TORCH_CELLS:
        raise ExportError(f"to_torch: PyTorch has no {cell!r} layer; runs of "
                          f"{', '.join(TORCH_CELLS)} export to PyTorch")  # fmt: skip
    return TORCH_CELLS[cell]


def to_torch(run: Any) -> Any:
    """A ``torch.nn.Module`` equal to the run's model (a :class:`seqjax.train.runs.LoadedRun`):
    ``module(inputs, lengths=None)`` with ``inputs (batch, time, features)`` (or integer ids
    ``(batch, time)`` for a character model) gives the seqjax model's predictions."""
    config = run.config
    kind, nonlinearity = _torch_kind(config)  # before the import: the reason a run cannot go
    try:
        import torch
    except ImportError:
        raise ExportError("to_torch needs PyTorch: pip install torch") from None
    shape = runs.model_shape(config)._asdict()
    module = _module_class(torch)(kind, nonlinearity, shape, config["hidden"], config["layers"])
    state = {f"rnn.{k}": torch.from_numpy(np.array(v))
             for k, v in interop.to_torch(run.model.stack, run.params["rnn"]).items()}  # fmt: skip
    state["head.weight"] = torch.from_numpy(np.array(run.params["w_out"]).T.copy())
    state["head.bias"] = torch.from_numpy(np.array(run.params["b_out"]))
    module.load_state_dict(state)
    return module.eval()


def _module_class(torch):
    class SeqjaxModel(torch.nn.Module):
        """A recurrent layer stack and a linear read-out, as ``seqjax train`` builds them."""

        def __init__(self, kind: str, nonlinearity: str | None, shape: dict, hidden: int,
                     layers: int):  # fmt: skip
            super().__init__()
            extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
            self.shape = dict(shape)
            rnn = getattr(torch.nn, kind)
            self.rnn = rnn(shape["input_size"], hidden, layers, batch_first=True, **extra)
            self.head = torch.nn.Linear(hidden, shape["output_size"])

        def forward(self, inputs, lengths=None):
            if self.shape["token_inputs"]:
                inputs = torch.nn.functional.one_hot(inputs.long(), self.shape["input_size"])
            ys, _ = self.rnn(inputs.float())
            if self.shape["per_step"]:
                return self.head(ys)
            if lengths is None:
                return self.head(ys[:, -1])
            return self.head(ys[torch.arange(len(ys)), torch.as_tensor(lengths).long() - 1])

    return SeqjaxModel
