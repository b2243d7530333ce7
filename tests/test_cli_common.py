"""ftaudit.cli.common: what the commands share after parsing (progress, output files)."""

from __future__ import annotations

from pathlib import Path

from ftaudit.cli.common import run_with_progress, run_with_stages, write_report_files


def test_one_progress_bar_serves_both_callback_shapes():
    seen = []

    def audit_fn(model, *, samples, progress):
        progress(3, samples)  # eval's audit: (done, total)
        seen.append(model)
        return "report"

    def staged_fn(model, *, samples, progress):
        progress("baseline", 2, samples)  # compare and sensitivity: (stage, done, total)
        seen.append(model)
        return "staged"

    assert run_with_progress(audit_fn, True, "m1", samples=10) == "report"
    assert run_with_stages(staged_fn, True, "m2", samples=10) == "staged"
    assert seen == ["m1", "m2"]


def test_no_bar_calls_through_unchanged():
    def audit_fn(model, *, samples):
        return (model, samples)

    assert run_with_progress(audit_fn, False, "m", samples=4) == ("m", 4)


def test_report_files_are_chosen_through_the_registry(tmp_path: Path, gated_report):
    paths = {"json": "-", "csv": tmp_path / "r.csv", "junit": None, "html": tmp_path / "r.html"}
    write_report_files("audit", gated_report, paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.html"]
