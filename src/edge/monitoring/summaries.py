"""Compact summaries of input images: what the log keeps instead of the raw pixels."""

from __future__ import annotations

import numpy as np

# Eight equal bins over 0-255: coarse enough to log per image, fine enough to see darkening or noise.
HISTOGRAM_BINS = 8
# Fashion-MNIST's background is exactly 0 and garments are drawn bright; a pixel above an eighth of
# full scale counts as ink.
INK_THRESHOLD = 32.0
SCALARS = ("mean", "std", "ink")


def summarize(images: np.ndarray) -> dict[str, np.ndarray]:
    """Summarise a (N, 28, 28) batch of 0-255 pixels: mean, std and ink fraction in 0-1, histograms."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    bins = np.clip((flat * (HISTOGRAM_BINS / 256.0)).astype(np.int64), 0, HISTOGRAM_BINS - 1)
    # One bincount over row-offset bin ids counts every image's histogram in a single pass.
    offsets = bins + HISTOGRAM_BINS * np.arange(len(flat))[:, None]
    counts = np.bincount(offsets.ravel(), minlength=HISTOGRAM_BINS * len(flat))
    histograms = counts.reshape(len(flat), HISTOGRAM_BINS) / flat.shape[1]
    return {
        "mean": flat.mean(axis=1) / 255.0,
        "std": flat.std(axis=1) / 255.0,
        "ink": (flat > INK_THRESHOLD).mean(axis=1),
        "histogram": histograms,
    }


def summary_records(images: np.ndarray) -> list[dict[str, float | list[float]]]:
    """Summarise a batch into one small JSON-ready dict per image."""
    summary = summarize(images)
    # Rounded as arrays, then converted to Python floats at once: per value, this is the log's cost.
    means, stds, inks, histograms = (
        np.round(summary[name].astype(np.float64), 4).tolist() for name in (*SCALARS, "histogram")
    )
    return [
        {"mean": mean, "std": std, "ink": ink, "histogram": histogram}
        for mean, std, ink, histogram in zip(means, stds, inks, histograms, strict=True)
    ]
