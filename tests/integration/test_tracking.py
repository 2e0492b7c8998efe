"""Tracked training runs in a temporary project: a real git repository, real DVC, real training.

MongoDB cannot be installed here, so the MongoDB backend runs against mongomock: `mongomock.patch`
replaces `pymongo.MongoClient` for one host name (`mongo.test`), and
`mongomock.gridfs.enable_gridfs_integration()` lets GridFS (the artifacts) work on it. Sacred's own
MongoObserver code writes the runs; only the server is a stand-in. The unreachable case uses the
real pymongo client against a closed port on 127.0.0.1.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import mongomock.gridfs
import pytest
import yaml
from typer.testing import CliRunner

from edge.cli import app
from edge.pipeline import load_params
from tests.datagen import NO_AUGMENTATION, write_fashion_files

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_PARAMS = {
    "prepare": {"seed": 1, "validation_size": 100, "max_train_images": None, "max_test_images": None},
    "train": {
        "seed": 1,
        "epochs": 1,
        "batch_size": 64,
        **NO_AUGMENTATION,
        "model": {"filters": [8], "dense_units": 16},
    },
    "evaluate": {"min_accuracy": 0.0},
}
REMOTE_TOKEN = "ghp-secret-token"
REMOTE = f"https://ci-bot:{REMOTE_TOKEN}@example.com/team/edge.git"
MONGO_PASSWORD = "s3cret-pass"
MOCK_URL = f"mongodb://edge:{MONGO_PASSWORD}@mongo.test:27017/edge"
EPOCH_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
ARTIFACTS = {"model.tar.gz", "confusion_matrix.png", "final_metrics.json"}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> Any:
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full_env.pop("EDGE_TRACKING_URL", None)
    full_env.update(env or {})
    done = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def git(project: Path, *args: str) -> str:
    return str(sh(["git", *args], project).stdout.strip())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small project: git with a remote carrying a token, DVC-tracked tiny data, `dvc repro prepare`."""
    root = tmp_path_factory.mktemp("tracked-project")
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    # The stages' code dependencies (the `edge` that runs is the installed one).
    shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    (root / ".gitignore").write_text("/data/prepared/\n/models/\n/reports/\n/runs/\n")
    sh(["git", "init", "-q", "-b", "trunk"], root)
    sh(["git", "config", "user.email", "t@example.com"], root)
    sh(["git", "config", "user.name", "t"], root)
    sh(["git", "remote", "add", "origin", REMOTE], root)
    sh(["dvc", "init", "-q"], root)
    write_fashion_files(root / "data" / "raw" / "fashion-mnist", n_train=600, n_test=200, compress=False)
    sh(["dvc", "add", "-q", "data/raw/fashion-mnist"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "tiny project"], root)
    sh(["dvc", "repro", "prepare"], root)
    sh(["git", "add", "dvc.lock"], root)
    sh(["git", "commit", "-qm", "prepare"], root)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in-process commands inside the project, wide output, no MongoDB unless a test sets one."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("EDGE_TRACKING_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return project


@pytest.fixture
def mock_mongo() -> Iterator[None]:
    """mongomock in place of a MongoDB server at mongo.test:27017, with GridFS."""
    mongomock.gridfs.enable_gridfs_integration()
    with mongomock.patch(servers=(("mongo.test", 27017),)):
        yield


def mongo_db() -> Any:
    import pymongo

    return pymongo.MongoClient(MOCK_URL)["edge"]


def edge(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def run_dirs(runs: Path) -> list[Path]:
    return sorted((d for d in runs.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def file_run(project: Path) -> Path:
    """`edge pipeline train` as DVC runs it, with no MongoDB: the run lands in the project's runs/."""
    sh(["edge", "pipeline", "train"], project)
    (run_dir,) = run_dirs(project / "runs")
    return run_dir


def read(run_dir: Path, name: str) -> Any:
    return json.loads((run_dir / name).read_text())


def test_file_run_records_the_full_lineage(project: Path, file_run: Path) -> None:
    run, info, config = read(file_run, "run.json"), read(file_run, "info.json"), read(file_run, "config.json")
    assert run["status"] == "COMPLETED"
    assert run["start_time"] < run["stop_time"]
    assert info["user"] == getpass.getuser()
    assert run["host"]["hostname"] == socket.gethostname()
    assert info["git"] == {
        "commit": git(project, "rev-parse", "HEAD"),
        "branch": "trunk",
        "remote": "https://example.com/team/edge.git",
        "dirty": False,
    }
    assert run["experiment"]["repositories"][0]["commit"] == git(project, "rev-parse", "HEAD")
    # The code that built and trained the model is recorded with the run.
    sources = {name for name, _copy in run["experiment"]["sources"]}
    assert {"model.py", "train.py", "pipeline.py", "calibration.py"} <= {Path(s).name for s in sources}

    raw_md5 = yaml.safe_load((project / "data/raw/fashion-mnist.dvc").read_text())["outs"][0]["md5"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    prepared_md5 = lock["stages"]["prepare"]["outs"][0]["md5"]
    assert {d["path"]: d["md5"] for d in info["data_version"]} == {
        "data/raw/fashion-mnist": raw_md5,
        "data/prepared": prepared_md5,
    }

    # Every hyperparameter of params.yaml, defaults filled in; Sacred's seed is train.seed.
    expected = json.loads(json.dumps(load_params(project / "params.yaml").as_dict()))
    assert {k: v for k, v in config.items() if k != "seed"} == expected
    assert config["train"]["model"]["filters"] == [8] and config["train"]["epochs"] == 1
    assert config["seed"] == 1

    metrics = read(file_run, "metrics.json")
    assert set(metrics) == EPOCH_METRICS
    assert all(m["steps"] == [1] and len(m["values"]) == 1 for m in metrics.values())
    history = (project / "reports/train/history.csv").read_text().splitlines()
    assert float(history[1].split(",")[4]) == pytest.approx(metrics["val_accuracy"]["values"][0], abs=1e-6)

    assert set(run["artifacts"]) == ARTIFACTS
    with tarfile.open(file_run / "model.tar.gz") as tar:
        names = set(tar.getnames())
        metadata = json.loads(tar.extractfile("model/metadata.json").read())  # type: ignore[union-attr]
    assert {"model/model.keras", "model/serving/saved_model.pb"} <= names
    assert metadata["version"] == run["result"]["model_version"] == info["model"]["version"]
    # The model's run record names its run, by the uuid both backends key it by, and the checkout it
    # came from; the model itself (its metadata) does not, so that the same inputs make the same model.
    record = json.loads((project / "models/run.json").read_text())
    assert record["tracking_run_id"] == run["meta"]["run_uuid"] == info["run_uuid"]
    assert record["model_version"] == metadata["version"] and record["git"] == info["git"]
    assert not {"tracking_run_id", "git"} & set(metadata["lineage"]) and "created" not in metadata
    assert (file_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = read(file_run, "final_metrics.json")
    assert final["summary"] == run["result"]
    assert REMOTE_TOKEN not in "".join(p.read_text(errors="ignore") for p in file_run.iterdir())


def test_test_metrics_match_the_evaluate_stage(project: Path, file_run: Path) -> None:
    sh(["edge", "pipeline", "evaluate"], project)
    evaluated = json.loads((project / "reports/evaluate/metrics.json").read_text())
    details = json.loads((project / "reports/evaluate/details.json").read_text())
    recorded = read(file_run, "info.json")["test"]
    assert recorded["test"] == {"accuracy": evaluated["accuracy"], "loss": evaluated["loss"]}
    assert recorded["per_class"] == details["per_class"]
    assert read(file_run, "run.json")["result"]["test_accuracy"] == pytest.approx(evaluated["accuracy"])


def test_mongo_backend_records_the_same_run(
    in_project: Path, tmp_path: Path, mock_mongo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TRACKING_URL", MOCK_URL)
    monkeypatch.setenv("EDGE_RUNS_DIR", str(tmp_path / "runs"))
    result = edge("pipeline", "train")
    db = mongo_db()
    (doc,) = list(db.runs.find())
    assert doc["status"] == "COMPLETED"
    assert doc["info"]["git"]["commit"] == git(in_project, "rev-parse", "HEAD")
    assert doc["config"]["train"]["model"]["filters"] == [8]
    assert {m["name"] for m in db.metrics.find({"run_id": doc["_id"]})} == EPOCH_METRICS
    assert {a["name"] for a in doc["artifacts"]} == ARTIFACTS
    assert db["fs.files"].count_documents({"filename": {"$regex": "^artifact://"}}) == len(ARTIFACTS)

    # The password is printed masked, and stored nowhere.
    assert MONGO_PASSWORD not in result.output
    stored = json.dumps([doc, *db.metrics.find()], default=str)
    (run_dir,) = run_dirs(tmp_path / "runs")
    journal = "".join(p.read_text(errors="ignore") for p in run_dir.iterdir())
    assert MONGO_PASSWORD not in stored and MONGO_PASSWORD not in journal
    assert "mongodb://" not in stored and "mongodb://" not in journal

    # Both backends give the same output.
    from_mongo = json.loads(edge("experiments", "list", "--json").stdout)
    from_files = json.loads(edge("experiments", "list", "--json", "--files").stdout)
    for row in (*from_mongo, *from_files):
        row.pop("backend_id")
    assert from_mongo == from_files
    run_id = from_mongo[0]["id"]
    shown_mongo = edge("experiments", "show", run_id).stdout.splitlines()
    shown_files = edge("experiments", "show", run_id, "--files").stdout.splitlines()
    assert shown_mongo[:-1] == shown_files[:-1]
    assert "MongoDB mongodb://edge:***@mongo.test:27017/edge" in shown_mongo[-1]
    assert "journal" in shown_files[-1]


def test_unreachable_mongo_lands_in_files_then_syncs_once(
    in_project: Path, tmp_path: Path, mock_mongo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    down = f"mongodb://edge:{MONGO_PASSWORD}@127.0.0.1:{closed_port()}/edge"
    done = sh(
        ["edge", "pipeline", "train"], in_project, env={"EDGE_TRACKING_URL": down, "EDGE_RUNS_DIR": str(runs)}
    )
    output = done.stdout + done.stderr
    assert output.count("warning:") == 1, output
    assert "unreachable" in output and "edge:***@127.0.0.1" in output and "edge experiments sync" in output
    assert MONGO_PASSWORD not in output
    (run_dir,) = run_dirs(runs)
    assert read(run_dir, "run.json")["status"] == "COMPLETED"
    local_metrics = read(run_dir, "metrics.json")

    monkeypatch.setenv("EDGE_TRACKING_URL", MOCK_URL)
    first = edge("experiments", "sync", "--runs-dir", str(runs))
    assert "1 run(s) copied" in first.output
    db = mongo_db()

    def counts() -> tuple[int, int, int, int]:
        points = sum(len(m["values"]) for m in db.metrics.find())
        artifacts = db["fs.files"].count_documents({"filename": {"$regex": "^artifact://"}})
        return db.runs.count_documents({}), db.metrics.count_documents({}), points, artifacts

    expected = (1, len(local_metrics), sum(len(m["values"]) for m in local_metrics.values()), 3)
    assert counts() == expected
    second = edge("experiments", "sync", "--runs-dir", str(runs))
    assert "0 run(s) copied" in second.output and "1 already there" in second.output
    assert counts() == expected

    # What was synced reads back exactly as the journal has it.
    run_id = _uuid(run_dir)
    from_mongo = json.loads(edge("experiments", "show", run_id, "--json").stdout)
    from_files = json.loads(
        edge("experiments", "show", run_id, "--json", "--files", "--runs-dir", str(runs)).stdout
    )
    for record in (from_mongo, from_files):
        record.pop("backend_id")
    assert from_mongo == from_files


def _uuid(run_dir: Path) -> str:
    return str(read(run_dir, "run.json")["meta"]["run_uuid"])


def test_a_failing_run_is_recorded_as_failed(in_project: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # An uncommitted change to the code: the run says its tree differed from the commit.
    code = in_project / "src" / "edge" / "train.py"
    original = code.read_text()
    code.write_text(original + "# an uncommitted change\n")
    try:
        done = sh(
            ["edge", "pipeline", "train", "--prepared-dir", "data/missing"],
            in_project,
            env={"EDGE_RUNS_DIR": str(runs)},
            check=False,
        )
    finally:
        code.write_text(original)
    assert done.returncode == 1
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    (run_dir,) = run_dirs(runs)
    run = read(run_dir, "run.json")
    assert run["status"] == "FAILED"
    trace = "".join(run["fail_trace"])
    assert trace.startswith("Traceback") and "FileNotFoundError" in trace and "data/missing" in trace
    assert read(run_dir, "info.json")["git"]["dirty"] is True


def test_a_run_whose_model_failed_its_suite_is_failed_with_its_checks(
    in_project: Path, tmp_path: Path
) -> None:
    """Training itself succeeds (the evaluate stage must still judge the export and leave its
    evidence), but the run says the model failed, and which checks, wherever runs are listed."""
    runs = tmp_path / "runs"
    params = in_project / "params.yaml"
    original = params.read_text()
    params.write_text(yaml.safe_dump({**TINY_PARAMS, "evaluate": {"min_accuracy": 0.999}}))
    try:
        done = sh(["edge", "pipeline", "train"], in_project, env={"EDGE_RUNS_DIR": str(runs)}, check=False)
    finally:
        params.write_text(original)
    assert done.returncode == 0, done.stderr
    # Said once, in a line; no traceback (Sacred's own logging once printed one after a failed run).
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr, done.stderr
    said = " ".join(done.stderr.split())
    assert "failed 1 check(s) of its test suite: accuracy" in said and "recorded as FAILED" in said, said
    (run_dir,) = run_dirs(runs)
    run = read(run_dir, "run.json")
    assert run["status"] == "FAILED"
    assert "failed 1 check(s) of its test suite: accuracy" in "".join(run["fail_trace"])
    verdict = read(run_dir, "info.json")["verdict"]
    assert verdict["status"] == "failed" and verdict["failed_checks"][0].startswith("accuracy: ")
    listed = edge("experiments", "list", "--runs-dir", str(runs), "--files", "--json")
    (row,) = json.loads(listed.output)
    assert row["status"] == "FAILED" and row["verdict"] == verdict
    shown = edge("experiments", "show", run_dir.name, "--runs-dir", str(runs), "--files")
    assert "verdict" in shown.output and "failed" in shown.output and "needs >= 0.999" in shown.output
