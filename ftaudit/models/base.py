"""The small interface every model format implements: crossbar layers, clean weights, a runner."""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.models.tensor_spec import TensorSpec


def contiguous_input(x: np.ndarray) -> np.ndarray:
    """Model input as a contiguous array: float32 for real-valued data; integer data (token ids,
    already checked against the model's input dtype) keep their integer type."""
    if np.issubdtype(x.dtype, np.integer):
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class CrossbarLayer:
    """One weight tensor that an analog crossbar stores (perturbed by the noise models).

    ``index`` is the layer's position among all crossbar layers in execution order; noise draws
    are keyed by it, so the same network in two formats gets the same draws. Draws are made in a
    canonical "output features first" layout; ``transposed`` says the stored tensor is the 2-D
    transpose of that layout (ONNX MatMul/Gemm weights stored as (in, out)).
    """

    name: str
    op: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    transposed: bool = False
    macs: int | None = None

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.transposed else self.shape

    @property
    def params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def to_native(self, canonical: np.ndarray) -> np.ndarray:
        """View an array of shape (d, *canonical_shape) in the stored layout (no copy)."""
        if not self.transposed:
            return canonical
        return np.swapaxes(canonical, -1, -2)


class ModelRunner(ABC):
    """Runs one model repeatedly over bound data with swappable crossbar weights."""

    @abstractmethod
    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        """Keep the evaluation data ready for repeated passes (split, padded, on the device)."""

    @abstractmethod
    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Use these arrays (stored layout) for the selected crossbar layers from now on."""

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Logits over all bound data, shape (n, classes)."""

    #: exceptions the framework raises when the data does not fit the model
    runtime_errors: tuple[type[BaseException], ...] = ()
    #: whether every pass draws fresh read noise (the analog pipeline), so even unperturbed
    #: weights give a different accuracy per Monte Carlo sample
    random_reads: bool = False
    _labels: np.ndarray

    def set_sample(self, seed: int, sample: int | None) -> None:
        """Key the per-read randomness of the next passes by (seed, sample); None: no read
        noise. Runners without read noise ignore it."""
        return None

    #: whether the runner multiplies each crossbar layer's output by a digital gain after its
    #: ADC (``set_gains``; the analog pipeline's tiles): global drift compensation is then fed
    #: as gains beside the drifted weights, as a chip applies it; other runners take alpha * W
    digital_gains: bool = False

    def set_gains(self, gains: Mapping[str, float] | None) -> None:
        """Multiply each named crossbar layer's summed tile outputs by its gain (before the
        bias) in the next passes; None: every gain 1. Only runners with ``digital_gains``."""
        if gains is not None:
            raise NotImplementedError(f"{type(self).__name__} applies no digital gains")

    def count_correct(self) -> int:
        """Number of bound samples whose arg-max logit equals the label."""
        return int(np.count_nonzero(self.logits().argmax(axis=1) == self._labels))

    #: (seed, one sample per weight set) keying the next ``count_correct_many``, else None
    _samples_key: tuple[int, list[int]] | None = None
    #: the gains of each weight set of the next ``count_correct_many``, else None
    _gain_sets: list[Mapping[str, float] | None] | None = None

    def set_samples(self, seed: int, samples: Sequence[int]) -> None:
        """Key the read noise of the next ``count_correct_many``: weight set k reads as Monte
        Carlo sample ``samples[k]`` (without it, every set reads as the last ``set_sample``)."""
        self._samples_key = (seed, list(samples))

    def set_gain_sets(self, gains: Sequence[Mapping[str, float] | None]) -> None:
        """The gains of the next ``count_correct_many``: weight set k is read with ``gains[k]``
        (``set_gains``; without it, every set with the last ``set_gains``)."""
        self._gain_sets = list(gains)

    def count_correct_many(self, weight_sets: Sequence[Mapping[str, np.ndarray]]) -> list[int]:
        """Correct counts for several weight sets; runners that can batch them override this."""
        keys, self._samples_key = self._samples_key, None
        gain_sets, self._gain_sets = self._gain_sets, None
        counts = []
        for k, weights in enumerate(weight_sets):
            if keys is not None:
                self.set_sample(keys[0], keys[1][k])
            if gain_sets is not None:
                self.set_gains(gain_sets[k])
            self.set_weights(weights)
            counts.append(self.count_correct())
        if gain_sets is not None:
            self.set_gains(None)
        return counts

    def checked_logits(self, data_shape: tuple[int, ...]) -> np.ndarray:
        """Logits of the first pass, turning framework errors and odd outputs into UserErrors."""
        try:
            logits = self.logits()
        except self.runtime_errors as exc:
            text = str(exc).strip()
            first = text.splitlines()[-1] if text else exc.__class__.__name__
            raise UserError(
                f"the model cannot run on data x of shape {data_shape}: {first[:300]}",
                hint="give data in the model's input shape and layout",
            ) from exc
        if logits.ndim != 2 or logits.shape[0] != data_shape[0]:
            raise UserError(
                f"the model's output has shape {tuple(logits.shape)}; ftaudit expects logits "
                f"of shape (N, classes) for N = {data_shape[0]} inputs",
                hint="evaluate a classifier output (ONNX: choose it with --output NAME)",
            )
        if not np.issubdtype(logits.dtype, np.floating):
            raise UserError(
                f"the model's output has dtype {logits.dtype}; ftaudit expects floating-point "
                "logits (an arg-max over integers or booleans ties silently)",
                hint="evaluate the class scores (ONNX: choose them with --output NAME)",
            )
        if not np.isfinite(logits).all():
            raise UserError(
                "the model's output on the clean data holds NaN or infinite values",
                hint="check the model's weights and the data (NaN weights, overflowing inputs)",
            )
        return logits


@dataclass
class AuditModel(ABC):
    """A loaded model file: its format, interface and crossbar layers; never written back."""

    path: Path
    format: str
    input: TensorSpec
    output: TensorSpec
    layers: list[CrossbarLayer]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: operators whose stored weight is NOT perturbed, with why (``onnx_graph.UntracedOp``)
    untraced: list[Any] = field(default_factory=list)
    #: conv layer name -> its following BatchNorm's per-channel factor (``models.folding``);
    #: cleared to perturb the unfolded weights
    fold_scales: dict[str, np.ndarray] = field(default_factory=dict)
    #: a model with several data inputs: those inputs, fed through the one packed ``input``
    #: (``ftaudit.models.packed_inputs``); empty for a one-input model
    data_inputs: tuple[TensorSpec, ...] = ()
    #: 'sigmoid' or 'softmax' when the output is that op's probabilities, not logits: a
    #: one-column sigmoid is read back to its logit, a softmax is trained on its log
    #: (``models.binary_head``)
    output_activation: str | None = None
    #: a TorchScript or torch.export forward returning several tensors: the one evaluated
    #: (``--output 1`` or ``output[1]``; ``torch_output_index``)
    output_index: int = 0

    @abstractmethod
    def clean_weights(self) -> dict[str, np.ndarray]:
        """The stored (unperturbed) crossbar weights as float arrays, keyed by layer name."""

    @abstractmethod
    def runner(
        self, selected: Sequence[CrossbarLayer], *, device: str, threads: int | None = None
    ) -> ModelRunner:
        """A runner whose ``selected`` layers take their weights from ``set_weights``
        (``threads``: intra-op threads, None for the runtime's default)."""

    def crossbar_weights(self) -> dict[str, np.ndarray]:
        """The weights the crossbar stores: ``clean_weights`` with BatchNorm folded into the
        convolutions before it (see ``ftaudit.models.folding``)."""
        weights = self.clean_weights()
        for name, scale in self.fold_scales.items():
            weights[name] = (weights[name] * scale).astype(weights[name].dtype, copy=False)
        return weights

    def input_dict(self) -> dict[str, Any]:
        """The fed input for reports; with ``packed_inputs``, the model's own inputs, when the
        fed input packs several."""
        packed = [spec.to_dict() for spec in self.data_inputs]
        return {**self.input.to_dict(), **({"packed_inputs": packed} if packed else {})}

    def output_dict(self) -> dict[str, Any]:
        """The evaluated output for reports; with ``binary_output``, the one-column output
        it is read from as two classes (``models.binary_head``); with ``other_outputs``, the
        model's other floating-point outputs, which the audit does not read."""
        source = self.metadata.get("binary_output")
        others = self.metadata.get("other_outputs")
        return {
            **self.output.to_dict(),
            **({"binary_output": source} if source else {}),
            **({"other_outputs": list(others)} if others else {}),
        }

    @property
    def integer_input(self) -> bool:
        """The model takes integers (token ids): data are fed unscaled."""
        return np.issubdtype(np.dtype(self.input.dtype), np.integer)

    def input_array(self, dataset: Any) -> np.ndarray:
        """A Dataset's x as this model takes it: the stored integers for an integer input
        (never divided by 255), float32 otherwise; every input packed into one array for a
        model with several; reshaped by ``fit_input``."""
        if self.data_inputs:
            from ftaudit.models.packed_inputs import packed_array

            return self.fit_input(packed_array(self.data_inputs, self.input, dataset))
        if not dataset.has_x:
            present = ", ".join(sorted(dataset.inputs))
            raise UserError(
                f"{dataset.source.get('path')} has no array 'x' (arrays present: {present}, y), "
                f"and {self.path} takes one input",
                hint="save the inputs as x: np.savez(path, x=inputs, y=labels)",
            )
        if self.integer_input:
            from ftaudit.data import integer_input

            return self.fit_input(integer_input(dataset, self.input.dtype, name=self.input.name))
        return self.fit_input(dataset.x)

    def data_warnings(self, dataset: Any) -> list[str]:
        """What the user is probably wrong about in ``dataset`` for this model: the pixel-scale
        warning (not when x feeds token ids) and each input fed its transformers default."""
        if self.data_inputs:
            from ftaudit.models.packed_inputs import default_warnings, x_input

            defaults = default_warnings(self.data_inputs, dataset)
            fed = x_input(self.data_inputs, dataset)  # the pixel warning is about x
            floats = fed is not None and not np.issubdtype(np.dtype(fed.dtype), np.integer)
            return [*(dataset.warnings if floats else ()), *defaults]
        return [] if self.integer_input else list(dataset.warnings)

    def fit_input(self, x: np.ndarray) -> np.ndarray:
        """Data x reshaped to the model's declared input shape (or a UserError)."""
        from ftaudit.data import fit_to_model

        return (
            x
            if self.input.shape is None
            else fit_to_model(x, self.input.shape, name=self.input.name)
        )

    def select_layers(
        self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
    ) -> list[CrossbarLayer]:
        """Crossbar layers chosen by name globs (all by default, minus ``exclude``)."""
        chosen = [
            layer
            for layer in self.layers
            if (not include or any(fnmatch.fnmatchcase(layer.name, g) for g in include))
            and not any(fnmatch.fnmatchcase(layer.name, g) for g in (exclude or ()))
        ]
        if not self.layers and self.untraced:
            ops = sorted({op.op for op in self.untraced})
            raise UserError(
                f"{self.path} has no crossbar weight ftaudit can perturb: its "
                f"{len(self.untraced)} weight-reading operator(s) ({', '.join(ops)}) are not "
                f"perturbed because {self.untraced[0].reason.split('; ')[0]}",
                hint=self.untraced[0].reason.split("; ")[-1]
                if "; " in self.untraced[0].reason
                else "run ftaudit inspect to see each operator and why",
            )
        if not self.layers:
            raise UserError(
                f"{self.path} has no crossbar layer (no Conv, ConvTranspose, Gemm, MatMul or "
                "Linear weight was found)",
                hint="ftaudit perturbs the weights of those layers; check the model file",
            )
        if not chosen:
            names = ", ".join(layer.name for layer in self.layers)
            raise UserError(
                "no crossbar layer is selected by --layers/--exclude",
                hint=f"the model's crossbar weights are: {names}",
            )
        return chosen


def torch_output_index(requested: str | None, count: int, path: Path) -> int:
    """The tensor of a torch forward's returned tuple that ``--output`` names: its index
    (``1``) or ``output[1]``; the first when none is named. Out of range is a UserError."""
    if requested is None:
        return 0
    text = requested.strip()
    if text.startswith("output[") and text.endswith("]"):
        text = text[len("output[") : -1]
    names = ", ".join(f"output[{i}]" for i in range(count))
    if not text.isdigit() or int(text) >= count:
        raise UserError(
            f"{path} has no output '{requested}': its forward returns "
            f"{count} tensor{'s' if count > 1 else ''} ({names})",
            hint="name a torch model's output by its position: --output 1 (or output[1])",
        )
    return int(text)
