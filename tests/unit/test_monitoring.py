"""The monitoring pieces without a model: summaries, settings, the prediction log, drift, the report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge.data import CLASS_NAMES
from edge.monitoring import drift
from edge.monitoring.log import (
    AnsweredRequest,
    PredictionLog,
    build_batch_records,
    build_records,
    list_log_files,
    pending_writes,
    read_records,
)
from edge.monitoring.profile import PROFILE_FILE, ReferenceProfile, build_profile, load_profile
from edge.monitoring.report import write_report
from edge.monitoring.settings import load_settings
from edge.monitoring.summaries import HISTOGRAM_BINS, summarize
from tests.conftest import REPO_ROOT


def garments(count: int, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST-like images: a bright blob of random size on a black background."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.float32)
    for image in images:
        top, left = rng.integers(2, 8, size=2)
        height, width = rng.integers(12, 22, size=2)
        image[top : top + height, left : left + width] = rng.uniform(80, 255, size=(height, width))
    return images


def predicted(images: np.ndarray, seed: int = 0, request_id: str = "r") -> AnsweredRequest:
    rng = np.random.default_rng(seed)
    class_ids = rng.integers(0, len(CLASS_NAMES), size=len(images)).tolist()
    return AnsweredRequest(
        request_id=request_id,
        model="fashion-mnist-cnn",
        version="abc",
        latency_ms=2.5,
        images=images,
        class_ids=class_ids,
        labels=[CLASS_NAMES[i] for i in class_ids],
        confidences=rng.uniform(0.6, 1.0, size=len(images)).tolist(),
    )


def fake_embed(images: np.ndarray) -> np.ndarray:
    """A stand-in feature extractor: coarse 4x4 averages of the image (16 numbers)."""
    return (
        np.asarray(images, dtype=np.float32)
        .reshape(len(images), 4, 7, 4, 7)
        .mean(axis=(2, 4))
        .reshape(-1, 16)
        / 255
    )


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    images = garments(3000, seed=1)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(len(images), len(CLASS_NAMES))) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return build_profile(images, probabilities, fake_embed(images), list(CLASS_NAMES))


def test_summaries_of_known_images() -> None:
    black = np.zeros((1, 28, 28))
    white = np.full((1, 28, 28), 255.0)
    half = np.zeros((1, 28, 28))
    half[:, :14] = 255
    summary = summarize(np.concatenate([black, white, half]))
    assert summary["mean"].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert summary["std"].tolist() == pytest.approx([0.0, 0.0, 0.5])
    assert summary["ink"].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert summary["histogram"][0].tolist() == [1.0] + [0.0] * (HISTOGRAM_BINS - 1)
    assert summary["histogram"][1].tolist() == [0.0] * (HISTOGRAM_BINS - 1) + [1.0]
    assert summary["histogram"].sum(axis=1) == pytest.approx([1, 1, 1])


def test_settings_from_environment_and_clear_errors() -> None:
    settings = load_settings(
        {"EDGE_MONITOR_LOG": "gs://b/p", "EDGE_MONITOR_SAMPLE_RATE": "0.25", "HOME": "/x"}
    )
    assert settings.log == "gs://b/p"
    assert settings.sample_rate == 0.25
    assert load_settings({}).log is None
    with pytest.raises(ValueError, match="EDGE_MONITOR_SAMPLE_RATE"):
        load_settings({"EDGE_MONITOR_SAMPLE_RATE": "2"})
    with pytest.raises(ValueError, match="EDGE_MONITOR_SAMPEL_RATE"):
        load_settings({"EDGE_MONITOR_SAMPEL_RATE": "0.5"})


def test_log_writes_whole_files_rotated_by_count(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = PredictionLog(
        str(tmp_path), file_records=10, registry=registry, embed=lambda p: fake_embed(p.images)
    ).start()
    for i in range(7):
        log.submit(predicted(garments(4, seed=i), seed=i, request_id=f"req-{i}"))
    assert log.close()
    files = list_log_files(str(tmp_path))
    # 28 records in files of at least 10 records: rotated twice, then the rest at close.
    assert len(files) == 3
    records = list(read_records(str(tmp_path)))
    assert len(records) == 28
    assert [r["request_id"] for r in records[:4]] == ["req-0"] * 4
    first = records[0]
    assert set(first) == set(
        [
            "time",
            "model",
            "version",
            "request_id",
            "latency_ms",
            "class_id",
            "label",
            "confidence",
            "input",
            "embedding",
        ]
    )
    assert len(first["input"]["histogram"]) == HISTOGRAM_BINS
    assert len(first["embedding"]) == 16
    assert registry.get_sample_value("edge_prediction_log_records_total") == 28
    assert registry.get_sample_value("edge_prediction_log_files_total") == 3


def test_log_embeds_only_a_sample_but_summarises_every_record(tmp_path: Path) -> None:
    embedded_images: list[int] = []

    def embed(p: AnsweredRequest) -> np.ndarray:
        embedded_images.append(len(p.images))
        return fake_embed(p.images)

    log = PredictionLog(str(tmp_path), embed_rate=0.2, embed=embed, seed=3).start()
    images = garments(50, seed=1)
    for i in range(20):
        log.submit(predicted(images, seed=i, request_id=f"req-{i}"))
    assert log.close()
    records = list(read_records(str(tmp_path)))
    assert len(records) == 1000 and all(len(r["input"]["histogram"]) == HISTOGRAM_BINS for r in records)
    with_embedding = [r for r in records if "embedding" in r]
    # About a fifth, and the model ran on those images only, not on every logged one.
    assert 140 <= len(with_embedding) <= 260
    assert sum(embedded_images) == len(with_embedding)
    # Each embedding belongs to its own image (the rows are not shifted by the sampling).
    by_request = {r["request_id"]: i for i, r in enumerate(records)}
    expected = fake_embed(images)
    for record in with_embedding[:20]:
        row = records.index(record) - by_request[record["request_id"]] + 49
        assert record["embedding"] == pytest.approx(expected[row].tolist(), abs=1e-3)


def test_log_rotates_by_time_and_records_pixels_when_asked(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), file_seconds=0.2, log_inputs=True).start()
    log.submit(predicted(garments(2)))
    deadline = time.monotonic() + 10
    while not list_log_files(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Written by the timer, before close.
    assert len(list_log_files(str(tmp_path))) == 1
    log.close()
    record = next(read_records(str(tmp_path)))
    assert len(record["pixels"]) == 784
    assert max(record["pixels"]) <= 255


def test_held_records_are_announced_until_written_and_flush_writes_them_now(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), file_seconds=600).start()
    assert pending_writes(str(tmp_path)) == []
    log.submit(predicted(garments(3)))
    deadline = time.monotonic() + 10
    while not pending_writes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    [notice] = pending_writes(str(tmp_path))
    assert notice.pid == os.getpid() and not notice.gone()
    # Ten minutes of file_seconds: the notice says the records come that late at the latest.
    assert timedelta(seconds=590) < notice.due - datetime.now(UTC) <= timedelta(seconds=600)
    assert list_log_files(str(tmp_path)) == []
    log.submit(predicted(garments(2), request_id="second"))
    assert log.flush(timeout=10)
    assert len(list(read_records(str(tmp_path)))) == 5, "everything submitted before the flush"
    assert pending_writes(str(tmp_path)) == []
    log.close()


def test_a_notice_left_in_place_is_delivered_once_its_file_is_written(tmp_path: Path) -> None:
    """A writer without delete permission (GCS objectCreator) leaves its notices: the file tells."""
    now = datetime.now(UTC)
    notice = {"writer": "web-1-7", "host": "web-1", "pid": 7, "sequence": 3, "since": now.isoformat()}
    (tmp_path / "_pending").mkdir()
    name = f"{now:%Y%m%dT%H%M%S%fZ}-web-1-7-000003.json"
    (tmp_path / "_pending" / name).write_text(json.dumps({**notice, "due": now.isoformat()}))
    [held] = pending_writes(str(tmp_path))
    assert (held.writer, held.sequence, held.gone()) == ("web-1-7", 3, False)  # another host's process
    assert pending_writes(str(tmp_path), newer_than=now + timedelta(seconds=1)) == []
    day = tmp_path / f"{now:%Y}" / f"{now:%m}" / f"{now:%d}"
    day.mkdir(parents=True)
    (day / f"predictions-{now:%Y%m%dT%H%M%S%fZ}-web-1-7-000002.jsonl").write_text("")
    assert len(pending_writes(str(tmp_path))) == 1, "an earlier file does not deliver it"
    (day / f"predictions-{now:%Y%m%dT%H%M%S%fZ}-web-1-7-000003.jsonl").write_text("")
    assert pending_writes(str(tmp_path)) == []


def test_sampling_keeps_about_the_rate(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), sample_rate=0.2, seed=7).start()
    for i in range(100):
        log.submit(predicted(garments(10, seed=i), seed=i))
    log.close()
    kept = len(list(read_records(str(tmp_path))))
    # 1000 instances at 20%: 200 expected, the binomial's sd is about 13.
    assert 150 <= kept <= 250
    nothing = PredictionLog(str(tmp_path / "none"), sample_rate=0.0).start()
    nothing.submit(predicted(garments(10)))
    nothing.close()
    assert not (tmp_path / "none").exists()


def test_records_built_together_match_records_built_one_request_at_a_time() -> None:
    """The writer builds the records of every queued request at once: same records, fewer calls."""
    items = [predicted(garments(n, seed=n), seed=n, request_id=f"req-{n}") for n in (1, 3, 2, 4)]
    # A hot reload between the second and third request: each version is embedded on its own.
    items = [
        AnsweredRequest(**{**item.__dict__, "time": 1_800_000_000.0, "version": "abc" if k < 2 else "new"})
        for k, item in enumerate(items)
    ]
    rows: list[list[int] | None] = [[0], None, [], [1, 3]]
    calls: list[tuple[str, int]] = []

    def embed(request: AnsweredRequest) -> np.ndarray:
        calls.append((request.version, len(request.images)))
        return fake_embed(request.images)

    together = build_batch_records(items, embed, embed_rows=rows)
    assert calls == [("abc", 4), ("new", 2)]
    one_by_one = [
        record
        for item, picked in zip(items, rows, strict=True)
        for record in build_records(item, embed, embed_rows=picked)
    ]
    assert together == one_by_one
    assert [r["request_id"] for r in together] == ["req-1"] + ["req-3"] * 3 + ["req-2"] * 2 + ["req-4"] * 4
    embedded = [k for k, record in enumerate(together) if "embedding" in record]
    assert embedded == [0, 1, 2, 3, 7, 9]
    first = together[0]
    assert first["embedding"] == [round(float(v), 4) for v in fake_embed(items[0].images)[0]]
    assert first["input"]["mean"] == round(float(items[0].images[0].mean() / 255), 4)


def test_a_stalled_sink_never_blocks_a_request(tmp_path: Path) -> None:
    release = threading.Event()

    def stalled(uri: str, text: str) -> None:
        release.wait()  # a store that hangs: a dead network mount, a GCS call without a timeout

    registry = CollectorRegistry()
    log = PredictionLog(
        str(tmp_path), queue_size=5, file_records=1, registry=registry, writer=stalled
    ).start()
    images = garments(1)
    slowest = 0.0
    for i in range(200):
        started = time.perf_counter()
        log.submit(predicted(images, seed=i))
        slowest = max(slowest, time.perf_counter() - started)
    # The writer is blocked for good, so a submit that waited for it would never return: any bound
    # proves it does not; a loose one keeps a loaded machine's scheduling hiccups out of the verdict.
    assert slowest < 1.0
    dropped = registry.get_sample_value("edge_prediction_log_dropped_total", {"reason": "queue_full"})
    # Five wait in the queue, and the writer is stuck with what it took in its turn: nothing if it
    # started after the last submit, else one request and at most the five queued behind it. The rest
    # were dropped and counted.
    assert 200 - 5 - 6 <= dropped <= 200 - 5
    assert not log.close(timeout=0.3)
    release.set()


def test_a_failing_sink_drops_and_counts(tmp_path: Path) -> None:
    def broken(uri: str, text: str) -> None:
        raise OSError("bucket not found")

    registry = CollectorRegistry()
    log = PredictionLog(str(tmp_path), file_records=2, registry=registry, writer=broken).start()
    for i in range(3):
        log.submit(predicted(garments(2), seed=i))
    assert log.close()
    assert registry.get_sample_value("edge_prediction_log_dropped_total", {"reason": "write_error"}) == 6


KILL_SCRIPT = """
import sys, numpy as np
from edge.monitoring.log import PredictionLog, AnsweredRequest
log = PredictionLog(sys.argv[1], file_records=50, log_inputs=True).start()
images = np.random.default_rng(0).uniform(0, 255, size=(5, 28, 28))
print("ready", flush=True)
i = 0
while True:
    i += 1
    log.submit(AnsweredRequest(str(i), "m", "v", 1.0, images, [1] * 5, ["Trouser"] * 5, [0.9] * 5))
"""


def test_files_are_whole_after_kill_9(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    for attempt in range(3):
        folder = tmp_path / f"log-{attempt}"
        process = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(folder)], stdout=subprocess.PIPE, env=env, text=True
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        # Kill while files are being written: after several have landed, at a varying moment.
        while len(list(folder.rglob("predictions-*.jsonl"))) < 3 + attempt and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        files = list_log_files(str(folder))
        assert len(files) >= 3 + attempt
        for name in files:
            lines = Path(name).read_text().splitlines()
            assert len(lines) == 50, f"{name} is not whole"
            assert all(len(json.loads(line)["pixels"]) == 784 for line in lines)


def test_read_records_since(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), file_records=1).start()
    old = predicted(garments(1), request_id="old")
    log.submit(AnsweredRequest(**{**old.__dict__, "time": time.time() - 7200}))
    log.submit(predicted(garments(1), request_id="new"))
    log.close()
    since = datetime.now(UTC) - timedelta(hours=1)
    assert [r["request_id"] for r in read_records(str(tmp_path), since)] == ["new"]
    assert len(list(read_records(str(tmp_path)))) == 2
    with pytest.raises(FileNotFoundError, match="no prediction log"):
        list(read_records(str(tmp_path / "missing")))


def test_profile_round_trip(tmp_path: Path, profile: ReferenceProfile) -> None:
    (tmp_path / PROFILE_FILE).write_text(profile.to_json())
    loaded = load_profile(str(tmp_path))
    assert loaded.class_names == list(CLASS_NAMES)
    assert sum(loaded.class_mix) == pytest.approx(1.0, abs=1e-4)
    assert len(loaded.embedding_sample[0]) == len(loaded.embedding_components) == 16
    assert (tmp_path / "profile.json").stat().st_size < 300_000
    with pytest.raises(FileNotFoundError, match="retrain"):
        load_profile(str(tmp_path / "older-model"))


def test_psi_and_mmd() -> None:
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) > 0.2
    rng = np.random.default_rng(0)
    same, p_same = drift.mmd_permutation_test(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)), 200, rng)
    moved, p_moved = drift.mmd_permutation_test(
        rng.normal(size=(300, 4)), rng.normal(0.5, size=(300, 4)), 200, rng
    )
    assert p_same > 0.01
    assert p_moved < 0.01 and moved > same


def records_of(
    images: np.ndarray, profile: ReferenceProfile, start: float, seed: int
) -> list[dict[str, object]]:
    # Predictions drawn like the profile's, so only the inputs and embeddings can differ.
    rng = np.random.default_rng(seed)
    base = predicted(images, seed=seed)
    item = AnsweredRequest(
        **{
            **base.__dict__,
            "confidences": rng.choice(profile.confidence, size=len(images)).tolist(),
            "class_ids": rng.choice(
                10, size=len(images), p=np.asarray(profile.class_mix) / sum(profile.class_mix)
            ).tolist(),
            "time": start,
        }
    )
    return build_records(item, lambda p: profile.project(fake_embed(p.images)))


def test_drift_clean_versus_darkened(profile: ReferenceProfile) -> None:
    settings = load_settings({})
    clean = records_of(garments(600, seed=5), profile, time.time(), seed=5)
    result = drift.compare(profile, clean, settings)
    assert not result.alert, result.to_dict()
    assert {s.signal for s in result.scores} == set(drift.SIGNALS)
    dark = records_of(garments(600, seed=6) * 0.4, profile, time.time(), seed=6)
    result = drift.compare(profile, dark, settings)
    assert result.alert
    assert {"input.mean", "input.intensity", "embedding"} <= set(result.alerting)
    few = drift.compare(profile, dark[:50], settings)
    assert not few.enough and not few.alert


def test_report_html_and_summary(tmp_path: Path, profile: ReferenceProfile) -> None:
    settings = load_settings({})
    now = time.time()
    records = records_of(garments(400, seed=8), profile, now - 600, 8) + records_of(
        255 - garments(400, seed=9), profile, now, 9
    )
    result = drift.compare(profile, records, settings)
    windows = drift.over_time(profile, records, settings)
    summary = write_report(str(tmp_path), result, windows, profile, records, settings, {"source": "test"})
    assert summary["status"] == "alert"
    assert [w["alert"] for w in summary["over_time"]] == [False, True]
    assert json.loads((tmp_path / "summary.json").read_text())["alerting"] == summary["alerting"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 3
    assert "ALERT" in page and "input.mean" in page
    # Self-contained: no reference leaves the page (SVG's own "#id" links stay inside it).
    assert re.search(r'(src|href)="(?!#)', page) is None


def model_folder(tmp_path: Path, profile: ReferenceProfile, version: str = "abc") -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / PROFILE_FILE).write_text(profile.to_json())
    (folder / "metadata.json").write_text(
        json.dumps({"name": "fashion-mnist-cnn", "version": version, "class_names": list(CLASS_NAMES)})
    )
    return folder


def write_log(folder: Path, records: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"predictions-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-h-1-000001.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )


def test_cli_report_exits_3_on_drift_and_0_when_clean(tmp_path: Path, profile: ReferenceProfile) -> None:
    from typer.testing import CliRunner

    from edge.cli import app

    model = model_folder(tmp_path, profile)
    runner = CliRunner()
    write_log(tmp_path / "clean", records_of(garments(300, seed=11), profile, time.time(), seed=11))
    args = ["monitor", "report", "--model-dir", str(model), "--out-dir", str(tmp_path / "out")]
    clean = runner.invoke(app, [*args, "--source", str(tmp_path / "clean")])
    assert clean.exit_code == 0, clean.output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "ok"
    write_log(tmp_path / "dark", records_of(garments(300, seed=12) * 0.3, profile, time.time(), seed=12))
    dark = runner.invoke(app, [*args, "--source", str(tmp_path / "dark")])
    assert dark.exit_code == 3
    assert "drift alert" in dark.output
    assert (tmp_path / "out" / "report.html").is_file()
    # Predictions of another model version are not judged against this model's profile.
    other = runner.invoke(app, [*args, "--source", str(tmp_path / "dark"), "--since", "2h"])
    assert other.exit_code == 3
    model_folder(tmp_path, profile, version="other")
    skipped = runner.invoke(app, [*args, "--source", str(tmp_path / "dark")])
    assert skipped.exit_code == 0 and "other model versions" in skipped.output
    missing = runner.invoke(app, [*args, "--source", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no prediction log" in missing.output
    bad = runner.invoke(app, [*args, "--source", str(tmp_path / "dark"), "--since", "yesterday"])
    assert bad.exit_code == 1 and "neither a duration" in bad.output


def test_parse_since() -> None:
    from edge.cli.monitor import parse_since

    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-01-01T06:00", now) == datetime(2026, 1, 1, 6, tzinfo=UTC)
    assert parse_since(None) is None


def test_serving_monitor_publishes_gauges_and_summary(tmp_path: Path, profile: ReferenceProfile) -> None:
    from edge.monitoring.live import ServingMonitor

    registry = CollectorRegistry()
    settings = load_settings(
        {"EDGE_MONITOR_LOG": str(tmp_path / "log"), "EDGE_MONITOR_GAUGE_SECONDS": "1000"}
    )
    monitor = ServingMonitor(settings, registry, lambda version: (profile, fake_embed)).start()
    for i in range(30):
        monitor.observe(predicted(255 - garments(10, seed=i), seed=i))
    monitor.close()
    monitor.refresh()
    summary = monitor.summary()
    assert summary["status"] == "alert" and summary["count"] == 300
    assert registry.get_sample_value("edge_drift_alert", {"signal": "input.mean"}) == 1
    assert registry.get_sample_value("edge_drift_window_predictions") == 300
    shares = [registry.get_sample_value("edge_recent_class_share", {"class_name": n}) for n in CLASS_NAMES]
    assert sum(s or 0 for s in shares) == pytest.approx(1.0, abs=0.01)
    assert len(list(read_records(str(tmp_path / "log")))) == 300


def test_drift_over_time_has_a_point_per_window_even_when_all_fall_in_one(profile: ReferenceProfile) -> None:
    settings = load_settings({"EDGE_MONITOR_MIN_RECORDS": "100"})
    # A simulation: 650 predictions within the same second. Runs of consecutive predictions instead.
    burst = records_of(garments(650, seed=21), profile, 1_700_000_000.2, seed=21)
    windows = drift.over_time(profile, burst, settings)
    assert [w.count for w in windows] == [100] * 5 + [150]
    assert all(w.enough and w.scores for w in windows)
    assert windows[0].extra["window"] == "100 consecutive predictions (all came within 1 minute)"
    # Traffic over 1 h 45 min: clock-aligned buckets, the smallest width giving at most 24 points.
    spread = [
        record
        for hour in range(8)
        for record in records_of(garments(120, seed=hour), profile, 1_700_000_000 + hour * 900, seed=hour)
    ]
    windows = drift.over_time(profile, spread, settings)
    assert len(windows) == 8 and all(w.count == 120 for w in windows)
    assert windows[0].extra["window"] == "5 minutes of predictions"
    # Two hours of light traffic: no 15-minute bucket has enough to judge, so runs again.
    light = [r for i, r in enumerate(spread) if i % 4 == 0]
    windows = drift.over_time(profile, light, settings)
    assert [w.count for w in windows] == [100, 140]
    assert windows[0].extra["window"] == "100 consecutive predictions (too few windows of 5 minutes to judge)"
    # Too few for any window: one point, not judged, rather than an empty chart.
    [few] = drift.over_time(profile, burst[:40], settings)
    assert few.count == 40 and not few.enough


def test_report_judges_each_simulated_phase_and_shows_both_limits(
    tmp_path: Path, profile: ReferenceProfile
) -> None:
    from typer.testing import CliRunner

    from edge.cli import app
    from edge.monitoring.log import Phase, write_phases

    model = model_folder(tmp_path, profile)
    log_dir = tmp_path / "log"
    start = datetime.now(UTC) - timedelta(minutes=5)
    clean = records_of(garments(300, seed=31), profile, start.timestamp() + 1, seed=31)
    dark = records_of(garments(300, seed=32) * 0.3, profile, start.timestamp() + 11, seed=32)
    for record in clean:
        del record["embedding"]
    write_log(log_dir, clean + dark)
    write_phases(
        str(log_dir),
        "run1",
        [
            Phase("clean", start, start + timedelta(seconds=10), 300, "run1"),
            Phase("darkened", start + timedelta(seconds=10), start + timedelta(seconds=20), 300, "run1"),
        ],
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["monitor", "report", "--source", str(log_dir), "--model-dir", str(model), "--out-dir", str(out)]
    )
    assert result.exit_code == 3, result.output
    assert "Drift by simulated phase" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["phase"], p["count"], p["status"]) for p in summary["phases"]] == [
        ("clean", 300, "ok"),
        ("darkened", 300, "alert"),
    ]
    assert summary["phases"][1]["scores"]["input.mean"]["alert"] is True
    # The clean phase's records carry no embedding: MMD could not run there, and no score is made up.
    assert "embedding" not in summary["phases"][0]["scores"]
    assert "embedding" in summary["phases"][1]["scores"]
    ks = summary["scores"]["input.mean"]
    assert (ks["statistic_limit"], ks["p_value_limit"]) == (0.1, 0.01)
    chi2 = summary["scores"]["class_mix"]
    assert (chi2["statistic_limit"], chi2["p_value_limit"]) == (None, 0.001)
    page = (out / "report.html").read_text()
    assert "<th>alert above</th><th>p-value</th>\n<th>alert below</th>" in page
    assert "<td>input.mean</td><td>ks</td>" in page
    phases = page.split('<table id="phases">', 1)[1].split("</table>", 1)[0]
    assert "<td>clean</td>" in phases and "<td>darkened</td>" in phases and "<strong>" in phases
    assert 'id="window">Judged: <strong>the last 2,000 predictions of model version abc</strong>' in page
