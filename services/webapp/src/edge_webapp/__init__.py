"""Edge's demo webapp: upload a picture of a garment and see what the model thinks of it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from PIL import Image

from edge_webapp.client import ModelClient

# A phone photo is a few MB; 10 MB leaves room without inviting abuse.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# 12 megapixels is a phone photo; the model sees 28x28, so more buys nothing but memory. A bigger
# picture is refused from its header, before it is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 12_000_000


def default_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read the settings from the environment."""
    return {
        "MODEL_URL": environ.get("MODEL_URL", "http://127.0.0.1:8080"),
        # The model server's AIP_PREDICT_ROUTE, when it is not the default.
        "MODEL_PREDICT_ROUTE": environ.get("MODEL_PREDICT_ROUTE", "/predict"),
        "MODEL_CONNECT_TIMEOUT": float(environ.get("MODEL_CONNECT_TIMEOUT", "2")),
        "MODEL_READ_TIMEOUT": float(environ.get("MODEL_READ_TIMEOUT", "10")),
        "MODEL_RETRIES": int(environ.get("MODEL_RETRIES", "2")),
        "MAX_CONTENT_LENGTH": int(environ.get("MAX_CONTENT_LENGTH", DEFAULT_MAX_UPLOAD_BYTES)),
        "MAX_IMAGE_PIXELS": int(environ.get("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)),
        # `server` (the model server at MODEL_URL) or `vertex` (a Vertex AI endpoint: edge_webapp.vertex).
        "MODEL_BACKEND": environ.get("MODEL_BACKEND", "server"),
        "VERTEX_ENDPOINT": environ.get("VERTEX_ENDPOINT", ""),
        "VERTEX_API_ENDPOINT": environ.get("VERTEX_API_ENDPOINT", ""),
        "VERTEX_CREDENTIALS": environ.get("VERTEX_CREDENTIALS", "default"),
        # The /monitoring page's summary: a URL or a summary.json file [default: MODEL_URL/monitoring].
        "MONITORING_SUMMARY": environ.get("MONITORING_SUMMARY", ""),
    }


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the webapp."""
    app = Flask(__name__)
    app.config.from_mapping(default_config(os.environ))
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Pillow's own bomb guard is process-wide; align it with ours (it errors at twice this).
    Image.MAX_IMAGE_PIXELS = app.config["MAX_IMAGE_PIXELS"]
    app.extensions["edge_model_client"] = ModelClient(
        app.config["MODEL_URL"],
        connect_timeout=app.config["MODEL_CONNECT_TIMEOUT"],
        read_timeout=app.config["MODEL_READ_TIMEOUT"],
        retries=app.config["MODEL_RETRIES"],
        predict_path=app.config["MODEL_PREDICT_ROUTE"],
    )
    if app.config["MODEL_BACKEND"] == "vertex":
        from edge_webapp.vertex import VertexClient

        app.extensions["edge_model_client"] = VertexClient.from_config(app.config)
    elif app.config["MODEL_BACKEND"] != "server":
        raise ValueError(f"MODEL_BACKEND={app.config['MODEL_BACKEND']!r}: use server or vertex")

    from edge_webapp import views
    from edge_webapp.monitoring import monitoring

    app.register_blueprint(views.pages)
    app.register_blueprint(monitoring)
    app.register_blueprint(views.api)
    views.register_error_handlers(app)
    return app
