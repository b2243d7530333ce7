"""Options shared by several commands, defined once: each alias is the option's flag, type and
help, reused by every command that takes it (the defaults in brackets live in the config and
settings dataclasses, not here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelArg = Annotated[
    Path, typer.Argument(help="ONNX (.onnx) or TorchScript (torch.jit.save) file.")
]
LayersOpt = Annotated[
    list[str] | None,
    typer.Option("--layers", help="Glob over crossbar weight names to perturb (repeatable)."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Glob over crossbar weight names to keep exact (repeatable)."),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        help="Output holding the logits: an ONNX output name, or the position of a torch "
        "model's returned tensor (1 or output[1]) (default: first).",
    ),
]
BitsOpt = Annotated[int | None, typer.Option("--bits", help="Device models: weight bits H [4].")]
CellBitsOpt = Annotated[
    int | None, typer.Option("--cell-bits", help="Device models: bits per cell B [2].")
]
ClampOpt = Annotated[
    bool | None,
    typer.Option("--clamp/--no-clamp", help="Device models: keep cell conductances >= 0 [clamp]."),
]
CellNoiseOpt = Annotated[
    str | None,
    typer.Option(
        "--cell-noise",
        help="Device models: one dg per cell (independent) or per weight (shared) [independent].",
    ),
]
DifferentialOpt = Annotated[
    bool | None,
    typer.Option(
        "--differential/--single-device",
        help="Each weight on a G+/G- pair, both programmed and noisy [the device file's, else "
        "single device].",
    ),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option("--html", help="Write a self-contained HTML report here (no network references)."),
]
JunitOpt = Annotated[
    Path | None,
    typer.Option("--junit", help="Write JUnit XML here: one test case per gate, for CI."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default: ./ftaudit.toml or [tool.ftaudit])."),
]
TimeOpt = Annotated[
    str | None,
    typer.Option(
        "--time", help="Drift: times after programming, e.g. 1s,1h,1d,1y (s, min, h, d, w, y)."
    ),
]
DriftNuOpt = Annotated[
    float | None, typer.Option("--drift-nu", help="Drift exponent nu, mean [profile or 0.05].")
]
DriftNuStdOpt = Annotated[
    float | None,
    typer.Option("--drift-nu-std", help="Drift exponent spread across devices [profile or 0.01]."),
]
DriftT0Opt = Annotated[
    str | None, typer.Option("--drift-t0", help="Drift reference time t0 [profile or 20s].")
]
CompensationOpt = Annotated[
    str | None,
    typer.Option(
        "--compensation",
        help="Drift compensation: none, global (alias gdc) or both [both].",
    ),
]
StuckAtOpt = Annotated[
    str | None,
    typer.Option("--stuck-at", help="Fractions of cells stuck low,high, e.g. 0.01,0.005."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Local worker processes for the Monte Carlo samples [1]."),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run samples as Ray tasks: --ray alone starts a local cluster; --ray auto or "
        "--ray HOST:PORT joins one (pip install 'ftaudit[ray]').",
    ),
]
EvalCheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint-dir", help="Keep counted samples here so --resume can continue."),
]
BatchSamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-samples",
        help="Monte Carlo samples per forward pass (torch vmap) [16 on cuda, else 1].",
    ),
]
EvalResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run checkpointed in --checkpoint-dir.")
]
DataOpt = Annotated[
    str | None, typer.Option("--data", help=".npz (x, y), IDX images file, or image folder.")
]
SigmaOpt = Annotated[
    str | None,
    typer.Option("--sigma", help="Device variation: 0.3, a list 0.1,0.2 or a range 0:0.4:0.05."),
]
NoiseOpt = Annotated[
    str | None,
    typer.Option(
        "--noise",
        help="lognormal, gaussian, rram, fefet1, fefet2, a profile (pcm, ...) or DEVICE.toml.",
    ),
]
SamplesOpt = Annotated[
    int | None,
    typer.Option("--samples", help="Monte Carlo samples (noise draws) per sigma [1000]."),
]
KOpt = Annotated[float | None, typer.Option("--k", help="Percentile for KPP, in (0, 100) [1].")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed [0].")]
RngOpt = Annotated[
    str | None,
    typer.Option(
        "--rng",
        help="Normal generator: fast (Box-Muller) or ziggurat (numpy's; reproduces reports made "
        "before fast) [fast].",
    ),
]
#: harden's --rng: the Monte Carlo's generator; its training noise stays on ziggurat
HardenRngOpt = Annotated[
    str | None,
    typer.Option(
        "--rng",
        help="Normal generator of the validation Monte Carlo and the before/after report: fast "
        "(Box-Muller) or ziggurat (numpy's; reproduces runs made before fast) [fast]. Training "
        "noise is ziggurat under both.",
    ),
]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Inference batch size [512].")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda [cpu].")]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", help="Evaluate on only the first N examples of the data (not --samples)."
    ),
]
MeanOpt = Annotated[
    str | None, typer.Option("--mean", help="Normalise: subtract (scalar or per channel).")
]
StdOpt = Annotated[
    str | None, typer.Option("--std", help="Normalise: divide (scalar or per channel).")
]
JsonOpt = Annotated[
    str | None, typer.Option("--json", help="Write the JSON report here ('-' for stdout).")
]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Write a PNG plot of mean/KPP vs sigma.")
]
CsvOpt = Annotated[Path | None, typer.Option("--csv", help="Write a CSV table here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No table on stdout.")]
# the analog forward pipeline (ftaudit.analog): parsed into a ForwardPipeline in one call
DacBitsOpt = Annotated[
    int | None, typer.Option("--dac-bits", help="Analog: input DAC bits per crossbar layer.")
]
AdcBitsOpt = Annotated[
    int | None, typer.Option("--adc-bits", help="Analog: ADC bits per tile output (saturating).")
]
AdcBoundOpt = Annotated[
    float | None,
    typer.Option("--adc-bound", help="Analog: fixed ADC bound, normalised [calibrated]."),
]
ReadNoiseOpt = Annotated[
    float | None,
    typer.Option("--read-noise", help="Analog: output noise per read, normalised units [0]."),
]
WeightReadNoiseOpt = Annotated[
    float | None,
    typer.Option(
        "--weight-read-noise",
        help="Analog: Gaussian noise on every weight per read, max|W| = 1 [0].",
    ),
]
WeightReadNoiseTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--weight-read-noise-type",
        help="Analog: weight read noise additive (same on every weight) or pcm "
        "(variance ~ |W|, aihwkit's PCM_READ) [additive].",
    ),
]
TileSizeOpt = Annotated[
    str | None, typer.Option("--tile-size", help="Analog: crossbar ROWSxCOLS, e.g. 256x256.")
]
WeightScalingOpt = Annotated[
    str | None,
    typer.Option("--weight-scaling", help="Analog: max|W| per layer, column or tile [layer]."),
]
SensitivitySamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--samples", help="Monte Carlo samples per sigma (and time) of each of the runs [200]."
    ),
]
