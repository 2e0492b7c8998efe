"""The model server: a Flask app speaking Vertex AI's custom-container contract."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge

from edge.serving.metrics import ServingMetrics
from edge.serving.openapi import build_document
from edge.serving.predictor import (
    InstanceError,
    ModelHolder,
    ModelLoadError,
    Predictor,
    TooManyInstancesError,
    decode_instances,
    load_from_uri,
)

log = logging.getLogger(__name__)

NAMED_PREDICT_ROUTE = "/v1/models/<name>:predict"
# Vertex AI refuses online prediction requests above 1.5 MB, so nothing larger can be legitimate.
DEFAULT_MAX_CONTENT_LENGTH = 1_500_000
# 64 images are well under the body limit as numbers and keep one request's latency bounded.
DEFAULT_MAX_INSTANCES = 64
# Gunicorn halts instead of respawning a worker that exits with this code ("failed to boot").
WORKER_BOOT_ERROR = 3


class RequestError(Exception):
    """A request the client must fix; becomes a JSON error with this status."""

    def __init__(self, message: str, status: int = 400, instance: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.instance = instance


def default_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read the settings from the environment: Vertex AI's `AIP_*` variables, then Edge's own."""
    return {
        "MODEL_URI": environ.get("EDGE_MODEL_DIR") or environ.get("AIP_STORAGE_URI") or "models",
        "HEALTH_ROUTE": environ.get("AIP_HEALTH_ROUTE") or "/health",
        "PREDICT_ROUTE": environ.get("AIP_PREDICT_ROUTE") or "/predict",
        "MAX_CONTENT_LENGTH": int(environ.get("EDGE_MAX_REQUEST_BYTES", DEFAULT_MAX_CONTENT_LENGTH)),
        "MAX_INSTANCES": int(environ.get("EDGE_MAX_INSTANCES", DEFAULT_MAX_INSTANCES)),
        # Under gunicorn a model that fails to load must stop the server, not leave it unhealthy.
        "EXIT_ON_LOAD_ERROR": False,
        "MODEL_LOADER": load_from_uri,
        "PREDICTOR": None,
    }


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the server; the model loads in the background while health says 503."""
    app = Flask(__name__)
    # Probabilities keep the model's class order rather than the alphabet's.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.from_mapping(default_config(os.environ))
    if test_config is not None:
        app.config.from_mapping(test_config)

    holder = ModelHolder()
    metrics = ServingMetrics()
    app.extensions["edge_model"] = holder
    app.extensions["edge_metrics"] = metrics

    app.register_blueprint(_build_blueprint(app.config["HEALTH_ROUTE"], app.config["PREDICT_ROUTE"]))
    _register_hooks(app, metrics)
    _register_error_handlers(app)

    predictor: Predictor | None = app.config["PREDICTOR"]
    if predictor is not None:
        _publish(holder, metrics, predictor)
    else:
        _start_loading(app, holder, metrics)
    return app


def _publish(holder: ModelHolder, metrics: ServingMetrics, predictor: Predictor) -> None:
    metrics.model_ready(predictor.metadata)
    holder.set(predictor)


def _start_loading(app: Flask, holder: ModelHolder, metrics: ServingMetrics) -> None:
    uri: str = app.config["MODEL_URI"]
    loader: Callable[[str], Predictor] = app.config["MODEL_LOADER"]
    exit_on_error: bool = app.config["EXIT_ON_LOAD_ERROR"]

    def load() -> None:
        started = time.perf_counter()
        try:
            predictor = loader(uri)
        except ModelLoadError as exc:
            holder.fail(str(exc))
        except Exception as exc:  # anything else is still a model that cannot serve
            holder.fail(f"cannot load the model from {uri}: {exc}")
        else:
            _publish(holder, metrics, predictor)
            log.info(
                "loaded model %s version %s from %s in %.1f s",
                predictor.name,
                predictor.version,
                uri,
                time.perf_counter() - started,
            )
            return
        log.error("error: %s", holder.error)
        if exit_on_error:
            # From a thread, only _exit ends the process; gunicorn then halts on this code.
            os._exit(WORKER_BOOT_ERROR)

    threading.Thread(target=load, name="edge-model-loader", daemon=True).start()


def _build_blueprint(health_route: str, predict_route: str) -> Blueprint:
    bp = Blueprint("serving", __name__)

    @bp.get(health_route, endpoint="health")
    def health() -> ResponseReturnValue:
        holder = _holder()
        if holder.predictor is not None:
            model = holder.predictor.metadata
            return jsonify(status="ok", model={"name": model["name"], "version": model["version"]})
        if holder.error is not None:
            return jsonify(status="failed", error=holder.error), 503
        return jsonify(status="loading"), 503

    @bp.post(predict_route, endpoint="predict")
    def predict() -> ResponseReturnValue:
        return _predict(None)

    @bp.post(NAMED_PREDICT_ROUTE, endpoint="predict_named")
    def predict_named(name: str) -> ResponseReturnValue:
        return _predict(name)

    @bp.get("/metrics", endpoint="metrics")
    def metrics() -> ResponseReturnValue:
        body, content_type = _metrics().render()
        return body, 200, {"Content-Type": content_type}

    @bp.get("/openapi.json", endpoint="openapi")
    def openapi() -> ResponseReturnValue:
        predictor = _holder().predictor
        return jsonify(
            build_document(
                health_route=health_route,
                predict_route=predict_route,
                named_route=NAMED_PREDICT_ROUTE,
                max_instances=current_app.config["MAX_INSTANCES"],
                max_bytes=current_app.config["MAX_CONTENT_LENGTH"],
                model_name=predictor.name if predictor else None,
            )
        )

    return bp


def _holder() -> ModelHolder:
    holder: ModelHolder = current_app.extensions["edge_model"]
    return holder


def _metrics() -> ServingMetrics:
    metrics: ServingMetrics = current_app.extensions["edge_metrics"]
    return metrics


def _parse_body() -> tuple[Any, Any]:
    raw = request.get_data(cache=False)
    if not raw:
        raise RequestError('empty body, send JSON like {"instances": [...]}')
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise RequestError(f"body is not UTF-8 text ({exc.reason})") from exc
    except ValueError as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise RequestError("body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise RequestError('body must be a JSON object like {"instances": [...]}')
    unknown = sorted(set(body) - {"instances", "parameters"})
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; the body has instances and parameters")
    if "instances" not in body:
        raise RequestError('body lacks "instances", a list of images')
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError("parameters must be an object")
    return body["instances"], parameters


def _predict(name: str | None) -> ResponseReturnValue:
    holder = _holder()
    predictor = holder.predictor
    if predictor is None:
        raise RequestError("the model is not loaded yet, retry shortly", status=503)
    if name is not None and name != predictor.name:
        raise NotFound(f"no model named {name!r}; this server serves {predictor.name!r}")
    instances, _parameters = _parse_body()
    try:
        batch = decode_instances(instances, current_app.config["MAX_INSTANCES"])
    except InstanceError as exc:
        raise RequestError(str(exc), instance=exc.index) from exc
    except TooManyInstancesError as exc:
        raise RequestError(str(exc), status=413) from exc
    except ValueError as exc:
        raise RequestError(str(exc)) from exc
    predictions = predictor.predict(batch)
    counter = _metrics().predictions
    for prediction in predictions:
        counter.labels(prediction.label).inc()
    return jsonify(predictions=[p.to_json() for p in predictions], model=predictor.metadata)


def _register_hooks(app: Flask, metrics: ServingMetrics) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Any) -> Any:
        started = g.get("started")
        if started is not None:
            seconds = time.perf_counter() - started
            route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
            metrics.observe_request(route, request.method, response.status_code, seconds)
            # Lets clients and the benchmark see the server-side time apart from the network.
            response.headers["Server-Timing"] = f"app;dur={seconds * 1000:.3f}"
        return response


def _error_response(message: str, status: int, instance: int | None = None) -> Any:
    body: dict[str, Any] = {"error": message}
    if instance is not None:
        body["instance"] = instance
    response = jsonify(body)
    response.status_code = status
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(RequestError)
    def bad_request(exc: RequestError) -> Any:
        return _error_response(exc.message, exc.status, exc.instance)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Any:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return _error_response(f"request body is larger than the limit of {limit} bytes", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        # Keep werkzeug's headers (Allow on 405) but speak JSON like every other answer.
        response = exc.get_response()
        response.set_data(json.dumps({"error": exc.description or exc.name}))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response("internal error, the details are in the server log", 500)
