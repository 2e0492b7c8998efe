"""`edge serve`: check the model, then serve it in this process (edge.serving.server)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=False)


def resolve_model_uri(model_dir: str | None) -> str:
    """Pick the model location: the flag, then $EDGE_MODEL_DIR, then Vertex AI's AIP_STORAGE_URI,
    then `models`."""
    from edge.serving.settings import ServerSettings

    return model_dir or ServerSettings.from_environ().model_uri


def resolve_bind(host: str | None, port: int | None) -> tuple[str, int]:
    """Pick the address: flags first, then Vertex AI's AIP_HTTP_PORT, else 127.0.0.1:8080."""
    from edge.serving.settings import ServerSettings

    aip_port = ServerSettings.from_environ().http_port
    if port is None:
        port = aip_port or 8080
    if host is None:
        # On Vertex (AIP_HTTP_PORT set) the container must accept outside traffic; on a laptop
        # an unauthenticated server stays private unless asked otherwise.
        host = "0.0.0.0" if aip_port else "127.0.0.1"
    return host, port


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
    max_batch: Annotated[
        int | None,
        typer.Option(help="Instances per call of the model [default: $EDGE_MAX_BATCH, else 64]", min=1),
    ] = None,
    batch_wait_ms: Annotated[
        float | None,
        typer.Option(
            help="Longest wait for a batch to fill, in ms [default: $EDGE_BATCH_WAIT_MS, else 2]", min=0
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(help="Instances waiting before 503 [default: $EDGE_MAX_QUEUE, else 1024]", min=1),
    ] = None,
    reload_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between checks for a new model, 0 = only on SIGHUP "
            "[default: $EDGE_RELOAD_INTERVAL, else 2]",
            min=0,
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option(envvar="EDGE_ACCESS_LOG", help="Log every request to stderr.")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(hidden=True, help="Ignored: the server no longer uses request threads.")
    ] = None,
    allow_failed_model: Annotated[
        bool,
        typer.Option(
            "--allow-failed-model",
            help="Serve a model that failed its test suite or was never judged; /health and every "
            "answer say so [default: $EDGE_ALLOW_FAILED_MODEL, else off]",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a client has to send a request's headers [default: $EDGE_HEADER_TIMEOUT, else 5]",
            min=0.1,
        ),
    ] = None,
) -> None:
    """Serve the model over HTTP with Vertex AI's health and predict routes."""
    import logging

    from edge.monitoring.settings import load_settings
    from edge.serving import server
    from edge.serving.loaded_model import ModelLoadError, compute_each_call_on_one_thread, load_from_uri
    from edge.serving.settings import ServerSettings

    try:
        uri = resolve_model_uri(model_dir)
        bind_host, bind_port = resolve_bind(host, port)
        settings = ServerSettings.from_environ(
            model_uri=uri,
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
            max_queue=max_queue,
            reload_interval=reload_interval,
            header_timeout=timeout,
            allow_failed_model=allow_failed_model or None,
        )
        # The prediction log and drift gauges: EDGE_MONITOR_* (docs/monitoring.md).
        monitoring = load_settings()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    compute_each_call_on_one_thread(settings.inference_threads)
    # A missing or corrupt model stops here with one line and a non-zero exit, before any port opens.
    try:
        predictor = load_from_uri(uri, allow_failed=settings.allow_failed_model)
    except ModelLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if predictor.verdict_status != "passed":
        typer.echo(
            f"warning: serving model {predictor.version}, which did not pass its test suite "
            f"({predictor.verdict.describe() if predictor.verdict else 'never judged'}), "
            "because --allow-failed-model was given",
            err=True,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(
        f"serving {predictor.name} {predictor.version} from {uri} on http://{bind_host}:{bind_port}", err=True
    )
    try:
        server.run(settings, predictor, bind_host, bind_port, access_log=access_log, monitoring=monitoring)
    except OSError as exc:  # the port is taken, or the address is not ours
        typer.echo(f"error: cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc
