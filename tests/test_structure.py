"""The restructure's promises, checked: one options object reaches every entry point, the
deprecated names still work (with a warning), the kernels are chosen by a registry, the types
module imports no other part of seqjax, and no function in seqjax/ outgrows 80 lines of code."""

from __future__ import annotations

import ast
import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax.layers import BidirectionalSpec, RNNSpec, StackSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, T, D, H = 2, 6, 3, 4


def data():
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    return xs, jnp.array([6, 3])


def test_unroll_options_equal_keywords_and_reach_rnn():
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs, lengths = data()
    options = seqjax.UnrollOptions(reverse=True, remat=True, custom_vjp=False, native=False)
    want = seqjax.unroll(cell, params, xs, lengths=lengths, reverse=True, remat=True,
                         custom_vjp=False, native=False)  # fmt: skip
    got = seqjax.unroll(cell, params, xs, lengths=lengths, options=options)
    layer = seqjax.rnn(cell, options=options)
    by_layer = layer.apply(params, xs, lengths=lengths)
    by_keywords = seqjax.rnn(cell, reverse=True, remat=True, custom_vjp=False,
                             native=False).apply(params, xs, lengths=lengths)  # fmt: skip
    for out in (got, by_layer, by_keywords):
        np.testing.assert_allclose(out[1], want[1], rtol=1e-6, atol=1e-6)
    assert layer.spec == RNNSpec(cell, options)
    assert hash(options) == hash(seqjax.UnrollOptions(**vars(options)))


def test_rnn_passes_custom_vjp_false_so_forward_mode_works():
    """The error for jax.jvp through the custom VJP tells the user to pass custom_vjp=False to
    the layer: that must be possible and must work."""
    cell = seqjax.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs, _ = data()
    with pytest.raises(TypeError, match="custom_vjp=False"):
        jax.jvp(lambda x: seqjax.rnn(cell).apply(params, x)[1], (xs,), (xs,))
    layer = seqjax.rnn(cell, custom_vjp=False)
    _, tangent = jax.jvp(lambda x: layer.apply(params, x)[1], (xs,), (xs,))
    eps = 1e-3  # the directional derivative, by central differences
    ahead, behind = (layer.apply(params, xs + s * eps * xs)[1] for s in (1, -1))
    np.testing.assert_allclose(tangent, (ahead - behind) / (2 * eps), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: seqjax.UnrollOptions(unroll=0),
         "UnrollOptions: unroll must be a positive integer"),
        (lambda: seqjax.UnrollOptions(remat="yes"), "UnrollOptions: remat must be True or False"),
        (lambda: seqjax.UnrollOptions(chunk_size=4), "chunk_size applies to parallel=True only"),
        (lambda: seqjax.rnn(seqjax.gru(2), rematt=True), "rnn: unknown option 'rematt'"),
        (lambda: seqjax.rnn(seqjax.gru(2), options=seqjax.UnrollOptions(), remat=True),
         "not both; got options= and remat"),
        (lambda: seqjax.rnn(seqjax.gru(2), options={"remat": True}),
         "must be a seqjax.UnrollOptions"),
        (lambda: seqjax.UnrollOptions().replace(native=3), "native must be True or False"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_by_name(call, message):
    with pytest.raises(
        (TypeError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        call()


def test_nnx_module_keeps_its_options_object():
    from flax import nnx

    import seqjax.nn as snn

    module = snn.GRU(D, H, rngs=nnx.Rngs(0), remat=True, custom_vjp=False)
    assert module.options == seqjax.UnrollOptions(remat=True, custom_vjp=False)
    with pytest.raises(TypeError, match=r"reverse.*it is an argument of each call"):
        snn.GRU(D, H, rngs=nnx.Rngs(0), reverse=True)


def test_layer_specs_and_the_deprecated_parts():
    fwd, bwd = seqjax.rnn(seqjax.gru(H)), seqjax.rnn(seqjax.lstm(H))
    both = seqjax.bidirectional(fwd, bwd)
    model = seqjax.stack(both, seqjax.rnn(seqjax.gru(H)), dropout=0.25)
    assert both.spec == BidirectionalSpec(fwd, bwd)
    assert isinstance(model.spec, StackSpec) and model.spec.dropout == 0.25
    assert model.spec.layers[0] is both
    with pytest.warns(DeprecationWarning, match="Layer.parts is deprecated"):
        parts = fwd.parts
    assert parts[0] == "rnn" and parts[1] is fwd.spec.cell and dict(parts[2])["reverse"] is False
    with pytest.warns(DeprecationWarning):
        assert model.parts == ("stack", model.spec.layers, 0.25)


def test_kernels_come_from_the_registry_and_the_old_field_still_works():
    from seqjax import native

    assert native.kernel_for(seqjax.lstm(H).recur_split) == "lstm"
    assert native.kernel_for(seqjax.gru(H).recur_split) == "gru"
    assert native.kernel_for(seqjax.simple_rnn(H).recur_split) == "rnn_tanh"
    assert native.kernel_for(seqjax.irnn(H).recur_split) == "rnn_relu"
    # the IndRNN reuses the ReLU step with an elementwise hidden product: no kernel
    assert native.kernel_for(seqjax.indrnn(H).recur_split) is None
    assert native.kernel_for(seqjax.lstm(H, peephole=True).recur_split) is None
    own = seqjax.lstm(H).recur_split._replace(
        combine=lambda c, px, hh: seqjax.cells.lstm.lstm_step(c, px, hh)
    )
    assert native.kernel_for(own) is None
    with pytest.warns(DeprecationWarning, match=re.escape("RecurSplit(native=...) is deprecated")):
        assert native.kernel_for(own._replace(native="lstm")) == "lstm"


def test_initialisation_keywords_are_checked_by_name():
    with pytest.raises(TypeError, match="gru: unknown keyword argument 'recurrent'"):
        seqjax.gru(H, recurrent=None)
    with pytest.raises(TypeError, match="min_lstm: unknown keyword argument 'recurrent_init'"):
        seqjax.min_lstm(H, recurrent_init=seqjax.initializers.orthogonal())
    scaled = seqjax.simple_rnn(H, recurrent_init=seqjax.initializers.identity(0.5))
    w_hh = scaled.init(jax.random.key(0), D)["w_hh"]
    np.testing.assert_array_equal(w_hh, 0.5 * np.eye(H, dtype=np.float32))


def _seqjax_imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqjax"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("seqjax")}
    return found


def test_the_types_module_and_the_checks_import_no_cell():
    assert _seqjax_imports(ROOT / "seqjax" / "types.py") == set()
    assert _seqjax_imports(ROOT / "seqjax" / "_checks.py") == {"seqjax.types"}


def test_no_function_in_seqjax_has_more_than_80_lines_of_code():
    too_long = []
    for path in sorted((ROOT / "seqjax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(
                getattr(first, "value", None), ast.Constant
            ):
                lines -= first.end_lineno - first.lineno + 1  # the docstring does not count
            if lines > 80:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not too_long, too_long


def test_deprecations_warn_only_when_used():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        cell = seqjax.lstm(H)
        params = cell.init(jax.random.key(0), D)
        seqjax.stack(seqjax.rnn(cell)).apply((params,), data()[0])


def test_stack_options_reach_every_recurrent_layer():
    cell_a, cell_b = seqjax.gru(H), seqjax.lstm(H)
    model = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(cell_a), seqjax.rnn(cell_a)),
        seqjax.rnn(cell_b, reverse=True),
        options=seqjax.UnrollOptions(remat=True, custom_vjp=False),
    )
    bi, last = model.spec.layers
    for inner in (bi.spec.forward, bi.spec.backward, last):
        assert inner.spec.options.remat and inner.spec.options.custom_vjp is False
    assert last.spec.options.reverse  # its own direction stays
    plain = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(cell_a), seqjax.rnn(cell_a)),
        seqjax.rnn(cell_b, reverse=True),
    )
    params = plain.init(jax.random.key(0), D)
    xs, lengths = data()
    np.testing.assert_allclose(
        model.apply(params, xs, lengths=lengths)[1],
        plain.apply(params, xs, lengths=lengths)[1],
        rtol=1e-5,
        atol=1e-6,
    )
    by_hand = seqjax.Layer(plain.init, plain.apply, plain.initial_carry, plain.output_size)
    with pytest.raises(
        TypeError, match=r"stack: options= applies .* layers\[0\] was built by hand"
    ):
        seqjax.stack(by_hand, options=seqjax.UnrollOptions(remat=True))


def test_no_module_of_seqjax_imports_itself_in_a_cycle():
    """Module-level imports only: an import inside a function runs at call time, after every
    module has loaded, and cannot form an import cycle."""
    modules = {}
    for path in (ROOT / "seqjax").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqjax"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("seqjax")}
        graph[name] = edges
    done, path_now = set(), []

    def visit(name):
        if name in path_now:
            raise AssertionError("import cycle: " + " -> ".join([*path_now, name]))
        if name in done or name not in graph:
            return
        path_now.append(name)
        for neighbour in graph[name]:
            visit(neighbour)
        path_now.pop()
        done.add(name)

    for name in graph:
        visit(name)
    assert "seqjax.types" in done and len(done) == len(graph)


def test_options_unpack_like_the_pairs_modules_kept_before():
    options = seqjax.UnrollOptions(remat=True, native=False)
    assert dict(options)["remat"] is True and len(dict(options)) == 9
    cell = seqjax.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs, _ = data()
    np.testing.assert_array_equal(
        seqjax.unroll(cell, params, xs, **options)[1],
        seqjax.unroll(cell, params, xs, options=options)[1],
    )
    with pytest.raises(KeyError, match="no option 'rematt'"):
        options["rematt"]
