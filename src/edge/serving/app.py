"""The model server: an asyncio HTTP app speaking Vertex AI's custom-container contract.

One event loop reads and validates requests; a bounded batching queue groups the valid instances
of concurrent requests into one call of the exported serving function, which runs in its own
thread. Connections cost no thread, so slow or idle clients cannot hold up anyone else, and they
are cut by the header and body timeouts.

Hooks for other components: `add_prediction_observer(app, callback)` is called with an
`AnsweredRequest` after each answered prediction request (how monitoring is wired in, see
`create_app(monitoring=...)`), and `app[METRICS].registry` is the Prometheus registry `/metrics`
renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web

from edge.monitoring.log import AnsweredRequest
from edge.monitoring.settings import MonitoringSettings
from edge.serving.batching import Batcher, BatchResult, QueueFullError
from edge.serving.instances import InstanceError, TooManyInstancesError, decode_instances
from edge.serving.loaded_model import ModelLoadError, Prediction, Predictor, load_from_uri
from edge.serving.metrics import ServingMetrics
from edge.serving.model_holder import ModelHolder
from edge.serving.openapi import build_document
from edge.serving.reload import ModelWatcher
from edge.serving.settings import ServerSettings

if TYPE_CHECKING:
    from edge.monitoring.live import ServingMonitor

log = logging.getLogger(__name__)

# A model name never holds "/" or ":", so /v1/models/<name>:predict and /v1/models/<name> stay apart.
NAMED_PREDICT_ROUTE = "/v1/models/{name:[^{}/:]+}:predict"
METADATA_ROUTE = "/v1/models/{name:[^{}/:]+}"
MODEL_CARD_ROUTE = "/model-card"
# Seconds a shed client is asked to wait: about one full queue's worth of work.
RETRY_AFTER_SECONDS = 1

Loader = Callable[[str], Predictor]


PredictionObserver = Callable[[AnsweredRequest], None]

SETTINGS = web.AppKey("edge_settings", ServerSettings)
HOLDER = web.AppKey("edge_model", ModelHolder)
METRICS = web.AppKey("edge_metrics", ServingMetrics)
BATCHER = web.AppKey("edge_batcher", Batcher)
OBSERVERS = web.AppKey("edge_observers", list)
LOADER = web.AppKey("edge_loader", object)


class RequestError(Exception):
    """A request the client must fix; becomes a JSON error with this status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        instance: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.instance = instance
        self.headers = headers or {}


def add_prediction_observer(app: web.Application, observer: PredictionObserver) -> None:
    """Call `observer` after each answered prediction request, on the event loop.

    It must return quickly and never block (hand slow work to a queue of its own); an exception
    it raises is logged and does not affect the answer.
    """
    app[OBSERVERS].append(observer)


def create_app(
    settings: ServerSettings | None = None,
    *,
    predictor: Predictor | None = None,
    loader: Loader | None = None,
    monitoring: MonitoringSettings | None = None,
) -> web.Application:
    """Create the server; without `predictor`, the model loads in the background while health says 503.

    With `monitoring`, every answered prediction goes to a `ServingMonitor` (edge.monitoring.live).
    """
    settings = settings or ServerSettings.from_environ({})
    if loader is None:
        loader = functools.partial(load_from_uri, allow_failed=settings.allow_failed_model)
    app = web.Application(
        client_max_size=settings.max_request_bytes,
        middlewares=[_timing_and_errors],
        handler_args={
            "keepalive_timeout": settings.header_timeout,
            # The default would keep reading an unread body of a closed request for 10 s.
            "lingering_time": 1.0,
        },
    )
    holder = ModelHolder()
    metrics = ServingMetrics()
    app[SETTINGS] = settings
    app[HOLDER] = holder
    app[METRICS] = metrics
    app[OBSERVERS] = []
    app[LOADER] = loader
    app[BATCHER] = Batcher(
        _run_model,
        lambda: holder.predictor,
        max_batch=settings.max_batch,
        max_wait=settings.batch_wait,
        max_queue=settings.max_queue,
        workers=settings.inference_threads,
        on_batch=metrics.observe_batch,
    )
    if predictor is not None:
        _publish(app, predictor)

    app.router.add_get(settings.health_route, _health, name="health")
    app.router.add_post(settings.predict_route, _predict, name="predict", expect_handler=_expect_continue)
    app.router.add_post(NAMED_PREDICT_ROUTE, _predict, name="predict_named", expect_handler=_expect_continue)
    app.router.add_get(METADATA_ROUTE, _metadata, name="metadata")
    app.router.add_get(MODEL_CARD_ROUTE, _model_card, name="model_card")
    app.router.add_get(MODEL_CARD_ROUTE + ".md", _model_card, name="model_card_markdown")
    app.router.add_get("/metrics", _metrics, name="metrics")
    app.router.add_get("/openapi.json", _openapi, name="openapi")
    app.on_startup.append(_start)
    app.cleanup_ctx.append(_watch_model_dir)
    app.on_cleanup.append(_stop)
    if monitoring is not None:
        _monitor(app, monitoring)
    return app


def _run_model(predictor: Predictor | None, batch: np.ndarray) -> np.ndarray:
    if predictor is None:  # cannot happen: requests are refused until a model is loaded
        raise RuntimeError("no model loaded")
    return predictor.serve(batch)


def _publish(app: web.Application, predictor: Predictor) -> None:
    app[METRICS].model_ready(predictor.metadata)
    app[HOLDER].set(predictor)
    # A loaded model is some 400,000 long-lived Python objects, TensorFlow's included. Left to the
    # cyclic garbage collector, every full collection walks them all with the GIL held, which held
    # each request in flight for up to a few hundred ms (p99 at concurrency 32: 236 ms, 69 ms frozen).
    # Frozen, they are never walked again; a reload first thaws them, so the old model's cycles go.
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _start(app: web.Application) -> None:
    app[BATCHER].start()
    if app[HOLDER].predictor is None:
        asyncio.get_running_loop().create_task(_load_in_background(app), name="edge-model-loader")


async def _stop(app: web.Application) -> None:
    await app[BATCHER].stop()


async def _load_in_background(app: web.Application) -> None:
    uri = app[SETTINGS].model_uri
    loader: Loader = app[LOADER]  # type: ignore[assignment]
    started = time.perf_counter()
    try:
        predictor = await asyncio.to_thread(loader, uri)
    except ModelLoadError as exc:
        app[HOLDER].fail(str(exc))
    except Exception as exc:  # anything else is still a model that cannot serve
        app[HOLDER].fail(f"cannot load the model from {uri}: {exc}")
    else:
        _publish(app, predictor)
        log.info(
            "loaded model %s version %s from %s in %.1f s",
            predictor.name,
            predictor.version,
            uri,
            time.perf_counter() - started,
        )
        return
    log.error("error: %s", app[HOLDER].error)


async def _watch_model_dir(app: web.Application) -> Any:
    """Run the reload watcher for the app's lifetime (cleanup_ctx: started, then stopped)."""
    settings = app[SETTINGS]
    watcher = ModelWatcher(
        settings.model_uri,
        loader=app[LOADER],  # type: ignore[arg-type]
        current=lambda: app[HOLDER].predictor,
        publish=lambda predictor: _publish(app, predictor),
        interval=settings.reload_interval,
        metrics=app[METRICS],
    )
    app[WATCHER] = watcher
    task = asyncio.get_running_loop().create_task(watcher.run(), name="edge-model-watcher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


WATCHER = web.AppKey("edge_watcher", ModelWatcher)


# --- Monitoring -----------------------------------------------------------------------------------

MONITOR: web.AppKey[ServingMonitor] = web.AppKey("edge_monitor")
MONITORING_ROUTE = "/monitoring"
MONITORING_FLUSH_ROUTE = "/monitoring/flush"


def _monitor(app: web.Application, settings: MonitoringSettings) -> None:
    """Hand every answered prediction to a ServingMonitor, which logs it and scores drift.

    The observer only samples and enqueues, on the event loop; the monitor's gauges join /metrics.
    `GET /monitoring` is the JSON summary the webapp's status page reads, and `POST /monitoring/flush`
    writes every prediction answered so far to the log and rescores the window (`edge monitor
    simulate` calls it when done).
    """
    from edge.monitoring.live import FeatureExtractor, ServingMonitor
    from edge.monitoring.profile import ReferenceProfile, load_profile

    model_uri = app[SETTINGS].model_uri

    def resolve(version: str) -> tuple[ReferenceProfile | None, FeatureExtractor | None]:
        # Called on the log's writer thread when a new model version shows up (start, hot reload).
        predictor = app[HOLDER].predictor
        current = predictor is not None and predictor.version == version
        features = predictor.embed if current and predictor is not None else None
        return load_profile(model_uri), features

    def current() -> str | None:
        # The served version once the model is loaded: its window is filled from the log then.
        predictor = app[HOLDER].predictor
        return predictor.version if predictor is not None else None

    monitor = ServingMonitor(settings, app[METRICS].registry, resolve, current)
    app[MONITOR] = monitor

    async def start(app: web.Application) -> None:
        monitor.start()

    async def stop(app: web.Application) -> None:
        # Pending records are written before the process exits (SIGTERM included).
        await asyncio.to_thread(monitor.close)

    add_prediction_observer(app, monitor.observe)
    app.router.add_get(MONITORING_ROUTE, _monitoring_summary, name="monitoring")
    app.router.add_post(MONITORING_FLUSH_ROUTE, _monitoring_flush, name="monitoring-flush")
    app.on_startup.append(start)
    app.on_cleanup.append(stop)


async def _monitoring_summary(request: web.Request) -> web.Response:
    return web.json_response(request.app[MONITOR].summary())


async def _monitoring_flush(request: web.Request) -> web.Response:
    # Everything answered so far is written to the log and scored, for a report run right after.
    flushed = await asyncio.to_thread(request.app[MONITOR].flush)
    return web.json_response({"flushed": flushed}, status=200 if flushed else 503)


# --- Routes ---------------------------------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    if holder.predictor is not None:
        model = holder.predictor
        health: dict[str, Any] = {"status": "ok", "model": model.model_json()}
        if model.verdict_status != "passed":
            health["warning"] = _not_passed_warning(model)
        return _json(health)
    if holder.error is not None:
        # The reason (with paths) is in the server log; a health probe's body is not the place.
        return _json({"status": "failed", "error": "the model could not be loaded; see the server log"}, 503)
    return _json({"status": "loading"}, 503)


def _not_passed_warning(model: Predictor) -> str:
    judged = model.verdict.describe() if model.verdict else f"model {model.version} was never judged"
    return f"{judged}; it is served only because the server was started with --allow-failed-model"


async def _metadata(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].expose_metadata:
        raise RequestError("this server does not publish model metadata", 404)
    predictor = _model_for(request)
    return _json(predictor.metadata)


async def _model_card(request: web.Request) -> web.Response:
    """The served model's card: self-contained HTML at /model-card, Markdown at /model-card.md."""
    from edge import modelcard

    if not request.app[SETTINGS].expose_metadata:
        # The card shows the lineage, as /v1/models/<name> does.
        raise RequestError("this server does not publish model metadata", 404)
    predictor = request.app[HOLDER].predictor
    if predictor is None:
        raise RequestError("no model is loaded yet; see /health", 503)
    markdown = request.path.endswith(".md")
    text = predictor.card.get(modelcard.MARKDOWN_FILE if markdown else modelcard.HTML_FILE)
    if text is None:
        raise RequestError("this model was saved without a model card (trained before cards existed)", 404)
    if predictor.verdict_status != "passed":
        # The card was made at training time; the verdict came after: put it first.
        warning = _not_passed_warning(predictor)
        text = (
            f"> **Warning:** {warning}\n\n{text}"
            if markdown
            else text.replace(
                "<body>", f'<body><p role="alert"><strong>Warning:</strong> {escape(warning)}</p>', 1
            )
        )
    content_type = "text/markdown" if markdown else "text/html"
    return web.Response(text=text, content_type=content_type, charset="utf-8")


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _openapi(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    predictor = request.app[HOLDER].predictor
    return _json(
        build_document(
            health_route=settings.health_route,
            predict_route=settings.predict_route,
            named_route="/v1/models/{name}:predict",
            metadata_route="/v1/models/{name}" if settings.expose_metadata else None,
            max_instances=settings.max_instances,
            max_bytes=settings.max_request_bytes,
            model_name=predictor.name if predictor else None,
        )
    )


def _model_for(request: web.Request) -> Predictor:
    predictor = request.app[HOLDER].predictor
    if predictor is None:
        raise RequestError(
            "the model is not loaded yet, retry shortly",
            503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    name = request.match_info.get("name")
    if name is not None and name != predictor.name:
        raise RequestError(f"no model named {name!r}; this server serves {predictor.name!r}", 404)
    return predictor


async def _predict(request: web.Request) -> web.Response:
    started = request[STARTED]
    app = request.app
    settings = app[SETTINGS]
    _model_for(request)
    batcher: Batcher[Predictor | None] = app[BATCHER]
    with batcher.arriving():
        raw = await _read_body(request, settings)
        instances = _parse_body(raw)
        try:
            batch = decode_instances(instances, settings.max_instances, json_text=raw)
        except InstanceError as exc:
            raise RequestError(str(exc), instance=exc.index) from exc
        except TooManyInstancesError as exc:
            raise RequestError(str(exc), status=413) from exc
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
    try:
        result: BatchResult[Predictor | None] = await batcher.submit(batch)
    except QueueFullError as exc:
        app[METRICS].shed.inc()
        raise RequestError(
            "the server is busy, retry shortly", 503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from exc
    predictor = result.model
    assert predictor is not None
    predictions = predictor.to_predictions(result.rows)
    app[METRICS].observe_predictions([prediction.label for prediction in predictions])
    body = {
        "predictions": [p.to_json() for p in predictions],
        "model": predictor.model_json(),
    }
    _notify(app, predictor, batch, predictions, time.perf_counter() - started, result.batch_size)
    response = _json(body)
    # What the time inside the server went to: waiting for a batch, and the model call (batch size
    # in its description). The middleware adds the whole, app.
    response.headers["Server-Timing"] = (
        f"queue;dur={result.queued_seconds * 1000:.3f}, "
        f'model;dur={result.inference_seconds * 1000:.3f};desc="batch {result.batch_size}"'
    )
    return response


def _notify(
    app: web.Application,
    predictor: Predictor,
    batch: np.ndarray,
    predictions: list[Prediction],
    latency: float,
    batch_size: int,
) -> None:
    observers: list[PredictionObserver] = app[OBSERVERS]
    if not observers:
        return
    answered = AnsweredRequest(
        request_id=uuid.uuid4().hex[:16],
        model=predictor.name,
        version=predictor.version,
        latency_ms=latency * 1000,
        images=batch,
        class_ids=[p.class_id for p in predictions],
        labels=[p.label for p in predictions],
        confidences=[p.confidence for p in predictions],
        batch_size=batch_size,
    )
    for observer in observers:
        try:
            observer(answered)
        except Exception:
            log.exception("prediction observer %r failed", observer)


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` (curl sends it), refusing an oversized body before it is sent."""
    limit = request.app[SETTINGS].max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        response = _error(f"request body is larger than the limit of {limit} bytes", 413)
        response.force_close()
        return response
    if request.headers.get("Expect", "").lower() != "100-continue":
        return _error("the only Expect this server knows is 100-continue", 417)
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None


async def _read_body(request: web.Request, settings: ServerSettings) -> bytes:
    limit = settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if request.content.is_eof():
        # The whole body came with the headers (the common case): there is nothing to time out.
        return await request.read()
    try:
        async with asyncio.timeout(settings.body_timeout):
            # aiohttp counts the bytes as they come, chunked or not, and stops past the limit.
            return await request.read()
    except TimeoutError as exc:
        raise RequestError(f"the body did not arrive within {settings.body_timeout:g} s", 408) from exc


def _parse_body(raw: bytes) -> Any:
    if not raw:
        raise RequestError('empty body, send JSON like {"instances": [...]}')
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None  # orjson is strict (no NaN, no huge integers): the standard parser decides
    try:
        if body is None:
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
    if not isinstance(body.get("parameters", {}), dict):
        raise RequestError("parameters must be an object")
    return body["instances"]


# --- Timing, metrics and errors for every route ---------------------------------------------------

STARTED = web.RequestKey("edge_started", float)


def _json(body: Any, status: int = 200) -> web.Response:
    # Probabilities keep the model's class order rather than the alphabet's.
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(message: str, status: int, instance: int | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if instance is not None:
        body["instance"] = instance
    return _json(body, status)


@web.middleware
async def _timing_and_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    request[STARTED] = started
    response: web.StreamResponse
    try:
        response = await handler(request)
    except RequestError as exc:
        response = _error(exc.message, exc.status, exc.instance)
        response.headers.update(exc.headers)
        if exc.status in (408, 413):
            # The rest of the body may still be on its way: do not read it, close.
            response.force_close()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_request_bytes
        response = _error(f"request body is larger than the limit of {limit} bytes", 413)
        response.force_close()
    except web.HTTPException as exc:
        # Keep aiohttp's headers (Allow on 405) but speak JSON like every other answer.
        response = _error(exc.reason if exc.status == 405 else _http_message(exc), exc.status)
        for header in ("Allow",):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = _error("internal error, the details are in the server log", 500)
    seconds = time.perf_counter() - started
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "<unmatched>"
    request.app[METRICS].observe_request(route, request.method, response.status, seconds)
    # Lets clients and the benchmark see the server-side time apart from the network.
    parts = response.headers.get("Server-Timing")
    response.headers["Server-Timing"] = f"app;dur={seconds * 1000:.3f}" + (f", {parts}" if parts else "")
    return response


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "no such route; see /openapi.json"
    return exc.reason
