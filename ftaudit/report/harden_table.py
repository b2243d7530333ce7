"""Rich rendering of a harden report: before/after per sigma, paired on the same draws."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from ftaudit.results.harden import CLEAN_DROP_NOTICE, trice_summary
from ftaudit.text import escape

if TYPE_CHECKING:
    from ftaudit.results.harden import HardenReport


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def harden_table(report: HardenReport) -> Table:
    """One row per sigma: mean and KPP before and after, and the paired mean difference."""
    details = report.details
    title = f"{escape(report.input_model)} -> {escape(report.output_model)} ({report.method})"
    caption = [
        f"clean accuracy {_pct(report.before.clean_accuracy)}% -> "
        f"{_pct(report.after.clean_accuracy)}% on {report.validation['n']} validation samples",
        f"{report.before.samples} Monte Carlo samples per sigma, same draws for both models; "
        "accuracies in %",
    ]
    drop = report.before.clean_accuracy - report.after.clean_accuracy
    if drop > CLEAN_DROP_NOTICE:
        caption.append(f"[bold red]clean accuracy {100 * drop:.2f} points lower after hardening[/]")
    if "sigma_t" in details:
        caption.append(escape(trice_summary(details)))
    table = Table(title=title, caption="\n".join(caption), box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("sigma", "mean before", "mean after", "KPP before", "KPP after", "Δmean paired"):
        table.add_column(header, justify="right", no_wrap=True)
    for b, a, d in zip(
        report.before.results, report.after.results, report.paired_differences(), strict=True
    ):
        table.add_row(
            f"{a.sigma:g}",
            _pct(b.summary.mean),
            _pct(a.summary.mean),
            _pct(b.summary.kpp),
            _pct(a.summary.kpp),
            f"{100 * d['mean_difference']:+.2f}",
        )
    return table
