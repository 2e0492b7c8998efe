"""The pipeline commands' behaviour at the edges: bad settings, an existing model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app, enable_onednn


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_skips_when_a_model_exists(in_tmp: Path, tiny_model_dir: Path) -> None:
    shutil.copytree(tiny_model_dir, in_tmp / "models")
    result = CliRunner().invoke(app, ["pipeline", "run", "--skip-if-trained"])
    assert result.exit_code == 0, result.output
    assert "already holds a model: nothing to do" in result.output
    assert not (in_tmp / "data").exists()


def test_unknown_parameter_is_one_clear_line(in_tmp: Path, tiny_raw: Path) -> None:
    (in_tmp / "params.yaml").write_text("prepare:\n  seeds: 3\n")
    result = CliRunner().invoke(app, ["pipeline", "prepare", "--raw-dir", str(tiny_raw)])
    assert result.exit_code == 1
    assert "error:" in result.output and "seeds" in result.output
    assert "Traceback" not in result.output
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
