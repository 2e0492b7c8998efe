"""Calibration: does a confidence of 90% mean right 90% of the time? ECE, reliability, temperature."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 15
# A temperature outside this range means the logits are broken, not that the model is miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class ReliabilityBin:
    """Predictions whose confidence falls in [lower, upper): how confident, how often right."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """Group predictions by confidence (the top probability) into `bins` equal-width bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The top bin is closed, so a confidence of exactly 1.0 is counted.
    index = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, bins - 1)
    result = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        result.append(
            ReliabilityBin(
                float(edges[b]),
                float(edges[b + 1]),
                count,
                float(confidence[members].mean()) if count else 0.0,
                float(correct[members].mean()) if count else 0.0,
            )
        )
    return result


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """The mean gap between confidence and accuracy over confidence bins, weighted by bin size."""
    table = reliability(probabilities, labels, bins)
    total = sum(b.count for b in table)
    if not total:
        return 0.0
    return float(sum(b.count * abs(b.confidence - b.accuracy) for b in table) / total)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def scaled_probabilities(views: Sequence[np.ndarray], temperature: float) -> np.ndarray:
    """Average of softmax(logits / temperature) over views of the same images (an image, its mirror)."""
    averaged: np.ndarray = np.mean([softmax(np.asarray(z, np.float64) / temperature) for z in views], axis=0)
    return averaged


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true labels."""
    picked = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def fit_temperature(views: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """The temperature that minimises the shipped probabilities' cross-entropy on held-out images.

    `views` are the logits [N, classes] of each view the shipped model averages (one without flip
    test-time augmentation, two with it). One scalar cannot change which class wins, only how sure.
    """
    from scipy.optimize import minimize_scalar

    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    best = minimize_scalar(
        lambda log_t: negative_log_likelihood(scaled_probabilities(views, float(np.exp(log_t))), labels),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(best.x))


def reliability_csv(table: list[ReliabilityBin]) -> str:
    """The reliability diagram's points for `dvc plots`: bins that hold predictions only."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["confidence", "accuracy", "count"])
    writer.writerows((round(b.confidence, 4), round(b.accuracy, 4), b.count) for b in table if b.count)
    return out.getvalue()


def reliability_png(
    table: list[ReliabilityBin], ece: float, title: str = "Reliability on the test set"
) -> bytes:
    """Draw accuracy against confidence per bin, with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    filled = [b for b in table if b.count]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.bar(
        [(b.lower + b.upper) / 2 for b in filled],
        [b.accuracy for b in filled],
        width=[b.upper - b.lower for b in filled],
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot([b.confidence for b in filled], [b.accuracy for b in filled], "o", color="black", markersize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
