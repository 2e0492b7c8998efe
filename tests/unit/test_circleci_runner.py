"""tests/circleci.py runs jobs as CircleCI does: checked on a small configuration and on ours."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.circleci import CircleCi, duration, job_steps, load_config, workflow_jobs

ROOT = Path(__file__).resolve().parents[2]
SMALL = """
version: 2.1
commands:
  greet:
    steps:
      - run: echo 'export GREETING=hello' >> "$BASH_ENV"
jobs:
  build:
    steps:
      - checkout
      - greet
      - run:
          name: uses what an earlier step exported, in the clone
          command: test "$GREETING" = hello && test -f README && echo made > out.txt && echo kept > other.txt
      - persist_to_workspace: {root: ., paths: [out.txt]}
  ship:
    steps:
      - checkout
      - attach_workspace: {at: .}
      - run: test -f out.txt && test ! -f other.txt && test -z "${GREETING:-}"
      - run: {name: fails, command: "false; echo never"}
      - run: {name: skipped after a failure, command: "true"}
      - run: {name: runs anyway, command: "true", when: always}
workflows:
  main:
    jobs:
      - build: {context: ctx, filters: {branches: {only: main}}}
      - ship: {context: ctx, requires: [build], filters: {branches: {only: main}}}
      - other: {filters: {branches: {ignore: main}}}
"""


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    repo.mkdir()
    (repo / "README").write_text("a repository\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], [*git, "commit", "-qm", "x"]):
        subprocess.run(command, cwd=repo, check=True)
    return repo


def test_jobs_run_in_order_with_bash_env_workspaces_and_when(origin: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(SMALL)
    jobs = workflow_jobs(config, "main", "main", "ctx")
    assert jobs == ["build", "ship"]
    runner = CircleCi(
        config, origin, tmp_path / "ci", lambda job, clone: {"PATH": "/usr/bin:/bin"}, tmp_path / "cache"
    )
    run = runner.run_workflow(jobs)
    outcome = [(s.job, s.name, s.ok, s.skipped) for s in run.steps]
    assert outcome[:5] == [
        ("build", "checkout", True, False),
        ("build", "echo 'export GREETING=hello' >> \"$BASH_ENV\"", True, False),
        ("build", "uses what an earlier step exported, in the clone", True, False),
        ("build", "persist_to_workspace", True, False),
        ("ship", "checkout", True, False),
    ]
    assert outcome[5:] == [
        ("ship", "attach_workspace", True, False),
        ("ship", 'test -f out.txt && test ! -f other.txt && test -z "${GREETING:-}"', True, False),
        ("ship", "fails", False, False),  # -e: `false` ends the step before `echo never`
        ("ship", "skipped after a failure", True, True),
        ("ship", "runs anyway", True, False),
    ]
    assert "never" not in run.steps[7].output
    assert run.first_failure is run.steps[7]


def test_a_step_quiet_for_too_long_is_ended(origin: Path, tmp_path: Path) -> None:
    config = {
        "jobs": {
            "quiet": {"steps": ["checkout", {"run": {"command": "sleep 30", "no_output_timeout": "1s"}}]}
        }
    }
    runner = CircleCi(config, origin, tmp_path / "ci", lambda job, clone: {"PATH": "/usr/bin:/bin"}, tmp_path)
    (_checkout, quiet) = runner.run_job("quiet")
    assert not quiet.ok and quiet.seconds < 10
    assert "Too long with no output" in quiet.output


def test_our_release_jobs_for_main_and_their_steps() -> None:
    config = load_config(ROOT / ".circleci" / "config.yml")
    assert workflow_jobs(config, "test-and-release", "main", "gcp-edge") == ["images", "pipeline", "release"]
    # Pull requests get no job with the context.
    assert workflow_jobs(config, "test-and-release", "feature", "gcp-edge") == []
    kinds = [kind for kind, _ in job_steps(config, "release")]
    assert kinds[:6] == ["checkout", "restore_cache", "run", "save_cache", "run", "run"]  # commands expanded
    assert (duration("45m"), duration("1h"), duration(None)) == (2700, 3600, 600)
