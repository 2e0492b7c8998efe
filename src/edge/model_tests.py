"""The model test suite: behaviour a good model shows beyond its accuracy, and the floors it must meet.

- invariance: the prediction stays the same when an image is shifted by a pixel or two, darkened,
  given less contrast or mild noise (the rate per perturbation, against a floor);
- robustness: accuracy under each perturbation, next to clean accuracy;
- minimum functionality: a curated, versioned set of clear examples per class must all be right;
- per class: recall and precision floors, and the worst class;
- calibration: expected calibration error against a ceiling.

Everything here is numpy on predictions; `predict` is whatever runs the model (the serving export in
the evaluate stage), so the suite tests what ships.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from edge import calibration
from edge.data import CLASS_NAMES, Split
from edge.evaluate import Evaluation, evaluate
from edge.verdict import FailedCheck, Verdict, content_sha256

Predict = Callable[[np.ndarray], np.ndarray]
"""Class probabilities [N, 10] for uint8 images [N, 28, 28]."""

PERTURBATION_KINDS = ("shift", "brightness", "contrast", "noise_sd")
CLEAR_EXAMPLES_FORMAT = 1


# Nearest training images that must all share a clear example's label. With 10, test image 23 (an
# ankle boot cut open with straps, sandal-like to the eye) was "clear" although its 17th to 50th
# nearest neighbours are half sneakers and sandals; 25 keeps such borderline images out.
CLEAR_NEIGHBOURS = 25


class QualityGateError(Exception):
    """The model is not good enough to ship; the message says by how much."""


class SuiteConfigError(ValueError):
    """A file the test suite's settings name is missing or does not match the data; the message says
    which."""


class Perturbation(BaseModel):
    """One change a garment's identity should survive, and the share of predictions that must not move.

    Exactly one of: `shift` pixels (each image moves that far along x, y or both, direction at random,
    empty pixels black), `brightness` (pixels multiplied), `contrast` (distance from the image's mean
    multiplied), `noise_sd` (Gaussian noise of that standard deviation, in 0-255 units).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    shift: int | None = Field(default=None, ge=0)
    brightness: float | None = Field(default=None, ge=0)
    contrast: float | None = Field(default=None, ge=0)
    noise_sd: float | None = Field(default=None, ge=0)
    floor: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Perturbation:
        given = [kind for kind in PERTURBATION_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                f"must hold exactly one of {', '.join(PERTURBATION_KINDS)} and a floor, "
                f"found {', '.join(given) or 'none'}"
            )
        return self

    @model_serializer
    def _as_written(self) -> dict[str, Any]:
        # As params.yaml spells it: the one kind given, and the floor.
        return {self.kind: getattr(self, self.kind), "floor": self.floor}

    @property
    def kind(self) -> str:
        return next(kind for kind in PERTURBATION_KINDS if getattr(self, kind) is not None)

    @property
    def amount(self) -> float:
        return float(getattr(self, self.kind))

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return perturbed copies of uint8 images."""
        if self.kind == "shift":
            return shift_images(images, int(self.amount), rng)
        pixels = images.astype(np.float64)
        if self.kind == "brightness":
            pixels = pixels * self.amount
        elif self.kind == "contrast":
            mean = pixels.mean(axis=(1, 2), keepdims=True)
            pixels = mean + (pixels - mean) * self.amount
        else:
            pixels = pixels + rng.normal(0.0, self.amount, size=pixels.shape)
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def describe(self) -> str:
        return {
            "shift": f"shifted {int(self.amount)} px",
            "brightness": f"brightness x{self.amount:g}",
            "contrast": f"contrast x{self.amount:g}",
            "noise_sd": f"noise sd {self.amount:g}",
        }[self.kind]


def shift_images(images: np.ndarray, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Move each image by `pixels` along x, y or both (one of the 8 directions at random), black fill."""
    directions = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    choice = rng.integers(0, len(directions), len(images))
    out = np.zeros_like(images)
    height, width = images.shape[1:]
    for index, (dx, dy) in enumerate(directions):
        members = choice == index
        x, y = dx * pixels, dy * pixels
        out[members, max(y, 0) : height + min(y, 0), max(x, 0) : width + min(x, 0)] = images[
            members, max(-y, 0) : height + min(-y, 0), max(-x, 0) : width + min(-x, 0)
        ]
    return out


class SuiteParams(BaseModel):
    """The floors of the `evaluate` block of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_accuracy: float = Field(default=0.9, ge=0, le=1)
    min_class_recall: float = Field(default=0.0, ge=0, le=1)
    min_class_precision: float = Field(default=0.0, ge=0, le=1)
    # Expected calibration error (15 bins) the model may not exceed.
    max_ece: float = Field(default=1.0, ge=0, le=1)
    clear_examples: str | None = None
    # Named perturbations, in the order the report lists them.
    invariance: dict[str, Perturbation] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("invariance", mode="before")
    @classmethod
    def _empty_block_is_none(cls, value: object) -> object:
        return {} if value is None else value


@dataclass(frozen=True)
class Check:
    """One check against a limit, for the model test suite and the release gate alike: what was
    measured, the limit it must meet, and a note (the class, the wrong examples, where the limit is
    set). Nothing measured (no production model to compare with, no clear example in this split)
    is a skipped check, which passes."""

    name: str
    measured: float | None
    limit: float | None
    higher_is_better: bool = True
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.measured is None or self.limit is None:
            return True
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def requirement(self, digits: str = "g") -> str:
        """The limit as a condition, e.g. `>= 0.92`; `-` when there is none."""
        if self.limit is None:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='} {self.limit:{digits}}"

    @property
    def status(self) -> str:
        if self.measured is None:
            return "skipped"
        return "pass" if self.passed else "FAIL"


@dataclass(frozen=True)
class Robustness:
    """Accuracy and prediction stability under one perturbation."""

    name: str
    perturbation: Perturbation
    accuracy: float
    unchanged: float


@dataclass
class SuiteResult:
    """Everything the suite measured, and the checks against the floors."""

    evaluation: Evaluation
    probabilities: np.ndarray
    labels: np.ndarray
    ece: float
    reliability: list[calibration.ReliabilityBin]
    robustness: list[Robustness]
    clear_total: int
    clear_found: int
    clear_wrong: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def worst_class(self) -> tuple[str, float]:
        per_class = self.evaluation.per_class()
        name = min(per_class, key=lambda n: per_class[n]["recall"])
        return name, per_class[name]["recall"]

    def summary(self) -> dict[str, float | int]:
        """The flat metrics file: one number per key, so `dvc metrics show/diff` stay readable."""
        worst_name, worst_recall = self.worst_class()
        per_class = self.evaluation.per_class()
        summary: dict[str, float | int] = {
            "accuracy": round(self.evaluation.accuracy, 4),
            "loss": round(self.evaluation.loss, 4),
            "ece": round(self.ece, 4),
            "worst_class_recall": worst_recall,
            "worst_class_precision": min(s["precision"] for s in per_class.values()),
            "worst_class_index": CLASS_NAMES.index(worst_name),
            "clear_examples_correct": self.clear_found - len(self.clear_wrong),
            "clear_examples_found": self.clear_found,
        }
        for r in self.robustness:
            summary[f"accuracy_{r.name}"] = round(r.accuracy, 4)
        for r in self.robustness:
            summary[f"unchanged_{r.name}"] = round(r.unchanged, 4)
        summary["checks_failed"] = len(self.failed)
        return summary

    def details(self) -> dict[str, Any]:
        """Per-class scores, the checks and the clear examples that failed: the readable detail."""
        worst_name, _ = self.worst_class()
        return {
            "worst_class": worst_name,
            "per_class": self.evaluation.per_class(),
            "robustness": [
                {
                    "perturbation": r.name,
                    "description": r.perturbation.describe(),
                    "accuracy": round(r.accuracy, 4),
                    "unchanged": round(r.unchanged, 4),
                    "floor": r.perturbation.floor,
                }
                for r in self.robustness
            ],
            "checks": [
                {
                    "check": c.name,
                    "measured": c.measured,
                    "limit": c.limit,
                    "status": c.status,
                    "note": c.note,
                }
                for c in self.checks
            ],
            "clear_examples_wrong": self.clear_wrong,
        }

    def table(self) -> str:
        """The checks as a plain-text table, failures marked, for the terminal and the error."""
        rows = [("check", "measured", "limit", "status")]
        for c in self.checks:
            measured = "-" if c.measured is None else f"{c.measured:.4f}"
            limit = c.requirement(".4f")
            rows.append((c.name + (f" ({c.note})" if c.note else ""), measured, limit, c.status))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def image_digest(image: np.ndarray) -> str:
    """A short content hash of one uint8 image: finds a curated example in any copy of the test set."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()[:16]


def read_clear_examples(path: str | Path) -> list[dict[str, Any]]:
    """Read the curated examples file (ids into the raw test set, labels, image digests)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SuiteConfigError(
            f"evaluate.clear_examples names {path}, which does not exist: restore it from git "
            "(`git checkout -- {path}`) or set it to null to skip the check"
        ) from None
    if raw.get("format") != CLEAR_EXAMPLES_FORMAT or not isinstance(raw.get("examples"), list):
        raise SuiteConfigError(f"{path} is not a clear-examples file of format {CLEAR_EXAMPLES_FORMAT}")
    examples: list[dict[str, Any]] = raw["examples"]
    return examples


def select_clear_examples(
    train: Split, test: Split, per_class: int = 10, neighbours: int = CLEAR_NEIGHBOURS, batch: int = 500
) -> list[dict[str, Any]]:
    """Choose, per class, the first `per_class` test images whose `neighbours` nearest training images
    (raw pixels, Euclidean) all share its label: unambiguous examples any decent model gets right.

    Independent of any model, deterministic, and recorded by id, label and digest.
    """
    train_pixels = train.images.reshape(len(train.images), -1).astype(np.float32)
    train_norms = (train_pixels**2).sum(axis=1)
    chosen: dict[int, list[int]] = {c: [] for c in range(len(CLASS_NAMES))}
    for start in range(0, len(test.labels), batch):
        if all(len(v) >= per_class for v in chosen.values()):
            break
        pixels = test.images[start : start + batch].reshape(-1, train_pixels.shape[1]).astype(np.float32)
        distances = train_norms[None, :] - 2 * pixels @ train_pixels.T
        nearest = np.argpartition(distances, neighbours, axis=1)[:, :neighbours]
        for offset, row in enumerate(nearest):
            index = start + offset
            label = int(test.labels[index])
            if len(chosen[label]) < per_class and (train.labels[row] == label).all():
                chosen[label].append(index)
    return [
        {"id": i, "label": CLASS_NAMES[c], "digest": image_digest(test.images[i])}
        for c in range(len(CLASS_NAMES))
        for i in chosen[c]
    ]


def _find_clear_examples(
    examples: Iterable[dict[str, Any]], test: Split
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Locate curated examples in this test split by digest; return (index, example) pairs and total."""
    where = {image_digest(image): i for i, image in enumerate(test.images)}
    found, total = [], 0
    for example in examples:
        total += 1
        index = where.get(str(example["digest"]))
        if index is not None:
            if CLASS_NAMES[int(test.labels[index])] != example["label"]:
                raise SuiteConfigError(
                    f"clear example {example['id']} is labelled {example['label']} in the curated file "
                    f"but {CLASS_NAMES[int(test.labels[index])]} in the test split: the file does not "
                    "match this data version"
                )
            found.append((index, example))
    return found, total


def run_suite(predict: Predict, test: Split, params: SuiteParams) -> SuiteResult:
    """Run every test of the suite on `test` with `predict`, and check the results against the floors."""
    probabilities = predict(test.images)
    evaluation = evaluate(probabilities, test.labels)
    predicted = evaluation.predicted
    rng = np.random.default_rng(params.seed)
    robustness = []
    for name, perturbation in params.invariance.items():
        moved = predict(perturbation.apply(test.images, rng)).argmax(axis=1)
        robustness.append(
            Robustness(
                name,
                perturbation,
                float(np.mean(moved == test.labels)),
                float(np.mean(moved == predicted)),
            )
        )
    clear_found: list[tuple[int, dict[str, Any]]] = []
    clear_total = 0
    if params.clear_examples:
        clear_found, clear_total = _find_clear_examples(read_clear_examples(params.clear_examples), test)
    clear_wrong = [
        {**example, "predicted": CLASS_NAMES[int(predicted[index])]}
        for index, example in clear_found
        if predicted[index] != test.labels[index]
    ]
    table = calibration.reliability(probabilities, test.labels)
    ece = calibration.expected_calibration_error(probabilities, test.labels)
    result = SuiteResult(
        evaluation,
        probabilities,
        test.labels,
        ece,
        table,
        robustness,
        clear_total,
        len(clear_found),
        clear_wrong,
    )
    result.checks = _checks(result, params)
    return result


def _checks(result: SuiteResult, params: SuiteParams) -> list[Check]:
    per_class = result.evaluation.per_class()
    worst_recall = min(per_class, key=lambda n: per_class[n]["recall"])
    worst_precision = min(per_class, key=lambda n: per_class[n]["precision"])
    checks = [
        Check("accuracy", result.evaluation.accuracy, params.min_accuracy),
        Check(
            "worst class recall",
            per_class[worst_recall]["recall"],
            params.min_class_recall,
            note=worst_recall,
        ),
        Check(
            "worst class precision",
            per_class[worst_precision]["precision"],
            params.min_class_precision,
            note=worst_precision,
        ),
        Check("expected calibration error", result.ece, params.max_ece, higher_is_better=False),
    ]
    # Every class under a floor is named, not only the worst.
    for name, scores in per_class.items():
        if name != worst_recall and scores["recall"] < params.min_class_recall:
            checks.append(Check("class recall", scores["recall"], params.min_class_recall, note=name))
        if name != worst_precision and scores["precision"] < params.min_class_precision:
            checks.append(
                Check("class precision", scores["precision"], params.min_class_precision, note=name)
            )
    if params.clear_examples:
        wrong = ", ".join(f"{w['id']} {w['label']}->{w['predicted']}" for w in result.clear_wrong[:5])
        more = f" and {len(result.clear_wrong) - 5} more" if len(result.clear_wrong) > 5 else ""
        share = (
            (result.clear_found - len(result.clear_wrong)) / result.clear_found
            if result.clear_found
            else None
        )
        note = (
            f"wrong: {wrong}{more}"
            if result.clear_wrong
            else f"{result.clear_found} of {result.clear_total} in this test split"
        )
        checks.append(Check("clear examples right", share, 1.0, note=note))
    for r in result.robustness:
        checks.append(Check(f"unchanged, {r.perturbation.describe()}", r.unchanged, r.perturbation.floor))
    return checks


def per_class_csv(result: SuiteResult) -> str:
    """Precision, recall and F1 per class, for `dvc plots` (a bar per class)."""
    rows = ["class,precision,recall,f1"]
    for name, s in result.evaluation.per_class().items():
        rows.append(f"{name},{s['precision']},{s['recall']},{s['f1']}")
    return "\n".join(rows) + "\n"


def robustness_csv(result: SuiteResult) -> str:
    """Accuracy and unchanged predictions under each perturbation, clean first, for `dvc plots`."""
    rows = ["perturbation,accuracy,unchanged", f"clean,{round(result.evaluation.accuracy, 4)},1.0"]
    rows += [f"{r.name},{round(r.accuracy, 4)},{round(r.unchanged, 4)}" for r in result.robustness]
    return "\n".join(rows) + "\n"


# Why each kind of check matters, for the people a failed model would answer (by check name prefix).
WHY_IT_MATTERS = {
    "accuracy": "more test images are classified wrong than the floor allows",
    "worst class recall": "one kind of garment is missed too often: its users get wrong answers",
    "class recall": "one kind of garment is missed too often: its users get wrong answers",
    "worst class precision": "one class is predicted for garments that are something else",
    "class precision": "one class is predicted for garments that are something else",
    "expected calibration error": "its confidence does not mean what it says",
    "clear examples right": "it got wrong a garment that people and the training data agree on",
    "unchanged": "its answer changes when the photo changes a little (position, light, noise), as "
    "real photos do",
}


def why_it_matters(check: Check) -> str:
    return next((why for name, why in WHY_IT_MATTERS.items() if check.name.startswith(name)), "")


def verdict_of(result: SuiteResult, metadata: dict[str, Any]) -> Verdict:
    """The suite's verdict on the model that `metadata` describes, with every check it failed."""
    failed = [
        FailedCheck(
            check.name,
            check.measured,
            check.requirement(),
            check.note if "class" in check.name else "",
            why_it_matters(check),
        )
        for check in result.failed
    ]
    return Verdict(str(metadata["version"]), content_sha256(metadata), not failed, failed)


def check_gate(result: SuiteResult) -> None:
    """Raise with the table of checks when any failed: the model must not ship."""
    if result.failed:
        # Class checks name their class; other notes (the wrong examples) are in the table.
        names = "; ".join(c.name + (f" ({c.note})" if "class" in c.name else "") for c in result.failed)
        raise QualityGateError(
            f"quality gate failed: {len(result.failed)} check(s) under their floor ({names}); the model "
            f"must not ship. Floors are in the evaluate block of params.yaml.\n{result.table()}"
        )
