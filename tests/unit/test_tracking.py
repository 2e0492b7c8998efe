"""Tracking without training: known runs recorded by the real Sacred observers, read back by the CLI.

The bodies below stand in for training (they log known metrics); everything around them, Sacred,
its file journal, the MongoDB observer and `edge experiments`, is the real code. MongoDB is
mongomock (no server can be installed here): `mongomock.patch` serves mongo.test:27017 to
`pymongo.MongoClient`, and `mongomock.gridfs.enable_gridfs_integration()` makes GridFS work on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mongomock
import mongomock.collection
import mongomock.gridfs
import pymongo
import pymongo.errors
import pytest

from edge.lineage import strip_credentials
from edge.tracking import observers
from edge.tracking.experiment import Recorder, tracked_run
from edge.tracking.report import sparkline
from tests.tracking_env import DATA, MOCK_URL, PARAMS, edge, known_body, record

pytestmark = pytest.mark.usefixtures("tracking_environment")


@pytest.fixture
def known_runs(tmp_path: Path) -> tuple[Path, list[str]]:
    runs = tmp_path / "runs"
    first = record(runs, [0.5, 0.7, 0.8])
    second = record(runs, [0.6, 0.8, 0.9], lr=0.01)
    return runs, [first.uuid, second.uuid]


def test_urls_are_masked_and_credentials_stripped() -> None:
    assert observers.mask_url("mongodb://edge:secret@db:27017/edge") == "mongodb://edge:***@db:27017/edge"
    assert observers.mask_url("mongodb://db:27017") == "mongodb://db:27017"
    assert observers.database_name("mongodb://u:p@h:1/team?authSource=admin") == "team"
    assert observers.database_name("mongodb://h:1") == "edge"
    assert strip_credentials("https://bot:tok@github.com/o/r.git") == "https://github.com/o/r.git"
    assert strip_credentials("https://tok@github.com/o/r.git") == "https://github.com/o/r.git"
    assert strip_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_a_tracking_url_that_is_not_mongodb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TRACKING_URL", "http://u:secret@host/edge")
    with pytest.raises(ValueError, match="mongodb://") as caught:
        observers.tracking_url()
    assert "secret" not in str(caught.value)


def test_a_relative_journal_is_in_the_workspace_dvc_runs_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DVC sets DVC_ROOT to the workspace, also for an experiment run in a temporary copy of it: a
    relative journal is there. An absolute EDGE_RUNS_DIR stays where it points."""
    monkeypatch.delenv("EDGE_RUNS_DIR", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert observers.runs_dir() == Path("runs")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    assert observers.runs_dir() == tmp_path / "workspace" / "runs"
    monkeypatch.setenv("EDGE_RUNS_DIR", "journal")
    assert observers.runs_dir() == tmp_path / "workspace" / "journal"
    monkeypatch.setenv("EDGE_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert observers.runs_dir() == tmp_path / "elsewhere"


def test_list_shows_known_runs(known_runs: tuple[Path, list[str]]) -> None:
    runs, (first, second) = known_runs
    rows = json.loads(edge("experiments", "list", "--json", "--runs-dir", str(runs)).stdout)
    assert [r["id"] for r in rows] == [second[:8], first[:8]]  # newest first
    assert rows[0]["status"] == "COMPLETED" and rows[0]["test_accuracy"] == 0.9
    assert rows[0]["commit"] == "a" * 40 and rows[0]["dirty"] is False
    assert rows[0]["data_version"] == "01234567"
    assert rows[0]["params"]["train.learning_rate"] == 0.01
    table = edge("experiments", "list", "--runs-dir", str(runs)).stdout
    for expected in (first[:8], second[:8], "COMPLETED", "aaaaaaa ", "01234567", "lr=0.01", "0.9000"):
        assert expected in table


@pytest.mark.parametrize("width", [80, 120, 250])
def test_list_fits_the_terminal_width(
    known_runs: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    from edge.cli import common

    runs, (first, second) = known_runs
    monkeypatch.setattr(common.out, "width", width)
    table = edge("experiments", "list", "--runs-dir", str(runs)).stdout
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= width, table
    # The most useful columns always fit; the rest go when there is no room, and the caption says so.
    for expected in (first[:8], second[:8], "COMPLETED", "0.9000"):
        assert expected in table
    if width == 80:
        assert "hidden at 80 columns:" in table and "host" in table.split("hidden at 80 columns:")[1]
    if width == 250:
        assert "hidden" not in table and "01234567" in table


def test_show_prints_everything_with_curves(known_runs: tuple[Path, list[str]], tmp_path: Path) -> None:
    runs, (first, _) = known_runs
    png = tmp_path / "curves.png"
    shown = edge("experiments", "show", first[:6], "--runs-dir", str(runs), "--plot", str(png)).stdout
    for expected in (first, "COMPLETED", "a" * 40, "https://example.com/edge.git", DATA[0]["md5"]):
        assert expected in shown
    assert "train.learning_rate" in shown and "test_accuracy" in shown
    assert sparkline([0.5, 0.7, 0.8]) == "▁▆█" and "▁▆█" in shown  # accuracy per epoch
    assert "final_metrics.json" in shown
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert (
        edge("experiments", "show", "1", "--runs-dir", str(runs)).stdout
        == edge("experiments", "show", first, "--runs-dir", str(runs)).stdout
    )
    missing = edge("experiments", "show", "ffffffff", "--runs-dir", str(runs), code=1)
    assert "no run 'ffffffff'" in missing.output


def test_compare_highlights_differences(known_runs: tuple[Path, list[str]]) -> None:
    runs, (first, second) = known_runs
    compared = json.loads(
        edge("experiments", "compare", first[:8], second[:8], "--json", "--runs-dir", str(runs)).stdout
    )
    rows = {row["name"]: row for row in compared["rows"]}
    assert rows["train.learning_rate"] == {
        "name": "train.learning_rate",
        "values": ["0.003", "0.01"],
        "differs": True,
    }
    assert rows["test_accuracy"]["differs"] and not rows["train.epochs"]["differs"]
    table = edge("experiments", "compare", first[:8], second[:8], "--runs-dir", str(runs)).stdout
    marked = [line for line in table.splitlines() if "≠" in line]
    assert any("train.learning_rate" in line for line in marked)
    assert not any("train.epochs" in line for line in marked)


def test_a_failing_or_interrupted_body_is_recorded(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    def broken(recorder: Recorder) -> None:
        raise RuntimeError("the data went missing")

    def interrupted(recorder: Recorder) -> None:
        raise KeyboardInterrupt

    with pytest.raises(RuntimeError, match="went missing"):
        tracked_run(broken, config=PARAMS, info={}, runs_dir=runs)
    with pytest.raises(KeyboardInterrupt):
        tracked_run(interrupted, config=PARAMS, info={}, runs_dir=runs)
    failed = json.loads((runs / "1" / "run.json").read_text())
    assert failed["status"] == "FAILED"
    assert "RuntimeError: the data went missing" in "".join(failed["fail_trace"])
    assert json.loads((runs / "2" / "run.json").read_text())["status"] == "INTERRUPTED"
    shown = edge("experiments", "show", "2", "--runs-dir", str(runs)).stdout
    assert "INTERRUPTED" in shown


# A fresh interpreter: pytest gives the root logger handlers of its own, and the fault needs none.
FAILED_RUN_THAT_LOGS = """
import logging, sys
from pathlib import Path
from edge.tracking.experiment import tracked_run

def body(recorder):
    logging.warning("first message inside the run")  # like absl's first message: basicConfig()
    recorder.fail_after_recording("2 checks failed")
    return "model"

tracked = tracked_run(body, config={}, info={}, runs_dir=Path(sys.argv[1]), url="")
logging.getLogger("library").warning("after the run")
print(tracked.value)
"""


def test_a_failed_run_logs_to_stderr_after_sacred_has_closed_its_capture(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FAILED_RUN_THAT_LOGS, str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "model"
    assert "Logging error" not in done.stderr and "closed file" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert "WARNING:root:first message inside the run" in lines
    # The caller says why the run failed; Sacred's "ERROR: Failed after" line would read as a crash.
    assert not any("Failed after" in line for line in lines), lines
    assert "WARNING:library:after the run" in lines
    assert json.loads((tmp_path / "runs" / "1" / "run.json").read_text())["status"] == "FAILED"


def test_a_run_keeps_a_copy_of_the_sources_it_is_given(tmp_path: Path) -> None:
    from edge import calibration, tracked_training

    runs = tmp_path / "runs"
    tracked = tracked_run(
        known_body([0.5]), config=PARAMS, info={}, runs_dir=runs, sources=(calibration, tracked_training)
    )
    run = json.loads((tracked.journal_dir / "run.json").read_text())
    sources = {name for name, _digest in run["experiment"]["sources"]}
    # Named relative to the package: the tracking module that made the run, and the two given.
    assert {"tracking/experiment.py", "calibration.py", "tracked_training.py"} <= sources
    copies = [p.read_text() for p in (runs / "_sources").iterdir()]
    assert any("def tracked_train_stage(" in copy for copy in copies)


def test_mongo_failing_mid_run_completes_in_files_then_sync_repairs_it(
    tmp_path: Path, mock_mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    warnings: list[str] = []

    def down(*args: Any, **kwargs: Any) -> None:
        raise pymongo.errors.ServerSelectionTimeoutError("mongo.test:27017: connection refused")

    with monkeypatch.context() as patch:

        def body(recorder: Recorder) -> None:
            known_body([0.5, 0.7])(recorder)
            # The server goes away: from now on every update fails as pymongo's do.
            patch.setattr(mongomock.collection.Collection, "update_one", down)

        tracked = tracked_run(body, config=PARAMS, info={}, runs_dir=runs, url=MOCK_URL, warn=warnings.append)
    assert len(warnings) == 1 and "failed during the run" in warnings[0] and "pa55word" not in warnings[0]
    assert json.loads((tracked.journal_dir / "run.json").read_text())["status"] == "COMPLETED"
    assert mock_mongo.runs.find_one({"meta.run_uuid": tracked.uuid})["status"] == "RUNNING"

    monkeypatch.setenv("EDGE_TRACKING_URL", MOCK_URL)
    assert "1 completed" in edge("experiments", "sync", "--runs-dir", str(runs)).output
    (doc,) = list(mock_mongo.runs.find())
    assert doc["_id"] == tracked.mongo_id and doc["status"] == "COMPLETED"
    assert {m["name"]: m["values"] for m in mock_mongo.metrics.find()} == {
        "accuracy": [0.5, 0.7],
        "loss": [0.5, pytest.approx(0.3)],
    }
    assert mock_mongo["fs.files"].count_documents({"filename": {"$regex": "^artifact://"}}) == 1
    assert (
        "0 run(s) copied, 0 completed, 1 already there"
        in edge("experiments", "sync", "--runs-dir", str(runs)).output
    )
    assert mock_mongo.metrics.count_documents({}) == 2
