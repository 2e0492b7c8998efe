"""The CircleCI configuration: valid for CircleCI, and every command it runs exists here."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edge.cli import app

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".circleci" / "config.yml"
# Lines that are neither `make` nor `edge`: installing the test machine's packages, exporting a variable.
SETUP_LINES = ("sudo apt-get ", "echo 'export ")
CLOUD_JOBS = {"images", "pipeline", "release"}


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def run_lines() -> list[str]:
    """Every shell line of every `run` step, in jobs and in reusable commands."""
    data = config()
    step_lists = [job["steps"] for job in data["jobs"].values()]
    step_lists += [command["steps"] for command in data.get("commands", {}).values()]
    lines = []
    for steps in step_lists:
        for step in steps:
            if isinstance(step, dict) and "run" in step:
                run = step["run"]
                command = run if isinstance(run, str) else run["command"]
                lines += [line.strip() for line in command.splitlines() if line.strip()]
    return lines


def test_config_validates_against_circleci_schema() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.circle-ci", str(CONFIG)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_job_runs_make_targets_or_edge_commands() -> None:
    others = [
        line
        for line in run_lines()
        if not line.startswith(("make ", ".venv/bin/edge ", "edge ")) and not line.startswith(SETUP_LINES)
    ]
    assert others == []


def make_targets() -> list[str]:
    targets = []
    for line in run_lines():
        if line.startswith("make "):
            targets += [w for w in shlex.split(line)[1:] if "=" not in w]
    return sorted(set(targets))


def edge_commands() -> list[list[str]]:
    commands = []
    for line in run_lines():
        words = shlex.split(line)
        if words[0].endswith("edge"):
            # The command path: the words before the first option.
            path = []
            for word in words[1:]:
                if word.startswith("-"):
                    break
                path.append(word)
            commands.append(path)
    return commands


@pytest.mark.parametrize("target", make_targets())
def test_make_target_exists(target: str) -> None:
    # -n: print what would run, run nothing; an unknown target fails with "No rule to make target".
    done = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HOME": "/tmp"}
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", edge_commands(), ids=" ".join)
def test_edge_command_exists(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output


def test_make_targets_call_existing_edge_commands() -> None:
    """The edge commands inside the targets CI runs exist too (`make -n` prints them)."""
    lines = []
    for target in make_targets():
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        lines += [line for line in done.stdout.splitlines() if line.startswith(".venv/bin/edge ")]
    assert lines, "no edge command found in the targets"
    for line in lines:
        words = shlex.split(line)[1:]
        path = [w for w in words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]]
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (line, result.output)


def test_pull_requests_get_no_credentials_and_deploy_only_from_main() -> None:
    jobs = config()["workflows"]["test-and-release"]["jobs"]
    by_name = {
        next(iter(j)) if isinstance(j, dict) else j: (j[next(iter(j))] if isinstance(j, dict) else {})
        for j in jobs
    }
    for name, settings in by_name.items():
        if name in CLOUD_JOBS:
            assert settings["filters"]["branches"]["only"] == "main", name
            assert settings["context"] == "gcp-edge", name
        else:
            # The context holds the Workload Identity settings: jobs that run for PRs never see them.
            assert "context" not in settings, name
    assert by_name["metrics-diff"]["filters"]["branches"]["ignore"] == "main"
    release_steps = [s for s in config()["jobs"]["release"]["steps"] if isinstance(s, dict) and "run" in s]
    commands = [s["run"]["command"] for s in release_steps]
    # The gate comes first: a failing gate ends the job before anything is registered or deployed.
    assert commands.index("make gate") < commands.index("make register") < commands.index("make deploy")


def test_edge_config_in_ci_asks_nothing() -> None:
    """A CI job has no terminal: the wizard's first question would end the step with "Aborted."."""
    lines = [shlex.split(line) for line in run_lines()]
    configs = [words for words in lines if words[0].endswith("edge") and words[1:2] == ["config"]]
    assert configs
    for words in configs:
        assert {"--non-interactive", "-y"} & set(words), " ".join(words)
