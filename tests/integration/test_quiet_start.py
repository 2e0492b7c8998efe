"""What a command that loads TensorFlow prints: its own lines, not TensorFlow's C++ start-up notices,
nor the error line TensorFlow logs when op determinism rewrites Keras's input pipeline for NumPy
arrays (`edge.model.predict`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.pipeline import PrepareParams, prepare_stage
from tests.datagen import NO_AUGMENTATION

NOTICES = (
    "absl::InitializeLog()",
    "oneDNN custom operations are on",
    "cpu_feature_guard",
    "NodeDef mentions",
)
# A one-epoch model on the tiny data: the train stage as it runs in `make up`, in seconds.
TINY = {
    "train": {"epochs": 1, "batch_size": 64, **NO_AUGMENTATION, "model": {"filters": [8], "dense_units": 16}},
    "evaluate": {"min_accuracy": 0.0, "min_class_recall": 0.0, "clear_examples": None},
}


# evaluate imports TensorFlow first; train imports Sacred first, which looks TensorFlow up (without
# importing it) when it is imported itself.
@pytest.mark.parametrize("stage", ["evaluate", "train"])
def test_tensorflow_s_start_up_notices_stay_off_the_terminal(
    stage: str, tmp_path: Path, tiny_raw: Path, tiny_model_dir: Path
) -> None:
    prepared = tmp_path / "prepared"
    prepare_stage(str(tiny_raw), str(prepared), PrepareParams(validation_size=20))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    model_dir = tiny_model_dir if stage == "evaluate" else tmp_path / "models"
    command = [sys.executable, "-m", "edge", "pipeline", stage, "--model-dir", str(model_dir)]
    command += ["--prepared-dir", str(prepared), "--reports-dir", str(tmp_path / "reports")]
    # As a user's shell: no TF_CPP_MIN_LOG_LEVEL; the run's journal in this test's folder.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["EDGE_RUNS_DIR"] = str(tmp_path / "runs")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Test accuracy" in output or "Trained 1 epoch" in output, output  # TensorFlow ran
    for notice in NOTICES:
        assert notice not in output, output
