"""Tests for ftaudit.data: every source built by hand in tmp_path, every user error's message."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftaudit.data import Dataset, fit_to_model, load_dataset, pixel_scale_warning, validate_labels
from ftaudit.errors import UserError
from ftaudit.fileio import sha256_file


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file written from the format description: 00 00 code ndim, big-endian sizes, data."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    data = idx_bytes(array, code)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def mnist_like(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    images = (np.arange(n * 28 * 28) % 256).astype(np.uint8).reshape(n, 28, 28)
    images[0, 0, 0] = 255
    labels = (np.arange(n) * 3 % 10).astype(np.uint8)
    return images, labels


def write_idx_pair(folder: Path, prefix: str = "t10k", suffix: str = ".gz") -> Path:
    images, labels = mnist_like()
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)


def user_error(path: Path, **options: object) -> str:
    with pytest.raises(UserError) as caught:
        load_dataset(path, **options)  # type: ignore[arg-type]
    return str(caught.value)


# --- .npz -------------------------------------------------------------------------------------


def test_npz_uint8_is_scaled_and_labels_exact(tmp_path: Path) -> None:
    x = np.array([[0, 255], [51, 102], [255, 0]], dtype=np.uint8)
    y = np.array([2, 0, 1], dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_dataset(tmp_path / "d.npz")
    assert isinstance(data, Dataset)
    assert data.x.dtype == np.float32 and data.x.shape == (3, 2)
    np.testing.assert_allclose(data.x, x / 255.0, rtol=1e-7)
    assert data.x[0, 1] == 1.0
    assert data.y.dtype == np.int64 and data.y.tolist() == [2, 0, 1]
    assert data.source == {
        "path": str(tmp_path / "d.npz"),
        "sha256": sha256_file(tmp_path / "d.npz"),
        "kind": "npz",
        "n": 3,
        "limit": None,
    }


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int16, np.int64])
def test_npz_other_numeric_dtypes_keep_their_values(tmp_path: Path, dtype: type) -> None:
    x = np.array([[0, 300], [-2, 7]]).astype(dtype)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    data = load_dataset(tmp_path / "d.npz")
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x, x.astype(np.float32))


def test_npz_integral_float_labels_are_cast(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=np.array([1.0, 4.0]))
    assert load_dataset(tmp_path / "d.npz").y.tolist() == [1, 4]


def test_npz_fractional_labels_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=np.array([1.0, 4.5]))
    assert "y[1] = 4.5" in user_error(tmp_path / "d.npz")


def test_npz_two_dimensional_labels_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=np.eye(2))
    message = user_error(tmp_path / "d.npz")
    assert "1-D" in message and "argmax" in message


def test_npz_bool_inputs_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3), dtype=bool), y=np.array([0, 1]))
    assert "booleans" in user_error(tmp_path / "d.npz")


def test_npz_object_array_is_never_unpickled(tmp_path: Path) -> None:
    ragged = np.array([np.zeros(2), np.zeros(3)], dtype=object)
    np.savez(tmp_path / "d.npz", x=ragged, y=np.array([0, 1]))
    message = user_error(tmp_path / "d.npz")
    assert "pickled" in message and "never unpickles" in message and "np.savez" in message


def test_npz_missing_key_names_the_keys_present(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 3)), y=np.array([0, 1]))  # not per label
    message = user_error(tmp_path / "d.npz")
    assert "no array 'x'" in message and "images, y" in message
    np.savez(tmp_path / "e.npz", x=np.zeros((2, 3)))
    assert "no array 'y'" in user_error(tmp_path / "e.npz")


def test_npz_without_x_holds_one_array_per_input(tmp_path: Path, mlp_onnx: Path) -> None:
    """Arrays named after a model's inputs, no x: kept for a model with several inputs; a
    model with one input says x is missing and what the file holds."""
    from ftaudit.errors import UserError
    from ftaudit.models import load_model

    ids = np.arange(8).reshape(4, 2)
    np.savez(tmp_path / "d.npz", input_ids=ids, mask=ids > 2, y=np.arange(4) % 2, meta=[1, 2])
    dataset = load_dataset(tmp_path / "d.npz", limit=3)
    assert not dataset.has_x and dataset.x.shape == (3, 0)
    assert sorted(dataset.inputs) == ["input_ids", "mask"]
    np.testing.assert_array_equal(dataset.inputs["input_ids"], ids[:3])
    with pytest.raises(UserError, match=r"no array 'x' .*input_ids, mask, y"):
        load_model(mlp_onnx).input_array(dataset)


def test_npz_length_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.array([0, 1]))
    assert "3 inputs (x) but 2 labels (y)" in user_error(tmp_path / "d.npz")


def test_npz_empty_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((0, 2)), y=np.zeros(0, dtype=int))
    assert "holds no samples" in user_error(tmp_path / "d.npz")


def test_npz_not_a_zip_or_truncated(tmp_path: Path) -> None:
    (tmp_path / "text.npz").write_text("not an archive")
    assert "not a valid .npz archive" in user_error(tmp_path / "text.npz")
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 10)), y=np.zeros(100, dtype=int))
    whole = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    assert "not a valid .npz archive" in user_error(tmp_path / "cut.npz")


def test_npz_corrupt_member(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(1000.0).reshape(100, 10), y=np.zeros(100, int))
    damaged = bytearray((tmp_path / "d.npz").read_bytes())
    damaged[500] ^= 0xFF  # inside x's data: the zip CRC check fails
    (tmp_path / "d.npz").write_bytes(bytes(damaged))
    message = user_error(tmp_path / "d.npz")
    assert "cannot read array x" in message and "corrupt" in message


def test_limit_keeps_the_first_samples(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(10.0).reshape(5, 2), y=np.arange(5))
    data = load_dataset(tmp_path / "d.npz", limit=2)
    assert data.x.tolist() == [[0, 1], [2, 3]] and data.y.tolist() == [0, 1]
    assert data.source["n"] == 2 and data.source["limit"] == 2
    everything = load_dataset(tmp_path / "d.npz", limit=50)
    assert everything.source["n"] == 5 and everything.source["limit"] == 50
    assert "at least 1, got 0" in user_error(tmp_path / "d.npz", limit=0)


# --- normalisation ----------------------------------------------------------------------------


def test_mean_std_per_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 3, 2, 2), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    data = load_dataset(tmp_path / "d.npz", mean=mean, std=std)
    for channel in range(3):
        expected = (x[:, channel] / 255.0 - mean[channel]) / std[channel]
        np.testing.assert_allclose(data.x[:, channel], expected, rtol=1e-5, atol=1e-6)
    assert data.x.dtype == np.float32


def test_mean_std_scalar(tmp_path: Path) -> None:
    x = np.array([[0.0, 1.0, 3.0]])
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0]))
    data = load_dataset(tmp_path / "d.npz", mean=[1.0], std=[2.0])
    np.testing.assert_allclose(data.x, [[-0.5, 0.0, 1.0]])


def test_mean_std_must_match_channels_and_be_positive(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 4, 4)), y=np.array([0, 1]))
    message = user_error(tmp_path / "d.npz", mean=[0.1, 0.2])
    assert "mean has 2 values" in message and "3 channels" in message
    assert "greater than 0" in user_error(tmp_path / "d.npz", std=[0.5, 0.0, 1.0])
    np.savez(tmp_path / "flat.npz", x=np.zeros(3), y=np.array([0, 1, 2]))
    assert "no channel axis" in user_error(tmp_path / "flat.npz", mean=[0.1, 0.2])


# --- IDX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_images_file(tmp_path: Path, suffix: str) -> None:
    images_file = write_idx_pair(tmp_path, suffix=suffix)
    images, labels = mnist_like()
    data = load_dataset(images_file)
    assert data.x.shape == (5, 28, 28) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, images / 255.0, rtol=1e-7)
    assert data.x[0, 0, 0] == 1.0
    assert data.y.dtype == np.int64 and data.y.tolist() == labels.tolist()
    assert data.source["kind"] == "idx" and data.source["n"] == 5


def test_idx_labels_found_with_other_compression(tmp_path: Path) -> None:
    images, labels = mnist_like()
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    assert load_dataset(tmp_path / "t10k-images-idx3-ubyte.gz").y.tolist() == labels.tolist()


def test_idx_folder_with_one_pair_and_hash(tmp_path: Path) -> None:
    images_file = write_idx_pair(tmp_path)
    (tmp_path / "README.txt").write_text("unrelated")
    from_folder = load_dataset(tmp_path, limit=3)
    from_file = load_dataset(images_file)
    assert from_folder.x.shape == (3, 28, 28) and from_folder.source["n"] == 3
    np.testing.assert_array_equal(from_folder.x, from_file.x[:3])
    labels_file = tmp_path / "t10k-labels-idx1-ubyte.gz"
    pair_hash = hashlib.sha256()
    for file in (images_file, labels_file):  # sorted by relative path
        pair_hash.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    assert from_folder.source["sha256"] == from_file.source["sha256"] == pair_hash.hexdigest()


def test_idx_folder_with_two_pairs_asks_for_the_images_file(tmp_path: Path) -> None:
    write_idx_pair(tmp_path, prefix="train")
    write_idx_pair(tmp_path, prefix="t10k")
    message = user_error(tmp_path)
    assert "several IDX image sets" in message and "pass the images file" in message


def test_idx_int16_code(tmp_path: Path) -> None:
    values = np.array([[-300, 2], [5, 1000]], dtype=np.int16)
    write_idx(tmp_path / "x-images-idx3-ubyte", values, code=0x0B)
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.array([1, 0], dtype=np.uint8))
    data = load_dataset(tmp_path / "x-images-idx3-ubyte")
    np.testing.assert_array_equal(data.x, values.astype(np.float32))


def test_idx_truncated_data(tmp_path: Path) -> None:
    images, labels = mnist_like()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    cut = idx_bytes(images)[:-100]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(cut))
    message = user_error(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert "is truncated" in message and "download" in message


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    images_file = write_idx_pair(tmp_path)
    images_file.write_bytes(images_file.read_bytes()[:-20])
    assert "cannot decompress" in user_error(images_file)


def test_idx_bad_magic_and_missing_labels(tmp_path: Path) -> None:
    images, labels = mnist_like()
    write_idx(tmp_path / "a-labels-idx1-ubyte", labels)
    (tmp_path / "a-images-idx3-ubyte").write_bytes(b"\x12\x34" + idx_bytes(images)[2:])
    assert "not an IDX file" in user_error(tmp_path / "a-images-idx3-ubyte")
    write_idx(tmp_path / "b-images-idx3-ubyte", images)
    message = user_error(tmp_path / "b-images-idx3-ubyte")
    assert "no labels file" in message and "b-labels-idx1-ubyte" in message
    assert "labels file" in user_error(tmp_path / "a-labels-idx1-ubyte")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    images, labels = mnist_like()
    write_idx(tmp_path / "t-images-idx3-ubyte", images)
    write_idx(tmp_path / "t-labels-idx1-ubyte", labels[:3])
    assert "5 images but" in user_error(tmp_path / "t-images-idx3-ubyte")


# --- image folders ----------------------------------------------------------------------------


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_grayscale_image_folder(tmp_path: Path) -> None:
    first = np.full((4, 6), 255, dtype=np.uint8)
    second = np.arange(24, dtype=np.uint8).reshape(4, 6)
    save_image(tmp_path / "cat" / "a.png", first)
    save_image(tmp_path / "dog" / "b.png", second)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    data = load_dataset(tmp_path)
    assert data.x.shape == (2, 4, 6) and data.x.dtype == np.float32
    assert np.all(data.x[0] == 1.0)
    np.testing.assert_allclose(data.x[1], second / 255.0, rtol=1e-7)
    assert data.y.tolist() == [0, 1]  # cat < dog in sorted order
    assert data.source["kind"] == "images" and data.source["n"] == 2


def test_rgb_image_folder_is_channels_first_and_classes_sorted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = {name: rng.integers(0, 256, (3, 5, 3), dtype=np.uint8) for name in "bac"}
    for name, image in pixels.items():
        save_image(tmp_path / f"class_{name}" / "img.png", image)
    data = load_dataset(tmp_path, limit=2)
    assert data.x.shape == (2, 3, 3, 5)
    assert data.y.tolist() == [0, 1]
    np.testing.assert_allclose(data.x[1], pixels["b"].transpose(2, 0, 1) / 255.0, rtol=1e-7)
    assert data.source["n"] == 2


def test_image_folder_size_or_mode_mismatch_names_the_file(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "1.png", np.zeros((4, 4), dtype=np.uint8))
    save_image(tmp_path / "b" / "2.png", np.zeros((5, 4), dtype=np.uint8))
    message = user_error(tmp_path)
    assert str(tmp_path / "b" / "2.png") in message and "4x5 L" in message
    save_image(tmp_path / "b" / "2.png", np.zeros((4, 4, 3), dtype=np.uint8))
    assert "4x4 RGB" in user_error(tmp_path)


def test_unreadable_image(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "1.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "a" / "2.png").write_bytes(b"not a png")
    assert "cannot read image" in user_error(tmp_path)


def test_folder_without_data(tmp_path: Path) -> None:
    (tmp_path / "stuff.txt").write_text("x")
    assert "neither an IDX" in user_error(tmp_path)
    (tmp_path / "empty_class").mkdir()
    assert "holds no samples" in user_error(tmp_path)


# --- paths and formats ------------------------------------------------------------------------


def test_unknown_format_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("1,2,3\n")
    message = user_error(tmp_path / "d.csv")
    assert "unsupported data format" in message and ".npz" in message and "IDX" in message


def test_missing_path(tmp_path: Path) -> None:
    assert "does not exist" in user_error(tmp_path / "nope.npz")


# --- fit_to_model / validate_labels -----------------------------------------------------------


def test_fit_as_is_and_dynamic_dims() -> None:
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    assert fit_to_model(x, [None, 1, 28, 28]) is x
    assert fit_to_model(x, [None, None, None, None]) is x
    with pytest.raises(UserError, match=r"expects \(N, \?, \?\)"):
        fit_to_model(x, [None, None, None])


def test_fit_flattens_for_a_vector_model() -> None:
    x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    flat = fit_to_model(x, [None, 784])
    assert flat.shape == (2, 784)
    np.testing.assert_array_equal(flat[1], x[1].ravel())


def test_fit_adds_and_drops_singleton_channel() -> None:
    x = np.zeros((3, 28, 28), dtype=np.float32)
    assert fit_to_model(x, [None, 1, 28, 28]).shape == (3, 1, 28, 28)
    assert fit_to_model(np.zeros((3, 1, 28, 28)), [None, 28, 28]).shape == (3, 28, 28)


def test_fit_ignores_a_fixed_batch_size() -> None:
    x = np.zeros((5, 3, 32, 32), dtype=np.float32)
    assert fit_to_model(x, [1, 3, 32, 32]).shape == (5, 3, 32, 32)


def test_fit_rejects_channels_last() -> None:
    with pytest.raises(UserError) as caught:
        fit_to_model(np.zeros((2, 28, 28, 3)), [None, 3, 28, 28], name="image")
    assert caught.value.message == (
        "data x has shape (N, 28, 28, 3) but the model input 'image' expects (N, 3, 28, 28)"
    )
    assert caught.value.hint is not None and "transpose(0, 3, 1, 2)" in caught.value.hint


def test_fit_rejects_wrong_size() -> None:
    with pytest.raises(UserError) as caught:
        fit_to_model(np.zeros((2, 10)), [None, 784])
    assert "(N, 10)" in str(caught.value) and "(N, 784)" in str(caught.value)
    assert "transpose/reshape" in str(caught.value)


def test_validate_labels() -> None:
    validate_labels(np.array([0, 9, 3]), 10)
    with pytest.raises(UserError) as caught:
        validate_labels(np.array([0, 10, 3]), 10)
    assert "label 10" in str(caught.value) and "10 classes" in str(caught.value)
    with pytest.raises(UserError, match="label -1"):
        validate_labels(np.array([-1]), 10)


def test_integer_input_feeds_stored_integers_unscaled_and_checks_the_dtype_range():
    from ftaudit.data import integer_input

    ids = np.array([[0, 7, 255], [3, 2, 1]], dtype=np.uint8)
    data = Dataset(ids.astype(np.float32) / 255, np.zeros(2, np.int64), {}, x_raw=ids)
    fed = integer_input(data, "int64")
    assert fed.dtype == np.int64
    np.testing.assert_array_equal(fed, ids.astype(np.int64))  # not divided by 255
    with pytest.raises(UserError, match=r"from 0 to 255, outside .* \(int8: -128 to 127\)"):
        integer_input(data, "int8")
    # float data are accepted only when every value is whole
    whole = Dataset(np.array([[1.0, 2.0]], np.float32), np.zeros(1, np.int64), {})
    np.testing.assert_array_equal(integer_input(whole, "int32"), [[1, 2]])
    half = Dataset(np.array([[1.0, 2.5]], np.float32), np.zeros(1, np.int64), {})
    with pytest.raises(UserError, match=r"x\[0, 1\] = 2.5 is not a whole number"):
        integer_input(half, "int64")


def test_pixel_values_in_floats_are_flagged(tmp_path: Path) -> None:

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 4, 4)).astype(np.float32)
    labels = np.arange(6) % 2
    warning = pixel_scale_warning(pixels, Path("d.npz"))
    assert warning is not None and "[0, 255]" in warning and "--std 255" in warning
    assert pixel_scale_warning(pixels / 255, Path("d.npz")) is None  # already in [0, 1]
    assert pixel_scale_warning(pixels - 128, Path("d.npz")) is None  # centred: not pixels
    assert pixel_scale_warning(pixels * 4, Path("d.npz")) is None  # beyond 255: not pixels
    for name, x in (("float", pixels), ("int", pixels.astype(np.int64))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=labels)
        assert len(load_dataset(tmp_path / f"{name}.npz").warnings) == 1
        assert load_dataset(tmp_path / f"{name}.npz", std=[255.0]).warnings == ()
    np.savez(tmp_path / "u8.npz", x=pixels.astype(np.uint8), y=labels)
    assert load_dataset(tmp_path / "u8.npz").warnings == ()  # uint8 is scaled to [0, 1]
