"""TorchScript and torch.export models with several data inputs (a transformer's input_ids,
attention_mask, token_type_ids): fed one packed array, split back into the module's own
arguments at every call; checked against the torch model's own logits and against the ONNX
export of the same network."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from multi_input_models import (  # noqa: E402
    INPUTS,
    check_scaled_weights_reach_every_product,
    encoder,
    export_encoder_onnx,
    harden_once,
    token_data,
    torch_logits,
)

from ftaudit import audit  # noqa: E402
from ftaudit.analog.options import ForwardPipeline  # noqa: E402
from ftaudit.data import load_dataset  # noqa: E402
from ftaudit.errors import UserError  # noqa: E402
from ftaudit.models import load_model  # noqa: E402

LINEARS = ["q.weight", "k.weight", "v.weight", "ff.weight", "head.weight"]
#: the torch formats under test -> file name in the fixture folder
TORCH_FILES = {"scripted": "encoder.pt", "traced": "encoder_traced.pt", "program": "encoder.pt2"}


def _examples(n: int = 2) -> tuple:
    data = token_data()
    return tuple(torch.from_numpy(data[name][:n]) for name in INPUTS)


def _save_program(module, path: Path, example: tuple, *, dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = tuple({0: batch} for _ in example) if dynamic else None
        program = torch.export.export(module.eval(), example, dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    return path


def _save_script(module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(module, str(path))
    return path


@pytest.fixture(scope="module")
def network():
    return encoder()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, network) -> Path:
    """The encoder scripted, traced, torch.export'ed (dynamic batch) and as ONNX; .npz files
    with every input and with the ids alone, labelled with the model's own predictions."""
    root = tmp_path_factory.mktemp("multi_input_torch")
    _save_script(torch.jit.script(network), root / TORCH_FILES["scripted"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network, _examples())
    _save_script(traced, root / TORCH_FILES["traced"])
    _save_program(network, root / TORCH_FILES["program"], _examples())
    export_encoder_onnx(network, root / "encoder.onnx")
    data = token_data()
    labels = torch_logits(network, data).argmax(1)
    np.savez(root / "all.npz", x=data["input_ids"], y=labels, **{k: data[k] for k in INPUTS[1:]})
    np.savez(root / "ids_only.npz", x=data["input_ids"], y=labels)
    return root


@pytest.mark.parametrize("kind", list(TORCH_FILES))
def test_the_module_arguments_are_the_data_inputs(data_dir: Path, kind: str) -> None:
    """TorchScript: names from forward's signature, int64 for what feeds an embedding, float32
    for the rest (the mask); torch.export: the program's own shapes and dtypes."""
    model = load_model(data_dir / TORCH_FILES[kind])
    assert [spec.name for spec in model.data_inputs] == list(INPUTS)
    assert [layer.name for layer in model.layers] == LINEARS  # every Linear, in order
    if kind == "program":
        assert [spec.dtype for spec in model.data_inputs] == ["int64"] * 3
        assert model.input.shape == (None, 3, 10) and model.input.dtype == "int64"
    else:
        assert [spec.dtype for spec in model.data_inputs] == ["int64", "float32", "int64"]
        assert model.input.shape is None and model.input.dtype == "float32"
    assert model.input_dict()["packed_inputs"][1]["name"] == "attention_mask"


@pytest.mark.parametrize("kind", list(TORCH_FILES))
def test_logits_equal_torch_with_the_mask_and_with_transformers_defaults(
    data_dir: Path, network, kind: str
) -> None:
    model = load_model(data_dir / TORCH_FILES[kind])
    runner = model.runner(model.layers, device="cpu")
    data = token_data()
    for file, fed in (("all.npz", data), ("ids_only.npz", {"input_ids": data["input_ids"]})):
        dataset = load_dataset(data_dir / file)
        runner.bind_data(model.input_array(dataset), dataset.y, batch_size=37)
        np.testing.assert_allclose(runner.logits(), torch_logits(network, fed), atol=1e-5)


@pytest.mark.parametrize("kind", ["scripted", "program"])
def test_weights_fed_by_the_runner_reach_every_product(data_dir: Path, kind: str) -> None:
    """All crossbar weights x1.1 give the logits of the torch model with its Linear weights
    x1.1."""
    check_scaled_weights_reach_every_product(data_dir / TORCH_FILES[kind], data_dir / "all.npz")


def test_numbers_do_not_depend_on_batch_size_and_equal_the_onnx_export(data_dir: Path) -> None:
    """Layers keyed by index in execution order and draws in the canonical layout: the same
    per-sample accuracies for the scripted module (in this process or 2 workers), the program
    and the ONNX export (with --batch-samples)."""
    data = data_dir / "all.npz"
    runs = [
        audit(data_dir / "encoder.onnx", data, sigmas=[0.3], samples=4, batch_samples=2),
        *(
            audit(data_dir / TORCH_FILES[kind], data, sigmas=[0.3], samples=4, batch_size=size)
            for kind in ("scripted", "program")
            for size in (160, 17)
        ),
        audit(data_dir / TORCH_FILES["scripted"], data, sigmas=[0.3], samples=4, workers=2),
    ]
    assert np.std(runs[0].results[0].accuracies) > 0
    for run in runs[1:]:
        assert run.warnings == []
        np.testing.assert_array_equal(run.results[0].accuracies, runs[0].results[0].accuracies)


@pytest.mark.parametrize("kind", ["scripted", "program"])
def test_same_per_sample_accuracies_as_onnx_at_sigma_0_2(data_dir: Path, kind: str) -> None:
    onnx_run = audit(data_dir / "encoder.onnx", data_dir / "all.npz", sigmas=[0.2], samples=6)
    run = audit(data_dir / TORCH_FILES[kind], data_dir / "all.npz", sigmas=[0.2], samples=6)
    assert run.clean_accuracy == onnx_run.clean_accuracy == 1.0
    np.testing.assert_array_equal(run.results[0].accuracies, onnx_run.results[0].accuracies)


def test_the_analog_pipeline_runs_the_torch_formats_as_the_onnx_file(data_dir: Path) -> None:
    """The in-memory ONNX export takes the module's own arguments and is packed again: the same
    draws, read noise and tiles as the ONNX file of the same network."""
    pipeline = ForwardPipeline(read_noise=0.1, dac_bits=6, adc_bits=6, tile_size=(8, 8))
    kwargs = {"sigmas": [0.1], "samples": 3, "pipeline": pipeline}
    expected = audit(data_dir / "encoder.onnx", data_dir / "all.npz", **kwargs)
    assert np.std(expected.results[0].accuracies) > 0
    for kind in ("scripted", "program"):
        run = audit(data_dir / TORCH_FILES[kind], data_dir / "all.npz", **kwargs)
        assert run.clean_accuracy == expected.clean_accuracy
        np.testing.assert_array_equal(run.results[0].accuracies, expected.results[0].accuracies)


@pytest.mark.parametrize("kind", ["scripted", "program"])
def test_harden_writes_the_module_back_with_its_inputs(
    data_dir: Path, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / f"hardened{Path(TORCH_FILES[kind]).suffix}"
    source, written = harden_once(data_dir / TORCH_FILES[kind], data_dir / "all.npz", out)
    assert written.data_inputs == source.data_inputs
    trained = written.clean_weights()
    # the file takes the three tensors itself, as torch runs it: the eager model with its state
    if kind == "scripted":
        module = torch.jit.load(str(out))
    else:
        module = torch.export.load(str(out)).module()
    twin = encoder()
    twin.load_state_dict(module.state_dict())
    for name, value in trained.items():
        np.testing.assert_array_equal(twin.get_parameter(name).detach().numpy(), value)
    data = token_data()
    np.testing.assert_allclose(torch_logits(module, data), torch_logits(twin, data), atol=1e-5)


def test_cli_eval_warns_about_the_defaults(data_dir: Path, run_cli) -> None:
    code, _, err = run_cli(
        "eval",
        data_dir / TORCH_FILES["scripted"],
        "--data",
        data_dir / "ids_only.npz",
        "--sigma",
        "0.1",
        "--samples",
        "2",
    )
    assert code == 0, err
    assert "'attention_mask' has no array" in err and "fed ones" in err
    assert "'token_type_ids' has no array" in err
    assert "0..255" not in err and "/ 255" not in err  # x feeds token ids: no pixel warning
    code, out, err = run_cli("inspect", data_dir / TORCH_FILES["program"])
    assert code == 0 and "attention_mask (N, 10) int64" in out and "packed" in out


class _Lengths(torch.nn.Module):
    """x (N, 4) through a Linear, plus a per-sample length of another rank."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, lengths):
        return self.fc(x) + lengths[:, None].to(x.dtype)


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, scale: float):
        return self.fc(x) * scale


def test_inputs_of_different_ranks_and_the_refusals(tmp_path: Path, run_cli) -> None:
    """x (N, 4) beside one length per sample: torch.export declares both shapes, so they pack
    flat and the logits are the module's own; TorchScript declares none: one line."""
    torch.manual_seed(1)
    module = _Lengths().eval()
    example = (torch.ones(2, 4), torch.ones(2, dtype=torch.int64))
    program = load_model(_save_program(module, tmp_path / "ranks.pt2", example))
    assert program.input.shape == (None, 5)
    rng = np.random.default_rng(0)
    x, lengths = rng.normal(size=(6, 4)).astype(np.float32), rng.integers(0, 9, 6)
    np.savez(tmp_path / "d.npz", x=x, lengths=lengths, y=np.zeros(6, np.int64))
    dataset = load_dataset(tmp_path / "d.npz")
    runner = program.runner(program.layers, device="cpu")
    runner.bind_data(program.input_array(dataset), dataset.y, batch_size=4)
    with torch.no_grad():
        expected = module(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(runner.logits(), expected, atol=1e-6)
    script = _save_script(torch.jit.script(module), tmp_path / "ranks.pt")
    code, _, err = run_cli("eval", script, "--data", tmp_path / "d.npz", "--sigma", "0.1")
    assert code == 2 and "differ in shape" in err and len(err.strip().splitlines()) == 1
    assert "torch.export or ONNX" in err
    scaled = _save_script(torch.jit.script(_Scaled()), tmp_path / "scaled.pt")
    with pytest.raises(UserError, match="scale of type float"):
        load_model(scaled)


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_model_exported_for_one_batch_size_keeps_it(tmp_path: Path, network, suffix: str) -> None:
    """The packed input keeps the fixed batch: the runner pads the last batch, as for one
    input, and the logits of 5 samples (batches of 2) are the model's own."""
    path = tmp_path / f"fixed{suffix}"
    if suffix == ".pt2":
        _save_program(network, path, _examples(), dynamic=False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network, _examples(), str(path), dynamo=False, input_names=list(INPUTS)
            )
    model = load_model(path)
    assert model.input.shape == (2, 3, 10)
    data = {name: array[:5] for name, array in token_data().items()}
    np.savez(tmp_path / "five.npz", x=data["input_ids"], y=np.zeros(5, np.int64), **data)
    dataset = load_dataset(tmp_path / "five.npz")
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(model.input_array(dataset), dataset.y, batch_size=64)
    np.testing.assert_allclose(runner.logits(), torch_logits(network, data), atol=1e-5)
