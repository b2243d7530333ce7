"""No crossbar weight of a TorchScript or torch.export model is left out silently.

Tiny sequence models (built here, random init, labelled with their own argmax) in three files
each: torch.jit.script, torch.jit.trace and torch.export. Every one must list the recurrent
(LSTM, GRU), attention (MultiheadAttention in a TransformerEncoderLayer, both attention paths),
Bilinear and bare-parameter (x @ W, x @ V.t(), F.linear, einsum) weights the module holds, flip
each one's sign and see the logits move, list a parameter read through a reshape as untraced
with how to fix it, and leave lookups, added position parameters and gates alone. Expected
names and shapes come from the torch modules' own state dicts, never from ftaudit.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from conftest import export_program  # noqa: E402  (after the importorskip)
from test_cli import assert_one_line_error  # noqa: E402

pytestmark = pytest.mark.torch

FORMATS = ("script", "trace", "export")


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out.mean(1))


class GRUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out.mean(1))


class EncoderNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


class AttentionNet(nn.Module):
    """MultiheadAttention with the sequence first and the attention weights asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = x.transpose(0, 1)
        y, _ = self.attn(t, t, t, need_weights=True)
        return self.head(y.mean(0))


class MatMulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        return x.mean(1) @ self.W


class EinsumNet(nn.Module):
    """One weight stored (out, in), one (in, out)."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(6, 5) * 0.5)
        self.B = nn.Parameter(torch.randn(6, 3) * 0.5)

    def forward(self, x):
        h = torch.tanh(torch.einsum("bti,oi->bto", x, self.A))
        return torch.einsum("bto,oc->btc", h, self.B).mean(1)


class LinearNet(nn.Module):
    """Bare parameters read by F.linear and through a transpose, x @ V.t()."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(4, 5))
        self.V = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return torch.tanh(nn.functional.linear(x.mean(1), self.W)) @ self.V.t()


class BilinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bilinear = nn.Bilinear(5, 5, 3)

    def forward(self, x):
        return self.bilinear(x[:, 0], x[:, -1])


class EmbeddingNet(nn.Module):
    """A lookup table and an added position parameter: neither is a product."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.position = nn.Parameter(torch.randn(4, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids) + self.position).mean(1))


class ReshapedNet(nn.Module):
    """A parameter read through a reshape: not mappable, so listed; a gate multiplying the
    activations before a product is no weight."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(3, 5))
        self.gate = nn.Parameter(torch.rand(1, 3) + 0.5)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(self.gate * (x.mean(1) @ self.W.reshape(5, 3)))


#: model -> (class, its crossbar weights: name -> (op, transposed), in execution order)
MODELS: dict[str, tuple[type, dict[str, tuple[str, bool]]]] = {
    "lstm": (
        LSTMNet,
        {
            **{
                f"rnn.weight_{kind}_l{layer}{rev}": ("LSTM", False)
                for layer in (0, 1)
                for rev in ("", "_reverse")
                for kind in ("ih", "hh")
            },
            "head.weight": ("Linear", False),
        },
    ),
    "gru": (
        GRUNet,
        {
            "rnn.weight_ih_l0": ("GRU", False),
            "rnn.weight_hh_l0": ("GRU", False),
            "head.weight": ("Linear", False),
        },
    ),
    "encoder": (
        EncoderNet,
        {
            "enc.self_attn.in_proj_weight": (None, False),  # MultiheadAttention or Linear
            "enc.self_attn.out_proj.weight": ("Linear", False),
            "enc.linear1.weight": ("Linear", False),
            "enc.linear2.weight": ("Linear", False),
            "head.weight": ("Linear", False),
        },
    ),
    "attention": (
        AttentionNet,
        {
            "attn.in_proj_weight": (None, False),
            "attn.out_proj.weight": ("Linear", False),
            "head.weight": ("Linear", False),
        },
    ),
    "matmul": (MatMulNet, {"W": ("MatMul", True)}),
    "einsum": (EinsumNet, {"A": ("Einsum", False), "B": ("Einsum", True)}),
    "linear": (LinearNet, {"W": ("Linear", False), "V": ("MatMul", False)}),
    "bilinear": (BilinearNet, {"bilinear.weight": ("Bilinear", False)}),
    "embedding": (EmbeddingNet, {"head.weight": ("Linear", False)}),
    "reshaped": (ReshapedNet, {"head.weight": ("Linear", False)}),
}
FEATURES = {
    name: 5 for name in ("lstm", "gru", "matmul", "einsum", "linear", "bilinear", "reshaped")
}


def _example(name: str, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    if name == "embedding":
        return torch.randint(0, 10, (n, 4), generator=generator)
    return torch.randn(n, 4, FEATURES.get(name, 8), generator=generator)


class Files:
    """Each model built once (seeded), its data labelled by its own argmax, saved on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: dict[str, nn.Module] = {}

    def module(self, name: str) -> nn.Module:
        if name not in self.modules:
            torch.manual_seed(3)
            self.modules[name] = MODELS[name][0]().eval()
        return self.modules[name]

    def data(self, name: str) -> Path:
        path = self.root / f"{name}.npz"
        if not path.exists():
            x = _example(name, 32)
            with torch.no_grad():
                y = self.module(name)(x).argmax(1)
            np.savez(path, x=x.numpy(), y=y.numpy())
        return path

    def file(self, name: str, fmt: str) -> Path:
        path = self.root / f"{name}.{fmt}.{'pt2' if fmt == 'export' else 'pt'}"
        if path.exists():
            return path
        module, example = self.module(name), _example(name, 2)
        if fmt == "export":
            return export_program(module, path, example)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "script":
                scripted = torch.jit.script(module)
            else:
                scripted = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(scripted, str(path))
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    torch.set_num_threads(1)
    return Files(tmp_path_factory.mktemp("torch_coverage"))


CELLS = [(name, fmt) for name in MODELS for fmt in FORMATS]


@pytest.mark.parametrize(("name", "fmt"), CELLS)
def test_every_crossbar_weight_is_a_layer(files: Files, name: str, fmt: str) -> None:
    from ftaudit.models import load_model

    model = load_model(files.file(name, fmt))
    expected = MODELS[name][1]
    state = files.module(name).state_dict()
    assert [layer.name for layer in model.layers] == list(expected)
    for layer in model.layers:
        op, transposed = expected[layer.name]
        assert layer.shape == tuple(state[layer.name].shape)
        assert layer.transposed == transposed, layer.name
        if op is not None:
            assert layer.op == op, layer.name
        else:
            assert layer.op in ("MultiheadAttention", "Linear")
    if name == "reshaped":
        (entry,) = model.untraced
        assert "parameter W is read by" in entry.reason and "through reshape" in entry.reason
        assert "nn.Linear" in entry.reason.split("; ")[-1]
    elif name == "embedding":  # the table is looked up, not multiplied: listed, never silent
        (entry,) = model.untraced
        assert "embed.weight" in entry.reason and "looked up by index" in entry.reason
    else:
        assert model.untraced == []


@pytest.mark.parametrize(("name", "fmt"), CELLS)
def test_flipping_each_layer_moves_the_logits(files: Files, name: str, fmt: str) -> None:
    """The runner's in-place overwrite reaches every kernel (the LSTM's flat weights, the
    attention fast path): negating any one layer's weight changes the output."""
    from ftaudit.models import load_model

    model = load_model(files.file(name, fmt))
    data = np.load(files.data(name))
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(model.fit_input(data["x"]), data["y"], batch_size=16)
    clean_weights = model.clean_weights()
    clean = runner.logits()
    assert (clean.argmax(1) == data["y"]).all()
    for layer in model.layers:
        changed = dict(clean_weights)
        changed[layer.name] = -clean_weights[layer.name]
        runner.set_weights(changed)
        assert not np.allclose(runner.logits(), clean, atol=1e-6), layer.name


@pytest.mark.parametrize(("name", "fmt"), CELLS)
def test_eval_runs(files: Files, name: str, fmt: str, run_cli, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, _, err = run_cli(
        "eval", files.file(name, fmt), "--data", files.data(name), "--sigma", "0.2",
        "--samples", "3", "--seed", "1", "--json", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out.read_text())
    assert [la["name"] for la in report["layers"]] == list(MODELS[name][1])
    assert report["clean_accuracy"] == 1.0
    if name == "reshaped":
        assert "parameter W is read by" in err and "is not perturbed" in err
    elif name == "embedding":  # the table is named as looked up, never left out silently
        (line,) = [w for w in err.splitlines() if "warning" in w]
        assert "1 embedding table(s) not perturbed (embed.weight): looked up by index" in line
    else:
        assert "warning" not in err


@pytest.mark.parametrize("name", ["lstm", "encoder", "einsum", "bilinear"])
def test_a_decomposed_program_maps_or_lists_every_weight(files: Files, name: str, tmp_path):
    """run_decompositions() turns the recurrent kernels, attention, einsum and bilinear into
    views and batched products: every 2-D parameter is still a layer or listed, with the fix."""
    from ftaudit.models import load_model

    module = files.module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (_example(name, 2),)).run_decompositions()
        torch.export.save(program, str(tmp_path / "decomposed.pt2"))
    model = load_model(tmp_path / "decomposed.pt2")
    listed = {re.match(r"parameter (\S+) is read", u.reason).group(1) for u in model.untraced}
    assert listed and all("run_decompositions()" in u.reason for u in model.untraced)
    covered = {layer.name for layer in model.layers} | listed
    assert covered == {n for n, p in module.named_parameters() if p.dim() >= 2}


@pytest.mark.parametrize("fmt", FORMATS)
def test_analog_pipeline_refuses_recurrent_layers(files: Files, fmt: str, run_cli, tmp_path):
    path, data = files.file("lstm", fmt), files.data("lstm")
    out = tmp_path / "report.json"
    code, stdout, err = run_cli(
        "eval", path, "--data", data, "--sigma", "0.2", "--samples", "3", "--dac-bits", "6",
        "--json", out,
    )  # fmt: skip
    line = assert_one_line_error(code, stdout, err)
    assert "rnn.weight_ih_l0 (an LSTM)" in line and "--layers" in line
    assert not out.exists()
    code, _, err = run_cli(
        "eval", path, "--data", data, "--sigma", "0.2", "--samples", "3", "--dac-bits", "6",
        "--layers", "head.weight", "--json", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out.read_text())
    assert [la["name"] for la in report["layers"] if la["selected"]] == ["head.weight"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_harden_trains_the_recurrent_weights_with_noise(files: Files, fmt: str) -> None:
    """harden's trainable copy holds the LSTM's weights, and noise written into them reaches
    the training-mode forward."""
    from ftaudit.harden.trainable import make_trainable
    from ftaudit.models import load_model

    model = load_model(files.file("lstm", fmt))
    trainable = make_trainable(model)
    assert list(trainable.crossbar) == list(MODELS["lstm"][1])
    x = _example("lstm", 4)
    trainable.module.train()
    clean_arrays = trainable.crossbar_arrays()
    clean = trainable.module(x).detach().clone()
    for name in list(MODELS["lstm"][1])[:-1]:
        noisy = dict(clean_arrays)
        noisy[name] = clean_arrays[name] * np.float32(1.5)
        trainable.set_crossbar_arrays(noisy)
        assert not torch.allclose(trainable.module(x), clean), name
        trainable.set_crossbar_arrays(clean_arrays)


def test_harden_cli_on_a_scripted_lstm(files: Files, run_cli, tmp_path: Path) -> None:
    path = files.file("lstm", "script")
    out = tmp_path / "hardened.pt"
    code, _, err = run_cli(
        "harden", path, "--data", files.data("lstm"), "--method", "noise", "--epochs", "1",
        "--sigma", "0.1", "--eval-samples", "3", "--batch-size", "8", "-o", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    before = dict(torch.jit.load(str(path)).named_parameters())
    after = dict(torch.jit.load(str(out)).named_parameters())
    for name in MODELS["lstm"][1]:
        assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize(
    ("equation", "operand", "expected"),
    [
        ("bi,ji->bj", 1, False),  # F.linear: W (out, in)
        ("bi,io->bo", 1, True),  # x @ W: W (in, out)
        ("...i,oi->...o", 1, False),
        ("ij,bj->bi", 0, False),  # the weight first
        ("bi,ij", 1, True),  # implicit output "bj"
        ("bi,bi->b", 1, None),  # elementwise: no output axis of its own
        ("bij,jk->bik", 0, None),  # a 3-D operand
        ("bi,ij->bij", 1, None),  # nothing summed
        ("ii,bi->b", 0, None),  # a diagonal
        ("bi,ij->b", 1, None),  # both axes summed
    ],
)
def test_einsum_weight_layout(equation: str, operand: int, expected: bool | None) -> None:
    from ftaudit.models.torch_products import einsum_weight_layout

    rank = len(equation.split("->")[0].split(",")[operand].replace("...", ""))
    assert einsum_weight_layout(equation, operand, rank) is expected


def test_bilinear_is_refused_by_the_analog_pipeline(files: Files, run_cli) -> None:
    code, out, err = run_cli(
        "eval", files.file("bilinear", "export"), "--data", files.data("bilinear"),
        "--sigma", "0.2", "--samples", "3", "--adc-bits", "6",
    )  # fmt: skip
    assert "bilinear.weight (a bilinear form)" in assert_one_line_error(code, out, err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_through_the_analog_pipeline_is_one_line(files: Files, fmt: str, run_cli):
    """torch's ONNX exporter cannot export a scripted encoder layer, and keeps a traced or
    exported one's attention reshapes at its example's batch size: one line, never a crash."""
    code, out, err = run_cli(
        "eval", files.file("encoder", fmt), "--data", files.data("encoder"),
        "--sigma", "0.2", "--samples", "3", "--adc-bits", "6",
    )  # fmt: skip
    line = assert_one_line_error(code, out, err)
    assert "ONNX" in line


@pytest.mark.parametrize("name", ["lstm", "encoder", "einsum"])
def test_formats_agree_under_the_same_draws(files: Files, name: str) -> None:
    """The same network as a script and as a program: the same layers in the same order, so
    the same keyed draws and the same accuracies."""
    import ftaudit

    reports = [
        ftaudit.audit(
            files.file(name, fmt),
            files.data(name),
            sigmas=[1.0],
            noise="lognormal",
            samples=4,
            seed=2,
        )
        for fmt in ("script", "export")
    ]
    script, program = (r.results[0].accuracies for r in reports)
    np.testing.assert_array_equal(script, program)
    assert script.min() < 1.0  # the noise does move the accuracy
