"""The model server's settings: Vertex AI's `AIP_*` variables first, then Edge's own `EDGE_*`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

# Vertex AI refuses online prediction requests above 1.5 MB, so nothing larger can be legitimate.
DEFAULT_MAX_REQUEST_BYTES = 1_500_000
# 64 images are well under the body limit as numbers and keep one request's latency bounded.
DEFAULT_MAX_INSTANCES = 64

T = TypeVar("T")


def usable_cpus() -> int:
    """Return how many CPUs this process may run on (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server reads from its environment, checked once at start."""

    model_uri: str = "models"
    health_route: str = "/health"
    predict_route: str = "/predict"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_instances: int = DEFAULT_MAX_INSTANCES
    # Batching: one TensorFlow call on up to max_batch instances, waiting at most batch_wait
    # seconds for more while other requests are still being read.
    max_batch: int = 64
    batch_wait: float = 0.002
    # Instances allowed to wait for a batch; past it a request gets 503 and Retry-After. At about
    # 1,000 images a second this is one second of work, so a queued request is never very stale.
    max_queue: int = 1024
    # Batches computed at once, each on one thread (`edge serve` makes TensorFlow compute a call on
    # the calling thread alone): one per core, up to 4, since more would only split the batches.
    inference_threads: int = field(default_factory=lambda: min(4, usable_cpus()))
    # A connection must deliver a request's headers this long after it opens or after the previous
    # answer, else it is closed: slow or idle clients cannot hold the server.
    header_timeout: float = 5.0
    # ... and its body within this many seconds of the headers.
    body_timeout: float = 10.0
    # Publish the full metadata (lineage: git remote, params, data versions) at /v1/models/<name>.
    # Turn it off for a public deployment.
    expose_metadata: bool = True
    # Seconds between checks of the model directory for a newly published model; 0 turns it off.
    reload_interval: float = 2.0
    # Serve a model that failed its test suite, or was never judged, and say so in every answer.
    # Off, such a model is refused at start and by the hot reload.
    allow_failed_model: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> ServerSettings:
        """Read the settings; raise ValueError naming the variable when one is malformed."""
        values: dict[str, Any] = {}

        def take(name: str, key: str, parse: Callable[[str], T]) -> None:
            raw = environ.get(name)
            if raw is None or raw == "":
                return
            try:
                values[key] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not valid: {exc}") from exc

        take("EDGE_MODEL_DIR", "model_uri", str)
        if "model_uri" not in values:
            take("AIP_STORAGE_URI", "model_uri", str)
        take("AIP_HEALTH_ROUTE", "health_route", _route)
        take("AIP_PREDICT_ROUTE", "predict_route", _route)
        take("EDGE_MAX_REQUEST_BYTES", "max_request_bytes", _positive_int)
        take("EDGE_MAX_INSTANCES", "max_instances", _positive_int)
        take("EDGE_MAX_BATCH", "max_batch", _positive_int)
        take("EDGE_BATCH_WAIT_MS", "batch_wait", lambda raw: _non_negative(raw) / 1000)
        take("EDGE_MAX_QUEUE", "max_queue", _positive_int)
        take("EDGE_INFERENCE_THREADS", "inference_threads", _positive_int)
        take("EDGE_HEADER_TIMEOUT", "header_timeout", _positive)
        take("EDGE_BODY_TIMEOUT", "body_timeout", _positive)
        take("EDGE_EXPOSE_METADATA", "expose_metadata", _boolean)
        take("EDGE_RELOAD_INTERVAL", "reload_interval", _non_negative)
        take("EDGE_ALLOW_FAILED_MODEL", "allow_failed_model", _boolean)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown server settings: {sorted(unknown)}")
        return cls(**values)


def _route(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("a route starts with /")
    if any(c in raw for c in "{}?# "):
        raise ValueError("a route may not contain {, }, ?, # or spaces")
    return raw


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a number above 0")
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("expected a number of at least 0")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")
