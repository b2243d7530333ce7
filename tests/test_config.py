"""Configuration: sigma parsing, ftaudit.toml / [tool.ftaudit] discovery, precedence, validation.

Precedence is command-line flag > config file > built-in default, and relative paths in a config
file are resolved against the file's folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ftaudit.config import (
    EvalSettings,
    find_config,
    load_settings,
    merge,
    parse_floats,
    parse_sigmas,
    read_config,
    settings_from_config,
)
from ftaudit.errors import UserError

RunCli = Callable[..., tuple[int, str, str]]


def assert_one_line_error(code: int, out: str, err: str) -> str:
    """Exit 2, nothing on stdout, one 'ftaudit: error:' line on stderr and no traceback."""
    assert code == 2, err
    assert out == "", out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ftaudit: error:"), err
    return lines[0]


# --- parse_sigmas -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0.3", (0.3,)),
        (" 0.3 ", (0.3,)),
        (0.3, (0.3,)),
        (1, (1.0,)),
        ("0.1,0.3", (0.1, 0.3)),
        ("0.1, 0.3,", (0.1, 0.3)),
        ("0:0.4:0.1", (0.0, 0.1, 0.2, 0.3, 0.4)),
        ("0:0.3:0.1", (0.0, 0.1, 0.2, 0.3)),  # (0.3 - 0) / 0.1 = 2.9999999999999996
        ("0:0.7:0.1", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)),
        ("0:1:0.25", (0.0, 0.25, 0.5, 0.75, 1.0)),
        ("0.05:0.2:0.05", (0.05, 0.1, 0.15, 0.2)),
        ("0:0.45:0.1", (0.0, 0.1, 0.2, 0.3, 0.4)),  # the stop need not be on the grid
        ("0.2:0.2:0.1", (0.2,)),
        ([0.1, "0.2,0.3", "0.4:0.5:0.1"], (0.1, 0.2, 0.3, 0.4, 0.5)),
    ],
)
def test_parse_sigmas(spec, expected) -> None:
    assert parse_sigmas(spec) == expected


def test_parse_sigmas_range_matches_literals() -> None:
    """Range values are the decimal numbers a user would type, so sigma == 0.3 lookups work."""
    values = parse_sigmas("0:1:0.05")
    assert len(values) == 21
    assert values == tuple(float(f"{i * 5 / 100:.2f}") for i in range(21))


@pytest.mark.parametrize(
    "spec",
    [
        "abc",
        "",
        " , ",
        "0.1,abc",
        "0:0.4",
        "0:0.4:0.1:9",
        "0:0.4:0",
        "0:0.4:-0.1",
        "0.4:0:0.1",
        "0:inf:0.1",
        "nan:1:0.1",
        "0:1:nan",
        "0:1:1e-9",  # a billion sigmas is a typo, not an audit
        "0:1:1e-320",
        True,
        [True],
    ],
)
def test_parse_sigmas_errors(spec) -> None:
    with pytest.raises(UserError) as info:
        parse_sigmas(spec)
    assert "\n" not in str(info.value)


def test_parse_floats() -> None:
    assert parse_floats("0.5", "--mean") == (0.5,)
    assert parse_floats("0.1,0.2,0.3", "--mean") == (0.1, 0.2, 0.3)
    assert parse_floats([0.1, 2], "mean") == (0.1, 2.0)
    assert parse_floats(3, "std") == (3.0,)
    for bad in ("x", "0.1,,0.2", True, [None]):
        with pytest.raises(UserError, match="mean"):
            parse_floats(bad, "mean")


# --- the library side of config files -----------------------------------------------------------


def test_defaults_without_config(tmp_path: Path) -> None:
    assert find_config(tmp_path) is None
    assert load_settings(None, tmp_path) == EvalSettings()
    assert EvalSettings().samples == 1000
    assert EvalSettings().noise == "lognormal"


def test_settings_from_config_converts_and_resolves(tmp_path: Path) -> None:
    path = tmp_path / "ftaudit.toml"
    table = {
        "data": "sub/data.npz",
        "sigma": "0:0.2:0.1",
        "fail-under-kpp": 0.5,  # dashes like the flags are accepted
        "layers": "conv*",
        "exclude": ["fc1*", "fc2*"],
        "mean": 0.5,
        "std": "0.1,0.2",
    }
    settings = settings_from_config(table, path)
    assert settings.data == str((tmp_path / "sub" / "data.npz").resolve())
    assert settings.sigma == (0.0, 0.1, 0.2)
    assert settings.fail_under_kpp == 0.5
    assert settings.layers == ("conv*",)
    assert settings.exclude == ("fc1*", "fc2*")
    assert settings.mean == (0.5,)
    assert settings.std == (0.1, 0.2)
    assert settings.config_file == str(path)


def test_merge_prefers_given_flags() -> None:
    base = EvalSettings(samples=50, noise="gaussian", layers=("a*",), sigma=(0.1,))
    merged = merge(base, {"samples": 7, "noise": None, "layers": (), "sigma": (0.2, 0.3)})
    assert merged.samples == 7
    assert merged.noise == "gaussian"  # not given on the command line
    assert merged.layers == ("a*",)  # an empty repeatable flag is "not given"
    assert merged.sigma == (0.2, 0.3)


def test_eval_section_and_pyproject_table(tmp_path: Path) -> None:
    (tmp_path / "ftaudit.toml").write_text("[eval]\nsamples = 12\n")
    assert read_config(tmp_path / "ftaudit.toml") == {"samples": 12}
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.ftaudit]\nseed = 4\n")
    assert find_config(other) == other / "pyproject.toml"
    assert load_settings(None, other).seed == 4


def test_pyproject_without_our_table_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.black]\nline-length = 99\n")
    assert find_config(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("this is [ not toml")
    assert find_config(tmp_path) is None  # someone else's broken file is not our error


def test_ftaudit_toml_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ftaudit]\nseed = 4\n")
    (tmp_path / "ftaudit.toml").write_text("seed = 9\n")
    assert find_config(tmp_path) == tmp_path / "ftaudit.toml"
    assert load_settings(None, tmp_path).seed == 9


# --- the CLI with config files ------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, convnet_onnx: Path, blobs_npz: Path) -> Path:
    """A project folder holding the model and its data under data/."""
    (tmp_path / "data").mkdir()
    shutil.copy(blobs_npz, tmp_path / "data" / "blobs.npz")
    shutil.copy(convnet_onnx, tmp_path / "model.onnx")
    return tmp_path


CONFIG = """\
data = "data/blobs.npz"
sigma = [0.0, 0.05]
samples = 6
noise = "gaussian"
seed = 5
rng = "ziggurat"
fail_under_kpp = 0.5
"""


def test_config_in_cwd_needs_no_flags(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_text(CONFIG)
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx")
    assert code == 0, err
    assert "gaussian" in out
    assert "6 samples" in out
    code, out, err = run_cli("eval", "model.onnx", "--json", "-")
    assert code == 0, err
    report = json.loads(out)
    assert [r["sigma"] for r in report["results"]] == [0.0, 0.05]
    assert report["samples"] == 6
    assert report["seed"] == 5
    assert report["options"]["rng"] == "ziggurat"
    assert report["noise"]["name"] == "gaussian"
    assert report["data"]["n"] == 400
    assert [(g["metric"], g["threshold"]) for g in report["gates"]] == [("kpp", 0.5)] * 2


def test_gate_from_config_fails_the_run(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_text(
        'data = "data/blobs.npz"\nsigma = 3.0\nsamples = 5\nfail_under_kpp = 0.99\n'
    )
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--quiet")
    assert code == 1
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("ftaudit: gate FAILED: kpp at sigma=3 is ")
    assert line.endswith("threshold 0.9900")


def test_flags_override_config(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_text(CONFIG)
    monkeypatch.chdir(project)
    code, out, err = run_cli(
        "eval", "model.onnx", "--sigma", "0.2", "--samples", "4", "--noise", "lognormal",
        "--seed", "1", "--rng", "fast", "--fail-under-kpp", "0.1", "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["options"]["rng"] == "fast"
    assert [r["sigma"] for r in report["results"]] == [0.2]
    assert report["samples"] == 4
    assert report["seed"] == 1
    assert report["noise"]["name"] == "lognormal"
    assert [g["threshold"] for g in report["gates"]] == [0.1]
    assert (
        report["data"]["sha256"]
        == json.loads(run_cli("eval", "model.onnx", "--json", "-")[1])["data"]["sha256"]
    )  # data still comes from the config


def test_config_flag_picks_that_file(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_text(CONFIG)
    (project / "other.toml").write_text('data = "data/blobs.npz"\nsigma = 0.1\nsamples = 3\n')
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--config", "other.toml", "--json", "-")
    assert code == 0, err
    report = json.loads(out)
    assert report["samples"] == 3
    assert [r["sigma"] for r in report["results"]] == [0.1]
    assert report["noise"]["name"] == "lognormal"  # the default, not ftaudit.toml's gaussian
    assert report["gates"] == []


def test_pyproject_tool_table_is_found(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.ftaudit]\n'
        'data = "data/blobs.npz"\nsigma = "0:0.1:0.05"\nsamples = 4\n'
    )
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--json", "-")
    assert code == 0, err
    report = json.loads(out)
    assert [r["sigma"] for r in report["results"]] == [0.0, 0.05, 0.1]
    assert report["samples"] == 4


def test_relative_data_path_is_relative_to_the_config(
    run_cli: RunCli, project: Path, tmp_path_factory, monkeypatch
) -> None:
    (project / "ftaudit.toml").write_text(CONFIG)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(
        "eval", project / "model.onnx", "--config", project / "ftaudit.toml", "--json", "-"
    )
    assert code == 0, err
    report = json.loads(out)
    assert Path(report["data"]["path"]).resolve() == (project / "data" / "blobs.npz").resolve()


def test_data_flag_is_relative_to_cwd(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_text(CONFIG.replace("data/blobs.npz", "nowhere.npz"))
    monkeypatch.chdir(project / "data")
    code, out, err = run_cli(
        "eval", "../model.onnx", "--config", "../ftaudit.toml", "--data", "blobs.npz",
        "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["data"]["path"].endswith("blobs.npz")


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("sampels = 5\n", "did you mean 'samples'"),
        ("fail_under_kp = 0.5\n", "did you mean 'fail_under_kpp'"),
        ("sigmas = 0.3\n", "did you mean 'sigma'"),
        ("zzzzzz = 1\n", "zzzzzz"),
    ],
)
def test_unknown_key(run_cli: RunCli, project: Path, monkeypatch, text, expect) -> None:
    (project / "ftaudit.toml").write_text(text)
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--data", "data/blobs.npz", "--sigma", "0.1")
    line = assert_one_line_error(code, out, err)
    assert expect in line
    assert "ftaudit.toml" in line
    assert out == ""


@pytest.mark.parametrize(
    "text",
    [
        'samples = "many"\n',
        "samples = 5.5\n",
        "samples = true\n",
        'k = "one"\n',
        "seed = [1]\n",
        "rng = 3\n",
        "noise = 3\n",
        'device = ["cpu"]\n',
        "sigma = true\n",
        'sigma = "abc"\n',
        "data = 5\n",
        "layers = 5\n",
        "exclude = [1, 2]\n",
        'mean = "abc"\n',
        "fail_under_kpp = false\n",
        "eval = 3\n",
    ],
)
def test_wrong_type(run_cli: RunCli, project: Path, monkeypatch, text) -> None:
    (project / "ftaudit.toml").write_text(text)
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--data", "data/blobs.npz", "--sigma", "0.1")
    assert_one_line_error(code, out, err)


@pytest.mark.parametrize(
    "text",
    [
        "samples = \n",
        "[eval\nsamples = 5\n",
        'sigma = "0.1\n',
        "samples = 5\nsamples = 6\n",
    ],
)
def test_invalid_toml(run_cli: RunCli, project: Path, monkeypatch, text) -> None:
    (project / "ftaudit.toml").write_text(text)
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--data", "data/blobs.npz", "--sigma", "0.1")
    line = assert_one_line_error(code, out, err)
    assert "not valid TOML" in line


def test_invalid_utf8_config(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_bytes(b"samples = 5 # \xff\xfe\n")
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--data", "data/blobs.npz", "--sigma", "0.1")
    assert_one_line_error(code, out, err)


@pytest.mark.parametrize("text", ["[tool]\nftaudit = 5\n", "[tool.ftaudit]\neval = 'x'\n"])
def test_pyproject_ftaudit_not_a_table(run_cli: RunCli, project: Path, monkeypatch, text) -> None:
    (project / "pyproject.toml").write_text(text)
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--data", "data/blobs.npz", "--sigma", "0.1")
    assert "must be a table" in assert_one_line_error(code, out, err)


def test_missing_config_file(run_cli: RunCli, project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--config", "nope.toml")
    assert "nope.toml" in assert_one_line_error(code, out, err)


def test_missing_sigma_and_data_are_user_errors(run_cli: RunCli, project: Path, monkeypatch):
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx", "--data", "data/blobs.npz")
    assert "--sigma" in assert_one_line_error(code, out, err)
    code, out, err = run_cli("eval", "model.onnx", "--sigma", "0.1")
    assert "--data" in assert_one_line_error(code, out, err)


def test_empty_sigma_list_in_config(run_cli: RunCli, project: Path, monkeypatch) -> None:
    (project / "ftaudit.toml").write_text('data = "data/blobs.npz"\nsigma = []\n')
    monkeypatch.chdir(project)
    code, out, err = run_cli("eval", "model.onnx")
    assert "sigma" in assert_one_line_error(code, out, err)


@pytest.mark.parametrize("command", ["eval", "compare", "sensitivity"])
def test_unknown_rng_is_one_line_and_writes_nothing(
    run_cli: RunCli, project: Path, monkeypatch, command: str
) -> None:
    monkeypatch.chdir(project)
    models = ["model.onnx", "model.onnx"] if command == "compare" else ["model.onnx"]
    code, out, err = run_cli(
        command, *models, "--data", "data/blobs.npz", "--sigma", "0.1", "--samples", "2",
        "--rng", "zigurat", "--json", "out.json",
    )  # fmt: skip
    assert_one_line_error(code, out, err)
    assert "unknown random generator --rng 'zigurat'" in err and "ziggurat" in err
    assert not (project / "out.json").exists()
