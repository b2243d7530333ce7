"""Frozen option groups shared by the config file, the CLI and the library: the one home of
every default of the audit commands (eval, compare, sensitivity).

- ``PerturbOptions``: what to perturb (sigmas, noise model, layers, the logits output)
- ``DeviceEffectOptions``: drift, compensation and stuck-at cells
- ``MonteCarloOptions``: the run (samples, k, seed, generator, batch size, device, data subset)
- ``ScaleOutOptions``: where samples run (worker processes, Ray) and checkpoints
- ``OutputOptions``: the report files and the terminal table

``ftaudit.config.EvalSettings`` takes its defaults from these classes, and the keyword defaults
of ``audit``/``compare``/``sensitivity`` are read from them too, so a default is changed here
once. ``from_settings`` builds a group from resolved settings (config file under flags);
``as_kwargs`` gives the library keywords the group stands for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ftaudit.noise.effects import DeviceEffects
    from ftaudit.noise.stuck import StuckAt

GroupT = TypeVar("GroupT", bound="_Group")


class _Group:
    """What every option group shares: built from settings, spread into library keywords."""

    @classmethod
    def from_settings(cls: type[GroupT], settings: Any, **overrides: Any) -> GroupT:
        """The group from an object carrying its fields (``EvalSettings``), then ``overrides``."""
        values = {
            f.name: getattr(settings, _SETTING_NAMES.get(f.name, f.name))
            for f in fields(cls)  # type: ignore[arg-type]
            if hasattr(settings, _SETTING_NAMES.get(f.name, f.name))
        }
        values.update(overrides)
        return cls(**values)

    def as_kwargs(self) -> dict[str, Any]:
        """The library keywords (``audit(**group.as_kwargs())``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


#: option name -> the EvalSettings field holding it, where the two differ
_SETTING_NAMES = {"sigmas": "sigma", "times": "time"}


@dataclass(frozen=True)
class PerturbOptions(_Group):
    """What to perturb: the device variation, its noise model and the crossbar layers."""

    sigmas: tuple[float, ...] | None = None  # None: the noise profile's sigma
    noise: str = "lognormal"
    bits: int | None = None  # device models: weight bits H (None: the model's default)
    cell_bits: int | None = None  # device models: bits per cell B
    clamp: bool = True  # device models: cell conductances stay >= 0
    cell_noise: str = "independent"  # device models: independent or shared dg per weight
    differential: bool | None = None  # G+/G- pairs (None: the device file's, else one device)
    layers: tuple[str, ...] = ()  # globs over crossbar weight names (empty: all)
    exclude: tuple[str, ...] = ()
    output: str | None = None  # the ONNX output holding the logits (None: the first)


@dataclass(frozen=True)
class DeviceEffectOptions(_Group):
    """Conductance drift after programming, its compensation, and stuck-at cells."""

    times: tuple[float, ...] | None = None  # seconds after programming
    drift_nu: float | None = None  # None: the noise profile's, else DriftModel's default
    drift_nu_std: float | None = None
    drift_t0: float | None = None
    compensation: str | None = None  # none, global or both (both when times are given)
    stuck_at: tuple[float, float] | None = None  # fractions of cells stuck low, high

    def resolve(self, profile: Any = None) -> DeviceEffects | None:
        """The device effects these options ask for over ``profile``'s defaults (None: no
        effect); a bad value raises UserError."""
        return resolve_effects(**self.as_kwargs(), profile=profile)


def resolve_effects(
    *,
    times: Sequence[float] | None = None,
    drift_nu: float | None = None,
    drift_nu_std: float | None = None,
    drift_t0: float | None = None,
    compensation: str | None = None,
    stuck_at: tuple[float, float] | StuckAt | None = None,
    profile: Any = None,
) -> DeviceEffects | None:
    """Options over the noise profile's defaults over the built-ins; None when nothing applies.

    ``profile`` is a ``DeviceProfile`` (or None). Drift options without ``times`` are an error;
    stuck-at fractions of 0 and no times mean no effects at all (results exactly unchanged).
    """
    import math

    from ftaudit.errors import UserError
    from ftaudit.noise.compensation import compensation_modes
    from ftaudit.noise.drift import DriftModel
    from ftaudit.noise.effects import DeviceEffects
    from ftaudit.noise.stuck import StuckAt

    times = tuple(float(t) for t in times or ())
    for t in times:
        if not (math.isfinite(t) and t >= 0):
            raise UserError(f"time must be a finite number of seconds >= 0, got {t:g}")
    drift_given = {
        "--drift-nu": drift_nu,
        "--drift-nu-std": drift_nu_std,
        "--drift-t0": drift_t0,
        "--compensation": compensation,
    }
    if not times and any(v is not None for v in drift_given.values()):
        flags = ", ".join(k for k, v in drift_given.items() if v is not None)
        raise UserError(f"{flags} given without --time", hint="add e.g. --time 1h,1d,1y")
    base = getattr(profile, "drift", None) or DriftModel()
    drift = DriftModel(
        t0_s=float(base.t0_s if drift_t0 is None else drift_t0),
        nu_mean=float(base.nu_mean if drift_nu is None else drift_nu),
        nu_std=float(base.nu_std if drift_nu_std is None else drift_nu_std),
    )
    drift.validate()
    compensations = compensation_modes(compensation)
    if stuck_at is None:
        stuck = getattr(profile, "stuck_at", None) or StuckAt()
    elif isinstance(stuck_at, StuckAt):
        stuck = stuck_at
    else:
        stuck = StuckAt(float(stuck_at[0]), float(stuck_at[1]))
    stuck.validate()
    if not times and not stuck.active:
        return None
    return DeviceEffects(
        times=times,
        compensations=compensations if times else (),
        drift=drift,
        stuck_at=stuck,
    )


@dataclass(frozen=True)
class MonteCarloOptions(_Group):
    """The Monte Carlo run: how many samples, which percentile, which seed, on what data."""

    samples: int = 1000
    k: float = 1.0
    seed: int = 0
    rng: str = "fast"  # the normal generator: fast or ziggurat (ftaudit.draws.RNGS)
    batch_size: int = 512
    device: str = "cpu"
    limit: int | None = None  # evaluate on only the first N examples
    mean: tuple[float, ...] | None = None  # normalisation: subtract
    std: tuple[float, ...] | None = None  # normalisation: divide


@dataclass(frozen=True)
class ScaleOutOptions(_Group):
    """Where the samples run; the numbers do not depend on it."""

    workers: int = 1
    ray: str | None = None  # 'local', 'auto' or HOST:PORT
    checkpoint_dir: Path | str | None = None
    resume: bool = False

    def validate(self) -> None:
        """Reject impossible --workers/--resume combinations before any work."""
        from ftaudit.errors import UserError

        if self.workers < 1:
            raise UserError(
                f"--workers must be at least 1, got {self.workers}", hint="e.g. --workers 2"
            )
        if self.resume and self.checkpoint_dir is None:
            raise UserError(
                "--resume needs the --checkpoint-dir of the interrupted run",
                hint="pass --checkpoint-dir DIR --resume",
            )


@dataclass(frozen=True)
class OutputOptions(_Group):
    """The report files (None: not written; JSON '-' is stdout) and the terminal table."""

    json: str | None = None
    csv: Path | None = None
    plot: Path | None = None
    html: Path | None = None
    junit: Path | None = None
    quiet: bool = False

    @property
    def machine_output(self) -> bool:
        """JSON on stdout: no table and no progress bar beside it."""
        return self.json == "-"

    def labelled(self) -> dict[str, Path | str | None]:
        """What each report file is called in an error message -> its path (for the checks)."""
        return {
            "JSON report": self.json,
            "CSV table": self.csv,
            "plot": self.plot,
            "HTML report": self.html,
            "JUnit XML": self.junit,
        }

    def files(self) -> dict[str, Path | str | None]:
        """format -> path of every report file (stdout excluded), for the writer registry."""
        return {fmt: path for fmt, path in asdict(self).items() if fmt != "quiet" and path != "-"}


@dataclass(frozen=True)
class CheckedOptions:
    """The options one ``validate_options`` call accepted: ``audit`` given these (the CLI
    checks before its output checks) does not check them again."""

    values: tuple[Any, ...]

    @classmethod
    def of(
        cls,
        *,
        sigmas: Sequence[float],
        target_ci: float | None = None,
        fail_under_kpp: float | None = None,
        fail_under_mean: float | None = None,
        rng: str = MonteCarloOptions.rng,
        **options: Any,
    ) -> CheckedOptions:
        gates = {"target_ci": target_ci, "fail_under_kpp": fail_under_kpp}
        gates.update(fail_under_mean=fail_under_mean, rng=rng)
        return cls((tuple(float(s) for s in sigmas), *sorted({**options, **gates}.items())))


#: the default of every audit option, by name (what ``EvalSettings`` starts from)
AUDIT_DEFAULTS: dict[str, Any] = {
    **PerturbOptions().as_kwargs(),
    **DeviceEffectOptions().as_kwargs(),
    **MonteCarloOptions().as_kwargs(),
    **ScaleOutOptions().as_kwargs(),
}
