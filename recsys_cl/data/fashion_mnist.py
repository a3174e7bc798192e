"""Fashion-MNIST reader: the IDX gzip files of Xiao et al. 2017 (MIT licence).

Letters: N images, H height, W width (28 x 28 for Fashion-MNIST).

IDX layout (big-endian): images ``magic=0x00000803, N, H, W`` (16-byte header) then ``N*H*W``
uint8 pixels; labels ``magic=0x00000801, N`` (8-byte header) then ``N`` uint8 labels. The folder
(``data.path`` of the SimCLR config) holds the four files of the official distribution::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

Every failure (missing file, not gzip, truncated, bad magic, shape mismatch) is a
:class:`~recsys_cl.data.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from recsys_cl.data.errors import DataError

IMAGES_MAGIC = 0x00000803  # 2051: unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # 2049: unsigned byte, 1 dimension
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
BUNDLED = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"
"""The copy in a recsys_cl checkout (``data/fashion-mnist``), named in the error for a missing folder."""
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; point data.path at a folder with the Fashion-MNIST IDX gzip files "
            f"({', '.join(FILES['train'] + FILES['test'])})"
        )
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: not a readable gzip file ({e}); re-download it") from e


def read_idx_images(path: str | Path) -> np.ndarray:
    """Images of an IDX3 gzip file. Returns uint8 array of shape (N, H, W)."""
    path = Path(path)
    raw = _read_gzip(path)
    if len(raw) < 16:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than the 16-byte IDX image header; re-download it")
    magic, n, h, w = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise DataError(
            f"{path}: magic number {magic:#010x}, expected {IMAGES_MAGIC:#010x} (IDX uint8 images); "
            "is this a labels file or another format?"
        )
    expected = n * h * w
    if len(raw) - 16 != expected:
        raise DataError(
            f"{path}: header says {n} images of {h}x{w} = {expected} bytes, found {len(raw) - 16}; "
            "the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w).copy()  # writable


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Labels of an IDX1 gzip file. Returns uint8 array of shape (N,)."""
    path = Path(path)
    raw = _read_gzip(path)
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than the 8-byte IDX label header; re-download it")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != LABELS_MAGIC:
        raise DataError(
            f"{path}: magic number {magic:#010x}, expected {LABELS_MAGIC:#010x} (IDX uint8 labels); "
            "is this an images file or another format?"
        )
    if len(raw) - 8 != n:
        raise DataError(f"{path}: header says {n} labels, found {len(raw) - 8} bytes; re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).copy()


def load_fashion_mnist(
    folder: str | Path,
    split: Literal["train", "test"],
    image_size: tuple[int, int] = (28, 28),
    key: str = "data.path",
) -> tuple[np.ndarray, np.ndarray]:
    """One official split from ``folder``.

    Returns:
        images: uint8, shape (N, 1, H, W); labels: int64 class ids 0..9, shape (N,).
        (``key`` is the setting that names ``folder``, quoted in errors.)

    Raises:
        DataError: missing/corrupt file, images not ``image_size``, or image/label counts differ.
    """
    folder = Path(folder)
    if not folder.is_dir():
        where = "is a file, not the folder holding the four .gz files" if folder.exists() else "does not exist"
        if not folder.is_absolute():
            where += f" (relative to the current directory {Path.cwd()})"
        example = f"{key} " if key.startswith("--") else f"--set {key}="
        bundled = BUNDLED if (BUNDLED / FILES["train"][0]).is_file() else None
        hint = (f"the copy bundled with recsys_cl: {example}{bundled}" if bundled is not None and
                bundled != folder.absolute() else f"e.g. {example}/path/to/fashion-mnist")
        raise DataError(f"Fashion-MNIST folder {str(folder)!r} {where}; point {key} at the folder ({hint})")
    img_name, lab_name = FILES[split]
    images = read_idx_images(folder / img_name)
    labels = read_idx_labels(folder / lab_name)
    if images.shape[1:] != tuple(image_size):
        raise DataError(
            f"{folder / img_name}: images are {images.shape[1]}x{images.shape[2]}, expected "
            f"{image_size[0]}x{image_size[1]} (data.image_size); fix the file or the config"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {len(images)} images in {img_name} but {len(labels)} labels in {lab_name}; "
            "the two files must come from the same split"
        )
    return images[:, None, :, :], labels.astype(np.int64)


def write_idx_images(path: str | Path, images: np.ndarray) -> None:
    """Write uint8 images of shape (N, H, W) as an IDX3 gzip file (fixtures, exports)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", IMAGES_MAGIC, *images.shape) + images.tobytes())


def write_idx_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write uint8 labels of shape (N,) as an IDX1 gzip file."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", LABELS_MAGIC, len(labels)) + labels.tobytes())
