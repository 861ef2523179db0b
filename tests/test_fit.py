"""``seqjax.train.fit``: it learns, it logs, and a killed run resumes to the same bits."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import seqjax
from seqjax import train
from seqjax.tasks import adding
from seqjax.train import losses

SCRIPT = pathlib.Path(__file__).parent / "fit_script.py"


def _problem():
    layer = seqjax.rnn(seqjax.gru(16))
    params = {"rnn": layer.init(jax.random.key(0), 2), "out": 0.1 * np.ones(16, np.float32)}
    xs, ys = adding.batch(jax.random.key(1), 512, 10)
    data = {"inputs": np.asarray(xs[:384]), "targets": np.asarray(ys[:384])}
    held_out = {"inputs": np.asarray(xs[384:]), "targets": np.asarray(ys[384:])}

    def model(params, batch, key):
        _, out = layer.apply(params["rnn"], batch["inputs"])
        return out[:, -1] @ params["out"] + 1.0

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    return model, loss, params, data, held_out


def test_fit_learns_and_logs(tmp_path):
    model, loss, params, data, held_out = _problem()
    lines = []
    _, history = train.fit(model, loss, params, train.optimizer(learning_rate=1e-2, clip_norm=1.0),
                           data, steps=300, batch_size=32, eval_data=held_out, eval_every=100,
                           clip_norm=1.0, run_dir=tmp_path, log=lines.append)  # fmt: skip
    assert [r["step"] for r in history] == [100, 200, 300]
    assert history[-1]["eval_loss"] < 0.5 * adding.BASELINE_MSE
    assert 0.0 <= history[-1]["clipped_fraction"] <= 1.0 and history[-1]["nonfinite_steps"] == 0
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == history
    assert len(lines) == 3 and "steps/s" in lines[-1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1].endswith("300.msgpack")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_step = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in per_step] == list(range(1, 301))
    np.testing.assert_allclose(  # the report is the mean of its steps
        np.mean([r["grad_norm"] for r in per_step[200:]]), history[-1]["grad_norm"], rtol=1e-6
    )
    clipped = [r["grad_norm"] > 1.0 for r in per_step[200:]]
    assert [r["clipped"] for r in per_step[200:]] == clipped


def test_fit_without_matplotlib_trains_and_says_it_drew_no_curve(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    model, loss, params, data, _ = _problem()
    lines = []
    train.fit(model, loss, params, train.optimizer(learning_rate=1e-2), data, steps=4,
              batch_size=32, eval_every=2, run_dir=tmp_path, log=lines.append)  # fmt: skip
    assert [line for line in lines if "curve.png not drawn" in line] == [
        "curve.png not drawn: matplotlib is not installed (pip install 'seqjax[plot]')"
    ]
    assert not (tmp_path / "curve.png").exists() and (tmp_path / "metrics.jsonl").exists()


def _fit_params(data, steps, run_dir=None, resume=False):
    model, loss, params, _, _ = _problem()
    final, _ = train.fit(model, loss, params, train.optimizer(learning_rate=1e-2), data,
                         steps=steps, batch_size=32, eval_every=10, checkpoint_every=10,
                         run_dir=run_dir, resume=resume, log=lambda line: None)  # fmt: skip
    return jax.tree.leaves(final)


def test_fit_takes_a_step_function_or_an_iterator_of_batches(tmp_path):
    *_, data, _ = _problem()
    from_arrays = _fit_params(data, 20)
    per_step = [train.batch_for_step(data, step, 32, 0) for step in range(20)]
    for source in (per_step.__getitem__, iter(per_step), per_step):
        for a, b in zip(from_arrays, _fit_params(source, 20), strict=True):
            np.testing.assert_array_equal(a, b)
    # A resumed run skips the batches that the checkpointed steps used.
    _fit_params(iter(per_step[:10]), 10, run_dir=tmp_path)
    resumed = _fit_params(iter(per_step), 20, run_dir=tmp_path, resume=True)
    for a, b in zip(from_arrays, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="ran out of batches at step 5"):
        _fit_params(iter(per_step[:5]), 20)
    with pytest.raises(TypeError, match="each batch must be a dict"):
        _fit_params(iter([np.zeros(3)]), 1)
    with pytest.raises(TypeError, match="data must be"):
        _fit_params(3.0, 1)


def test_fit_rejects_bad_input(tmp_path):
    model, loss, params, data, _ = _problem()
    opt = train.optimizer()
    with pytest.raises(ValueError, match="steps"):
        train.fit(model, loss, params, opt, data, steps=0)
    with pytest.raises(ValueError, match="batch_size 1000"):
        train.fit(model, loss, params, opt, data, steps=1, batch_size=1000)
    with pytest.raises(ValueError, match="disagree"):
        mismatched = {"inputs": data["inputs"], "targets": data["targets"][:5]}
        train.fit(model, loss, params, opt, mismatched, steps=1)
    with pytest.raises(ValueError, match="nothing to resume"):
        train.fit(model, loss, params, opt, data, steps=1, run_dir=tmp_path, resume=True)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        train.fit(model, loss, params, opt, data, steps=1, run_dir=afile)


def test_fit_leaves_the_callers_params_usable_and_refuses_a_used_run_dir(tmp_path):
    model, loss, params, data, _ = _problem()
    opt = train.optimizer()
    kept = jax.tree.map(np.asarray, params)
    first, _ = train.fit(model, loss, params, opt, data, steps=3, batch_size=8,
                         run_dir=tmp_path, log=lambda line: None)  # fmt: skip
    # the same initial params train again (the step donates its state, not the caller's)
    again, _ = train.fit(model, loss, params, opt, data, steps=3, batch_size=8,
                         log=lambda line: None)  # fmt: skip
    for a, b, c in zip(jax.tree.leaves(first), jax.tree.leaves(again), jax.tree.leaves(kept),
                       strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert not np.array_equal(np.asarray(a), c)  # trained: not the initial values
    with pytest.raises(ValueError, match=r"holds another run .*resume=True"):
        train.fit(model, loss, params, opt, data, steps=3, batch_size=8, run_dir=tmp_path)


def _run(run_dir, steps, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), str(steps), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def test_killed_run_resumes_bit_identical(tmp_path):
    steps = 1200
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _run(straight, steps)
    victim = _run(killed, steps)
    checkpoints = killed / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        found = sorted(checkpoints.glob("ckpt_*.msgpack")) if checkpoints.exists() else []
        if found and int(found[-1].stem.split("_")[1]) >= 30:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    saved = sorted(checkpoints.glob("ckpt_*.msgpack"))
    assert int(saved[-1].stem.split("_")[1]) < steps  # killed mid-run
    resumed = _run(killed, steps, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    a, b = np.load(straight / "final.npz"), np.load(killed / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])  # bit for bit
    logged = [json.loads(x)["step"] for x in (killed / "steps.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # every step once, none lost to the kill


def test_time_limit_ends_the_run_early_with_a_report_and_a_checkpoint(tmp_path):
    model, loss, params, data, _ = _problem()
    lines = []
    _, history = train.fit(model, loss, params, train.optimizer(), data, steps=1000,
                           batch_size=32, run_dir=tmp_path, time_limit=1e-9,
                           log=lines.append)  # fmt: skip
    assert [r["step"] for r in history] == [1]
    assert "stopped at step 1/1000" in lines[-1]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_000000001.msgpack"]
    with pytest.raises(ValueError, match="time_limit"):
        train.fit(model, loss, params, train.optimizer(), data, steps=1, time_limit=0)
