"""A small model trained on real Fashion-MNIST images, once per session, saved as training saves one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge.data import CLASS_NAMES, Split, read_idx
from tests.conftest import TINY_MODEL_METADATA

TRAIN_IMAGES = 4000
VALIDATION_IMAGES = 1000
TEST_IMAGES = 1500


@dataclass(frozen=True)
class TrainedModel:
    """A trained model folder (with its reference profile) and held-out real test images."""

    model_dir: Path
    test_images: np.ndarray
    test_labels: np.ndarray


@pytest.fixture(scope="session")
def small_real_model(real_fashion_source: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """Train two epochs of a narrow CNN on 4000 real images (about a minute on two busy cores)."""
    from edge.model import ModelParams, save_model
    from edge.monitoring.profile import PROFILE_FILE, compute_profile
    from edge.train import TrainParams, train

    # Others share the machine: training is the one heavy step of these tests, so it yields.
    os.nice(5)
    rng = np.random.default_rng(0)
    images = read_idx(real_fashion_source / "train-images-idx3-ubyte.gz")
    labels = read_idx(real_fashion_source / "train-labels-idx1-ubyte.gz")
    order = rng.permutation(len(labels))[: TRAIN_IMAGES + VALIDATION_IMAGES]
    train_split = Split(images[order[:TRAIN_IMAGES]], labels[order[:TRAIN_IMAGES]])
    validation = Split(images[order[TRAIN_IMAGES:]], labels[order[TRAIN_IMAGES:]])
    params = TrainParams(
        epochs=3,
        batch_size=128,
        warmup_epochs=0,
        # The drift tests' thresholds were measured on a model trained without augmentation.
        shift=0,
        contrast=0.0,
        noise=0.0,
        model=ModelParams(filters=(16, 32), dense_units=64),
    )
    result = train(train_split, validation, params, verbose=0)
    folder = tmp_path_factory.mktemp("small-real-model") / "model"
    metadata = {**TINY_MODEL_METADATA, "name": "fashion-mnist-cnn", "version": "small-real"}
    profile = compute_profile(result.model, validation.images, list(CLASS_NAMES))
    save_model(result.model, str(folder), metadata, extra_files={PROFILE_FILE: profile.to_json().encode()})
    test_images = read_idx(real_fashion_source / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(real_fashion_source / "t10k-labels-idx1-ubyte.gz")
    pick = rng.permutation(len(test_labels))[:TEST_IMAGES]
    return TrainedModel(folder, test_images[pick].astype(np.float32), test_labels[pick])
