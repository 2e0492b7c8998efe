"""Edge's demo webapp: upload a picture of a garment and see what the model thinks of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from PIL import Image

from edge_webapp.client import ModelClient
from edge_webapp.settings import default_config


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the webapp."""
    app = Flask(__name__)
    app.config.from_mapping(default_config())
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
