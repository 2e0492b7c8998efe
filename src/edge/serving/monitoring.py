"""The model server's side of monitoring: each answered prediction goes to the ServingMonitor.

`install` registers a prediction observer (it only samples and enqueues, on the event loop), the
drift and class-mix gauges in the server's Prometheus registry, `GET /monitoring`, the JSON
summary the webapp's status page reads, and `POST /monitoring/flush`, which writes every prediction
answered so far to the log and rescores the window (`edge monitor simulate` calls it when done).
"""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from edge.monitoring.live import FeatureExtractor, ServingMonitor
from edge.monitoring.log import Predicted
from edge.monitoring.profile import ReferenceProfile, load_profile
from edge.monitoring.settings import MonitoringSettings
from edge.serving.app import HOLDER, METRICS, SETTINGS, PredictionEvent, add_prediction_observer

MONITOR = web.AppKey("edge_monitor", ServingMonitor)
ROUTE = "/monitoring"
FLUSH_ROUTE = "/monitoring/flush"


def install(app: web.Application, settings: MonitoringSettings) -> ServingMonitor:
    """Monitor every prediction `app` answers; start and stop with the app."""
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

    def observe(event: PredictionEvent) -> None:
        monitor.observe(
            Predicted(
                request_id=uuid.uuid4().hex[:16],
                model=event.model_name,
                version=event.model_version,
                latency_ms=event.latency_seconds * 1000,
                images=event.instances,
                class_ids=[p.class_id for p in event.predictions],
                labels=[p.label for p in event.predictions],
                confidences=[p.confidence for p in event.predictions],
            )
        )

    async def start(app: web.Application) -> None:
        monitor.start()

    async def stop(app: web.Application) -> None:
        # Pending records are written before the process exits (SIGTERM included).
        await asyncio.to_thread(monitor.close)

    async def summary(request: web.Request) -> web.Response:
        return web.json_response(request.app[MONITOR].summary())

    async def flush(request: web.Request) -> web.Response:
        # Everything answered so far is written to the log and scored, for a report run right after.
        flushed = await asyncio.to_thread(request.app[MONITOR].flush)
        return web.json_response({"flushed": flushed}, status=200 if flushed else 503)

    add_prediction_observer(app, observe)
    app.router.add_get(ROUTE, summary, name="monitoring")
    app.router.add_post(FLUSH_ROUTE, flush, name="monitoring-flush")
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return monitor
