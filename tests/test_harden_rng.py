"""``harden --rng``: the generator of the validation Monte Carlo (TRICE's KPPs, BayesFT's
objective, the workers' specs) and of the before/after audits, checked against loops drawing
numpy's own SFC64 ziggurat normals; training noise keeps the ziggurat under both."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import export_onnx, keyed_normals, make_blobs, tiny_mlp, train

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from ftaudit.errors import UserError  # noqa: E402
from ftaudit.harden.api import harden  # noqa: E402
from ftaudit.harden.methods.bayesft import bayesft_objective  # noqa: E402
from ftaudit.harden.parallel_eval import HardenWorkers  # noqa: E402
from ftaudit.harden.trainable import make_trainable  # noqa: E402
from ftaudit.harden.training import TrainingData, quantile_eval  # noqa: E402
from ftaudit.models import load_model  # noqa: E402
from ftaudit.noise import get_noise_model  # noqa: E402

#: short TRICE runs whose search updates after both epochs (warm-up 0)
TRICE = {
    "method": "trice",
    "sigma": 1.0,
    "epochs": 2,
    "warmup": 0,
    "search_samples": 30,
    "eval_samples": 12,
    "lr": 3e-3,
    "batch_size": 64,
    "eval_sigmas": [0.0, 0.8],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("harden_rng")
    x, y = make_blobs(600, seed=5)
    np.savez(d / "train.npz", x=x, y=y)
    model = train(tiny_mlp(), x[:200], y[:200], steps=60)
    export_onnx(model, d / "mlp.onnx")
    return {"dir": d, "onnx": d / "mlp.onnx", "data": d / "train.npz", "torch": model}


def _perturbed_outputs(module, layers, x, *, sigma, seed, samples):
    """Logits of each sample's lognormal perturbation w * exp(sigma * z), z from numpy's own
    ziggurat on stream (sample, layer) (tests/conftest.keyed_normals)."""
    linears = {layer.name: module[int(layer.name.split(".")[0])] for layer in layers}
    clean = {name: m.weight.detach().clone() for name, m in linears.items()}
    outputs = []
    with torch.no_grad():
        try:
            for i in range(samples):
                for layer in layers:
                    z = keyed_normals(seed, (i, layer.index), layer.canonical_shape, "ziggurat")
                    perturbed = clean[layer.name] * torch.exp(sigma * torch.from_numpy(z))
                    linears[layer.name].weight.copy_(perturbed)
                outputs.append(module(torch.from_numpy(x)))
        finally:
            for name, m in linears.items():
                m.weight.copy_(clean[name])
    return outputs


def _data(source, n: int = 120, seed: int = 11) -> TrainingData:
    x, y = make_blobs(n, seed=seed)
    return TrainingData(x.astype(np.float32) / 255, y.astype(np.int64))


def test_validation_kpp_under_ziggurat_is_numpys_ziggurat_loop(setup) -> None:
    """TRICE's QuantileEval: sorted accuracies at floor(N k / 100), recomputed by hand."""
    source = load_model(setup["onnx"])
    data = _data(source)
    sigma, seed, samples, k = 0.9, 41, 25, 10.0
    kw = {"layers": source.layers, "noise": get_noise_model("lognormal"), "sigma": sigma}
    got = quantile_eval(
        make_trainable(source), data, samples=samples, k=k, seed=seed, rng="ziggurat", **kw
    )
    outputs = _perturbed_outputs(
        setup["torch"], source.layers, data.x, sigma=sigma, seed=seed, samples=samples
    )
    accuracies = np.sort([float((o.argmax(1).numpy() == data.y).mean()) for o in outputs])
    assert len(set(accuracies.tolist())) > 3  # the draws differ from sample to sample
    assert got == accuracies[math.floor(samples * k / 100)]


def test_bayesft_objective_under_ziggurat_is_numpys_ziggurat_loop(setup) -> None:
    """u = minus the mean over samples of the validation cross-entropy, by hand; fast differs."""
    source = load_model(setup["onnx"])
    data = _data(source)
    sigma, seed, samples = 0.7, 1234, 6
    kw = {"layers": source.layers, "noise": get_noise_model("lognormal"), "sigma": sigma}
    kw.update(samples=samples, seed=seed, batch_size=64)
    u = bayesft_objective(make_trainable(source), data, rng="ziggurat", **kw)
    outputs = _perturbed_outputs(
        setup["torch"], source.layers, data.x, sigma=sigma, seed=seed, samples=samples
    )
    target = torch.from_numpy(data.y)
    losses = [float(torch.nn.functional.cross_entropy(o, target)) for o in outputs]
    assert len(set(losses)) == samples
    assert u == pytest.approx(-np.mean(losses), rel=1e-5)
    assert bayesft_objective(make_trainable(source), data, **kw) != pytest.approx(u, rel=1e-7)


@pytest.mark.parametrize("objective", ["counts", "loss"])
def test_a_worker_spec_draws_with_the_runs_rng(setup, objective: str) -> None:
    """In process: a spec's evaluator gives the local numbers under both generators, and the
    two generators give different numbers (the spec's key follows the generator)."""
    source = load_model(setup["onnx"])
    data = _data(source, n=64, seed=9)
    noise = get_noise_model("lognormal")
    trainable = make_trainable(source)
    workers = HardenWorkers(source, data, layers=source.layers, noise=noise, workers=2, ray=None)
    kw = {"sigmas": [1.2], "seed": 3, "batch_size": 16, "objective": objective}
    try:
        values = {}
        for rng in ("fast", "ziggurat"):
            spec = workers.spec(trainable, rng=rng, **kw)
            assert spec.rng == rng
            values[rng] = spec.build().evaluate(0, 6, [0])[0]
        assert workers.spec(trainable, rng="fast", **kw).key != spec.key
        assert not np.array_equal(values["fast"], values["ziggurat"])
        local = bayesft_objective(
            trainable,
            data,
            layers=source.layers,
            noise=noise,
            sigma=1.2,
            samples=6,
            seed=3,
            batch_size=16,
            rng="ziggurat",
        )
        if objective == "loss":
            assert -float(np.mean(values["ziggurat"])) == local
    finally:
        workers.close()


def _trace(report) -> list[tuple]:
    return [(h["kpps"], h["sigma_t"], h["winner"]) for h in report.history]


@pytest.fixture(scope="module")
def runs(setup) -> dict:
    """TRICE under each generator, in this process, with every validation KPP call recorded."""
    import ftaudit.harden.methods.trice as trice

    out = {}
    for rng in ("fast", "ziggurat"):
        calls: list[tuple[str, float]] = []

        def recorded(*args, _calls=calls, **kwargs):
            value = quantile_eval(*args, **kwargs)
            _calls.append((kwargs["rng"], value))
            return value

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trice, "quantile_eval", recorded)
            report = harden(
                setup["onnx"], setup["data"], output=setup["dir"] / f"{rng}.onnx", rng=rng, **TRICE
            )
        out[rng] = (report, calls)
    return out


def test_trice_trace_and_audits_follow_the_rng(runs) -> None:
    """The search's KPPs are quantile_eval's under the run's generator (checked against numpy's
    ziggurat above); the report's audits draw with it too; fast gives another trace."""
    (fast, fast_calls), (zig, zig_calls) = runs["fast"], runs["ziggurat"]
    assert [len(h["kpps"]) for h in zig.history] == [3, 3]
    assert [rng for rng, _ in zig_calls] == ["ziggurat"] * 6
    assert [rng for rng, _ in fast_calls] == ["fast"] * 6
    assert [v for h in zig.history for v in h["kpps"]] == [v for _, v in zig_calls]
    assert _trace(fast) != _trace(zig)
    assert zig.settings["rng"] == "ziggurat" and fast.settings["rng"] == "fast"
    for report, rng in ((zig, "ziggurat"), (fast, "fast")):
        assert report.before.options["rng"] == report.after.options["rng"] == rng
    assert not np.array_equal(zig.before.results[1].accuracies, fast.before.results[1].accuracies)


def test_trice_on_two_workers_equals_one_process_under_ziggurat(setup, runs) -> None:
    out = setup["dir"] / "two.onnx"
    report = harden(setup["onnx"], setup["data"], output=out, workers=2, rng="ziggurat", **TRICE)
    one = runs["ziggurat"][0]
    assert _trace(report) == _trace(one)
    assert out.read_bytes() == (setup["dir"] / "ziggurat.onnx").read_bytes()
    for a, b in zip(report.after.results, one.after.results, strict=True):
        assert np.array_equal(a.accuracies, b.accuracies)


@pytest.mark.parametrize("saved", ["fast", None])
def test_a_checkpoint_of_another_rng_refuses_to_resume(setup, tmp_path, saved) -> None:
    """A checkpoint of the other generator, or one written before harden had --rng (no rng in
    its fingerprint), names the field."""
    kw = {**TRICE, "epochs": 1, "checkpoint_dir": tmp_path / "ck"}
    harden(setup["onnx"], setup["data"], output=tmp_path / "a.onnx", rng="fast", **kw)
    if saved is None:
        from ftaudit.harden.checkpoint import checkpoint_path

        path = checkpoint_path(tmp_path / "ck")
        state = torch.load(path, weights_only=True)
        fingerprint = json.loads(state["fingerprint"])
        del fingerprint["rng"]
        state["fingerprint"] = json.dumps(fingerprint)
        torch.save(state, path)
    rng = "ziggurat" if saved else "fast"
    with pytest.raises(UserError, match=r"differs in: rng\)"):
        harden(setup["onnx"], setup["data"], output=tmp_path / "b.onnx", rng=rng, resume=True, **kw)


def test_cli_rng_flag_and_config_key_reach_the_report(setup, run_cli, tmp_path) -> None:
    base = ["harden", setup["onnx"], "--data", setup["data"], "--sigma", "0.5"]
    base += ["--method", "erm", "--epochs", "1", "--eval-samples", "4", "-q"]
    report = tmp_path / "r.json"
    code, _, err = run_cli(
        *base, "-o", tmp_path / "a.onnx", "--report", report, "--rng", "ziggurat"
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["settings"]["rng"] == "ziggurat"
    assert data["before"]["options"]["rng"] == "ziggurat"
    for table in ("", "[harden]\n"):
        config = tmp_path / "ftaudit.toml"
        config.write_text(f'{table}rng = "ziggurat"\n')
        report = tmp_path / "c.json"
        code, _, err = run_cli(
            *base, "-o", tmp_path / "c.onnx", "--report", report, "--config", config
        )
        assert code == 0, err
        assert json.loads(report.read_text())["settings"]["rng"] == "ziggurat"


def test_harden_default_is_the_engines_default() -> None:
    from ftaudit.draws import DEFAULT_RNG, RNGS
    from ftaudit.harden.settings import HARDEN_DEFAULTS

    assert HARDEN_DEFAULTS.rng == DEFAULT_RNG and HARDEN_DEFAULTS.rng in RNGS


def test_cli_unknown_rng_is_one_line_and_exit_2(setup, run_cli, tmp_path) -> None:
    out = tmp_path / "h.onnx"
    code, stdout, err = run_cli(
        "harden", setup["onnx"], "--data", setup["data"], "--sigma", "0.5", "-o", out,
        "--rng", "zigurat",
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert "unknown random generator --rng 'zigurat'" in err and "did you mean 'ziggurat'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
