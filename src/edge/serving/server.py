"""Run the model server in this process until SIGTERM or SIGINT; SIGHUP checks for a new model."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from edge.monitoring.settings import MonitoringSettings
from edge.serving.app import WATCHER, create_app
from edge.serving.loaded_model import Predictor
from edge.serving.settings import ServerSettings

log = logging.getLogger(__name__)

# Vertex AI sends SIGTERM and waits before SIGKILL; in-flight requests get this long to finish.
SHUTDOWN_SECONDS = 10.0


class QuietBadRequests(logging.Filter):
    """Log a malformed request as one line, not a traceback: it is the client's fault, and an
    attacker must not be able to fill the log at a few hundred bytes a request.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # Read the message before replacing what it is made of.
            message = record.getMessage()
            lines = str(exc.message).strip().splitlines()
            record.msg, record.args = "%s: %s", (message, lines[0] if lines else exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def run(
    settings: ServerSettings,
    predictor: Predictor,
    host: str,
    port: int,
    *,
    access_log: bool = False,
    monitoring: MonitoringSettings | None = None,
) -> None:
    """Serve `predictor` on host:port until a stop signal; with `monitoring`, log and watch for drift."""
    app = create_app(settings, predictor=predictor, monitoring=monitoring)
    asyncio.run(_serve(app, host, port, access_log))


async def _serve(app: web.Application, host: str, port: int, access_log: bool) -> None:
    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("edge.serving.access") if access_log else None,
        shutdown_timeout=SHUTDOWN_SECONDS,
    )
    await runner.setup()
    # A deep backlog rides out bursts of new connections (a load balancer's or a benchmark's).
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[WATCHER].check)
    log.info("listening on http://%s:%d", host, port)
    try:
        await stop.wait()
        log.info("stopping: finishing the requests in flight")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
