"""Models with several data inputs (a transformer's input_ids, attention_mask, token_type_ids).

ftaudit's engine feeds one array, sliced by image. A model with several inputs whose per-sample
shapes agree is run through one packed input of shape (N, k, *row): in memory, the ONNX graph
takes ``packed[:, i]`` (a Gather) for its i-th input, cast back to that input's type, so every
runner, worker, backend and the analog rewrite see a one-input model and the draws stay keyed
by image. A TorchScript or torch.export module keeps its own arguments: each call site hands it
``module_arguments(batch, inputs)``, the packed batch split back into one tensor per input. The
packed type is int64 when every input is integer, else float32 (integers then must be exact in
float32: below 2**24 in magnitude). The file on disk is never changed;
``harden`` writes the original graph, with its inputs, back.

Data (``Dataset.inputs``): each input is fed the .npz array named after it; ``x`` stands for
the first input without one of its own. An input with neither gets the value transformers
gives it when it is omitted (``DEFAULT_INPUTS``), with a warning; any other is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.models.tensor_spec import TensorSpec

if TYPE_CHECKING:
    from ftaudit.data import Dataset

#: the in-memory graph's one data input
PACKED_NAME = "ftaudit_packed_inputs"
#: largest integer magnitude a float32 holds exactly
_FLOAT32_EXACT = 2**24


def _ones(n: int, row: tuple[int, ...]) -> np.ndarray:
    return np.ones((n, *row), np.int64)


def _zeros(n: int, row: tuple[int, ...]) -> np.ndarray:
    return np.zeros((n, *row), np.int64)


def _positions(n: int, row: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.arange(row[-1], dtype=np.int64), (n, *row)).copy()


#: input name -> (what transformers feeds when it is omitted, that value for n samples)
DEFAULT_INPUTS: dict[str, tuple[str, Callable[[int, tuple[int, ...]], np.ndarray]]] = {
    "attention_mask": ("ones (every token attended)", _ones),
    "token_type_ids": ("zeros (one segment)", _zeros),
    "position_ids": ("0, 1, ..., L-1", _positions),
}


def packed_spec(inputs: Sequence[TensorSpec], path: Any, *, declared: bool = True) -> TensorSpec:
    """The packed input (N, k, *row) of ``inputs`` (N fixed when the inputs fix it), or a
    UserError when their per-sample shapes cannot share one array. ``declared`` False
    (TorchScript keeps no input shapes): shape None, and ``packed_array`` refuses data arrays
    whose rows differ."""
    integer = all(_integral(np.dtype(s.dtype)) for s in inputs)
    if not declared:
        return TensorSpec(PACKED_NAME, None, "int64" if integer else "float32")
    ranks = {len(spec.shape) if spec.shape is not None else None for spec in inputs}
    listing = ", ".join(f"{s.name} {_shape_text(s.shape)}" for s in inputs)
    if None in ranks or len(ranks) != 1 or 0 in ranks:
        raise UserError(
            f"{path} has {len(inputs)} data inputs ({listing}); ftaudit feeds several inputs "
            "only when each has a batch axis and all share one rank",
            hint="export the model with one input tensor, or with inputs of one shape per "
            "sample (as a transformer's input_ids and attention_mask)",
        )
    row: list[int | None] = []
    for axis in range(1, ranks.pop() or 0):
        dims = {spec.shape[axis] for spec in inputs if spec.shape is not None} - {None}
        if len(dims) > 1:
            raise UserError(
                f"{path} has {len(inputs)} data inputs ({listing}) whose per-sample shapes "
                "differ; ftaudit feeds several inputs only when they share one shape",
                hint="export the model with one input tensor, or with inputs of one shape per "
                "sample (as a transformer's input_ids and attention_mask)",
            )
        row.append(dims.pop() if dims else None)
    batch = {spec.shape[0] for spec in inputs if spec.shape is not None} - {None}
    fixed = batch.pop() if len(batch) == 1 else None  # an export for one batch size
    return TensorSpec(PACKED_NAME, (fixed, len(inputs), *row), "int64" if integer else "float32")


def module_arguments(batch: Any, inputs: Sequence[TensorSpec]) -> tuple[Any, ...]:
    """A torch module's arguments for one packed ``batch``: ``batch[:, i]`` as input i's dtype
    for a module taking ``inputs`` separately; ``(batch,)`` when ``inputs`` is empty."""
    if not inputs:
        return (batch,)
    import torch

    return tuple(batch[:, i].to(getattr(torch, spec.dtype)) for i, spec in enumerate(inputs))


def packed_call(module: Any, batch: Any, inputs: Sequence[TensorSpec]) -> Any:
    """``module`` run on a packed ``batch`` (``module_arguments``)."""
    return module(*module_arguments(batch, inputs))


def default_warnings(inputs: Sequence[TensorSpec], dataset: Dataset) -> list[str]:
    """A warning per input that ``dataset`` holds no array for and that is fed its transformers
    default."""
    source = dataset.source.get("path", "the data")
    return [
        f"the model input '{name}' has no array in {source}; it is fed "
        f"{DEFAULT_INPUTS[name][0]}, as transformers does when it is omitted (save {name} in "
        "the .npz to set it)"
        for name in _fed(inputs, dataset)[1]
        if name in DEFAULT_INPUTS
    ]


def x_input(inputs: Sequence[TensorSpec], dataset: Dataset) -> TensorSpec | None:
    """The input that ``dataset``'s x feeds: the first without an array of its own."""
    return next((spec for spec in inputs if spec.name not in dataset.inputs), None)


def _fed(inputs: Sequence[TensorSpec], dataset: Dataset) -> tuple[dict[str, np.ndarray], list[str]]:
    """The data array each input is fed (its own, or x for the first without one), and the
    inputs left without one."""
    arrays: dict[str, np.ndarray] = {}
    primary = x_input(inputs, dataset)
    for spec in inputs:
        if spec.name in dataset.inputs:
            arrays[spec.name] = dataset.inputs[spec.name]
        elif spec == primary:
            integral = _integral(np.dtype(spec.dtype)) and dataset.x_raw is not None
            arrays[spec.name] = dataset.x_raw if integral else dataset.x
    return arrays, [s.name for s in inputs if s.name not in arrays]


def packed_array(inputs: Sequence[TensorSpec], packed: TensorSpec, dataset: Dataset) -> np.ndarray:
    """The packed data (N, k, *row) for a model with ``inputs`` (``packed``: its spec)."""
    arrays, missing = _fed(inputs, dataset)
    source = dataset.source.get("path", "the data")
    rows = {a.shape[1:] for a in arrays.values()}
    if len(rows) != 1:
        shapes = ", ".join(f"{name} {_shape_text(a.shape)}" for name, a in arrays.items())
        raise UserError(
            f"the arrays fed to the model's inputs in {source} differ in shape ({shapes})",
            hint="save one array per model input, each of shape (N, *row) with the same row",
        )
    row = rows.pop()
    n = len(dataset.y)
    for name in missing:
        if name not in DEFAULT_INPUTS:
            present = ", ".join(["x", *sorted(dataset.inputs)])
            raise UserError(
                f"the model input '{name}' has no array in {source} (arrays: {present})",
                hint=f"save it in the .npz under its name: np.savez(path, x=..., "
                f"{name}=..., y=...), one row per sample",
            )
        arrays[name] = DEFAULT_INPUTS[name][1](n, row)
    dtype = np.dtype(packed.dtype)
    out = np.empty((n, len(inputs), *row), dtype)
    for index, spec in enumerate(inputs):
        out[:, index] = _checked(arrays[spec.name], spec, dtype, source)
    return out


def unpacked(inputs: Sequence[TensorSpec], packed: np.ndarray) -> dict[str, np.ndarray]:
    """Each input's array of data packed by ``packed_array`` (a Dataset's ``inputs``, so that
    packing them again gives the same array); {} for a one-input model."""
    return {spec.name: packed[:, index] for index, spec in enumerate(inputs)}


def _checked(values: np.ndarray, spec: TensorSpec, packed: np.dtype[Any], source: Any) -> Any:
    """``values`` as the packed dtype, refused when they do not fit the input's own type."""
    target = np.dtype(spec.dtype)
    if _integral(target):
        if values.dtype == np.bool_:
            values = values.astype(np.int64)
        if not np.issubdtype(values.dtype, np.integer):
            whole = np.isfinite(values) & (values == np.round(values))
            if not whole.all():
                raise UserError(
                    f"the model input '{spec.name}' is {target.name}, but its data in {source} "
                    "holds values that are not whole numbers",
                    hint=f"save {spec.name} as integers",
                )
        allowed = (0, 1) if target == np.bool_ else (np.iinfo(target).min, np.iinfo(target).max)
        low, high = (values.min(), values.max()) if values.size else (0, 0)
        limit = _FLOAT32_EXACT if packed == np.float32 else None
        if low < allowed[0] or high > allowed[1] or (limit and max(-low, high) > limit):
            bound = f"+-{limit} when packed with real-valued inputs" if limit else target.name
            raise UserError(
                f"the data for model input '{spec.name}' in {source} holds values from "
                f"{low:g} to {high:g}, outside what it can take ({bound})",
                hint="check that the data belongs to this model (token ids within its vocabulary)",
            )
    elif values.dtype == np.bool_:
        values = values.astype(np.float32)
    return values.astype(packed, copy=False)


def _integral(dtype: np.dtype[Any]) -> bool:
    """Integer and bool inputs (token ids, masks) pack exactly as int64."""
    return bool(np.issubdtype(dtype, np.integer) or dtype == np.bool_)


def _shape_text(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "(unknown)"
    return (
        "("
        + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape))
        + ")"
    )
