"""scikit-learn linear classifiers through skl2onnx: the LinearClassifier's coefficients are a
crossbar layer, checked against ONNX Runtime running the ai.onnx.ml operator itself and against
scikit-learn; harden writes trained coefficients back into the node's attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from ftaudit.models import load_model


def _data(n: int = 240, features: int = 6, classes: int = 3):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, features)).astype(np.float32)
    score = x[:, 0] * 2 + x[:, 1]
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return x, y


def _convert(estimator, x: np.ndarray, path: Path, *, zipmap: bool = False) -> Path:
    from skl2onnx import to_onnx

    options = {} if zipmap or not hasattr(estimator, "predict_proba") else {"zipmap": False}
    model = to_onnx(estimator, x[:1], options=options or None, target_opset=17)
    path.write_bytes(model.SerializeToString())
    return path


def _ort_scores(path: Path, output: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], {session.get_inputs()[0].name: x})[0]


def _cases():
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return {
        "logreg3": (lambda: LogisticRegression(max_iter=500), 3, "softmax"),
        "logreg2": (lambda: LogisticRegression(max_iter=500), 2, "sigmoid"),
        "svc3": (lambda: LinearSVC(), 3, "none"),
        "ridge3": (lambda: RidgeClassifier(), 3, "none"),
        "scaled": (lambda: make_pipeline(StandardScaler(), LogisticRegression()), 3, "softmax"),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_coefficients_are_the_layer_and_every_output_matches(case, tmp_path: Path) -> None:
    make, classes, post = _cases()[case]
    x, y = _data(classes=classes)
    estimator = make().fit(x, y)
    path = _convert(estimator, x, tmp_path / f"{case}.onnx")
    model = load_model(path)
    assert [la.name for la in model.layers] == ["LinearClassifier.coefficients"]
    assert not model.untraced
    clean = model.clean_weights()["LinearClassifier.coefficients"]
    final = estimator[-1] if hasattr(estimator, "steps") else estimator
    coef = final.coef_ if classes > 2 else np.vstack([-final.coef_, final.coef_])
    np.testing.assert_allclose(clean.T, coef, rtol=1e-6)  # stored (features, classes)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x, y, batch_size=64)
    np.testing.assert_allclose(runner.logits(), _ort_scores(path, model.output.name, x), atol=1e-6)
    assert np.mean(runner.logits().argmax(1) == y) == pytest.approx(estimator.score(x, y))
    if case == "scaled":
        return  # the scaler's output is not x
    scaled = clean * 1.1
    runner.set_weights({"LinearClassifier.coefficients": scaled})
    intercept = final.intercept_ if classes > 2 else np.array([-1, 1]) * final.intercept_
    raw = x.astype(np.float64) @ scaled + intercept
    expected = {
        "none": raw,
        "sigmoid": 1 / (1 + np.exp(-raw)),
        "softmax": np.exp(raw) / np.exp(raw).sum(1, keepdims=True),
    }[post]
    np.testing.assert_allclose(runner.logits(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_string_labels_and_double_inputs(dtype, tmp_path: Path) -> None:
    """String class labels (Gather over a string table); float64 data (skl2onnx then writes
    standard ops itself)."""
    from sklearn.linear_model import LogisticRegression

    x, y = _data()
    names = np.array(["cat", "dog", "eel"])[y]
    estimator = LogisticRegression(max_iter=500).fit(x.astype(dtype), names)
    path = _convert(estimator, x.astype(dtype), tmp_path / "strings.onnx")
    model = load_model(path)
    assert len(model.layers) == 1 and not model.untraced
    (weight,) = model.clean_weights().values()
    canonical = weight.T if model.layers[0].transposed else weight
    np.testing.assert_allclose(canonical, estimator.coef_, rtol=1e-6)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x, y, batch_size=50)
    reference = _ort_scores(path, model.output.name, x.astype(dtype))
    np.testing.assert_allclose(runner.logits(), reference, atol=1e-5)
    assert np.mean(runner.logits().argmax(1) == y) == pytest.approx(estimator.score(x, names))


def test_eval_perturbs_and_harden_writes_the_attributes(tmp_path: Path, run_cli) -> None:
    import onnx
    from sklearn.linear_model import LogisticRegression

    x, y = _data()
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    path = _convert(estimator, x, tmp_path / "logreg.onnx", zipmap=True)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, _, err = run_cli(
        "eval", path, "--data", tmp_path / "d.npz", "--sigma", "0.5", "--samples", "8",
        "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["clean_accuracy"] == pytest.approx(estimator.score(x, y))
    assert report["results"][0]["min"] < report["clean_accuracy"]
    out_path = tmp_path / "hardened.onnx"
    code, _, err = run_cli(
        "harden", path, "--data", tmp_path / "d.npz", "--sigma", "0.1", "--epochs", "2",
        "--method", "noise", "--eval-samples", "4", "-o", out_path,
    )  # fmt: skip
    assert code == 0, err
    written = onnx.load(str(out_path))
    original = onnx.load(str(path))
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in original.graph.node]
    trained = load_model(out_path).clean_weights()["LinearClassifier.coefficients"]
    before = load_model(path).clean_weights()["LinearClassifier.coefficients"]
    assert not np.array_equal(trained, before)
    node = next(n for n in written.graph.node if n.op_type == "LinearClassifier")
    coefficients = next(a for a in node.attribute if a.name == "coefficients")
    np.testing.assert_array_equal(np.asarray(coefficients.floats, np.float32), trained.T.ravel())


def test_classifier_names_are_unique_and_stable() -> None:
    """Empty or shared node names get LinearClassifier_<k>; the file and its in-memory copy
    agree because both count in graph order."""
    from onnx import helper

    from ftaudit.models.onnx_sklearn import classifier_prefixes

    def node(name: str):
        return helper.make_node("LinearClassifier", ["x"], ["y"], name=name, domain="ai.onnx.ml")

    nodes = [node("a"), node(""), node("b"), node("b"), helper.make_node("Relu", ["x"], ["r"])]
    graph = helper.make_graph(nodes, "g", [], [])
    assert classifier_prefixes(graph) == [
        "a", "LinearClassifier_1", "LinearClassifier_2", "LinearClassifier_3",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["forest", "boosting"])
def test_tree_ensembles_are_refused_as_holding_no_crossbar_weight(kind, tmp_path: Path, run_cli):
    """A tree ensemble compares features with thresholds and multiplies by nothing: inspect lists
    it as not perturbed with that reason, eval refuses it in one line (exit 2, nothing written),
    and the refusal says why, not 'check the model file'."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    x, y = _data()
    make = {
        "forest": lambda: RandomForestClassifier(n_estimators=3, max_depth=2, random_state=0),
        "boosting": lambda: GradientBoostingClassifier(n_estimators=3, random_state=0),
    }[kind]
    path = _convert(make().fit(x, y), x, tmp_path / "trees.onnx")
    model = load_model(path)
    assert model.layers == []
    assert [op.op for op in model.untraced] == ["TreeEnsembleClassifier"]
    assert "decision-tree ensemble" in model.untraced[0].reason
    code, out, err = run_cli("inspect", path)
    assert code == 0 and "TreeEnsembleClassifier" in out and "NOT perturbed" in out
    np.savez(tmp_path / "d.npz", x=x, y=y)
    report = tmp_path / "r.json"
    code, out, err = run_cli(
        "eval", path, "--data", tmp_path / "d.npz", "--sigma", "0.1", "--samples", "2",
        "--json", report,
    )  # fmt: skip
    assert code == 2 and out == "" and not report.exists()
    assert err.count("\n") == 1 and "decision-tree ensemble" in err and "Traceback" not in err
