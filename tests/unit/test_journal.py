"""The run journal survives damage: whole files, damaged runs skipped by name, killed runs INTERRUPTED,
and a sync that is safe to run twice at once and to stop at any write.

MongoDB is mongomock (no server can be installed here), as in test_tracking.py; runs are recorded by
the real Sacred observers through `tracked_run`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock
import mongomock.collection
import mongomock.gridfs
import pytest

from edge.tracking import observers
from edge.tracking.records import FileRuns
from edge.tracking.sync import sync
from tests.tracking_env import MOCK_URL, edge, record

pytestmark = pytest.mark.usefixtures("tracking_environment")


@pytest.fixture
def three_runs(tmp_path: Path) -> tuple[Path, list[str]]:
    runs = tmp_path / "runs"
    return runs, [record(runs, [0.5, 0.6 + i / 10]).uuid for i in range(3)]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


# --- damage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated run.json", "truncated metrics.json", "run.json a list"])
def test_a_damaged_run_is_skipped_by_name(
    damage: str, three_runs: tuple[Path, list[str]], mock_mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, (first, second, third) = three_runs
    victim = runs / "2" / ("metrics.json" if "metrics" in damage else "run.json")
    text = victim.read_text()
    victim.write_text("[1, 2]" if "list" in damage else text[: len(text) // 2])

    listed = edge("experiments", "list", "--json", "--runs-dir", str(runs))
    assert [row["id"] for row in json.loads(listed.stdout)] == [third[:8], first[:8]]
    assert f"skipping a damaged run: {victim}" in listed.stderr
    assert first in edge("experiments", "show", first[:8], "--runs-dir", str(runs)).stdout
    edge("experiments", "compare", first[:8], third[:8], "--runs-dir", str(runs))
    # The damaged run itself: not found, and the warning says why.
    missing = edge("experiments", "show", second[:8], "--runs-dir", str(runs), code=1)
    assert str(victim) in missing.output and f"no run '{second[:8]}'" in missing.output

    monkeypatch.setenv("EDGE_TRACKING_URL", MOCK_URL)
    synced = edge("experiments", "sync", "--runs-dir", str(runs))
    assert "2 run(s) copied" in synced.output and "1 damaged skipped" in synced.output
    assert str(victim) in synced.output
    assert sorted(d["meta"]["run_uuid"] for d in mock_mongo.runs.find()) == sorted([first, third])


def test_journal_files_are_written_whole(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    tracked = record(runs, [0.5, 0.7])
    observer = observers.file_observer(runs)
    assert type(observer).__name__ == "AtomicFileStorageObserver"
    # Nothing but the journal's files and the artifact: no temporary file is left behind.
    assert sorted(p.name for p in tracked.journal_dir.iterdir()) == [
        "config.json",
        "cout.txt",
        "final_metrics.json",
        "info.json",
        "metrics.json",
        "run.json",
    ]
    source_copies = list((runs / "_sources").iterdir())
    assert source_copies and all(not p.name.startswith(".") for p in source_copies)


KILLED_RUN = """
import sys, time
from pathlib import Path
import sacred.run
# Beat every 5 ms instead of 10 s, so that the kill lands in the middle of journal writes.
original = sacred.run.Run.__init__
def fast(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.beat_interval = 0.005
sacred.run.Run.__init__ = fast
from edge.tracking.experiment import tracked_run

def body(recorder):
    step = 0
    while True:
        step += 1
        recorder.log_metrics(step, {"accuracy": step / 1e6, "loss": 1.0})
        recorder.info["padding"] = "x" * 200_000  # a large info.json: slow to write
        if step == 20:
            print("beating", flush=True)
        time.sleep(0.001)

tracked_run(body, config={"train": {"epochs": 1}, "seed": 1}, info={}, runs_dir=Path(sys.argv[1]))
"""


def test_runs_killed_at_any_moment_leave_whole_files_and_show_interrupted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    kills = 6
    for attempt in range(kills):
        process = subprocess.Popen(
            [sys.executable, str(script), str(runs)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert process.stdout is not None and process.stdout.readline() == b"beating\n"
        time.sleep(0.05 + 0.037 * attempt)  # a different moment of the heartbeat each time
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    for path in runs.rglob("*.json"):
        # A kill during a write leaves its hidden temporary sibling (.run.json.edge-tmp-<pid>-...),
        # never a half-written journal file: every file a reader opens parses.
        if not path.name.startswith("."):
            json.loads(path.read_text())
    listed = json.loads(edge("experiments", "list", "--json", "--runs-dir", str(runs)).stdout)
    assert len(listed) == kills
    assert {row["status"] for row in listed} == {"INTERRUPTED"}


# --- runs whose process is gone ----------------------------------------------------------------


def _running(runs: Path, number: int, *, host: str, pid: int, beat: datetime) -> str:
    tracked = record(runs, [0.5])
    folder = tracked.journal_dir
    run = json.loads((folder / "run.json").read_text())
    run.update(status="RUNNING", heartbeat=beat.replace(tzinfo=None).isoformat(), stop_time=None)
    run["host"].update(hostname=host, pid=pid)
    (folder / "run.json").write_text(json.dumps(run))
    assert folder.name == str(number)
    return tracked.uuid


def test_runs_whose_process_is_gone_are_interrupted_and_synced(
    tmp_path: Path, mock_mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    now = datetime.now(UTC)
    here = socket.gethostname()
    killed_here = _running(runs, 1, host=here, pid=_dead_pid(), beat=now)
    silent_elsewhere = _running(runs, 2, host="other-machine", pid=1, beat=now - timedelta(hours=1))
    live_here = _running(runs, 3, host=here, pid=os.getpid(), beat=now)
    live_elsewhere = _running(runs, 4, host="other-machine", pid=1, beat=now - timedelta(seconds=20))
    statuses = {r.uuid: r.status for r in FileRuns(runs).runs()}
    assert statuses == {
        killed_here: "INTERRUPTED",
        silent_elsewhere: "INTERRUPTED",
        live_here: "RUNNING",
        live_elsewhere: "RUNNING",
    }
    table = edge("experiments", "list", "--runs-dir", str(runs)).stdout
    assert table.count("INTERRUPTED") == 2 and table.count("RUNNING") == 2

    monkeypatch.setenv("EDGE_TRACKING_URL", MOCK_URL)
    assert "2 run(s) copied" in edge("experiments", "sync", "--runs-dir", str(runs)).output
    stored = {d["meta"]["run_uuid"]: d for d in mock_mongo.runs.find()}
    assert set(stored) == {killed_here, silent_elsewhere}
    assert {d["status"] for d in stored.values()} == {"INTERRUPTED"}
    assert stored[killed_here]["stop_time"] is not None


def test_new_runs_record_their_pid(tmp_path: Path) -> None:
    tracked = record(tmp_path / "runs", [0.5])
    host = json.loads((tracked.journal_dir / "run.json").read_text())["host"]
    assert host["pid"] == os.getpid() and host["hostname"] == socket.gethostname()


# --- sync: concurrent, and stopped at any write -------------------------------------------------


def _state(db: Any) -> dict[str, Any]:
    """What MongoDB holds, by run uuid: what a user of Omniboard or `edge experiments` would see."""
    fs = __import__("gridfs").GridFS(db)
    state = {}
    for doc in db.runs.find():
        metrics = {m["name"]: m["values"] for m in db.metrics.find({"run_id": doc["_id"]})}
        artifacts = {a["name"]: fs.get(a["file_id"]).read() for a in doc["artifacts"]}
        state[doc["meta"]["run_uuid"]] = {"status": doc["status"], "metrics": metrics, "artifacts": artifacts}
    return state


def _store(db: Any) -> observers.MongoStore:
    return observers.MongoStore(db, MOCK_URL)


@pytest.fixture
def atomic_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make each mongomock write atomic, as each is in a real MongoDB.

    mongomock checks a unique index and then writes, in Python, without a lock: two threads can both
    pass the check and store the same run uuid twice, which a MongoDB server never lets happen.
    One lock around each write restores the server's guarantee; the syncs still interleave freely.
    """
    lock = threading.RLock()
    for name in WRITES:
        original = getattr(mongomock.collection.Collection, name)

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, name, locked)


@pytest.mark.usefixtures("atomic_writes")
def test_two_syncs_at_once_copy_each_run_once(three_runs: tuple[Path, list[str]], mock_mongo: Any) -> None:
    runs, uuids = three_runs
    for round_ in range(5):
        db = mock_mongo.client[f"concurrent{round_}"]
        errors: list[BaseException] = []

        def one_sync(db: Any = db, errors: list[BaseException] = errors) -> None:
            try:
                sync(runs, _store(db))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one_sync) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert sorted(d["meta"]["run_uuid"] for d in db.runs.find()) == sorted(uuids), "each run once"
        assert db.metrics.count_documents({}) == 2 * len(uuids)
        again = sync(runs, _store(db))
        assert not again.copied and sorted(again.present + again.repaired) == sorted(uuids)
        assert _state(db) == _state_of_clean_sync(runs, mock_mongo.client)


WRITES = (
    "insert_one",
    "insert_many",
    "replace_one",
    "update_one",
    "update_many",
    "delete_one",
    "delete_many",
    "find_one_and_replace",
    "find_one_and_update",
    "create_index",
)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def _counting_writes(monkeypatch: pytest.MonkeyPatch, kill_at: int | None) -> Callable[[], int]:
    count = 0
    for name in WRITES:
        original = getattr(mongomock.collection.Collection, name)

        def write(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            nonlocal count
            count += 1
            if kill_at is not None and count == kill_at:
                raise Killed
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, name, write)
    return lambda: count


def _state_of_clean_sync(runs: Path, client: Any) -> dict[str, Any]:
    db = client["reference"]
    if db.runs.count_documents({}) == 0:
        sync(runs, _store(db))
    return _state(db)


def test_a_sync_stopped_at_any_write_is_completed_by_the_next(
    three_runs: tuple[Path, list[str]], mock_mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, _ = three_runs
    expected = _state_of_clean_sync(runs, mock_mongo.client)
    with monkeypatch.context() as patch:
        writes = _counting_writes(patch, None)
        sync(runs, _store(mock_mongo.client["counting"]))
        total = writes()
    assert total > 20  # indexes, claims, metrics, GridFS chunks and files, run documents
    print(f"sync stopped at each of its {total} writes, then run again")
    for kill_at in range(1, total + 1):
        db = mock_mongo.client[f"killed{kill_at}"]
        with monkeypatch.context() as patch, pytest.raises(Killed):
            _counting_writes(patch, kill_at)
            sync(runs, _store(db))
        sync(runs, _store(db))
        assert _state(db) == expected, f"killed at write {kill_at} of {total}"
        files = db["fs.files"].count_documents({"filename": {"$regex": "^artifact://"}})
        assert files == len(expected), f"killed at write {kill_at}: artifacts stored twice"
