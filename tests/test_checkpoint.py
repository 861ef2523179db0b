"""Checkpoints: bit-identical round trips, atomic writes, and refusal of damaged files."""

from __future__ import annotations

import json
import os
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax.train import checkpoint


def make_state(seed: int = 0):
    params = {
        "w": jax.random.normal(jax.random.key(seed), (4, 3)),
        "b": jnp.arange(3, dtype=jnp.float32),
    }
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"params": params, "opt": opt_state, "key": jax.random.key(seed + 7), "pos": np.int64(5)}


def assert_identical(a, b):
    a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(a_leaves) == len(b_leaves)
    for x, y in zip(a_leaves, b_leaves, strict=True):
        if checkpoint._is_key(x):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bit_identical(tmp_path):
    state = make_state()
    path = checkpoint.save(tmp_path, state, step=12, metadata={"task": "adding", "epoch": 2})
    assert path.name == "ckpt_000000012.msgpack"
    restored, step, metadata = checkpoint.load(path, make_state(seed=1))
    assert step == 12 and metadata == {"task": "adding", "epoch": 2}
    assert_identical(restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    # the restored key draws the same numbers as the saved one
    np.testing.assert_array_equal(
        jax.random.normal(restored["key"], (3,)), jax.random.normal(state["key"], (3,))
    )


def test_keep_prunes_old_checkpoints_and_latest_picks_the_newest(tmp_path):
    for step in range(5):
        checkpoint.save(tmp_path, make_state(step), step=step, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt_000000003.msgpack", "ckpt_000000004.msgpack"]
    state, step, _ = checkpoint.latest(tmp_path, make_state())
    assert step == 4
    assert_identical(state, make_state(4))
    assert checkpoint.latest(tmp_path / "nothing", make_state()) is None


def test_truncated_newest_is_refused_and_the_previous_used(tmp_path):
    checkpoint.save(tmp_path, make_state(1), step=1)
    newest = checkpoint.save(tmp_path, make_state(2), step=2)
    newest.write_bytes(newest.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load(newest, make_state())
    with pytest.warns(UserWarning, match="ckpt_000000002"):
        state, step, _ = checkpoint.latest(tmp_path, make_state())
    assert step == 1
    assert_identical(state, make_state(1))
    with pytest.warns(UserWarning, match="ckpt_000000002"):
        assert checkpoint.latest_metadata(tmp_path) == (1, {})


def test_altered_and_foreign_files_are_refused(tmp_path):
    path = checkpoint.save(tmp_path, make_state(), step=0)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        checkpoint.load(path, make_state())
    path.write_bytes(os.urandom(200))
    with pytest.raises(checkpoint.CheckpointError, match="magic"):
        checkpoint.load(path, make_state())
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        with pytest.warns(UserWarning):
            checkpoint.latest(tmp_path, make_state())


def _rewrite_header(path, change):
    """Rewrites a checkpoint's JSON header through ``change(header) -> new header``, keeping
    its payload: what a corrupted or hand-edited header looks like."""
    data = path.read_bytes()
    (size,) = struct.unpack("<I", data[8:12])
    header = change(json.loads(data[12 : 12 + size]))
    text = json.dumps(header).encode()
    path.write_bytes(data[:8] + struct.pack("<I", len(text)) + text + data[12 + size :])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: {**{k: v for k, v in h.items() if k != "sha256"}, "sha25X": h["sha256"]},
         "field 'sha256' is missing"),
        (lambda h: {**h, "payload_bytes": "many"}, "field 'payload_bytes' .* not a int"),
        (lambda h: [h], "not a JSON object"),
        (lambda h: {**h, "metadata": {**h["metadata"], "position": 999}}, "header checksum"),
        (lambda h: {**h, "step": 7}, "header checksum"),
    ],
)  # fmt: skip
def test_an_altered_header_is_refused_and_the_previous_used(tmp_path, change, message):
    checkpoint.save(tmp_path, make_state(1), step=1, metadata={"position": 3})
    newest = checkpoint.save(tmp_path, make_state(2), step=2, metadata={"position": 6})
    _rewrite_header(newest, change)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(newest, make_state())
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.read_metadata(newest)
    with pytest.warns(UserWarning, match="ckpt_000000002"):
        state, step, metadata = checkpoint.latest(tmp_path, make_state())
    assert step == 1 and metadata == {"position": 3}
    assert_identical(state, make_state(1))


def test_read_metadata_verifies_the_payload(tmp_path):
    path = checkpoint.save(tmp_path, make_state(), step=4, metadata={"a": 1})
    assert checkpoint.read_metadata(path) == (4, {"a": 1})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="sha256 checksum"):
        checkpoint.read_metadata(path)


def test_a_state_of_another_shape_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, make_state(), step=0)
    other = make_state()
    other["params"]["w"] = jnp.zeros((5, 3))
    mismatch = r"does not match this state: at params/w expected .*\[5, 3\], found .*\[4, 3\]"
    with pytest.raises(checkpoint.CheckpointMismatchError, match=mismatch):
        checkpoint.load(path, other)
    with pytest.raises(checkpoint.CheckpointError, match="expected keys"):
        checkpoint.load(path, {"params": other["params"]})


def test_no_pickle_is_involved(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "dumps", refuse)
    path = checkpoint.save(tmp_path, make_state(), step=3)
    assert b"\x80\x04" not in path.read_bytes()[:16]
    checkpoint.load(path, make_state())


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    good = checkpoint.save(tmp_path, make_state(1), step=1)
    before = good.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, make_state(2), step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # no partial file left
    assert good.read_bytes() == before


def test_bad_arguments(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        checkpoint.save(afile, make_state(), step=0)
    with pytest.raises(ValueError, match="step"):
        checkpoint.save(tmp_path, make_state(), step=-1)
    with pytest.raises(ValueError, match="keep"):
        checkpoint.save(tmp_path, make_state(), step=0, keep=0)
