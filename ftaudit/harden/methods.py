"""Harden methods, registered by name: erm (plain fine-tuning), noise (NoiseTrain), trice, and
bayesft (defined in ``bayesft``). The shared base (context, result, resume) lives in
``method_base``, which the methods import; this registry imports the methods.

Each method trains from the input model's weights and returns the model to export plus what
it chose; the shared loop, noise and evaluation live in ``training``.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from ftaudit.errors import UserError
from ftaudit.harden.bayesft import BayesftMethod
from ftaudit.harden.method_base import (
    EVAL_KEY,
    EpochCallback,
    HardenContext,
    HardenMethod,
    MethodResult,
    StageProgress,
    _checkpoint,
    _optimizer,
    _restore,
)
from ftaudit.harden.training import TrainingNoise, quantile_eval
from ftaudit.harden.trice_search import TriceSearch

__all__ = [
    "EVAL_KEY",
    "HARDEN_METHODS",
    "EpochCallback",
    "HardenContext",
    "HardenMethod",
    "MethodResult",
    "StageProgress",
    "get_method",
]


class ErmMethod(HardenMethod):
    """Plain fine-tuning without noise (the 'w/o noise' baseline)."""

    name = "erm"


class NoiseMethod(HardenMethod):
    """NoiseTrain (TRICE Algorithm 1): gradients at weights perturbed by the evaluation noise."""

    name = "noise"

    def training_noise(self, ctx: HardenContext) -> TrainingNoise | None:
        return TrainingNoise(ctx.noise, ctx.sigma)


class TriceMethod(HardenMethod):
    """TRICE (Algorithm 3): right-censored noise, sigma_t found by the three-model search."""

    name = "trice"

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
                noise = TrainingNoise(ctx.noise, sigma_t, threshold)
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
            history.append(info)
            method_state = {"search": search.to_dict(), "winner": winner}
            _checkpoint(ctx, epoch, models, optimizers, method_state, history)
            if ctx.on_epoch is not None:
                ctx.on_epoch(epoch, info)
        final = 0 if search.converged() else winner
        chosen = search.start if search.converged() else search.candidates()[winner]
        details = {
            "sigma_t": chosen,
            "threshold": threshold,
            "converged": search.converged(),
            "search": search.to_dict(),
        }
        return MethodResult(models[final], details, history)


#: name -> method; the docstring's first line is the help text
HARDEN_METHODS: dict[str, type[HardenMethod]] = {
    cls.name: cls for cls in (ErmMethod, NoiseMethod, TriceMethod, BayesftMethod)
}


def get_method(name: str) -> HardenMethod:
    """A harden method by name, with a 'did you mean' for typos."""
    cls = HARDEN_METHODS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(HARDEN_METHODS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(
            f"unknown harden method '{name}'",
            hint=f"{hint}choose one of {', '.join(HARDEN_METHODS)}",
        )
    return cls()
