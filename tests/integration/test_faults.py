"""kill -9 at the worst moments: the previous model or data is intact or the new one complete, the
server never loads a mixed folder, and running the command again converges. Local and gs:// (emulator).

`edge pipeline train` is killed while it saves the model (from the moment its staging appears, at
several delays); `edge data seed` while it downloads from a slow local mirror. `edge experiments sync`
is stopped at every one of its writes in tests/unit/test_journal.py (MongoDB is mongomock there, which
lives in the test process, so a real SIGKILL of a sync cannot be observed in a database).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from edge import data, storage
from edge.model import read_run, verify_model_uri
from edge.serving.loaded_model import load_from_uri
from tests.datagen import write_fashion_files
from tests.gcs_emulator import GcsEmulator
from tests.integration.test_pipeline_dvc import TINY_PARAMS

pytestmark = pytest.mark.slow

EDGE = str(Path(sys.executable).with_name("edge"))
SAVE_KILL_DELAYS = (0.0, 0.6)  # seconds after the save began
SEED_KILL_DELAYS = (0.2, 1.5, 3.5)  # seconds after the first request reached the mirror
KILLS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nfault test: {len(KILLS)} kill point(s) tried: {', '.join(KILLS)}")


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the command ended ({process.returncode}) before the moment to kill it")
        if time.monotonic() > deadline:
            raise AssertionError("the moment to kill never came")
        time.sleep(0.01)


def _kill(process: subprocess.Popen[bytes], label: str) -> None:
    finished = process.poll() is not None
    if not finished:
        process.send_signal(signal.SIGKILL)
    process.wait(30)
    KILLS.append(label + (" (had finished)" if finished else ""))


# --- edge pipeline train, killed while saving ---------------------------------------------------


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    write_fashion_files(root / "raw", n_train=600, n_test=200, compress=False)
    subprocess.run(
        [EDGE, "pipeline", "prepare", "--raw-dir", "raw"], cwd=root, check=True, capture_output=True
    )
    return root


def _train(root: Path, model_dir: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EDGE, "pipeline", "train", "--model-dir", model_dir, "--reports-dir", "reports/train"],
        cwd=root,
        env={**os.environ, **env, "EDGE_RUNS_DIR": str(root / "runs")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _check_model(model_dir: str) -> tuple[str, str | None]:
    """The model there verifies and the server loads it; return its (version, created) stamp.

    The version is a hash of the weights, and training is seeded: a rerun gives the same weights, the
    same version and the same bytes. What tells one save from another is `created` in the run record
    beside the model (None when a save was killed between publishing the model and writing it).
    """
    metadata = verify_model_uri(model_dir)
    # Training alone publishes a model its suite has not judged yet: loading is what this checks.
    predictor = load_from_uri(model_dir, allow_failed=True)
    assert predictor.version == metadata["version"]
    run = read_run(model_dir, metadata)
    return str(metadata["version"]), (str(run["created"]) if run else None)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_train_killed_while_saving(where: str, trained_project: Path, request: pytest.FixtureRequest) -> None:
    root = trained_project
    # The trainings' temporary folder, watched: a killed upload's staging must be swept (and what
    # killed Keras and TensorFlow leave there stays out of the system's).
    scratch = root / f"tmp-{where}"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    if where == "local":
        model_dir = str(root / "models")

        # The save has begun when its staging folder appears beside the model folder.
        def saving(process: subprocess.Popen[bytes]) -> bool:
            return any(root.glob(f".models.edge-stage-{process.pid}-*"))

    else:
        bucket: str = request.getfixturevalue("gcs_bucket")
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        env.update(emulator.env())
        model_dir = f"{bucket}/models"

        def saving(process: subprocess.Popen[bytes]) -> bool:
            return len({o.split("/")[2] for o in emulator.objects(bucket) if "/_versions/" in o}) > len(seen)

        seen: set[str] = set()

    first = _train(root, model_dir, env)
    assert first.wait(600) == 0
    saves = {_check_model(model_dir)}
    for delay in SAVE_KILL_DELAYS:
        if where == "gcs":
            seen = {o.split("/")[2] for o in emulator.objects(bucket) if "/_versions/" in o}
        process = _train(root, model_dir, env)
        _wait_for(lambda process=process: saving(process), process)
        time.sleep(delay)
        _kill(process, f"train/{where}/+{delay}s")
        # Intact or complete: the previous model, or a new one saved whole.
        saves.add(_check_model(model_dir))
    # Running it again converges: a model published by this run, and no leftovers of the killed saves.
    time.sleep(1.1)  # `created` has one-second resolution
    final = _train(root, model_dir, env)
    assert final.wait(600) == 0
    assert _check_model(model_dir) not in saves
    if where == "local":
        assert not list(root.glob(".models.edge-*")), "leftovers of killed saves were not swept"
    else:
        pointed = storage.resolve_dir(model_dir).rsplit("/", 1)[-1]
        kept = {o.split("/")[2] for o in emulator.objects(bucket) if "/_versions/" in o}
        assert pointed in kept and len(kept) <= 2 + len(SAVE_KILL_DELAYS)
        # Only Edge's: killed Keras and TensorFlow leave files there too, and they are not ours to sweep.
        ours = [p.name for p in scratch.iterdir() if "edge" in p.name]
        assert ours == [], "a killed upload's staging was not swept"


# --- edge data seed, killed while downloading ---------------------------------------------------


class SlowMirror:
    """Serves a folder over HTTP on 127.0.0.1 at a few MB/s, so that a download takes seconds."""

    def __init__(self, folder: Path, bytes_per_second: int = 8_000_000) -> None:
        chunk = 64 * 1024
        pause = chunk / bytes_per_second
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = folder / self.path.rsplit("/", 1)[-1]
                requests.append(path.name)
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), chunk):
                        self.wfile.write(body[start : start + chunk])
                        time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_mirror(real_fashion_source: Path) -> Iterator[SlowMirror]:
    mirror = SlowMirror(real_fashion_source)
    yield mirror
    mirror.close()


def _seed(raw_dir: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EDGE, "data", "seed", "--raw-dir", raw_dir, "--no-track", "--download"],
        cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if k != "EDGE_DATA_SOURCE"}, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _complete_files(raw_dir: str) -> set[str]:
    """The canonical files present in `raw_dir`; any file there must be whole and right."""
    present = set()
    for file in data.RAW_FILES:
        uri = storage.join(raw_dir, file.name)
        if storage.exists(uri):
            assert data.md5_hex(storage.read_bytes(uri)) == file.md5, f"{uri} is partial or wrong"
            present.add(file.name)
    return present


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_seed_killed_while_downloading(
    where: str, slow_mirror: SlowMirror, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The system's temporary folder, watched: what a killed seed staged there is swept by the next.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"EDGE_DATA_MIRRORS": slow_mirror.url, "TMPDIR": str(scratch)}
    if where == "local":
        raw_dir = str(tmp_path / "data" / "raw" / "fashion-mnist")
    else:
        bucket: str = request.getfixturevalue("gcs_bucket")
        env.update(request.getfixturevalue("gcs_emulator").env())
        raw_dir = f"{bucket}/data/raw/fashion-mnist"
    for delay in SEED_KILL_DELAYS:
        asked = len(slow_mirror.requests)
        process = _seed(raw_dir, tmp_path, env)
        _wait_for(lambda asked=asked: len(slow_mirror.requests) > asked, process)
        time.sleep(delay)
        _kill(process, f"seed/{where}/+{delay}s")
        _complete_files(raw_dir)  # nothing half-written
    rerun = _seed(raw_dir, tmp_path, env)
    assert rerun.wait(300) == 0
    assert _complete_files(raw_dir) == {f.name for f in data.RAW_FILES}
    assert not (tmp_path / "gs:").exists()
    assert sorted(p.name for p in scratch.iterdir()) == [], "killed seeds left files in the temporary folder"
    if where == "local":
        leftovers = [p.name for p in (tmp_path / "data" / "raw").iterdir() if p.name != "fashion-mnist"]
        assert leftovers == [], "staging folders of killed seeds were not swept"
