"""The prediction log and the report on gs:// against a real GCS emulator, as on a Vertex endpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from edge import storage
from edge.cli import app
from edge.data import CLASS_NAMES
from edge.monitoring.log import AnsweredRequest, PredictionLog, list_log_files, pending_writes, read_records
from edge.monitoring.profile import PROFILE_FILE, build_profile
from tests.gcs_emulator import GcsEmulator


def request(seed: int, count: int = 5) -> AnsweredRequest:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(count, 28, 28)).astype(np.float32)
    class_ids = rng.integers(0, 10, size=count).tolist()
    return AnsweredRequest(
        f"req-{seed}", "fashion-mnist-cnn", "v1", 2.0, images, class_ids,
        [CLASS_NAMES[i] for i in class_ids], rng.uniform(0.5, 1, size=count).tolist(),
    )  # fmt: skip


def test_log_lands_under_a_gs_prefix_and_reports_read_it(
    gcs_bucket: str, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    prefix = f"{gcs_bucket}/predictions"
    log = PredictionLog(prefix, file_records=20).start()
    for seed in range(10):
        log.submit(request(seed))
    assert log.close(timeout=120)
    objects = gcs_emulator.objects(gcs_bucket)
    # 50 records in files of at least 20: three objects, every one whole, nothing temporary left.
    assert len(objects) == 3
    assert all(name.startswith("predictions/") and name.endswith(".jsonl") for name in objects)
    assert list_log_files(prefix) == [f"{gcs_bucket}/{name}" for name in objects]
    records = list(read_records(prefix))
    assert len(records) == 50 and records[0]["request_id"] == "req-0"

    # The report reads the log and the model's profile from the bucket and writes its output there.
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(300, 28, 28))
    probabilities = rng.dirichlet(np.ones(10), size=300)
    profile = build_profile(images, probabilities, rng.normal(size=(300, 32)), list(CLASS_NAMES))
    model_dir = f"{gcs_bucket}/models/v1"
    storage.write_text(storage.join(model_dir, PROFILE_FILE), profile.to_json())
    storage.write_text(
        storage.join(model_dir, "metadata.json"),
        json.dumps({"name": "fashion-mnist-cnn", "version": "v1", "class_names": list(CLASS_NAMES)}),
    )
    out = f"{gcs_bucket}/monitoring/today"
    result = CliRunner().invoke(
        app,
        ["monitor", "report", "--source", prefix, "--model-dir", model_dir, "--out-dir", out],
        env={"EDGE_MONITOR_MIN_RECORDS": "10"},
    )
    assert result.exit_code in (0, 3), result.output
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["count"] == 50 and summary["source"] == prefix
    assert storage.read_text(storage.join(out, "report.html")).startswith("<!doctype html>")


def test_a_missing_bucket_drops_and_counts_without_raising(
    gcs_emulator: GcsEmulator, gcs_bucket: str
) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    log = PredictionLog("gs://no-such-bucket-edge/predictions", file_records=5, registry=registry).start()
    log.submit(request(1))
    assert log.close(timeout=120)
    assert registry.get_sample_value("edge_prediction_log_dropped_total", {"reason": "write_error"}) == 5


def test_records_held_are_announced_in_the_bucket_until_written(
    gcs_bucket: str, gcs_emulator: GcsEmulator
) -> None:
    prefix = f"{gcs_bucket}/predictions"
    log = PredictionLog(prefix, file_seconds=600).start()
    log.submit(request(1))
    deadline = time.monotonic() + 30
    while not pending_writes(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    [held] = pending_writes(prefix)
    [notice] = gcs_emulator.objects(gcs_bucket)
    assert notice.startswith("predictions/_pending/") and notice.endswith(f"-{held.writer}-000001.json")
    assert log.flush(timeout=60)
    assert pending_writes(prefix) == []
    [written] = gcs_emulator.objects(gcs_bucket)
    assert written.endswith(f"-{held.writer}-000001.jsonl"), "the notice is gone, the file is there"
    assert log.close(timeout=60)
