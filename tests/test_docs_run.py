"""Every command in the docs runs as written: the fenced shell blocks of README.md and docs/*.md
and the examples of each command's --help, on the sample models, in a temporary folder.

Placeholder files (model.onnx, test.npz, train.npz) are the shipped LeNet and small subsets of
the shipped data; sample_models/ holds the same small subsets under the shipped names. Only the
effort is lowered (--samples, --epochs, --workers, ...); a command that exits 2 (bad input) or 3
(a bug) fails the test, a failed gate (exit 1) is a documented outcome.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}

#: commands that need a fresh machine, a cluster or a GPU, skipped by pattern with the reason
SKIPPED = {
    r"^python3 -m venv ": "sets up a fresh machine (the test runs in the installed environment)",
    r"^pip install ": "installs packages",
    r"^ray start ": "starts a Ray cluster",
    r"--ray\b": "needs a Ray cluster (tests/test_parallel.py covers --ray)",
    r"--device cuda": "needs a GPU",
}

#: effort reductions: (pattern, replacement) applied to every ftaudit command
SMALLER = [
    (r"--samples \d+", "--samples 4"),
    (r"--eval-samples \d+", "--eval-samples 4"),
    (r"--search-samples \d+", "--search-samples 4"),
    (r"--epochs \d+", "--epochs 1"),
    (r"--trials \d+", "--trials 2"),
    (r"--workers \d+", "--workers 2"),
]


def fenced_commands(path: Path) -> list[str]:
    """The shell commands of ``path``'s fenced blocks: continuations joined, comments dropped."""
    text = path.read_text(encoding="utf-8")
    commands = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if match.group(1) not in SHELL_LANGUAGES:
            continue
        block = match.group(2).replace("\\\n", " ")
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def help_examples() -> list[str]:
    from ftaudit import cli_help

    epilogs = [getattr(cli_help, name) for name in dir(cli_help) if name.endswith("_EXAMPLES")]
    return [c for text in epilogs for c in re.findall(r"```\n(.*?)\n```", text, re.S)]


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), None)


def smaller(command: str) -> list[str]:
    """The arguments of an ftaudit command with the effort lowered."""
    text = shlex.join(shlex.split(command, comments=True)[1:])
    for pattern, replacement in SMALLER:
        text = re.sub(pattern, replacement, text)
    words = shlex.split(text)
    if words[0] == "harden":
        for flag, value in (("--epochs", "1"), ("--eval-samples", "4")):
            if flag not in words:
                words += [flag, value]
    return words


def all_commands() -> list[tuple[str, str]]:
    found = [(path.name, c) for path in DOCS for c in fenced_commands(path)]
    return found + [("--help", c) for c in help_examples()]


def runnable(command: str) -> list[str]:
    """What the test runs of a documented command: the ftaudit steps of a fresh-machine setup
    line (the quick start's audit), nothing of another skipped one, else the command."""
    if command.startswith("python3 -m venv "):
        return [part.strip() for part in command.split("&&") if part.strip().startswith("ftaudit ")]
    return [] if skip_reason(command) else [command]


def test_the_docs_have_commands_and_the_extractor_sees_them() -> None:
    commands = [c for _, c in all_commands()]
    assert any(c.startswith("ftaudit compare") for c in commands)
    assert any(c.startswith("ftaudit harden") and "lenet_trice.onnx" in c for c in commands)
    assert any(c.startswith("mkdir -p reports") for c in commands)
    # the two fresh-machine setup commands are skipped explicitly, nothing else by accident
    setup = [c for c in commands if c.startswith("python3 -m venv")]
    assert len(setup) == 2 and all(skip_reason(c) for c in setup)
    assert [runnable(c) for c in setup][1] == []  # the test setup line runs nothing
    assert runnable(setup[0])[0].startswith("ftaudit eval sample_models/lenet.onnx --sigma 0:")
    assert smaller("ftaudit eval m.onnx --samples 10000 --workers 8  # why") == (
        ["eval", "m.onnx", "--samples", "4", "--workers", "2"]
    )


def _subset(source: Path, target: Path, n: int) -> None:
    with np.load(source) as data:
        np.savez(target, x=data["x"][:n], y=data["y"][:n])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like a checkout: ftaudit.toml, sample_models/ (small data), placeholders."""
    folder = tmp_path_factory.mktemp("docs_run")
    shipped = ROOT / "sample_models"
    models = folder / "sample_models"
    models.mkdir()
    for name in ("lenet.onnx", "lenet.pt", "mlp.onnx", "mlp.pt"):
        shutil.copy(shipped / name, models / name)
    _subset(shipped / "fmnist_test_2000.npz", models / "fmnist_test_2000.npz", 200)
    _subset(shipped / "fmnist_train_5000.npz", models / "fmnist_train_5000.npz", 300)
    shutil.copy(models / "lenet.onnx", folder / "model.onnx")
    shutil.copy(models / "fmnist_test_2000.npz", folder / "test.npz")
    shutil.copy(models / "fmnist_train_5000.npz", folder / "train.npz")
    (folder / "ftaudit.toml").write_text(
        (ROOT / "ftaudit.toml").read_text(encoding="utf-8").replace("samples = 1000", "samples = 4")
    )
    return folder


@pytest.mark.slow
@pytest.mark.torch
def test_every_documented_command_runs(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """ftaudit commands run in this process (one import of torch and onnxruntime for all of
    them, which keeps the test near a minute); anything else (mkdir) runs in bash."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from ftaudit.cli import run

    monkeypatch.chdir(workspace)
    monkeypatch.delenv("CI", raising=False)
    failures, ran = [], 0
    for source, documented in all_commands():
        for command in runnable(documented):
            if command.startswith("ftaudit "):
                code = run(smaller(command))
            else:
                code = subprocess.run(["bash", "-c", command], check=False).returncode
            err = capfd.readouterr().err
            ran += 1
            if code not in (0, 1) or "Traceback" in err:
                failures.append(f"{source}: {command}\n  exit {code}: {err[-600:]}")
    assert not failures, "\n".join(failures)
    assert ran >= 20
