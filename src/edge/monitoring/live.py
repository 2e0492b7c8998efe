"""Monitoring inside the model server: the prediction log, plus drift and class-mix gauges on /metrics.

The server calls `observe` after each prediction; everything else happens off the request path: the
log's writer thread adds the records to a window of recent predictions, and a timer thread scores
the window against the reference profile every `gauge_seconds` when it has changed. The gauges and
the JSON summary (what the webapp's status page shows) are therefore at most that old, and a
request never waits for them.

The window is the last `window` predictions of the served model version, the same window a report
judges by default (`window_label` names it on both). It survives restarts: as soon as the served
version is known (`current`), the timer thread fills the window from the log's newest records of that
version, so a restarted or redeployed server shows the picture it showed before. The served model may
change (a hot reload): when records of a new version arrive, the writer asks `resolve` for that
version's profile and feature extractor and starts a fresh window, which is filled from the log too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from edge.monitoring import drift
from edge.monitoring.log import AnsweredRequest, PredictionLog, Record, recent_records, window_label
from edge.monitoring.profile import ReferenceProfile
from edge.monitoring.settings import MonitoringSettings

log = logging.getLogger(__name__)
# The live gauges run MMD with fewer permutations than a report: enough to flag p < 0.01 every
# 15 seconds at a few tens of milliseconds.
LIVE_PERMUTATIONS = 200
# How often the timer thread looks for a version whose window is still to be filled from the log.
FILL_POLL_SECONDS = 0.25

FeatureExtractor = Callable[[np.ndarray], np.ndarray]
# For a model version: its reference profile and its penultimate-layer feature extractor, if any.
Resolver = Callable[[str], tuple[ReferenceProfile | None, FeatureExtractor | None]]


class ServingMonitor:
    """The log of one server process and the drift gauges computed from its recent predictions."""

    def __init__(
        self,
        settings: MonitoringSettings,
        registry: CollectorRegistry,
        resolve: Resolver,
        current: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings = settings.model_copy(update={"mmd_permutations": LIVE_PERMUTATIONS})
        self._resolve = resolve
        self._current = current or (lambda: None)
        # The version whose window was last filled from the log, and how many records that gave.
        self._filled: str | None = None
        self._from_log = 0
        self.version: str | None = None
        self.profile: ReferenceProfile | None = None
        self._features: FeatureExtractor | None = None
        self._recent: deque[Record] = deque(maxlen=settings.window)
        self._lock = threading.Lock()
        self._changed = False
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self._summary: dict[str, Any] = {"status": "no predictions yet"}
        self.log = PredictionLog(
            settings.log,
            sample_rate=settings.sample_rate,
            queue_size=settings.queue_size,
            file_records=settings.file_records,
            file_bytes=settings.file_bytes,
            file_seconds=settings.file_seconds,
            log_inputs=settings.log_inputs,
            registry=registry,
            embed=self._embed,
            embed_rate=settings.embed_rate,
            on_records=self._on_records,
        )
        self.drift_statistic = Gauge(
            "edge_drift_statistic",
            "Drift statistic of recent predictions against the reference profile, by signal.",
            ["signal"],
            registry=registry,
        )
        self.drift_alert = Gauge(
            "edge_drift_alert",
            "1 when a signal has drifted beyond its threshold, else 0.",
            ["signal"],
            registry=registry,
        )
        self.class_share = Gauge(
            "edge_recent_class_share",
            "Share of each predicted class among the recent predictions.",
            ["class_name"],
            registry=registry,
        )
        self.window_size = Gauge(
            "edge_drift_window_predictions",
            "Recent predictions the drift gauges are computed on.",
            registry=registry,
        )

    def start(self) -> ServingMonitor:
        """Start the writer thread and the timer that refreshes the gauges."""
        self.log.start()
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="edge-drift-gauges", daemon=True)
            self._timer.start()
        return self

    def _tick(self) -> None:
        next_refresh = time.monotonic() + self.settings.gauge_seconds
        while not self._stopping.wait(FILL_POLL_SECONDS):
            try:
                version = self.version or self._current()
                if version is not None and version != self._filled:
                    self.fill_from_log(version)
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.settings.gauge_seconds
                    if self._changed:
                        self._changed = False
                        self.refresh()
            except Exception:  # the gauges go stale; serving and the log carry on
                log.exception("monitoring: could not score the recent predictions")

    def fill_from_log(self, version: str) -> int:
        """Put the log's newest records of `version` in front of the window; return how many.

        This process's own files are left out: their records are in the window already.
        """
        if self.version != version:
            self._switch(version)
        records: list[Record] = []
        if self.settings.log:
            try:
                records = recent_records(
                    self.settings.log, version, self.settings.window, skip_writer=self.log.writer_name
                )
            except Exception as exc:  # an unreadable log: the window starts from live predictions
                log.warning("monitoring: cannot fill the window from %s: %s", self.settings.log, exc)
        with self._lock:
            if self.version != version:  # the model changed meanwhile: that version's turn comes
                return 0
            self._recent = deque([*records, *self._recent], maxlen=self.settings.window)
            self._filled, self._from_log = version, len(records)
        if records:
            self.refresh()
        return len(records)

    def observe(self, answered: AnsweredRequest) -> None:
        """Hand one request's predictions to the log: sampled and queued, never blocking."""
        self.log.submit(answered)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every prediction observed so far to the log and rescore the window; False if late."""
        flushed = self.log.flush(timeout)
        self.refresh()
        return flushed

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending; called when the server stops."""
        self._stopping.set()
        self.log.close(timeout)

    def summary(self) -> dict[str, Any]:
        """The latest drift status and prediction mix, as JSON for the webapp."""
        with self._lock:
            return dict(self._summary)

    def _embed(self, answered: AnsweredRequest) -> np.ndarray | None:
        # Runs on the writer thread, before the records are built: switch models here.
        if answered.version != self.version:
            self._switch(answered.version)
        if self.profile is None or self._features is None or not len(answered.images):
            return None
        return self.profile.project(self._features(answered.images))

    def _switch(self, version: str) -> None:
        try:
            profile, features = self._resolve(version)
        except Exception as exc:  # a model without a usable profile still serves, unmonitored
            log.warning("monitoring: no reference profile for model version %s: %s", version, exc)
            profile, features = None, None
        with self._lock:
            self.version, self.profile, self._features = version, profile, features
            self._recent.clear()
            self._filled, self._from_log = None, 0
            self._summary = {
                "status": "no predictions yet" if profile else "no reference profile",
                "model_version": version,
                "window": self._window(version, []),
            }

    def _window(self, version: str, recent: list[Record]) -> dict[str, Any]:
        """Name the window: the same label a default report gives the same predictions."""
        return {
            "label": window_label(self.settings.window, version),
            "size": self.settings.window,
            "count": len(recent),
            "from_log": min(self._from_log, len(recent)),
            "version": version,
        }

    def _on_records(self, records: list[Record]) -> None:
        with self._lock:
            self._recent.extend(records)
        self._changed = True

    def refresh(self) -> None:
        """Score the recent window now and publish the gauges and the summary."""
        with self._lock:
            profile, version, recent = self.profile, self.version, list(self._recent)
        if profile is None or version is None:
            return
        result = drift.compare(profile, recent, self.settings)
        for name, share in zip(profile.class_names, result.recent_class_mix, strict=False):
            self.class_share.labels(name).set(share)
        self.window_size.set(len(recent))
        for score in result.scores:
            self.drift_statistic.labels(score.signal).set(score.statistic)
            self.drift_alert.labels(score.signal).set(1 if score.alert else 0)
        status = "alert" if result.alert else ("ok" if result.enough else "not enough data")
        with self._lock:
            if self.version != version:  # the model changed while scoring: this summary is stale
                return
            self._summary = {
                "status": status,
                "model_version": version,
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                "class_names": profile.class_names,
                "reference_class_mix": profile.class_mix,
                "window": self._window(version, recent),
                **result.to_dict(),
            }
