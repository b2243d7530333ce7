"""What every harden method builds on: the context a method gets (data, noise, settings, the
shared training epoch), its result, resume from a checkpoint, and the plain one-model loop.

The methods (``erm``, ``noise``, ``trice``, ``bayesft`` beside this module) import it; the
registry in the package's ``__init__`` imports them, so the dependency runs one way."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.draws import DEFAULT_RNG
from ftaudit.errors import UserError
from ftaudit.harden.analog_trainable import trainable_copy
from ftaudit.harden.checkpoint import save_checkpoint
from ftaudit.harden.trainable import TrainableModel
from ftaudit.harden.training import SampleWorkers, TrainingData, TrainingNoise, train_epoch
from ftaudit.models.base import AuditModel, CrossbarLayer
from ftaudit.noise import NoiseModel

if TYPE_CHECKING:
    from ftaudit.analog.torch_pipeline import AnalogTraining
    from ftaudit.models.onnx import OnnxModel

EVAL_KEY = 1_000_003

#: called after every epoch with (epoch, info) for progress displays
EpochCallback = Callable[[int, dict[str, Any]], None]
#: called with (stage, done, total) within a stage (training steps of an epoch, Monte Carlo
#: samples of the before/after report), for progress bars
StageProgress = Callable[[str, int, int], None]


@dataclass
class HardenContext:
    """Everything a method needs; built and validated by ``ftaudit.harden``."""

    source: AuditModel
    layers: list[CrossbarLayer]
    train: TrainingData
    val: TrainingData
    noise: NoiseModel
    sigma: float
    epochs: int
    batch_size: int
    lr: float
    seed: int
    k: float
    device: str
    options: dict[str, Any]
    fingerprint: dict[str, Any]
    checkpoint_dir: Path | None = None
    resume_state: dict[str, Any] | None = None
    on_epoch: EpochCallback | None = None
    progress: StageProgress | None = None
    #: where validation Monte Carlo runs (None: this process); the numbers are the same
    workers: SampleWorkers | None = None
    #: the analog forward pipeline every trainable copy trains and validates with
    analog: AnalogTraining | None = None
    #: a TorchScript or torch.export model's in-memory ONNX export, which its trainable copies
    #: are made of when the method edits the torch.fx graph (``HardenMethod.edits_graph``)
    graph: OnnxModel | None = None
    #: the normal generator of the validation Monte Carlo (ftaudit.draws.RNGS; training noise
    #: keeps numpy's ziggurat)
    rng: str = DEFAULT_RNG

    def new_model(self) -> TrainableModel:
        """A fresh trainable copy of the input model on this run's device."""
        model = trainable_copy(self.source, self.analog, graph=self.graph)
        model.module.to(self.device)
        return model

    def train_epoch(
        self,
        model: TrainableModel,
        optimizer: Any,
        epoch: int,
        noise: TrainingNoise | None,
        draws: int = 1,
        chain_rule: bool = False,
    ) -> float:
        """One epoch of ``model`` on the training data with this run's seed and settings
        (``draws`` noise draws averaged per step; ``chain_rule``: see ``train_epoch``)."""
        on_step = None
        if self.progress is not None:
            steps = -(-len(self.train) // self.batch_size)
            stage = f"training, epoch {epoch + 1}"
            progress = self.progress

            def on_step(step: int, loss: float) -> None:
                progress(stage, step + 1, steps)

        return train_epoch(
            model,
            optimizer,
            self.train,
            epoch=epoch,
            seed=self.seed,
            batch_size=self.batch_size,
            layers=self.layers,
            noise=noise,
            device=self.device,
            on_step=on_step,
            draws=draws,
            chain_rule=chain_rule,
        )

    def eval_seed(self, epoch: int) -> int:
        """Seed of the validation Monte Carlo of one epoch (shared by the candidates: paired)."""
        sequence = np.random.SeedSequence(self.seed, spawn_key=(EVAL_KEY, epoch))
        return int(sequence.generate_state(1)[0])


@dataclass
class MethodResult:
    """The trained model to export and what the method chose along the way."""

    trainable: TrainableModel
    details: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: lines for the user (the report's notes, shown by the CLI)
    notes: list[str] = field(default_factory=list)


def _optimizer(trainable: TrainableModel, lr: float) -> Any:
    torch = require_torch("ftaudit harden")
    return torch.optim.Adam(trainable.module.parameters(), lr=lr)


def _checkpoint(
    ctx: HardenContext,
    epoch: int,
    models: list[TrainableModel],
    optimizers: list[Any],
    method_state: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    if ctx.checkpoint_dir is None:
        return
    save_checkpoint(
        ctx.checkpoint_dir,
        {
            "fingerprint": json.dumps(ctx.fingerprint, sort_keys=True),
            "epochs_done": epoch + 1,
            "models": [m.module.state_dict() for m in models],
            "optimizers": [o.state_dict() for o in optimizers],
            "method_state": json.dumps(method_state),
            "history": json.dumps(history),
        },
    )


def _restore(ctx: HardenContext, models: list[TrainableModel], optimizers: list[Any]):
    """Load a resumed run's state; returns (first epoch to run, method state, history)."""
    state = ctx.resume_state
    if state is None:
        return 0, {}, []
    try:
        for model, saved in zip(models, state["models"], strict=True):
            model.module.load_state_dict(saved)
        for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        restored = (
            int(state["epochs_done"]),
            json.loads(state["method_state"]),
            json.loads(state["history"]),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # an edited checkpoint
        raise UserError(
            f"checkpoint in {ctx.checkpoint_dir} is damaged or was edited "
            f"({exc.__class__.__name__})",
            hint="delete it to start over",
        ) from exc
    if not 0 <= restored[0] <= ctx.epochs or not isinstance(restored[2], list):
        raise UserError(
            f"checkpoint in {ctx.checkpoint_dir} is damaged or was edited "
            f"(epochs done: {restored[0]} of {ctx.epochs})",
            hint="delete it to start over",
        )
    return restored


class HardenMethod:
    """Base: one model trained ``ctx.epochs`` epochs with ``training_noise`` (None: plain).

    A method declares its own options (``options``: harden keyword -> default, the flag being
    ``--`` and the name with dashes) and checks them in ``check_options``; ``harden`` gives it
    only these (``ctx.options``) and refuses another method's option given to it."""

    name = ""
    #: this method's options and their defaults (HardenSettings' where it has them)
    options: ClassVar[dict[str, Any]] = {}
    #: options left out of the checkpoint fingerprint (they may change on --resume)
    resumable: ClassVar[tuple[str, ...]] = ()
    #: the method edits the trainable's torch.fx graph: TorchScript and torch.export models then
    #: train as their own in-memory ONNX export (``analog_trainable.trainable_copy``)
    edits_graph: ClassVar[bool] = False

    def check_options(
        self, values: dict[str, Any], *, sigma: float, protect: Sequence[Path] = ()
    ) -> dict[str, Any]:
        """This method's options, checked (a bad value raises UserError) and resolved."""
        return dict(values)

    def fingerprint(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options a resumed run must share with the checkpoint."""
        return {name: value for name, value in options.items() if name not in self.resumable}

    def training_noise(self, ctx: HardenContext) -> TrainingNoise | None:
        return None

    def run(self, ctx: HardenContext) -> MethodResult:
        model = ctx.new_model()
        optimizer = _optimizer(model, ctx.lr)
        start, _, history = _restore(ctx, [model], [optimizer])
        noise = self.training_noise(ctx)
        for epoch in range(start, ctx.epochs):
            loss = ctx.train_epoch(model, optimizer, epoch, noise)
            info = {"epoch": epoch, "loss": loss, "sigma_t": None if noise is None else noise.sigma}
            history.append(info)
            _checkpoint(ctx, epoch, [model], [optimizer], {}, history)
            if ctx.on_epoch is not None:
                ctx.on_epoch(epoch, info)
        return MethodResult(model, {}, history)
