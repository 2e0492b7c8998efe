"""Monitoring end to end: edge serve logs what edge monitor simulate sends; report and gauges see drift."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from edge.data import CLASS_NAMES, read_idx
from edge.monitoring.log import pending_writes
from tests.live_servers import EDGE, model_server
from tests.serving_helpers import wait_until
from tests.verdicts import judge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def monitored_model(tmp_path_factory: pytest.TempPathFactory, real_fashion_source: Path) -> Path:
    """A small untrained model with a reference profile of real validation-like images."""
    from edge.model import ModelParams, build_model, save_model
    from edge.monitoring.profile import PROFILE_FILE, compute_profile

    folder = tmp_path_factory.mktemp("monitored") / "model"
    model = build_model(ModelParams(filters=(8,), dense_units=16, tta_flip=False))
    metadata = {"name": "fashion-mnist-cnn", "version": "monitored", "class_names": list(CLASS_NAMES)}
    images = read_idx(real_fashion_source / "train-images-idx3-ubyte.gz")[:1000]
    profile = compute_profile(model, images, list(CLASS_NAMES))
    save_model(model, str(folder), metadata, extra_files={PROFILE_FILE: profile.to_json().encode()})
    judge(folder)  # untrained, declared passed: these tests judge monitoring, not the model
    return folder


def edge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ)


def test_simulated_drift_reaches_the_log_the_gauges_and_the_report(
    monitored_model: Path, real_fashion_source: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "predictions"
    env = {
        "EDGE_MONITOR_LOG": str(log_dir),
        "EDGE_MONITOR_FILE_SECONDS": "1",
        "EDGE_MONITOR_GAUGE_SECONDS": "0.5",
        "EDGE_MONITOR_MIN_RECORDS": "100",
        "EDGE_MONITOR_WINDOW": "150",
    }
    with model_server(monitored_model, tmp_path / "server.log", env) as server:
        assert requests.get(server.url + "/monitoring", timeout=5).json()["status"] == "no predictions yet"
        common = ["--url", server.url, "--data-dir", str(real_fashion_source), "--per-phase", "200"]
        clean = edge("monitor", "simulate", *common, "--phases", "clean", cwd=tmp_path)
        assert clean.returncode == 0, clean.stderr
        summary = wait_for_summary(server.url, lambda s: s.get("count", 0) >= 150)
        assert summary["status"] == "ok", summary
        inverted = edge("monitor", "simulate", *common, "--phases", "inverted", "--seed", "1", cwd=tmp_path)
        assert inverted.returncode == 0, inverted.stderr
        assert "inverted" in inverted.stdout
        summary = wait_for_summary(server.url, lambda s: s.get("status") == "alert")
        assert "input.mean" in summary["alerting"]
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        assert 'edge_drift_alert{signal="input.mean"} 1.0' in metrics
        assert "edge_recent_class_share{" in metrics
    # Stopped with SIGTERM: what was pending is written too. Every record has its input summary;
    # only a sample (EDGE_MONITOR_EMBED_RATE, 0.15) paid for an embedding.
    records = [
        json.loads(line) for f in sorted(log_dir.rglob("*.jsonl")) for line in f.read_text().splitlines()
    ]
    assert len(records) == 400 and all("histogram" in r["input"] for r in records)
    embedded = [r for r in records if "embedding" in r]
    assert 20 <= len(embedded) <= 110 and len(embedded[0]["embedding"]) == 16
    report = edge(
        "monitor", "report", "--source", str(log_dir), "--model-dir", str(monitored_model),
        "--out-dir", str(tmp_path / "report"), cwd=tmp_path,
    )  # fmt: skip
    assert report.returncode == 3, report.stdout + report.stderr
    written = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert written["count"] == 400
    assert written["status"] == "alert"
    assert [w["alert"] for w in written["over_time"]][-1] is True


def wait_for_summary(url: str, ready: object, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    summary: dict[str, object] = {}
    while time.monotonic() < deadline:
        summary = requests.get(url + "/monitoring", timeout=5).json()
        if callable(ready) and ready(summary):
            return summary
        time.sleep(0.5)
    raise AssertionError(f"the server's monitoring summary never got there: {summary}")


def _report(log_dir: Path, model: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGE, "monitor", "report", "--source", str(log_dir), "--model-dir", str(model),
         "--out-dir", str(out), *args],
        cwd=out.parent, capture_output=True, text=True, timeout=300,
        env={**os.environ, "EDGE_MONITOR_MIN_RECORDS": "100"},
    )  # fmt: skip


def test_a_report_right_after_simulate_sees_every_prediction(
    monitored_model: Path, real_fashion_source: Path, tmp_path: Path
) -> None:
    """The default log settings (a file every few seconds): simulate flushes the log when done."""
    log_dir = tmp_path / "predictions"
    with model_server(monitored_model, tmp_path / "server.log", {"EDGE_MONITOR_LOG": str(log_dir)}) as server:
        common = ["--url", server.url, "--data-dir", str(real_fashion_source), "--per-phase", "150"]
        simulated = edge("monitor", "simulate", *common, "--phases", "clean,inverted", cwd=tmp_path)
        assert simulated.returncode == 0, simulated.stderr
        assert "the server wrote every prediction to its log" in simulated.stderr
        report = _report(log_dir, monitored_model, tmp_path / "report", "--since", "1h")
        assert report.returncode == 3, report.stdout + report.stderr
        assert "newest prediction in the log: " in report.stderr
        written = json.loads((tmp_path / "report" / "summary.json").read_text())
        assert written["count"] == 300 and written["status"] == "alert"
        # simulate recorded its phases beside the log: the report judges each on its own.
        assert "phases recorded in " in simulated.stderr
        assert [(p["phase"], p["count"], p["status"]) for p in written["phases"]] == [
            ("clean", 150, "ok"),
            ("inverted", 150, "alert"),
        ]
        assert "Drift by simulated phase" in report.stdout
        assert len(written["over_time"]) >= 2 and all(w["scores"] for w in written["over_time"])


def test_a_report_waits_for_predictions_the_server_still_holds(
    monitored_model: Path, real_fashion_source: Path, tmp_path: Path
) -> None:
    """Predictions sent as any client does (no flush): the report waits for the writer's notice."""
    log_dir = tmp_path / "predictions"
    images = read_idx(real_fashion_source / "t10k-images-idx3-ubyte.gz")[:160]
    inverted = (255 - images).astype(int).tolist()
    # The writer holds the records this long: the requests and the report's start must fit in it,
    # which took over 5 s on two cores busy with other tests.
    env = {"EDGE_MONITOR_LOG": str(log_dir), "EDGE_MONITOR_FILE_SECONDS": "12"}
    with model_server(monitored_model, tmp_path / "server.log", env) as server:
        for start in range(0, len(inverted), 16):
            answer = requests.post(server.url + "/predict", json={"instances": inverted[start : start + 16]})
            assert answer.status_code == 200, answer.text
        report = _report(log_dir, monitored_model, tmp_path / "report")
        assert "waiting for predictions in flight: 1 log writer(s) hold records" in report.stderr, (
            report.stderr
        )
        assert report.returncode == 3, report.stdout + report.stderr
        assert json.loads((tmp_path / "report" / "summary.json").read_text())["count"] == 160


def test_a_report_refuses_to_call_a_log_with_lost_records_fine(
    monitored_model: Path, real_fashion_source: Path, tmp_path: Path
) -> None:
    """The server is killed holding records: "not enough data" would be a false all-clear."""
    log_dir = tmp_path / "predictions"
    images = read_idx(real_fashion_source / "t10k-images-idx3-ubyte.gz")[:32].astype(int).tolist()
    env = {"EDGE_MONITOR_LOG": str(log_dir), "EDGE_MONITOR_FILE_SECONDS": "30"}
    with model_server(monitored_model, tmp_path / "server.log", env) as server:
        assert requests.post(server.url + "/predict", json={"instances": images}).status_code == 200
        # The notice as a report reads it: a glob would also match the file it is written through,
        # and a kill before that becomes the notice leaves nothing a report could find.
        assert wait_until(lambda: pending_writes(str(log_dir)))
        server.process.kill()
        server.process.wait(30)
    report = _report(log_dir, monitored_model, tmp_path / "report")
    said = " ".join(report.stderr.split())
    assert report.returncode == 1, said
    assert "error: not enough data (0 predictions, 100 needed), and records held by " in said
    assert "never reached the log: that server was stopped, or cannot write there" in said
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["status"] == "incomplete log"


def test_a_restarted_server_shows_the_same_window_as_before_and_as_the_report(
    monitored_model: Path, real_fashion_source: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "predictions"
    env = {"EDGE_MONITOR_LOG": str(log_dir), "EDGE_MONITOR_WINDOW": "250", "EDGE_MONITOR_MIN_RECORDS": "100"}
    common = ["--data-dir", str(real_fashion_source), "--per-phase", "150", "--phases", "clean,darkened"]
    with model_server(monitored_model, tmp_path / "first.log", env) as server:
        simulated = edge("monitor", "simulate", "--url", server.url, *common, cwd=tmp_path)
        assert simulated.returncode == 0, simulated.stderr
        before = wait_for_summary(server.url, lambda s: s.get("count") == 250)
    assert before["window"] == {
        "label": "the last 250 predictions of model version monitored",
        "size": 250,
        "count": 250,
        "from_log": 0,
        "version": "monitored",
    }
    with model_server(monitored_model, tmp_path / "second.log", env) as server:
        # Nothing sent since the restart: the window comes from the log.
        after = wait_for_summary(server.url, lambda s: s.get("count") == 250, timeout=60)
    assert after["window"] == {**before["window"], "from_log": 250}
    assert (after["start"], after["end"], after["status"]) == (
        before["start"],
        before["end"],
        before["status"],
    )
    assert after["recent_class_mix"] == before["recent_class_mix"]
    for signal in ("input.mean", "input.std", "input.ink", "input.intensity", "confidence", "class_mix"):
        assert after["scores"][signal]["statistic"] == before["scores"][signal]["statistic"], signal
    # The report, by default, judges that same window under the same name.
    report = subprocess.run(
        [EDGE, "monitor", "report", "--source", str(log_dir), "--model-dir", str(monitored_model),
         "--out-dir", str(tmp_path / "report")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip
    assert report.returncode in (0, 3), report.stderr
    assert "judging the last 250 predictions of model version monitored: 250 from" in report.stderr
    written = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert written["window"]["label"] == before["window"]["label"]
    assert (written["count"], written["start"], written["end"]) == (250, before["start"], before["end"])
    assert written["status"] == before["status"]
    for signal in ("input.mean", "input.std", "input.ink", "confidence", "class_mix"):
        assert written["scores"][signal]["statistic"] == pytest.approx(before["scores"][signal]["statistic"])
