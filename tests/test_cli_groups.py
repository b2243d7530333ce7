"""The CLI's argument groups (ftaudit/cli/groups.py): declared once, parsed once, shared by
every command, with --help unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.main
import typer.testing

from ftaudit.cli import app
from ftaudit.cli.groups import AUDIT, EFFECTS, OUTPUTS, ArgGroup, Flag, ParsedFlags, uses_groups

AUDIT_PANEL = [
    "--data", "--layers", "--exclude", "--limit", "--mean", "--std", "--output", "--config",
]  # fmt: skip
DEVICE = [
    "--sigma",
    "--noise",
    "--bits",
    "--cell-bits",
    "--clamp",
    "--cell-noise",
    "--differential",
]
EFFECT_FLAGS = [
    "--time", "--drift-nu", "--drift-nu-std", "--drift-t0", "--compensation", "--stuck-at",
]  # fmt: skip
MONTE_CARLO = ["--samples", "--k", "--seed", "--rng", "--batch-size", "--device"]
ANALOG = [
    "--dac-bits", "--adc-bits", "--adc-bound", "--read-noise", "--weight-read-noise",
    "--weight-read-noise-type", "--tile-size", "--weight-scaling",
]  # fmt: skip

#: (panel, its options in order) per command, as --help showed them before the groups
HELP_LAYOUT = {
    "eval": [
        ("What to audit", AUDIT_PANEL),
        ("Device", [*DEVICE, "--fold-batchnorm", *EFFECT_FLAGS]),
        ("Monte Carlo", [*MONTE_CARLO, "--test-set-error", "--target-ci", "--batch-samples"]),
        ("Outputs", ["--json", "--csv", "--plot", "--html", "--junit", "--quiet"]),
        ("Gates", ["--fail-under-kpp", "--fail-under-mean"]),
        ("Scale-out and checkpoints", ["--workers", "--ray", "--checkpoint-dir", "--resume"]),
        ("Analog forward pipeline", ANALOG),
    ],
    "compare": [
        ("What to audit", AUDIT_PANEL),
        ("Device", [*DEVICE, *EFFECT_FLAGS]),
        ("Monte Carlo", MONTE_CARLO),
        ("Gates", ["--fail-if-worse", "--gate-correction"]),
        ("Outputs", ["--json", "--csv", "--html", "--junit", "--quiet"]),
        ("Scale-out and checkpoints", ["--workers", "--ray"]),
        ("Analog forward pipeline", ANALOG),
    ],
    "sensitivity": [
        ("What to audit", AUDIT_PANEL),
        ("Device", [*DEVICE, *EFFECT_FLAGS]),
        ("Monte Carlo", MONTE_CARLO),
        ("Gates", ["--target-kpp"]),
        ("Outputs", ["--json", "--csv", "--plot", "--html", "--junit", "--quiet"]),
        ("Scale-out and checkpoints", ["--workers", "--ray"]),
        ("Analog forward pipeline", ANALOG),
    ],
    "harden": [
        ("Outputs", ["--output", "--report", "--quiet"]),
        (
            "Training",
            [
                "--data",
                "--method",
                "--val-data",
                "--epochs",
                "--batch-size",
                "--lr",
                "--seed",
                "--rng",
                "--device",
                "--limit",
            ],
        ),
        ("Device", [*DEVICE]),
        ("Before/after report", ["--k", "--eval-samples", "--eval-sigmas"]),
        (
            "TRICE (--method trice)",
            [
                "--trice-start",
                "--trice-end",
                "--threshold",
                "--warmup",
                "--search-samples",
                "--rc-negative",
            ],
        ),
        (
            "BayesFT (--method bayesft)",
            [
                "--max-dropout",
                "--trials",
                "--epochs-per-trial",
                "--objective-samples",
                "--train-draws",
                "--study",
            ],
        ),
        ("Scale-out and checkpoints", ["--checkpoint-dir", "--resume", "--workers", "--ray"]),
        ("What to audit", ["--config"]),
        ("Analog forward pipeline", ANALOG),
    ],
}


def _panels(command) -> list[tuple[str, list[str]]]:
    """(panel, long option names) in the order --help shows them (panels by first option)."""
    panels: dict[str, list[str]] = {}
    for param in command.params:
        if param.param_type_name != "option" or "--help" in param.opts:
            continue
        long = next(name for name in param.opts if name.startswith("--"))
        panels.setdefault(param.rich_help_panel, []).append(long)
    return list(panels.items())


@pytest.mark.parametrize("name", sorted(HELP_LAYOUT))
def test_help_lists_every_option_in_its_panel_in_the_same_order(name: str) -> None:
    command = typer.main.get_command(app).commands[name]
    assert _panels(command) == HELP_LAYOUT[name]


def test_a_group_expands_in_place_and_hands_the_command_its_parsed_value() -> None:
    calls: list[dict] = []
    extra = ArgGroup(
        "demo",
        (
            Flag("alpha", Annotated[int | None, typer.Option("--alpha")]),
            Flag("beta_text", Annotated[str | None, typer.Option("--beta")], key="beta",
                 parse=lambda text: tuple(float(v) for v in text.split(","))),
        ),
    )  # fmt: skip

    @uses_groups
    def command(
        model: Annotated[Path, typer.Argument()],
        demo: ParsedFlags = extra,
        last: Annotated[bool, typer.Option("--last")] = False,
    ) -> None:
        calls.append({"model": model, "demo": dict(demo), "last": last})

    demo_app = typer.Typer()
    demo_app.command()(command)
    demo_app.command("other")(lambda: None)
    click_command = typer.main.get_command(demo_app).commands["command"]
    assert [p.name for p in click_command.params] == ["model", "alpha", "beta_text", "last"]
    result = typer.testing.CliRunner().invoke(
        demo_app, ["command", "m.onnx", "--beta", "0.5,2", "--last"]
    )
    assert result.exit_code == 0, result.output
    assert calls == [
        {"model": Path("m.onnx"), "demo": {"alpha": None, "beta": (0.5, 2.0)}, "last": True}
    ]


def test_groups_parse_text_into_the_settings_values() -> None:
    raw = {flag.name: None for flag in AUDIT.flags}
    raw.update(sigma="0:0.2:0.1", layers=["a*"], mean="0.5,1", samples=7)
    parsed = AUDIT.parse(raw)
    assert parsed["sigma"] == (0.0, 0.1, 0.2) and parsed["layers"] == ("a*",)
    assert parsed["mean"] == (0.5, 1.0) and parsed["samples"] == 7 and parsed["exclude"] is None
    effects = EFFECTS.parse(
        {"time_spec": "1s,1h", "drift_nu": None, "drift_nu_std": None, "drift_t0": "20s",
         "compensation": None, "stuck_at": "0.01,0.02"}
    )  # fmt: skip
    assert effects["time"] == (1.0, 3600.0) and effects["drift_t0"] == 20.0
    assert effects["stuck_at"] == (0.01, 0.02)
    outputs = OUTPUTS.without("plot_path").parse(
        {"json_path": "-", "csv_path": None, "html_path": None, "junit_path": None, "quiet": True}
    )
    assert outputs.machine_output and outputs.quiet and outputs.plot is None


def _long_flag(info) -> str:
    flag = next(d for d in (info.default, *info.param_decls) if str(d).startswith("--"))
    return flag.split("/")[0]


def test_every_audit_command_takes_every_flag_of_the_shared_groups() -> None:
    commands = typer.main.get_command(app).commands
    for group in (AUDIT, EFFECTS):
        flags = {_long_flag(f.alias.__metadata__[0]) for f in group.flags}
        for name in ("eval", "compare", "sensitivity"):
            own = {opt for param in commands[name].params for opt in param.opts}
            assert flags <= own, (name, flags - own)


@pytest.mark.parametrize("command", ["eval", "compare", "sensitivity"])
def test_each_command_checks_its_options_once(
    run_cli, monkeypatch, mlp_onnx, blobs_npz, command: str
) -> None:
    """The CLI checks before its output checks; the library, and every audit a command runs,
    take that check (options.CheckedOptions) instead of checking again."""
    from ftaudit import evaluation

    calls = []
    real = evaluation.validate_options
    monkeypatch.setattr(evaluation, "validate_options", lambda **kw: calls.append(kw) or real(**kw))
    models = (mlp_onnx, mlp_onnx) if command == "compare" else (mlp_onnx,)
    args = (command, *models, "--data", blobs_npz, "--sigma", "0.1,0.2", "--samples", "3", "-q")
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert len(calls) == 1 and calls[0]["sigmas"] == (0.1, 0.2) and calls[0]["samples"] == 3
    code, _, err = run_cli(*args, "--k", "0")
    assert code == 2 and "k must lie strictly between 0 and 100" in err and len(calls) == 2
    # the library alone still checks what it is given
    with pytest.raises(evaluation.UserError, match="samples must be at least 1"):
        evaluation.audit(mlp_onnx, blobs_npz, sigmas=[0.1], samples=0)
    stale = real(sigmas=[0.1], samples=3, k=1, seed=0, batch_size=512, device="cpu")
    with pytest.raises(evaluation.UserError, match="samples must be at least 1"):
        evaluation.audit(mlp_onnx, blobs_npz, sigmas=[0.1], samples=0, checked=stale)
