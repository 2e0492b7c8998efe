"""Verdicts for test models, written as the evaluate stage writes them (edge.verdict).

The serving tests judge the server, not their tiny untrained models: a test that needs a servable
model declares it passed here; the tests of the verdict itself write failed ones.
"""

from __future__ import annotations

from pathlib import Path

from edge import verdict
from edge.model import read_metadata


def judge(model_dir: str | Path, *, passed: bool = True, version: str | None = None) -> verdict.Verdict:
    """Write a verdict on the model in `model_dir` (on another `version`, if given)."""
    metadata = read_metadata(model_dir)
    failed = [] if passed else [verdict.FailedCheck("accuracy", 0.5, ">= 0.92", why="too many wrong")]
    judged = verdict.Verdict(
        version or str(metadata["version"]), verdict.content_sha256(metadata), passed, failed
    )
    verdict.write(str(model_dir), judged)
    return judged
