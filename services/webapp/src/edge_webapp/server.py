"""Serve the Flask app from an asyncio front that reads each request in full before a thread runs it.

aiohttp parses HTTP on an event loop: a slow or stalled client holds a socket there, never one of
the app's threads, and is cut by the header and body timeouts. Only a complete request, its body
spooled to a temporary file past half a megabyte, is handed to a thread running the WSGI app.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from multidict import CIMultiDict

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Bodies above this wait on disk, so concurrent uploads cannot add up in memory.
SPOOL_BYTES = 512 * 1024
READ_CHUNK = 64 * 1024
# aiohttp sets these itself from the body it sends.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class QuietBadRequests(logging.Filter):
    """Log a malformed request as one line, not a traceback: it is the client's fault, and an
    attacker must not be able to fill the log at a few hundred bytes a request.

    Its twin is in src/edge/serving/server.py:
    the webapp's package must not depend on this one (nor this one on the webapp's), as each
    image installs only its own.
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


class WSGIFront:
    """An aiohttp handler running a WSGI app in a thread pool on fully read requests."""

    def __init__(self, app: WSGIApp, *, threads: int, max_body: int, body_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edge-webapp")

    def close(self) -> None:
        """Stop the threads once their requests are done."""
        self._pool.shutdown(wait=True)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer `Expect: 100-continue`, refusing an oversized body before it is sent."""
        if request.content_length is not None and request.content_length > self.max_body:
            return _refuse(413, "Request body too large")
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _refuse(417, "The only Expect this server knows is 100-continue")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > self.max_body:
            return _refuse(413, "Request body too large")
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._read_body(request)
        except TimeoutError:
            return _refuse(408, "The request body did not arrive in time")
        if body is None:
            return _refuse(413, "Request body too large")
        environ = _environ(request, body)
        loop = asyncio.get_running_loop()
        status, headers, chunks = await loop.run_in_executor(self._pool, self._run, environ)
        response = web.Response(status=status, body=chunks)
        response.headers.clear()
        response.headers.extend(headers)
        return response

    async def _read_body(self, request: web.Request) -> tempfile.SpooledTemporaryFile[bytes] | None:
        # Not a with-block: the file becomes wsgi.input and _run closes it after the app.
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        size = 0
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > self.max_body:  # chunked bodies announce no length: count as they come
                spool.close()
                return None
            spool.write(chunk)
        spool.seek(0)
        return spool

    def _run(self, environ: dict[str, Any]) -> tuple[int, CIMultiDict[str], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; Flask never uses it

        try:
            result = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            environ["wsgi.input"].close()
        status, raw_headers = started
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in raw_headers:
            if name.lower() not in _HOP_BY_HOP:
                headers.add(name, value)
        return int(status.split(" ", 1)[0]), headers, body


def _refuse(status: int, message: str) -> web.Response:
    response = web.Response(status=status, text=message)
    response.force_close()  # the rest of the body may still be on its way
    return response


def _environ(request: web.Request, body: Any) -> dict[str, Any]:
    # rel_url, not raw_path: a request line may carry an absolute URL (GET http://host/path).
    raw_path, query = request.rel_url.raw_path, request.rel_url.raw_query_string
    host, port = _server_address(request)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # WSGI wants the decoded path's bytes as latin-1 text (PEP 3333).
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REMOTE_ADDR": request.remote or "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            continue  # set below from what was actually read
        else:
            key = f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    body.seek(0, io.SEEK_END)
    environ["CONTENT_LENGTH"] = str(body.tell())
    body.seek(0)
    return environ


def _server_address(request: web.Request) -> tuple[str, int]:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return "localhost", 0


def build(
    app: WSGIApp, *, threads: int, max_body: int, header_timeout: float, body_timeout: float
) -> web.Application:
    """Return an aiohttp application that hands every request to `app`."""
    front = WSGIFront(app, threads=threads, max_body=max_body, body_timeout=body_timeout)
    server = web.Application(
        # The front counts the body itself, so aiohttp's own limit is not the one that applies.
        client_max_size=max_body + 1,
        handler_args={"keepalive_timeout": header_timeout, "lingering_time": 1.0},
    )
    server.router.add_route("*", "/{tail:.*}", front, expect_handler=front.expect)

    async def stop_threads(_app: web.Application) -> None:
        await asyncio.to_thread(front.close)

    server.on_cleanup.append(stop_threads)
    return server
