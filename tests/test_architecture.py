"""The module graph: no import cycles, and dependencies run one way (docs/architecture.md).

Imports are read from the source with ``ast`` (nothing is imported), including imports inside
functions and under ``TYPE_CHECKING``: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ftaudit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    names = {f: _module_name(f) for f in files}
    known = set(names.values())

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {}
    for file, name in names.items():
        is_package = file.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                module = resolve(target)
                # a package re-exporting its own children is not a cycle
                if module and module != name and not (is_package and module.startswith(name + ".")):
                    found.add(module)
        graph[name] = found
    return graph


def test_no_import_cycles():
    try:
        tuple(graphlib.TopologicalSorter(_graph()).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_finds_a_cycle():
    """The check above can fail: a two-module cycle is reported."""
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("ftaudit.report", "ftaudit.cli"),
        ("ftaudit.harden", "ftaudit.cli"),
        ("ftaudit.noise", "ftaudit.evaluation"),
        ("ftaudit.models", "ftaudit.evaluation"),
        ("ftaudit.stats", "ftaudit.evaluation"),
        ("ftaudit.montecarlo", "ftaudit.evaluation"),
        ("ftaudit.parallel", "ftaudit.evaluation"),
        ("ftaudit.report", "ftaudit.device_effects"),
        ("ftaudit.report", "ftaudit.models"),
        ("ftaudit.results", "ftaudit.device_effects"),
        ("ftaudit.results", "ftaudit.models"),
        ("ftaudit.results", "ftaudit.evaluation"),
        ("ftaudit.results", "ftaudit.harden"),
        ("ftaudit.results", "ftaudit.report"),
        ("ftaudit.options", "ftaudit.evaluation"),
        ("ftaudit.noise", "ftaudit.effects_engine"),
        ("ftaudit.noise", "ftaudit.montecarlo"),
        ("ftaudit.report", "ftaudit.effects_engine"),
        ("ftaudit.results", "ftaudit.effects_engine"),
    ],
)
def test_dependencies_run_one_way(lower, upper):
    """Library layers never import the layers above them (the CLI, the api functions)."""
    graph = _graph()
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module == lower or module.startswith(lower + ".")
        for target in targets
        if target == upper or target.startswith(upper + ".")
    )
    assert not offenders


def test_keyed_draws_are_a_leaf():
    """ftaudit.draws, the one home of the random streams, sits below every layer that draws
    (engine, device effects, analog, harden): it imports nothing of ftaudit but its errors."""
    assert _graph()["ftaudit.draws"] <= {"ftaudit.errors"}


#: the device effects of the noise family: one job each, composed by the effects engine only
EFFECT_MODULES = ("ftaudit.noise.drift", "ftaudit.noise.stuck", "ftaudit.noise.compensation")


def test_device_effects_are_independent_noise_classes():
    """Drift, stuck-at and compensation know nothing of each other nor of the engine that
    composes them (ftaudit.effects_engine); nothing in ftaudit imports the old home
    ftaudit.device_effects (kept for outside code only)."""
    graph = _graph()
    for module in EFFECT_MODULES:
        assert not graph[module] & {*EFFECT_MODULES, "ftaudit.noise.effects"}, module
        assert not {t for t in graph[module] if t.startswith("ftaudit.effects_engine")}
    assert set(EFFECT_MODULES) < graph["ftaudit.effects_engine"] | graph["ftaudit.noise.effects"]
    importers = sorted(m for m, targets in graph.items() if "ftaudit.device_effects" in targets)
    assert not importers, importers


def test_cli_modules_stay_small():
    """The CLI is a package of thin shells: no module of it over 400 lines."""
    sizes = {
        path.name: len(path.read_text(encoding="utf-8").splitlines())
        for path in (PACKAGE / "cli").glob("*.py")
    }
    assert sizes and max(sizes.values()) <= 400, sizes


def test_every_command_has_its_module():
    """One module per command, registered on the app in the order --help lists them."""
    from ftaudit.cli.main import COMMANDS, app

    names = [name for name, _, _ in COMMANDS]
    assert names == ["eval", "inspect", "harden", "noise-models", "compare", "sensitivity"]
    assert [command.name for command in app.registered_commands] == names
    for name, function, _ in COMMANDS:
        module = function.__module__.rpartition(".")[2]
        assert module == name.replace("-", "_"), (name, function.__module__)


#: what report writers may import besides each other: the results and pure helpers
REPORT_MAY_IMPORT = (
    "ftaudit",  # the version
    "ftaudit.results",
    "ftaudit.stats",
    "ftaudit.units",
    "ftaudit.text",
    "ftaudit.fileio",
    "ftaudit.errors",
    "ftaudit._optional",
)


def test_report_depends_on_results_only():
    """Report writers read result objects: never an api module (evaluation, compare,
    sensitivity, inspect, harden), a loader or the engine."""
    graph = _graph()
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("ftaudit.report")
        for target in targets
        if not target.startswith("ftaudit.report")
        and not any(target == ok or target.startswith(ok + ".") for ok in REPORT_MAY_IMPORT[1:])
        and target != "ftaudit"
    )
    assert not offenders, offenders


def test_result_types_live_in_results():
    """compare's, sensitivity's, inspect's and harden's result types are defined in results/
    (the api modules only use them)."""
    from ftaudit import compare, inspect, sensitivity
    from ftaudit.harden import api

    for module, name in (
        (compare, "CompareReport"),
        (compare, "PairedSigmaResult"),
        (compare, "WorseGate"),
        (sensitivity, "SensitivityReport"),
        (sensitivity, "SigmaPoint"),
        (inspect, "ModelSummary"),
        (api, "HardenReport"),
    ):
        assert getattr(module, name).__module__.startswith("ftaudit.results."), name
