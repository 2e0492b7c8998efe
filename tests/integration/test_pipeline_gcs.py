"""`edge pipeline run` as a container or Vertex AI runs it: every location a gs:// URI (a real emulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge import storage
from edge.model import verify_model_uri
from edge.serving.loaded_model import load_from_uri
from edge.train import load_prepared
from tests.datagen import NO_AUGMENTATION
from tests.gcs_emulator import GcsEmulator

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EDGE = str(Path(sys.executable).with_name("edge"))
# 800 real training images, three short epochs: measured test accuracy 0.72 (one epoch of 64-image
# batches reached only 0.39). The gate's floor is five times chance; a model that learned nothing fails.
MIN_ACCURACY = 0.5
TINY_PARAMS = {
    "prepare": {"seed": 1, "validation_size": 200, "max_train_images": 1000, "max_test_images": 300},
    "train": {
        "seed": 1,
        "epochs": 3,
        "batch_size": 32,
        **NO_AUGMENTATION,
        "model": {"filters": [8], "dense_units": 16},
    },
    "evaluate": {"min_accuracy": MIN_ACCURACY},
}


def test_pipeline_run_seeds_trains_and_publishes_on_gcs(
    gcs_bucket: str, gcs_emulator: GcsEmulator, real_fashion_source: Path, tmp_path: Path
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    env = {
        **os.environ,
        **gcs_emulator.env(),
        "EDGE_DATA_SOURCE": str(real_fashion_source),
        # Vertex AI's variable: the model goes there when --model-dir is not given.
        "AIP_MODEL_DIR": f"{gcs_bucket}/vertex/model/",
        "EDGE_RUNS_DIR": str(tmp_path / "runs"),
    }
    env.pop("EDGE_TRACKING_URL", None)
    argv = [
        EDGE,
        "pipeline",
        "run",
        "--seed",
        "--raw-dir",
        f"{gcs_bucket}/raw/fashion-mnist",
        "--prepared-dir",
        f"{gcs_bucket}/prepared",
        "--reports-dir",
        f"{gcs_bucket}/reports",
    ]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    # The bug this guards: Path("gs://b/raw") is the local folder "gs:/b/raw".
    assert not (tmp_path / "gs:").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "runs"]
    objects = gcs_emulator.objects(gcs_bucket)
    assert [o for o in objects if o.startswith("raw/")] == [
        "raw/fashion-mnist/t10k-images-idx3-ubyte",
        "raw/fashion-mnist/t10k-labels-idx1-ubyte",
        "raw/fashion-mnist/train-images-idx3-ubyte",
        "raw/fashion-mnist/train-labels-idx1-ubyte",
    ]
    assert "vertex/model/_published.json" in objects
    metadata = verify_model_uri(f"{gcs_bucket}/vertex/model")
    predictor = load_from_uri(f"{gcs_bucket}/vertex/model")
    assert predictor.version == metadata["version"]
    prepared = storage.resolve_dir(f"{gcs_bucket}/prepared")
    summary = json.loads(storage.read_text(storage.join(prepared, "summary.json")))
    assert summary["train"]["count"] + summary["validation"]["count"] == 1000
    # The reported test accuracy is that of the model published on GCS, scored on the split there.
    test = load_prepared(f"{gcs_bucket}/prepared", "test")
    predicted = np.array([p.class_id for p in predictor.predict(test.images.astype(np.float32))])
    metrics = json.loads(storage.read_text(f"{gcs_bucket}/reports/evaluate/metrics.json"))
    assert metrics["accuracy"] == pytest.approx(float(np.mean(predicted == test.labels)), abs=1e-4)
    assert metrics["accuracy"] >= MIN_ACCURACY and metrics["checks_failed"] == 0, metrics
    assert "all 4 checks of the model test suite pass" in done.stderr
    assert storage.exists(f"{gcs_bucket}/reports/evaluate/confusion_matrix.png")

    # A second run with --skip-if-trained finds the published model complete and does nothing.
    again = subprocess.run(
        [*argv, "--skip-if-trained"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already holds a model: nothing to do" in again.stderr
