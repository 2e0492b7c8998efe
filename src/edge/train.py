"""Train the classifier on the prepared splits: a pure `train()` and the files it leaves behind."""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.data import CLASS_NAMES, IMAGE_SHAPE, Split
from edge.model import ModelParams, build_model, with_flip_tta

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with its number (1-based) and its metrics."""

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


@dataclass(frozen=True)
class TrainParams:
    """The `train` block of params.yaml."""

    seed: int = 42
    epochs: int = 17
    batch_size: int = 256
    learning_rate: float = 2e-3
    warmup_epochs: int = 1
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    flip: bool = True
    shift: int = 0
    model: ModelParams = field(default_factory=ModelParams)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainParams:
        """Build from a params.yaml block, rejecting unknown keys."""
        values = dict(raw)
        model = ModelParams.from_dict(values.pop("model", {}) or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown train parameter(s) {sorted(unknown)} in params.yaml")
        params = cls(model=model, **values)
        if params.epochs < 1 or params.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be at least 1 in params.yaml")
        return params


@dataclass
class TrainResult:
    """The model to ship with its per-epoch history and how long training took."""

    model: keras.Model
    history: list[dict[str, float]]
    seconds: float
    # Validation scores of the shipped model when it differs from the one trained (flip TTA).
    shipped_validation: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics, with the shipped model's validation scores."""
        return {**self.history[-1], **self.shipped_validation}


def _dataset(split: Split, params: TrainParams, training: bool) -> tf.data.Dataset:
    import tensorflow as tf

    # uint8 in memory (a quarter of float32's size), cast per batch where it costs nothing.
    labels = tf.one_hot(split.labels.astype(np.int32), len(CLASS_NAMES))
    ds = tf.data.Dataset.from_tensor_slices((split.images, labels))
    if training:
        ds = ds.shuffle(len(split.labels), seed=params.seed, reshuffle_each_iteration=True)
    ds = ds.batch(params.batch_size)
    if training and (params.flip or params.shift):
        ds = ds.map(
            lambda x, y: (_augment(tf.cast(x, tf.float32), params), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment(batch: tf.Tensor, params: TrainParams) -> tf.Tensor:
    """Flip left-right and shift by up to `shift` pixels: a garment stays the same garment."""
    import tensorflow as tf

    if params.flip:
        flip = tf.random.uniform([tf.shape(batch)[0], 1, 1], seed=params.seed) < 0.5
        batch = tf.where(flip, tf.reverse(batch, axis=[2]), batch)
    if params.shift:
        s = params.shift
        padded = tf.pad(batch, [[0, 0], [s, s], [s, s]])
        batch = tf.image.random_crop(padded, tf.stack([tf.shape(batch)[0], *IMAGE_SHAPE]), seed=params.seed)
    return batch


def train(
    train_split: Split,
    validation: Split,
    params: TrainParams,
    *,
    on_epoch_end: EpochCallback | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Train a fresh model with AdamW, warmup then cosine decay, and label smoothing."""
    import keras

    keras.utils.set_random_seed(params.seed)
    model = build_model(params.model)
    steps = int(np.ceil(len(train_split.labels) / params.batch_size))
    warmup = min(params.warmup_epochs, params.epochs - 1) * steps
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.learning_rate / 10 if warmup else params.learning_rate,
        decay_steps=params.epochs * steps - warmup,
        warmup_target=params.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
        metrics=["accuracy"],
    )
    history: list[dict[str, float]] = []

    class Recorder(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            row = {k: float(v) for k, v in (logs or {}).items()}
            row["learning_rate"] = float(schedule(optimizer.iterations))
            row["epoch"] = epoch + 1
            history.append(row)
            if on_epoch_end:
                on_epoch_end(epoch + 1, row)

    start = time.perf_counter()
    model.fit(
        _dataset(train_split, params, training=True),
        validation_data=_dataset(validation, params, training=False),
        epochs=params.epochs,
        callbacks=[Recorder()],
        # The dataset shuffles itself, reproducibly from the seed.
        shuffle=False,
        # A live bar on a terminal; one line per epoch in logs (DVC, containers, Vertex AI).
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    seconds = time.perf_counter() - start
    if not params.model.tta_flip:
        return TrainResult(model, history, seconds)
    # Train the plain network (flips are already in its data); ship and score it wrapped.
    shipped = with_flip_tta(model)
    shipped.compile(loss=model.loss, metrics=["accuracy"])
    scores = shipped.evaluate(_dataset(validation, params, training=False), return_dict=True, verbose=0)
    shipped_validation = {"val_accuracy": float(scores["accuracy"]), "val_loss": float(scores["loss"])}
    return TrainResult(shipped, history, seconds, shipped_validation)


def weights_digest(model: keras.Model) -> str:
    """Return a short content hash of the weights: the model's version."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:12]


def model_metadata(result: TrainResult, params: TrainParams, lineage: dict[str, Any]) -> dict[str, Any]:
    """Describe a trained model for the server and for people: name, version, lineage."""
    return {
        "name": "fashion-mnist-cnn",
        "version": weights_digest(result.model),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "class_names": list(CLASS_NAMES),
        "input": {"shape": list(IMAGE_SHAPE), "dtype": "float32", "range": [0, 255]},
        "validation": {k: result.final[k] for k in ("val_accuracy", "val_loss") if k in result.final},
        "lineage": lineage,
    }


def history_csv(history: list[dict[str, float]]) -> str:
    """Render the per-epoch history as CSV for `dvc plots`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (int(row[k]) if k == "epoch" else round(row[k], 6)) for k in HISTORY_COLUMNS})
    return out.getvalue()


def load_prepared(prepared_dir: str | Path, name: str) -> Split:
    """Load one split written by the prepare stage (on `gs://`, from the published version)."""
    from edge import storage

    folder = storage.resolve_dir(str(prepared_dir))
    with np.load(io.BytesIO(storage.read_bytes(storage.join(folder, f"{name}.npz")))) as npz:
        return Split(npz["images"], npz["labels"])
