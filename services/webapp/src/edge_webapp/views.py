"""The page people use and the JSON API other software uses; both classify the same way."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from edge_webapp.client import ModelClient, ModelServerError
from edge_webapp.imaging import ImageRejectedError, open_image, png_bytes, to_fashion_mnist

log = logging.getLogger(__name__)

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__, url_prefix="/api")


@dataclass(frozen=True)
class Sample:
    """A Fashion-MNIST test image shipped with the app."""

    id: str
    file: str
    label: str
    test_index: int


@cache
def samples() -> tuple[Sample, ...]:
    """List the sample images from the manifest written by scripts/make_samples.py."""
    text = resources.files("edge_webapp").joinpath("static/samples/samples.json").read_text()
    return tuple(Sample(**entry) for entry in json.loads(text))


def _sample_bytes(sample_id: str) -> bytes:
    for sample in samples():
        if sample.id == sample_id:
            path = resources.files("edge_webapp").joinpath(f"static/samples/{sample.file}")
            return path.read_bytes()
    raise ImageRejectedError(f"There is no sample called {sample_id!r}.", 404)


def classify(data: bytes) -> dict[str, Any]:
    """Convert an upload like Fashion-MNIST and ask the model server; raise with a friendly message."""
    image = to_fashion_mnist(open_image(data, current_app.config["MAX_IMAGE_PIXELS"]))
    png = png_bytes(image)
    client: ModelClient = current_app.extensions["edge_model_client"]
    result = client.predict_png(png)
    result["image"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return result


def _uploaded_bytes() -> bytes | None:
    upload = request.files.get("image")
    if upload is not None and upload.filename:
        data: bytes = upload.read()
        return data
    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        return request.get_data()
    return None


@pages.get("/")
def index() -> ResponseReturnValue:
    """Show the upload form and the samples."""
    return render_template("index.html", samples=samples())


@pages.post("/")
def predict_page() -> ResponseReturnValue:
    """Classify an upload or a sample and show the result on the page."""
    chosen = request.form.get("sample")
    try:
        if chosen:
            data = _sample_bytes(chosen)
        else:
            uploaded = _uploaded_bytes()
            if uploaded is None:
                raise ImageRejectedError("Choose a picture to upload, or pick one of the samples.")
            data = uploaded
        result = classify(data)
    except (ImageRejectedError, ModelServerError) as exc:
        return render_template("index.html", samples=samples(), error=exc.message), exc.status
    return render_template("index.html", samples=samples(), result=result, chosen=chosen)


@pages.get("/model-card")
def model_card() -> ResponseReturnValue:
    """Show the served model's card: lineage, metrics, per class, calibration, robustness, limits."""
    client = current_app.extensions["edge_model_client"]
    if not hasattr(client, "model_card"):
        return render_template("index.html", samples=samples(), error="This backend has no model card."), 404
    try:
        page: str = client.model_card()
    except ModelServerError as exc:
        return render_template("index.html", samples=samples(), error=exc.message), exc.status
    # The card is a whole self-contained page made by the model's own pipeline.
    return page, 200, {"Content-Type": "text/html; charset=utf-8"}


@pages.get("/health")
def health() -> ResponseReturnValue:
    """Say that the webapp itself is up (the model server has its own health route)."""
    return jsonify(status="ok")


@api.post("/predict")
def predict_api() -> ResponseReturnValue:
    """Classify an uploaded picture (multipart field `image`, or the raw body) and return JSON."""
    data = _uploaded_bytes()
    if data is None:
        return jsonify(
            error="Send the picture as the multipart field 'image', "
            "or as the body with an image/* content type."
        ), 400
    try:
        result = classify(data)
    except (ImageRejectedError, ModelServerError) as exc:
        return jsonify(error=exc.message), exc.status
    return jsonify(result)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def register_error_handlers(app: Flask) -> None:
    """Answer errors in JSON on the API and with the page elsewhere."""

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> ResponseReturnValue:
        limit_mb = current_app.config["MAX_CONTENT_LENGTH"] / (1024 * 1024)
        message = f"That file is too large. The limit is {limit_mb:g} MB."
        if _wants_json():
            return jsonify(error=message), 413
        return render_template("index.html", samples=samples(), error=message), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        if _wants_json():
            response = exc.get_response()
            response.set_data(json.dumps({"error": exc.description or exc.name}))
            response.content_type = "application/json"
            return response
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side. Please try again."
        if _wants_json():
            return jsonify(error=message), 500
        return render_template("index.html", samples=samples(), error=message), 500
