"""What ``fit`` does with each report: hands it to a callback, evaluates the held-out set in
chunks (the whole set's metrics, exactly), and writes it as TensorBoard scalars."""

from __future__ import annotations

import json
import pathlib
import struct
import sys
import types

import numpy as np
import pytest

from seqjax import train
from seqjax.train import losses

D = 3


def _problem(n_train: int = 32, n_eval: int = 10):
    """A linear regression: ``x @ w + b`` against noisy targets."""
    rng = np.random.default_rng(0)
    w_true = np.array([1.0, -2.0, 0.5], np.float32)

    def arrays(n):
        x = rng.normal(size=(n, D)).astype(np.float32)
        return {"x": x, "y": (x @ w_true + 0.3 * rng.normal(size=n)).astype(np.float32)}

    params = {"w": np.zeros(D, np.float32), "b": np.zeros((), np.float32)}

    def model(params, batch, key):
        return batch["x"] @ params["w"] + params["b"]

    def loss(predictions, batch):
        return losses.mse(predictions, batch["y"])

    return model, loss, params, arrays(n_train), arrays(n_eval)


def _fit(**kwargs):
    model, loss, params, data, held_out = _problem()
    options = {"steps": 4, "batch_size": 8, "eval_data": held_out, "eval_every": 2,
               "log": lambda line: None, "progress": False, **kwargs}  # fmt: skip
    return train.fit(model, loss, params, train.optimizer(learning_rate=0.1), data, **options)


def test_the_callback_gets_each_record_of_the_history_once_it_is_logged(tmp_path):
    received, logged_then = [], []

    def callback(record):
        received.append(record)
        lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
        logged_then.append(json.loads(lines[-1]))

    _, history = _fit(steps=6, run_dir=tmp_path, callback=callback, tensorboard=False)
    assert [r["step"] for r in history] == [2, 4, 6]
    assert received == history and all("eval_loss" in r for r in received)
    assert logged_then == history  # metrics.jsonl already held the record the callback got


def test_chunked_evaluation_is_the_whole_sets_mse_and_rmse():
    seen = []

    def metrics(predictions, batch):
        seen.append(batch["x"].shape[0])  # at trace time: the chunk sizes
        mse = losses.mse(predictions, batch["y"])
        return {"mse": mse, "rmse": losses.RootMean(mse)}

    *_, held_out = _problem(n_eval=10)
    results = {}
    for chunk in (3, 1024):
        seen.clear()
        final, history = _fit(metrics=metrics, eval_batch_size=chunk)
        results[chunk] = history[-1]
        assert sorted(set(seen)) == ([1, 3] if chunk == 3 else [10])
    errors = held_out["x"].astype(np.float64) @ np.asarray(final["w"], np.float64)
    errors += float(final["b"]) - held_out["y"]
    mse = np.mean(errors**2)
    for record in results.values():
        assert isinstance(record["eval_mse"], float) and isinstance(record["eval_rmse"], float)
        np.testing.assert_allclose(record["eval_mse"], mse, rtol=1e-5)
        np.testing.assert_allclose(record["eval_rmse"], np.sqrt(mse), rtol=1e-5)
    # a plain mean of the four chunks' values, or of their roots, would be off by far more
    chunk_mses = [np.mean(errors[i : i + 3] ** 2) for i in range(0, 10, 3)]
    assert abs(np.mean(chunk_mses) - mse) > 1e-3 * mse
    assert abs(np.mean(np.sqrt(chunk_mses)) - np.sqrt(mse)) > 1e-3 * np.sqrt(mse)


def _read_events(folder: pathlib.Path) -> list:
    """Every event of the TFRecord files in ``folder`` (uint64 length, uint32 crc, data,
    uint32 crc), oldest file first."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, offset = path.read_bytes(), 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<Q", raw, offset)
            events.append(Event.FromString(raw[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def _scalars(events) -> dict[tuple[str, int], float]:
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


def _expected(history) -> dict[tuple[str, int], float]:
    expected = {}
    for record in history:
        for name, value in record.items():
            if name != "step" and value is not None:
                tag = f"eval/{name[5:]}" if name.startswith("eval_") else f"train/{name}"
                expected[tag, record["step"]] = value
    return expected


def test_tensorboard_scalars_are_the_history(tmp_path, monkeypatch):
    tensorboardx = pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import SessionLog

    # The event file's name holds whole seconds: every run here starts in the same second, as
    # a quick resume may, and must not truncate the file of the one before.
    clock = types.SimpleNamespace(time=lambda: 1.7e9)
    monkeypatch.setattr(tensorboardx.event_file_writer, "time", clock)

    _, history = _fit(run_dir=tmp_path, checkpoint_every=2)
    scalars = _scalars(_read_events(tmp_path / "tensorboard"))
    expected = _expected(history)
    assert {"train/loss", "train/grad_norm", "eval/loss"} <= {tag for tag, _ in expected}
    assert scalars.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(scalars[key], value, rtol=1e-6, err_msg=str(key))
    # resumed: a second file, which tells TensorBoard to drop what came after the checkpoint
    _, history = _fit(run_dir=tmp_path, resume=True, steps=6, checkpoint_every=2)
    events = _read_events(tmp_path / "tensorboard")
    starts = [e.step for e in events if e.session_log.status == SessionLog.START]
    assert starts == [5] and len(list((tmp_path / "tensorboard").iterdir())) == 2
    assert _scalars(events).keys() == _expected(history).keys()
    # replaced: the old run's events are moved aside with its other files, then deleted
    _, history = _fit(run_dir=tmp_path, overwrite=True, steps=2)
    assert _scalars(_read_events(tmp_path / "tensorboard")).keys() == _expected(history).keys()


def test_tensorboard_true_without_tensorboardx_is_refused_before_any_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX fails
    with pytest.raises(ValueError, match=r"tensorboard=True.*pip install tensorboardX"):
        _fit(run_dir=tmp_path / "run", tensorboard=True)
    assert not (tmp_path / "run").exists()
    _fit(run_dir=tmp_path / "run")  # by default, then, no TensorBoard files
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"eval_batch_size": 0}, "fit: eval_batch_size must be a positive integer; got 0"),
     ({"tensorboard": "yes"}, "fit: tensorboard must be True or False; got 'yes'"),
     ({"callback": 3}, "fit: callback must be a function")],
)  # fmt: skip
def test_bad_report_arguments_are_refused_by_name(tmp_path, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        _fit(run_dir=tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()
