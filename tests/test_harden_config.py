"""``harden`` defaults from the config file: shared keys, the [harden] table, precedence, errors.

Precedence is command-line flag > [harden] > a shared eval key > HardenSettings' default. Most
tests resolve settings without training; two CLI runs train one epoch of the tiny MLP.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from ftaudit.config import load_settings, read_config
from ftaudit.errors import UserError
from ftaudit.harden.settings import (
    HARDEN_DEFAULTS,
    SHARED_KEYS,
    HardenSettings,
    harden_settings_from_config,
    load_harden_settings,
)

RunCli = Callable[..., tuple[int, str, str]]

CONFIG = """\
data = "data/test.npz"      # eval's test set: never harden's training or validation data
sigma = [0.0, 0.5]          # eval's grid: not harden's target
samples = 50
batch_size = 7              # eval's inference batch: not harden's training batch
limit = 11
noise = "gaussian"
seed = 3
k = 5

[harden]
data = "data/blobs.npz"
sigma = 0.2
method = "erm"
epochs = 1
lr = 0.002
eval_samples = 4
eval_sigmas = [0.1]
"""


def write(folder: Path, text: str, name: str = "ftaudit.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("ftaudit: error:")
    return line


# --- resolution, without training ---------------------------------------------------------------


def test_defaults_without_config(tmp_path: Path) -> None:
    assert load_harden_settings(None, tmp_path) == HardenSettings()
    assert (HARDEN_DEFAULTS.epochs, HARDEN_DEFAULTS.batch_size, HARDEN_DEFAULTS.lr) == (
        10,
        128,
        1e-3,
    )
    assert HARDEN_DEFAULTS.method == "trice" and HARDEN_DEFAULTS.config_file is None


def test_library_defaults_are_the_settings_defaults() -> None:
    """ftaudit.harden's keyword defaults and the CLI's (HardenSettings) are one set of values."""
    from ftaudit.harden.api import harden

    parameters = inspect.signature(harden).parameters
    for field in fields(HardenSettings):
        if field.name in ("data", "sigma", "config_file"):
            continue  # data and sigma are required arguments; config_file is provenance
        assert parameters[field.name].default == getattr(HARDEN_DEFAULTS, field.name), field.name
    assert parameters["config_file"].default is None


def test_harden_table_and_shared_keys(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    settings = harden_settings_from_config(path)
    # the [harden] table
    assert settings.data == str((tmp_path / "data" / "blobs.npz").resolve())
    assert (settings.sigma, settings.method, settings.epochs, settings.lr) == (0.2, "erm", 1, 0.002)
    assert (settings.eval_samples, settings.eval_sigmas) == (4, (0.1,))
    # the shared keys of the eval settings
    assert (settings.noise, settings.seed, settings.k) == ("gaussian", 3, 5.0)
    assert isinstance(settings.k, float)
    # eval-only keys do not leak: training batch, training subset and validation data
    assert settings.batch_size == HARDEN_DEFAULTS.batch_size == 128
    assert settings.limit is None and settings.val_data is None
    assert settings.config_file == str(path)
    # ... while eval itself still sees its own values
    eval_settings = load_settings(None, tmp_path)
    assert (eval_settings.batch_size, eval_settings.samples, eval_settings.limit) == (7, 50, 11)


def test_harden_table_overrides_a_shared_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        'seed = 3\nnoise = "rram"\nbits = 6\nworkers = 2\ndevice = "cpu"\n'
        '[harden]\nseed = 7\nbatch-size = 32\nval_data = "v.npz"\ntrice_end = 1\n',
    )
    settings = load_harden_settings(None, tmp_path)
    assert settings.seed == 7  # [harden] wins
    assert (settings.noise, settings.bits, settings.workers) == ("rram", 6, 2)  # shared
    assert settings.batch_size == 32  # dashes like the flags are accepted
    assert settings.val_data == str((tmp_path / "v.npz").resolve())
    assert settings.trice_end == 1.0 and isinstance(settings.trice_end, float)


def test_shared_keys_are_eval_keys_with_the_same_defaults() -> None:
    from ftaudit.config import EvalSettings

    for key in SHARED_KEYS:
        assert getattr(EvalSettings(), key) == getattr(HARDEN_DEFAULTS, key), key


def test_eval_table_layout_and_pyproject(tmp_path: Path) -> None:
    write(tmp_path, '[eval]\nnoise = "gaussian"\nbatch_size = 9\n[harden]\nepochs = 2\n')
    settings = load_harden_settings(None, tmp_path)
    assert (settings.noise, settings.epochs, settings.batch_size) == ("gaussian", 2, 128)
    assert load_settings(None, tmp_path).batch_size == 9

    other = tmp_path / "other"
    other.mkdir()
    write(
        other,
        '[project]\nname = "x"\n[tool.ftaudit]\nseed = 4\n'
        '[tool.ftaudit.harden]\nmethod = "noise"\n',
        "pyproject.toml",
    )
    settings = load_harden_settings(None, other)
    assert (settings.seed, settings.method) == (4, "noise")
    assert load_settings(None, other).seed == 4  # eval ignores the harden table


def test_eval_ignores_the_harden_table(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    assert "harden" not in read_config(path)
    assert load_settings(None, tmp_path).noise == "gaussian"


def test_eval_sigmas_in_config(tmp_path: Path) -> None:
    write(tmp_path, '[harden]\neval_sigmas = "0:0.2:0.1"\n')
    assert load_harden_settings(None, tmp_path).eval_sigmas == (0.0, 0.1, 0.2)
    write(tmp_path, '[harden]\neval_sigmas = "x"\n')
    with pytest.raises(UserError, match="'eval_sigmas'"):
        load_harden_settings(None, tmp_path)


# --- the CLI: errors before any work ------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """An empty working folder with a placeholder model (config errors come before loading)."""
    (tmp_path / "model.onnx").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[harden]\nepoch = 1\n", "did you mean 'epochs'"),
        ("[harden]\nmethdo = 'erm'\n", "did you mean 'method'"),
        ("[harden]\nsamples = 5\n", "did you mean"),  # eval's key: eval_samples or search_samples
        ("[harden]\nzzzzzz = 1\n", "known: batch_size"),
        ("sampels = 5\n[harden]\nepochs = 1\n", "did you mean 'samples'"),  # the shared part too
    ],
)
def test_unknown_key(run_cli: RunCli, folder: Path, text: str, expect: str) -> None:
    write(folder, text)
    code, out, err = run_cli("harden", "model.onnx", "--data", "x.npz", "--sigma", "0.1", "-o", "h")
    line = one_line_error(code, out, err)
    assert expect in line and "ftaudit.toml" in line
    assert not (folder / "h").exists()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[harden]\nepochs = "ten"\n', "epochs"),
        ("[harden]\nepochs = 1.5\n", "epochs"),
        ("[harden]\nbatch_size = true\n", "batch_size"),
        ('[harden]\nlr = "fast"\n', "lr"),
        ("[harden]\nlr = nan\n", "lr"),
        ("[harden]\nmethod = 3\n", "method"),
        ("[harden]\ndata = 5\n", "data"),
        ("[harden]\nsigma = [0.1]\n", "sigma"),
        ("[harden]\neval_sigmas = true\n", "eval_sigmas"),
        ('seed = "x"\n', "seed"),  # a shared key is checked for harden as for eval
        ("harden = 3\n", "[harden] must be a table"),
    ],
)
def test_wrong_type(run_cli: RunCli, folder: Path, text: str, key: str) -> None:
    write(folder, text)
    code, out, err = run_cli("harden", "model.onnx", "--data", "x.npz", "--sigma", "0.1", "-o", "h")
    assert key in one_line_error(code, out, err)
    assert not (folder / "h").exists()


def test_missing_data_and_sigma(run_cli: RunCli, folder: Path) -> None:
    write(folder, 'data = "test.npz"\nsigma = 0.3\n')  # eval's data and sigma are not harden's
    code, out, err = run_cli("harden", "model.onnx", "--sigma", "0.1", "-o", "h")
    assert "no training data given" in one_line_error(code, out, err)
    code, out, err = run_cli("harden", "model.onnx", "--data", "x.npz", "-o", "h")
    assert "--sigma" in one_line_error(code, out, err)
    code, out, err = run_cli("harden", "model.onnx", "--config", "nope.toml", "-o", "h")
    assert "nope.toml" in one_line_error(code, out, err)


@pytest.mark.parametrize("spec", ["abc", "0.1,-0.2", "0:1:0"])
def test_bad_eval_sigmas_flag(run_cli: RunCli, folder: Path, spec: str) -> None:
    pytest.importorskip("torch")
    code, out, err = run_cli(
        "harden", "model.onnx", "--data", "x.npz", "--sigma", "0.1", "-o", "h",
        "--eval-sigmas", spec,
    )  # fmt: skip
    one_line_error(code, out, err)
    assert not (folder / "h").exists()


# --- the CLI end to end: one epoch of the tiny MLP ----------------------------------------------


@pytest.fixture
def project(tmp_path: Path, mlp_onnx: Path, blobs_npz: Path) -> Path:
    (tmp_path / "data").mkdir()
    shutil.copy(blobs_npz, tmp_path / "data" / "blobs.npz")
    shutil.copy(mlp_onnx, tmp_path / "model.onnx")
    write(tmp_path, CONFIG)
    return tmp_path


def test_cli_harden_reads_the_config(run_cli: RunCli, project: Path, monkeypatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(project)
    code, _, err = run_cli("harden", "model.onnx", "-o", "h.onnx", "--report", "r.json", "-q")
    assert code == 0, err
    report = json.loads((project / "r.json").read_text())
    settings = report["settings"]
    assert report["method"] == "erm"
    assert (settings["epochs"], settings["lr"], settings["sigma"]) == (1, 0.002, 0.2)
    assert (settings["noise"]["name"], settings["seed"], settings["k"]) == ("gaussian", 3, 5.0)
    assert settings["batch_size"] == 128  # not eval's inference batch of 7
    assert (settings["eval_sigmas"], settings["eval_samples"]) == ([0.1], 4)
    assert settings["config_file"] == str(project / "ftaudit.toml")
    assert report["validation"]["source"] == "held out of the training data"  # not eval's data
    assert settings["n_train"] + settings["n_val"] == 400  # eval's limit = 11 is not used


def test_cli_flags_override_and_config_flag(
    run_cli: RunCli, project: Path, tmp_path_factory, monkeypatch
) -> None:
    pytest.importorskip("torch")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    write(elsewhere, "[harden]\nepochs = 7\n")  # not read: --config names another file
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(
        "harden", project / "model.onnx", "--config", project / "ftaudit.toml",
        "-o", "h.onnx", "--report", "r.json", "-q",
        "--method", "noise", "--epochs", "2", "--lr", "0.001", "--seed", "1",
        "--batch-size", "32", "--noise", "lognormal", "--eval-sigmas", "0,0.3",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((elsewhere / "r.json").read_text())
    settings = report["settings"]
    assert report["method"] == "noise"
    assert (settings["epochs"], settings["lr"], settings["seed"]) == (2, 0.001, 1)
    assert (settings["batch_size"], settings["noise"]["name"]) == (32, "lognormal")
    assert settings["eval_sigmas"] == [0.0, 0.3]
    assert (settings["sigma"], settings["k"]) == (0.2, 5.0)  # still from the config
    assert settings["config_file"] == str(project / "ftaudit.toml")


def test_cli_eval_runs_with_a_harden_table(run_cli: RunCli, project: Path, monkeypatch) -> None:
    write(
        project,
        CONFIG.replace("data/test.npz", "data/blobs.npz") + "typo_only_harden_reads = 1\n",
    )
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--samples", "3", "--json", "-")
    assert code == 0, err
    report = json.loads(out)
    assert report["noise"]["name"] == "gaussian" and report["samples"] == 3
    assert report["options"]["config_file"] == str(project / "ftaudit.toml")
