"""Sharing data through a DVC remote on a local directory: push, lose everything, pull it back."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.datagen import write_fashion_files
from tests.integration.test_pipeline_dvc import run


def test_local_remote_round_trip(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    raw = write_fashion_files(repo / "data" / "raw" / "fashion-mnist", compress=False)
    original = {p.name: p.read_bytes() for p in raw.iterdir()}
    run(["dvc", "add", "-q", "data/raw/fashion-mnist"], repo)
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], repo)
    run(["dvc", "push", "-q"], repo)

    shutil.rmtree(raw)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(["dvc", "pull", "-q"], repo)

    assert {p.name: p.read_bytes() for p in raw.iterdir()} == original
