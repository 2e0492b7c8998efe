"""`edge pipeline run` on local paths, as containers run it, with Vertex AI's `AIP_MODEL_DIR` as the
model's default home; the gate's verdict is the exit code. (tests/integration/test_pipeline_gcs.py
runs the same command with every location on gs://.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.model import verify_model_uri
from tests.datagen import NO_AUGMENTATION

pytestmark = pytest.mark.slow

EDGE = str(Path(sys.executable).with_name("edge"))
# 500 synthetic training images, three short epochs: measured test accuracy 0.945 (chance: 0.1).
MIN_ACCURACY = 0.5
PARAMS = {
    "prepare": {"seed": 1, "validation_size": 100},
    "train": {
        "seed": 1,
        "epochs": 3,
        "batch_size": 32,
        **NO_AUGMENTATION,
        "model": {"filters": [8], "dense_units": 16},
    },
    "evaluate": {"min_accuracy": MIN_ACCURACY},
}


def edge(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_pipeline_run_trains_into_aip_model_dir_and_its_gate_sets_the_exit_code(
    tmp_path: Path, tiny_raw: Path
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    model_dir = tmp_path / "job" / "model"
    env = {
        **os.environ,
        "AIP_MODEL_DIR": f"{model_dir}/",  # as Vertex AI sets it: a folder, with a trailing slash
        "EDGE_RUNS_DIR": str(tmp_path / "runs"),
        "COLUMNS": "200",
    }
    env.pop("EDGE_TRACKING_URL", None)
    where = ["--prepared-dir", "prepared", "--reports-dir", "reports"]

    done = edge(tmp_path, env, "pipeline", "run", "--raw-dir", str(tiny_raw), *where)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"saved to {model_dir}/." in output
    metadata = verify_model_uri(str(model_dir))  # complete, every part's hash as published
    assert not (tmp_path / "models").exists(), "the model went to the default folder, not $AIP_MODEL_DIR"
    metrics = json.loads((tmp_path / "reports/evaluate/metrics.json").read_text())
    assert metrics["accuracy"] >= MIN_ACCURACY and metrics["checks_failed"] == 0, metrics
    assert "all 4 checks of the model test suite pass" in output

    # A rerun as compose's trainer starts it finds the model in $AIP_MODEL_DIR and leaves it be.
    again = edge(tmp_path, env, "pipeline", "run", "--raw-dir", str(tiny_raw), "--skip-if-trained", *where)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already holds a model: nothing to do" in again.stderr
    assert verify_model_uri(str(model_dir))["version"] == metadata["version"]

    # The evaluate stage alone reads the model from $AIP_MODEL_DIR too; a stricter gate fails it.
    strict = {**PARAMS, "evaluate": {"min_accuracy": 0.999}}
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(strict))
    failed = edge(
        tmp_path, env, "pipeline", "evaluate", "--params", "strict.yaml", "--prepared-dir", "prepared",
        "--reports-dir", "strict-reports",
    )  # fmt: skip
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "quality gate failed: 1 check(s) under their floor (accuracy)" in output
    row = next(line for line in output.splitlines() if line.startswith("accuracy "))
    assert row.split()[-1] == "FAIL" and ">= 0.9990" in row, row
    assert "Traceback" not in output
    # The evidence is kept, and it is the same model's: the same accuracy.
    judged = json.loads((tmp_path / "strict-reports/metrics.json").read_text())
    assert judged["accuracy"] == metrics["accuracy"] and judged["checks_failed"] == 1
