"""The model server's contract over real HTTP on 127.0.0.1: Vertex AI's routes, every instance form,
every kind of bad input, health around loading, metrics and the OpenAPI document."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge.cli import app as cli_app
from edge.cli.serve import resolve_bind, resolve_model_uri
from edge.data import CLASS_NAMES as FASHION_CLASSES
from edge.model import content_manifest
from edge.serving.app import HOLDER, create_app
from edge.serving.instances import InstanceError, decode_instances
from edge.serving.loaded_model import ModelLoadError, Predictor, load_from_uri
from edge.serving.settings import ServerSettings
from tests.serving_helpers import Client, serving, wait_until
from tests.verdicts import judge

CLASS_NAMES = list(FASHION_CLASSES)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    return load_from_uri(str(tiny_model_dir))


@pytest.fixture
def client(predictor: Predictor) -> Iterator[Client]:
    with serving(create_app(ServerSettings(reload_interval=0), predictor=predictor)) as client:
        yield client


def image_pixels(seed: int = 0) -> np.ndarray:
    """A 28x28 uint8 image with something in it."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 8:20] = rng.integers(80, 256, size=(16, 12), dtype=np.uint8)
    return pixels


def b64_image(pixels: np.ndarray, fmt: str = "PNG") -> dict[str, str]:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return {"b64": base64.b64encode(buffer.getvalue()).decode()}


# --- Every instance form --------------------------------------------------------------------------


def test_every_instance_form_gets_a_prediction(client: Client) -> None:
    pixels = image_pixels()
    instances = [
        pixels.tolist(),  # 28x28 array
        pixels.reshape(-1).tolist(),  # flat list of 784
        (pixels.astype(float) * 0.5).tolist(),  # floats are fine too
        b64_image(pixels, "PNG"),
        b64_image(pixels, "JPEG"),
    ]
    response = client.post("/predict", json={"instances": instances, "parameters": {}})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert len(body["predictions"]) == len(instances)
    for prediction in body["predictions"]:
        assert prediction["label"] == CLASS_NAMES[prediction["class_id"]]
        assert set(prediction["probabilities"]) == set(CLASS_NAMES)
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert prediction["confidence"] == max(prediction["probabilities"].values())
    first = body["predictions"][0]["probabilities"]
    # The same pixels give the same answer whichever way they are sent (PNG is lossless).
    for same in (body["predictions"][1], body["predictions"][3]):
        assert same["probabilities"] == pytest.approx(first, abs=1e-6)
    # Only which model answered; the lineage is on its own route.
    assert body["model"] == {"name": "fashion-mnist", "version": "0.0.0-test", "verdict": "passed"}


def test_server_predictions_match_the_keras_model(client: Client, tiny_model_dir: Path) -> None:
    import keras

    pixels = np.stack([image_pixels(seed) for seed in range(3)]).astype(np.float32)
    response = client.post("/predict", json={"instances": pixels.tolist()})
    served = [[p["probabilities"][n] for n in CLASS_NAMES] for p in response.json()["predictions"]]
    expected = keras.saving.load_model(tiny_model_dir / "model.keras")(pixels, training=False)
    np.testing.assert_allclose(served, np.asarray(expected), atol=1e-5)


def test_named_route_serves_the_model_by_its_name(client: Client) -> None:
    instance = image_pixels().tolist()
    response = client.post("/v1/models/fashion-mnist:predict", json={"instances": [instance]})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1
    other = client.post("/v1/models/other:predict", json={"instances": [instance]})
    assert other.status_code == 404
    assert "fashion-mnist" in other.json()["error"]


# --- Vertex AI's environment ------------------------------------------------------------------------


def test_aip_variables_choose_routes_and_model(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("AIP_STORAGE_URI", str(tiny_model_dir))
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/v1/endpoints/e1/deployedModels/m1/health")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/endpoints/e1/deployedModels/m1:predict")
    app = create_app(ServerSettings.from_environ(os.environ))
    with serving(app) as client:
        assert app[HOLDER].wait(60)
        assert client.get("/v1/endpoints/e1/deployedModels/m1/health").status_code == 200
        ok = client.post(
            "/v1/endpoints/e1/deployedModels/m1:predict", json={"instances": [image_pixels().tolist()]}
        )
        assert ok.status_code == 200
        assert client.get("/health").status_code == 404
        assert client.post("/predict", json={"instances": [[0] * 784]}).status_code == 404
        paths = client.get("/openapi.json").json()["paths"]
        assert "/v1/endpoints/e1/deployedModels/m1:predict" in paths


def test_port_and_host_follow_aip_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIP_HTTP_PORT", raising=False)
    assert resolve_bind(None, None) == ("127.0.0.1", 8080)
    monkeypatch.setenv("AIP_HTTP_PORT", "7081")
    assert resolve_bind(None, None) == ("0.0.0.0", 7081)
    assert resolve_bind("127.0.0.1", 9000) == ("127.0.0.1", 9000)


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        ({"EDGE_MAX_BATCH": "0"}, "EDGE_MAX_BATCH='0' is not valid: must be >= 1"),
        ({"EDGE_BATCH_WAIT_MS": "soon"}, "EDGE_BATCH_WAIT_MS='soon' is not valid: must be a valid number"),
        (
            {"EDGE_EXPOSE_METADATA": "perhaps"},
            "EDGE_EXPOSE_METADATA='perhaps' is not valid: must be true or false",
        ),
        ({"AIP_PREDICT_ROUTE": "predict"}, "AIP_PREDICT_ROUTE='predict' is not valid: a route starts with /"),
        ({"AIP_HTTP_PORT": "70000"}, "AIP_HTTP_PORT='70000' is not valid: must be <= 65535"),
    ],
)
def test_a_wrong_variable_is_one_line_naming_it_its_value_and_what_is_allowed(
    environ: dict[str, str], line: str
) -> None:
    with pytest.raises(ValueError) as caught:
        ServerSettings.from_environ(environ)
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


def test_variables_set_the_settings_and_flags_win() -> None:
    environ = {
        "EDGE_MAX_BATCH": "8",
        "EDGE_BATCH_WAIT_MS": "5",
        "EDGE_EXPOSE_METADATA": "off",
        "EDGE_MAX_QUEUE": "",
    }
    settings = ServerSettings.from_environ(environ, max_batch=None, reload_interval=0)
    assert (settings.max_batch, settings.batch_wait, settings.expose_metadata) == (8, 0.005, False)
    assert settings.max_queue == 1024 and settings.reload_interval == 0  # empty is unset
    assert ServerSettings.from_environ(environ, max_batch=2).max_batch == 2
    both = {"EDGE_MODEL_DIR": "mine", "AIP_STORAGE_URI": "gs://bucket/model"}
    assert ServerSettings.from_environ(both).model_uri == "mine"


def test_model_location_follows_aip_storage_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIP_STORAGE_URI", raising=False)
    assert resolve_model_uri(None) == "models"
    monkeypatch.setenv("AIP_STORAGE_URI", "gs://bucket/model")
    assert resolve_model_uri(None) == "gs://bucket/model"
    assert resolve_model_uri("elsewhere") == "elsewhere"


# --- Health around loading -----------------------------------------------------------------------------


def test_health_is_503_until_the_model_has_loaded(tiny_model_dir: Path) -> None:
    release = threading.Event()

    def slow_loader(uri: str) -> Predictor:
        release.wait(30)  # hold the real load back until the test has looked
        return load_from_uri(uri)

    app = create_app(ServerSettings(model_uri=str(tiny_model_dir)), loader=slow_loader)
    with serving(app) as client:
        loading = client.get("/health")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        early = client.post("/predict", json={"instances": [[0] * 784]})
        assert early.status_code == 503
        assert early.headers["Retry-After"] == "1"
        release.set()
        assert app[HOLDER].wait(60)
        ready = client.get("/health")
        assert ready.status_code == 200
        assert ready.json()["model"] == {
            "name": "fashion-mnist",
            "version": "0.0.0-test",
            "verdict": "passed",
        }


def test_health_reports_a_model_that_failed_to_load_without_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing"
    with serving(create_app(ServerSettings(model_uri=str(missing)))) as client:
        assert wait_until(lambda: client.get("/health").json()["status"] != "loading")
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "failed"
    # The reason, with the path, goes to the operator's log, not to whoever probes the server.
    assert str(tmp_path) not in response.text and "/" not in response.json()["error"]
    assert any("does not exist" in r.getMessage() and str(missing) in r.getMessage() for r in caplog.records)


# --- Bad input: one case per row of the table ----------------------------------------------


def _body(instances: Any) -> bytes:
    return json.dumps({"instances": instances}).encode()


GOOD = [0] * 784
BAD_INPUT = [
    # (case, raw body, expected status, instance index named, words in the message)
    ("wrong shape, flat", _body([GOOD, [0] * 783]), 400, 1, "wrong shape"),
    ("wrong shape, rows", _body([[[0] * 27] * 28]), 400, 0, "wrong shape"),
    ("value out of range", _body([GOOD, [0] * 783 + [256]]), 400, 1, "out of range"),
    ("negative value", _body([[[0] * 28] * 27 + [[-1] + [0] * 27]]), 400, 0, "out of range"),
    ("NaN", b'{"instances": [[' + b"0, " * 783 + b"NaN]]}", 400, 0, "NaN"),
    ("infinity", b'{"instances": [[' + b"0, " * 783 + b"Infinity]]}", 400, 0, "infinite"),
    ("wrong type, string pixel", _body([GOOD, ["1"] * 784]), 400, 1, "string"),
    ("wrong type, boolean pixel", _body([[True] * 784]), 400, 0, "boolean"),
    ("wrong type, instance", _body(["a picture"]), 400, 0, "string"),
    (
        "undecodable image",
        _body([{"b64": base64.b64encode(b"not an image").decode()}]),
        400,
        0,
        "PNG or JPEG",
    ),
    ("invalid base64", _body([{"b64": "%%%"}]), 400, 0, "base64"),
    ("image of the wrong size", _body([b64_image(np.zeros((30, 28), np.uint8))]), 400, 0, "28x28"),
    ("empty instances", _body([]), 400, None, "empty"),
    ("no instances", b'{"inputs": []}', 400, None, "unknown field"),
    ("not JSON", b"instances=1", 400, None, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, None, "JSON object"),
    ("too deeply nested", b"[" * 100_000 + b"]" * 100_000, 400, None, "nested"),
    ("too many instances", _body([GOOD] * 65), 413, None, "limit is 64"),
]


@pytest.mark.parametrize(
    ("body", "status", "index", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_gets_a_json_error_naming_the_instance(
    client: Client, body: bytes, status: int, index: int | None, words: str
) -> None:
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status
    assert words in response.json()["error"]
    assert response.json().get("instance") == index
    if index is not None:
        assert response.json()["error"].startswith(f"instances[{index}]")
    # The server is still fine afterwards.
    assert client.post("/predict", json={"instances": [GOOD]}).status_code == 200


@pytest.mark.parametrize(
    "instances",
    [
        [[[7] * 28] * 28],
        [[0.5] * 784, [[255] * 28] * 28, [[1] * 28] * 28],
        [[[0] * 27 + [255.0]] * 28],
    ],
    ids=["28x28 integers", "flat floats with 28x28 integers", "floats at the limit"],
)
def test_numbers_decode_the_same_with_or_without_the_one_call_path(instances: list[Any]) -> None:
    text = json.dumps({"instances": instances}).encode()
    at_once = decode_instances(instances, 64, json_text=text)
    one_by_one = decode_instances(instances, 64)
    assert at_once.dtype == one_by_one.dtype == np.float32
    np.testing.assert_array_equal(at_once, one_by_one)


@pytest.mark.parametrize(
    ("instances", "words"),
    [
        ([[0] * 783 + [1e-3 + 255]], "out of range"),
        ([[0] * 783 + [-1e-9]], "out of range"),
        ([[0] * 783 + [2**64]], "out of range"),
        ([[0] * 783 + [True]], "boolean"),
        ([[[0] * 28] * 27 + [[None] * 28]], "null"),
        ([[0] * 784, [0] * 783], "wrong shape"),
    ],
    ids=["above 255", "below 0", "huge integer", "a boolean among numbers", "nulls", "ragged"],
)
def test_what_the_one_call_path_refuses_gets_the_usual_error(instances: list[Any], words: str) -> None:
    text = json.dumps({"instances": instances}).encode()
    with pytest.raises(InstanceError, match=words):
        decode_instances(instances, 64, json_text=text)


def test_a_lone_request_does_not_wait_for_the_batch_window(predictor: Predictor) -> None:
    # A minute-long window: waiting it out would show in the queue time (and time the request out).
    settings = ServerSettings(batch_wait_ms=60_000, reload_interval=0)
    with serving(create_app(settings, predictor=predictor)) as client:
        response = client.post("/predict", json={"instances": [GOOD]})
    assert response.status_code == 200
    timing = {part.split(";")[0].strip(): part for part in response.headers["Server-Timing"].split(",")}
    assert set(timing) == {"app", "queue", "model"}
    queued_ms = float(timing["queue"].split("dur=")[1].split(";")[0])
    assert queued_ms < 60_000
    assert 'desc="batch 1"' in timing["model"]


def test_body_above_the_limit_is_413(client: Client) -> None:
    response = client.post("/predict", data=b" " * 1_500_001, content_type="application/json")
    assert response.status_code == 413
    assert "1500000 bytes" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/predict", 405),
        ("PUT", "/v1/models/fashion-mnist:predict", 405),
        ("POST", "/health", 405),
        ("GET", "/nowhere", 404),
        ("POST", "/v1/models/x:explain", 404),
    ],
)
def test_unknown_routes_and_methods_are_json_404_and_405(
    client: Client, method: str, path: str, status: int
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert "error" in response.json()


# --- Metrics and OpenAPI ---------------------------------------------------------------------------


def test_metrics_count_requests_latency_classes_and_model(client: Client) -> None:
    client.post("/predict", json={"instances": [GOOD, GOOD]})
    client.post("/predict", json={"instances": []})
    text = client.get("/metrics").text
    assert 'edge_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'edge_http_requests_total{method="POST",route="/predict",status="400"} 1.0' in text
    assert 'edge_http_request_duration_seconds_count{route="/predict"} 2.0' in text
    assert 'edge_http_request_duration_seconds_bucket{le="0.005",route="/predict"}' in text
    predicted = [line for line in text.splitlines() if line.startswith("edge_predictions_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in predicted) == 2.0
    assert 'edge_model_info{name="fashion-mnist",version="0.0.0-test"} 1.0' in text


def test_openapi_document_lists_the_routes(client: Client) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/health", "/predict", "/v1/models/{name}:predict", "/metrics"} <= set(document["paths"])
    schema = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert schema["schema"]["properties"]["instances"]["maxItems"] == 64


# --- A missing or corrupt model ------------------------------------------------------------------------


@pytest.fixture
def corrupt_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Path]:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    variables = next((broken / "serving" / "variables").glob("variables.data-*"))
    variables.write_bytes(b"\0" * 16)
    # Corrupt as saved: the metadata's content hash matches, so TensorFlow itself must notice.
    metadata = json.loads((broken / "metadata.json").read_text())
    metadata["content"] = content_manifest(broken)
    (broken / "metadata.json").write_text(json.dumps(metadata))
    judge(broken)
    yield broken


def test_load_errors_say_what_is_wrong(tmp_path: Path, corrupt_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_from_uri(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"has no metadata\.json"):
        load_from_uri(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not a usable serving export"):
        load_from_uri(str(corrupt_model_dir))


@pytest.mark.parametrize("which", ["missing", "corrupt"])
def test_edge_serve_exits_non_zero_with_one_line(which: str, tmp_path: Path, corrupt_model_dir: Path) -> None:
    model_dir = tmp_path / "missing" if which == "missing" else corrupt_model_dir
    result = CliRunner().invoke(cli_app, ["serve", "--model-dir", str(model_dir)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


# --- The model card ----------------------------------------------------------------------------------


def test_model_card_is_served_when_saved_with_the_model(tmp_path: Path) -> None:
    from edge import modelcard
    from edge.model import ModelParams, build_model, save_model
    from tests.conftest import TINY_MODEL_METADATA

    with_card = tmp_path / "models"
    card = {
        modelcard.HTML_FILE: b"<!DOCTYPE html><title>card</title><h1>Model card</h1>",
        modelcard.MARKDOWN_FILE: b"# Model card\n",
    }
    model = build_model(ModelParams(filters=(8,), dense_units=16))
    save_model(model, str(with_card), dict(TINY_MODEL_METADATA), extra_files=card)
    judge(with_card)
    with serving(create_app(ServerSettings(reload_interval=0), predictor=load_from_uri(str(with_card)))) as c:
        page = c.get("/model-card")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "<h1>Model card</h1>" in page.text
        markdown = c.get("/model-card.md")
        assert markdown.headers["Content-Type"].startswith("text/markdown")
        assert markdown.text == "# Model card\n"
        assert "/model-card" in c.get("/openapi.json").json()["paths"]
    hidden = ServerSettings(reload_interval=0, expose_metadata=False)
    with serving(create_app(hidden, predictor=load_from_uri(str(with_card)))) as c:
        assert c.get("/model-card").status_code == 404


def test_a_model_without_a_card_says_so(tmp_path: Path) -> None:
    from edge.model import ModelParams, build_model, save_model
    from tests.conftest import TINY_MODEL_METADATA

    without_card = tmp_path / "models"
    save_model(
        build_model(ModelParams(filters=(8,), dense_units=16)), str(without_card), dict(TINY_MODEL_METADATA)
    )
    judge(without_card)
    with serving(
        create_app(ServerSettings(reload_interval=0), predictor=load_from_uri(str(without_card)))
    ) as c:
        response = c.get("/model-card")
        assert response.status_code == 404
        assert "without a model card" in response.json()["error"]
