"""The model the server holds, shared by the request threads: set once loaded, or why it is not."""

from __future__ import annotations

import threading

from edge.serving.loaded_model import Predictor


class ModelHolder:
    """The predictor once loaded, or why it is not; shared by the request threads."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.predictor: Predictor | None = None
        self.error: str | None = None

    def set(self, predictor: Predictor) -> None:
        """Publish a loaded predictor."""
        self.predictor = predictor
        self._ready.set()

    def fail(self, message: str) -> None:
        """Record why loading failed."""
        self.error = message

    @property
    def ready(self) -> bool:
        """Tell whether a predictor is loaded."""
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the predictor; return whether it is loaded."""
        return self._ready.wait(timeout)
