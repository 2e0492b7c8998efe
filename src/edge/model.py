"""The Fashion-MNIST classifier: its architecture, its serving export and how to load it back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.data import CLASS_NAMES, IMAGE_SHAPE

if TYPE_CHECKING:
    import keras

KERAS_FILE = "model.keras"
SERVING_DIR = "serving"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ModelParams:
    """Architecture hyperparameters, the `model` block of params.yaml."""

    filters: tuple[int, ...] = (32, 64, 128)
    dense_units: int = 256
    dropout: float = 0.3

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelParams:
        """Build from a params.yaml block, rejecting unknown keys."""
        unknown = set(raw) - {"filters", "dense_units", "dropout"}
        if unknown:
            raise ValueError(f"unknown model parameter(s) {sorted(unknown)} in params.yaml")
        values = dict(raw)
        if "filters" in values:
            values["filters"] = tuple(int(f) for f in values["filters"])
        return cls(**values)


def build_model(params: ModelParams) -> keras.Model:
    """Build the CNN; it takes raw 0-255 pixels of shape (28, 28) and returns class probabilities."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.Reshape((*IMAGE_SHAPE, 1))(x)
    for block, filters in enumerate(params.filters):
        for conv in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu")(x)
        if block < len(params.filters) - 1:
            x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(params.dropout)(x)
    x = layers.Dense(params.dense_units, activation="relu")(x)
    x = layers.Dropout(params.dropout)(x)
    outputs = layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fashion_mnist_cnn")


def save_model(model: keras.Model, model_dir: str, metadata: dict[str, Any]) -> None:
    """Write the `.keras` file, the serving export and the metadata into `model_dir`."""
    from edge import storage

    storage.makedirs(model_dir)
    with storage.local_copy_for_writing(storage.join(model_dir, KERAS_FILE)) as local:
        model.save(local)
    with storage.local_dir_for_writing(storage.join(model_dir, SERVING_DIR)) as local:
        model.export(local, format="tf_saved_model", verbose=False)
    storage.write_text(storage.join(model_dir, METADATA_FILE), json.dumps(metadata, indent=2) + "\n")


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """Read the metadata written beside a saved model."""
    from edge import storage

    loaded: dict[str, Any] = json.loads(storage.read_text(storage.join(str(model_dir), METADATA_FILE)))
    return loaded
