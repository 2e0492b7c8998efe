"""Train the classifier on the prepared splits: a pure `train()` and the files it leaves behind."""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from edge import calibration
from edge.data import CLASS_NAMES, IMAGE_SHAPE, Split
from edge.model import (
    ModelParams,
    Precision,
    build_model,
    logits_model,
    machine,
    predict,
    resolve_precision,
    with_flip_tta,
    with_temperature,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

Seed = Any
"""Two integers (a tuple or an int64 tensor of shape [2]) that decide a stateless random draw."""

EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with its number (1-based) and its metrics."""

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


class TrainParams(BaseModel):
    """The `train` block of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 42
    epochs: int = Field(default=15, ge=1)
    batch_size: int = Field(default=256, ge=1)
    # The peak, reached after warmup_epochs, then cosine decay to zero. 0 trains a model that learns
    # nothing, which the test suite must then refuse.
    learning_rate: float = Field(default=2e-3, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    flip: StrictBool = True
    # Random shifts of up to this many pixels.
    shift: int = Field(default=2, ge=0)
    # Random contrast and brightness: each image's distance from its mean, then all its pixels, are
    # multiplied by factors drawn from [1 - contrast, 1 + contrast].
    contrast: float = Field(default=0.3, ge=0, lt=1)
    # Gaussian noise of a standard deviation drawn per image from [0, noise] (0-255 units).
    noise: float = Field(default=12.0, ge=0, le=255)
    # Fit a temperature on the validation split and ship it: confidences that mean what they say.
    calibrate: StrictBool = True
    model: ModelParams = ModelParams()

    @field_validator("model", mode="before")
    @classmethod
    def _empty_block_is_defaults(cls, value: object) -> object:
        # `model:` with nothing under it is YAML's null: every default, as an absent block.
        return {} if value is None else value


@dataclass
class TrainResult:
    """The model to ship with its per-epoch history and how long training took."""

    model: keras.Model
    history: list[dict[str, float]]
    seconds: float
    precision: Precision
    # Validation scores of the shipped model (flip TTA, temperature), which differs from the one trained.
    shipped_validation: dict[str, float] = field(default_factory=dict)
    # The fitted temperature and the validation ECE before and after it; empty without calibration.
    calibration: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics, with the shipped model's validation scores."""
        return {**self.history[-1], **self.shipped_validation}


def _dataset(split: Split, params: TrainParams, *, epochs: int | None = None) -> tf.data.Dataset:
    """The split as float32 batches; with `epochs`, the training stream: every epoch reshuffled and
    augmented, reproducibly.

    Reproducible means the same batches in every run: the shuffle is seeded, and each batch's
    augmentation is drawn statelessly from (seed, batch number) across all epochs, so it does not
    depend on which thread of the parallel map computes it, or in which order.
    """
    import tensorflow as tf

    # uint8 in memory (a quarter of float32's size), cast per batch where it costs nothing.
    labels = tf.one_hot(split.labels.astype(np.int32), len(CLASS_NAMES))
    ds = tf.data.Dataset.from_tensor_slices((split.images, labels))
    if epochs is None:
        return ds.batch(params.batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)
    # A new order each epoch (the shuffle is iterated again by repeat), the same orders in every run.
    ds = ds.shuffle(len(split.labels), seed=params.seed, reshuffle_each_iteration=True)
    ds = ds.batch(params.batch_size).repeat(epochs).enumerate()

    def prepare(number: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        images, onehot = batch
        seed = tf.stack([tf.constant(params.seed, tf.int64), number])
        return augment(tf.cast(images, tf.float32), params, seed), onehot

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment(batch: tf.Tensor, params: TrainParams, seed: tf.Tensor) -> tf.Tensor:
    """Flip, shift, vary contrast and add noise, each as configured: a garment stays the same garment.

    `seed` (two integers) decides every random draw: the same seed gives the same batch.
    """
    import tensorflow as tf

    flip_seed, shift_seed, contrast_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    if params.flip:
        flip = tf.random.stateless_uniform([tf.shape(batch)[0], 1, 1], seed=flip_seed) < 0.5
        batch = tf.where(flip, tf.reverse(batch, axis=[2]), batch)
    if params.shift:
        batch = shift_batch(batch, params.shift, shift_seed)
    if params.contrast:
        batch = vary_contrast(batch, params.contrast, contrast_seed)
    if params.noise:
        batch = add_noise(batch, params.noise, noise_seed)
    return batch


def add_noise(batch: tf.Tensor, sd: float, seed: Seed) -> tf.Tensor:
    """Add Gaussian noise to each image, of its own standard deviation drawn from [0, sd] (0-255
    units), clipped to 0-255: the model test suite's noisy images, and everything milder.
    """
    import tensorflow as tf

    scale_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    scale = tf.random.stateless_uniform([tf.shape(batch)[0], 1, 1], scale_seed, 0.0, sd)
    noise = tf.random.stateless_normal(tf.shape(batch), noise_seed)
    return tf.clip_by_value(batch + noise * scale, 0.0, 255.0)


def vary_contrast(batch: tf.Tensor, amount: float, seed: Seed) -> tf.Tensor:
    """Scale each image's contrast (around its mean), then its brightness, by its own random factors
    in [1 - amount, 1 + amount], clipped to 0-255: the model test suite's darker and low-contrast
    images, and their opposites.
    """
    import tensorflow as tf

    count = tf.shape(batch)[0]
    contrast, brightness = tf.unstack(
        tf.random.stateless_uniform([2, count, 1, 1], seed, 1 - amount, 1 + amount), axis=0
    )
    mean = tf.reduce_mean(batch, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((mean + (batch - mean) * contrast) * brightness, 0.0, 255.0)


def shift_batch(batch: tf.Tensor, pixels: int, seed: Seed) -> tf.Tensor:
    """Move each image of a [N, height, width] batch by its own random offset of up to `pixels` along
    each axis, filling with black (zero) as the model test suite's shifts do.

    One offset per image, not per batch (`tf.image.random_crop` of the padded batch would move all of
    a batch's images the same way): every step sees every direction.
    """
    import tensorflow as tf

    count = tf.shape(batch)[0]
    height, width = batch.shape[1], batch.shape[2]
    padded = tf.pad(batch, [[0, 0], [pixels, pixels], [pixels, pixels]])
    offsets = tf.random.stateless_uniform([count, 2], seed, 0, 2 * pixels + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]
    columns = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]
    # Gather each image's rows, then its columns: [N, height, width + 2p], then [N, height, width].
    picked = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(picked, columns, axis=2, batch_dims=1)


def train(
    train_split: Split,
    validation: Split,
    params: TrainParams,
    *,
    on_epoch_end: EpochCallback | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Train a fresh model with AdamW, warmup then cosine decay, and label smoothing.

    The same splits, params and seed give the same weights, bit for bit, on the same kind of CPU: the
    seeds are set, TensorFlow runs only deterministic kernels, and the input stream is reproducible
    (`_dataset`). Saved, they make the same bytes (`edge.model.save_model`), so DVC records the same
    md5 for the model folder. Another CPU (another instruction set, thread count or precision) sums in another
    order and gives a slightly different model of the same quality.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    tf.config.experimental.enable_op_determinism()
    precision = resolve_precision(params.model.bfloat16)
    model = build_model(params.model, precision)
    steps = int(np.ceil(len(train_split.labels) / params.batch_size))
    warmup = min(params.warmup_epochs, params.epochs - 1) * steps
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.learning_rate / 10 if warmup else params.learning_rate,
        decay_steps=params.epochs * steps - warmup,
        warmup_target=params.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay)
    if precision.policy == "mixed_float16":
        # float16 gradients underflow without loss scaling (bfloat16 has float32's exponent range).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
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

    callbacks: list[keras.callbacks.Callback] = [Recorder()]
    quiet = verbose == 0
    if not quiet:
        callbacks.append(_progress(params.epochs, steps, precision))
    start = time.perf_counter()
    model.fit(
        _dataset(train_split, params, epochs=params.epochs),
        validation_data=_dataset(validation, params),
        epochs=params.epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        # The dataset shuffles itself, reproducibly from the seed.
        shuffle=False,
        # A live bar on a terminal; in logs (DVC, containers, Vertex AI) _Progress's lines suffice.
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 0),
    )
    seconds = time.perf_counter() - start
    return _ship(model, validation, params, TrainResult(model, history, seconds, precision))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


# The estimate times the steps between these two counts: TensorFlow's first steps trace and compile
# the graph and cost several times a later one, so timing from the start would overstate the whole.
ESTIMATE_FROM_STEP = 5
ESTIMATE_AFTER_STEPS = 25


def _progress(epochs: int, steps: int, precision: Precision) -> keras.callbacks.Callback:
    """Say how training will go: the precision and epochs first, an estimate after the first steps,
    then a line per epoch with the time to go. Whole lines on stderr, so logs read as a terminal does.
    """
    import keras

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        started = 0.0
        steady_from = 0.0
        steps_done = 0

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()
            say(
                f"Training {epochs} epochs of {steps} steps in {precision.policy} ({precision.reason}); "
                f"an estimate follows the first {ESTIMATE_AFTER_STEPS} steps."
            )

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            # Keras's `batch` restarts at each epoch: count the steps since the start here.
            self.steps_done += 1
            if self.steps_done == ESTIMATE_FROM_STEP:
                self.steady_from = time.perf_counter()
            elif self.steps_done == ESTIMATE_AFTER_STEPS and epochs * steps > ESTIMATE_AFTER_STEPS:
                now = time.perf_counter()
                per_step = (now - self.steady_from) / (ESTIMATE_AFTER_STEPS - ESTIMATE_FROM_STEP)
                total = now - self.started + per_step * (epochs * steps - ESTIMATE_AFTER_STEPS)
                say(f"Estimated training time: {_duration(total)}, and a little per epoch for validation.")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            elapsed = time.perf_counter() - self.started
            left = elapsed / (epoch + 1) * (epochs - epoch - 1)
            metrics = logs or {}
            say(
                f"epoch {epoch + 1}/{epochs}: accuracy {metrics.get('accuracy', 0):.4f}, validation "
                f"{metrics.get('val_accuracy', 0):.4f}; {_duration(elapsed)} so far"
                + (f", about {_duration(left)} to go" if left else "")
            )

    return Progress()


def _ship(model: keras.Model, validation: Split, params: TrainParams, result: TrainResult) -> TrainResult:
    """Wrap the trained network as it ships (temperature, flip TTA) and score that on validation."""
    # The views the shipped model averages: the image, and its mirror with flip TTA.
    images = validation.images.astype(np.float32)
    views = [images, images[:, :, ::-1]] if params.model.tta_flip else [images]
    network = logits_model(model)
    logits = [predict(network, v, batch_size=1000).astype(np.float64) for v in views]
    labels = validation.labels
    uncalibrated = calibration.scaled_probabilities(logits, 1.0)
    temperature = calibration.fit_temperature(logits, labels) if params.calibrate else 1.0
    shipped_probabilities = calibration.scaled_probabilities(logits, temperature)
    shipped = with_temperature(model, temperature) if params.calibrate else model
    if params.model.tta_flip:
        shipped = with_flip_tta(shipped)
    result.model = shipped
    result.shipped_validation = {
        "val_accuracy": float(np.mean(shipped_probabilities.argmax(axis=1) == labels)),
        "val_loss": calibration.negative_log_likelihood(shipped_probabilities, labels),
    }
    if params.calibrate:
        result.calibration = {
            "temperature": temperature,
            "val_ece_uncalibrated": calibration.expected_calibration_error(uncalibrated, labels),
            "val_ece": calibration.expected_calibration_error(shipped_probabilities, labels),
        }
    return result


def weights_digest(model: keras.Model) -> str:
    """Return a short content hash of the weights: the model's version."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:12]


def model_metadata(result: TrainResult, params: TrainParams, lineage: dict[str, Any]) -> dict[str, Any]:
    """Describe a trained model for the server and for people: name, version, lineage.

    Only what the inputs decide: the metadata is part of the model folder whose md5 DVC records, so
    when and in which run the model was made are kept apart (`edge.pipeline.train_stage`)."""
    return {
        "name": "fashion-mnist-cnn",
        "version": weights_digest(result.model),
        "class_names": list(CLASS_NAMES),
        "input": {"shape": list(IMAGE_SHAPE), "dtype": "float32", "range": [0, 255]},
        "validation": {k: result.final[k] for k in ("val_accuracy", "val_loss") if k in result.final},
        "precision": result.precision.as_dict(),
        "calibration": result.calibration or None,
        # The same inputs give the same bits only on the same kind of machine: say which it was.
        "lineage": {**lineage, "machine": machine()},
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
