"""The release gate: may a candidate model replace the one in production?

Both models are scored on the same test split by the code the evaluate stage uses; `judge` then
compares the two evaluations against the model test suite's floors (`evaluate.min_accuracy` and
`evaluate.min_class_recall`) and the gate's own rules (the `gate` block of params.yaml). It is pure:
the CLI (`edge model gate`) does the I/O, writes the report as Markdown and JSON and exits non-zero
when the gate fails, which stops a deployment in CI and by hand (`edge deploy` reads the JSON report).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.data import CLASS_NAMES
from edge.evaluate import Evaluation
from edge.model_tests import Check

REPORT_JSON = "gate.json"
REPORT_MARKDOWN = "gate.md"


class GateParams(BaseModel):
    """The `gate` block of params.yaml: what the release gate adds to the model test suite's floors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # How much test accuracy the candidate may lose against production (absolute, 0.005 = 0.5 points).
    max_regression: float = Field(default=0.005, ge=0, le=1)
    # Recall floors for named classes that differ from evaluate.min_class_recall, e.g. {"Shirt": 0.75}.
    class_recall: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)

    @field_validator("class_recall", mode="before")
    @classmethod
    def _known_classes(cls, value: object) -> object:
        if value is None:
            return {}
        unknown = sorted(set(value) - set(CLASS_NAMES)) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(
                f"unknown class(es) {', '.join(unknown)}; the classes are {', '.join(CLASS_NAMES)}"
            )
        return value


@dataclass(frozen=True)
class Floors:
    """The model test suite's floors (the evaluate block) that the release gate applies too."""

    min_accuracy: float
    min_class_recall: float


def recall_floor(rules: GateParams, floors: Floors, class_name: str) -> float:
    """A class's recall floor: the gate's own for that class, else the test suite's."""
    return float(rules.class_recall.get(class_name, floors.min_class_recall))


@dataclass(frozen=True)
class Scored:
    """A model's identity and its scores on the test split."""

    model: Mapping[str, Any]  # what names it: version, source directory or registry entry
    accuracy: float
    loss: float
    recall: Mapping[str, float]

    @classmethod
    def of(cls, model: Mapping[str, Any], evaluation: Evaluation) -> Scored:
        per_class = evaluation.per_class()
        return cls(
            dict(model),
            round(evaluation.accuracy, 4),
            round(evaluation.loss, 4),
            {name: per_class[name]["recall"] for name in CLASS_NAMES},
        )


@dataclass(frozen=True)
class GateReport:
    """The verdict with every check, both models' scores and the test split they were scored on."""

    passed: bool
    checks: list[Check]
    candidate: Scored
    production: Scored | None
    test_split: Mapping[str, Any]
    floors: Floors
    rules: GateParams

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "candidate": asdict(self.candidate),
            "production": asdict(self.production) if self.production else None,
            "test_split": dict(self.test_split),
            "rules": {**asdict(self.floors), **self.rules.model_dump()},
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"# Release gate: {verdict}",
            "",
            f"Candidate `{_label(self.candidate.model)}` against "
            + (f"production `{_label(self.production.model)}`" if self.production else "no production model")
            + f", on the same test split ({self.test_split.get('count')} images, "
            f"sha256 `{str(self.test_split.get('sha256', ''))[:12]}`).",
            "",
            "| check | measured | limit | result |",
            "| --- | ---: | ---: | --- |",
        ]
        for check in self.checks:
            lines.append(
                f"| {check.name} | {_fmt(check.measured)} | {_fmt(check.limit)} | "
                f"{'pass' if check.passed else '**FAIL**'}: {check.note} |"
            )
        lines += [
            "",
            "| class | candidate recall | production recall | floor |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name in CLASS_NAMES:
            production = self.production.recall[name] if self.production else None
            lines.append(
                f"| {name} | {self.candidate.recall[name]:.4f} | {_fmt(production)} | "
                f"{recall_floor(self.rules, self.floors, name):.4f} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _label(model: Mapping[str, Any]) -> str:
    return str(model.get("registry") or model.get("version") or model.get("dir") or "?")


def judge(
    candidate: Scored,
    production: Scored | None,
    rules: GateParams,
    floors: Floors,
    test_split: Mapping[str, Any],
) -> GateReport:
    """Apply the floors and the gate's rules to a candidate's scores and (when there is one)
    production's."""
    checks = [
        Check(
            "accuracy floor",
            candidate.accuracy,
            floors.min_accuracy,
            note="test accuracy against evaluate.min_accuracy",
        )
    ]
    if production is None:
        checks.append(Check("no regression", None, None, note="no production model yet: nothing to compare"))
    else:
        allowed = round(production.accuracy - rules.max_regression, 4)
        change = candidate.accuracy - production.accuracy
        checks.append(
            Check(
                "no regression",
                candidate.accuracy,
                allowed,
                note=f"{change:+.4f} against production's {production.accuracy:.4f} "
                f"(gate.max_regression {rules.max_regression})",
            )
        )
    for name in CLASS_NAMES:
        floor = recall_floor(rules, floors, name)
        recall = candidate.recall[name]
        source = f"gate.class_recall.{name}" if name in rules.class_recall else "evaluate.min_class_recall"
        checks.append(Check(f"recall of {name}", recall, floor, note=source))
    return GateReport(
        all(c.passed for c in checks), checks, candidate, production, dict(test_split), floors, rules
    )


def split_identity(npz_bytes: bytes, count: int) -> dict[str, Any]:
    """Name a test split by its content, so a report shows both models saw the very same images."""
    return {"count": count, "sha256": hashlib.sha256(npz_bytes).hexdigest()}
