"""`edge serve`: check the model, then hand the process over to gunicorn running the server."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=False)

# Threads, not processes: one copy of the model, TensorFlow releases the GIL while it computes,
# and Prometheus metrics stay correct without a multiprocess directory.
WORKER_THREADS = 8
GUNICORN_APP = "edge.serving.app:create_app({'EXIT_ON_LOAD_ERROR': True})"


def resolve_model_uri(model_dir: str | None) -> str:
    """Pick the model location: the flag, then Vertex AI's AIP_STORAGE_URI, then `models`."""
    return model_dir or os.environ.get("AIP_STORAGE_URI") or "models"


def resolve_bind(host: str | None, port: int | None) -> tuple[str, int]:
    """Pick the address: flags first, then Vertex AI's AIP_HTTP_PORT, else 127.0.0.1:8080."""
    aip_port = os.environ.get("AIP_HTTP_PORT")
    if port is None:
        port = int(aip_port) if aip_port else 8080
    if host is None:
        # On Vertex (AIP_HTTP_PORT set) the container must accept outside traffic; on a laptop
        # an unauthenticated server stays private unless asked otherwise.
        host = "0.0.0.0" if aip_port else "127.0.0.1"
    return host, port


def gunicorn_argv(host: str, port: int, threads: int, timeout: int) -> list[str]:
    """Build the gunicorn command line."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        str(threads),
        "--bind",
        bind,
        "--timeout",
        str(timeout),
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        # gunicorn's control socket is one fixed path per user: two servers would fight over it.
        "--no-control-socket",
        GUNICORN_APP,
    ]


@app.command()
def serve(
    model_dir: Annotated[
        str | None,
        typer.Option(
            "--model-dir",
            help="Exported model directory or gs:// URI [default: $AIP_STORAGE_URI, else models]",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            envvar="EDGE_SERVE_HOST",
            help="Address to bind [default: 0.0.0.0 when AIP_HTTP_PORT is set, else 127.0.0.1]",
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [default: $AIP_HTTP_PORT, else 8080]", min=1, max=65535)
    ] = None,
    threads: Annotated[int, typer.Option(help="Request threads", min=1)] = WORKER_THREADS,
    timeout: Annotated[int, typer.Option(help="Seconds before a stuck worker is restarted", min=1)] = 30,
) -> None:
    """Serve the model over HTTP with Vertex AI's health and predict routes."""
    from edge.serving.predictor import ModelLoadError, load_from_uri

    uri = resolve_model_uri(model_dir)
    bind_host, bind_port = resolve_bind(host, port)
    # Load it once here so a missing or corrupt model stops with one line and a non-zero exit,
    # before gunicorn starts a worker that would fail the same way.
    try:
        predictor = load_from_uri(uri)
    except ModelLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"serving {predictor.name} {predictor.version} from {uri} on http://{bind_host}:{bind_port}", err=True
    )
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, EDGE_MODEL_DIR=uri)
    argv = gunicorn_argv(bind_host, bind_port, threads, timeout)
    # exec drops this process's TensorFlow state; gunicorn's worker loads the model afresh.
    os.execve(argv[0], argv, env)
