"""Calibration: ECE measures the gap between confidence and accuracy; a temperature closes it."""

from __future__ import annotations

import numpy as np
import pytest

from edge import calibration


def overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 3-class model that is right 70% of the time but ~99% sure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 3)
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), predicted] += 6.0
    return logits, labels


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # Confidence 0.75 on every image, right on exactly 3 of 4.
    probabilities = np.tile([0.75, 0.25], (400, 1))
    labels = np.array([0, 0, 0, 1] * 100)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-9)


def test_ece_measures_overconfidence() -> None:
    logits, labels = overconfident()
    ece = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    assert ece == pytest.approx(0.29, abs=0.02)


def test_temperature_fitted_on_held_out_data_calibrates_new_data() -> None:
    logits, labels = overconfident(seed=0)
    temperature = calibration.fit_temperature([logits], labels)
    assert temperature > 2  # an overconfident model is cooled
    new_logits, new_labels = overconfident(seed=1)
    before = calibration.expected_calibration_error(calibration.softmax(new_logits), new_labels)
    after_probabilities = calibration.scaled_probabilities([new_logits], temperature)
    after = calibration.expected_calibration_error(after_probabilities, new_labels)
    assert after < 0.03 < before
    # A temperature changes how sure, never which class.
    np.testing.assert_array_equal(after_probabilities.argmax(1), new_logits.argmax(1))


def test_reliability_bins_count_every_prediction_once() -> None:
    logits, labels = overconfident(n=500)
    table = calibration.reliability(calibration.softmax(logits), labels, bins=10)
    assert len(table) == 10 and sum(b.count for b in table) == 500
    csv_text = calibration.reliability_csv(table)
    assert csv_text.splitlines()[0] == "confidence,accuracy,count"
    assert calibration.reliability_png(table, 0.1)[:8] == b"\x89PNG\r\n\x1a\n"
