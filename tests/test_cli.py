"""The ``ftaudit`` command line: exit codes, one-line errors, outputs, provenance, light imports.

Exit codes are the CLI's contract with CI: 0 ok, 1 a gate failed, 2 bad input or usage. Every bad
input must give one ``ftaudit: error:`` line, no traceback, and write nothing.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import ftaudit
from ftaudit.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
SCHEMA_PATH = REPO / "docs" / "report.schema.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ("--samples", "5", "--seed", "3")

RunCli = Callable[..., tuple[int, str, str]]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(code: int, out: str, err: str) -> str:
    """Exit 2, nothing on stdout, one 'ftaudit: error:' line on stderr and no traceback."""
    assert code == 2, err
    assert out == "", out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ftaudit: error:"), err
    return lines[0]


def run_subprocess(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


# --- bad input: exit 2, one line, nothing written --------------------------------------------


class Outputs:
    """--json/--csv/--plot targets in tmp_path; the CSV target already exists and must survive."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        self.json = folder / "report.json"
        self.csv = folder / "table.csv"
        self.plot = folder / "plot.png"
        self.csv.write_text("precious,content\n1,2\n")
        self.before = sorted(p.name for p in folder.iterdir())
        self.folder = folder

    def args(self) -> list[str]:
        return ["--json", str(self.json), "--csv", str(self.csv), "--plot", str(self.plot)]

    def assert_untouched(self) -> None:
        assert not self.json.exists()
        assert not self.plot.exists()
        assert self.csv.read_text() == "precious,content\n1,2\n"
        # no leftover temp files either
        assert sorted(p.name for p in self.folder.iterdir()) == self.before


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_model(kind: str, tmp: Path, convnet_onnx: Path) -> Path:
    if kind == "missing":
        return tmp / "nothere.onnx"
    if kind == "folder":
        (tmp / "a_folder.onnx").mkdir()
        return tmp / "a_folder.onnx"
    path = tmp / f"{kind}.onnx"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("this is not a neural network\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_onnx":
        raw = convnet_onnx.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "foreign_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    return path


@pytest.mark.parametrize(
    "kind", ["missing", "folder", "random_bytes", "text", "empty", "truncated_onnx", "foreign_zip"]
)
def test_bad_model_file(run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz, kind) -> None:
    model = _bad_model(kind, tmp_path, convnet_onnx)
    outputs = Outputs(tmp_path / "out")
    code, out, err = run_cli(
        "eval", model, "--data", blobs_npz, "--sigma", "0.1", *FAST, *outputs.args()
    )
    line = assert_one_line_error(code, out, err)
    assert model.name in line
    outputs.assert_untouched()


def _bad_data(kind: str, tmp: Path) -> Path:
    x = np.zeros((10, 1, 8, 8), np.uint8)
    y = np.zeros(10, np.int64)
    if kind == "missing":
        return tmp / "nothere.npz"
    if kind == "corrupt":
        path = tmp / "corrupt.npz"
        path.write_bytes(b"PK\x03\x04 definitely not a complete archive")
        return path
    if kind == "pickled_objects":
        return _npz(tmp / "objects.npz", x=np.array([{"a": 1}] * 10, dtype=object), y=y)
    if kind == "wrong_channels":
        return _npz(tmp / "rgb.npz", x=np.zeros((10, 3, 8, 8), np.uint8), y=y)
    if kind == "labels_out_of_range":
        return _npz(tmp / "labels.npz", x=x, y=np.full(10, 7, np.int64))
    if kind == "length_mismatch":
        return _npz(tmp / "lengths.npz", x=x, y=np.zeros(9, np.int64))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("missing", "does not exist"),
        ("corrupt", "npz"),
        ("pickled_objects", "pickle"),
        ("wrong_channels", "(N, 3, 8, 8)"),
        ("labels_out_of_range", "label 7"),
        ("length_mismatch", "9 labels"),
    ],
)
def test_bad_data(run_cli: RunCli, tmp_path: Path, convnet_onnx, kind, expect) -> None:
    data = _bad_data(kind, tmp_path)
    outputs = Outputs(tmp_path / "out")
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", data, "--sigma", "0.1", *FAST, *outputs.args()
    )
    line = assert_one_line_error(code, out, err)
    assert expect in line
    outputs.assert_untouched()


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        (["--sigma", "-0.1"], "sigma"),
        (["--sigma=-0.1"], "sigma"),
        (["--sigma", "abc"], "sigma 'abc'"),
        (["--sigma", "0:0.4:0"], "step > 0"),
        (["--sigma", "0:inf:0.1"], "finite"),
        (["--sigma", "0:1:1e-9"], "more than"),
        (["--sigma", "nan"], "sigma"),
        (["--sigma", ""], "sigma"),
        (["--sigma", "0.1", "--k", "0"], "k must"),
        (["--sigma", "0.1", "--k", "100"], "k must"),
        (["--sigma", "0.1", "--k", "-1"], "k must"),
        (["--sigma", "0.1", "--samples", "0"], "--samples"),
        (["--sigma", "0.1", "--batch-size", "0"], "--batch-size"),
        (["--sigma", "0.1", "--seed", "-1"], "--seed"),
        (["--sigma", "0.1", "--limit", "0"], "limit"),
        (["--sigma", "0.1", "--target-ci", "0"], "--target-ci"),
        (["--sigma", "0.1", "--fail-under-kpp", "1.5"], "--fail-under-kpp"),
        (["--sigma", "0.1", "--fail-under-mean", "-0.1"], "--fail-under-mean"),
        (["--sigma", "0.1", "--device", "tpu"], "device"),
        (["--sigma", "0.1", "--noise", "lognormall"], "did you mean 'lognormal'"),
        (["--sigma", "0.1", "--noise", "gausian"], "did you mean 'gaussian'"),
        (["--sigma", "0.1", "--noise", "zzzz"], "unknown noise model"),
        (["--sigma", "0.1", "--noise", "nothere.toml"], "does not exist"),
        (["--sigma", "0.1", "--bits", "4"], "--bits"),
        (["--sigma", "0.1", "--noise", "rram", "--bits", "3"], "multiple"),
        (["--sigma", "0.1", "--layers", "no_such_layer*"], "no crossbar layer"),
        (["--sigma", "0.1", "--exclude", "*"], "no crossbar layer"),
        (["--sigma", "0.1", "--output", "nope"], "nope"),
        (["--sigma", "0.1", "--mean", "abc"], "--mean"),
    ],
)
def test_bad_option(
    run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz, options, expect
) -> None:
    outputs = Outputs(tmp_path / "out")
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, *FAST, *options, *outputs.args()
    )
    line = assert_one_line_error(code, out, err)
    assert expect in line
    outputs.assert_untouched()


@pytest.mark.parametrize(
    "device_toml",
    [
        "levels = [1.0, \n",  # not TOML
        "this is = not toml\n",
    ],
)
def test_malformed_device_toml(
    run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz, device_toml
) -> None:
    device = tmp_path / "device.toml"
    device.write_text(device_toml)
    outputs = Outputs(tmp_path / "out")
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1", "--noise", device,
        *FAST, *outputs.args(),
    )  # fmt: skip
    line = assert_one_line_error(code, out, err)
    assert "device.toml" in line
    outputs.assert_untouched()


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _cuda_available(model_format: str) -> bool:
    """Whether eval --device cuda can run here: ONNX through ONNX Runtime's CUDA provider or
    the batched torch path (its default on cuda), torch formats through torch."""
    if model_format == "onnx":
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers() or _torch_cuda()
    pytest.importorskip("torch")
    return _torch_cuda()


@pytest.mark.parametrize("model_format", ["onnx", "torchscript"])
def test_device_cuda_without_cuda(
    run_cli: RunCli, tmp_path: Path, request, blobs_npz, model_format
) -> None:
    if _cuda_available(model_format):
        pytest.skip("CUDA is available here")
    model = request.getfixturevalue("convnet_onnx" if model_format == "onnx" else "convnet_ts")
    outputs = Outputs(tmp_path / "out")
    code, out, err = run_cli(
        "eval", model, "--data", blobs_npz, "--sigma", "0.1", "--device", "cuda",
        *FAST, *outputs.args(),
    )  # fmt: skip
    line = assert_one_line_error(code, out, err)
    assert "cuda" in line.lower()
    assert "no CUDA" in line or "not available" in line
    if model_format == "onnx" and importlib.util.find_spec("torch") is not None:
        assert "for the batched torch path torch sees no CUDA device" in line  # both routes
    outputs.assert_untouched()


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot"])
def test_output_in_missing_folder_fails_before_monte_carlo(
    run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz, monkeypatch, flag
) -> None:
    import ftaudit.evaluation

    def no_audit(*args, **kwargs):
        raise AssertionError("the audit ran although an output path was unusable")

    monkeypatch.setattr(ftaudit.evaluation, "audit", no_audit)
    target = tmp_path / "missing_dir" / "out.file"
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1", *FAST, flag, target
    )
    line = assert_one_line_error(code, out, err)
    assert "missing_dir" in line
    assert not (tmp_path / "missing_dir").exists()


def test_output_path_is_a_folder(run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz) -> None:
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1", *FAST, "--json", tmp_path
    )
    assert "folder" in assert_one_line_error(code, out, err)


@pytest.mark.parametrize("which", ["model", "data"])
def test_output_over_an_input_is_refused(
    run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz, which
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(convnet_onnx.read_bytes())
    data = tmp_path / "data.npz"
    data.write_bytes(blobs_npz.read_bytes())
    before = {model: sha256(model), data: sha256(data)}
    target = model if which == "model" else data
    # a different spelling of the same file must be caught too
    spelled = tmp_path / "." / target.name
    code, out, err = run_cli(
        "eval", model, "--data", data, "--sigma", "0.1", *FAST, "--json", spelled
    )
    line = assert_one_line_error(code, out, err)
    assert "refusing" in line
    assert {p: sha256(p) for p in before} == before


def test_missing_torch_extra_gives_install_hint(tmp_path: Path, convnet_ts, blobs_npz) -> None:
    result = run_subprocess(
        f"""
        import sys
        sys.modules["torch"] = None  # as if the torch extra were not installed
        from ftaudit.cli import run
        code = run(["eval", {str(convnet_ts)!r}, "--data", {str(blobs_npz)!r},
                    "--sigma", "0.1", "--samples", "2"])
        sys.exit(code)
        """
    )
    assert result.returncode == 2, result.stderr
    line = assert_one_line_error(result.returncode, result.stdout, result.stderr)
    assert "pip install 'ftaudit[torch]'" in line


# --- gates --------------------------------------------------------------------------------------


def test_failed_kpp_gate_exits_1_with_one_line_per_violation(
    run_cli: RunCli, tmp_path: Path, convnet_onnx, blobs_npz
) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0,2.0,3.0", *FAST,
        "--fail-under-kpp", "0.99", "--json", report_path, "--quiet",
    )  # fmt: skip
    assert code == 1, err
    assert out == ""  # --quiet
    assert "Traceback" not in err
    report = json.loads(report_path.read_text())  # the report is still written
    failed = [g for g in report["gates"] if not g["passed"]]
    assert len(report["gates"]) == 3
    assert {g["sigma"] for g in failed} >= {2.0, 3.0}
    lines = err.strip().splitlines()
    assert len(lines) == len(failed)
    for gate, line in zip(failed, lines, strict=True):
        assert line.startswith("ftaudit: ")
        assert "kpp" in line
        assert f"sigma={gate['sigma']:g}" in line
        assert f"{gate['value']:.4f}" in line
        assert "0.9900" in line


def test_passing_gates_exit_0(run_cli: RunCli, convnet_onnx, blobs_npz) -> None:
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0,3.0", *FAST,
        "--fail-under-mean", "0.0", "--fail-under-kpp", "0", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert out == ""
    assert err == ""


# --- outputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, convnet_onnx, blobs_npz):
    """One eval writing JSON, CSV and PNG; shared by the output tests."""
    from ftaudit.cli import run

    folder = tmp_path_factory.mktemp("full_run")
    args = [
        "eval", str(convnet_onnx), "--data", str(blobs_npz), "--sigma", "0:0.4:0.1",
        "--samples", "8", "--seed", "7", "--k", "5", "--quiet",
        "--json", str(folder / "r.json"), "--csv", str(folder / "r.csv"),
        "--plot", str(folder / "r.png"),
    ]  # fmt: skip
    code = run(args)
    return code, args, folder


def test_json_report_validates_and_carries_provenance(full_run, convnet_onnx, blobs_npz) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    code, args, folder = full_run
    assert code == 0
    report = json.loads((folder / "r.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    assert report["model"]["sha256"] == sha256(convnet_onnx)
    assert report["model"]["format"] == "onnx"
    assert report["data"]["sha256"] == sha256(blobs_npz)
    assert report["data"]["n"] == 400
    assert report["seed"] == 7
    assert report["samples"] == 8
    assert report["k"] == 5
    assert report["command"] == ["ftaudit", *args]
    assert report["ftaudit_version"] == ftaudit.__version__ == metadata.version("ftaudit")
    assert report["noise"]["name"] == "lognormal"
    assert [r["samples"] for r in report["results"]] == [8] * 5


def test_sigma_range_is_exact(full_run) -> None:
    _, _, folder = full_run
    report = json.loads((folder / "r.json").read_text())
    assert [r["sigma"] for r in report["results"]] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_sigma_zero_row_is_the_clean_accuracy(full_run) -> None:
    _, _, folder = full_run
    report = json.loads((folder / "r.json").read_text())
    zero = report["results"][0]
    clean = report["clean_accuracy"]
    assert zero["sigma"] == 0
    assert zero["mean"] == zero["kpp"] == zero["min"] == zero["max"] == clean
    assert zero["drop_mean"] == zero["drop_kpp"] == 0
    assert zero["kpp_interval"]["low"] == zero["kpp_interval"]["high"] == clean


def test_csv_has_one_row_per_sigma(full_run) -> None:
    _, _, folder = full_run
    with open(folder / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    assert [float(row["sigma"]) for row in rows] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_plot_is_a_png(full_run) -> None:
    _, _, folder = full_run
    assert (folder / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_json_to_stdout_is_only_json(run_cli: RunCli, convnet_onnx, blobs_npz) -> None:
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1,0.3", *FAST, "--json", "-"
    )
    assert code == 0, err
    report = json.loads(out)
    assert [r["sigma"] for r in report["results"]] == [0.1, 0.3]
    assert err == ""


def test_test_set_error_widens_every_interval(run_cli: RunCli, convnet_onnx, blobs_npz) -> None:
    """--test-set-error: the same draws, intervals wider by the test set's sampling error."""
    base = ("eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0,2", *FAST, "--json", "-")
    reports = []
    for extra in ((), ("--test-set-error",)):
        code, out, err = run_cli(*base, *extra)
        assert code == 0, err
        reports.append(json.loads(out))
    narrow, wide = reports
    assert narrow["interval_scope"]["covers"] == "monte-carlo"
    assert wide["interval_scope"]["covers"] == "monte-carlo and test-set sampling"
    for a, b in zip(narrow["results"], wide["results"], strict=True):
        assert a["mean"] == b["mean"] and a["kpp"] == b["kpp"]  # the same draws
        assert b["mean_interval"]["low"] <= a["mean_interval"]["low"]
        assert b["mean_interval"]["high"] >= a["mean_interval"]["high"]
    # a perfect accuracy has no binomial spread (a(1-a) = 0); below it the interval widens
    row = next(r for r in wide["results"] if r["mean"] < 1)
    width = row["mean_interval"]["high"] - row["mean_interval"]["low"]
    old = next(r for r in narrow["results"] if r["sigma"] == row["sigma"])["mean_interval"]
    assert width > old["high"] - old["low"]


def test_table_on_stdout_unless_quiet(run_cli: RunCli, convnet_onnx, blobs_npz) -> None:
    base = ("eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1,0.25", *FAST)
    code, out, err = run_cli(*base)
    assert code == 0, err
    assert "KPP" in out
    assert "0.25" in out
    assert convnet_onnx.name in out
    code, out, err = run_cli(*base, "--quiet")
    assert code == 0, err
    assert out == ""


def test_same_seed_same_numbers_other_seed_differs(
    run_cli: RunCli, convnet_onnx, blobs_npz
) -> None:
    def kpps(seed: str) -> list[float]:
        code, out, err = run_cli(
            "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.5,1.0",
            "--samples", "10", "--seed", seed, "--json", "-",
        )  # fmt: skip
        assert code == 0, err
        return [r["mean"] for r in json.loads(out)["results"]]

    assert kpps("1") == kpps("1")
    assert kpps("1") != kpps("2")


def test_torchscript_and_onnx_agree_on_clean_accuracy(
    run_cli: RunCli, convnet_onnx, convnet_ts, blobs_npz
) -> None:
    accuracies = []
    for model in (convnet_onnx, convnet_ts):
        code, out, err = run_cli(
            "eval", model, "--data", blobs_npz, "--sigma", "0", "--samples", "1", "--json", "-"
        )
        assert code == 0, err
        accuracies.append(json.loads(out)["clean_accuracy"])
    # the same weights in two runtimes; allow one borderline example to flip on float rounding
    assert abs(accuracies[0] - accuracies[1]) <= 1 / 400
    assert accuracies[0] > 0.9  # the fixture network really learned the task


@pytest.mark.parametrize("model_name", ["lenet.onnx", "mlp.pt"])
def test_sample_models(run_cli: RunCli, model_name: str) -> None:
    code, out, err = run_cli(
        "eval", SAMPLES / model_name, "--data", SAMPLES / "fmnist_test_2000.npz",
        "--sigma", "0,0.3", "--samples", "5", "--limit", "200", "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["n"] == 200
    assert report["data"]["limit"] == 200
    assert report["clean_accuracy"] > 0.7
    assert report["results"][1]["mean"] <= report["clean_accuracy"] + 0.05


# --- version, inspect, noise-models, imports ----------------------------------------------------


def test_version(run_cli: RunCli) -> None:
    code, out, _ = run_cli("--version")
    assert code == 0
    assert out.strip() == f"ftaudit {ftaudit.__version__}"


def test_python_dash_m_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ftaudit", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ftaudit {metadata.version('ftaudit')}"


def _onnx_crossbar_layers(path: Path) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape, params, MACs) of Conv/Gemm weights, computed from the graph with onnx."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes = {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in [*model.graph.value_info, *model.graph.output]
    }
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = inits[node.input[1]]
        if node.op_type == "Conv":
            _, _, out_h, out_w = shapes[node.output[0]]
            macs = weight.shape[0] * out_h * out_w * int(np.prod(weight.shape[1:]))
        else:
            macs = weight.size
        layers.append((node.input[1], weight.shape, weight.size, macs))
    return layers


def test_inspect_json_matches_independent_count(
    run_cli: RunCli, convnet_onnx, trained_convnet
) -> None:
    code, out, err = run_cli("inspect", convnet_onnx, "--json")
    assert code == 0, err
    summary = json.loads(out)
    got = [(la["name"], tuple(la["shape"]), la["params"], la["macs"]) for la in summary["layers"]]
    assert got == _onnx_crossbar_layers(convnet_onnx)
    # and against the torch module the file was exported from
    torch_weights = [m.weight for m in trained_convnet if type(m).__name__ in ("Conv2d", "Linear")]
    assert [shape for _, shape, _, _ in got] == [tuple(w.shape) for w in torch_weights]
    conv = got[0]
    assert conv[1:] == ((4, 1, 3, 3), 36, 4 * 6 * 6 * 9)
    assert [la[2] for la in got] == [36, 144 * 16, 16 * 4]
    assert summary["totals"]["params"] == 36 + 144 * 16 + 16 * 4
    assert summary["totals"]["macs_per_input"] == 1296 + 144 * 16 + 16 * 4
    assert summary["model"]["sha256"] == sha256(convnet_onnx)
    for layer, weight in zip(summary["layers"], torch_weights, strict=True):
        assert layer["max_abs"] == pytest.approx(float(weight.detach().abs().max()), rel=1e-6)


def test_inspect_torchscript_and_layer_selection(
    run_cli: RunCli, convnet_ts, trained_convnet
) -> None:
    code, out, err = run_cli("inspect", convnet_ts, "--json", "--layers", "0.*")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"]["format"] == "torchscript"
    expected = [
        (f"{name}.weight", list(module.weight.shape), name == "0")
        for name, module in trained_convnet.named_children()
        if type(module).__name__ in ("Conv2d", "Linear")
    ]
    assert [(la["name"], la["shape"], la["selected"]) for la in summary["layers"]] == expected
    assert summary["totals"]["selected_params"] == 36


def test_inspect_table_and_bad_model(run_cli: RunCli, tmp_path: Path, convnet_onnx) -> None:
    code, out, err = run_cli("inspect", convnet_onnx)
    assert code == 0, err
    assert "Conv" in out
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    code, out, err = run_cli("inspect", bad)
    assert_one_line_error(code, out, err)


def test_noise_models_lists_registry(run_cli: RunCli) -> None:
    code, out, _ = run_cli("noise-models")
    assert code == 0
    names = {line.split()[0] for line in out.strip().splitlines()}
    assert {"lognormal", "gaussian", "rram", "fefet1", "fefet2"} <= names


def test_import_and_help_do_not_load_heavy_packages() -> None:
    result = run_subprocess(
        """
        import sys
        import ftaudit
        import ftaudit.cli
        heavy = ("torch", "onnxruntime")
        assert not [m for m in heavy if m in sys.modules], "import loaded a heavy package"
        code = ftaudit.cli.run(["--help"])
        assert code == 0, code
        code = ftaudit.cli.run(["noise-models"])
        assert code == 0, code
        loaded = [m for m in heavy if m in sys.modules]
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


def test_user_error_is_one_line() -> None:
    error = UserError("what went wrong", hint="how to fix it")
    assert str(error) == "what went wrong; how to fix it"
    assert "\n" not in str(error)


def test_a_bug_exits_3_with_its_traceback(run_cli, monkeypatch, convnet_onnx) -> None:
    """An internal error keeps its traceback and never looks like a failed gate (exit 1)."""
    import ftaudit.evaluation

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(ftaudit.evaluation, "audit", broken)
    code, _, err = run_cli("eval", convnet_onnx, "--sigma", "0.1", "--data", "unused.npz")
    assert code == 3
    assert "Traceback" in err and "ZeroDivisionError: simulated bug" in err
    assert "internal error" in err.splitlines()[-1]


def test_report_records_resolved_options(run_cli, convnet_onnx, blobs_npz, tmp_path) -> None:
    config = tmp_path / "ftaudit.toml"
    config.write_text(f'data = "{blobs_npz}"\nsamples = 5\n')
    out_json = tmp_path / "r.json"
    code, _, err = run_cli(
        "eval",
        convnet_onnx,
        "--sigma",
        "0.2",
        "--config",
        config,
        "--batch-size",
        "64",
        "--exclude",
        "*fc*",
        "--json",
        out_json,
        "-q",
    )
    assert code == 0, err
    options = json.loads(out_json.read_text())["options"]
    assert options["batch_size"] == 64
    assert options["exclude"] == ["*fc*"]
    assert options["config_file"] == str(config)
    assert options["mean"] is None and options["output"] is None


def test_device_physics_options_reach_the_noise_model(
    run_cli: RunCli, convnet_onnx, blobs_npz
) -> None:
    base = ("eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", *FAST, "--noise", "rram")
    code, out, err = run_cli(*base, "--json", "-")
    assert code == 0, err
    noise = json.loads(out)["noise"]
    assert (noise["clamp"], noise["cell_noise"]) == (True, "independent")  # the defaults
    code, out, err = run_cli(*base, "--no-clamp", "--cell-noise", "shared", "--json", "-")
    assert code == 0, err
    noise = json.loads(out)["noise"]
    assert (noise["clamp"], noise["cell_noise"]) == (False, "shared")
    code, out, err = run_cli(*base, "--cell-noise", "both")
    assert code == 2 and out == ""
    assert "--cell-noise must be one of independent, shared" in err
    assert len(err.strip().splitlines()) == 1


def test_pixel_values_as_floats_are_a_warning(run_cli, convnet_onnx, blobs, tmp_path) -> None:
    x, y = blobs
    data = tmp_path / "float_pixels.npz"
    np.savez(data, x=x.astype(np.float32), y=y)  # 0..255 floats: used unchanged, not / 255
    code, _, err = run_cli("eval", convnet_onnx, "--data", data, "--sigma", "0", "-q")
    assert code == 0, err
    assert "ftaudit: warning: inputs x in" in err and "--std 255" in err
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", data, "--sigma", "0", "-q", "--std", "255"
    )
    assert code == 0 and "warning" not in err


def test_help_groups_options_in_panels_with_examples(run_cli) -> None:
    import typer.main

    from ftaudit.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option":
                assert param.rich_help_panel, f"{name} {param.opts} has no help panel"
                assert param.metavar is not None and "[" not in param.metavar, (name, param.opts)
            else:
                assert param.metavar == param.name.upper(), (name, param.name)
    for name in ("eval", "compare", "sensitivity", "harden", "inspect"):
        code, out, err = run_cli(name, "--help")
        assert code == 0, err
        assert "Examples" in out and f"ftaudit {name} sample_models/" in out
        assert "<list[str]>" not in out and "{model}" not in out and "<bool>" not in out
    code, out, _ = run_cli("eval", "--help")
    for panel in ("What to audit", "Device", "Monte Carlo", "Outputs", "Gates", "Scale-out"):
        assert panel in out
    assert "not --samples" in out  # --limit cannot be mistaken for Monte Carlo samples


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("eval", "m.onnx", "-o", "x.json"), "No such option: -o. See 'ftaudit eval --help'."),
        (
            ("eval", "m.onnx", "--samples", "many"),
            "Invalid value for '--samples': Input should be a valid integer, unable to parse "
            "string as an integer. See 'ftaudit eval --help'.",
        ),
        (("eval",), "Missing argument 'MODEL'. See 'ftaudit eval --help'."),
        (("evl", "m.onnx"), "No such command 'evl'. Did you mean 'eval'? See 'ftaudit --help'."),
        (("harden", "m.onnx"), "Missing option '--output' / '-o'. See 'ftaudit harden --help'."),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(run_cli, args, said) -> None:
    """typer's multi-line error panel becomes one ``ftaudit: error:`` line, like any bad input."""
    code, out, err = run_cli(*args)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"ftaudit: error: {said}"]


def test_unknown_option_suggests_own_options_and_names_the_command_that_has_it(run_cli) -> None:
    code, out, err = run_cli("compare", "a.onnx", "b.onnx", "--fail-if-wrse", "0.01")
    assert code == 2 and out == ""
    assert "Did you mean --fail-if-worse?" in err and "--help," not in err
    code, _, err = run_cli("eval", "m.onnx", "--report", "r.json")
    assert code == 2
    assert "It is an option of harden, not of eval." in " ".join(err.split())
    code, _, err = run_cli("eval", "m.onnx", "--zzz")
    assert code == 2 and "Did you mean" not in err and "No such option: --zzz." in err
