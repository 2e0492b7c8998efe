"""Hot reload under traffic: a new model is swapped in and a broken one refused, with zero failed
requests; and what goes out: no lineage in predictions, no paths or traces in health and errors."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from edge.cli import app as cli_app
from edge.serving.app import WATCHER, create_app
from edge.serving.loaded_model import ModelLoadError, Predictor, load_from_uri
from edge.serving.settings import ServerSettings
from edge.verdict import VERDICT_FILE
from tests.conftest import TINY_MODEL_METADATA
from tests.serving_helpers import serving, wait_until
from tests.verdicts import judge


def publish(
    models: Path, source: Path, version: str, *, break_it: bool = False, verdict: str = "passed"
) -> Path:
    """Publish `source` as a new version behind the `models` symlink, switched atomically, with a
    verdict that says `passed`, `failed`, or none at all (`unjudged`)."""
    target = models.parent / f"v-{version}"
    shutil.copytree(source, target)
    (target / VERDICT_FILE).unlink(missing_ok=True)
    # The saved metadata (with the folder's content hash), under a new version.
    metadata = {**json.loads((source / "metadata.json").read_text()), "version": version}
    (target / "metadata.json").write_text(json.dumps(metadata))
    if verdict != "unjudged":
        judge(target, passed=verdict == "passed")
    if break_it:
        (target / "serving" / "saved_model.pb").write_bytes(b"not a SavedModel")
    link = models.parent / "models.next"
    link.symlink_to(target.name)
    link.replace(models)
    return target


class Traffic:
    """Threads posting predictions until stopped, counting every status and version seen."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.statuses: Counter[int] = Counter()
        self.versions: list[str] = []
        # (sent, answered, version) of each 200, on one monotonic clock.
        self.answers: list[tuple[float, float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url,)) for _ in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, url: str) -> None:
        session = requests.Session()
        body = {"instances": [[0] * 784]}
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                response = session.post(url + "/predict", json=body, timeout=30)
            except requests.RequestException as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    version = response.json()["model"]["version"]
                    self.versions.append(version)
                    self.answers.append((sent, time.monotonic(), version))


@pytest.fixture
def models(tiny_model_dir: Path, tmp_path: Path) -> Path:
    first = tmp_path / "v-1"
    shutil.copytree(tiny_model_dir, first)
    (tmp_path / "models").symlink_to(first.name)
    return tmp_path / "models"


def test_a_new_model_is_swapped_in_and_a_broken_one_refused_under_traffic(
    models: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.serving")
    settings = ServerSettings(model_uri=str(models), reload_interval=0.2)
    app = create_app(settings, predictor=load_from_uri(str(models)))
    with serving(app) as client, Traffic(client.url) as traffic:
        assert wait_until(lambda: len(traffic.versions) > 20)
        publish(models, tiny_model_dir, "2")
        assert wait_until(lambda: traffic.versions[-1:] == ["2"])
        publish(models, tiny_model_dir, "3-broken", break_it=True)
        assert wait_until(lambda: any("refused the new model" in r.getMessage() for r in caplog.records))
        seen_after_refusal = len(traffic.versions)
        assert wait_until(lambda: len(traffic.versions) > seen_after_refusal + 20)
        assert client.get("/health").json()["model"]["version"] == "2"
    assert traffic.errors == [] and set(traffic.statuses) == {200}, (traffic.errors, traffic.statuses)
    # Old answers, then new ones, never back: the swap is one step. Requests already computing when
    # it happens may still finish on the old model (batches run side by side), so the order that
    # counts is by sending: once a new answer has come back, no request sent after it gets the old one.
    assert {version for _, _, version in traffic.answers} == {"0.0.0-test", "2"}
    first_new_answer = min(answered for _, answered, version in traffic.answers if version == "2")
    late_old = [sent for sent, _, version in traffic.answers if version != "2" and sent > first_new_answer]
    assert late_old == [], f"{len(late_old)} request(s) sent after the swap got the old model"
    refusal = next(r.getMessage() for r in caplog.records if "refused the new model" in r.getMessage())
    # The reason follows: the broken SavedModel fails the folder's content check, or TensorFlow.
    assert "still serving fashion-mnist 2: " in refusal and str(models) in refusal


def test_a_reload_can_be_asked_for_instead_of_polled(models: Path, tiny_model_dir: Path) -> None:
    app = create_app(
        ServerSettings(model_uri=str(models), reload_interval=0), predictor=load_from_uri(str(models))
    )
    with serving(app) as client:
        publish(models, tiny_model_dir, "2")
        assert client.get("/health").json()["model"]["version"] == "0.0.0-test"
        # What SIGHUP does in `edge serve`; check() may be called from any thread.
        app[WATCHER].check()
        assert wait_until(lambda: client.get("/health").json()["model"]["version"] == "2")


def test_the_reload_takes_a_model_only_once_it_passed_its_test_suite(
    models: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Training publishes a model before the evaluate stage judges it: the reload waits for the
    verdict, swaps in a model that passed, and never one that failed."""
    caplog.set_level(logging.INFO, logger="edge.serving")
    app = create_app(
        ServerSettings(model_uri=str(models), reload_interval=0.1), predictor=load_from_uri(str(models))
    )

    def served() -> str:
        return str(client.get("/health").json()["model"]["version"])

    with serving(app) as client:
        failed = publish(models, tiny_model_dir, "2-failed", verdict="failed")
        assert wait_until(lambda: any("2-failed failed 1 check" in r.getMessage() for r in caplog.records))
        assert served() == "0.0.0-test"
        judge(failed, passed=False)  # judged again, the same verdict: still refused
        unjudged = publish(models, tiny_model_dir, "3", verdict="unjudged")
        assert wait_until(lambda: any("3 in" in r.getMessage() for r in caplog.records))
        assert served() == "0.0.0-test"
        judge(unjudged)  # the evaluate stage's verdict arrives: passed
        assert wait_until(lambda: served() == "3")
        body = client.post("/predict", json={"instances": [[0] * 784]}).json()
        assert body["model"] == {"name": "fashion-mnist", "version": "3", "verdict": "passed"}


def test_a_failed_model_is_served_only_when_asked_and_then_every_answer_says_so(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    failed = tmp_path / "models"
    shutil.copytree(tiny_model_dir, failed)
    judge(failed, passed=False)
    with pytest.raises(ModelLoadError, match=r"failed 1 check\(s\).*--allow-failed-model"):
        load_from_uri(str(failed))
    (failed / VERDICT_FILE).unlink()
    with pytest.raises(ModelLoadError, match="has not been judged by its test suite"):
        load_from_uri(str(failed))
    judge(failed, passed=False)
    settings = ServerSettings(model_uri=str(failed), reload_interval=0, allow_failed_model=True)
    with serving(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/health").status_code == 200)
        health = client.get("/health").json()
        assert health["model"]["verdict"] == "failed"
        assert "accuracy: 0.5000, needs >= 0.92" in health["warning"]
        assert "--allow-failed-model" in health["warning"]
        body = client.post("/predict", json={"instances": [[0] * 784]}).json()
        assert body["model"]["verdict"] == "failed"


def test_edge_serve_refuses_a_failed_model_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    failed = tmp_path / "models"
    shutil.copytree(tiny_model_dir, failed)
    judge(failed, passed=False)
    result = CliRunner().invoke(cli_app, ["serve", "--model-dir", str(failed), "--port", "1"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 0.0.0-test failed 1 check(s)")
    assert "dvc exp run -S train.seed=1" in lines[0] and "--allow-failed-model" in lines[0]


# --- What goes out ---------------------------------------------------------------------------------


@pytest.fixture
def predictor(tiny_model_dir: Path) -> Predictor:
    return load_from_uri(str(tiny_model_dir))


def test_predictions_name_the_model_and_the_lineage_has_its_own_route(predictor: Predictor) -> None:
    with serving(create_app(ServerSettings(reload_interval=0), predictor=predictor)) as client:
        body = client.post("/predict", json={"instances": [[0] * 784]}).json()
        assert body["model"] == {"name": "fashion-mnist", "version": "0.0.0-test", "verdict": "passed"}
        assert "lineage" not in str(body)
        metadata = client.get("/v1/models/fashion-mnist")
        assert metadata.status_code == 200
        assert metadata.json()["lineage"] == TINY_MODEL_METADATA["lineage"]
        assert client.get("/v1/models/other").status_code == 404
        assert "/v1/models/{name}" in client.get("/openapi.json").json()["paths"]


def test_the_metadata_route_can_be_turned_off(predictor: Predictor) -> None:
    settings = ServerSettings(reload_interval=0, expose_metadata=False)
    with serving(create_app(settings, predictor=predictor)) as client:
        hidden = client.get("/v1/models/fashion-mnist")
        assert hidden.status_code == 404
        assert "lineage" not in hidden.text
        assert "/v1/models/{name}" not in client.get("/openapi.json").json()["paths"]


def test_an_unexpected_failure_is_a_500_without_trace_or_path(
    predictor: Predictor, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError(f"cannot read {tiny_model_dir}/serving/variables")

    broken = Predictor(failing, predictor.metadata)
    with serving(create_app(ServerSettings(reload_interval=0), predictor=broken)) as client:
        response = client.post("/predict", json={"instances": [[0] * 784]})
        assert client.get("/health").status_code == 200
    assert response.status_code == 500
    assert response.json() == {"error": "internal error, the details are in the server log"}
    assert str(tiny_model_dir) not in response.text and "Traceback" not in response.text
    assert any(str(tiny_model_dir) in (r.exc_text or "") + r.getMessage() for r in caplog.records)


def _png_b64(wrap: int | None) -> str:
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    if wrap is None:
        return text
    return "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap)) + "\n"


def test_base64_with_line_breaks_is_accepted_and_junk_gets_a_fix(predictor: Predictor) -> None:
    with serving(create_app(ServerSettings(reload_interval=0), predictor=predictor)) as client:
        one_line = client.post("/predict", json={"instances": [{"b64": _png_b64(None)}]})
        wrapped = client.post("/predict", json={"instances": [{"b64": _png_b64(76)}]})
        crlf = client.post("/predict", json={"instances": [{"b64": _png_b64(64).replace("\n", "\r\n")}]})
        assert one_line.status_code == wrapped.status_code == crlf.status_code == 200
        assert wrapped.json()["predictions"] == one_line.json()["predictions"]
        junk = client.post(
            "/predict", json={"instances": [{"b64": "data:image/png;base64," + _png_b64(None)}]}
        )
        assert junk.status_code == 400
        assert "base64 -w0" in junk.json()["error"]
