"""CircleCI's workflow: long steps may stay quiet as long as they need, and releases run one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parents[2] / ".circleci" / "config.yml"
# Steps that wait on Google for minutes: a cold image build and push, a Vertex AI job, deployModel.
LONG_STEPS = ("make images", "make cloud-repro", "make deploy")


def _runs(config: dict[str, Any]) -> list[dict[str, Any]]:
    steps = [step for job in config["jobs"].values() for step in job.get("steps", [])]
    return [step["run"] for step in steps if isinstance(step, dict) and isinstance(step.get("run"), dict)]


def test_long_steps_outlast_circleci_s_ten_quiet_minutes() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    for long_step in LONG_STEPS:
        runs = [run for run in _runs(config) if run["command"].strip().startswith(long_step)]
        assert runs, f"no step runs {long_step}"
        for run in runs:
            assert "no_output_timeout" in run, f"{long_step} may be ended after 10 minutes without output"


def test_the_release_job_runs_one_at_a_time() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    (entry,) = [
        job["release"]
        for workflow in config["workflows"].values()
        if isinstance(workflow, dict)
        for job in workflow.get("jobs", [])
        if isinstance(job, dict) and "release" in job
    ]
    assert entry.get("serial-group"), "two pushes to main would release to one endpoint at once"
