"""The model server's settings: Vertex AI's `AIP_*` variables first, then Edge's own `EDGE_*`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge import envsettings

# Vertex AI refuses online prediction requests above 1.5 MB, so nothing larger can be legitimate.
DEFAULT_MAX_REQUEST_BYTES = 1_500_000
# 64 images are well under the body limit as numbers and keep one request's latency bounded.
DEFAULT_MAX_INSTANCES = 64


def _route(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("a route starts with /")
    if any(c in raw for c in "{}?# "):
        raise ValueError("a route may not contain {, }, ?, # or spaces")
    return raw


Route = Annotated[str, AfterValidator(_route)]


def usable_cpus() -> int:
    """Return how many CPUs this process may run on (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0))


class ServerSettings(BaseSettings):
    """Everything the server reads from its environment, checked once at start: each field is
    `EDGE_<FIELD>`, unless an alias names the variable (Vertex AI's `AIP_*` contract)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_", env_ignore_empty=True, frozen=True, extra="forbid", validate_by_name=True
    )

    # The flag, else EDGE_MODEL_DIR, else the folder Vertex AI copied the model to.
    model_uri: str = Field(
        default="models", validation_alias=AliasChoices("EDGE_MODEL_DIR", "AIP_STORAGE_URI")
    )
    # Vertex AI's port for the container; when set, `edge serve` listens on every interface.
    http_port: int | None = Field(default=None, ge=1, le=65535, validation_alias="AIP_HTTP_PORT")
    health_route: Route = Field(default="/health", validation_alias="AIP_HEALTH_ROUTE")
    predict_route: Route = Field(default="/predict", validation_alias="AIP_PREDICT_ROUTE")
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1)
    max_instances: int = Field(default=DEFAULT_MAX_INSTANCES, ge=1)
    # Batching: one TensorFlow call on up to max_batch instances, waiting at most batch_wait_ms
    # milliseconds for more while other requests are still being read.
    max_batch: int = Field(default=64, ge=1)
    batch_wait_ms: float = Field(default=2.0, ge=0)
    # Instances allowed to wait for a batch; past it a request gets 503 and Retry-After. At about
    # 1,000 images a second this is one second of work, so a queued request is never very stale.
    max_queue: int = Field(default=1024, ge=1)
    # Batches computed at once, each on one thread (`edge serve` makes TensorFlow compute a call on
    # the calling thread alone): one per core, up to 4, since more would only split the batches.
    inference_threads: int = Field(default_factory=lambda: min(4, usable_cpus()), ge=1)
    # A connection must deliver a request's headers this long after it opens or after the previous
    # answer, else it is closed: slow or idle clients cannot hold the server.
    header_timeout: float = Field(default=5.0, gt=0)
    # ... and its body within this many seconds of the headers.
    body_timeout: float = Field(default=10.0, gt=0)
    # Publish the full metadata (lineage: git remote, params, data versions) at /v1/models/<name>.
    # Turn it off for a public deployment.
    expose_metadata: bool = True
    # Seconds between checks of the model directory for a newly published model; 0 turns it off.
    reload_interval: float = Field(default=2.0, ge=0)
    # Serve a model that failed its test suite, or was never judged, and say so in every answer.
    # Off, such a model is refused at start and by the hot reload.
    allow_failed_model: bool = False

    @property
    def batch_wait(self) -> float:
        """The longest wait for a batch to fill, in seconds."""
        return self.batch_wait_ms / 1000

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Read the settings (default: the process environment); raise SettingsError naming the
        variable when one is malformed. Overrides that are not None win over the environment."""
        return envsettings.read(cls, environ, **overrides)
