"""What the tracking tests share: known runs recorded by the real Sacred observers, a CLI runner, a
clean tracking environment, and MongoDB as mongomock.

No MongoDB server can be installed here: `mongomock.patch` serves mongo.test:27017 to
`pymongo.MongoClient`, and `mongomock.gridfs.enable_gridfs_integration()` makes GridFS work on it.
tests/conftest.py loads the fixtures as a plugin; a module opts in to the clean environment with
`pytestmark = pytest.mark.usefixtures("tracking_environment")`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import mongomock.gridfs
import pymongo
import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.tracking.experiment import Recorder, tracked_run
from tests.datagen import NO_AUGMENTATION

MOCK_URL = "mongodb://edge:pa55word@mongo.test:27017/edge"
PARAMS = {
    "prepare": {"seed": 1, "validation_size": 100},
    "train": {
        "epochs": 3,
        "batch_size": 64,
        "learning_rate": 0.003,
        **NO_AUGMENTATION,
        "model": {"filters": [8]},
    },
}
GIT = {"commit": "a" * 40, "branch": "main", "remote": "https://example.com/edge.git", "dirty": False}
DATA = [{"path": "data/raw/fashion-mnist", "md5": "0123456789abcdef0123456789abcdef.dir"}]


def known_body(accuracy: list[float]) -> Any:
    def body(recorder: Recorder) -> str:
        for epoch, value in enumerate(accuracy, start=1):
            recorder.log_metrics(epoch, {"accuracy": value, "loss": 1 - value})
        recorder.add_artifact("final_metrics.json", b'{"test": {}}\n', "application/json")
        recorder.info["result"] = {"test_accuracy": accuracy[-1], "epochs": len(accuracy)}
        return "done"

    return body


def record(runs: Path, accuracy: list[float], lr: float = 0.003, **kwargs: Any) -> Any:
    config = json.loads(json.dumps(PARAMS))
    config["train"]["learning_rate"] = lr
    return tracked_run(
        known_body(accuracy),
        config={**config, "seed": 1},
        info={"git": GIT, "data_version": DATA, "vertex_job": None},
        runs_dir=runs,
        **kwargs,
    )


def edge(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


@pytest.fixture
def tracking_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking settings from the developer's shell, and wide tables."""
    monkeypatch.delenv("EDGE_TRACKING_URL", raising=False)
    monkeypatch.delenv("EDGE_RUNS_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def mock_mongo() -> Iterator[Any]:
    mongomock.gridfs.enable_gridfs_integration()
    with mongomock.patch(servers=(("mongo.test", 27017),)):
        yield pymongo.MongoClient(MOCK_URL)["edge"]
