"""Same inputs, same model: training twice gives the same weights, bit for bit."""

from __future__ import annotations

import subprocess
import sys

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
params = TrainParams.from_dict({
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
    params = TrainParams.from_dict({"seed": 5, "batch_size": 64, "shift": 2, "contrast": 0.3, "noise": 12})

    def stream() -> list[np.ndarray]:
        return [images.numpy() for _, (images, _) in enumerate(_dataset(split, params, epochs=2))]

    once, again = stream(), stream()
    assert len(once) == 8  # 4 batches an epoch, 2 epochs
    assert all(np.array_equal(a, b) for a, b in zip(once, again, strict=True))
    # The second epoch is not the first one again: a new order and new augmentation.
    assert not any(np.array_equal(once[i], once[i + 4]) for i in range(4))
    other = TrainParams.from_dict({"seed": 6, "batch_size": 64, "shift": 2, "contrast": 0.3, "noise": 12})
    assert not np.array_equal(once[0], next(iter(_dataset(split, other, epochs=2)))[0].numpy())
