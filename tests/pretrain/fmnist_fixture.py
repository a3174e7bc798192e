"""A tiny Fashion-MNIST look-alike written as IDX gzip files, so the reader and the SimCLR
pipeline are tested in a fraction of a second (the real, bundled set: ``FASHION_MNIST``)."""

from pathlib import Path

import numpy as np

from recsys_cl.data.fashion_mnist import FILES, write_idx_images, write_idx_labels

FASHION_MNIST = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"  # bundled with the repo


def synthetic_images(n: int, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (N, size, size) of 2 classes: 0 = vertical bar, 1 = horizontal bar, + noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, size, size))
    lo, hi = size // 3, 2 * size // 3
    for i, y in enumerate(labels):
        if y == 0:
            images[i, 2:-2, lo:hi] += 180
        else:
            images[i, lo:hi, 2:-2] += 180
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_fake_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 64, size: int = 28) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_images(n, size, seed)
        img_name, lab_name = FILES[split]
        write_idx_images(folder / img_name, images)
        write_idx_labels(folder / lab_name, labels)
    return folder
