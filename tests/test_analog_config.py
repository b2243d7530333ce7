"""The analog and differential-pair settings in ftaudit.toml and on the command line, and
the report listing every non-ideality in force (table caption, JSON, HTML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIG = """
noise = "rram"
differential = true
dac_bits = 6
adc_bits = 7
weight_read_noise = 0.02
read_noise = 0.01
tile_size = [32, 16]
weight_scaling = "column"
"""


def _eval(run_cli, model, data, *flags):
    return run_cli(
        "eval", model, "--data", data, "--sigma", "0.1", "--samples", "3", "--batch-size", "200",
        *flags,
    )  # fmt: skip


def test_config_sets_every_analog_key_and_differential(run_cli, mlp_onnx, blobs_npz, tmp_path):
    config = tmp_path / "ftaudit.toml"
    config.write_text(CONFIG)
    html = tmp_path / "r.html"
    code, stdout, stderr = _eval(
        run_cli, mlp_onnx, blobs_npz, "--config", config, "--json", tmp_path / "r.json",
        "--html", html,
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads((tmp_path / "r.json").read_text())
    analog = report["analog"]
    assert (analog["dac_bits"], analog["adc_bits"]) == (6, 7)
    assert (analog["read_noise"], analog["weight_read_noise"]) == (0.01, 0.02)
    assert analog["tile_size"] == [32, 16] and analog["weight_scaling"] == "column"
    assert report["noise"]["differential"] is True
    assert report["noise"]["name"] == "rram"
    # every non-ideality in force, with its parameters: table caption, JSON and HTML
    lines = analog["in_force"]
    assert len(lines) == 5
    assert any("weight read noise 0.02" in line for line in lines)
    page = html.read_text()
    for text in ("differential pairs", "weight read noise 0.02", "DAC 6 bits", "read noise 0.01"):
        assert text in stdout
    for text in ("G+ - G-", "weight read noise 0.02", "DAC 6 bits", "ADC 7 bits", "tiles 32x16"):
        assert text in page


def test_flags_override_the_config_keys(run_cli, mlp_onnx, blobs_npz, tmp_path):
    config = tmp_path / "ftaudit.toml"
    config.write_text(CONFIG)
    out = tmp_path / "r.json"
    code, _, stderr = _eval(
        run_cli, mlp_onnx, blobs_npz, "--config", config, "--json", out,
        "--dac-bits", "8", "--weight-read-noise", "0", "--tile-size", "64x64", "--single-device",
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert report["analog"]["dac_bits"] == 8 and report["analog"]["adc_bits"] == 7
    assert report["analog"]["weight_read_noise"] == 0.0
    assert report["analog"]["tile_size"] == [64, 64]
    assert report["noise"]["differential"] is False


def test_cli_differential_and_weight_read_noise_flags(run_cli, mlp_onnx, blobs_npz, tmp_path):
    out = tmp_path / "r.json"
    code, _, stderr = _eval(
        run_cli, mlp_onnx, blobs_npz, "--noise", "gaussian", "--differential",
        "--weight-read-noise", "0.05", "--json", out,
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert report["noise"] == {"name": "gaussian", "differential": True, "clamp": True}
    assert report["analog"]["weight_read_noise"] == 0.05
    assert report["analog"]["in_force"][0].startswith("weight read noise 0.05")
    # weight read noise makes sigma-0 style rows random: intervals are not "exact"
    assert report["results"][0]["kpp_interval"]["method"] != "exact"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("weight_read_noise = -0.1", "--weight-read-noise must be a finite number >= 0"),
        ("read_noise = nan", "--read-noise must be a finite number >= 0"),
        ("weight_read_noise = 'x'", "'weight_read_noise' has the wrong type"),
        ("differential = 1", "'differential' has the wrong type"),
        ("tile_size = '3x'", "--tile-size must be ROWSxCOLS"),
        ("dac_bits = 30", "--dac-bits must be between 1 and 24"),
        ("weight_scaling = 'row'", "unknown --weight-scaling 'row'"),
    ],
)
def test_bad_config_values_exit_2_with_one_line(
    run_cli, mlp_onnx, blobs_npz, tmp_path, config, message
):
    path = tmp_path / "ftaudit.toml"
    path.write_text(config + "\n")
    out = tmp_path / "r.json"
    code, _, stderr = _eval(run_cli, mlp_onnx, blobs_npz, "--config", path, "--json", out)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert message in stderr and str(path) in stderr
    assert not out.exists()


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
@pytest.mark.parametrize("command", ["eval", "compare", "sensitivity"])
def test_bad_weight_read_noise_flag_exits_2(run_cli, mlp_onnx, blobs_npz, tmp_path, command, value):
    models = [mlp_onnx, mlp_onnx] if command == "compare" else [mlp_onnx]
    out = tmp_path / "r.json"
    code, _, stderr = run_cli(
        command, *models, "--data", blobs_npz, "--sigma", "0.1", "--json", out,
        "--weight-read-noise", value,
    )  # fmt: skip
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "--weight-read-noise" in stderr
    assert not out.exists()


def test_harden_reads_the_shared_analog_keys_under_its_flags(tmp_path: Path) -> None:
    """harden's pipeline: a flag, else the config's top-level key, else the profile's."""
    from ftaudit.cli.groups import AnalogFlags
    from ftaudit.config import load_settings
    from ftaudit.harden.settings import HardenSettings
    from ftaudit.noise import get_noise_model

    (tmp_path / "ftaudit.toml").write_text("dac_bits = 5\nweight_read_noise = 0.03\n")
    config = load_settings(None, tmp_path)
    flags = dict.fromkeys(
        ("dac_bits", "adc_bits", "adc_bound", "read_noise", "weight_read_noise", "tile_size"),
    )
    flags["weight_scaling"] = None
    pcm = get_noise_model(HardenSettings(noise="pcm-aihwkit").noise)
    pipeline = AnalogFlags(flags).pipeline(pcm, config)
    assert (pipeline.dac_bits, pipeline.weight_read_noise) == (5, 0.03)
    assert pipeline.adc_bits == 9 and pipeline.tile_size == (512, 512)  # the profile's
    assert AnalogFlags({**flags, "dac_bits": 4}).pipeline(pcm, config).dac_bits == 4
    plain = get_noise_model("lognormal")
    assert AnalogFlags(flags).pipeline(plain, load_settings(None, tmp_path / "x")) is None
