"""A model returning several outputs (class scores and features): the audit reads one, and the
others are listed in inspect, the JSON report and a warning, never read silently."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from ftaudit.models import load_model  # noqa: E402


class FeaturesFirst(torch.nn.Module):
    """Returns (features (N, 6), scores (N, 3)): the first output is not the class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        features = torch.relu(self.body(x))
        return features, self.head(features)


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory) -> tuple[dict[str, Path], Path, np.ndarray]:
    torch.manual_seed(0)
    module = FeaturesFirst().eval()
    x = torch.randn(40, 4)
    with torch.no_grad():
        scores = module(x)[1].numpy()  # torch's own forward: the labels' reference
    y = scores.argmax(1)
    y[::5] = (y[::5] + 1) % 3  # 80% right under the scores, whatever the features say
    root = tmp_path_factory.mktemp("two_outputs")
    np.savez(root / "d.npz", x=x.numpy(), y=y)
    paths = {"onnx": root / "m.onnx", "torchscript": root / "m.pt", "export": root / "m.pt2"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x[:2],), str(paths["onnx"]), dynamo=False,
            input_names=["x"], output_names=["features", "scores"],
            dynamic_axes={"x": {0: "n"}, "features": {0: "n"}, "scores": {0: "n"}},
        )  # fmt: skip
        torch.jit.save(torch.jit.trace(module, (x[:2],)), str(paths["torchscript"]))
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(module, (x[:2],), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(paths["export"]))
    return paths, root / "d.npz", y


@pytest.mark.parametrize(
    ("fmt", "others"),
    [("onnx", ["scores"]), ("torchscript", ["output[1]"]), ("export", ["output[1]"])],
)
def test_other_outputs_are_listed_and_warned(two_outputs, fmt: str, others, run_cli) -> None:
    paths, data, _ = two_outputs
    model = load_model(paths[fmt])
    assert model.output_dict()["other_outputs"] == others
    code, out, _ = run_cli("inspect", paths[fmt])
    assert code == 0 and "not evaluated" in out and others[0] in out
    code, out, err = run_cli("eval", paths[fmt], "--data", data, "--sigma", "0", "--samples", "1")
    assert code == 0
    (line,) = [w for w in err.splitlines() if "also returns" in w]
    assert line.startswith("ftaudit: warning:") and others[0] in line
    assert ("--output NAME" in line) == (fmt == "onnx")


def test_choosing_the_scores_gives_torchs_accuracy_and_no_warning(two_outputs, run_cli) -> None:
    """--output picks the second ONNX output: the clean accuracy is the one torch's forward
    gives (80% by construction), and nothing is left unread, so nothing is warned about."""
    paths, data, y = two_outputs
    model = load_model(paths["onnx"], output="scores")
    assert "other_outputs" not in model.output_dict()
    report = paths["onnx"].parent / "r.json"
    code, _, err = run_cli(
        "eval", paths["onnx"], "--data", data, "--sigma", "0", "--samples", "1",
        "--output", "scores", "--json", report, "-q",
    )  # fmt: skip
    assert code == 0 and "also returns" not in err
    assert json.loads(report.read_text())["clean_accuracy"] == pytest.approx(0.8)
    assert len(y) == 40


def test_one_output_models_list_no_other_output(tmp_path: Path) -> None:
    module = torch.nn.Linear(4, 3).eval()
    path = tmp_path / "one.pt"
    torch.jit.save(torch.jit.trace(module, (torch.randn(2, 4),)), str(path))
    assert "other_outputs" not in load_model(path).output_dict()


def test_harden_names_the_output_it_trains(two_outputs, run_cli) -> None:
    """harden trains the first output: on ONNX, whose head only the second output reads, it
    refuses in one line saying so (it blamed scaled weights); a torch model trains on its first
    tensor with a note naming the others."""
    paths, data, _ = two_outputs
    common = ("--data", data, "--method", "noise", "--epochs", "1", "--sigma", "0.1")
    hardened = paths["onnx"].parent / "h.onnx"
    code, out, err = run_cli("harden", paths["onnx"], *common, "-o", hardened, "-q")
    assert code == 2 and out == "" and not hardened.exists()
    assert err.count("\n") == 1 and "head.weight do not feed the output harden trains" in err
    hardened = paths["torchscript"].parent / "h.pt"
    code, _, err = run_cli(
        "harden", paths["torchscript"], *common, "--eval-samples", "2",
        "--eval-sigmas", "0.1", "-o", hardened, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert "also returns output[1]; harden trains 'output[0]'" in " ".join(err.split())


def _means(report: Path) -> list[float]:
    return [row["mean"] for row in json.loads(report.read_text())["results"]]


def test_a_torch_models_output_is_chosen_by_position(two_outputs, run_cli) -> None:
    """--output 1 (or output[1]) evaluates the second tensor forward returns: the clean accuracy
    is torch's own forward's (80% by construction) and the noisy rows are the ONNX file's with
    --output scores (same layers, same keyed draws), in TorchScript and torch.export alike."""
    paths, data, _ = two_outputs
    report = paths["onnx"].parent / "r.json"
    args = ("--data", data, "--sigma", "0,0.3", "--samples", "3", "--json", report, "-q")
    code, _, err = run_cli("eval", paths["onnx"], *args, "--output", "scores")
    assert code == 0, err
    onnx_means = _means(report)
    assert onnx_means[0] == pytest.approx(0.8) and onnx_means[1] != onnx_means[0]
    for fmt, name in (("torchscript", "1"), ("export", "output[1]")):
        code, _, err = run_cli("eval", paths[fmt], *args, "--output", name)
        assert code == 0 and "also returns" not in err, err
        assert json.loads(report.read_text())["clean_accuracy"] == pytest.approx(0.8)
        assert _means(report) == pytest.approx(onnx_means)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--output", "2"), "has no output '2': its forward returns 2 tensors"),
        (("--output", "1", "--batch-samples", "2"), "runs torchscript models in PyTorch only"),
        (("--output", "1", "--dac-bits", "8"), "runs torchscript models in PyTorch only"),
    ],
)
def test_an_output_torch_cannot_run_is_refused_in_one_line(
    two_outputs, extra, message, run_cli
) -> None:
    paths, data, _ = two_outputs
    code, out, err = run_cli(
        "eval", paths["torchscript"], "--data", data, "--sigma", "0", "--samples", "1", *extra
    )
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err
