"""Monitoring settings: where the prediction log goes, how much it keeps, when drift is an alert.

Runtime settings, not experiment settings: they come from `EDGE_MONITOR_*` environment variables
(so the same image is configured by Compose, a laptop shell or a Vertex endpoint's env), are
validated once, and a bad value stops with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge import envsettings

ENV_PREFIX = "EDGE_MONITOR_"


class MonitoringSettings(BaseSettings):
    """Prediction log and drift thresholds; every field is `EDGE_MONITOR_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="forbid"
    )

    # Where the JSONL files go: a local directory or a gs:// prefix. Unset: nothing is logged.
    log: str | None = None
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Of the sampled predictions, the share that also gets a penultimate-layer embedding (a second
    # pass through the network, the log's main cost). The MMD test needs a sample, not every image:
    # 0.15 of a full server window (2,000) is about 300, safely above the 200 it asks for.
    embed_rate: float = Field(default=0.15, ge=0.0, le=1.0)
    # Requests waiting for the writer; beyond this they are dropped (and counted), never waited for.
    queue_size: int = Field(default=10_000, ge=1)
    # A file is written (whole) when it reaches any of these. Records wait at most file_seconds to be
    # written: a report run right after traffic waits for them (the writer's pending notice), so
    # short; twelve small files a minute per server under steady traffic.
    file_records: int = Field(default=5_000, ge=1)
    file_bytes: int = Field(default=8_000_000, ge=1_000)
    file_seconds: float = Field(default=5.0, gt=0)
    # Raw 28x28 pixels in each record: 784 numbers, so off unless asked for.
    log_inputs: bool = False
    # Drift thresholds. KS and PSI are effect sizes, so they do not fire on tiny differences as soon
    # as there is a lot of traffic, as p-values would; PSI 0.2 is the customary "significant shift".
    ks_threshold: float = Field(default=0.1, gt=0, le=1)
    # ...and a KS alert also needs this significance, so a few records cannot raise one by chance.
    ks_pvalue: float = Field(default=0.01, gt=0, lt=1)
    psi_threshold: float = Field(default=0.2, gt=0)
    # The class mix compares counts, so a p-value is the natural scale; the small level keeps the
    # false alarm rate low over many reports.
    chi2_pvalue: float = Field(default=0.001, gt=0, lt=1)
    # MMD's permutation test on embeddings: the p-value below which the embeddings have drifted.
    mmd_pvalue: float = Field(default=0.01, gt=0, lt=1)
    mmd_permutations: int = Field(default=500, ge=20)
    # Fewer recent predictions than this and a report says "not enough data" rather than guessing.
    min_records: int = Field(default=200, ge=10)
    # The model server keeps this many recent records to publish drift gauges on /metrics.
    window: int = Field(default=2_000, ge=10)
    # Seconds between two drift computations in the server (each costs a few tens of milliseconds,
    # and runs only when new predictions came): how far the gauges and the live page lag at most.
    gauge_seconds: float = Field(default=5.0, gt=0)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> MonitoringSettings:
    """Read the settings from `environ` (default: the process environment), with overrides; a
    misspelt variable is an error rather than a setting silently left at its default."""
    source = os.environ if environ is None else environ
    known = {envsettings.variables(MonitoringSettings, name)[0] for name in MonitoringSettings.model_fields}
    unknown = sorted(key for key in source if key.upper().startswith(ENV_PREFIX) and key.upper() not in known)
    if unknown:
        raise envsettings.SettingsError(
            f"{unknown[0]} is not a monitoring setting; the known ones are {', '.join(sorted(known))}"
        )
    return envsettings.read(MonitoringSettings, environ, **overrides)
