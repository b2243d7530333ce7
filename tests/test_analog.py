"""The analog forward pipeline (ftaudit.analog): options, ONNX rewrite, keyed read noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SAMPLES

from ftaudit.analog import ForwardPipeline, parse_tile_size
from ftaudit.analog.onnx_graph import calibration_indices
from ftaudit.analog.read_noise import BLOCK, read_noise, read_noise_block
from ftaudit.errors import UserError

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dac_bits": 0},
        {"adc_bits": 25},
        {"read_noise": -0.1},
        {"read_noise": float("nan")},
        {"adc_bound": 0.0},
        {"weight_scaling": "row"},
    ],
)
def test_bad_pipeline_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        ForwardPipeline(**kwargs)


@pytest.mark.parametrize("text", ["12", "0x4", "4x", "axb", "4x4x4", "-2x3"])
def test_tile_size_must_be_rows_x_cols(text):
    with pytest.raises(UserError, match="ROWSxCOLS"):
        parse_tile_size(text)


def test_tile_size_parses():
    assert parse_tile_size(" 256X128 ") == (256, 128)
    assert parse_tile_size(None) is None


def test_only_converters_and_noise_make_the_pipeline_active():
    assert not ForwardPipeline().active
    assert not ForwardPipeline(tile_size=(8, 8), weight_scaling="column").active
    assert ForwardPipeline(read_noise=0.1).active and ForwardPipeline(dac_bits=4).active


@pytest.mark.parametrize(
    "flags",
    [
        ["--adc-bits", "0"],
        ["--dac-bits", "25"],
        ["--tile-size", "128"],
        ["--read-noise", "-1"],
        ["--weight-scaling", "row"],
    ],
)
def test_cli_bad_analog_flags_exit_2_with_one_line(run_cli, mlp_onnx, blobs_npz, tmp_path, flags):
    out = tmp_path / "r.json"
    code, _, stderr = run_cli(
        "eval", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "--json", out, *flags
    )
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()


def test_read_noise_is_the_blocks_streams_sliced():
    """Aligned cuts (drawn in place) and unaligned ones (copied) equal the block definition."""
    shape = (5, 2)
    blocks = np.concatenate([read_noise_block(7, 3, 1, 0, b, shape) for b in range(4)])
    for start, stop in ((0, 200), (64, 100), (10, 140), (128, 129), (63, 65)):
        out = np.full((stop - start, *shape), np.nan, np.float32)
        got = read_noise(7, 3, 1, 0, start, stop, shape, out)
        assert got is out
        np.testing.assert_array_equal(got, blocks[start:stop])
    assert 4 * BLOCK > 200


@pytest.mark.parametrize("rng", ["fast", "ziggurat"])
def test_read_noise_streams_follow_the_documented_keys(rng: str):
    """Block b of tile t is stream (TAG, sample, layer, t, b) under the run's generator
    (ziggurat: numpy's own generator on SeedSequence(seed, spawn_key=key))."""
    from conftest import keyed_normals

    from ftaudit.analog.read_noise import TAG

    got = read_noise(7, 3, 1, 2, 64, 100, (5,), rng=rng)
    want = keyed_normals(7, (TAG, 3, 1, 2, 1), (BLOCK, 5), rng)[:36]
    np.testing.assert_array_equal(got, want)


def test_read_noise_is_the_same_for_any_batch_cut():
    whole = read_noise(7, 3, 1, 0, 0, 200, (5, 2))
    assert whole.shape == (200, 5, 2)
    np.testing.assert_array_equal(read_noise(7, 3, 1, 0, 10, 140, (5, 2)), whole[10:140])
    np.testing.assert_array_equal(read_noise(7, 3, 1, 0, 63, 65, (5, 2)), whole[63:65])
    # every key part matters
    for other in (read_noise(8, 3, 1, 0, 0, 200, (5, 2)), read_noise(7, 4, 1, 0, 0, 200, (5, 2))):
        assert not np.array_equal(other, whole)
    assert not np.array_equal(read_noise(7, 3, 2, 0, 0, 200, (5, 2)), whole)
    assert not np.array_equal(read_noise(7, 3, 1, 1, 0, 200, (5, 2)), whole)
    assert abs(whole.mean()) < 0.05 and abs(whole.std() - 1) < 0.05


def _quantise(x, bits, full):
    """Signed mid-tread quantiser over [-full, full], written independently of the package."""
    if bits == 1:
        return np.sign(x) * full
    steps = 2 ** (bits - 1) - 1
    return np.round(np.clip(x / full * steps, -steps, steps)) * full / steps


def _reference_mlp(trained_mlp, x, pipeline, *, seed, sample, calib):
    """The MatMul MLP's logits through the pipeline in float64 numpy; ``calib``: data for ranges."""
    layers = [trained_mlp[1], trained_mlp[3]]
    ws = [m.weight.detach().numpy().T.astype(np.float64) for m in layers]  # (in, out)
    bs = [m.bias.detach().numpy().astype(np.float64) for m in layers]
    rows, cols = pipeline.tile_size

    def forward(h, ranges=None, bounds=None, record=None):
        for li, (w, b) in enumerate(zip(ws, bs, strict=True)):
            if record is not None:
                record.setdefault(("x", li), []).append(np.abs(h).max())
            r = ranges[li] if ranges else 1.0
            hq = _quantise(h, pipeline.dac_bits, r) if ranges else h
            total = 0
            for t, r0 in enumerate(range(0, w.shape[0], rows)):
                wt = w[r0 : r0 + rows]
                scale = np.empty(w.shape[1])
                for c0 in range(0, w.shape[1], cols):
                    scale[c0 : c0 + cols] = np.abs(wt[:, c0 : c0 + cols]).max()
                p = hq[:, r0 : r0 + rows] @ wt
                if record is not None:
                    record.setdefault(("p", li, t), []).append(np.abs(p / scale).max(axis=0))
                    total = total + p
                    continue
                unit = scale * r
                z = read_noise(seed, sample, li, t, 0, len(h), (w.shape[1],))
                n = p / unit + pipeline.read_noise * z
                bound = bounds[(li, t)]
                total = total + _quantise(n, pipeline.adc_bits, bound) * unit
            h = total + b
            if li == 0:
                h = np.maximum(h, 0)
        return h

    record = {}
    forward(calib.astype(np.float64), record=record)
    ranges = [max(record[("x", li)]) for li in range(2)]
    bounds = {}
    for key, peaks in record.items():
        if key[0] == "p":
            per_col = np.max(peaks, axis=0) / ranges[key[1]]
            bound = np.empty_like(per_col)
            for c0 in range(0, per_col.size, cols):
                bound[c0 : c0 + cols] = per_col[c0 : c0 + cols].max()
            bounds[key[1:]] = bound
    return forward(x.astype(np.float64), ranges, bounds)


def test_onnx_pipeline_matches_an_independent_numpy_forward(trained_mlp, mlp_matmul_onnx, blobs):
    from ftaudit.analog.runner import analog_runner
    from ftaudit.models import load_model

    model = load_model(mlp_matmul_onnx)
    x = blobs[0].astype(np.float32) / 255
    pipeline = ForwardPipeline(
        dac_bits=6, adc_bits=7, read_noise=0.05, tile_size=(24, 5), weight_scaling="tile"
    )
    runner, calibration = analog_runner(
        model, model.layers, x, pipeline=pipeline, seed=3, device="cpu"
    )
    assert calibration.images == min(len(x), 256)
    runner.bind_data(x, blobs[1], batch_size=100)
    runner.set_sample(3, 11)
    got = runner.logits()
    calib = x.reshape(len(x), -1)[calibration_indices(len(x), 3)]
    want = _reference_mlp(
        trained_mlp, x.reshape(len(x), -1), pipeline, seed=3, sample=11, calib=calib
    )
    # float32 sums may land on the other side of a rounding edge for a rare element
    close = np.isclose(got, want, rtol=1e-4, atol=1e-4)
    assert close.mean() > 0.99
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99


@pytest.fixture(scope="module")
def fmnist():
    with np.load(SAMPLES / "fmnist_test_2000.npz") as data:
        return {"x": data["x"][:400], "y": data["y"][:400]}


def _audit(fmnist, model=SAMPLES / "lenet.onnx", **kwargs):
    from ftaudit.data import Dataset
    from ftaudit.evaluation import audit

    dataset = Dataset(
        x=fmnist["x"].astype(np.float32) / 255,
        y=fmnist["y"],
        source={
            "path": "fmnist",
            "sha256": "0" * 64,
            "kind": "npz",
            "n": len(fmnist["y"]),
            "limit": None,
        },
    )
    defaults = {"sigmas": [0.0, 0.15], "samples": 6, "seed": 5, "batch_size": 128}
    return audit(model, dataset, **{**defaults, **kwargs})


def test_16_bit_converters_match_weights_only_accuracy(fmnist):
    ideal = _audit(fmnist)
    fine = _audit(fmnist, pipeline=ForwardPipeline(dac_bits=16, adc_bits=16))
    assert fine.analog is not None and ideal.analog is None
    for a, b in zip(ideal.results, fine.results, strict=True):
        assert abs(a.summary.mean - b.summary.mean) <= 0.005
    assert abs(ideal.clean_accuracy - fine.clean_accuracy) <= 0.005


def test_two_bit_adc_ruins_lenet_clean_accuracy(fmnist):
    ideal = _audit(fmnist, sigmas=[0.0])
    coarse = _audit(fmnist, sigmas=[0.0], pipeline=ForwardPipeline(adc_bits=2))
    assert ideal.clean_accuracy > 0.85
    assert coarse.clean_accuracy < ideal.clean_accuracy - 0.3


def test_zero_read_noise_gives_exactly_todays_numbers(fmnist):
    ideal = _audit(fmnist)
    zero = _audit(fmnist, pipeline=ForwardPipeline(read_noise=0.0, tile_size=(64, 64)))
    for a, b in zip(ideal.results, zero.results, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert zero.analog is None


def test_read_noise_at_sigma_0_spreads_and_is_batch_size_free(fmnist):
    pipeline = ForwardPipeline(read_noise=0.1, adc_bits=8, tile_size=(100, 32))
    small = _audit(fmnist, sigmas=[0.0], pipeline=pipeline, batch_size=48)
    large = _audit(fmnist, sigmas=[0.0], pipeline=pipeline, batch_size=400)
    spread = small.results[0].accuracies
    assert np.std(spread) > 0
    assert small.results[0].summary.kpp_interval.method != "exact"
    np.testing.assert_array_equal(spread, large.results[0].accuracies)
    report = small.to_dict()
    assert report["analog"]["read_noise"] == 0.1
    assert any("read noise" in line for line in report["analog"]["in_force"])
    assert report["analog"]["calibration"]["images"] == 256


def test_analog_report_validates_against_the_schema(fmnist):
    jsonschema = pytest.importorskip("jsonschema")
    from conftest import REPO

    report = _audit(fmnist, sigmas=[0.1], samples=2, pipeline=ForwardPipeline(dac_bits=8))
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(report.to_dict())), schema)


def test_torchscript_runs_the_same_pipeline_as_onnx(fmnist):
    pytest.importorskip("torch")
    pipeline = ForwardPipeline(read_noise=0.1, dac_bits=6, adc_bits=6, tile_size=(64, 64))
    onnx_report = _audit(fmnist, samples=3, pipeline=pipeline)
    ts_report = _audit(fmnist, samples=3, pipeline=pipeline, model=SAMPLES / "lenet.pt")
    assert ts_report.model["format"] == "torchscript"
    assert ts_report.clean_accuracy == onnx_report.clean_accuracy
    for a, b in zip(onnx_report.results, ts_report.results, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)


def test_torch_export_runs_the_pipeline_through_its_onnx_export(fmnist, lenet_pt2):
    pytest.importorskip("torch")
    ideal = _audit(fmnist, model=lenet_pt2)
    fine = _audit(fmnist, model=lenet_pt2, pipeline=ForwardPipeline(dac_bits=16, adc_bits=16))
    assert fine.model["format"] == "torch.export" and fine.analog["dac_bits"] == 16
    assert abs(ideal.clean_accuracy - fine.clean_accuracy) <= 0.005
    for a, b in zip(ideal.results, fine.results, strict=True):
        assert abs(a.summary.mean - b.summary.mean) <= 0.005
    # the same network as the shipped ONNX file: the same draws and read noise, the same counts
    pipeline = ForwardPipeline(read_noise=0.1, dac_bits=6, adc_bits=6, tile_size=(64, 64))
    onnx_report = _audit(fmnist, samples=3, pipeline=pipeline)
    program = _audit(fmnist, samples=3, pipeline=pipeline, model=lenet_pt2, batch_size=48)
    assert program.clean_accuracy == onnx_report.clean_accuracy
    for a, b in zip(onnx_report.results, program.results, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert np.std(program.results[0].accuracies) > 0  # read noise at sigma 0


def test_compare_and_sensitivity_run_torch_export_models_with_the_pipeline(fmnist, lenet_pt2):
    pytest.importorskip("torch")
    from ftaudit.compare import compare
    from ftaudit.data import Dataset
    from ftaudit.sensitivity import sensitivity

    dataset = Dataset(x=fmnist["x"][:200].astype(np.float32) / 255, y=fmnist["y"][:200], source={})
    pipeline = ForwardPipeline(read_noise=0.1, adc_bits=8)
    report = compare(
        SAMPLES / "lenet.pt", lenet_pt2, dataset, sigmas=[0.1], samples=4, seed=2, pipeline=pipeline
    )
    row = report.results[0]
    np.testing.assert_array_equal(row.baseline.accuracies, row.candidate.accuracies)
    kwargs = {"sigmas": [0.1], "samples": 2, "seed": 2, "pipeline": pipeline}
    ranked = sensitivity(lenet_pt2, dataset, **kwargs)
    reference = sensitivity(SAMPLES / "lenet.onnx", dataset, **kwargs)
    assert ranked.to_dict()["options"]["analog"]["adc_bits"] == 8
    assert ranked.all_layers[0].mean == reference.all_layers[0].mean


def test_cli_eval_runs_a_torch_export_model_with_the_pipeline(run_cli, lenet_pt2, tmp_path):
    pytest.importorskip("torch")
    data = tmp_path / "d.npz"
    with np.load(SAMPLES / "fmnist_test_2000.npz") as f:
        np.savez(data, x=f["x"][:100], y=f["y"][:100])
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        "eval", lenet_pt2, "--data", data, "--sigma", "0.1", "--samples", "2",
        "--dac-bits", "4", "--json", out,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out.read_text())["analog"]["dac_bits"] == 4


def test_cli_a_program_onnx_cannot_export_exits_2_with_one_line(run_cli, blobs_npz, tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import export_program

    class SpectrumHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 8)

        def forward(self, x):
            return torch.fft.rfft(self.fc(x.flatten(1))).abs()  # no ONNX export at opset 17

    path = export_program(SpectrumHead(), tmp_path / "fft.pt2", torch.zeros(2, 1, 8, 8))
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(
        "eval", path, "--data", blobs_npz, "--sigma", "0.1", "--samples", "2",
        "--dac-bits", "4", "--json", out,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot be exported" in err and "export the model to ONNX yourself" in err
    assert stdout == "" and not out.exists()


@pytest.mark.parametrize(
    "noise",
    [
        {"read_noise": 0.1},
        {"weight_read_noise": 0.05},
        {"weight_read_noise": 0.05, "weight_read_noise_type": "pcm"},
    ],
    ids=["output", "weight", "pcm"],
)
def test_read_noise_runs_are_identical_with_worker_processes(fmnist, noise):
    pipeline = ForwardPipeline(**noise, dac_bits=8, adc_bits=8, tile_size=(64, 64))
    here = _audit(fmnist, samples=4, pipeline=pipeline)
    spread = _audit(fmnist, samples=4, pipeline=pipeline, workers=2)
    assert spread.options["execution"]["workers"] == 2
    for a, b in zip(here.results, spread.results, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)


def test_compare_pairs_read_noise_and_records_the_pipeline(fmnist):
    from ftaudit.compare import compare
    from ftaudit.data import Dataset

    dataset = Dataset(x=fmnist["x"][:200].astype(np.float32) / 255, y=fmnist["y"][:200], source={})
    pipeline = ForwardPipeline(read_noise=0.1, adc_bits=8)
    report = compare(
        SAMPLES / "lenet.onnx",
        SAMPLES / "lenet.pt",
        dataset,
        sigmas=[0.0],
        samples=5,
        seed=2,
        pipeline=pipeline,
    )
    row = report.results[0]
    assert np.std(row.baseline.accuracies) > 0  # sigma 0 is random with read noise
    np.testing.assert_array_equal(row.baseline.accuracies, row.candidate.accuracies)
    assert row.mean_difference_interval.method != "exact"
    assert report.to_dict()["options"]["analog"]["read_noise"] == 0.1


def test_cli_eval_lists_the_non_idealities(run_cli, mlp_onnx, blobs_npz, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(
        "eval", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "--samples", "3",
        "--dac-bits", "4", "--adc-bits", "5", "--read-noise", "0.02", "--tile-size", "32x8",
        "--weight-scaling", "column", "--json", out,
    )  # fmt: skip
    assert code == 0
    for text in ("DAC 4 bits", "ADC 5 bits", "read noise 0.02", "tiles 32x8", "per column"):
        assert text in stdout
    analog = json.loads(out.read_text())["analog"]
    assert analog["tile_size"] == [32, 8] and analog["weight_scaling"] == "column"
    assert len(analog["in_force"]) == 4


def test_sensitivity_runs_the_pipeline_on_analog_layers_only(fmnist):
    from ftaudit.data import Dataset
    from ftaudit.sensitivity import sensitivity

    dataset = Dataset(x=fmnist["x"][:200].astype(np.float32) / 255, y=fmnist["y"][:200], source={})
    ideal = sensitivity(SAMPLES / "mlp.onnx", dataset, sigmas=[0.0], samples=2, seed=1)
    coarse = sensitivity(
        SAMPLES / "mlp.onnx",
        dataset,
        sigmas=[0.0],
        samples=2,
        seed=1,
        pipeline=ForwardPipeline(adc_bits=2),
    )
    # every layer digital is the ideal model, with or without the pipeline
    assert coarse.clean_accuracy == ideal.clean_accuracy
    assert coarse.all_layers[0].mean < ideal.clean_accuracy - 0.2
    assert coarse.to_dict()["options"]["analog"]["adc_bits"] == 2


DEVICE = """
name = "chip"
sigma_multipliers = [1.0, 1.0, 1.0, 1.0]
bits = 4
cell_bits = 2
"""


def test_device_files_carry_an_analog_table(tmp_path):
    from ftaudit.noise import get_noise_model

    path = tmp_path / "chip.toml"
    path.write_text(DEVICE + "[analog]\ndac_bits = 6\nread_noise = 0.05\ntile_size = [128, 64]\n")
    profile = get_noise_model(str(path)).profile
    assert profile.analog == ForwardPipeline(dac_bits=6, read_noise=0.05, tile_size=(128, 64))
    assert profile.to_dict()["analog"]["dac_bits"] == 6


@pytest.mark.parametrize(
    "table",
    ["dac_bits = 0", "adc_bits = 4.5", "tile_size = 'big'", "colour = 'red'", "read_noise = -1"],
)
def test_bad_analog_tables_name_the_device_file(tmp_path, table):
    from ftaudit.noise import get_noise_model

    path = tmp_path / "chip.toml"
    path.write_text(DEVICE + f"[analog]\n{table}\n")
    with pytest.raises(UserError, match=r"device file .*chip.toml: \[analog\]"):
        get_noise_model(str(path))


def test_pcm_aihwkit_profile_mirrors_aihwkit_defaults_and_flags_override_it(
    run_cli, tmp_path, fmnist
):
    from ftaudit.noise import get_noise_model

    analog = get_noise_model("pcm-aihwkit").profile.analog
    assert analog == ForwardPipeline(
        dac_bits=7, adc_bits=9, adc_bound=12.0, read_noise=0.06, tile_size=(512, 512),
        weight_scaling="tile",
    )  # fmt: skip
    data = tmp_path / "d.npz"
    np.savez(data, x=fmnist["x"][:60], y=fmnist["y"][:60])
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        "eval", SAMPLES / "lenet.onnx", "--data", data, "--noise", "pcm-aihwkit", "--sigma", "0.1",
        "--samples", "2", "--read-noise", "0", "--adc-bits", "10", "--json", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out.read_text())["analog"]
    assert (report["dac_bits"], report["adc_bits"], report["read_noise"]) == (7, 10, 0.0)
    assert report["tile_size"] == [512, 512] and report["adc_bound"] == 12.0


def test_torch_training_pipeline_matches_the_onnx_graph(fmnist):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from ftaudit.analog.runner import analog_runner
    from ftaudit.analog.torch_pipeline import AnalogTraining
    from ftaudit.harden.trainable import make_trainable
    from ftaudit.models import load_model

    model = load_model(SAMPLES / "lenet.onnx")
    x = fmnist["x"][:200].astype(np.float32) / 255
    pipeline = ForwardPipeline(dac_bits=5, adc_bits=6, tile_size=(60, 50), weight_scaling="column")
    runner, _ = analog_runner(model, model.layers, x, pipeline=pipeline, seed=4, device="cpu")
    runner.bind_data(x, fmnist["y"][:200], batch_size=200)
    want = runner.logits()
    trainable = make_trainable(model)
    training = AnalogTraining(model, model.layers, x, pipeline, seed=4)
    assert training.attach(trainable) == 5
    with torch.no_grad():
        got = trainable.module(torch.from_numpy(x)).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99
    assert np.isclose(got, want, rtol=1e-3, atol=1e-3).mean() > 0.99
    # gradients flow through the quantisers (straight-through)
    trainable.module.train()
    loss = trainable.module(torch.from_numpy(x[:16])).sum()
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in trainable.crossbar.values())


def test_harden_trains_and_audits_with_the_pipeline(tmp_path, fmnist):
    pytest.importorskip("onnx2torch")
    from ftaudit.harden.api import harden

    train = tmp_path / "train.npz"
    np.savez(train, x=fmnist["x"][:300], y=fmnist["y"][:300])
    pipeline = ForwardPipeline(dac_bits=4, read_noise=0.05)
    report = harden(
        SAMPLES / "lenet.onnx",
        train,
        output=tmp_path / "hard.onnx",
        method="noise",
        sigma=0.2,
        epochs=1,
        eval_samples=3,
        eval_sigmas=[0.2],
        pipeline=pipeline,
    )
    assert report.after.analog is not None and report.after.analog["dac_bits"] == 4
    assert report.before.analog["in_force"] == report.after.analog["in_force"]
    # each model is calibrated on its own weights
    assert report.before.analog["calibration"] != report.after.analog["calibration"]
    assert (tmp_path / "hard.onnx").is_file()


def test_cli_harden_rejects_bad_analog_flags(run_cli, tmp_path, blobs_npz, mlp_onnx):
    code, _, err = run_cli(
        "harden", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "-o", tmp_path / "o.onnx",
        "--dac-bits", "30",
    )  # fmt: skip
    assert code == 2 and "--dac-bits" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_fixed_batch_models_calibrate_on_every_image(trained_mlp, model_dir, blobs):
    from conftest import export_onnx

    from ftaudit.analog.runner import analog_runner
    from ftaudit.models import load_model

    fixed = load_model(export_onnx(trained_mlp, model_dir / "mlp_b3.onnx", dynamic=False, batch=3))
    dynamic = load_model(export_onnx(trained_mlp, model_dir / "mlp_dyn.onnx"))
    x = blobs[0][:100].astype(np.float32) / 255
    pipeline = ForwardPipeline(dac_bits=5, adc_bits=5, read_noise=0.05, tile_size=(20, 8))
    logits = []
    for model in (fixed, dynamic):
        runner, calibration = analog_runner(
            model, model.layers, x, pipeline=pipeline, seed=1, device="cpu"
        )
        runner.bind_data(x, blobs[1][:100], batch_size=7)
        runner.set_sample(1, 3)
        logits.append(runner.logits())
        assert calibration.images == 100
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_batchnorm_models_run_the_pipeline_on_their_folded_weights(
    trained_convnet_bn, model_dir, blobs_npz
):
    from conftest import export_onnx

    from ftaudit.evaluation import audit

    path = export_onnx(trained_convnet_bn, model_dir / "bn_kept.onnx", keep_batchnorm=True)
    kwargs = {"sigmas": [0.0, 0.1], "samples": 4, "seed": 3}
    ideal = audit(path, blobs_npz, **kwargs)
    assert ideal.model["batchnorm_folded"]  # the runner is fed folded weights
    fine = audit(path, blobs_npz, pipeline=ForwardPipeline(dac_bits=16, adc_bits=16), **kwargs)
    assert fine.clean_accuracy == pytest.approx(ideal.clean_accuracy, abs=0.005)
    for a, b in zip(ideal.results, fine.results, strict=True):
        assert abs(a.summary.mean - b.summary.mean) <= 0.005


def test_opset_below_11_is_refused_in_one_line(run_cli, tmp_path):
    """The rewrite writes Slice with inputs and Gemm without a bias (opset 10 and 11): an opset-9
    model (Gemm's bias required) is refused in one line, not a graph ONNX Runtime rejects."""
    from onnx import TensorProto, helper, numpy_helper, save
    from test_cli import assert_one_line_error

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "opset9",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [
            numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    path = tmp_path / "opset9.onnx"
    save(model, str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(size=(8, 4)).astype(np.float32), y=np.arange(8) % 3)
    code, out, err = run_cli(
        "eval", path, "--data", data, "--sigma", "0.1", "--samples", "2", "--dac-bits", "8"
    )
    assert "opset 11 or later" in assert_one_line_error(code, out, err)
