"""TRICE (Algorithm 3 of the paper): three models trained under right-censored noise while a
search narrows the training sigma_t by their validation KPP."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from ftaudit.errors import UserError
from ftaudit.harden.methods.base import (
    HardenContext,
    HardenMethod,
    MethodResult,
    _checkpoint,
    _optimizer,
    _restore,
)
from ftaudit.harden.settings import HARDEN_DEFAULTS as DEFAULTS
from ftaudit.harden.training import RC_NEGATIVE, TrainingNoise, quantile_eval
from ftaudit.harden.trice_search import TriceSearch, exported_sigma_t, search_status


class TriceMethod(HardenMethod):
    """TRICE (Algorithm 3): right-censored noise, sigma_t found by the three-model search."""

    name = "trice"
    options: ClassVar[dict[str, Any]] = {
        "trice_start": DEFAULTS.trice_start,
        "trice_end": DEFAULTS.trice_end,
        "threshold": DEFAULTS.threshold,
        "warmup": DEFAULTS.warmup,
        "search_samples": DEFAULTS.search_samples,
        "rc_negative": DEFAULTS.rc_negative,
    }

    def check_options(
        self, values: dict[str, Any], *, sigma: float, protect: Sequence[Path] = ()
    ) -> dict[str, Any]:
        """The search range (end: 2 sigma when not given), censoring and search samples."""
        threshold = values["threshold"]
        if not (threshold > 0 and math.isfinite(threshold)):
            raise UserError(f"--threshold must be a positive number, got {threshold:g}")
        if values["warmup"] < 0:
            raise UserError(f"--warmup must be >= 0, got {values['warmup']}")
        if values["search_samples"] < 1:
            raise UserError(f"--search-samples must be at least 1, got {values['search_samples']}")
        if values["rc_negative"] not in RC_NEGATIVE:
            raise UserError(
                f"--rc-negative must be one of {', '.join(RC_NEGATIVE)}, got "
                f"'{values['rc_negative']}'",
                hint="magnitude (default) censors |w| growth for every weight; value censors a "
                "negative weight's rise",
            )
        start = values["trice_start"]
        end = 2 * sigma if values["trice_end"] is None else values["trice_end"]
        if not (0 <= start <= end) or not math.isfinite(end):
            raise UserError(
                f"the TRICE search needs 0 <= --trice-start <= --trice-end, got "
                f"[{start:g}, {end:g}]",
                hint="the paper's defaults are start 0 and end 2*sigma",
            )
        return {**values, "trice_end": end}

    def run(self, ctx: HardenContext) -> MethodResult:
        opts = ctx.options
        threshold = float(opts["threshold"])
        models = [ctx.new_model() for _ in range(3)]
        optimizers = [_optimizer(m, ctx.lr) for m in models]
        start, state, history = _restore(ctx, models, optimizers)
        search = (
            TriceSearch.from_dict(state["search"])
            if state
            else TriceSearch(
                start=float(opts["trice_start"]),
                end=float(opts["trice_end"]),
                warmup=int(opts["warmup"]),
            )
        )
        winner = int(state.get("winner", 1))
        for epoch in range(start, ctx.epochs):
            converged = search.converged()
            sigmas = (search.start,) if converged else search.candidates()
            losses = []
            for model, optimizer, sigma_t in zip(models, optimizers, sigmas, strict=False):
                noise = TrainingNoise(
                    ctx.noise, sigma_t, threshold, str(opts.get("rc_negative", "magnitude"))
                )
                losses.append(ctx.train_epoch(model, optimizer, epoch, noise))
            info: dict[str, Any] = {
                "epoch": epoch,
                "loss": losses[0] if converged else losses[1],
                "candidates": list(sigmas),
                "sigma_t": sigmas[0] if converged else sigmas[1],
            }
            if not converged and search.should_update(epoch):
                kpps = tuple(
                    quantile_eval(
                        m,
                        ctx.val,
                        layers=ctx.layers,
                        noise=ctx.noise,
                        sigma=ctx.sigma,
                        samples=int(opts["search_samples"]),
                        k=ctx.k,
                        seed=ctx.eval_seed(epoch),
                        device=ctx.device,
                        workers=ctx.workers,
                    )
                    for m in models
                )
                winner = search.update(epoch, kpps)  # type: ignore[arg-type]
                for i in range(3):
                    if i != winner:
                        models[i].module.load_state_dict(models[winner].module.state_dict())
                        optimizers[i].load_state_dict(
                            copy.deepcopy(optimizers[winner].state_dict())
                        )
                info.update(kpps=list(kpps), winner=winner, start=search.start, end=search.end)
                # every copy now holds the winner's weights, trained at the winner's sigma_t
                info["sigma_t"] = sigmas[winner]
            history.append(info)
            method_state = {"search": search.to_dict(), "winner": winner}
            _checkpoint(ctx, epoch, models, optimizers, method_state, history)
            if ctx.on_epoch is not None:
                ctx.on_epoch(epoch, info)
        final = 0 if search.converged() else winner
        details = {
            "sigma_t": exported_sigma_t(history),
            "threshold": threshold,
            "converged": search.converged(),
            "search_status": search_status(search),
            "search": search.to_dict(),
        }
        return MethodResult(models[final], details, history)
