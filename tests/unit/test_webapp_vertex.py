"""The webapp asking a Vertex AI endpoint: the `:predict` REST call, as a stand-in of Vertex AI sees it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from importlib import resources

import pytest
from PIL import Image

from edge_webapp import create_app
from edge_webapp.views import samples
from tests.standin.server import ApiError, Request, StandIn

ENDPOINT = "projects/edge-test-project/locations/europe-west2/endpoints/123"
PROBABILITIES = {"T-shirt/top": 0.05, "Trouser": 0.9, **{f"c{i}": 0.00625 for i in range(8)}}


@pytest.fixture
def vertex() -> Iterator[StandIn]:
    standin = StandIn("aiplatform").start()

    @standin.route("POST", "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict")
    def predict(request: Request) -> dict[str, object]:
        if request.params["endpoint"] != "123":
            raise ApiError(404, "Endpoint not found.")
        return {
            "predictions": [
                {"label": "Trouser", "class_id": 1.0, "confidence": 0.9, "probabilities": PROBABILITIES}
            ],
            "deployedModelId": "555",
            "model": "projects/edge-test-project/locations/europe-west2/models/edge-fashion-mnist",
            "modelVersionId": "2",
            "modelDisplayName": "fashion-mnist-cnn",
        }

    try:
        yield standin
    finally:
        standin.stop()


def sample_upload() -> dict[str, object]:
    data = resources.files("edge_webapp").joinpath(f"static/samples/{samples()[0].file}").read_bytes()
    return {"image": (io.BytesIO(data), "sample.png")}


def vertex_app(standin: StandIn, endpoint: str = ENDPOINT):  # type: ignore[no-untyped-def]
    return create_app(
        {
            "MODEL_BACKEND": "vertex",
            "VERTEX_ENDPOINT": endpoint,
            "VERTEX_API_ENDPOINT": standin.url,
            "VERTEX_CREDENTIALS": "anonymous",
        }
    )


def test_a_sample_is_classified_through_the_endpoint(vertex: StandIn) -> None:
    response = vertex_app(vertex).test_client().post("/api/predict", data=sample_upload())
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["prediction"]["label"] == "Trouser"
    assert body["model"] == {"name": "fashion-mnist-cnn", "version": "2", "deployed_model_id": "555"}
    (call,) = vertex.log.find(method="POST", path=":predict")
    assert call.path == f"/v1/{ENDPOINT}:predict"
    # What the endpoint received is the 28x28 image the webapp made, as the model server takes it.
    (instance,) = call.body["instances"]
    assert Image.open(io.BytesIO(base64.b64decode(instance["b64"]))).size == (28, 28)


def test_endpoint_errors_read_as_sentences(vertex: StandIn) -> None:
    wrong = "projects/edge-test-project/locations/europe-west2/endpoints/999"
    response = vertex_app(vertex, wrong).test_client().post("/api/predict", data=sample_upload())
    assert response.status_code == 502
    assert "HTTP 404" in response.get_json()["error"]
    vertex.fail_next("POST", ":predict$", ApiError(403, "Permission denied"))
    refused = vertex_app(vertex).test_client().post("/api/predict", data=sample_upload())
    assert "not allowed" in refused.get_json()["error"]


def test_a_bad_endpoint_name_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="projects/PROJECT/locations/REGION/endpoints/ID"):
        create_app(
            {"MODEL_BACKEND": "vertex", "VERTEX_ENDPOINT": "my-endpoint", "VERTEX_CREDENTIALS": "anonymous"}
        )


def test_the_model_server_stays_the_default() -> None:
    app = create_app()
    assert app.config["MODEL_BACKEND"] == "server"
    assert type(app.extensions["edge_model_client"]).__name__ == "ModelClient"


def test_the_environment_sets_the_config_and_a_wrong_variable_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MODEL_RETRIES", "0")
    monkeypatch.setenv("MONITORING_SUMMARY", "")
    app = create_app()
    assert (app.config["MODEL_URL"], app.config["MODEL_RETRIES"]) == ("http://127.0.0.1:9", 0)
    assert app.config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024 and app.config["MONITORING_SUMMARY"] == ""
    monkeypatch.setenv("MODEL_BACKEND", "cloud")
    with pytest.raises(ValueError) as caught:
        create_app()
    assert str(caught.value) == "MODEL_BACKEND='cloud' is not valid: must be 'server' or 'vertex'"
    monkeypatch.delenv("MODEL_BACKEND")
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "ten")
    with pytest.raises(ValueError, match=r"^MODEL_READ_TIMEOUT='ten' is not valid: must be a valid number"):
        create_app()
