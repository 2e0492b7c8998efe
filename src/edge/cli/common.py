"""What every command group shares: the console and turning known errors into one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from edge.cloud.errors import CloudError
from edge.data import DataError
from edge.evaluate import QualityGateError

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
