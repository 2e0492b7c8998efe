"""The model card: lineage, metrics, per class, robustness, failure modes; HTML that fetches nothing."""

from __future__ import annotations

import re
from typing import Any

from edge import model_tests, modelcard
from tests.unit.test_model_tests import blob_split, brightest_square, params

METADATA = {
    "name": "fashion-mnist-cnn",
    "version": "abc123def456",
    "validation": {"val_accuracy": 0.9412, "val_loss": 0.2},
    "precision": {"setting": "auto", "policy": "float32", "reason": "auto: the CPU reports none of ..."},
    "calibration": {"temperature": 0.71, "val_ece_uncalibrated": 0.061, "val_ece": 0.012},
    "lineage": {
        "data_version": {"data/raw/fashion-mnist": "5f974fc07a228533b94e96f0786e9bcc.dir"},
        "params": {"train": {"epochs": 17, "model": {"filters": [32, 64, 128]}}},
    },
}


RUN = {
    "model_version": "abc123def456",
    "created": "2026-11-27T17:00:00+00:00",
    "tracking_run_id": "0123456789abcdef",
    "git": {"commit": "c0ffee" * 6 + "abcd", "branch": "main", "dirty": True},
    "vertex_job": None,
}


def card(with_checks: bool = False, run: dict[str, Any] | None = None) -> modelcard.Card:
    result = model_tests.run_suite(brightest_square, blob_split(), params())
    history = [
        {"epoch": 1, "accuracy": 0.5, "val_accuracy": 0.6},
        {"epoch": 2, "accuracy": 0.8, "val_accuracy": 0.85},
    ]
    return modelcard.Card(METADATA, result, history, with_checks=with_checks, run=run)


def test_markdown_card_holds_lineage_metrics_robustness_and_failures() -> None:
    text = modelcard.markdown(card())
    for expected in (
        "# Model card: fashion-mnist-cnn abc123def456",
        "5f974fc07a228533b94e96f0786e9bcc.dir",
        "| test accuracy | 100.00% |",
        "0.0610 / 0.0120",
        "| shifted 2 px |",
        "28x28 grayscale",
        "| train.model.filters | [32, 64, 128] |",
    ):
        assert expected in text, expected
    # The toy model confuses neighbouring squares under shifts, not on clean images.
    assert "Known failure modes" in text
    assert "Quality gate" not in text
    assert "Quality gate" in modelcard.markdown(card(with_checks=True))


def test_only_a_card_given_the_run_record_says_when_from_which_commit_and_by_which_run() -> None:
    # The card saved in the model folder is made from what the inputs decide: no run, date or commit.
    saved = modelcard.markdown(card())
    assert "tracked run" not in saved and "2026-11-27" not in saved and "c0ffee" not in saved
    evaluated = modelcard.markdown(card(with_checks=True, run=RUN))
    for row in (
        "| tracked run | 0123456789abcdef |",
        "| created | 2026-11-27T17:00:00+00:00 |",
        f"| git commit | {'c0ffee' * 6}abcd (uncommitted changes) on main |",
    ):
        assert row in evaluated, row


def test_html_card_is_self_contained() -> None:
    page = modelcard.html_page(card())
    assert page.startswith("<!DOCTYPE html>")
    # Every image is inline, and nothing is loaded from anywhere.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<td>Trouser</td>" in page
    assert "fashion-mnist-cnn abc123def456" in page
