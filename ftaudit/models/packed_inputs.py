"""Models with several data inputs (a transformer's input_ids, attention_mask, token_type_ids).

ftaudit's engine feeds one array, sliced by image. A model with several inputs whose per-sample
shapes agree is run through one packed input of shape (N, k, *row): in memory, the ONNX graph
takes ``packed[:, i]`` (a Gather) for its i-th input, cast back to that input's type, so every
runner, worker, backend and the analog rewrite see a one-input model and the draws stay keyed
by image. Inputs of different per-sample shapes, each fixed by the model, are packed flat,
(N, total), one input's values after the other's, and sliced and reshaped back. A TorchScript
or torch.export module keeps its own arguments: each call site hands it
``module_arguments(batch, inputs)``, the packed batch split back into one tensor per input. The
packed type is int64 when every input is integer, else float32 (integers then must be exact in
float32: below 2**24 in magnitude). The file on disk is never changed; ``harden`` writes the
original graph, with its inputs, back.

Data (``Dataset.inputs``): each input is fed the .npz array named after it; ``x`` stands for
the first input without one of its own. An input with neither gets the value transformers
gives it when it is omitted (``DEFAULT_INPUTS``), with a warning; any other is refused.
"""

from __future__ import annotations

import math
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
    length = row[-1] if row else 1
    return np.broadcast_to(np.arange(length, dtype=np.int64), (n, *row)).copy()


#: input name -> (what transformers feeds when it is omitted, that value for n samples)
DEFAULT_INPUTS: dict[str, tuple[str, Callable[[int, tuple[int, ...]], np.ndarray]]] = {
    "attention_mask": ("ones (every token attended)", _ones),
    "token_type_ids": ("zeros (one segment)", _zeros),
    "position_ids": ("0, 1, ..., L-1", _positions),
}


def packed_spec(inputs: Sequence[TensorSpec], path: Any, *, declared: bool = True) -> TensorSpec:
    """The packed input of ``inputs`` (N fixed when the inputs fix it): (N, k, *row) stacked
    when their per-sample shapes agree, else (N, total) with each sample's values flattened
    one input after the other (``flat_rows``); a UserError when neither can be done.
    ``declared`` False (TorchScript keeps no input shapes): shape None, stacked, and
    ``packed_array`` refuses data arrays whose rows differ."""
    integer = all(_integral(np.dtype(s.dtype)) for s in inputs)
    dtype = "int64" if integer else "float32"
    if not declared:
        return TensorSpec(PACKED_NAME, None, dtype)
    batch = {spec.shape[0] for spec in inputs if spec.shape} - {None}
    fixed = batch.pop() if len(batch) == 1 else None  # an export for one batch size
    shapes = [tuple(spec.shape or ()) for spec in inputs]
    if not _stacked(shapes):
        if any(len(shape) == 0 or None in shape[1:] for shape in shapes):
            listing = ", ".join(f"{s.name} {_shape_text(s.shape)}" for s in inputs)
            raise UserError(
                f"{path} has {len(inputs)} data inputs of different shapes ({listing}); "
                "ftaudit feeds them only when each has a batch axis and fixed per-sample "
                "dimensions",
                hint="export the model with only the batch axis dynamic, or with inputs of one "
                "shape per sample (as a transformer's input_ids and attention_mask)",
            )
        total = sum(math.prod(row) for row in flat_rows(inputs) or ())
        return TensorSpec(PACKED_NAME, (fixed, total), dtype)
    row = [_agreed(inputs, axis) for axis in range(1, len(shapes[0]))]
    return TensorSpec(PACKED_NAME, (fixed, len(inputs), *row), dtype)


def flat_rows(inputs: Sequence[TensorSpec]) -> list[tuple[int, ...]] | None:
    """Each input's per-sample shape when the inputs are packed flat (their per-sample shapes
    differ: an image beside a vector of features, ids beside one length per sample; fixed, as
    ``packed_spec`` checked); None when they are stacked (one shape, or undeclared as in
    TorchScript)."""
    shapes = [spec.shape for spec in inputs]
    if any(shape is None for shape in shapes) or _stacked(shapes):  # type: ignore[arg-type]
        return None
    return [tuple(int(d or 0) for d in shape[1:]) for shape in shapes if shape is not None]


def _stacked(shapes: Sequence[Sequence[int | None]]) -> bool:
    """One rank (with a batch axis) and no per-sample dimension that two inputs fix apart."""
    return (
        len({len(shape) for shape in shapes}) == 1
        and len(shapes[0]) > 0
        and all(
            len({shape[axis] for shape in shapes} - {None}) <= 1
            for axis in range(1, len(shapes[0]))
        )
    )


def _agreed(inputs: Sequence[TensorSpec], axis: int) -> int | None:
    dims = {spec.shape[axis] for spec in inputs if spec.shape is not None} - {None}
    return dims.pop() if dims else None


def module_arguments(batch: Any, inputs: Sequence[TensorSpec]) -> tuple[Any, ...]:
    """A torch module's arguments for one packed ``batch``, each as its input's dtype:
    ``batch[:, i]`` when stacked, its slice of the flat row reshaped when flat; ``(batch,)``
    when ``inputs`` is empty."""
    if not inputs:
        return (batch,)
    import torch

    rows = flat_rows(inputs)
    if rows is None:
        return tuple(batch[:, i].to(getattr(torch, s.dtype)) for i, s in enumerate(inputs))
    arguments, start = [], 0
    for spec, row in zip(inputs, rows, strict=True):
        size = math.prod(row)
        part = batch[:, start : start + size].reshape(-1, *row)
        arguments.append(part.to(getattr(torch, spec.dtype)))
        start += size
    return tuple(arguments)


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
        if name in DEFAULT_INPUTS and name not in dataset.not_inputs
    ]


def x_input(inputs: Sequence[TensorSpec], dataset: Dataset) -> TensorSpec | None:
    """The input that ``dataset``'s x feeds: the first without an array of its own (none when
    the file holds no x)."""
    if not getattr(dataset, "has_x", True):
        return None
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
    """The packed data for a model with ``inputs`` (``packed``: its spec): (N, k, *row), or
    (N, total) when ``flat_rows`` packs them flat."""
    arrays, missing = _fed(inputs, dataset)
    source = dataset.source.get("path", "the data")
    flat = flat_rows(inputs)
    if flat is not None:
        return _flat_array(inputs, flat, arrays, missing, packed, dataset)
    rows = {a.shape[1:] for a in arrays.values()}
    if len(rows) != 1:
        shapes = ", ".join(f"{name} {_shape_text(a.shape)}" for name, a in arrays.items())
        undeclared = any(spec.shape is None for spec in inputs)
        raise UserError(
            f"the arrays fed to the model's inputs in {source} differ in shape ({shapes})",
            hint="a TorchScript model declares no input shapes, so its inputs must share one "
            "shape per sample: save it with torch.export or ONNX, which declare them"
            if undeclared
            else "save one array per model input, each of shape (N, *row) with the same row",
        )
    row = rows.pop()
    for name in missing:
        arrays[name] = _default(name, row, dataset)
    dtype = np.dtype(packed.dtype)
    out = np.empty((len(dataset.y), len(inputs), *row), dtype)
    for index, spec in enumerate(inputs):
        out[:, index] = _checked(arrays[spec.name], spec, dtype, source)
    return out


def _default(name: str, row: tuple[int, ...], dataset: Dataset) -> np.ndarray:
    """Input ``name``'s transformers default for ``dataset``'s samples, of shape ``row``, or the
    UserError saying which array the data file lacks or cannot feed."""
    why = dataset.not_inputs.get(name)
    if why:  # the file has the array, but it cannot be fed
        raise UserError(
            f"{why}, so it cannot feed the model input '{name}'",
            hint=f"save {name} with one row per sample (the labels' count), as plain numbers",
        )
    if name not in DEFAULT_INPUTS:
        present = ", ".join([*(["x"] if dataset.has_x else []), *sorted(dataset.inputs)])
        raise UserError(
            f"the model input '{name}' has no array in "
            f"{dataset.source.get('path', 'the data')} (arrays: {present})",
            hint=f"save it in the .npz under its name: np.savez(path, x=..., {name}=..., "
            "y=...), one row per sample",
        )
    return DEFAULT_INPUTS[name][1](len(dataset.y), row)


def _flat_array(
    inputs: Sequence[TensorSpec],
    rows: list[tuple[int, ...]],
    arrays: dict[str, np.ndarray],
    missing: list[str],
    packed: TensorSpec,
    dataset: Dataset,
) -> np.ndarray:
    """Each sample's inputs flattened one after the other (inputs of different shapes)."""
    source, n = dataset.source.get("path", "the data"), len(dataset.y)
    parts = []
    for spec, row in zip(inputs, rows, strict=True):
        values = _default(spec.name, row, dataset) if spec.name in missing else arrays[spec.name]
        if math.prod(values.shape[1:]) != math.prod(row):
            raise UserError(
                f"the data for model input '{spec.name}' in {source} has shape "
                f"{_shape_text(values.shape)}, but the input takes {_shape_text((None, *row))}",
                hint=f"save {spec.name} with one row of that shape per sample",
            )
        parts.append(_checked(values.reshape(n, -1), spec, np.dtype(packed.dtype), source))
    return np.concatenate(parts, axis=1).astype(packed.dtype, copy=False)


def unpacked(inputs: Sequence[TensorSpec], packed: np.ndarray) -> dict[str, np.ndarray]:
    """Each input's array of data packed by ``packed_array`` (a Dataset's ``inputs``, so that
    packing them again gives the same array); {} for a one-input model."""
    flat = flat_rows(inputs)
    if flat is None:
        return {spec.name: packed[:, index] for index, spec in enumerate(inputs)}
    arrays, start = {}, 0
    for spec, row in zip(inputs, flat, strict=True):
        size = math.prod(row)
        arrays[spec.name] = packed[:, start : start + size].reshape(-1, *row)
        start += size
    return arrays


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
