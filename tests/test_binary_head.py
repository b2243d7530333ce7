"""Binary classifiers with one output column (a logit, or a Sigmoid's probability), in every
format: read as two classes [0, z], so the accuracy is that of the model's own rule (class 1
when the logit is above 0), checked against torch and scikit-learn."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ftaudit import audit  # noqa: E402
from ftaudit.models import load_model  # noqa: E402
from ftaudit.models.binary_head import two_class_numpy, two_class_tensor  # noqa: E402

FORMATS = ("onnx", "torchscript", "torch.export")


def _net(sigmoid: bool):
    from torch import nn

    torch.manual_seed(5)
    layers = [nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1)]
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else [])).eval()


def _save(net, fmt: str, path: Path, x: np.ndarray) -> Path:
    example = torch.from_numpy(x[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(
                net, example, str(path), dynamo=False, input_names=["x"],
                dynamic_axes={"x": {0: "n"}}, opset_version=17,
            )  # fmt: skip
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.script(net), str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def binary_files(tmp_path_factory: pytest.TempPathFactory):
    """Each format with and without the Sigmoid; labels: the logit's own rule, with 10% of them
    flipped, so the clean accuracy is 90% exactly."""
    root = tmp_path_factory.mktemp("binary")
    x = np.random.default_rng(2).standard_normal((200, 6)).astype(np.float32)
    with torch.no_grad():
        logit = _net(False)(torch.from_numpy(x))[:, 0].numpy()
    y = (logit > 0).astype(np.int64)
    y[::10] = 1 - y[::10]
    np.savez(root / "d.npz", x=x, y=y)
    files = {
        (fmt, sigmoid): _save(_net(sigmoid), fmt, root / f"m_{sigmoid}.{fmt}", x)
        for fmt in FORMATS
        for sigmoid in (False, True)
    }
    return root / "d.npz", files, logit


def test_two_class_view_is_the_threshold_rule() -> None:
    z = np.array([[-2.0], [0.0], [3.0]], np.float32)
    np.testing.assert_array_equal(two_class_numpy(z), [[0, -2], [0, 0], [0, 3]])
    assert list(two_class_numpy(z).argmax(1)) == [0, 0, 1]  # a tie is class 0, as sklearn's > 0
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(two_class_numpy(p, probability=True), two_class_numpy(z), atol=1e-5)
    wide = np.ones((3, 4), np.float32)
    assert two_class_numpy(wide) is wide
    # cross-entropy over [0, z] is binary cross-entropy on z
    t = torch.tensor([-1.5, 0.3, 2.0])
    labels = torch.tensor([0, 1, 1])
    ce = torch.nn.functional.cross_entropy(two_class_tensor(torch, t[:, None]), labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(t, labels.float())
    assert float(ce) == pytest.approx(float(bce), rel=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sigmoid", [False, True])
def test_every_format_counts_the_models_own_rule(binary_files, fmt, sigmoid) -> None:
    data, files, logit = binary_files
    model = load_model(files[fmt, sigmoid])
    runner = model.runner(model.layers, device="cpu")
    y = np.load(data)["y"]
    runner.bind_data(np.load(data)["x"], y, batch_size=64)
    logits = runner.logits()
    assert logits.shape == (200, 2)
    np.testing.assert_allclose(logits[:, 1], logit, atol=1e-4 if sigmoid else 1e-5)
    assert runner.count_correct() == 180


def test_formats_give_the_same_numbers_under_noise(binary_files) -> None:
    data, files, _ = binary_files
    runs = [
        audit(files[fmt, sigmoid], data, sigmas=[0.3], samples=6).results[0].accuracies
        for fmt in FORMATS
        for sigmoid in (False, True)
    ]
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    assert runs[0].min() < 0.9


def test_report_and_inspect_name_the_one_column_output(binary_files, run_cli, tmp_path) -> None:
    data, files, _ = binary_files
    path = files["onnx", True]
    code, _, err = run_cli(
        "eval", path, "--data", data, "--sigma", "0.1", "--samples", "2",
        "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    output = json.loads((tmp_path / "r.json").read_text())["model"]["output"]
    assert output["shape"] == [None, 2] and output["binary_output"]
    code, out, _ = run_cli("inspect", path)
    assert code == 0 and "one score per input" in out


def test_linear_svc_binary_decision_function(tmp_path) -> None:
    """skl2onnx's binary LinearSVC outputs its decision function (N, 1): the accuracy equals
    scikit-learn's, and the coefficients are the layer."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 5)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] + 0.3 * rng.standard_normal(150) > 0).astype(np.int64)
    svc = LinearSVC().fit(x, y)
    path = tmp_path / "svc.onnx"
    path.write_bytes(to_onnx(svc, x[:1], target_opset=17).SerializeToString())
    np.savez(tmp_path / "d.npz", x=x, y=y)
    report = audit(path, tmp_path / "d.npz", sigmas=[0.2], samples=4)
    assert report.clean_accuracy == pytest.approx(svc.score(x, y))
    assert [la["name"] for la in report.to_dict()["layers"]] == ["LinearClassifier.coefficients"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_outputs_train_on_log_probabilities(fmt, tmp_path) -> None:
    """A model that ends in Softmax is evaluated on its probabilities (same argmax) and trained
    on their log: its trainable's output is torch's log_softmax of the logits, so harden's
    cross-entropy is the one over the logits."""
    from torch import nn

    from ftaudit.harden.trainable import make_trainable

    torch.manual_seed(6)
    logits_net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    net = nn.Sequential(logits_net, nn.Softmax(dim=1)).eval()
    x = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
    model = load_model(_save(net, fmt, tmp_path / f"softmax.{fmt}", x))
    assert model.output_activation == "softmax"
    trainable = make_trainable(model)
    with torch.no_grad():
        out = trainable.forward(torch.from_numpy(x)).numpy()
        expected = torch.log_softmax(logits_net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    plain = load_model(_save(logits_net, fmt, tmp_path / f"logits.{fmt}", x))
    assert plain.output_activation is None
