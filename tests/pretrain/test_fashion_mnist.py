import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from fmnist_fixture import FASHION_MNIST, synthetic_images

from recsys_cl.data.errors import DataError
from recsys_cl.data.fashion_mnist import (
    FILES,
    load_fashion_mnist,
    read_idx_images,
    read_idx_labels,
    write_idx_images,
    write_idx_labels,
)


def test_round_trip_of_idx_files(tmp_path: Path) -> None:
    images, labels = synthetic_images(5)
    write_idx_images(tmp_path / "i.gz", images)
    write_idx_labels(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "i.gz"), images)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "l.gz"), labels)


def test_load_split_shapes(fake_fmnist: Path) -> None:
    x, y = load_fashion_mnist(fake_fmnist, "train")
    assert x.shape == (64, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (64,) and y.dtype == np.int64 and set(y) == {0, 1}
    x[0, 0, 0, 0] = 1  # writable (torch.as_tensor does not warn)


def test_missing_folder_and_file(tmp_path: Path, fake_fmnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="does not exist; point data.path at the folder"):
        load_fashion_mnist(tmp_path / "nope", "train")
    # the default, relative path read from another directory: the message names that directory and
    # the bundled copy's absolute path, not the same relative path again
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_fashion_mnist("data/fashion-mnist", "train")
    assert f"'data/fashion-mnist' does not exist (relative to the current directory {tmp_path})" in str(e.value)
    assert f"the copy bundled with recsys_cl: --set data.path={FASHION_MNIST.resolve()})" in str(e.value)
    (fake_fmnist / FILES["test"][1]).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: file not found"):
        load_fashion_mnist(fake_fmnist, "test")


def test_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "notgz.gz").write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="not a readable gzip"):
        read_idx_images(tmp_path / "notgz.gz")
    with gzip.open(tmp_path / "labels_as_images.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, 2) + b"\x00\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx_images(tmp_path / "labels_as_images.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 3, 28, 28) + b"\x00" * 100)
    with pytest.raises(DataError, match="header says 3 images of 28x28 = 2352 bytes, found 100"):
        read_idx_images(tmp_path / "short.gz")


def test_wrong_image_size_and_count_mismatch(tmp_path: Path) -> None:
    images, labels = synthetic_images(4, size=32)
    write_idx_images(tmp_path / FILES["train"][0], images)
    write_idx_labels(tmp_path / FILES["train"][1], labels[:3])
    with pytest.raises(DataError, match="images are 32x32, expected 28x28"):
        load_fashion_mnist(tmp_path, "train")
    with pytest.raises(DataError, match="4 images .* but 3 labels"):
        load_fashion_mnist(tmp_path, "train", image_size=(32, 32))


def test_real_fashion_mnist_test_split() -> None:
    x, y = load_fashion_mnist(FASHION_MNIST, "test")
    assert x.shape == (10000, 1, 28, 28)
    assert np.bincount(y).tolist() == [1000] * 10
