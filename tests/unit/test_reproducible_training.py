"""Same inputs, same model: training twice gives the same weights, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge.data import Split
from edge.train import TrainParams, _dataset
from tests.datagen import synthetic_split

# Trains a tiny model with every augmentation on and prints its weights digest. Each run is its own
# process, as two `dvc repro` runs are: nothing is shared but the inputs.
TRAIN_ONCE = """
import sys
from edge.data import Split
from edge.train import TrainParams, train, weights_digest
from tests.datagen import synthetic_split
params = TrainParams.model_validate({
    "seed": 7, "epochs": 2, "batch_size": 64, "shift": 2, "contrast": 0.3, "noise": 12,
    "model": {"filters": [8, 16], "dense_units": 16, "bfloat16": sys.argv[1] == "bfloat16"},
})
result = train(Split(*synthetic_split(400, 1)), Split(*synthetic_split(100, 2)), params, verbose=0)
print(weights_digest(result.model))
"""


def _digest(precision: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_ONCE, precision], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_training_twice_gives_the_same_weights() -> None:
    first, second = _digest("float32"), _digest("float32")
    assert len(first) == 12
    assert first == second


def test_the_input_stream_is_the_same_in_every_run_and_new_each_epoch() -> None:
    split = Split(*synthetic_split(256, 3))
    params = TrainParams(seed=5, batch_size=64, shift=2, contrast=0.3, noise=12)

    def stream() -> list[np.ndarray]:
        return [images.numpy() for _, (images, _) in enumerate(_dataset(split, params, epochs=2))]

    once, again = stream(), stream()
    assert len(once) == 8  # 4 batches an epoch, 2 epochs
    assert all(np.array_equal(a, b) for a, b in zip(once, again, strict=True))
    # The second epoch is not the first one again: a new order and new augmentation.
    assert not any(np.array_equal(once[i], once[i + 4]) for i in range(4))
    other = TrainParams(seed=6, batch_size=64, shift=2, contrast=0.3, noise=12)
    assert not np.array_equal(once[0], next(iter(_dataset(split, other, epochs=2)))[0].numpy())


# Builds a model with every kind of variable (batch norm statistics, a layer shared by flip TTA, a
# temperature), gives it fixed weights and saves it as training does, into the folder named by argv.
SAVE_ONCE = """
import json, sys
import keras
import numpy as np
from edge.model import ModelParams, build_model, content_manifest, save_model, with_flip_tta, with_temperature
# As training does: the dropout layers' seed state comes from the seed too.
keras.utils.set_random_seed(3)
params = ModelParams(filters=(4, 8), dense_units=8, batch_norm=True, standardize=True, bfloat16=False)
model = with_flip_tta(with_temperature(build_model(params), 1.5))
model.set_weights([np.full(w.shape, 0.01 * (i + 1), w.dtype) for i, w in enumerate(model.get_weights())])
save_model(model, sys.argv[1], {"name": "same-weights", "version": "1"})
print(json.dumps(content_manifest(sys.argv[1])))
"""


def _save(folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SAVE_ONCE, str(folder)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return manifest


def test_the_same_weights_saved_in_two_processes_give_the_same_bytes(tmp_path: Path) -> None:
    first, second = _save(tmp_path / "first"), _save(tmp_path / "second")
    assert "model.keras" in first["files"] and "serving/saved_model.pb" in first["files"]
    assert first["files"] == second["files"]
    assert first["sha256"] == second["sha256"]


def test_a_model_saved_reproducibly_loads_and_predicts_as_it_was(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    from edge.model import ModelParams, build_model, save_model, with_flip_tta

    base = build_model(ModelParams(filters=(4,), dense_units=8, bfloat16=False))
    model = with_flip_tta(base)
    save_model(model, str(tmp_path / "models"), {"name": "m", "version": "1"})
    images = np.random.default_rng(0).uniform(0, 255, (5, 28, 28)).astype(np.float32)
    expected = model.predict(images, verbose=0)
    loaded = keras.saving.load_model(tmp_path / "models" / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, rtol=1e-6)
    # The network under flip TTA is still one layer used twice, not two copies.
    assert len({id(layer) for layer in loaded.layers if isinstance(layer, keras.Model)}) == 1
    serving = tf.saved_model.load(str(tmp_path / "models" / "serving"))
    served = serving.signatures["serve"](image=tf.constant(images))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), expected, rtol=1e-6)
