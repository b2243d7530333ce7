"""action.yml (GitHub composite action) and the workflow in docs/ci.md stay in step with the CLI.

The inputs must map to real ``ftaudit eval`` options, and the audit step's shell script is run
here the way GitHub runs it (``bash --noprofile --norc -eo pipefail``) against a small model.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML parses action.yml (it comes with optuna)")

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
CI_DOC = REPO / "docs" / "ci.md"
#: inputs that configure the action itself rather than name an `ftaudit eval` option
ACTION_ONLY_INPUTS = {
    "model",  # the MODEL argument
    "extra-args",
    "report-dir",
    "working-directory",
    "fail-on-gate",
    "python-version",
    "ftaudit-version",
    "extras",
}
#: options the audit step always passes itself
WRITTEN_BY_THE_ACTION = {"--html", "--junit", "--json"}


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    return yaml.safe_load(ACTION.read_text(encoding="utf-8"))


def _step(action: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in action["runs"]["steps"] if s.get("id") == step_id)


def _eval_options() -> set[str]:
    """Every option name of `ftaudit eval`, read from the click command typer builds."""
    import typer.main

    from ftaudit.cli import app

    command = typer.main.get_command(app).commands["eval"]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def test_action_is_a_composite_action(action: dict[str, Any]) -> None:
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    assert steps[0]["with"]["python-version"] == "${{ inputs.python-version }}"
    install = next(s for s in steps if s.get("name") == "Install ftaudit")
    assert "${{ github.action_path }}" in install["env"].values()
    for step in steps:
        if "run" in step:
            assert step["shell"] == "bash"
            # inputs reach scripts through env only: an input pasted into a script is injectable
            assert "${{" not in step["run"], step["name"]
    for name, spec in action["inputs"].items():
        assert spec.get("description"), f"input {name} has no description"
        assert spec.get("required", False) == (name == "model")
    for name, spec in action["outputs"].items():
        assert spec["value"] == f"${{{{ steps.audit.outputs.{name} }}}}"
        assert f"{name}=" in _step(action, "audit")["run"]


def test_every_input_is_an_eval_option(action: dict[str, Any]) -> None:
    options = _eval_options()
    audit = _step(action, "audit")
    for name in set(action["inputs"]) - ACTION_ONLY_INPUTS:
        assert f"--{name}" in options, f"input {name} is not an `ftaudit eval` option"
        variable = "FTAUDIT_" + name.upper().replace("-", "_")
        assert audit["env"][variable] == f"${{{{ inputs.{name} }}}}"
        assert f'option --{name} "${variable}"' in audit["run"]
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", audit["run"]))
    assert used - options == set(), "the audit step passes options `ftaudit eval` lacks"
    assert used >= WRITTEN_BY_THE_ACTION


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_audit_step(
    action: dict[str, Any], tmp_path: Path, inputs: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run the audit step's script as GitHub would, with `ftaudit` from this source tree."""
    step = _step(action, "audit")
    values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    values.update(inputs)
    env = {key: os.environ[key] for key in ("HOME", "LANG", "SYSTEMROOT") if key in os.environ}
    for variable, expression in step["env"].items():
        match = re.fullmatch(r"\$\{\{ inputs\.([a-z-]+) \}\}", expression)
        assert match, f"{variable} must come from an input"
        env[variable] = values[match.group(1)]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _shim(bin_dir, "python", f'exec "{sys.executable}" "$@"')
    _shim(bin_dir, "ftaudit", f'exec "{sys.executable}" -m ftaudit "$@"')
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env["PYTHONPATH"] = str(REPO)
    env["GITHUB_OUTPUT"] = str(tmp_path / "github_output")
    script = tmp_path / "audit.sh"
    script.write_text(step["run"])
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output_file = Path(env["GITHUB_OUTPUT"])
    lines = output_file.read_text().splitlines() if output_file.exists() else []
    return done, dict(line.split("=", 1) for line in lines)


def test_audit_step_runs_records_a_failed_gate_and_writes_reports(
    action: dict[str, Any], tmp_path: Path, convnet_onnx: Path, blobs_npz: Path
) -> None:
    done, outputs = _run_audit_step(
        action,
        tmp_path,
        {
            "model": str(convnet_onnx),
            "data": str(blobs_npz),
            "sigma": "0,3.0",
            "samples": "5",
            "seed": "3",
            "fail-under-kpp": "0.99",
            "extra-args": "--k 5 --quiet --exclude 'no such * layer'",
            "report-dir": "reports dir",
        },
    )
    assert done.returncode == 0, done.stderr  # the step records the code; the next one fails
    assert outputs["exit-code"] == "1", done.stderr
    assert "gate FAILED" in done.stderr
    report_dir = tmp_path / "work" / "reports dir"
    assert outputs["html"] == str(report_dir / "ftaudit.html")
    assert outputs["junit"] == str(report_dir / "ftaudit-junit.xml")
    assert outputs["json"] == str(report_dir / "ftaudit.json")
    assert Path(outputs["html"]).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    root = ET.parse(outputs["junit"]).getroot()
    assert root.get("tests") == "2"
    assert int(root.get("failures", "0")) >= 1
    report = json.loads(Path(outputs["json"]).read_text())
    # extra-args reached the CLI, split like a shell: the quoted glob stayed one word
    assert report["k"] == 5.0
    assert report["options"]["exclude"] == ["no such * layer"]


def test_audit_step_bad_extra_args_is_exit_2(action: dict[str, Any], tmp_path: Path) -> None:
    done, outputs = _run_audit_step(
        action, tmp_path, {"model": "m.onnx", "extra-args": "--k 'unbalanced"}
    )
    assert done.returncode == 0, done.stderr
    assert outputs == {"exit-code": "2"}
    assert "extra-args cannot be split" in done.stderr + done.stdout


def test_gate_verdict_step(action: dict[str, Any], tmp_path: Path) -> None:
    step = next(s for s in action["runs"]["steps"] if s.get("name") == "Gate verdict")
    script = tmp_path / "verdict.sh"
    script.write_text(step["run"])

    def verdict(code: str, fail_on_gate: str = "true") -> int:
        env = {"FTAUDIT_EXIT_CODE": code, "FTAUDIT_FAIL_ON_GATE": fail_on_gate, "PATH": "/bin"}
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            env=env,
            capture_output=True,
            check=False,
        ).returncode

    assert verdict("0") == 0
    assert verdict("1") == 1
    assert verdict("1", fail_on_gate="false") == 0
    assert verdict("2", fail_on_gate="false") == 1
    assert verdict("") == 1


def test_worked_workflow_in_the_docs_uses_real_inputs(action: dict[str, Any]) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", CI_DOC.read_text(encoding="utf-8"), re.S)
    workflows = [yaml.safe_load(block) for block in blocks]
    steps = [
        step
        for workflow in workflows
        if isinstance(workflow, dict) and "jobs" in workflow
        for job in workflow["jobs"].values()
        for step in job["steps"]
    ]
    ours = [s for s in steps if s.get("uses", "").split("@")[0].endswith("/ftaudit")]
    assert len(ours) == 1
    given = set(ours[0]["with"])
    assert given <= set(action["inputs"])
    assert "model" in given
    junit_step = next(s for s in steps if "junit" in str(s.get("with", {}).get("path", "")))
    assert junit_step["with"]["path"].endswith("ftaudit-junit.xml")
