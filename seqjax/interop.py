"""Weights in and out of PyTorch's ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.

seqjax keeps PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n with the reset after the hidden
matmul) and both biases, so a PyTorch tensor maps to a seqjax one by a transpose. torch itself is
optional: it is imported only to read a module, and a plain mapping of arrays works without it.

    layer, params = seqjax.interop.from_torch(torch_lstm)          # a module: config read from it
    carry = seqjax.interop.carry_from_torch(params, h0, c0)        # (layers*dirs, B, H) -> carry
    final, ys = layer.apply(params, xs, carry=carry, lengths=lengths)
    h_n, c_n = seqjax.interop.carry_to_torch(final)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax.cells import LSTMCarry, gru, lstm, simple_rnn
from seqjax.layers import Layer, bidirectional, rnn, stack

MODES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_KEY = re.compile(r"^(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def from_torch(
    source: Any,
    *,
    mode: str | None = None,
    num_layers: int | None = None,
    bidirectional: bool | None = None,
    batch_first: bool | None = None,
    dropout: float | None = None,
    dtype: Any = None,
) -> tuple[Layer, tuple]:
    """A seqjax layer and params that compute what a PyTorch recurrent module computes.

    Args:
      source: a ``torch.nn.RNN``/``LSTM``/``GRU`` (its configuration is read from it; keyword
        arguments, if given, must agree), or a mapping like its ``state_dict()`` whose values are
        arrays or tensors (then ``mode`` is required).
      mode: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"``.
      num_layers: read from the keys when not given, checked against them if given.
      bidirectional: read from the keys when not given, checked against them if given.
      batch_first: the layout of the module's inputs; default False, as in PyTorch.
      dropout: between layers, active when ``apply`` gets a key; default 0.
      dtype: the params' dtype; default: the source's.

    Returns:
      ``(layer, params)``: a :func:`seqjax.stack` of one entry per PyTorch layer, each an
      ``rnn`` or a ``bidirectional`` of two. ``layer.apply(params, x, carry=..., lengths=...)``
      returns ``(final_carry, y)`` equal to the module's ``(y, h_n[, c_n])``, packed sequences
      expressed as ``lengths``; convert states with :func:`carry_from_torch`/:func:`carry_to_torch`.
    """
    fn = "from_torch"
    given = {"mode": mode, "num_layers": num_layers, "bidirectional": bidirectional,
             "batch_first": batch_first, "dropout": dropout}  # fmt: skip
    state, config = _torch_source(source, given, fn)
    mode, num_layers, bidirectional, batch_first, dropout = (
        config[k] for k in ("mode", "num_layers", "bidirectional", "batch_first", "dropout")
    )
    dtype = _float_dtype(dtype, fn)
    num_gates = MODES[mode]
    hidden_size, proj_size = _sizes(state, mode, fn)

    def make_cell():
        if mode == "LSTM":
            return lstm(hidden_size, proj_size=proj_size)
        if mode == "GRU":
            return gru(hidden_size)
        return simple_rnn(hidden_size, activation="tanh" if mode == "RNN_TANH" else "relu")

    suffixes = ["", "_reverse"] if bidirectional else [""]
    levels, params = [], []
    for k in range(num_layers):
        directions = [
            _cell_params(state, k, s, num_gates, hidden_size, proj_size, dtype) for s in suffixes
        ]
        if bidirectional:
            levels.append(_bidirectional_layer(make_cell(), batch_first))
            params.append({"forward": directions[0], "backward": directions[1]})
        else:
            levels.append(rnn(make_cell(), time_major=not batch_first))
            params.append(directions[0])
    return stack(*levels, dropout=dropout), tuple(params)


def _torch_source(source: Any, given: dict, fn: str) -> tuple[dict, dict]:
    """``(state, config)``: the weights as NumPy arrays, and the configuration (mode, layers,
    directions, layout, dropout) read from the module or the keys and checked against what the
    caller gave."""
    if hasattr(source, "state_dict") and hasattr(source, "mode"):
        config = _module_config(source)
        for name, value in given.items():
            if name != "dropout" and value is not None and value != config[name]:
                raise ValueError(
                    f"{fn}: {name}={value!r} disagrees with the module, which has {config[name]!r}"
                )
        if given["dropout"] is not None:
            config["dropout"] = given["dropout"]
        state = {k: v.detach().cpu().numpy() for k, v in source.state_dict().items()}
    elif isinstance(source, Mapping):
        if given["mode"] is None:
            raise ValueError(
                f"{fn}: mode is required when source is a state_dict mapping; expected one of "
                f"{', '.join(MODES)}; got None"
            )
        config = dict(given)
        state = {k: _to_numpy(v) for k, v in source.items()}
    else:
        raise TypeError(
            f"{fn}: source must be a torch.nn.RNN/LSTM/GRU or a mapping of its state_dict; "
            f"got {type(source).__name__}"
        )
    _checks.check_choice(config["mode"], tuple(MODES), "mode", fn)
    found_layers, found_bidirectional = _layout_of(state.keys(), fn)
    if config["num_layers"] is None:
        config["num_layers"] = found_layers
    _checks.check_positive_int(config["num_layers"], "num_layers", fn)
    if config["num_layers"] != found_layers:
        raise ValueError(
            f"{fn}: num_layers={config['num_layers']} but the state_dict holds {found_layers} "
            "layer(s)"
        )
    if config["bidirectional"] is None:
        config["bidirectional"] = found_bidirectional
    bidirectional = _checks.check_bool(config["bidirectional"], "bidirectional", fn)
    if bidirectional != found_bidirectional:
        raise ValueError(
            f"{fn}: bidirectional={bidirectional} but the state_dict "
            f"{'has' if found_bidirectional else 'has no'} _reverse weights"
        )
    config["bidirectional"] = bidirectional
    batch_first = config["batch_first"]
    config["batch_first"] = (
        False if batch_first is None else _checks.check_bool(batch_first, "batch_first", fn)
    )
    config["dropout"] = 0.0 if config["dropout"] is None else config["dropout"]
    return state, config


def _float_dtype(dtype: Any, fn: str) -> Any:
    """``dtype`` as a floating NumPy dtype, or ``None``."""
    if dtype is None:
        return None
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn}: dtype must be a floating dtype; got {dtype!r}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: dtype must be a floating dtype; got {dtype}")
    return dtype


def _sizes(state: dict, mode: str, fn: str) -> tuple[int, int]:
    """``(hidden_size, proj_size)`` from the first layer's recurrent weights."""
    num_gates = MODES[mode]
    w_hh0 = state.get("weight_hh_l0")
    if w_hh0 is None or w_hh0.ndim != 2:
        raise ValueError(
            f"{fn}: source must hold weight_hh_l0 of shape (gates*H, H); got "
            + ("none" if w_hh0 is None else f"shape {w_hh0.shape}")
        )
    w_hr0 = state.get("weight_hr_l0")
    proj_size = 0
    if w_hr0 is not None:
        if mode != "LSTM":
            raise ValueError(f"{fn}: weight_hr (proj_size) exists only for LSTMs; mode is {mode}")
        proj_size = w_hr0.shape[0]
    hidden_size = w_hh0.shape[0] // num_gates if proj_size else w_hh0.shape[1]
    if w_hh0.shape != (num_gates * hidden_size, proj_size or hidden_size):
        raise ValueError(
            f"{fn}: mode {mode} needs weight_hh_l0 of shape ({num_gates}*H, "
            f"{'P' if proj_size else 'H'}); got {w_hh0.shape}. Is the mode right?"
        )
    return hidden_size, proj_size


def _bidirectional_layer(cell, batch_first: bool) -> Layer:
    return bidirectional(rnn(cell, time_major=not batch_first),
                         rnn(cell, time_major=not batch_first))  # fmt: skip


def to_torch(layer: Layer, params: Any) -> dict[str, np.ndarray]:
    """The PyTorch ``state_dict`` of a seqjax layer's params, as NumPy arrays.

    Works for the layers :func:`from_torch` builds: a stack of ``rnn`` or ``bidirectional``
    layers of the built-in cells (a single such layer is taken as a one-layer stack). Load it
    with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``. It also
    maps a gradient pytree of the same structure to PyTorch's names.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"to_torch: layer must be a seqjax Layer; got {type(layer).__name__}")
    levels = params if isinstance(params, tuple | list) else (params,)
    state: dict[str, np.ndarray] = {}
    for k, level in enumerate(levels):
        directions = _directions(level, "to_torch", "params")
        for suffix, p in zip(["", "_reverse"], directions, strict=False):
            state[f"weight_ih_l{k}{suffix}"] = np.asarray(p["w_ih"]).T
            state[f"weight_hh_l{k}{suffix}"] = np.asarray(p["w_hh"]).T
            state[f"bias_ih_l{k}{suffix}"] = np.asarray(p["b_ih"])
            state[f"bias_hh_l{k}{suffix}"] = np.asarray(p["b_hh"])
            if "w_hr" in p:
                state[f"weight_hr_l{k}{suffix}"] = np.asarray(p["w_hr"]).T
    return state


def carry_from_torch(params: Any, h0: Any, c0: Any = None) -> tuple:
    """PyTorch's initial state ``h0`` (and ``c0`` for an LSTM), ``(layers*dirs, batch, H)``, as
    the carry of the layer :func:`from_torch` built for ``params``. ``c0=None`` means zeros."""
    fn = "carry_from_torch"
    levels = params if isinstance(params, tuple | list) else (params,)
    if not levels:
        raise ValueError(
            f"{fn}: params must hold at least one layer, as from_torch returns; got none"
        )
    first = _directions(levels[0], fn, "params")[0]
    hidden = first["w_hh"].shape[0]  # the size of h: P for an LSTM with a projection
    is_lstm = "w_hr" in first or first["w_hh"].shape[1] == 4 * hidden
    cell_size = first["w_hh"].shape[1] // 4  # the size of c, for an LSTM
    dtype = first["w_hh"].dtype
    num_dirs = len(_directions(levels[0], fn, "params"))
    h0 = jnp.asarray(h0, dtype)
    expected = (len(levels) * num_dirs, hidden)
    if h0.ndim < 2 or (h0.shape[0], h0.shape[-1]) != expected:
        raise ValueError(
            f"{fn}: h0 must have shape ({expected[0]}, batch..., {hidden}) (layers*directions "
            f"first, as PyTorch); got {h0.shape}"
        )
    if c0 is not None and not is_lstm:
        raise ValueError(
            f"{fn}: c0 is only for LSTMs and these params are not an LSTM's; expected c0=None, "
            f"got an array of shape {np.shape(c0)}"
        )
    if is_lstm:
        c_shape = (*h0.shape[:-1], cell_size)
        c0 = jnp.zeros(c_shape, dtype) if c0 is None else jnp.asarray(c0, dtype)
        if c0.shape != c_shape:
            raise ValueError(f"{fn}: c0 must have shape {c_shape}; got {c0.shape}")
    carries = []
    for k, level in enumerate(levels):
        per_dir = []
        for d in range(num_dirs):
            i = k * num_dirs + d
            per_dir.append(LSTMCarry(h0[i], c0[i]) if is_lstm else h0[i])
        carries.append(tuple(per_dir) if isinstance(level, Mapping) and "forward" in level
                       else per_dir[0])  # fmt: skip
    return tuple(carries)


def carry_to_torch(carry: tuple) -> tuple[Any, Any]:
    """A :func:`from_torch` layer's final carry as PyTorch's ``(h_n, c_n)``, each
    ``(layers*dirs, batch, H)``; ``c_n`` is None for RNN and GRU."""
    if not isinstance(carry, tuple | list) or isinstance(carry, LSTMCarry) or not carry:
        raise TypeError(
            "carry_to_torch: carry must be the final carry of a from_torch layer, a tuple with one "
            f"entry per layer; got {type(carry).__name__}"
        )
    hs, cs = [], []
    for level in carry:
        directions = level if isinstance(level, tuple) and not isinstance(level, LSTMCarry) else (
            level,)  # fmt: skip
        for state in directions:
            if isinstance(state, LSTMCarry):
                hs.append(state.h)
                cs.append(state.c)
            else:
                hs.append(state)
    return jnp.stack(hs), (jnp.stack(cs) if cs else None)


def _module_config(module: Any) -> dict[str, Any]:
    return {
        "mode": module.mode,
        "num_layers": module.num_layers,
        "bidirectional": bool(module.bidirectional),
        "batch_first": bool(module.batch_first),
        "dropout": float(module.dropout),
    }


def _layout_of(keys, fn: str) -> tuple[int, bool]:
    layers, reverse = set(), False
    for key in keys:
        match = _KEY.match(key)
        if match is None:
            raise ValueError(
                f"{fn}: source has an unexpected state_dict key {key!r}; expected names like "
                "weight_ih_l0, bias_hh_l1_reverse, weight_hr_l0"
            )
        layers.add(int(match.group(2)))
        reverse |= match.group(3) is not None
    if not layers:
        raise ValueError(f"{fn}: source is an empty state_dict; expected weight_ih_l0 and so on")
    if layers != set(range(len(layers))):
        raise ValueError(
            f"{fn}: source's state_dict layers must be numbered 0..n-1; got {sorted(layers)}"
        )
    return len(layers), reverse


def _cell_params(state, k: int, suffix: str, num_gates: int, hidden: int, proj: int, dtype) -> dict:
    def get(name: str, shape_hint: str):
        key = f"{name}_l{k}{suffix}"
        if key not in state:
            if name.startswith("bias"):  # bias=False modules have no bias tensors
                return None
            raise ValueError(f"from_torch: source has no {key} {shape_hint} in its state_dict")
        return state[key]

    w_ih, w_hh = get("weight_ih", "(gates*H, input)"), get("weight_hh", "(gates*H, H)")
    recurrent = proj or hidden
    if w_hh.shape != (num_gates * hidden, recurrent) or w_ih.shape[0] != num_gates * hidden:
        raise ValueError(
            f"from_torch: layer {k}{suffix} has weight_ih {w_ih.shape} and weight_hh "
            f"{w_hh.shape}; expected ({num_gates * hidden}, input) and "
            f"({num_gates * hidden}, {recurrent})"
        )
    # Without x64 mode, float64 weights become float32, as every JAX array would.
    dtype = jax.dtypes.canonicalize_dtype(w_hh.dtype if dtype is None else dtype)
    zeros = np.zeros(num_gates * hidden, w_hh.dtype)
    b_ih, b_hh = get("bias_ih", ""), get("bias_hh", "")
    params = {
        "w_ih": jnp.asarray(w_ih.T, dtype),
        "w_hh": jnp.asarray(w_hh.T, dtype),
        "b_ih": jnp.asarray(zeros if b_ih is None else b_ih, dtype),
        "b_hh": jnp.asarray(zeros if b_hh is None else b_hh, dtype),
    }
    if proj:
        w_hr = get("weight_hr", "(P, H)")
        if w_hr.shape != (proj, hidden):
            raise ValueError(
                f"from_torch: layer {k}{suffix} has weight_hr {w_hr.shape}; expected "
                f"({proj}, {hidden})"
            )
        params["w_hr"] = jnp.asarray(w_hr.T, dtype)
    return params


def _directions(level: Any, fn: str, name: str) -> list:
    if isinstance(level, Mapping) and "forward" in level and "backward" in level:
        return [level["forward"], level["backward"]]
    if isinstance(level, Mapping) and {"w_ih", "w_hh", "b_ih", "b_hh"} <= set(level):
        return [level]
    raise ValueError(
        f"{fn}: {name} must be the params of a built-in cell (w_ih, w_hh, b_ih, b_hh) or of a "
        f"bidirectional layer ({{'forward', 'backward'}}), per layer; got {type(level).__name__}"
    )


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# --- Flax ------------------------------------------------------------------------------------

FLAX_KINDS = ("LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell")
_LSTM_GATES, _GRU_GATES = ("i", "f", "g", "o"), ("r", "z", "n")


def from_flax(source: Any, kind: str | None = None, *, dtype: Any = None) -> tuple:
    """A seqjax cell and params that compute what a Flax recurrent cell computes.

    Args:
      source: a ``flax.nnx`` ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` or ``SimpleCell``
        (its kind is read from its type), or the params of a ``flax.linen`` one (the dict from
        ``cell.init``, with or without its ``{"params": ...}`` wrapper; then ``kind`` is required).
      kind: ``"LSTMCell"``, ``"OptimizedLSTMCell"``, ``"GRUCell"`` or ``"SimpleCell"``.
      dtype: the params' dtype; default: the source's.

    Returns:
      ``(cell, params)``. Flax's LSTM carry is ``(c, h)``; seqjax's is ``LSTMCarry(h, c)``.
      Only Flax's default activations are supported (sigmoid gates, tanh), and for
      ``SimpleCell`` not ``residual=True``: their functions are not in the params.
    """
    fn = "from_flax"
    kind, tree = _flax_tree(source, kind, fn)
    leaf = jax.tree.leaves(tree)
    if not leaf:
        raise ValueError(f"{fn}: source holds no parameters")
    dtype = jnp.dtype(dtype or leaf[0].dtype)
    get = lambda *path: _flax_leaf(tree, path, kind, fn)  # noqa: E731
    if kind in ("LSTMCell", "OptimizedLSTMCell"):
        if "dense_i" in tree:  # nnx OptimizedLSTMCell: the four gates already concatenated
            w_ih, w_hh = get("dense_i", "kernel"), get("dense_h", "kernel")
            b_hh = get("dense_h", "bias")
        else:
            w_ih = jnp.concatenate([get(f"i{g}", "kernel") for g in _LSTM_GATES], axis=-1)
            w_hh = jnp.concatenate([get(f"h{g}", "kernel") for g in _LSTM_GATES], axis=-1)
            b_hh = jnp.concatenate([get(f"h{g}", "bias") for g in _LSTM_GATES], axis=-1)
        hidden = w_hh.shape[0]
        b_ih = jnp.zeros_like(b_hh)
        cell = lstm(hidden, forget_bias=None)
    elif kind == "GRUCell":
        if "dense_i" in tree:  # nnx GRUCell: r, z, n concatenated; no hidden bias at all
            w_ih, b_ih = get("dense_i", "kernel"), get("dense_i", "bias")
            w_hh = get("dense_h", "kernel")
            b_hh = jnp.zeros_like(b_ih)
        else:
            w_ih = jnp.concatenate([get(f"i{g}", "kernel") for g in _GRU_GATES], axis=-1)
            b_ih = jnp.concatenate([get(f"i{g}", "bias") for g in _GRU_GATES], axis=-1)
            w_hh = jnp.concatenate([get(f"h{g}", "kernel") for g in _GRU_GATES], axis=-1)
            b_hn = get("hn", "bias")
            b_hh = jnp.concatenate([jnp.zeros_like(b_hn), jnp.zeros_like(b_hn), b_hn])
        cell = gru(w_hh.shape[0])
    else:
        names = ("dense_i", "dense_h") if "dense_i" in tree else ("i", "h")
        w_ih, b_ih = get(names[0], "kernel"), get(names[0], "bias")
        w_hh = get(names[1], "kernel")
        b_hh = jnp.zeros_like(b_ih)
        cell = simple_rnn(w_hh.shape[0])
    params = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
    return cell, {k: jnp.asarray(v, dtype) for k, v in params.items()}


def to_flax(params: Any, target: Any) -> Any:
    """seqjax params in a Flax cell's layout.

    Args:
      params: the params of a built-in ``lstm``, ``gru`` or ``simple_rnn`` cell.
      target: a ``flax.linen`` kind (``"LSTMCell"``, ``"OptimizedLSTMCell"``, ``"GRUCell"``,
        ``"SimpleCell"``): returns ``{"params": ...}`` for the linen cell's ``apply``; or a
        ``flax.nnx`` cell of the same sizes: its ``nnx.Param`` values are replaced in place and
        the module is returned.

    Flax keeps one bias per gate where seqjax keeps two (PyTorch's layout), so the LSTM's
    ``b_ih + b_hh`` goes into Flax's hidden bias, and so on: the function computed is the same.
    A GRU's candidate bias inside the reset product, ``b_hn``, has no place in ``nnx.GRUCell``
    (which has no hidden bias): a nonzero one is refused.
    """
    fn = "to_flax"
    p = {k: jnp.asarray(v) for k, v in _directions(params, fn, "params")[0].items()}
    kind = target if isinstance(target, str) else type(target).__name__
    _checks.check_choice(kind, FLAX_KINDS, "target kind", fn)
    G = p["w_hh"].shape[1] // p["w_hh"].shape[0]
    want = {"LSTMCell": 4, "OptimizedLSTMCell": 4, "GRUCell": 3, "SimpleCell": 1}[kind]
    if G != want or "w_hr" in p:
        raise ValueError(
            f"{fn}: params have {G} gate blocks (w_hh {tuple(p['w_hh'].shape)}); a {kind} needs "
            f"{want}" + (" and no projection (w_hr)" if "w_hr" in p else "")
        )
    split = lambda a: jnp.split(a, G, axis=-1)  # noqa: E731
    if kind in ("LSTMCell", "OptimizedLSTMCell"):
        bias = p["b_ih"] + p["b_hh"]
        tree = {"dense_i": {"kernel": p["w_ih"]}, "dense_h": {"kernel": p["w_hh"], "bias": bias}}
        per_gate = {}
        for g, wi, wh, b in zip(_LSTM_GATES, split(p["w_ih"]), split(p["w_hh"]), split(bias),
                                strict=True):  # fmt: skip
            per_gate |= {f"i{g}": {"kernel": wi}, f"h{g}": {"kernel": wh, "bias": b}}
    elif kind == "GRUCell":
        (bi_r, bi_z, bi_n), (bh_r, bh_z, bh_n) = split(p["b_ih"]), split(p["b_hh"])
        in_bias = jnp.concatenate([bi_r + bh_r, bi_z + bh_z, bi_n])
        tree = {"dense_i": {"kernel": p["w_ih"], "bias": in_bias},
                "dense_h": {"kernel": p["w_hh"]}}  # fmt: skip
        per_gate = {}
        for g, wi, wh, b in zip(_GRU_GATES, split(p["w_ih"]), split(p["w_hh"]), split(in_bias),
                                strict=True):  # fmt: skip
            per_gate |= {f"i{g}": {"kernel": wi, "bias": b}, f"h{g}": {"kernel": wh}}
        per_gate["hn"]["bias"] = bh_n
        if not isinstance(target, str) and bool(jnp.any(bh_n != 0)):
            raise ValueError(
                f"{fn}: nnx.GRUCell has no hidden bias, but these params have a nonzero b_hn "
                "(the candidate's bias inside the reset product); use flax.linen's GRUCell"
            )
    else:
        bias = p["b_ih"] + p["b_hh"]
        tree = {"dense_i": {"kernel": p["w_ih"], "bias": bias}, "dense_h": {"kernel": p["w_hh"]}}
        per_gate = {"i": {"kernel": p["w_ih"], "bias": bias}, "h": {"kernel": p["w_hh"]}}
    if isinstance(target, str):
        return {"params": per_gate}
    module_tree = tree if hasattr(target, "dense_i") else per_gate
    for name, leaves in module_tree.items():
        for leaf_name, value in leaves.items():
            param = getattr(getattr(target, _nnx_attr(name)), leaf_name)
            current = param.get_value()
            if tuple(current.shape) != tuple(value.shape):
                raise ValueError(
                    f"{fn}: the target's {name}.{leaf_name} has shape {tuple(current.shape)}; "
                    f"these params give {tuple(value.shape)}. Build the Flax cell with the same "
                    "input and hidden sizes"
                )
            param.set_value(value.astype(current.dtype))
    return target


def _nnx_attr(name: str) -> str:
    return "if_" if name == "if" else name  # `if` is a Python keyword: nnx.LSTMCell uses if_


def _flax_tree(source: Any, kind: str | None, fn: str) -> tuple[str, dict]:
    """``(kind, nested dict of arrays)`` with linen's names (nnx's ``if_`` read as ``if``)."""
    if isinstance(source, Mapping):
        if kind is None:
            raise ValueError(
                f"{fn}: kind is required for linen params; expected one of {', '.join(FLAX_KINDS)}"
            )
        _checks.check_choice(kind, FLAX_KINDS, "kind", fn)
        tree = source.get("params", source)
        return kind, jax.tree.map(jnp.asarray, dict(tree))
    found = type(source).__name__
    if found not in FLAX_KINDS or not hasattr(source, "hidden_features"):
        raise TypeError(
            f"{fn}: source must be a flax.nnx LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell, "
            f"or a flax.linen cell's params; got {found}"
        )
    if kind is not None and kind != found:
        raise ValueError(f"{fn}: kind={kind!r} disagrees with the module, a {found}")
    if getattr(source, "residual", False):
        raise ValueError(f"{fn}: SimpleCell(residual=True) has no seqjax equivalent")
    from flax import nnx

    state = nnx.state(source, nnx.Param).to_pure_dict()
    tree = {("if" if k == "if_" else k): v for k, v in state.items()}
    return found, tree


def _flax_leaf(tree: dict, path: tuple[str, str], kind: str, fn: str) -> jax.Array:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(
                f"{fn}: the {kind} params have no {'/'.join(path)}; got top-level keys "
                f"{sorted(tree)}. Is kind right?"
            )
        node = node[part]
    return jnp.asarray(node)
