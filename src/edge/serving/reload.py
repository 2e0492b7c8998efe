"""Pick up a newly published model without a restart, and never trade a good model for a broken one.

The watcher reads the model directory's metadata.json every few seconds (and at once on `check()`,
which `edge serve` calls on SIGHUP). When it describes a different model, the new one is loaded in
full in a thread beside the old one, which keeps serving meanwhile; the loader's own check (a call
of the serving function) must pass before the swap, a single assignment. A model that fails is
refused with a log line and retried only after REFUSED_RETRY seconds; so is a model that did not
pass its test suite (the verdict in its folder), unless the server was told to serve one anyway. A
model published before it is judged is taken once its verdict says passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge.serving.loaded_model import ModelLoadError, Predictor, metadata_fingerprint

log = logging.getLogger(__name__)

# A refused model is not reloaded on every check: its folder may still be being written.
REFUSED_RETRY = 30.0


class _ReloadMetrics(Protocol):
    def observe_reload(self, outcome: str) -> None: ...


def read_fingerprint(uri: str) -> str | None:
    """Return the fingerprint of the model at `uri` (its metadata and verdict), or None while its
    metadata is unreadable."""
    from edge import model as edge_model
    from edge import verdict

    try:
        # Through the model module: on gs:// the published version is behind a pointer.
        metadata: Any = edge_model.read_metadata(uri)
    except (OSError, ValueError):
        return None
    if not isinstance(metadata, dict):
        return None
    return metadata_fingerprint(metadata, verdict.status_of(verdict.read(uri, metadata)))


class ModelWatcher:
    """Reload the model at `uri` when its metadata changes; swap only a model that loaded fully."""

    def __init__(
        self,
        uri: str,
        *,
        loader: Callable[[str], Predictor],
        current: Callable[[], Predictor | None],
        publish: Callable[[Predictor], None],
        interval: float,
        metrics: _ReloadMetrics | None = None,
    ) -> None:
        self.uri = uri
        self._loader = loader
        self._current = current
        self._publish = publish
        self.interval = interval
        self._metrics = metrics
        self._refused: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self) -> None:
        """Ask for a check now; safe from any thread and from a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Check periodically (if an interval is set) and whenever asked, until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            timeout = self.interval if self.interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self.check_once()
            except Exception:  # the watcher must outlive any surprise
                log.exception("checking %s for a new model failed", self.uri)

    async def check_once(self) -> bool:
        """Load and swap in the model at `uri` if it is new; return whether a new model now serves."""
        async with self._lock:
            current = self._current()
            if current is None:  # the first load is not the watcher's business
                return False
            fingerprint = await asyncio.to_thread(read_fingerprint, self.uri)
            if fingerprint is None or fingerprint == current.fingerprint:
                return False
            refused_at = self._refused.get(fingerprint)
            if refused_at is not None and time.monotonic() - refused_at < REFUSED_RETRY:
                return False
            started = time.perf_counter()
            try:
                candidate = await asyncio.to_thread(self._loader, self.uri)
            except Exception as exc:
                self._refused[fingerprint] = time.monotonic()
                reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                log.error(
                    "refused the new model in %s, still serving %s %s: %s",
                    self.uri,
                    current.name,
                    current.version,
                    reason,
                )
                self._observe("refused")
                return False
            self._refused.pop(fingerprint, None)
            self._publish(candidate)
            log.info(
                "reloaded: now serving %s %s (was %s), loaded in %.1f s",
                candidate.name,
                candidate.version,
                current.version,
                time.perf_counter() - started,
            )
            self._observe("loaded")
            return True

    def _observe(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_reload(outcome)
