"""Evaluate a model on the test split: accuracy, loss, per-class scores, confusion, plots."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.data import CLASS_NAMES


@dataclass(frozen=True)
class Evaluation:
    """Test-set scores of one model."""

    accuracy: float
    loss: float
    confusion: np.ndarray  # [actual, predicted] counts
    predicted: np.ndarray

    def per_class(self) -> dict[str, dict[str, float]]:
        """Precision, recall and F1 of each class."""
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        precision = np.divide(tp, cm.sum(axis=0), out=np.zeros_like(tp), where=cm.sum(axis=0) > 0)
        recall = np.divide(tp, cm.sum(axis=1), out=np.zeros_like(tp), where=cm.sum(axis=1) > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
        return {
            name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}
            for name, p, r, f in zip(CLASS_NAMES, precision, recall, f1, strict=True)
        }

    def metrics(self) -> dict[str, Any]:
        """The metrics file's content: headline numbers first, then per class."""
        return {
            "test": {"accuracy": round(self.accuracy, 4), "loss": round(self.loss, 4)},
            "per_class": self.per_class(),
        }


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Score predicted class probabilities [N, 10] against true labels [N]."""
    if probabilities.shape != (len(labels), len(CLASS_NAMES)):
        raise ValueError(f"probabilities of shape {probabilities.shape} for {len(labels)} labels")
    predicted = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predicted), 1)
    return Evaluation(float(np.mean(predicted == labels)), loss, confusion, predicted)


def confusion_csv(labels: np.ndarray, predicted: np.ndarray) -> str:
    """One row per test image, actual and predicted class names, for DVC's confusion template."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((CLASS_NAMES[a], CLASS_NAMES[p]) for a, p in zip(labels, predicted, strict=True))
    return out.getvalue()


def confusion_png(evaluation: Evaluation) -> bytes:
    """Draw the confusion matrix as a PNG, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = evaluation.confusion
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix, test accuracy {evaluation.accuracy:.2%}")
    threshold = cm.max() / 2
    for (i, j), count in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if count > threshold else "black",
        )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def serving_predictor(serving_dir: str, batch_size: int = 1000) -> Callable[[np.ndarray], np.ndarray]:
    """Load the exported serving function (what the model server runs) as images -> probabilities."""
    import tensorflow as tf

    # The closure keeps the loaded object alive: its variables die with it, even while `serve` lives.
    loaded = tf.saved_model.load(serving_dir)

    def predict(images: np.ndarray) -> np.ndarray:
        batches = [
            loaded.serve(tf.constant(images[i : i + batch_size], dtype=tf.float32)).numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(batches) if batches else np.zeros((0, len(CLASS_NAMES)), np.float32)

    return predict


def predict_probabilities(serving_dir: str, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Run the exported serving function (what the model server runs) over `images`."""
    return serving_predictor(serving_dir, batch_size)(images)
