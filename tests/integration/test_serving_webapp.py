"""`edge serve` and the webapp as real processes on 127.0.0.1, talking to each other over HTTP."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.live_servers import EDGE, LiveServer, free_port, model_server, webapp

pytestmark = pytest.mark.slow

ENDPOINT_ROUTE = "/v1/endpoints/1234/deployedModels/5678:predict"
HEALTH_ROUTE = "/v1/endpoints/1234/deployedModels/5678/health"


@pytest.fixture(scope="module")
def vertex_like_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """`edge serve` configured only through Vertex AI's variables, with non-default routes."""
    env = {
        "AIP_HTTP_PORT": str(free_port()),
        "AIP_STORAGE_URI": str(tiny_model_dir),
        "AIP_HEALTH_ROUTE": HEALTH_ROUTE,
        "AIP_PREDICT_ROUTE": ENDPOINT_ROUTE,
    }
    log = tmp_path_factory.mktemp("logs") / "model.log"
    with model_server(tiny_model_dir, log, env, health_path=HEALTH_ROUTE) as server:
        yield server


def test_server_honours_aip_port_and_routes(vertex_like_server: LiveServer) -> None:
    url = vertex_like_server.url
    assert requests.get(url + HEALTH_ROUTE, timeout=5).json()["status"] == "ok"
    response = requests.post(url + ENDPOINT_ROUTE, json={"instances": [[0] * 784]}, timeout=10)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1
    named = requests.post(
        url + "/v1/models/fashion-mnist:predict", json={"instances": [[[0] * 28] * 28]}, timeout=10
    )
    assert named.status_code == 200
    assert requests.get(url + "/health", timeout=5).status_code == 404


def test_bad_input_never_kills_the_worker(vertex_like_server: LiveServer) -> None:
    url = vertex_like_server.url + ENDPOINT_ROUTE
    bad_bodies = [b"[" * 200_000, b'{"instances": [[NaN]]}', b"\xff\xfe", b"{}"]
    for body in bad_bodies:
        response = requests.post(url, data=body, timeout=10, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body[:40]
    too_big = requests.post(
        url, data=b" " * 2_000_000, timeout=10, headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413
    too_many = requests.post(url, json={"instances": [[0]] * 101}, timeout=10)
    assert too_many.status_code == 413
    assert requests.post(url, json={"instances": [[0] * 784]}, timeout=10).status_code == 200
    assert vertex_like_server.process.poll() is None
    assert "Worker exiting" not in vertex_like_server.output()


def test_webapp_and_server_work_together(vertex_like_server: LiveServer, tmp_path: Path) -> None:
    sample = (
        Path(__file__).parents[2] / "services/webapp/src/edge_webapp/static/samples" / "sneaker.png"
    ).read_bytes()
    with webapp(
        vertex_like_server.url, tmp_path / "webapp.log", {"MODEL_PREDICT_ROUTE": ENDPOINT_ROUTE}
    ) as app:
        api = requests.post(app.url + "/api/predict", files={"image": ("s.png", sample)}, timeout=30)
        assert api.status_code == 200, api.text
        assert api.json()["model"]["version"] == "0.0.0-test"
        page = requests.post(app.url + "/", data={"sample": "bag"}, timeout=30)
        assert page.status_code == 200 and 'id="label"' in page.text
        text = requests.post(app.url + "/api/predict", files={"image": ("a.txt", b"hello")}, timeout=30)
        assert text.status_code == 400
    metrics = requests.get(vertex_like_server.url + "/metrics", timeout=5).text
    assert f'route="{ENDPOINT_ROUTE}",status="200"' in metrics


def test_webapp_says_when_the_server_is_unreachable(tmp_path: Path) -> None:
    with webapp(f"http://127.0.0.1:{free_port()}", tmp_path / "webapp.log") as app:
        page = requests.post(app.url + "/", data={"sample": "bag"}, timeout=30)
        assert page.status_code == 503 and "cannot be reached" in page.text
        assert requests.get(app.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize("which", ["missing", "corrupt"])
def test_edge_serve_stops_at_once_on_a_broken_model(which: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    if which == "corrupt":
        shutil.copytree(tiny_model_dir, model_dir)
        (model_dir / "serving" / "saved_model.pb").write_bytes(b"garbage")
    result = subprocess.run(
        [EDGE, "serve", "--model-dir", str(model_dir), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(model_dir) in errors[0]
