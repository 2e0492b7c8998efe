"""The pipeline commands' behaviour at the edges: bad settings, an existing model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app, computes_in_batches, enable_onednn
from edge.verdict import VERDICT_FILE
from tests.verdicts import judge


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_skips_when_a_model_that_passed_the_gate_exists(in_tmp: Path, tiny_model_dir: Path) -> None:
    shutil.copytree(tiny_model_dir, in_tmp / "models")  # with its verdict: passed
    result = CliRunner().invoke(app, ["pipeline", "run", "--skip-if-trained"])
    assert result.exit_code == 0, result.output
    assert "already holds a model: nothing to do" in result.output
    assert not (in_tmp / "data").exists()


@pytest.mark.parametrize(
    ("verdict", "why"),
    [
        ("failed", "failed 1 check(s) of its test suite: accuracy: 0.5000, needs >= 0.92"),
        ("on another version", "its test suite never judged it"),
        ("none", "its test suite never judged it"),
    ],
)
def test_run_retrains_a_model_that_did_not_pass_the_gate(
    in_tmp: Path, tiny_model_dir: Path, verdict: str, why: str
) -> None:
    """A failed run leaves its model published; a rerun with --skip-if-trained must not reuse it."""
    shutil.copytree(tiny_model_dir, in_tmp / "models")
    if verdict == "failed":
        judge(in_tmp / "models", passed=False)
    elif verdict == "on another version":
        judge(in_tmp / "models", version="another-version")
    else:
        (in_tmp / "models" / VERDICT_FILE).unlink()
    (in_tmp / "params.yaml").write_text("prepare: {}\n")
    result = CliRunner().invoke(app, ["pipeline", "run", "--skip-if-trained", "--raw-dir", "nowhere"])
    said = " ".join(result.output.split())
    assert "warning: not reusing the model in models: " in said and why in said, said
    assert "nothing to do" not in result.output
    # It went on to retrain: here it stops at the missing raw data, saying which file.
    assert result.exit_code == 1 and "train-images-idx3-ubyte" in result.output
    assert (in_tmp / "models" / "metadata.json").is_file(), "the old model was lost"


def test_unknown_parameter_is_one_clear_line(in_tmp: Path, tiny_raw: Path) -> None:
    (in_tmp / "params.yaml").write_text("prepare:\n  seeds: 3\n")
    result = CliRunner().invoke(app, ["pipeline", "prepare", "--raw-dir", str(tiny_raw)])
    assert result.exit_code == 1
    assert " ".join(result.output.split()) == (
        "error: params.yaml: prepare.seeds = 3: unknown key; the keys here are seed, validation_size, "
        "max_train_images, max_test_images"
    )
    assert not (in_tmp / "data").exists()


def test_missing_raw_data_says_which_file(in_tmp: Path) -> None:
    (in_tmp / "params.yaml").write_text("prepare: {}\n")
    result = CliRunner().invoke(app, ["pipeline", "prepare", "--raw-dir", "nowhere"])
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte" in result.output


def test_onednn_is_on_for_x86_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    enable_onednn("arm64")
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    enable_onednn("x86_64")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    enable_onednn("x86_64")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_the_model_server_keeps_tensorflows_own_kernel_choice() -> None:
    # One image computes twice as fast without oneDNN on an AVX2 core: serving leaves it to TensorFlow.
    assert not computes_in_batches(["serve", "--model-dir", "models"])
    assert not computes_in_batches(["up", "--port", "8080"])
    assert computes_in_batches(["pipeline", "train", "--prepared-dir", "serve"])
    assert computes_in_batches(["model", "gate"])
    assert computes_in_batches([])


def test_train_refuses_a_bucket_root_before_training(in_tmp: Path) -> None:
    result = CliRunner().invoke(
        app, ["pipeline", "train", "--model-dir", "gs://team-bucket", "--on", "local"]
    )
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert said == (
        "error: gs://team-bucket is a bucket root: a publish needs a folder of its own beside the bucket's "
        "other objects; name one, as in gs://team-bucket/models"
    )
    assert not (in_tmp / "runs").exists(), "refused before any run was recorded"
