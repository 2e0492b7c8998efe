"""`.ci/check-dvc-lock`, CI's check that the committed dvc.lock matches the code and params.yaml,
on a small DVC project: a fresh clone (no data) passes, a changed stage dependency or params key
fails with the stage, the file and what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitrepo import git

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "check-dvc-lock"
DVC_YAML = """\
stages:
  count:
    cmd: python count.py
    deps: [count.py, words.txt]
    params: [count]
    outs: [counted.txt]
"""


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of a project whose dvc.lock was committed after `dvc repro`: no data, no outputs."""
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    assert run(origin, "dvc", "init", "-q").returncode == 0
    (origin / "count.py").write_text(
        "import yaml\nwords = open('words.txt').read().split()\n"
        "limit = yaml.safe_load(open('params.yaml'))['count']['limit']\n"
        "open('counted.txt', 'w').write(str(min(len(words), limit)))\n"
    )
    (origin / "params.yaml").write_text("count:\n  limit: 10\n")
    (origin / "dvc.yaml").write_text(DVC_YAML)
    (origin / "words.txt").write_text("one two three\n")
    assert run(origin, "dvc", "add", "-q", "words.txt").returncode == 0
    done = run(origin, "dvc", "repro", "-q")
    assert done.returncode == 0, done.stderr
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "counted")
    git(tmp_path, "clone", "-q", str(origin), "clone")
    return tmp_path / "clone"


def test_a_fresh_clone_with_no_data_passes(clone: Path) -> None:
    done = run(clone, sys.executable, str(CHECK))
    assert done.returncode == 0, done.stderr
    assert "matches" in done.stdout


def test_a_changed_stage_dependency_or_params_key_fails_and_says_what_to_do(clone: Path) -> None:
    (clone / "count.py").write_text((clone / "count.py").read_text() + "# changed\n")
    (clone / "params.yaml").write_text("count:\n  limit: 2\n")
    done = run(clone, sys.executable, str(CHECK))
    assert done.returncode == 1
    assert "count: count.py modified" in done.stderr
    assert "count: params.yaml count modified" in done.stderr
    assert "run `dvc repro`" in done.stderr and "commit dvc.lock" in done.stderr
