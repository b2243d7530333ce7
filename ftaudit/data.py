"""Evaluation data: .npz / IDX / image folders -> (x, y), checked against the model's input.

Sources (``load_dataset`` tells them apart by name, never by unpickling anything):

* ``.npz`` with arrays ``x`` (inputs, batch axis first) and ``y`` (class indices). Loaded with
  ``allow_pickle=False``: object arrays are refused. Any other array with one row per sample is
  kept in ``Dataset.inputs`` under its name, as stored: a model with several inputs (a
  transformer's ``attention_mask``) is fed the array named after each input, and then ``x``
  may be left out (``Dataset.has_x``).
* MNIST / Fashion-MNIST IDX files, gzip-compressed or raw: the images file
  (``t10k-images-idx3-ubyte.gz``; its labels file ``t10k-labels-idx1-ubyte[.gz]`` must sit next to
  it) or a folder holding exactly one images/labels pair.
* A folder of class sub-folders of PNG/JPEG images. The class index of a sub-folder is its
  position in the sorted list of sub-folder names (Python string order, so ``10`` sorts before
  ``2``: name them ``00``, ``01``, ...). Images are read as they are, never resized or converted:
  all must share one size and mode, ``L`` (giving ``(H, W)``) or ``RGB`` (giving channels-first
  ``(3, H, W)``). Files without a .png/.jpg/.jpeg suffix and hidden files are ignored.

dtype handling, applied after ``limit`` so that only the kept samples are converted: a model
whose input is an integer type (token ids) is fed the stored integers unscaled, checked to fit
its dtype (``integer_input``). For float inputs,
uint8 inputs are scaled to float32 in [0, 1] by dividing by 255; other integer and all float
inputs are cast to float32 with their values unchanged; bool inputs are refused. Then the
optional normalisation ``(x - mean) / std`` runs on those values, with ``mean``/``std`` either
one number or one number per channel (broadcast along axis 1, as torchvision's ``Normalize``
does after ``ToTensor``). Labels become int64.

Provenance: ``Dataset.source["sha256"]`` is the file's sha256 for .npz; for an IDX pair and an
image folder it is a sha256 over the sorted relative paths and sha256s of the data files it is
made of (the images and labels files; every image file), so it does not depend on the limit
nor on unrelated files lying next to the data.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.data_files import idx_header, read_idx, read_npz
from ftaudit.errors import UserError
from ftaudit.fileio import sha256_file
from ftaudit.limits import require_regular_file

SUPPORTED_FORMATS = (
    "an .npz file with arrays x and y; an MNIST/Fashion-MNIST IDX images file "
    "(*-images-idx3-ubyte or .gz) or a folder holding one IDX images/labels pair; "
    "a folder of class sub-folders of PNG/JPEG images"
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

_IDX_IMAGES = re.compile(r"images([-.])idx3")
_IDX_LABELS = re.compile(r"labels([-.])idx1")

# What each loader returns: raw x (limit applied, dtype as stored), int64 y, source sha256, and
# the other per-sample arrays by name (.npz only; raw, limit applied).
_Loaded = tuple[np.ndarray | None, np.ndarray, str, dict[str, np.ndarray | str]]


@dataclass(frozen=True, eq=False)  # eq=False: comparing or hashing arrays is meaningless here
class Dataset:
    """Inputs (float32, batch axis first), int64 labels and where they came from."""

    x: np.ndarray
    y: np.ndarray
    source: dict[str, Any]
    #: x as stored when it was stored as integers (unscaled, unnormalised): what a model with
    #: an integer input (token ids) is fed instead of ``x``
    x_raw: np.ndarray | None = None
    #: things the user is probably wrong about (shown as warnings by the CLI), e.g. pixel values
    warnings: tuple[str, ...] = ()
    #: the .npz's other arrays with one row per sample, by name, as stored (limit applied): the
    #: further inputs of a model with several (``ftaudit.models.packed_inputs``)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: False for an .npz that holds one array per model input and no x (x is then empty)
    has_x: bool = True
    #: the .npz's other arrays that cannot be inputs, by name: why (said if a model asks)
    not_inputs: dict[str, str] = field(default_factory=dict)


def load_dataset(
    path: Path,
    *,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Dataset:
    """Load an .npz, IDX or image-folder data set, keep the first ``limit`` samples, normalise."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(
            f"the sample limit must be at least 1, got {limit}",
            hint="pass a positive number of samples, or no limit to use them all",
        )
    if not path.exists():
        raise UserError(
            f"data file {path} does not exist",
            hint="check the path; a relative path starts from the current folder",
        )
    if not path.is_dir():
        require_regular_file(path, "data file")
    kind, files = _find_source(path)
    for file in files:
        require_regular_file(file, "data file")
    x, y, sha256, others = _LOADERS[kind](path, files, limit)
    inputs = {k: v for k, v in others.items() if isinstance(v, np.ndarray)}
    has_x = x is not None  # an .npz with one array per input of a model with several
    x = x if x is not None else np.zeros((len(y), 0), np.float32)
    x_raw = x if np.issubdtype(x.dtype, np.integer) and mean is None and std is None else None
    scale_warning = None if x.dtype == np.uint8 else pixel_scale_warning(x, path)
    x = _to_float32(x, path)
    _check_finite(x, path)
    if (mean is not None or std is not None) and has_x:
        x = _normalise(x, mean=mean, std=std)
        scale_warning = None  # the user chose a scale
    source = {"path": str(path), "sha256": sha256, "kind": kind, "n": len(y), "limit": limit}
    return Dataset(
        x=x,
        y=y,
        source=source,
        warnings=(scale_warning,) if scale_warning else (),
        x_raw=x_raw,
        inputs=inputs,
        has_x=has_x,
        not_inputs={k: v for k, v in others.items() if isinstance(v, str)},
    )


def integer_input(dataset: Dataset, dtype: str, *, name: str = "input") -> np.ndarray:
    """Data for a model whose input is integer (token ids, class indices): the stored integers,
    unscaled, checked to fit ``dtype``; float data only when every value is a whole number."""
    target = np.dtype(dtype)
    values = dataset.x_raw
    if values is None:
        whole = np.isfinite(dataset.x) & (dataset.x == np.round(dataset.x))
        if not whole.all():
            first = tuple(int(i) for i in np.argwhere(~whole)[0])
            raise UserError(
                f"the model input '{name}' is {target.name} (e.g. token ids), but data x"
                f"{list(first)} = {dataset.x[first]:g} is not a whole number",
                hint="save x as integers, without --mean/--std (integer inputs are fed as "
                "stored, never scaled or normalised)",
            )
        values = dataset.x
    info = np.iinfo(target)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < info.min or high > info.max:
        raise UserError(
            f"data x holds values from {low:g} to {high:g}, outside the range of the model "
            f"input '{name}' ({target.name}: {info.min} to {info.max})",
            hint="check that the data belongs to this model (token ids within its vocabulary)",
        )
    return values.astype(target)


def pixel_scale_warning(x: np.ndarray, path: Path) -> str | None:
    """A warning when non-uint8 inputs look like 0..255 pixel values (used unchanged, unlike
    uint8, which is scaled to [0, 1]): a model trained on [0, 1] silently loses accuracy."""
    if x.size == 0 or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        return None
    low, high = float(np.min(x)), float(np.max(x))
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or not 1.0 < high <= 255.0:
        return None
    return (
        f"inputs x in {path} are {x.dtype} values in [{low:g}, {high:g}], used unchanged; a model "
        "trained on [0, 1] inputs loses accuracy on them: save x / 255 (or uint8, which is "
        "scaled), or pass --std 255, unless the model expects 0..255"
    )


def fit_to_model(
    x: np.ndarray, input_shape: Sequence[int | None], *, name: str = "input"
) -> np.ndarray:
    """Return ``x`` reshaped to the model input (batch first, None = dynamic) or raise UserError.

    Only two reshapes are automatic, both free of guessing: flattening for a model that takes a
    flat vector, and adding or dropping singleton axes ((N, 28, 28) -> (N, 1, 28, 28)). Any
    transposition (channels-last vs channels-first) is left to the user.
    """
    expected = [_known_dim(dim) for dim in input_shape]
    if not expected:
        raise UserError(
            f"the model input '{name}' is a scalar, with no batch axis",
            hint="ftaudit evaluates models whose first input axis is the batch",
        )
    expected_rest, actual_rest = expected[1:], tuple(x.shape[1:])
    same_rank = x.ndim >= 1 and len(actual_rest) == len(expected_rest)
    if same_rank and all(
        want is None or want == have for want, have in zip(expected_rest, actual_rest, strict=True)
    ):
        return x
    if x.ndim >= 1 and None not in expected_rest:
        known_rest = [int(dim) for dim in expected_rest if dim is not None]
        if len(known_rest) == 1 and math.prod(actual_rest) == known_rest[0]:
            return x.reshape(x.shape[0], known_rest[0])
        if _without_ones(actual_rest) == _without_ones(known_rest):
            return x.reshape(x.shape[0], *known_rest)
    raise UserError(
        f"data x has shape {_shape_text(x.shape)} but the model input '{name}' expects "
        f"{_shape_text(expected)}",
        hint=_layout_hint(tuple(x.shape), expected),
    )


def validate_labels(y: np.ndarray, num_classes: int) -> None:
    """Raise UserError unless every label lies in ``[0, num_classes)``."""
    if num_classes < 1:
        raise UserError(
            f"the model has {num_classes} output classes",
            hint="ftaudit audits classifiers: the model's last axis must hold class scores",
        )
    outside = np.flatnonzero((y < 0) | (y >= num_classes))
    if outside.size:
        first = int(outside[0])
        raise UserError(
            f"label {y[first]} (sample {first}, one of {outside.size} out of range) is not a "
            f"class of the model, which has {num_classes} classes (0 to {num_classes - 1})",
            hint="check that the data belongs to this model and that labels are 0-based",
        )


# --- finding the source ---------------------------------------------------------------------


def _find_source(path: Path) -> tuple[str, list[Path]]:
    """Tell the data kind from names and return the files to read (for IDX: images, labels)."""
    if path.is_dir():
        images_files = sorted(p for p in path.iterdir() if p.is_file() and _is_idx_images(p))
        if images_files:
            return "idx", _idx_pair(_single_idx_images(path, images_files))
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return "images", []
        raise UserError(
            f"data folder {path} holds neither an IDX images/labels pair nor class sub-folders",
            hint=f"supported formats: {SUPPORTED_FORMATS}",
        )
    if path.suffix.lower() == ".npz":
        return "npz", [path]
    if _is_idx_images(path):
        return "idx", _idx_pair(path)
    if _IDX_LABELS.search(path.name):
        raise UserError(
            f"{path} is an IDX labels file",
            hint="pass the matching images file (*-images-idx3-ubyte); its labels are found "
            "next to it",
        )
    raise UserError(
        f"unsupported data format: {path.name}", hint=f"supported formats: {SUPPORTED_FORMATS}"
    )


def _is_idx_images(path: Path) -> bool:
    return _IDX_IMAGES.search(path.name) is not None


def _strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _single_idx_images(folder: Path, images_files: list[Path]) -> Path:
    """The one IDX images file of a folder; a raw and a .gz copy of it count as one."""
    by_base: dict[str, list[Path]] = {}
    for file in images_files:
        by_base.setdefault(_strip_gz(file.name), []).append(file)
    if len(by_base) > 1:
        names = ", ".join(sorted(by_base))
        raise UserError(
            f"data folder {folder} holds several IDX image sets ({names})",
            hint=f"pass the images file you want, e.g. {by_base[min(by_base)][0]}",
        )
    (variants,) = by_base.values()
    # Prefer the uncompressed copy: same bytes, no decompression.
    return min(variants, key=lambda file: file.name.lower().endswith(".gz"))


def _idx_pair(images: Path) -> list[Path]:
    """Images file and its labels file (images-idx3 -> labels-idx1, either compression)."""
    labels_base = _IDX_IMAGES.sub(r"labels\1idx1", _strip_gz(images.name))
    same_compression_first = (
        [labels_base + ".gz", labels_base]
        if images.name.lower().endswith(".gz")
        else [labels_base, labels_base + ".gz"]
    )
    for name in same_compression_first:
        if (images.parent / name).is_file():
            return [images, images.parent / name]
    raise UserError(
        f"no labels file next to the IDX images file {images}",
        hint=f"put {labels_base}.gz (or {labels_base}) in {images.parent}",
    )


# --- loaders -----------------------------------------------------------------------------------


def _load_npz(path: Path, files: list[Path], limit: int | None) -> _Loaded:
    x, y, inputs = read_npz(path, limit)
    _check_not_empty(len(y), path)
    return x, _labels(y, path), sha256_file(path), inputs


def _load_idx(path: Path, files: list[Path], limit: int | None) -> _Loaded:
    images_file, labels_file = files
    x_dims = idx_header(images_file)[0]
    y_dims = idx_header(labels_file)[0]
    if len(y_dims) != 1:
        raise UserError(
            f"IDX labels file {labels_file} has shape {y_dims}; labels must be 1-D",
            hint="check that the labels file is the *-labels-idx1-* file of this data set",
        )
    if x_dims[0] != y_dims[0]:
        raise UserError(
            f"IDX images file {images_file} holds {x_dims[0]} images but {labels_file} holds "
            f"{y_dims[0]} labels",
            hint="the two files must come from the same data set split",
        )
    _check_not_empty(y_dims[0], images_file)
    x = read_idx(images_file, limit)
    y = read_idx(labels_file, limit)
    return x, _labels(y, labels_file), _sha256_files(images_file.parent, files), {}


def _load_image_folder(path: Path, files: list[Path], limit: int | None) -> _Loaded:
    from PIL import Image  # Pillow is only needed for this source; keep `import ftaudit` light.

    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [
        (file, label)
        for label, class_dir in enumerate(class_dirs)
        for file in sorted(class_dir.iterdir())
        if file.is_file() and not file.name.startswith(".")
        if file.suffix.lower() in IMAGE_SUFFIXES
    ]
    _check_not_empty(len(samples), path)
    sha256 = _sha256_files(path, [file for file, _ in samples])
    samples = samples[:limit]

    first_file = samples[0][0]
    x: np.ndarray | None = None
    reference: tuple[tuple[int, int], str] | None = None
    for index, (file, _label) in enumerate(samples):
        try:
            with warnings.catch_warnings():
                # a decompression-bomb warning is an error here: one line, not a warning
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as image:
                    image.load()
                    pixels = np.asarray(image)
                    size_mode = (image.size, image.mode)
        except (
            OSError,
            SyntaxError,
            ValueError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as exc:
            raise UserError(
                f"cannot read image {file}: {exc}",
                hint="remove or replace the file (only PNG/JPEG images are read)",
            ) from exc
        if reference is None:
            if size_mode[1] not in ("L", "RGB"):
                raise UserError(
                    f"image {file} has mode {size_mode[1]}; only L (grayscale) and RGB are read",
                    hint="convert the images to grayscale or RGB (ftaudit never converts them)",
                )
            reference = size_mode
        elif size_mode != reference:
            raise UserError(
                f"image {file} is {_size_mode_text(size_mode)} but the first image "
                f"{first_file} is {_size_mode_text(reference)}",
                hint="images are not resized or converted: make them all one size and mode",
            )
        if pixels.ndim == 3:  # RGB: (H, W, 3) -> channels-first (3, H, W)
            pixels = pixels.transpose(2, 0, 1)
        if x is None:
            x = np.empty((len(samples), *pixels.shape), dtype=pixels.dtype)
        x[index] = pixels
    assert x is not None  # samples is not empty
    y = np.array([label for _, label in samples], dtype=np.int64)
    return x, y, sha256, {}


_LOADERS = {"npz": _load_npz, "idx": _load_idx, "images": _load_image_folder}


# --- helpers ----------------------------------------------------------------------------------


def _check_not_empty(n: int, path: Path) -> None:
    if n == 0:
        raise UserError(f"data set {path} holds no samples", hint="pass a non-empty data set")


def _sha256_files(root: Path, files: list[Path]) -> str:
    """sha256 over sorted (relative path, file sha256) pairs: stable for a set of files."""
    digest = hashlib.sha256()
    for relative, file in sorted((file.relative_to(root).as_posix(), file) for file in files):
        digest.update(f"{relative}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _labels(y: np.ndarray, path: Path) -> np.ndarray:
    """Class indices as int64; float labels are accepted when they are whole numbers."""
    if np.issubdtype(y.dtype, np.integer):
        if y.size and y.dtype == np.uint64 and int(y.max()) > np.iinfo(np.int64).max:
            first = int(np.argmax(y > np.iinfo(np.int64).max))
            raise UserError(
                f"label y[{first}] = {y[first]} in {path} is not a class index",
                hint="y must hold integer class indices (0, 1, 2, ...)",
            )
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        # a whole number beyond 2**53 is no class index, and would wrap when cast to int64
        not_whole = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) >= 2.0**53))
        if not_whole.size == 0:
            return y.astype(np.int64)
        first = int(not_whole[0])
        raise UserError(
            f"label y[{first}] = {y[first]} in {path} is not a whole-number class index",
            hint="y must hold integer class indices (0, 1, 2, ...)",
        )
    raise UserError(
        f"labels y in {path} have dtype {y.dtype}; they must be integer class indices",
        hint="save y as an integer array, e.g. y.astype(np.int64)",
    )


def _check_finite(x: np.ndarray, path: Path) -> None:
    """NaN or infinite inputs would give silently wrong accuracies: refuse them."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.size else np.zeros(0, bool)
    if bad.any():
        first = int(np.argmax(bad))
        raise UserError(
            f"inputs x in {path} hold NaN or infinite values ({int(bad.sum())} samples, the "
            f"first is sample {first})",
            hint="clean the data (or a float32 overflow of large values) before the audit",
        )


def _to_float32(x: np.ndarray, path: Path) -> np.ndarray:
    """uint8 -> float32 / 255; other integers and floats -> float32 unchanged; anything else: no."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if x.dtype == np.bool_:
        raise UserError(
            f"inputs x in {path} are booleans",
            hint="save x as uint8 (0/255) or float; ftaudit does not guess a scale for bools",
        )
    raise UserError(
        f"inputs x in {path} have dtype {x.dtype}; they must be numeric",
        hint="save x as a uint8 or float array",
    )


def _normalise(
    x: np.ndarray, *, mean: Sequence[float] | None, std: Sequence[float] | None
) -> np.ndarray:
    """(x - mean) / std with one value or one value per channel (axis 1)."""
    # x is a fresh float32 array from _to_float32, so it is safe to update in place.
    if mean is not None:
        x -= _per_channel(mean, "mean", x)
    if std is not None:
        std_values = _per_channel(std, "std", x)
        if np.any(std_values <= 0):
            raise UserError(
                f"std values must be greater than 0, got {list(np.ravel(std_values))}",
                hint="pass the per-channel standard deviations of the training data",
            )
        x /= std_values
    return x


def _per_channel(values: Sequence[float] | float, what: str, x: np.ndarray) -> np.ndarray:
    """Values as float32 shaped to broadcast along axis 1 of ``x``."""
    try:
        array = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"{what} must be numbers, got {values!r}", hint=f"e.g. {what}=[0.5] or three values"
        ) from exc
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise UserError(
            f"{what} must be one or more finite numbers, got {values!r}",
            hint="pass one value, or one per channel",
        )
    if array.size == 1:
        return array.reshape(())
    channels = x.shape[1] if x.ndim >= 2 else None
    if array.size != channels:
        layout = f"{channels} channels along axis 1" if channels else "no channel axis"
        raise UserError(
            f"{what} has {array.size} values but the data (x shape {_shape_text(x.shape)}) "
            f"has {layout}",
            hint=f"pass one {what} value, or one per channel along axis 1",
        )
    return array.reshape(channels, *([1] * (x.ndim - 2)))


def _known_dim(dim: Any) -> int | None:
    """A positive integer size, or None for dynamic/symbolic dimensions."""
    if isinstance(dim, int | np.integer) and not isinstance(dim, bool) and dim > 0:
        return int(dim)
    return None


def _without_ones(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(dim for dim in shape if dim != 1)


def _shape_text(shape: Sequence[int | None]) -> str:
    """(N, 28, 28) with N for the batch axis and ? for dynamic axes."""
    dims = ["N", *("?" if dim is None else str(dim) for dim in list(shape)[1:])]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def _size_mode_text(size_mode: tuple[tuple[int, int], str]) -> str:
    (width, height), mode = size_mode
    return f"{width}x{height} {mode}"


def _layout_hint(actual: tuple[int, ...], expected: list[int | None]) -> str:
    channels_last = (
        len(actual) == 4
        and len(expected) == 4
        and expected[1] is not None
        and actual[3] == expected[1]
        and actual[1:3] == tuple(expected[2:])
    )
    if channels_last:
        return (
            "x looks channels-last (N, H, W, C) and the model is channels-first: "
            "save x.transpose(0, 3, 1, 2) in your .npz"
        )
    return "transpose/reshape x in your .npz to the model's layout"
