"""A user's own files in, a usable model out: forecasting a CSV series, classifying NPZ and long
CSV sequences, sampling, predicting, exporting, and every bad file refused with one line."""

from __future__ import annotations

import csv
import json
import pathlib

import jax
import numpy as np
import pytest

from seqjax import cli
from seqjax.tasks import forecast, sequences
from seqjax.tasks.files import DataFileError
from seqjax.train import export, runs

TINY = ["--hidden", "8", "--batch-size", "8"]


def write_series(path: pathlib.Path, n: int = 120, with_feature: bool = True) -> pathlib.Path:
    t = np.arange(n)
    y = 5 + 0.05 * t + np.sin(2 * np.pi * t / 12) + 0.1 * np.random.default_rng(0).normal(size=n)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date", "y", "x"] if with_feature else ["date", "y"])
        for i in range(n):
            row = [f"m{i}", f"{y[i]:.6f}"] + ([f"{np.cos(i):.4f}"] if with_feature else [])
            writer.writerow(row)
    return path


def sequences_arrays(n: int = 40, t: int = 12, d: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, n)
    labels = np.arange(n) % 3
    xs = rng.normal(size=(n, t, d)) + labels[:, None, None]
    xs[np.arange(t)[None, :] >= lengths[:, None]] = 0.0
    return xs.astype(np.float32), labels, lengths


def write_long_csv(path, xs, labels, lengths, names=("a", "b")) -> pathlib.Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence_id", "time", *names, "label"])
        for i in range(len(xs)):
            for s in reversed(range(lengths[i])):  # rows out of order: `time` orders them
                writer.writerow([f"s{i}", s, *(f"{v:.6f}" for v in xs[i, s]), f"c{labels[i]}"])
    return path


def train(tmp_path, *argv) -> pathlib.Path:
    run_dir = tmp_path / "run"
    assert cli.main(["train", *argv, "--steps", "20", *TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


# ------------------------------------------------------------------------------- forecasting


def test_baselines_on_series_with_known_answers():
    # y_t = t: persistence misses step k by k + 1; a linear AR is exact.
    line = np.arange(200.0)[:, None]
    spec = forecast.fit_spec(line, "y", [], window=5, horizon=3, period=None)
    found = forecast.baselines(line, spec)
    np.testing.assert_allclose(found["persistence"]["rmse"], np.sqrt((1 + 4 + 9) / 3))
    np.testing.assert_allclose(found["persistence"]["mae"], 2.0)
    assert found["linear AR(5)"]["rmse"] < 1e-8
    # a pure season: seasonal-naive is exact
    wave = np.sin(2 * np.pi * np.arange(200) / 7)[:, None] + 3
    spec = forecast.fit_spec(wave, "y", [], window=10, horizon=9, period=7)
    assert forecast.baselines(wave, spec)["seasonal naive (period 7)"]["rmse"] < 1e-12


def test_forecast_splits_are_chronological_and_scaled_on_train_only():
    values = np.arange(100.0)[:, None] ** 2
    spec = forecast.fit_spec(values, "y", [], window=4, horizon=2, period=None)
    np.testing.assert_allclose(spec["mean"], values[:70].mean(0))  # 70% train rows
    data = forecast.dataset(values, spec)
    # every example's targets lie in its own split: train < 70 <= validation < 85 <= test
    last = {k: v["last"] for k, v in data.items()}
    assert last["train"].max() == values[67, 0]  # window ends at 67, targets 68 and 69
    assert last["validation"].min() == values[69, 0] and last["test"].min() == values[84, 0]
    # targets are the changes from the window's last value, in units of change_scale
    batch = data["test"]
    future = forecast.to_values(batch["targets"], batch["last"], spec)
    np.testing.assert_allclose(future[0], values[85:87, 0], rtol=1e-5)


def test_forecast_train_then_forecast_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = write_series(tmp_path / "series.csv")
    run_dir = train(tmp_path, "--task", "forecast", "--data", str(data), "--target", "y",
                    "--features", "x", "--window", "12", "--horizon", "2",
                    "--period", "12")  # fmt: skip
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result["test"]) == {"rmse", "mae"} and result["value"] == result["test"]["rmse"]
    assert set(result["baselines"]) == {"persistence", "seasonal naive (period 12)",
                                        "linear AR(12)"}  # fmt: skip
    out, plot = tmp_path / "f.csv", tmp_path / "f.png"
    argv = ["forecast", "--run-dir", str(run_dir), "--data", str(data), "--holdout", "5",
            "--out", str(out), "--plot", str(plot)]  # fmt: skip
    assert cli.main(argv) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(out.open()))
    assert [r["date"] for r in rows] == ["m115", "m116"]
    values, _ = forecast.read(data, "y", ["x"])
    np.testing.assert_allclose([float(r["truth"]) for r in rows], values[115:117, 0], rtol=1e-6)
    # the forecast is the run's model on the last window, computed here from the spec
    run = runs.load_run(run_dir)
    spec = run.spec
    window = values[115 - 12 : 115]
    changes = (window[:, :1] - window[-1, 0]) / spec["change_scale"]
    feature = (window[:, 1:] - spec["mean"][1]) / spec["std"][1]
    inputs = np.concatenate([changes, feature], axis=1)
    outputs = run.model.apply(run.params, {"inputs": inputs[None].astype(np.float32)}, None)
    expected = window[-1, 0] + np.asarray(outputs[0]) * spec["change_scale"]
    np.testing.assert_allclose([float(r["forecast"]) for r in rows], expected, rtol=1e-5)
    # asking for more steps than a run with features can make is refused
    assert cli.main([*argv[:-4], "--horizon", "5", "--out", str(tmp_path / "g.csv")]) == 2
    assert "cannot go further" in capsys.readouterr().err


def test_forecast_beyond_the_horizon_feeds_its_forecasts_back(tmp_path):
    data = write_series(tmp_path / "series.csv", with_feature=False)
    run_dir = train(tmp_path, "--task", "forecast", "--data", str(data), "--target", "y",
                    "--window", "12", "--horizon", "2")  # fmt: skip
    out = tmp_path / "f.csv"
    argv = ["forecast", "--run-dir", str(run_dir), "--data", str(data), "--horizon", "5",
            "--out", str(out), "--plot", ""]  # fmt: skip
    assert cli.main(argv) == 0
    forecasts = [float(r["forecast"]) for r in csv.DictReader(out.open())]
    run = runs.load_run(run_dir)
    values, _ = forecast.read(data, "y")
    first = runs.predict(run, {"inputs": forecast.inputs(values, np.array([120]), run.spec)})
    block = forecast.to_values(first, values[119:, 0], run.spec)[0]
    np.testing.assert_allclose(forecasts[:2], block, rtol=1e-5)
    extended = np.concatenate([values, block[:, None]])
    second = runs.predict(run, {"inputs": forecast.inputs(extended, np.array([122]), run.spec)})
    np.testing.assert_allclose(forecasts[2:4], forecast.to_values(second, block[-1:], run.spec)[0],
                               rtol=1e-5)  # fmt: skip


# ---------------------------------------------------------------------------- classification


def test_long_csv_reads_as_the_same_sequences_as_npz(tmp_path):
    xs, labels, lengths = sequences_arrays()
    np.savez(tmp_path / "s.npz", inputs=xs, labels=labels, lengths=lengths)
    from_npz = sequences.read(tmp_path / "s.npz")
    from_csv = sequences.read(write_long_csv(tmp_path / "s.csv", xs, labels, lengths))
    np.testing.assert_array_equal(from_csv.lengths, lengths)
    np.testing.assert_allclose(from_csv.inputs, from_npz.inputs, atol=1e-6)
    assert list(from_csv.labels) == [f"c{v}" for v in labels] and from_csv.features == ["a", "b"]


def test_classify_npz_with_lengths_then_predict(tmp_path):
    xs, labels, lengths = sequences_arrays()
    xs_garbage = xs.copy()
    xs_garbage[np.arange(xs.shape[1])[None, :] >= lengths[:, None]] = 1e6  # padding: never read
    np.savez(tmp_path / "s.npz", inputs=xs_garbage, labels=labels, lengths=lengths)
    run_dir = train(tmp_path, "--task", "classify", "--data", str(tmp_path / "s.npz"))
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result["baselines"]) == {"majority class", "logistic regression"}
    out = tmp_path / "p.csv"
    argv = ["predict", "--run-dir", str(run_dir), "--data", str(tmp_path / "s.npz"), "--out",
            str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    probs = np.array([[float(r[f"p_{c}"]) for c in ("0", "1", "2")] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the prediction for a padded sequence equals the prediction for it cut to its length
    run = runs.load_run(run_dir)
    spec = run.spec
    i = int(np.argmin(lengths))
    alone = (xs[i : i + 1, : lengths[i]] - spec["mean"]) / spec["std"]
    logits = run.model.apply(run.params, {"inputs": alone.astype(np.float32)}, None)
    np.testing.assert_allclose(probs[i], jax.nn.softmax(logits[0]), atol=1e-5)
    assert [r["prediction"] for r in rows] == [str(v) for v in probs.argmax(1)]


def test_classify_long_csv_trains(tmp_path):
    xs, labels, lengths = sequences_arrays()
    data = write_long_csv(tmp_path / "s.csv", xs, labels, lengths)
    run_dir = train(tmp_path, "--task", "classify", "--data", str(data))
    assert runs.load_run(run_dir).spec["classes"] == ["c0", "c1", "c2"]


# --------------------------------------------------------------------------- bad files


def bad_csv(tmp_path, text: str) -> str:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, extra, message",
    [("date,y\n1,2\n", ["--target", "z"], "no column 'z' (--target); the header has 'date', 'y'"),
     ("y\n1\nabc\n", ["--target", "y"], "line 3, column 'y': 'abc' is not a number"),
     ("y\n1\n2\nnan\n4\n", ["--target", "y"], "NaN or infinite value at line 4"),
     ("y\n1\n\n2\n\n", ["--target", "y"], "has 2 rows: a window of 24 and a horizon of 1 need"),
     ("y\n" + "1\n" * 50, ["--target", "y", "--features", "y"], "'y' is the target")],
)  # fmt: skip
def test_a_bad_series_file_is_one_line_and_exit_2(tmp_path, capsys, text, extra, message):
    path = bad_csv(tmp_path, text)
    code = cli.main(["train", "--task", "forecast", "--data", path, *extra,
                     "--run-dir", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_bad_sequence_files_are_refused(tmp_path, capsys):
    xs, labels, lengths = sequences_arrays()
    cases = {
        "one.npz": (dict(inputs=xs, labels=np.zeros(40, int)), "a classifier needs at least two"),
        "len.npz": (dict(inputs=xs, labels=labels, lengths=lengths + 20), "lengths["),
        "nan.npz": (dict(inputs=np.where(xs == xs[3, 1, 0], np.nan, xs), labels=labels),
                    "inputs[3, 1, 0] is nan"),
        "rank.npz": (dict(inputs=xs[..., 0], labels=labels), "must be a numeric array (N, T, D)"),
    }  # fmt: skip
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        code = cli.main(["train", "--task", "classify", "--data", str(tmp_path / name),
                         "--run-dir", str(tmp_path / "r")])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (name, err)
    mixed = bad_csv(tmp_path, "sequence_id,a,label\ns,1,x\ns,2,y\n")
    with pytest.raises(DataFileError, match=r"sequence 's' .* has labels"):
        sequences.read(mixed)
    (tmp_path / "pickled.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataFileError, match=r"not a readable \.npz"):
        sequences.read(tmp_path / "pickled.npz")
    assert not (tmp_path / "r").exists()


def test_data_options_only_where_they_apply(capsys):
    assert cli.main(["train", "--task", "adding", "--data", "x.csv"]) == 2
    assert "--data applies to the tasks on your own data" in capsys.readouterr().err
    assert cli.main(["train", "--task", "forecast", "--data", "x.csv"]) == 2
    assert "needs --target COLUMN" in capsys.readouterr().err
    assert cli.main(["train", "--task", "classify"]) == 2
    assert "pass --data FILE" in capsys.readouterr().err


# -------------------------------------------------------------------- sample and export


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("charlm")
    corpus = folder / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200)
    run_dir = folder / "run"
    argv = ["train", "--task", "charlm", "--corpus", str(corpus), "--seq-len", "16",
            "--steps", "10", *TINY, "--run-dir", str(run_dir)]  # fmt: skip
    assert cli.main(argv) == 0
    return run_dir


def sample(capsys, run_dir, *extra) -> str:
    argv = ["sample", "--run-dir", str(run_dir), "--prompt", "the ", "--length", "30", *extra]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_sample_is_deterministic_for_a_seed(charlm_run, capsys):
    capsys.readouterr()
    first = sample(capsys, charlm_run, "--seed", "3", "--temperature", "1.5")
    assert first.startswith("the ") and len(first.rstrip("\n")) == 34
    assert sample(capsys, charlm_run, "--seed", "3", "--temperature", "1.5") == first
    assert sample(capsys, charlm_run, "--seed", "4", "--temperature", "1.5") != first
    # top-k 1 keeps only the likeliest character: the arg-max, whatever the seed
    greedy = sample(capsys, charlm_run, "--temperature", "0")
    assert sample(capsys, charlm_run, "--top-k", "1", "--seed", "9") == greedy
    assert cli.main(["sample", "--run-dir", str(charlm_run), "--prompt", "Z"]) == 2
    assert "--prompt must be non-empty text of the run's" in capsys.readouterr().err


def test_safetensors_export_loads_back_equal(charlm_run, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    out = tmp_path / "p.safetensors"
    assert cli.main(["export", "--run-dir", str(charlm_run), "--out", str(out)]) == 0
    run = runs.load_run(charlm_run)
    back = export.load_safetensors(out, run.params)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, run.params))
    stored = st.load_file(str(out))  # read by the format's own package
    np.testing.assert_array_equal(stored["w_out"], np.asarray(run.params["w_out"]))
    assert cli.main(["export", "--run-dir", str(charlm_run), "--out", str(out)]) == 2  # exists
    with pytest.raises(export.ExportError, match="expected"):
        export.load_safetensors(out, {"w_out": run.params["w_out"]})


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_torch_export_gives_the_same_outputs(tmp_path, cell):
    torch = pytest.importorskip("torch")
    xs, labels, lengths = sequences_arrays()
    np.savez(tmp_path / "s.npz", inputs=xs, labels=labels, lengths=lengths)
    run_dir = train(tmp_path, "--task", "classify", "--data", str(tmp_path / "s.npz"), "--cell",
                    cell, "--layers", "2")  # fmt: skip
    run = runs.load_run(run_dir)
    batch = {"inputs": sequences.inputs(sequences.read(tmp_path / "s.npz"), run.spec),
             "lengths": lengths}  # fmt: skip
    expected = runs.predict(run, batch)
    module = export.to_torch(run)
    with torch.no_grad():
        got = module(torch.from_numpy(batch["inputs"]), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    out = tmp_path / "t.safetensors"
    assert cli.main(["export", "--run-dir", str(run_dir), "--to", "torch", "--out", str(out)]) == 0
    from safetensors.torch import load_file

    fresh = export.to_torch(run)
    for p in fresh.parameters():
        p.data.zero_()
    fresh.load_state_dict(load_file(str(out)))
    with torch.no_grad():
        again = fresh(torch.from_numpy(batch["inputs"]), torch.from_numpy(lengths)).numpy()
    np.testing.assert_array_equal(again, got)


def test_torch_export_refuses_a_cell_torch_lacks(tmp_path):
    xs, labels, lengths = sequences_arrays()
    np.savez(tmp_path / "s.npz", inputs=xs, labels=labels, lengths=lengths)
    run_dir = train(tmp_path, "--task", "classify", "--data", str(tmp_path / "s.npz"), "--cell",
                    "indrnn")  # fmt: skip
    with pytest.raises(export.ExportError, match="PyTorch has no 'indrnn' layer"):
        export.to_torch(runs.load_run(run_dir))


# --------------------------------------------------------------------------------- runs


def test_each_new_run_gets_its_own_folder_and_latest_follows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--steps", "2", "--seq-len", "5", *TINY]
    assert cli.main(argv) == 0
    first = (tmp_path / "runs" / "latest").resolve()
    assert cli.main(argv) == 0
    second = (tmp_path / "runs" / "latest").resolve()
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    assert (first / "result.json").exists() and (second / "result.json").exists()
    assert first.name.startswith("adding-")
    # a mistyped command makes no folder and moves no link
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert cli.main([*argv, "--lr", "-1"]) == 2
    assert cli.main(["train", "--task", "forecast", "--data", "nope.csv", "--target", "y"]) == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before
    assert (tmp_path / "runs" / "latest").resolve() == second
    # --resume without --run-dir continues the newest
    assert cli.main(["train", "--steps", "3", "--seq-len", "5", *TINY, "--resume"]) == 0
    assert json.loads((second / "result.json").read_text())["steps_done"] == 3
    assert cli.main([*argv, "--overwrite"]) == 2
    assert "pass --run-dir too" in capsys.readouterr().err
