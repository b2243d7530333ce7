"""``ftaudit harden --method bayesft``: dropout placement, export, objective, search and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import export_onnx, make_blobs, tiny_mlp, train

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
optuna = pytest.importorskip("optuna")

from ftaudit.errors import UserError  # noqa: E402
from ftaudit.harden.api import harden  # noqa: E402
from ftaudit.harden.methods import HARDEN_METHODS  # noqa: E402
from ftaudit.harden.methods.bayesft import bayesft_objective, insert_dropout  # noqa: E402
from ftaudit.harden.trainable import make_trainable  # noqa: E402
from ftaudit.harden.training import TrainingData  # noqa: E402
from ftaudit.models import load_model  # noqa: E402
from ftaudit.montecarlo import draws_for_sample  # noqa: E402
from ftaudit.noise import get_noise_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MLP of test_harden (briefly trained, so dropout has room to help) and 2,000 images."""
    d = tmp_path_factory.mktemp("bayesft")
    x, y = make_blobs(2000, seed=3)
    np.savez(d / "train.npz", x=x, y=y)
    export_onnx(train(tiny_mlp(), x[:200], y[:200], steps=60), d / "mlp.onnx")
    return {"dir": d, "onnx": d / "mlp.onnx", "data": d / "train.npz"}


#: short runs: the report's Monte Carlo is not what these tests are about
QUICK = {"lr": 3e-3, "batch_size": 64, "eval_samples": 10}


def _dropout_nodes(module) -> list:
    return [n for n in module.graph.nodes if n.op == "call_module" and "dropout" in n.target]


def _onnx_output(module, node) -> str:
    return module.get_submodule(node.target).onnx_mapping.outputs[0]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("mlp_onnx", ["/1/Gemm_output_0"]),  # Gemm, Gemm
        ("convnet_onnx", ["/0/Conv_output_0", "/3/Gemm_output_0"]),  # Conv, Gemm, Gemm
        ("mlp_matmul_onnx", ["h1"]),  # MatMul + Add(bias): after the Add
    ],
)
def test_one_dropout_after_each_crossbar_layer_but_the_last(request, fixture, expected) -> None:
    source = load_model(request.getfixturevalue(fixture))
    trainable = make_trainable(source)
    module = trainable.module
    x = torch.rand(5, 1, 8, 8)
    clean_logits = module(x).detach()

    dropouts = insert_dropout(trainable)
    assert list(dropouts) == [layer.name for layer in source.layers[:-1]]
    nodes = _dropout_nodes(module)
    assert [_onnx_output(module, n.args[0]) for n in nodes] == expected
    for node in nodes:
        assert isinstance(module.get_submodule(node.target), torch.nn.Dropout)
        assert len(node.args[0].users) == 1  # every former user now reads the dropout
        assert all(node in user.args for user in node.users)
    # eval mode: no dropout at any rate; train mode with a rate: a different function
    for dropout in dropouts.values():
        dropout.p = 0.5
        dropout.generator = torch.Generator().manual_seed(0)
    module.eval()
    assert torch.equal(module(x), clean_logits)
    module.train()
    assert not torch.allclose(module(x), clean_logits)


def test_objective_is_minus_the_monte_carlo_mean_cross_entropy(trained_mlp, mlp_onnx) -> None:
    """Recomputed on the torch model with the same draws and w * exp(sigma * z) by hand."""
    source = load_model(mlp_onnx)
    trainable = make_trainable(source)
    for dropout in insert_dropout(trainable).values():
        dropout.p = 0.5  # must be off: the objective runs in eval mode
    trainable.module.train()
    x, y = make_blobs(150, seed=11)
    data = TrainingData(x.astype(np.float32) / 255, y)
    sigma, samples, seed = 0.7, 6, 1234
    before = trainable.crossbar_arrays()

    u = bayesft_objective(
        trainable,
        data,
        layers=source.layers,
        noise=get_noise_model("lognormal"),
        sigma=sigma,
        samples=samples,
        seed=seed,
        batch_size=64,  # several batches: the mean is over all of the data
    )

    linears = {"1.weight": trained_mlp[1], "3.weight": trained_mlp[3]}
    clean = {name: m.weight.detach().clone() for name, m in linears.items()}
    xt, yt = torch.from_numpy(data.x), torch.from_numpy(y)
    losses = []
    with torch.no_grad():
        for i in range(samples):
            draws = draws_for_sample(seed, i, source.layers, 1)
            for layer, z in zip(source.layers, draws, strict=True):
                perturbed = clean[layer.name] * torch.exp(sigma * torch.from_numpy(z[0]))
                linears[layer.name].weight.copy_(perturbed)
            losses.append(float(torch.nn.functional.cross_entropy(trained_mlp(xt), yt)))
        for name, m in linears.items():
            m.weight.copy_(clean[name])
    assert u == pytest.approx(-np.mean(losses), rel=1e-5)
    assert len(set(losses)) == samples  # every sample drew its own perturbation
    after = trainable.crossbar_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # clean weights restored
    assert trainable.module.training  # and the mode


def test_weights_train_on_the_loss_under_the_evaluation_noise(setup, monkeypatch) -> None:
    """Algorithm 1 line 6: theta follows the gradient of u, the loss under the drift at sigma
    (not the clean loss), with --train-draws draws per step and the chain rule to the clean
    weights."""
    import ftaudit.harden.methods.base as methods  # where HardenContext.train_epoch looks it up

    calls = []
    real = methods.train_epoch

    def recording(*args, **kwargs):
        calls.append((kwargs["noise"], kwargs["draws"], kwargs["chain_rule"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(methods, "train_epoch", recording)
    report = harden(
        setup["onnx"],
        setup["data"],
        output=setup["dir"] / "noisy.onnx",
        method="bayesft",
        sigma=0.8,
        trials=2,
        epochs_per_trial=2,
        train_draws=3,
        eval_sigmas=[0.8],
        **QUICK,
    )
    assert len(calls) == 4
    for noise, draws, chain_rule in calls:
        assert noise is not None and noise.sigma == 0.8 and noise.threshold is None
        assert noise.model.name == "lognormal" and draws == 3 and chain_rule
    assert report.details["train_draws"] == 3


def test_train_epoch_averages_the_gradient_over_keyed_draws(mlp_onnx) -> None:
    """One SGD step (lr 1, one batch) with draws=2 moves the weights by minus the mean of the
    gradients at draw 0 and draw 1, recomputed by hand from ``perturbed_arrays``."""
    from ftaudit.harden.training import TrainingNoise, perturbed_arrays, train_epoch

    source = load_model(mlp_onnx)
    x, y = make_blobs(32, seed=5)
    data = TrainingData(x.astype(np.float32) / 255, y)
    noise = TrainingNoise(get_noise_model("lognormal"), 0.6)

    def grads_at(draw: int) -> dict[str, np.ndarray]:
        trainable = make_trainable(source)
        clean = trainable.crossbar_arrays()
        trainable.set_crossbar_arrays(
            perturbed_arrays(clean, source.layers, noise, seed=7, epoch=0, step=0, draw=draw)
        )
        trainable.module.train()
        loss = torch.nn.functional.cross_entropy(
            trainable.module(torch.from_numpy(data.x)), torch.from_numpy(y)
        )
        loss.backward()
        return {n: p.grad.numpy().copy() for n, p in trainable.module.named_parameters()}

    g0, g1 = grads_at(0), grads_at(1)
    assert any(not np.allclose(g0[n], g1[n]) for n in g0)  # two different draws
    trainable = make_trainable(source)
    start = {n: p.detach().numpy().copy() for n, p in trainable.module.named_parameters()}
    optimizer = torch.optim.SGD(trainable.module.parameters(), lr=1.0)
    train_epoch(
        trainable,
        optimizer,
        data,
        epoch=0,
        seed=7,
        batch_size=64,
        layers=source.layers,
        noise=noise,
        draws=2,
    )
    for n, p in trainable.module.named_parameters():
        expected = start[n] - (g0[n] + g1[n]) / 2
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_chain_rule_step_is_the_gradient_of_the_drifted_loss_wrt_clean_weights(mlp_onnx) -> None:
    """BayesFT line 6 differentiates u(theta) = E L(theta * exp(sigma z)) with respect to the
    clean theta: with chain_rule, one SGD step (lr 1) with draws=2 moves the weights by minus
    the mean over the two draws of autograd's gradient of L(w * m) at w, m = exp(sigma z)
    recovered from ``perturbed_arrays``. The straight-through step (dL/dw') differs."""
    from torch.func import functional_call

    from ftaudit.harden.training import TrainingNoise, perturbed_arrays, train_epoch

    source = load_model(mlp_onnx)
    x, y = make_blobs(32, seed=5)
    data = TrainingData(x.astype(np.float32) / 255, y)
    noise = TrainingNoise(get_noise_model("lognormal"), 0.6)

    def grads_at(draw: int) -> dict[str, np.ndarray]:
        trainable = make_trainable(source)
        names = {id(p): n for n, p in trainable.module.named_parameters()}
        clean = {n: p.detach().clone() for n, p in trainable.module.named_parameters()}
        trainable.set_crossbar_arrays(
            perturbed_arrays(
                trainable.crossbar_arrays(),
                source.layers,
                noise,
                seed=7,
                epoch=0,
                step=0,
                draw=draw,
            )
        )
        multipliers = {
            names[id(t)]: t.detach() / clean[names[id(t)]] for t in trainable.crossbar.values()
        }
        leaves = {n: v.clone().requires_grad_(True) for n, v in clean.items()}
        params = {n: leaves[n] * multipliers[n] if n in multipliers else leaves[n] for n in leaves}
        trainable.module.train()
        logits = functional_call(trainable.module, params, (torch.from_numpy(data.x),))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
        return {n: leaf.grad.numpy().copy() for n, leaf in leaves.items()}

    g0, g1 = grads_at(0), grads_at(1)

    def step(chain_rule: bool) -> dict[str, np.ndarray]:
        trainable = make_trainable(source)
        optimizer = torch.optim.SGD(trainable.module.parameters(), lr=1.0)
        train_epoch(
            trainable,
            optimizer,
            data,
            epoch=0,
            seed=7,
            batch_size=64,
            layers=source.layers,
            noise=noise,
            draws=2,
            chain_rule=chain_rule,
        )
        return {n: p.detach().numpy().copy() for n, p in trainable.module.named_parameters()}

    trainable = make_trainable(source)
    start = {n: p.detach().numpy().copy() for n, p in trainable.module.named_parameters()}
    exact, straight = step(True), step(False)
    for n in start:
        expected = start[n] - (g0[n] + g1[n]) / 2
        np.testing.assert_allclose(exact[n], expected, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(straight[n], exact[n], rtol=1e-3) for n in start)


def test_rescoring_earlier_rates_at_the_same_weights_gives_one_value(mlp_onnx) -> None:
    """Why Algorithm 1 line 8 is not run: u is measured in eval mode, where dropout is the
    identity, so every earlier rate scores the same at the current weights (docs/methods.md)."""
    source = load_model(mlp_onnx)
    trainable = make_trainable(source)
    dropouts = insert_dropout(trainable)
    x, y = make_blobs(100, seed=11)
    data = TrainingData(x.astype(np.float32) / 255, y)
    scores = set()
    for rate in (0.0, 0.3, 0.9):
        for dropout in dropouts.values():
            dropout.p = rate
        scores.add(
            bayesft_objective(
                trainable,
                data,
                layers=source.layers,
                noise=get_noise_model("lognormal"),
                sigma=0.7,
                samples=4,
                seed=3,
            )
        )
    assert len(scores) == 1


def test_summary_names_the_best_trial_as_the_progress_lines_do(setup) -> None:
    """The note's trial number is the 1-based one of the progress lines (trial i/N)."""
    report = harden(
        setup["onnx"],
        setup["data"],
        output=setup["dir"] / "numbering.onnx",
        method="bayesft",
        sigma=1.0,
        trials=3,
        epochs_per_trial=1,
        eval_sigmas=[1.0],
        **QUICK,
    )
    best = max(report.history, key=lambda h: h["objective"])
    note = next(n for n in report.notes if n.startswith("BayesFT chose"))
    assert f"(trial {best['index'] + 1}/3," in note
    assert report.details["best_trial"] == best["trial"]


def test_export_has_no_dropout_and_records_the_rates(convnet_onnx, blobs_npz, tmp_path) -> None:
    out = tmp_path / "hard.onnx"
    report = harden(
        convnet_onnx, blobs_npz, output=out, method="bayesft", sigma=0.5, trials=2, **QUICK
    )
    original, hardened = onnx.load(str(convnet_onnx)), onnx.load(str(out))
    assert [(n.op_type, list(n.input), list(n.output)) for n in original.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in hardened.graph.node
    ]
    assert "Dropout" not in {n.op_type for n in hardened.graph.node}
    meta = json.loads({p.key: p.value for p in hardened.metadata_props}["ftaudit.hardening"])
    assert meta["method"] == "bayesft"
    assert meta["dropout_rates"] == report.details["dropout_rates"]
    assert list(meta["dropout_rates"]) == ["0.weight", "3.weight"]
    assert "search" not in meta  # the trial table is in the report, not in the model
    table = report.details["search"]["trials"]
    assert [row["number"] for row in table] == [0, 1]
    assert report.details["best_objective"] == max(row["objective"] for row in table)
    assert any("BayesFT chose dropout rates" in note for note in report.notes)


def test_study_resume_continues_the_same_study(setup, tmp_path) -> None:
    study_path = tmp_path / "search.db"
    kw = {"method": "bayesft", "sigma": 0.8, "epochs_per_trial": 1, "study": study_path, **QUICK}
    first = harden(setup["onnx"], setup["data"], output=tmp_path / "a.onnx", trials=3, **kw)
    name = first.details["search"]["study"]
    storage = f"sqlite:///{study_path}"

    def rows() -> list[tuple[int, dict, float | None]]:
        study = optuna.load_study(study_name=name, storage=storage)
        return [(t.number, t.params, t.value) for t in study.trials]

    three = rows()
    assert len(three) == 3 and all(value is not None for _, _, value in three)
    second = harden(setup["onnx"], setup["data"], output=tmp_path / "b.onnx", trials=5, **kw)
    five = rows()
    assert len(five) == 5 and five[:3] == three
    assert [h["trial"] for h in second.history] == [3, 4]  # only the new trials ran
    assert any("continues from the input model's weights" in n for n in second.notes)
    assert optuna.get_all_study_names(storage) == [name]

    with pytest.raises(UserError, match="nothing to do"):
        harden(setup["onnx"], setup["data"], output=tmp_path / "c.onnx", trials=5, **kw)


def test_checkpoint_resume_equals_uninterrupted(setup, tmp_path) -> None:
    """Killed after trial 1 and resumed: same trials, same exported weights (in-memory study)."""
    kw = {"method": "bayesft", "sigma": 0.8, "trials": 4, **QUICK}
    whole = harden(setup["onnx"], setup["data"], output=tmp_path / "whole.onnx", **kw)

    def killed_after_trial_1(epoch: int, info: dict) -> None:
        if info["trial"] == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(KeyboardInterrupt):
        harden(
            setup["onnx"],
            setup["data"],
            output=tmp_path / "resumed.onnx",
            checkpoint_dir=ckpt,
            on_epoch=killed_after_trial_1,
            **kw,
        )
    resumed = harden(
        setup["onnx"],
        setup["data"],
        output=tmp_path / "resumed.onnx",
        checkpoint_dir=ckpt,
        resume=True,
        **kw,
    )
    assert resumed.details["search"]["trials"] == whole.details["search"]["trials"]
    assert resumed.details["dropout_rates"] == whole.details["dropout_rates"]
    a, b = onnx.load(str(tmp_path / "whole.onnx")), onnx.load(str(tmp_path / "resumed.onnx"))
    assert all(
        np.array_equal(onnx.numpy_helper.to_array(s), onnx.numpy_helper.to_array(t))
        for s, t in zip(a.graph.initializer, b.graph.initializer, strict=True)
    )


def test_cli_bayesft_writes_model_and_report(setup, run_cli, tmp_path) -> None:
    out, report = tmp_path / "h.onnx", tmp_path / "r.json"
    args = ["--method", "bayesft", "--trials", "2", "--objective-samples", "5"]
    code, stdout, err = run_cli(
        "harden", setup["onnx"], "--data", setup["data"], "--sigma", "0.5", "-o", out,
        "--eval-samples", "10", "--report", report, "--study", tmp_path / "s.db", *args,
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["method"] == "bayesft" and set(data["details"]["dropout_rates"]) == {"1.weight"}
    assert data["settings"]["options"] == {
        "max_dropout": 0.5,
        "epochs_per_trial": 1,
        "objective_samples": 5,
        "train_draws": 1,
    }
    assert len(data["details"]["search"]["trials"]) == 2 and len(data["history"]) == 2
    assert "BayesFT chose dropout rates" in err and "mean before" in stdout
    assert (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-dropout", "1.5"], "--max-dropout must lie in [0, 1]"),
        (["--train-draws", "0"], "--train-draws must be at least 1"),
        (["--max-dropout", "-0.1"], "--max-dropout must lie in [0, 1]"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--epochs-per-trial", "0"], "--epochs-per-trial must be at least 1"),
        (["--objective-samples", "0"], "--objective-samples must be at least 1"),
        (["--study", "/nonexistent/dir/s.db"], "does not exist"),
        (["--study", "{tmp}"], "it is a folder"),
        (["--study", "{tmp}/not-sqlite.db"], "not an SQLite database"),
        (["--study", "{tmp}/s.db", "--method", "trice"], "only by --method bayesft"),
    ],
)
def test_cli_bayesft_bad_options(setup, run_cli, tmp_path, extra, message) -> None:
    (tmp_path / "not-sqlite.db").write_text("some notes\n")
    out = tmp_path / "h.onnx"
    extra = [e.format(tmp=tmp_path) for e in extra]
    code, _, err = run_cli(
        "harden", setup["onnx"], "--data", setup["data"], "--sigma", "0.5", "-o", out,
        "--method", "bayesft", *extra,
    )  # fmt: skip
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-sqlite.db"]  # nothing written
    assert (tmp_path / "not-sqlite.db").read_text() == "some notes\n"


def test_bayesft_trains_torchscript_as_its_onnx_export(
    convnet_ts, convnet_onnx, blobs_npz, tmp_path
):
    """A TorchScript model trains as its in-memory ONNX export (torch.fx edits its onnx2torch
    module) and is written back as TorchScript: the same dropout rates and weights as BayesFT
    on the ONNX file of the same network."""
    from ftaudit.harden.api import harden
    from ftaudit.models import load_model

    runs = {}
    for source, out in ((convnet_ts, tmp_path / "h.pt"), (convnet_onnx, tmp_path / "h.onnx")):
        report = harden(
            source, blobs_npz, output=out, method="bayesft", sigma=0.5, trials=2, epochs=1,
            eval_samples=4, eval_sigmas=[0.5],
        )  # fmt: skip
        runs[out.suffix] = (load_model(out), report.details)
    (script, script_details), (onnx, onnx_details) = runs[".pt"], runs[".onnx"]
    assert script.format == "torchscript"
    assert script_details["dropout_rates"] == pytest.approx(onnx_details["dropout_rates"])
    script_weights, onnx_weights = script.crossbar_weights(), onnx.crossbar_weights()
    for a, b in zip(script.layers, onnx.layers, strict=True):
        got = script_weights[a.name]
        want = onnx_weights[b.name].T if a.transposed != b.transposed else onnx_weights[b.name]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_registered_with_a_docstring() -> None:
    assert HARDEN_METHODS["bayesft"].__doc__.strip().startswith("BayesFT (Algorithm 1)")


def _reference_losses(trainable, data, layers, noise, sigma, seed, samples, batch_size):
    """The objective's per-sample losses by the loop it had before it ran on the engine
    (harden/objective.ObjectiveEvaluator up to 0.x): draws, perturb, sum of batch losses / n."""
    from ftaudit.montecarlo import Crossbar, draws_for_sample

    clean = trainable.crossbar_arrays()
    crossbar = Crossbar.prepare(layers, clean, noise)
    xt = torch.from_numpy(np.ascontiguousarray(data.x))
    yt = torch.from_numpy(data.y)
    batches = [
        (xt[s : s + batch_size], yt[s : s + batch_size]) for s in range(0, len(data), batch_size)
    ]
    losses = []
    module = trainable.module
    module.eval()
    try:
        for i in range(samples):
            draws = draws_for_sample(seed, i, layers, noise.draws_per_weight)
            trainable.set_crossbar_arrays(
                {
                    layer.name: state.perturb(
                        layer.to_native(z), sigma, np.empty(layer.shape, np.float32)
                    )
                    for layer, state, z in zip(layers, crossbar.states, draws, strict=True)
                }
            )
            total = 0.0
            with torch.no_grad():
                for xb, yb in batches:
                    total += float(
                        torch.nn.functional.cross_entropy(module(xb).float(), yb, reduction="sum")
                    )
            losses.append(total / len(data))
    finally:
        trainable.set_crossbar_arrays(clean)
    return np.array(losses)


@pytest.mark.parametrize("noise_name", ["lognormal", "rram"])
def test_objective_on_the_engine_loop_is_bit_for_bit_the_old_loop(mlp_onnx, noise_name) -> None:
    """BayesFT's objective runs through montecarlo.run_monte_carlo with the loss metric: the
    same float, to the last bit, as its own loop gave (here and from a worker's evaluator)."""
    from ftaudit.harden.objective import objective_evaluator

    source = load_model(mlp_onnx)
    trainable = make_trainable(source)
    insert_dropout(trainable)
    x, y = make_blobs(100, seed=5)
    data = TrainingData(x.astype(np.float32) / 255, y.astype(np.int64))
    noise = get_noise_model(noise_name)
    kw = {"layers": source.layers, "noise": noise, "seed": 77, "batch_size": 32}
    reference = _reference_losses(trainable, data, sigma=0.6, samples=7, **kw)
    assert len(set(reference.tolist())) == 7
    u = bayesft_objective(trainable, data, sigma=0.6, samples=7, **kw)
    assert u == -float(np.mean(reference))
    evaluator = objective_evaluator(trainable, data, sigma=0.6, **kw)
    chunks = np.concatenate([evaluator.evaluate(0, 3, [0])[0], evaluator.evaluate(3, 7, [0])[0]])
    evaluator.close()
    assert np.array_equal(chunks, reference)
    trainable.set_crossbar_arrays(trainable.crossbar_arrays())  # the engine left no trace
    zero = bayesft_objective(trainable, data, sigma=0.0, samples=7, **kw)
    assert zero == -float(_reference_losses(trainable, data, sigma=0.0, samples=1, **kw)[0])
