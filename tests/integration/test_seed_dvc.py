"""`edge data seed` in a DVC repository: says "commit it" only when the data version changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app

pytestmark = pytest.mark.slow


def test_seeding_a_fresh_clone_again_says_the_version_is_unchanged(
    tmp_path: Path, real_fashion_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    seed = ["data", "seed", "--source", str(real_fashion_source)]
    first = CliRunner().invoke(app, seed)
    assert first.exit_code == 0, first.output
    assert "(commit it with git)" in first.output
    # A fresh clone: the .dvc file is committed, the files themselves are not there yet.
    shutil.rmtree(tmp_path / "data/raw/fashion-mnist")
    again = CliRunner().invoke(app, seed)
    assert again.exit_code == 0, again.output
    assert "unchanged" in again.output
    assert "commit it with git" not in again.output
