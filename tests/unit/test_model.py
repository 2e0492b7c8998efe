"""The classifier's contract: raw pixels in, one probability per class out."""

from __future__ import annotations

import numpy as np
import pytest

from edge.data import CLASS_NAMES
from edge.model import ModelParams, build_model, with_flip_tta
from edge.train import TrainParams


def test_model_outputs_probabilities_per_class() -> None:
    model = build_model(ModelParams(filters=(8, 16), dense_units=16))
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (5, len(CLASS_NAMES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities >= 0).all()


def test_bfloat16_model_keeps_float32_probabilities() -> None:
    model = build_model(ModelParams(filters=(8,), dense_units=16, bfloat16=True))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28)).astype(np.float32)
    probabilities = model(images, training=False)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, rtol=1e-5)


def test_flip_tta_averages_an_image_and_its_mirror() -> None:
    base = build_model(ModelParams(filters=(8,), dense_units=16))
    model = with_flip_tta(base)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype(np.float32)
    mirrored = images[:, :, ::-1].copy()
    expected = (np.asarray(base(images, training=False)) + np.asarray(base(mirrored, training=False))) / 2
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, rtol=1e-5, atol=1e-7)
    # A garment and its mirror image get the same answer.
    np.testing.assert_allclose(np.asarray(model(mirrored, training=False)), expected, rtol=1e-5, atol=1e-7)


def test_unknown_parameters_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown train parameter.*'epoch'"):
        TrainParams.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match=r"unknown model parameter.*'layers'"):
        TrainParams.from_dict({"model": {"layers": 3}})
