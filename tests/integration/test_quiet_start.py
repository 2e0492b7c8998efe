"""What a command that loads TensorFlow prints: its own lines, not TensorFlow's C++ start-up notices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge.pipeline import PrepareParams, prepare_stage


def test_tensorflow_s_start_up_notices_stay_off_the_terminal(
    tmp_path: Path, tiny_raw: Path, tiny_model_dir: Path
) -> None:
    prepared = tmp_path / "prepared"
    prepare_stage(str(tiny_raw), str(prepared), PrepareParams(validation_size=20))
    (tmp_path / "params.yaml").write_text("evaluate:\n  min_accuracy: 0.0\n  min_class_recall: 0.0\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell
    command = [sys.executable, "-m", "edge", "pipeline", "evaluate", "--model-dir", str(tiny_model_dir)]
    command += ["--prepared-dir", str(prepared), "--reports-dir", str(tmp_path / "reports")]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert "Test accuracy" in output, output  # TensorFlow ran
    for notice in ("absl::InitializeLog()", "oneDNN custom operations are on", "cpu_feature_guard"):
        assert notice not in output, output
