"""What ``--help`` shows beyond the options: the help panels, worked examples per command, and
"no such option" errors whose suggestions come from the command's own options (and say which
other command has the option, when one does).

Kept apart from the command modules so they stay a list of options; nothing here imports more than
typer and click.
"""

from __future__ import annotations

import difflib
from typing import Any

from typer.core import TyperCommand

try:  # typer vendors its own click (since 0.2x); older typers use click itself
    from typer._click import Command, Context
    from typer._click.exceptions import NoSuchOption, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import Command, Context
    from click.exceptions import NoSuchOption, UsageError

# Help panels, in the order a first-time user reads them.
AUDIT_PANEL = "What to audit"
DEVICE_PANEL = "Device"
MONTE_CARLO_PANEL = "Monte Carlo"
OUTPUTS_PANEL = "Outputs"
GATES_PANEL = "Gates"
SCALE_OUT_PANEL = "Scale-out and checkpoints"
TRAINING_PANEL = "Training"
TRICE_PANEL = "TRICE (--method trice)"
BAYESFT_PANEL = "BayesFT (--method bayesft)"
REPORT_PANEL = "Before/after report"
ANALOG_PANEL = "Analog forward pipeline"
HELP_PANEL = "Help"


def examples(*lines: tuple[str, str]) -> str:
    """A help epilog of worked examples: (what it does, the command), as markdown."""
    blocks = [f"{what}:\n\n```\n{command}\n```" for what, command in lines]
    return "\n\n".join(
        ["**Examples** (run from the ftaudit folder; data from ftaudit.toml)", *blocks]
    )


EVAL_EXAMPLES = examples(
    (
        "Mean and KPP of the shipped LeNet over a sweep of device variation, with a plot",
        "ftaudit eval sample_models/lenet.onnx --sigma 0:0.5:0.1 --plot lenet.png",
    ),
    (
        "A CI gate on an RRAM device: exit 1 if KPP < 80%, JUnit and HTML for the CI page",
        "ftaudit eval sample_models/lenet.onnx --sigma 0.1,0.2 --noise rram --samples 200 "
        "--fail-under-kpp 0.8 --junit gates.xml --html report.html",
    ),
    (
        "Conductance drift of a PCM device a second, a day and a year after programming",
        "ftaudit eval sample_models/lenet.onnx --noise pcm --time 1s,1d,1y --samples 100",
    ),
)

HARDEN_EXAMPLES = examples(
    (
        "Retrain the LeNet with TRICE for sigma 0.5 (writes lenet_trice.onnx)",
        "ftaudit harden sample_models/lenet.onnx --data sample_models/fmnist_train_5000.npz "
        "--sigma 0.5 --epochs 2 -o lenet_trice.onnx",
    ),
    (
        "NoiseTrain, checkpointed every epoch; rerun with --resume after an interrupt",
        "ftaudit harden sample_models/lenet.onnx --data sample_models/fmnist_train_5000.npz "
        "--sigma 0.5 --method noise -o lenet_noise.onnx --checkpoint-dir ckpt",
    ),
)

COMPARE_EXAMPLES = examples(
    (
        "Gate a retrained model (from the harden example) against the original",
        "ftaudit compare sample_models/lenet.onnx lenet_trice.onnx --sigma 0.3,0.5 "
        "--samples 200 --fail-if-worse 0.01 --html compare.html",
    ),
    (
        "An ONNX and a TorchScript export of one network on the same noise draws",
        "ftaudit compare sample_models/lenet.onnx sample_models/lenet.pt --sigma 0.3 --samples 100",
    ),
)

SENSITIVITY_EXAMPLES = examples(
    (
        "Rank the LeNet's layers and find which to keep digital for KPP >= 70%",
        "ftaudit sensitivity sample_models/lenet.onnx --sigma 0.5 --target-kpp 0.7 "
        "--html layers.html",
    ),
    (
        "Which layers break first a year after programming a PCM chip",
        "ftaudit sensitivity sample_models/lenet.onnx --noise pcm --time 1y --samples 50",
    ),
)

INSPECT_EXAMPLES = examples(
    ("The crossbar layers ftaudit perturbs", "ftaudit inspect sample_models/lenet.onnx"),
    (
        "Only the convolutions, as JSON",
        "ftaudit inspect sample_models/lenet.onnx --layers '*conv*' --json",
    ),
)


#: option -> (panel, metavar) for eval, compare and sensitivity (metavar None: a flag)
_SHARED_LAYOUT: dict[str, tuple[str, str | None]] = {
    "--data": (AUDIT_PANEL, "PATH"),
    "--limit": (AUDIT_PANEL, "N"),
    "--layers": (AUDIT_PANEL, "GLOB"),
    "--exclude": (AUDIT_PANEL, "GLOB"),
    "--output": (AUDIT_PANEL, "NAME"),
    "--mean": (AUDIT_PANEL, "MEAN"),
    "--std": (AUDIT_PANEL, "STD"),
    "--config": (AUDIT_PANEL, "PATH"),
    "--sigma": (DEVICE_PANEL, "SIGMAS"),
    "--noise": (DEVICE_PANEL, "NAME"),
    "--bits": (DEVICE_PANEL, "H"),
    "--cell-bits": (DEVICE_PANEL, "B"),
    "--clamp": (DEVICE_PANEL, None),
    "--cell-noise": (DEVICE_PANEL, "independent|shared"),
    "--differential": (DEVICE_PANEL, None),
    "--time": (DEVICE_PANEL, "TIMES"),
    "--drift-nu": (DEVICE_PANEL, "NU"),
    "--drift-nu-std": (DEVICE_PANEL, "STD"),
    "--drift-t0": (DEVICE_PANEL, "T0"),
    "--compensation": (DEVICE_PANEL, "MODE"),
    "--stuck-at": (DEVICE_PANEL, "LOW,HIGH"),
    "--fold-batchnorm": (DEVICE_PANEL, None),
    "--samples": (MONTE_CARLO_PANEL, "N"),
    "--k": (MONTE_CARLO_PANEL, "K"),
    "--seed": (MONTE_CARLO_PANEL, "SEED"),
    "--rng": (MONTE_CARLO_PANEL, "fast|ziggurat"),
    "--target-ci": (MONTE_CARLO_PANEL, "WIDTH"),
    "--test-set-error": (MONTE_CARLO_PANEL, None),
    "--batch-size": (MONTE_CARLO_PANEL, "B"),
    "--batch-samples": (MONTE_CARLO_PANEL, "S"),
    "--device": (MONTE_CARLO_PANEL, "cpu|cuda"),
    "--json": (OUTPUTS_PANEL, "PATH"),
    "--csv": (OUTPUTS_PANEL, "PATH"),
    "--plot": (OUTPUTS_PANEL, "PATH.png"),
    "--html": (OUTPUTS_PANEL, "PATH.html"),
    "--junit": (OUTPUTS_PANEL, "PATH.xml"),
    "--quiet": (OUTPUTS_PANEL, None),
    "--fail-under-kpp": (GATES_PANEL, "X"),
    "--fail-under-mean": (GATES_PANEL, "X"),
    "--fail-if-worse": (GATES_PANEL, "TOL"),
    "--gate-correction": (GATES_PANEL, "holm|per-row"),
    "--target-kpp": (GATES_PANEL, "X"),
    "--workers": (SCALE_OUT_PANEL, "N"),
    "--ray": (SCALE_OUT_PANEL, "ADDRESS"),
    "--checkpoint-dir": (SCALE_OUT_PANEL, "DIR"),
    "--resume": (SCALE_OUT_PANEL, None),
    "--dac-bits": (ANALOG_PANEL, "N"),
    "--adc-bits": (ANALOG_PANEL, "N"),
    "--adc-bound": (ANALOG_PANEL, "B"),
    "--read-noise": (ANALOG_PANEL, "S"),
    "--weight-read-noise": (ANALOG_PANEL, "S"),
    "--weight-read-noise-type": (ANALOG_PANEL, "additive|pcm"),
    "--tile-size": (ANALOG_PANEL, "ROWSxCOLS"),
    "--weight-scaling": (ANALOG_PANEL, "layer|column|tile"),
}
_HARDEN_LAYOUT: dict[str, tuple[str, str | None]] = {
    **_SHARED_LAYOUT,
    "--output": (OUTPUTS_PANEL, "PATH"),
    "--report": (OUTPUTS_PANEL, "PATH.json"),
    "--data": (TRAINING_PANEL, "PATH"),
    "--val-data": (TRAINING_PANEL, "PATH"),
    "--limit": (TRAINING_PANEL, "N"),
    "--method": (TRAINING_PANEL, "NAME"),
    "--epochs": (TRAINING_PANEL, "N"),
    "--batch-size": (TRAINING_PANEL, "B"),
    "--lr": (TRAINING_PANEL, "LR"),
    "--seed": (TRAINING_PANEL, "SEED"),
    "--rng": (TRAINING_PANEL, "fast|ziggurat"),
    "--device": (TRAINING_PANEL, "cpu|cuda"),
    "--sigma": (DEVICE_PANEL, "SIGMA"),
    "--trice-start": (TRICE_PANEL, "S"),
    "--trice-end": (TRICE_PANEL, "S"),
    "--threshold": (TRICE_PANEL, "TH"),
    "--warmup": (TRICE_PANEL, "N"),
    "--search-samples": (TRICE_PANEL, "N"),
    "--rc-negative": (TRICE_PANEL, "magnitude|value"),
    "--max-dropout": (BAYESFT_PANEL, "P"),
    "--trials": (BAYESFT_PANEL, "N"),
    "--epochs-per-trial": (BAYESFT_PANEL, "N"),
    "--objective-samples": (BAYESFT_PANEL, "N"),
    "--train-draws": (BAYESFT_PANEL, "D"),
    "--study": (BAYESFT_PANEL, "PATH.db"),
    "--eval-samples": (REPORT_PANEL, "N"),
    "--eval-sigmas": (REPORT_PANEL, "SIGMAS"),
    "--k": (REPORT_PANEL, "K"),
}
_INSPECT_LAYOUT: dict[str, tuple[str, str | None]] = {
    "--layers": (AUDIT_PANEL, "GLOB"),
    "--exclude": (AUDIT_PANEL, "GLOB"),
    "--output": (AUDIT_PANEL, "NAME"),
    "--json": (OUTPUTS_PANEL, None),
}
LAYOUTS = {"harden": _HARDEN_LAYOUT, "inspect": _INSPECT_LAYOUT}


def lay_out(command: Command) -> None:
    """Put each option of ``command`` in its help panel with a metavar that says what it takes
    (not typer's type names), and name arguments by their role (MODEL, BASELINE, ...)."""
    layout = LAYOUTS.get(command.name or "", _SHARED_LAYOUT)
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            param.metavar = (param.name or "").upper()
            continue
        long_name = next((name for name in param.opts if name.startswith("--")), "")
        if long_name not in layout:
            continue
        panel, metavar = layout[long_name]
        param.rich_help_panel = panel  # type: ignore[attr-defined]  # typer's options have it
        param.metavar = "" if metavar is None else metavar


def _long_names(command: Command) -> list[str]:
    return [
        name
        for param in command.params
        if getattr(param, "param_type_name", "") == "option"
        for name in param.opts
        if name.startswith("--") and name != "--help"
    ]


def no_such_option(command: Command, ctx: Context, name: str) -> UsageError:
    """The error for an unknown option: close matches among this command's own options, and
    the other commands that have it, e.g. "--report is an option of harden"."""
    own = _long_names(command)
    close = difflib.get_close_matches(name, own, n=3, cutoff=0.75)
    parts = [f"No such option: {name}."]
    siblings = getattr(ctx.parent.command, "commands", {}) if ctx.parent is not None else {}
    elsewhere = sorted(
        other for other, cmd in siblings.items() if cmd is not command and name in _long_names(cmd)
    )
    if elsewhere:
        parts.append(f"It is an option of {' and '.join(elsewhere)}, not of {command.name}.")
    if close:
        parts.append(f"Did you mean {' or '.join(close)}?")
    parts.append(f"See 'ftaudit {command.name} --help'.")
    return UsageError(" ".join(parts), ctx=ctx)


class HelpfulCommand(TyperCommand):
    """A typer command with grouped help and unknown-option errors that suggest only its own
    options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lay_out(self)

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        """``[OPTIONS] MODEL``: arguments by their role, not typer's {model} / [model]."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", "") == "argument":
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
        return pieces

    def get_help_option(self, ctx: Context) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""  # a flag takes no value (typer would show <bool>)
            option.rich_help_panel = HELP_PANEL  # last, after the panels that matter
        return option

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as exc:
            raise no_such_option(self, ctx, exc.option_name) from None
