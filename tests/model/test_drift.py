"""Drift of a real trained model: clean held-out images raise no alert, every simulated shift raises one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge.data import CLASS_NAMES
from edge.monitoring import drift
from edge.monitoring.log import AnsweredRequest, Record, build_records
from edge.monitoring.profile import load_profile
from edge.monitoring.settings import load_settings
from edge.monitoring.shifts import SHIFTS
from tests.conftest import REPO_ROOT
from tests.model.conftest import TrainedModel

pytestmark = pytest.mark.slow
ARTIFACT = REPO_ROOT / "test-artifacts" / "monitoring-drift.json"
PER_SHIFT = 500


def served_records(model_dir: Path, images: np.ndarray) -> list[Record]:
    """Run the serving export as the server does and build the records its log would write."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir / "serving"))
    profile = load_profile(str(model_dir))
    probabilities = np.concatenate(
        [loaded.serve(images[i : i + 256]).numpy() for i in range(0, len(images), 256)]
    )
    class_ids = probabilities.argmax(axis=1)
    predicted = AnsweredRequest(
        request_id="test",
        model="fashion-mnist-cnn",
        version="small-real",
        latency_ms=1.0,
        images=images,
        class_ids=class_ids.tolist(),
        labels=[CLASS_NAMES[i] for i in class_ids],
        confidences=probabilities.max(axis=1).tolist(),
        time=time.time(),
    )
    return build_records(predicted, lambda p: profile.project(loaded.embed(p.images).numpy()))


@pytest.fixture(scope="module")
def scores(small_real_model: TrainedModel) -> dict[str, drift.DriftResult]:
    settings = load_settings({})
    profile = load_profile(str(small_real_model.model_dir))
    rng = np.random.default_rng(1)
    results = {}
    # The first images stay held out as the clean stream; the shifts are made from the others.
    clean = small_real_model.test_images[:PER_SHIFT]
    pool = small_real_model.test_images[PER_SHIFT:]
    for name, shift in SHIFTS.items():
        images = (
            clean if name == "clean" else shift(pool[rng.choice(len(pool), PER_SHIFT, replace=False)], rng)
        )
        results[name] = drift.compare(profile, served_records(small_real_model.model_dir, images), settings)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(
        json.dumps(
            {
                name: {
                    "alerting": r.alerting,
                    **{
                        s.signal: {"statistic": round(s.statistic, 4), "p_value": s.p_value} for s in r.scores
                    },
                }
                for name, r in results.items()
            },
            indent=2,
        )
    )
    return results


def test_clean_held_out_images_raise_no_alert(scores: dict[str, drift.DriftResult]) -> None:
    clean = scores["clean"]
    assert clean.enough
    assert not clean.alert, clean.to_dict()["scores"]


@pytest.mark.parametrize("shift", [name for name in SHIFTS if name != "clean"])
def test_each_simulated_shift_raises_an_alert(scores: dict[str, drift.DriftResult], shift: str) -> None:
    result = scores[shift]
    assert result.alert, result.to_dict()["scores"]
    # Beyond the inputs themselves, the model's view of them (its embeddings) moved as well.
    assert "embedding" in result.alerting


def test_model_is_good_enough_to_monitor(small_real_model: TrainedModel) -> None:
    records = served_records(small_real_model.model_dir, small_real_model.test_images)
    accuracy = np.mean([r["class_id"] for r in records] == small_real_model.test_labels)
    # A model this small is no product, but a drift test on a model at chance level would prove nothing.
    assert accuracy > 0.75
