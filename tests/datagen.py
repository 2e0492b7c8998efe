"""Tiny Fashion-MNIST-shaped data for tests: IDX encoding and learnable synthetic images."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write `array` as an IDX file, gzip-compressed when `compress` (then `.gz` is appended)."""
    raw = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:
        path.write_bytes(raw)
    return path


# The synthetic classes differ only in where their bar is, 2 rows apart: shifting images (a default
# training augmentation) turns one class into another. Training settings for them turn it all off.
NO_AUGMENTATION = {"shift": 0, "contrast": 0.0, "noise": 0.0}


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Make `count` balanced, learnable 28x28 images: each class is a bright bar at its own place."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.uint8) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 2 + 2 * int(label) + int(rng.integers(0, 2))
        images[i, row : row + 3, 4:24] = rng.integers(180, 256, dtype=np.uint8)
    return images, labels


def write_fashion_files(folder: Path, n_train: int = 600, n_test: int = 200, compress: bool = True) -> Path:
    """Write a tiny Fashion-MNIST look-alike (the four canonical file names) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, count, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_split(count, seed)
        write_idx(folder / f"{kind}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{kind}-labels-idx1-ubyte", labels, compress)
    return folder
