"""Hardware-aware training (``harden`` with the analog forward pipeline) on every format and
with worker processes: TorchScript and torch.export models train as their own ONNX export and
come back in their own format; validation on workers gives the same numbers as one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import (
    export_onnx,
    export_program,
    export_torchscript,
    make_blobs,
    tiny_convnet,
    tiny_mlp,
    train,
)

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

from ftaudit.analog import ForwardPipeline  # noqa: E402
from ftaudit.harden.api import harden  # noqa: E402
from ftaudit.models import load_model  # noqa: E402

PIPELINE = ForwardPipeline(dac_bits=4, adc_bits=6, tile_size=(40, 16))
#: short runs: one epoch of NoiseTrain, the report's audits at sigma 0 only
NOISE = {
    "method": "noise",
    "sigma": 0.5,
    "epochs": 1,
    "lr": 3e-3,
    "batch_size": 64,
    "eval_samples": 2,
    "eval_sigmas": [0.0],
    "pipeline": PIPELINE,
}
#: TRICE whose search runs in both epochs (warm-up 0)
TRICE = {
    **NOISE,
    "method": "trice",
    "sigma": 1.0,
    "epochs": 2,
    "warmup": 0,
    "search_samples": 20,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("harden_analog")
    x, y = make_blobs(600, seed=7)
    np.savez(d / "train.npz", x=x, y=y)
    model = train(tiny_mlp(), x[:200], y[:200], steps=40)
    return {
        "dir": d,
        "data": d / "train.npz",
        "onnx": export_onnx(model, d / "mlp.onnx"),
        "torchscript": export_torchscript(model, d / "mlp.pt"),
        "torch.export": export_program(model, d / "mlp.pt2", torch.zeros(2, 1, 8, 8)),
    }


def _weights(path: Path) -> dict[str, np.ndarray]:
    return load_model(path).clean_weights()


@pytest.mark.parametrize(("fmt", "suffix"), [("torchscript", ".pt"), ("torch.export", ".pt2")])
def test_torch_formats_train_with_the_pipeline_like_their_onnx_twin(setup, fmt, suffix):
    twin = setup["dir"] / "twin.onnx"
    if not twin.exists():
        harden(setup["onnx"], setup["data"], output=twin, **NOISE)
    out = setup["dir"] / f"hard{suffix}"
    report = harden(setup[fmt], setup["data"], output=out, **NOISE)
    hardened = load_model(out)
    assert hardened.format == fmt
    assert report.after.analog is not None and report.after.analog["dac_bits"] == 4
    before, after, reference = _weights(setup[fmt]), _weights(out), _weights(twin)
    # ONNX names its weights as torch does (0.weight ...): the same network, the same training
    assert list(after) == [layer.name for layer in load_model(twin).layers]
    for name in after:
        assert not np.allclose(after[name], before[name])
        np.testing.assert_allclose(after[name], reference[name], rtol=1e-4, atol=1e-5)
    # the biases were trained and written back too
    trained, source = _state(out, fmt), _state(setup[fmt], fmt)
    assert trained.keys() == source.keys()
    biases = [name for name in source if name.endswith("bias")]
    assert biases and not any(np.allclose(trained[b], source[b]) for b in biases)


def _state(path: Path, fmt: str) -> dict[str, np.ndarray]:
    if fmt == "torchscript":
        state = torch.jit.load(str(path)).state_dict()
    else:
        state = torch.export.load(str(path)).state_dict
    return {name: tensor.detach().numpy() for name, tensor in state.items()}


def test_trice_with_the_pipeline_on_two_workers_matches_one_process(setup):
    one = harden(setup["torchscript"], setup["data"], output=setup["dir"] / "one.pt", **TRICE)
    two = harden(
        setup["torchscript"], setup["data"], output=setup["dir"] / "two.pt", workers=2, **TRICE
    )
    assert [len(h["kpps"]) for h in one.history] == [3, 3]  # the search ran in both epochs
    assert [h["kpps"] for h in two.history] == [h["kpps"] for h in one.history]
    assert two.details == one.details
    a, b = _weights(setup["dir"] / "one.pt"), _weights(setup["dir"] / "two.pt")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert two.after.options["execution"]["workers"] == 2


def test_cli_harden_torch_export_with_the_pipeline_and_workers(setup, run_cli):
    out = setup["dir"] / "cli.pt2"
    code, _, err = run_cli(
        "harden", setup["torch.export"], "--data", setup["data"], "--sigma", "0.5",
        "--method", "noise", "--epochs", "1", "--eval-samples", "2", "--eval-sigmas", "0",
        "--dac-bits", "4", "--workers", "2", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert load_model(out).format == "torch.export"
    assert "Expect archive" not in err  # torch's warning for a temporary file's name


def test_an_untrained_batchnorm_trains_through_the_export(setup):
    """Its bias and running mean are equal (zeros): the export keeps them apart, so each is
    trained or kept under its own name."""
    model = tiny_convnet(batchnorm=True).eval()
    path = export_torchscript(model, setup["dir"] / "bn.pt")
    out = setup["dir"] / "bn_hard.pt"
    harden(path, setup["data"], output=out, **NOISE)
    trained, source = _state(out, "torchscript"), _state(path, "torchscript")
    assert trained.keys() == source.keys()
    assert not np.allclose(trained["1.bias"], source["1.bias"])  # BatchNorm's beta trained
    assert not np.allclose(trained["0.weight"], source["0.weight"])
