"""What every command group shares: the console and turning known errors into one clear line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from edge import envsettings
from edge.cloud.errors import CloudError
from edge.data import DataError
from edge.model_tests import QualityGateError

console = Console(stderr=True)
out = Console()

# Errors whose message already says what went wrong and how to fix it.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    QualityGateError,
    ValueError,
    FileNotFoundError,
    CloudError,
)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Print an expected error as one line and exit 1, instead of a traceback."""
    try:
        yield
    except EXPECTED_ERRORS as exc:
        fail(str(exc))


@contextmanager
def cloud_errors() -> Iterator[None]:
    """`friendly_errors`, plus the cloud path's own (CloudError); imports no Google SDK."""
    from edge.cloud.errors import CloudError

    try:
        with friendly_errors():
            yield
    except CloudError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` as an error and exit with `code`."""
    # Escaped: messages quote lists and tables whose brackets are not markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def progress_seconds() -> float:
    """How often `waiting` prints a line without a terminal: $EDGE_PROGRESS_SECONDS, else 30."""
    try:
        return envsettings.environment().progress_seconds
    except envsettings.SettingsError as exc:
        fail(str(exc))


@contextmanager
def waiting(message: str) -> Iterator[Callable[[str], None]]:
    """Show that a long operation runs: a spinner in a terminal; otherwise `message` at once and again
    every EDGE_PROGRESS_SECONDS with the time so far. Yields a function that replaces the message."""
    current = [message]
    if console.is_terminal:
        with console.status(message) as status:

            def update_status(text: str) -> None:
                current[0] = text
                status.update(text)

            yield update_status
        return
    every = progress_seconds()
    start = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            line = f"{current[0]} ({time.monotonic() - start:.0f} s)"
            console.print(escape(line), highlight=False, soft_wrap=True)

    console.print(escape(message), highlight=False, soft_wrap=True)
    ticker = threading.Thread(target=tick, name="edge-progress", daemon=True)
    ticker.start()
    try:
        yield lambda text: current.__setitem__(0, text)
    finally:
        stop.set()
        ticker.join()
