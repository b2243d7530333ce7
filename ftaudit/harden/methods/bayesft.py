"""BayesFT (Ye et al., Algorithm 1): per-layer dropout rates found by Bayesian optimisation.

The search space is one dropout rate in [0, max_dropout] after each crossbar layer's output except
the last (BayesFT III-B). Weights and rates are optimised alternately: the sampler proposes rates,
the weights train ``epochs_per_trial`` epochs with them (carrying over from trial to trial, as in
Algorithm 1) on the gradient of u, the loss under the evaluation noise at sigma (line 6; each
step averages ``train_draws`` draws; under log-normal drift the gradient at w' = w exp(sigma z)
is multiplied by exp(sigma z), the chain rule to the clean weights), and the objective u
(eq. 3-4) is minus the Monte Carlo mean of the validation cross-entropy with the weights
perturbed by the evaluation noise at sigma. The weights of the best trial are exported; dropout
exists only in the trainable copy, so the exported file has none.

Line 8 (re-scoring the earlier rates at the current weights) is not done: u is measured in eval
mode, where dropout is the identity, so u(alpha_i, theta_t) is the same number for every alpha_i
and re-scoring would flatten the GP's data (docs/methods.md). Each rate keeps the u of the
weights it trained.

Randomness is keyed like the rest of ``harden``: batch order by (seed, epoch); training noise by
(seed, epoch, step, layer, draw) as for NoiseTrain; dropout masks by
(seed, epoch, layer); the objective's draws by ``draws_for_sample`` with one derived seed shared by
every trial (common random numbers: trials are compared on the same perturbations); and the
sampler of the k-th trial by (seed, k), so a resumed search proposes what an uninterrupted one
would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.errors import MissingExtraError, UserError
from ftaudit.fileio import check_output_path
from ftaudit.harden.checkpoint import save_checkpoint
from ftaudit.harden.dropout import dropout_module as dropout_module
from ftaudit.harden.dropout import insert_dropout
from ftaudit.harden.methods.base import (
    HardenContext,
    HardenMethod,
    MethodResult,
    _optimizer,
    _restore,
)
from ftaudit.harden.objective import bayesft_objective
from ftaudit.harden.settings import HARDEN_DEFAULTS as DEFAULTS
from ftaudit.harden.trainable import TrainableModel
from ftaudit.harden.training import TrainingNoise

if TYPE_CHECKING:
    pass

FEATURE = "the bayesft harden method"

# the defaults of --max-dropout, --trials, --epochs-per-trial and --objective-samples live in
# HardenSettings (ftaudit/harden/settings.py)
#: random trials before the GP guides the search. Algorithm 1 starts from one uniform draw;
#: optuna's default (10) would make the default 10-trial search a plain random search
STARTUP_TRIALS = 3

#: line 6's gradient of u through w' = w * exp(sigma z) (``train_epoch``'s ``chain_rule``)
CHAIN_RULE = True

OBJECTIVE_KEY = 1_000_005
SAMPLER_KEY = 1_000_006
DROPOUT_KEY = 1_000_007

#: user attribute value of a trial failed by a non-finite objective (done, unlike interrupted ones)
NON_FINITE = "non-finite"
_SQLITE_HEADER = b"SQLite format 3\x00"
_CROSSBAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def validate_bayesft_options(
    *,
    max_dropout: float,
    trials: int,
    epochs_per_trial: int,
    objective_samples: int,
    study: Path | str | None,
    train_draws: int = 1,
    protect: Sequence[Path] = (),
) -> None:
    """Reject impossible BayesFT options before anything is loaded or written."""
    if not (math.isfinite(max_dropout) and 0 <= max_dropout <= 1):
        raise UserError(
            f"--max-dropout must lie in [0, 1], got {max_dropout:g}",
            hint="the default is 0.5; the paper searches [0, 1]",
        )
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if epochs_per_trial < 1:
        raise UserError(f"--epochs-per-trial must be at least 1, got {epochs_per_trial}")
    if objective_samples < 1:
        raise UserError(f"--objective-samples must be at least 1, got {objective_samples}")
    if train_draws < 1:
        raise UserError(f"--train-draws must be at least 1, got {train_draws}")
    if study is None:
        return
    path = check_output_path(Path(study), what="study database", protect=tuple(protect))
    parent = path.parent if str(path.parent) else Path(".")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(
            f"cannot write the study database {path}: permission denied",
            hint="choose a writable location for --study",
        )
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            if handle.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                raise UserError(
                    f"{path} exists and is not an SQLite database, so it cannot hold the study",
                    hint="give a new file name or an earlier run's --study file",
                )


# ---------------------------------------------------------------------------------------------
# Dropout (ftaudit.harden.dropout) and the objective (ftaudit.harden.objective) live beside
# the method: the trainable-graph edit and the loss metric workers build too


def _derived(seed: int, *key: int) -> int:
    """A 32-bit seed for one purpose of a run, from ``SeedSequence(seed, spawn_key=key)``."""
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1)[0])


def objective_seed(seed: int) -> int:
    """The seed of the objective's draws, the same for every trial (paired comparison)."""
    return _derived(seed, OBJECTIVE_KEY)


# ---------------------------------------------------------------------------------------------
# The study


def _import_optuna() -> Any:
    """optuna, checking for SciPy too: GPSampler imports it only when it first fits the GP."""
    try:
        import optuna
    except ImportError as exc:
        raise MissingExtraError(FEATURE, "torch", "optuna") from exc
    try:
        import scipy  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(FEATURE, "torch", "SciPy") from exc
    return optuna


@contextmanager
def _quiet_optuna(optuna: Any) -> Iterator[None]:
    """optuna's log lines and experimental-feature warnings off, restored afterwards.

    ERROR rather than WARNING: GPSampler warns on every trial when the optional ``greenlet``
    package is missing (a speed hint), and failed trials are reported in the trial table.
    """
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def study_name(fingerprint: Mapping[str, Any]) -> str:
    """One study per model, data and settings; --trials is not part of it, so a larger
    --trials continues the same study."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    return f"ftaudit-bayesft-{digest[:12]}"


def _sampler(optuna: Any, seed: int, index: int) -> Any:
    """The sampler of the index-th trial.

    ``GPSampler``: a Gaussian-process surrogate, as in the paper (III-B, eq. 5-9; optuna's uses
    a Matern-5/2 ARD kernel and log expected improvement), from a maintained library with
    SQLite storage for resumable studies. A fresh sampler per trial, seeded by (seed, index),
    makes each proposal a function of the seed and the finished trials only: GPSampler
    otherwise carries its RNG and fitted kernel between calls, which a resumed run would lack.
    """
    return optuna.samplers.GPSampler(
        seed=_derived(seed, SAMPLER_KEY, index),
        n_startup_trials=STARTUP_TRIALS,
    )


def _counted(optuna: Any, study: Any) -> list[Any]:
    """The trials done, in order: complete ones and those failed by a non-finite objective.

    A trial cut off by Ctrl-C or a killed process is failed without that mark and is not done.
    """
    states = optuna.trial.TrialState
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == states.COMPLETE
        or (t.state == states.FAIL and t.user_attrs.get("objective") == NON_FINITE)
    ]


def _row(trial: Any, names: Sequence[str]) -> dict[str, Any]:
    """One line of the trial table: number, rate per layer, objective (None if failed), state."""
    return {
        "number": trial.number,
        "rates": {name: float(trial.params[name]) for name in names if name in trial.params},
        "objective": None if trial.value is None else float(trial.value),
        "state": trial.state.name.lower(),
    }


def _open_study(
    optuna: Any, ctx: HardenContext, path: Path | None, names: Sequence[str]
) -> tuple[Any, list[str]]:
    """This run's study: in memory, or in SQLite at ``path``, loaded if it is there.

    Trials left RUNNING by a killed run are marked failed (not done); one run per study at a
    time.
    """
    name = study_name(ctx.fingerprint)
    notes = []
    storage = None
    if path is not None:
        storage = f"sqlite:///{path.resolve()}"
        existing = (
            optuna.get_all_study_names(storage) if path.exists() and path.stat().st_size > 0 else []
        )
        if existing and name not in existing:
            notes.append(
                f"{path} holds other studies ({', '.join(existing)}) from other models or "
                f"settings; this run starts study {name}"
            )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=_sampler(optuna, ctx.seed, 0),
    )
    study.set_user_attr("ftaudit_layers", list(names))
    running = optuna.trial.TrialState.RUNNING
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study, notes


def _reconcile(
    optuna: Any,
    study: Any,
    table: list[dict[str, Any]],
    distributions: Mapping[str, Any],
) -> list[str]:
    """Line the study up with a resumed checkpoint's trial table; returns notes.

    An in-memory study (or a new --study file) is rebuilt from the table, so the search goes on
    as if never interrupted; a study that is one trial ahead (killed between recording a trial
    and writing the checkpoint) keeps its trials and trains on from the checkpoint's weights.
    """
    done = len(_counted(optuna, study))
    if done > len(table):
        return [
            f"the study has {done} trials but the checkpoint's weights are those after "
            f"{len(table)}: training continues from the checkpoint's weights"
        ]
    if 0 < done < len(table):
        raise UserError(
            f"study {study.study_name} has {done} trial(s) but the checkpoint {len(table)}: "
            "they are from different runs",
            hint="resume with the interrupted run's --study and --checkpoint-dir",
        )
    states = optuna.trial.TrialState
    for row in table[done:]:
        complete = row["objective"] is not None
        study.add_trial(
            optuna.trial.create_trial(
                state=states.COMPLETE if complete else states.FAIL,
                value=row["objective"] if complete else None,
                params=row["rates"],
                distributions=dict(distributions),
                user_attrs={} if complete else {"objective": NON_FINITE},
            )
        )
    return []


class BayesftMethod(HardenMethod):
    """BayesFT (Algorithm 1): dropout rate per layer chosen by GP Bayesian optimisation."""

    name = "bayesft"
    options: ClassVar[dict[str, Any]] = {
        "max_dropout": DEFAULTS.max_dropout,
        "trials": DEFAULTS.trials,
        "epochs_per_trial": DEFAULTS.epochs_per_trial,
        "objective_samples": DEFAULTS.objective_samples,
        "train_draws": DEFAULTS.train_draws,
        "study": None,
    }
    # a larger --trials continues the same study and checkpoint, and the study file may move
    resumable = ("trials", "study")
    edits_graph = True

    def check_options(
        self, values: dict[str, Any], *, sigma: float, protect: Sequence[Path] = ()
    ) -> dict[str, Any]:
        validate_bayesft_options(**values, protect=protect)
        study = values["study"]
        return {**values, "study": None if study is None else str(study)}

    def run(self, ctx: HardenContext) -> MethodResult:
        opts = ctx.options
        max_dropout = float(opts["max_dropout"])
        trials = int(opts["trials"])
        study_path = None if opts.get("study") is None else Path(opts["study"])

        model = ctx.new_model()
        dropouts = insert_dropout(model)
        names = list(dropouts)
        optimizer = _optimizer(model, ctx.lr)
        _, state, history = _restore(ctx, [model], [optimizer])
        best: dict[str, Any] | None = state.get("best")
        best_state = (ctx.resume_state or {}).get("best_model")

        optuna = _import_optuna()
        distributions = {
            name: optuna.distributions.FloatDistribution(0.0, max_dropout) for name in names
        }
        with _quiet_optuna(optuna):
            study, notes = _open_study(optuna, ctx, study_path, names)
            if state:
                notes += _reconcile(optuna, study, state["table"], distributions)
            done = len(_counted(optuna, study))
            if done and not state:
                notes.append(
                    f"study {study.study_name} already has {done} trial(s); their weights are "
                    "not stored in the study, so the search continues from the input model's "
                    "weights (--checkpoint-dir with --resume keeps them)"
                )
            if done >= trials and best_state is None:
                raise UserError(
                    f"study {study.study_name} already has {done} trial(s) and --trials is "
                    f"{trials}: nothing to do",
                    hint="pass a larger --trials to continue the search",
                )
            for index in range(done, trials):
                info = self._trial(
                    ctx, optuna, study, index, model, optimizer, dropouts, distributions
                )
                objective = info["objective"]
                if objective is not None and (best is None or objective > best["objective"]):
                    best = {
                        "trial": info["trial"],
                        "index": info["index"],
                        "objective": objective,
                        "rates": info["rates"],
                    }
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    info["best"] = True
                history.append(info)
                table = [_row(t, names) for t in _counted(optuna, study)]
                self._checkpoint(
                    ctx, info["epoch"], model, optimizer, best, best_state, history, table
                )
                if ctx.on_epoch is not None:
                    ctx.on_epoch(info["epoch"], info)
            table = [_row(t, names) for t in study.get_trials(deepcopy=False)]

        if best is None or best_state is None:
            raise UserError(
                "every BayesFT trial's objective was non-finite (the validation loss diverged)",
                hint="lower --lr or --max-dropout, or harden at a smaller --sigma",
            )
        model.load_state_dict(best_state)
        for name, rate in best["rates"].items():
            dropouts[name].p = rate
        model.module.eval()
        rates = ", ".join(f"{name} {rate:.3f}" for name, rate in best["rates"].items())
        notes.append(
            f"BayesFT chose dropout rates {rates} (trial {best.get('index', best['trial']) + 1}"
            f"/{trials}, objective {best['objective']:.4f}); the exported model has no dropout"
        )
        details = {
            "dropout_rates": best["rates"],
            "best_trial": best["trial"],
            "best_objective": best["objective"],
            "trials": trials,
            "epochs_per_trial": int(opts["epochs_per_trial"]),
            "max_dropout": max_dropout,
            "objective_samples": int(opts["objective_samples"]),
            "train_draws": int(opts.get("train_draws", 1)),
            "search": {
                "sampler": "optuna GPSampler",
                "startup_trials": STARTUP_TRIALS,
                "study": study.study_name,
                "storage": None if study_path is None else str(study_path),
                "objective": "minus the mean validation cross-entropy over objective_samples "
                "Monte Carlo draws of the noise at sigma",
                "trials": table,
            },
        }
        return MethodResult(model, details, history, notes)

    @staticmethod
    def _trial(
        ctx: HardenContext,
        optuna: Any,
        study: Any,
        index: int,
        model: TrainableModel,
        optimizer: Any,
        dropouts: Mapping[str, Any],
        distributions: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The index-th trial: propose rates, train epochs_per_trial epochs, tell u."""
        torch = require_torch(FEATURE)
        opts = ctx.options
        epochs = int(opts["epochs_per_trial"])
        draws = int(opts.get("train_draws", 1))
        noise = TrainingNoise(ctx.noise, ctx.sigma)
        layer_index = {layer.name: layer.index for layer in ctx.source.layers}
        study.sampler = _sampler(optuna, ctx.seed, index)
        trial = study.ask(dict(distributions))
        rates = {name: float(trial.params[name]) for name in dropouts}
        try:
            loss = math.nan
            for e in range(epochs):
                epoch = index * epochs + e
                for name, dropout in dropouts.items():
                    dropout.p = rates[name]
                    dropout.generator = torch.Generator(device=ctx.device)
                    dropout.generator.manual_seed(
                        _derived(ctx.seed, DROPOUT_KEY, epoch, layer_index[name])
                    )
                # Algorithm 1 line 6: the gradient of u, the loss under the evaluation noise
                loss = ctx.train_epoch(
                    model, optimizer, epoch, noise, draws=draws, chain_rule=CHAIN_RULE
                )
            objective = bayesft_objective(
                model,
                ctx.val,
                layers=ctx.layers,
                noise=ctx.noise,
                sigma=ctx.sigma,
                samples=int(opts["objective_samples"]),
                seed=objective_seed(ctx.seed),
                device=ctx.device,
                workers=ctx.workers,
                rng=ctx.rng,
            )
        except BaseException:  # Ctrl-C (or a bug): the trial is not done; re-raised as is
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        if math.isfinite(objective):
            study.tell(trial, objective)
        else:  # a diverged loss: recorded as failed, which the GP leaves out
            trial.set_user_attr("objective", NON_FINITE)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return {
            "epoch": epoch,
            "trial": trial.number,
            "index": index,
            "loss": loss,
            "rates": rates,
            "objective": objective if math.isfinite(objective) else None,
        }

    @staticmethod
    def _checkpoint(
        ctx: HardenContext,
        epoch: int,
        model: TrainableModel,
        optimizer: Any,
        best: dict[str, Any] | None,
        best_state: dict[str, Any] | None,
        history: list[dict[str, Any]],
        table: list[dict[str, Any]],
    ) -> None:
        """``base._checkpoint``'s layout, plus the trial table and the best trial's
        weights."""
        if ctx.checkpoint_dir is None:
            return
        state: dict[str, Any] = {
            "fingerprint": json.dumps(ctx.fingerprint, sort_keys=True),
            "epochs_done": epoch + 1,
            "models": [model.module.state_dict()],
            "optimizers": [optimizer.state_dict()],
            "method_state": json.dumps({"best": best, "table": table}),
            "history": json.dumps(history),
        }
        if best_state is not None:
            state["best_model"] = best_state
        save_checkpoint(ctx.checkpoint_dir, state)
