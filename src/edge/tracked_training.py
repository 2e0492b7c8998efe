"""The train stage as a tracked run: every trained model gets a Sacred run (edge.tracking).

A run holds the lineage (git commit, remote and dirty flag, DVC data version), every setting (the
whole of params.yaml is the Sacred config), per-epoch metrics, the test metrics, a copy of the code
that decided the model, and three artifacts: the exported model, a confusion matrix and the metrics.

The test metrics come from the train run itself: once the model is exported it is scored on the test
split by the same code as the evaluate stage (it takes about a second), so each trained model is one
complete run. The evaluate stage still applies the quality gate, on its own.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from typing import Any

from edge import (
    calibration,
    data,
    envsettings,
    evaluate,
    model,
    model_tests,
    pipeline,
    storage,
    tracking,
    train,
)
from edge.verdict import Verdict

# The epoch metrics a run records, and the artifacts it keeps beside them.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
MODEL_ARCHIVE = "model.tar.gz"
CONFUSION_PNG = "confusion_matrix.png"
# Not `metrics.json`: Sacred's file journal keeps the per-epoch metrics under that name.
METRICS_JSON = "final_metrics.json"
# The code that decides what the train stage makes, and this module, which runs it: the run keeps a
# copy of each.
SOURCES = (
    calibration,
    data,
    envsettings,
    evaluate,
    model,
    model_tests,
    pipeline,
    storage,
    train,
    sys.modules[__name__],
)


def tracked_train_stage(
    prepared_dir: str,
    model_dir: str,
    reports_dir: str,
    settings: pipeline.Params,
    lineage: dict[str, Any],
    *,
    on_epoch_end: train.EpochCallback | None = None,
) -> tuple[train.TrainResult, dict[str, Any], Verdict | None]:
    """Run `pipeline.train_stage` as a tracked run; return its result, the model's metadata and the
    test suite's verdict on it (None when `settings` has no suite)."""

    def body(recorder: tracking.Recorder) -> tuple[train.TrainResult, dict[str, Any], Verdict | None]:
        def epoch_end(epoch: int, row: dict[str, float]) -> None:
            recorder.log_metrics(epoch, {k: row[k] for k in EPOCH_METRICS if k in row})
            if on_epoch_end:
                on_epoch_end(epoch, row)

        # The model names its run (and the registry entry names both): model, run and registry
        # point at each other. The uuid is the run's key in the journal and in MongoDB alike; it goes
        # into the run record beside the model, not into the model, whose bytes the inputs decide.
        result, metadata, measured = pipeline.train_stage(
            prepared_dir,
            model_dir,
            reports_dir,
            settings.train,
            lineage,
            suite=settings.evaluate,
            on_epoch_end=epoch_end,
            tracking_run_id=recorder.info["run_uuid"],
        )
        _test, scores = pipeline.score_on_test(prepared_dir, model_dir)
        summary = {
            "model_version": metadata["version"],
            "epochs": len(result.history),
            "train_seconds": round(result.seconds, 1),
            "val_accuracy": result.final["val_accuracy"],
            "val_loss": result.final["val_loss"],
            "test_accuracy": scores.accuracy,
            "test_loss": scores.loss,
        }
        recorder.info["result"] = summary
        recorder.info["test"] = scores.metrics()
        recorder.info["model"] = {"version": metadata["version"], "dir": model_dir}
        recorder.add_artifact(MODEL_ARCHIVE, _archive(model_dir), "application/gzip")
        recorder.add_artifact(CONFUSION_PNG, evaluate.confusion_png(scores), "image/png")
        final = {"summary": summary, **scores.metrics()}
        recorder.add_artifact(METRICS_JSON, (json.dumps(final, indent=2) + "\n").encode(), "application/json")
        judged = None
        if measured is not None:
            judged = model_tests.verdict_of(measured, metadata)
            recorder.info["verdict"] = {
                "status": judged.status,
                "failed_checks": [check.describe() for check in judged.failed],
            }
            if not judged.passed:
                # Recorded as FAILED, with the checks as its reason; the stage itself goes on, so
                # that the evaluate stage judges the exported model and leaves its evidence.
                recorder.fail_after_recording(judged.describe())
        return result, metadata, judged

    tracked = tracking.tracked_run(
        body,
        config={**settings.as_dict(), "seed": settings.train.seed},
        info=tracking.run_info(lineage),
        sources=SOURCES,
    )
    return tracked.value


def _archive(model_dir: str) -> bytes:
    """The exported model directory (the .keras file, the serving export, metadata) as a .tar.gz."""
    buffer = io.BytesIO()
    with storage.local_dir_for_reading(model_dir) as local, tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(local, arcname="model")
    return buffer.getvalue()
