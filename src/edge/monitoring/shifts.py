"""Shifted versions of test images, to show drift appearing: what `edge monitor simulate` sends."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge.data import IMAGE_SHAPE

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def clean(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The images as they are."""
    return np.asarray(images, dtype=np.float32)


def shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move each garment 5 to 7 pixels towards a random corner: a camera that is badly centred."""
    out = np.zeros_like(images, dtype=np.float32)
    for i, image in enumerate(images):
        dy, dx = rng.integers(5, 8, size=2) * rng.choice([-1, 1], size=2)
        out[i] = np.roll(image, (dy, dx), axis=(0, 1))
        # Zero what rolled around from the other side: it moves out of the frame instead.
        out[i, slice(None, dy) if dy > 0 else slice(dy, None), :] = 0
        out[i, :, slice(None, dx) if dx > 0 else slice(dx, None)] = 0
    return out


def darkened(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale intensities to 40%: an underexposed photograph."""
    return np.asarray(images, dtype=np.float32) * 0.4


def noisy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (sd 40 of 255): a cheap sensor."""
    return np.clip(
        np.asarray(images, dtype=np.float32) + rng.normal(0, 40, size=images.shape), 0, 255
    ).astype(np.float32)


def inverted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark garments on white: a photograph taken the usual way, not Fashion-MNIST's way."""
    return 255.0 - np.asarray(images, dtype=np.float32)


def digits(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out of domain: handwriting-sized digits drawn with a font, no garment at all."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=22)
    out = np.zeros((len(images), *IMAGE_SHAPE), dtype=np.float32)
    for i in range(len(images)):
        canvas = Image.new("L", (IMAGE_SHAPE[1], IMAGE_SHAPE[0]), 0)
        x, y = rng.integers(4, 10), rng.integers(-2, 3)
        ImageDraw.Draw(canvas).text((int(x), int(y)), str(rng.integers(10)), fill=255, font=font)
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        out[i] = np.asarray(canvas, dtype=np.float32)
    return out


SHIFTS: dict[str, Shift] = {
    "clean": clean,
    "shifted": shifted,
    "darkened": darkened,
    "noisy": noisy,
    "inverted": inverted,
    "digits": digits,
}
