"""ONNX Runtime's thread spinning in the Monte Carlo, quiet and under load (docs/benchmarks.md).

Times ms per Monte Carlo sample (LeNet, sigma 0.3, the 2,000 shipped images) with the
Monte Carlo's sessions not spinning between runs (ftaudit's default), spinning (ONNX Runtime's
default, FTAUDIT_ORT_SPINNING=1), and spinning inside a run only (``session.force_spinning_stop``).
Each measurement is its own process, the modes alternate, and "under load" runs ``--busy``
busy-looping processes beside it (other jobs on the same cores). ``--read-noise S`` runs the
analog pipeline (DAC 8, ADC 8, read noise S), whose read-noise draws run on the helper thread
during the session's runs; ``--drift`` times drift rows (1 hour), whose per-cell drift draws
run on the helper thread too.

    python benchmarks/spinning.py [--busy 2] [--repeats 2] [--read-noise 0.06] [--drift]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("not spinning", "spinning", "spinning inside a run")

CHILD = """
import statistics, sys
sys.path.insert(0, {here!r})
mode = {mode!r}
import ftaudit.models.ort_spinning as om
om.SPIN_BETWEEN_RUNS = mode != "not spinning"
if mode == "spinning inside a run":
    import onnxruntime as ort
    base = ort.SessionOptions
    class Options(base):
        def __init__(self):
            super().__init__()
            self.add_session_config_entry("session.force_spinning_stop", "1")
    ort.SessionOptions = Options
import mc_throughput as mt
from ftaudit.data import load_dataset
from ftaudit.models import load_model
data = load_dataset(mt.DATA)
path = mt.MODELS / "lenet.onnx"
x = load_model(path).fit_input(data.x)
pipeline = None
if {read_noise!r}:
    from ftaudit.analog import ForwardPipeline
    pipeline = ForwardPipeline(dac_bits=8, adc_bits=8, read_noise={read_noise!r})
effects = mt.drift_effects("none") if {drift!r} else None
timed = mt.monte_carlo_runner(path, x, data.y, pipeline=pipeline, effects=effects)
timed(10)
print(statistics.median(timed(20) for _ in range(8)) * 1e3)
"""


def _busy() -> None:
    while True:
        pass


def measure(mode: str, read_noise: float = 0.0, drift: bool = False) -> float:
    code = CHILD.format(here=str(HERE), mode=mode, read_noise=read_noise, drift=drift)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(busy: int, repeats: int, read_noise: float = 0.0, drift: bool = False) -> dict[str, float]:
    """Median ms per sample of each mode over ``repeats`` alternating rounds."""
    load = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(busy)]
    for process in load:
        process.start()
    try:
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(repeats):
            for mode in MODES:
                times[mode].append(measure(mode, read_noise, drift))
    finally:
        for process in load:
            process.terminate()
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy processes for 'under load'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--read-noise", type=float, default=0.0, help="analog pipeline's")
    parser.add_argument("--drift", action="store_true", help="time drift rows (1 hour)")
    parser.add_argument("--quiet-only", action="store_true", help="skip the busy rows")
    args = parser.parse_args()
    rows = {"quiet": run(0, args.repeats, args.read_noise, args.drift)}
    if not args.quiet_only:
        rows[f"{args.busy} busy processes"] = run(
            args.busy, args.repeats, args.read_noise, args.drift
        )
    print("| machine | " + " | ".join(f"{mode}: ms/sample" for mode in MODES) + " |")
    print("| --- |" + " ---: |" * len(MODES))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[mode]:.2f}" for mode in MODES) + " |")


if __name__ == "__main__":
    main()
