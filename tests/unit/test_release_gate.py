"""The release gate: its rules on made-up scores, and `edge model gate` on real saved models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.data import CLASS_NAMES
from edge.pipeline import PrepareParams, prepare_stage
from edge.release_gate import Floors, GateParams, Scored, judge

SPLIT = {"count": 100, "sha256": "ab" * 32}
FLOORS = Floors(min_accuracy=0.9, min_class_recall=0.6)


def scored(accuracy: float, recall: float = 0.9, **overrides: float) -> Scored:
    recalls = {name: recall for name in CLASS_NAMES} | overrides
    return Scored({"version": f"acc{accuracy}"}, accuracy, 0.3, recalls)


def failed(report_checks: list) -> set[str]:  # type: ignore[type-arg]
    return {c.name for c in report_checks if not c.passed}


def test_a_better_candidate_passes() -> None:
    report = judge(scored(0.93), scored(0.92), GateParams(), FLOORS, SPLIT)
    assert report.passed and not report.failures()


def test_regression_within_the_tolerance_passes_beyond_it_fails() -> None:
    rules = GateParams(max_regression=0.005)
    assert judge(scored(0.916), scored(0.92), rules, FLOORS, SPLIT).passed
    report = judge(scored(0.91), scored(0.92), rules, FLOORS, SPLIT)
    assert not report.passed
    assert failed(report.checks) == {"no regression"}
    assert "-0.0100" in report.failures()[0].note


def test_the_accuracy_floor_holds_even_without_production() -> None:
    report = judge(scored(0.85), None, GateParams(), FLOORS, SPLIT)
    assert failed(report.checks) == {"accuracy floor"}
    assert "no production model" in report.to_markdown()


def test_one_weak_class_fails_the_gate_and_per_class_floors_override() -> None:
    candidate = scored(0.93, Shirt=0.55)
    assert failed(judge(candidate, None, GateParams(), FLOORS, SPLIT).checks) == {"recall of Shirt"}
    looser = GateParams(class_recall={"Shirt": 0.5})
    report = judge(candidate, None, looser, FLOORS, SPLIT)
    assert report.passed
    assert {c.name: c.note for c in report.checks}["recall of Shirt"] == "gate.class_recall.Shirt"
    assert {c.name: c.note for c in report.checks}["recall of Bag"] == "evaluate.min_class_recall"


def test_report_round_trips_as_json_and_reads_as_markdown() -> None:
    report = judge(scored(0.91), scored(0.93), GateParams(), FLOORS, SPLIT)
    data = json.loads(report.to_json())
    assert data["passed"] is False
    assert data["production"]["accuracy"] == 0.93
    assert data["test_split"] == SPLIT
    assert data["rules"]["min_accuracy"] == 0.9
    markdown = report.to_markdown()
    assert markdown.startswith("# Release gate: FAILED")
    assert "**FAIL**" in markdown and "| Shirt |" in markdown


@pytest.fixture
def project(tmp_path: Path, tiny_raw: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    prepare_stage(str(tiny_raw), "data/prepared", PrepareParams(validation_size=20))
    return tmp_path


def write_params(project: Path, min_accuracy: float, min_class_recall: float) -> None:
    (project / "params.yaml").write_text(
        f"evaluate:\n  min_accuracy: {min_accuracy}\n  min_class_recall: {min_class_recall}\n"
        "gate:\n  max_regression: 0.0\n"
    )


def test_gate_command_passes_a_model_against_itself(project: Path, tiny_model_dir: Path) -> None:
    write_params(project, 0.0, 0.0)
    result = CliRunner().invoke(
        app, ["model", "gate", "--candidate", str(tiny_model_dir), "--production", str(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((project / "reports/gate/gate.json").read_text())
    assert report["passed"] is True
    # The same model on the same split: identical scores, and the split is named by its content.
    assert report["candidate"]["accuracy"] == report["production"]["accuracy"]
    assert report["test_split"]["count"] > 0 and len(report["test_split"]["sha256"]) == 64
    assert (project / "reports/gate/gate.md").read_text().startswith("# Release gate: PASSED")


def test_gate_command_fails_an_untrained_model_and_leaves_its_report(
    project: Path, tiny_model_dir: Path
) -> None:
    write_params(project, 0.5, 0.0)
    result = CliRunner().invoke(
        app, ["model", "gate", "--candidate", str(tiny_model_dir), "--production", "none"]
    )
    assert result.exit_code == 1
    assert "release gate failed (accuracy floor)" in result.output
    assert "Traceback" not in result.output
    report = json.loads((project / "reports/gate/gate.json").read_text())
    assert report["passed"] is False and report["production"] is None


def test_gate_command_needs_an_explicit_production(project: Path) -> None:
    result = CliRunner().invoke(app, ["model", "gate"])
    assert result.exit_code == 2
    assert "--production" in result.output
