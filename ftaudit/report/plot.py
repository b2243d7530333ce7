"""Accuracy-versus-sigma PNG: mean and KPP with their interval bands, via matplotlib Agg."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ftaudit._optional import require_matplotlib
from ftaudit.fileio import atomic_write
from ftaudit.report._registry import register_writer
from ftaudit.results import AuditReport


def _plain_text(text: str) -> str:
    """Escape ``$`` so file and noise names are not parsed as matplotlib mathtext."""
    return text.replace("$", r"\$")


def _confidence_label(confidence: float) -> str:
    return f"{100 * confidence:g}%"


@register_writer("plot")
def write_plot(report: AuditReport, path: Path) -> None:
    """PNG plot of mean and KPP accuracy against sigma, with interval bands and clean accuracy."""
    plt = require_matplotlib("plots")
    if not report.results:
        raise ValueError("cannot plot a report without sigma results")
    if any(result.time_s is not None for result in report.results):
        _write_time_plot(plt, report, path)
        return
    results = sorted(report.results, key=lambda result: result.sigma)
    sigmas = np.array([r.sigma for r in results], dtype=float)
    mean_level = _confidence_label(results[0].summary.mean_interval.confidence)
    kpp_level = _confidence_label(results[0].summary.kpp_interval.confidence)
    series = {
        f"mean ({mean_level} interval)": (
            np.array([r.summary.mean for r in results], dtype=float),
            np.array([r.summary.mean_interval.low for r in results], dtype=float),
            np.array([r.summary.mean_interval.high for r in results], dtype=float),
        ),
        f"KPP, k={report.k:g} ({kpp_level} interval)": (
            np.array([r.summary.kpp for r in results], dtype=float),
            np.array([r.summary.kpp_interval.low for r in results], dtype=float),
            np.array([r.summary.kpp_interval.high for r in results], dtype=float),
        ),
    }
    model_name = PurePath(str(report.model.get("path", "?"))).name
    noise_name = str(report.noise.get("name", "?"))

    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    try:
        for (label, (values, low, high)), color in zip(
            series.items(), ("tab:blue", "tab:orange"), strict=True
        ):
            ax.plot(sigmas, values, marker="o", color=color, label=label)
            if len(sigmas) > 1:
                ax.fill_between(sigmas, low, high, color=color, alpha=0.2, linewidth=0)
            else:
                # A band through one point has no area: show the interval as an error bar.
                ax.errorbar(
                    sigmas,
                    values,
                    yerr=np.vstack([values - low, high - values]),
                    fmt="none",
                    ecolor=color,
                    capsize=4,
                )
        reference_label = (
            "clean accuracy" if report.quantized_accuracy is None else "quantised clean accuracy"
        )
        ax.axhline(
            report.reference_accuracy,
            linestyle="--",
            color="0.4",
            linewidth=1,
            label=reference_label,
        )
        ax.set_xlabel("device variation sigma")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.set_title(_plain_text(f"{model_name} · {noise_name} noise"))
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    finally:
        plt.close(fig)


def _write_time_plot(plt: Any, report: AuditReport, path: Path) -> None:
    """Mean (left) and KPP (right) against time after programming: one colour per sigma,
    solid with global drift compensation, dashed without; times as evenly spaced labels."""
    from ftaudit.device_effects import format_time

    times = sorted({float(r.time_s) for r in report.results if r.time_s is not None})
    sigmas = sorted({r.sigma for r in report.results})
    compensations = [
        c for c in ("global", "none") if any(r.compensation == c for r in report.results)
    ]
    x = np.arange(len(times))
    model_name = PurePath(str(report.model.get("path", "?"))).name
    noise_name = str(report.noise.get("name", "?"))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(sigmas), 1)))

    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4), layout="constrained", sharey=True)
    try:
        for ax, metric in zip(axes, ("mean", f"KPP, k={report.k:g}"), strict=True):
            for sigma, color in zip(sigmas, colors, strict=True):
                for compensation in compensations:
                    rows = {
                        float(r.time_s): r
                        for r in report.results
                        if r.sigma == sigma
                        and r.compensation == compensation
                        and r.time_s is not None
                    }
                    values = [
                        (rows[t].summary.mean if metric == "mean" else rows[t].summary.kpp)
                        if t in rows
                        else np.nan
                        for t in times
                    ]
                    ax.plot(
                        x,
                        values,
                        marker="o",
                        color=color,
                        linestyle="-" if compensation == "global" else "--",
                        label=f"sigma={sigma:g}, compensation {compensation}",
                    )
            ax.axhline(report.reference_accuracy, linestyle=":", color="0.4", linewidth=1)
            ax.set_xticks(x, [format_time(t) for t in times])
            ax.set_xlabel("time after programming")
            ax.set_title(_plain_text(metric))
            ax.set_ylim(0.0, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy")
        axes[1].legend(loc="best", fontsize="small")
        fig.suptitle(_plain_text(f"{model_name} · {noise_name} noise · drift"))
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    finally:
        plt.close(fig)
