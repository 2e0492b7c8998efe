"""Prometheus metrics of one server process, in a registry of its own so each app starts at zero."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

# One image takes a few milliseconds; the fine low buckets show whether we stay there.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    """Requests, latency, predictions by class and the model's identity."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edge_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edge_http_request_duration_seconds",
            "Time spent handling a request inside the server, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "edge_predictions",
            "Instances predicted, by predicted class.",
            ["class_name"],
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "edge_model_loaded",
            "1 once the model is loaded and serving, else 0.",
            registry=self.registry,
        )
        self.model = Info("edge_model", "The served model.", registry=self.registry)
        self.batch_size = Histogram(
            "edge_batch_size",
            "Instances in each call of the serving function.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "edge_inference_duration_seconds",
            "Time of each call of the serving function.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shed = Counter(
            "edge_requests_shed",
            "Prediction requests refused with 503 because the batching queue was full.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "edge_model_reloads",
            "New models found in the model directory, by outcome (loaded or refused).",
            ["outcome"],
            registry=self.registry,
        )

        # Labelled children by their labels: `labels()` takes a lock and builds a key on every call,
        # which at a thousand requests a second is worth skipping.
        self._requests_by: dict[tuple[str, str, int], Any] = {}
        self._latency_by: dict[str, Any] = {}
        self._predictions_by: dict[str, Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its duration."""
        key = (route, method, status)
        counter = self._requests_by.get(key)
        if counter is None:
            counter = self._requests_by[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        histogram = self._latency_by.get(route)
        if histogram is None:
            histogram = self._latency_by[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def observe_predictions(self, labels: list[str]) -> None:
        """Count predicted instances by class."""
        for label in labels:
            counter = self._predictions_by.get(label)
            if counter is None:
                counter = self._predictions_by[label] = self.predictions.labels(label)
            counter.inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one call of the serving function."""
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def observe_reload(self, outcome: str) -> None:
        """Count a reload attempt: `loaded` or `refused`."""
        self.reloads.labels(outcome).inc()

    def model_ready(self, metadata: dict[str, Any]) -> None:
        """Publish the loaded model's name and version."""
        self.model.info({"name": str(metadata["name"]), "version": str(metadata["version"])})
        self.model_loaded.set(1)

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
